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
         \\#hash export-ignore\n",
    ),
    (
        "sub",
        "unset.txt -export-ignore\n\
         local.txt export-ignore\n\
         *.c !export-subst\n\
         inner/ export-ignore\n\
         [attr]skip -export-ignore\n",
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
    let out = git_with_input(
        dir.path(),
        &["check-attr", "--stdin", "export-ignore", "export-subst"],
        input.as_bytes(),
    );
    let out = String::from_utf8(out).unwrap();
    for line in out.lines() {
        // `path: attr: value`
        let mut parts = line.rsplitn(3, ": ");
        let (value, attr, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let dir = path.ends_with('/');
        let export = attrs.export(path.trim_end_matches('/').as_bytes(), dir);
        let ours = if attr == "export-ignore" {
            export.ignore
        } else {
            export.subst
        };
        let git = value != "unspecified" && value != "unset";
        assert_eq!(ours, git, "{path}: {attr} is {value} for git");
    }
    assert_eq!(out.lines().count(), PATHS.len() * 2);
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
