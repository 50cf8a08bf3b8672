use std::process::Command;

use super::*;
use crate::testing::{TempDir, git_with_input, run};

/// `.gitattributes` files, by directory, that use every kind of pattern and attribute state.
const FILES: &[(&str, &str)] = &[
    (
        "",
        "# a comment\n\
         [attr]skip export-ignore -diff\n\
         [attr]expand export-subst\n\
         *.log export-ignore\n\
         /top-only export-ignore\n\
         docs/ export-ignore\n\
         build/** export-ignore\n\
         **/generated export-ignore\n\
         a/**/deep.txt export-ignore\n\
         *.[ch] export-subst\n\
         file[0-9].txt export-ignore\n\
         file[!0-9].txt export-subst\n\
         [[:upper:]]*.md export-ignore\n\
         version.txt export-subst\n\
         kept.log -export-ignore\n\
         macro.txt skip\n\
         expand.txt expand\n\
         \"quoted name.txt\" export-ignore\n\
         !negated.txt export-ignore\n\
         sub/unset.txt export-ignore\n\
         tests/ export-ignore\n\
         *.bin export-subst=yes\n\
         ?.one export-ignore\n\
         \\#hash export-ignore\n\
         [attr]windows text eol=crlf\n\
         [attr]nested windows ident\n\
         *.txt text=auto\n\
         *.bat eol=crlf\n\
         *.sh text eol=lf\n\
         *.png binary\n\
         *.ps1 windows\n\
         *.cmd nested\n\
         *.dat -text eol=crlf\n\
         old.* crlf\n\
         old.input crlf=input !eol\n\
         *.id ident\n\
         *.id1 ident=1 text=yes eol=both\n\
         bad@name.txt ident export-ignore bad@name\n\
         dashes.txt --x export-ignore\n\
         reserved.txt builtin_x export-ignore\n\
         values.txt -ident=v !text=auto eol=crlf\n\
         tab.txt\tident\r\n\
         [attr]binary -text ident\n",
    ),
    (
        "sub",
        "unset.txt -export-ignore\n\
         local.txt export-ignore\n\
         *.c !export-subst\n\
         inner/ export-ignore\n\
         [attr]skip -export-ignore\n\
         *.txt !text eol=lf\n\
         *.png -binary\n\
         [attr]windows -text\n\
         *.bat windows\n",
    ),
];

/// Paths asked about; a trailing `/` marks a directory.
const PATHS: &[&str] = &[
    "x.log",
    "kept.log",
    "sub/x.log",
    "top-only",
    "sub/top-only",
    "docs/",
    "docs",
    "sub/docs/",
    "build/",
    "build/x",
    "build/a/b",
    "sub/build/x",
    "generated",
    "a/generated",
    "a/b/generated/",
    "a/deep.txt",
    "a/b/c/deep.txt",
    "b/deep.txt",
    "main.c",
    "sub/main.c",
    "x.h",
    "file1.txt",
    "filex.txt",
    "README.md",
    "readme.md",
    "version.txt",
    "sub/version.txt",
    "macro.txt",
    "sub/macro.txt",
    "expand.txt",
    "quoted name.txt",
    "negated.txt",
    "sub/unset.txt",
    "sub/local.txt",
    "local.txt",
    "tests/",
    "sub/tests/",
    "sub/inner/",
    "sub/inner",
    "inner/",
    "x.bin",
    "a.one",
    "ab.one",
    "#hash",
    "plain.txt",
    "a.bat",
    "sub/a.bat",
    "run.sh",
    "pic.png",
    "sub/pic.png",
    "x.ps1",
    "x.cmd",
    "x.dat",
    "old.c",
    "old.input",
    "x.id",
    "x.id1",
    "bad@name.txt",
    "dashes.txt",
    "reserved.txt",
    "values.txt",
    "tab.txt",
    "sub/notes.txt",
];

#[test]
fn export_attributes_are_what_git_check_attr_says() {
    let dir = TempDir::new("check-attr");
    run(Command::new("git").arg("init").arg("-q").arg(dir.path()));
    let mut attrs = Attributes::default();
    for (d, text) in FILES {
        let path = dir.path().join(d).join(".gitattributes");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        attrs.add(d.as_bytes(), text.as_bytes());
    }
    let input: String = PATHS.iter().map(|p| format!("{p}\n")).collect();
    let names: Vec<&str> = NAMES.iter().map(|n| std::str::from_utf8(n).unwrap()).collect();
    let out = git_with_input(
        dir.path(),
        &[["check-attr", "--stdin"].as_slice(), &names].concat(),
        input.as_bytes(),
    );
    let out = String::from_utf8(out).unwrap();
    for line in out.lines() {
        // `path: attr: value`
        let mut parts = line.rsplitn(3, ": ");
        let (git, attr, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let dir = path.ends_with('/');
        let found = attrs.lookup(path.trim_end_matches('/').as_bytes(), dir);
        let i = names.iter().position(|n| *n == attr).unwrap();
        let ours = match found.states[i] {
            None | Some(State::Unspecified) => "unspecified",
            Some(State::Set) => "set",
            Some(State::Unset) => "unset",
            Some(State::Value(v)) => match v {
                Value::Auto => "auto",
                Value::Input => "input",
                Value::Lf => "lf",
                Value::Crlf => "crlf",
                // The value itself is not kept: only that it means nothing here.
                Value::Other => git,
            },
        };
        assert_eq!(ours, git, "{path}: {attr}");
        if matches!(found.states[i], Some(State::Value(Value::Other))) {
            assert!(!["set", "unset", "unspecified", "auto", "input", "lf", "crlf"].contains(&git));
        }
    }
    assert_eq!(out.lines().count(), PATHS.len() * NAMES.len());
}

/// What each combination of `text`, `eol` and `crlf` makes of a file's line endings, as git
/// decides it with a server's defaults (checked against `git archive` in the git tests).
#[test]
fn line_endings_by_attributes() {
    let cases: &[(&str, Eol)] = &[
        ("", Eol::Keep),
        ("text", Eol::Keep),
        ("text=auto", Eol::Keep),
        ("eol=lf", Eol::Keep),
        ("text eol=lf", Eol::Keep),
        ("eol=crlf", Eol::Crlf),
        ("text eol=crlf", Eol::Crlf),
        ("text=input eol=crlf", Eol::Crlf),
        ("text=auto eol=crlf", Eol::Auto),
        ("-text eol=crlf", Eol::Keep),
        ("binary eol=crlf", Eol::Keep),
        ("eol=crlf binary", Eol::Keep),
        ("text=other eol=crlf", Eol::Crlf),
        ("crlf=auto eol=crlf", Eol::Auto),
        ("-crlf eol=crlf", Eol::Keep),
        ("text -crlf eol=crlf", Eol::Crlf),
        ("!text -crlf eol=crlf", Eol::Keep),
        ("eol=CRLF", Eol::Keep),
        ("eol", Eol::Keep),
    ];
    for (line, want) in cases {
        let mut attrs = Attributes::default();
        attrs.add(b"", format!("f {line}\nother ident\n").as_bytes());
        assert_eq!(attrs.export(b"f", false).eol, *want, "{line}");
    }
}

#[test]
fn patterns_cost_tokens_times_bytes() {
    // A pattern that backtracks exponentially in a naive matcher.
    let p = compile(b"*a*a*a*a*a*a*a*a*a*a*a*a*b").unwrap();
    let text = b"a".repeat(2000);
    let started = std::time::Instant::now();
    assert!(!matches(&p.tokens, &text));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let p = compile(b"**/x/**/y").unwrap();
    assert!(matches(&p.tokens, b"x/y"));
    assert!(matches(&p.tokens, b"a/b/x/c/d/y"));
    assert!(!matches(&p.tokens, b"a/bx/y"));
}
