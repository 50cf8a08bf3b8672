use super::*;
use crate::sha1::parse_hex;
use crate::testing::{TempDir, git, git_archive_tree, noise};

/// Tricky `$Id` keywords, each in a file of its own with `ident` (and one with `eol=crlf` too):
/// what `ident` makes of them is what `git archive` writes.
#[test]
fn ident_is_what_git_archive_writes() {
    let cases: &[&[u8]] = &[
        b"$Id$\n",
        b"x$Id$y$Id$z",
        b"$Id: old expansion $\n",
        b"$Id: 0123456789abcdef0123456789abcdef01234567 $ and $Id$\n",
        b"$Id:$ empty",
        b"$Id:x$ no spaces",
        b"$Id: spaced out words $ kept",
        b"$Id:  $ two spaces",
        b"$Id: two\nlines $ then $Id$",
        b"$Id: never closed",
        b"$Id",
        b"$I",
        b"$$Id$$",
        b"$ID$ $id$ $Idx$",
        b"no keyword at all",
        b"",
        b"$Id$",
        b"$Id:$Id$",
    ];
    let tmp = TempDir::new("ident");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    // Stored as they are: ident would collapse `$Id: … $` when they are added.
    std::fs::write(repo.join(".git/info/attributes"), "* -ident -text\n").unwrap();
    let mut attributes = String::from("crlf.txt ident eol=crlf\n");
    for (i, data) in cases.iter().enumerate() {
        std::fs::write(repo.join(format!("{i}.txt")), data).unwrap();
        attributes.push_str(&format!("{i}.txt ident\n"));
    }
    std::fs::write(repo.join("crlf.txt"), b"line $Id$\nline two\r\n$Id: x $\n").unwrap();
    std::fs::write(repo.join(".gitattributes"), attributes).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "ident"]);
    std::fs::remove_file(repo.join(".git/info/attributes")).unwrap();
    let archived = git_archive_tree(&repo, "HEAD");
    let blob = |name: &str| {
        let id = git(&repo, &["rev-parse", &format!("HEAD:{name}")]);
        parse_hex(id.trim_ascii()).unwrap()
    };
    for (i, data) in cases.iter().enumerate() {
        let name = format!("{i}.txt");
        let ours = convert(data, &blob(&name), true, Eol::Keep).unwrap_or(data.to_vec());
        let crate::testing::Node::File { data: want, .. } = &archived[&name] else {
            panic!("{name}")
        };
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(want),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    let data = std::fs::read(repo.join("crlf.txt")).unwrap();
    let ours = convert(&data, &blob("crlf.txt"), true, Eol::Crlf).unwrap();
    let crate::testing::Node::File { data: want, .. } = &archived["crlf.txt"] else {
        panic!()
    };
    assert_eq!(&ours, want);
}

/// Counting and converting a blob in pieces, cut anywhere (between a CR and its LF too),
/// gives what doing it whole gives.
#[test]
fn pieces_are_as_the_whole() {
    let alphabet = b"ab \n\r\0\x1a\x7f\x1b\t";
    for seed in 1..200u64 {
        let data: Vec<u8> = noise(40, seed)
            .iter()
            .map(|b| alphabet[usize::from(*b) % alphabet.len()])
            .collect();
        let mut whole = Stats::default();
        whole.add(&data);
        let mut converted = Vec::new();
        to_crlf(&data, &mut false, &mut converted);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            let mut stats = Stats::default();
            stats.add(a);
            stats.add(b);
            for eol in [Eol::Crlf, Eol::Auto] {
                assert_eq!(stats.converts(eol), whole.converts(eol), "{data:?} cut at {cut}");
            }
            let (mut cr, mut out) = (false, Vec::new());
            to_crlf(a, &mut cr, &mut out);
            to_crlf(b, &mut cr, &mut out);
            assert_eq!(out, converted, "{data:?} cut at {cut}");
        }
    }
}

#[test]
fn text_or_binary_as_git_decides() {
    let auto = |data: &[u8]| {
        let mut stats = Stats::default();
        stats.add(data);
        stats.converts(Eol::Auto)
    };
    assert!(auto(b"a\nb\n"));
    assert!(!auto(b""), "nothing to convert");
    assert!(!auto(b"no newline"));
    assert!(!auto(b"a\r\nb\n"), "a CRLF already");
    assert!(!auto(b"a\rb\n"), "a lone CR");
    assert!(!auto(b"a\nb\r"), "a lone CR at the end");
    assert!(!auto(b"a\0\n"), "a NUL");
    assert!(auto(b"a\nb\x1a"), "a final Ctrl-Z is allowed");
    assert!(!auto(b"a\n\x1ab"), "elsewhere it is not printable");
    // One byte in 128 that is not printable is still text; two are not.
    let mut data = vec![b'x'; 256];
    data[0] = b'\n';
    data[1] = 0x7f;
    assert!(auto(&data));
    data[2] = 0x01;
    assert!(!auto(&data));
    assert!(auto(b"\x08\t\x1b\x0c\n"), "the controls git counts as printable");
}
