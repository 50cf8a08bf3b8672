use super::*;
use crate::sha1::parse_hex;
use crate::testing::{TempDir, git, git_with_input, run};

/// Every placeholder cab expands from the commit, in one format.
const FORMAT: &str = "%H|%h|%T|%t|%P|%p|%an|%aN|%ae|%aE|%al|%aL|%ad|%aD|%ai|%aI|%as|%at|\
                      %cn|%ce|%cl|%cd|%cD|%ci|%cI|%cs|%ct|%s|%f|[%b]|[%B]|%e|%n|%%|%x41|%m|\
                      [%+b][%-s][% s]%Cred%Creset%C(blue)|%w(20)x%";

fn commit(dir: &std::path::Path, author_date: &str, committer_date: &str, message: &str) -> String {
    std::fs::write(dir.join("f"), message).unwrap();
    git(dir, &["add", "f"]);
    run(std::process::Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Ann Author")
        .env("GIT_AUTHOR_EMAIL", "ann@example.org")
        .env("GIT_AUTHOR_DATE", author_date)
        .env("GIT_COMMITTER_NAME", "Con Committer")
        .env("GIT_COMMITTER_EMAIL", "con@example.net")
        .env("GIT_COMMITTER_DATE", committer_date)
        .args(["commit", "-q", "--allow-empty-message", "-m", message]));
    String::from_utf8(git(dir, &["rev-parse", "HEAD"]))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn placeholders_expand_as_git_log_expands_them() {
    let dir = TempDir::new("subst");
    git(dir.path(), &["init", "-q"]);
    let cases = [
        (
            "2005-04-07T15:13:13-0700",
            "2024-01-01T00:00:00+0000",
            "Subject: with [x] and /slashes/\n\nBody 1\nBody 2\n",
        ),
        ("1999-12-31T23:59:59+0530", "2000-02-29T12:00:00-1130", "one line only"),
        (
            "1970-01-01T00:00:00+0000",
            "2038-01-19T03:14:08+1400",
            "two\nline subject\n\n\nbody after blanks\n",
        ),
        (
            "1973-07-20T20:17:40+0000",
            "2099-03-01T00:00:01+0100",
            "..leading dots -- and dashes!--\n",
        ),
        (
            "2001-09-09T01:46:40+0000",
            "2001-09-09T01:46:40-0000",
            "v1..v2...v3 _x_ \u{e9}t\u{e9}\n",
        ),
    ];
    for (author, committer, message) in cases {
        let rev = commit(dir.path(), author, committer, message);
        let data = git_with_input(dir.path(), &["cat-file", "commit", &rev], b"");
        let c = Commit::parse(&parse_hex(rev.as_bytes()).unwrap(), &data).unwrap();
        let want = git(dir.path(), &["log", "-1", &format!("--format={FORMAT}"), &rev]);
        let mut got = c.substitute(format!("before $Format:{FORMAT}$ after").as_bytes());
        // `git log` ends its output with a newline.
        got.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!(
                "before {} after\n",
                String::from_utf8_lossy(&want).trim_end_matches('\n')
            ),
            "{author} {committer} {message:?}"
        );
    }
}

#[test]
fn what_the_exporting_repository_decides_is_left_empty() {
    let c = Commit::default();
    assert_eq!(
        c.substitute(b"$Format:[%d][%D][%ar][%N][%GG][%(describe)]$"),
        b"[][][][][][]"
    );
    assert_eq!(c.substitute(b"no end $Format:%H"), b"no end $Format:%H");
    assert_eq!(c.substitute(b"%Z $Format:%Z%$"), b"%Z %Z%");
    // Padding and alignment are dropped (git would pad): documented, not silently wrong.
    assert_eq!(c.substitute(b"$Format:%<(5)%>>(3)%<|(9)x$"), b"x");
}
