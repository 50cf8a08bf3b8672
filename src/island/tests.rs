//! Tests of whole literals: printing, parsing back, canonical forms and the size bound; the
//! helpers here build the literals that the per-file tests use too.

use super::parse::check_ref;
use super::*;

pub(super) fn hex40(seed: u8) -> String {
    (0..40)
        .map(|i| char::from_digit(u32::from((seed + i) % 16), 16).unwrap())
        .collect()
}

pub(super) fn blake() -> String {
    format!("blake3-{}", "0123456789abcdef".repeat(4))
}

pub(super) const NAR: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

pub(super) fn parse(s: &str) -> Island {
    s.parse().unwrap_or_else(|e: ParseError| panic!("{}", e.render(s)))
}

pub(super) fn round_trips(island: &Island) {
    let printed = island.to_string();
    let again = parse(&printed);
    assert_eq!(&again, island, "{printed}");
    assert_eq!(again.to_string(), printed);
}

#[test]
fn examples_print_back_exactly() {
    let (rev, hash) = (hex40(3), blake());
    let examples = [
        "<github:OWNER/REPO>".to_string(),
        r#"<github:OWNER/REPO:{ ref = "v1.2" }>"#.to_string(),
        format!(r#"<github:OWNER/REPO:{{ rev = "{rev}" }}>"#),
        format!(r#"<github:o/r:{{ ref = "main", rev = "{rev}", hash = "{hash}", narHash = "{NAR}" }}>"#),
        "<tarball:https://host/x.tar.gz>".to_string(),
        format!(r#"<tarball:http://127.0.0.1:8080/x.tar.gz:{{ hash = "{hash}" }}>"#),
        r#"<git:https://host/path.git:{ ref = "main" }>"#.to_string(),
        "<fs::/absolute/path>".to_string(),
        format!(r#"<fs::{{ hash = "{hash}" }}:/absolute/path>"#),
        "<github:cull-os/cab::/cab/cab-island>".to_string(),
        format!(r#"<github:o/r:{{ rev = "{rev}" }}:/cab/cab-island>"#),
    ];
    for text in examples {
        let island = parse(&text);
        assert_eq!(island.to_string(), text);
        round_trips(&island);
    }

    let t = parse(&format!(
        r#"<tarball:http://127.0.0.1:8080/x.tar.gz:{{ hash = "{hash}" }}>"#
    ));
    assert_eq!(t.location, "http://127.0.0.1:8080/x.tar.gz");
    assert!(t.is_locked());
    let fs = parse("<fs::/absolute/path>");
    assert_eq!(
        (fs.location.as_str(), fs.fs_path()),
        ("", Some(PathBuf::from("/absolute/path")))
    );
    assert!(!fs.is_locked());
    let sub = parse("<github:cull-os/cab::/cab/cab-island>");
    assert_eq!(sub.subpath.as_ref().unwrap().names(), ["cab", "cab-island"]);
    assert_eq!(sub.fs_path(), None);
}

#[test]
fn parsing_canonicalizes() {
    let (rev, hash) = (hex40(7), blake());
    let messy =
        format!("<github:o/r:{{\n\tnarHash=\"{NAR}\" ,hash = \"{hash}\",rev=\"{rev}\",  ref = \"main\" , }}:/a>");
    let island = parse(&messy);
    assert_eq!(
        island.to_string(),
        format!(r#"<github:o/r:{{ ref = "main", rev = "{rev}", hash = "{hash}", narHash = "{NAR}" }}:/a>"#)
    );
    assert!(island.is_locked());
    let unpinned = island.unpinned();
    assert_eq!(unpinned.to_string(), r#"<github:o/r:{ ref = "main" }:/a>"#);
    assert!(!unpinned.is_locked());
    assert_eq!(parse("<github:o/r:{}>").to_string(), "<github:o/r>");
    assert_eq!(parse("<fs:::/x>").to_string(), "<fs::/x>");
    assert_eq!(parse("<fs::{ }:/x>").to_string(), "<fs::/x>");
    let nix32 = parse(r#"<fs::{ narHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73" }:/x>"#);
    assert_eq!(nix32.to_string(), format!(r#"<fs::{{ narHash = "{NAR}" }}:/x>"#));
    assert_eq!(
        parse(r#"<git:https://h/r:{ ref = "a\"b" }>"#).config.r#ref.as_deref(),
        Some("a\"b")
    );
}

#[test]
fn generated_islands_round_trip() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let ref_chars: Vec<char> = "ab/.-_\"@{}<>,=: Zé".chars().collect();
    let name_chars: Vec<char> = "ab.\"\\:{}, é-".chars().collect();
    let url_chars: Vec<char> = "ab.\"\\:{},é-%?#@".chars().collect();
    let mut tested = 0;
    for _ in 0..4000 {
        let format = Format::ALL[next(Format::ALL.len())];
        let location = match format {
            Format::Github => ["o/r", "cull-os/cab", "A.b_c/d-e.git"][next(3)].to_string(),
            Format::Gitlab => ["g/p", "group/sub/sub2/proj", "A.b/c_d/e-f.git"][next(3)].to_string(),
            Format::Sourcehut => ["~o/r", "~sir_hat/a.b-c"][next(2)].to_string(),
            Format::Tarball | Format::Git => {
                let path: String = (0..next(6)).map(|_| url_chars[next(url_chars.len())]).collect();
                // A location ends at the first `::` or `:{`, so it cannot contain them.
                let mut path = path.replace("::", ":x").replace(":{", ":x");
                if path.ends_with(':') {
                    path.push('z');
                }
                let host = ["h", "127.0.0.1:8080", "u@ex.com", "[fe80:1]:1"][next(4)];
                format!("{}://{host}/{path}", ["http", "https"][next(2)])
            }
            Format::Fs => String::new(),
        };
        let mut config = Config::default();
        if format.is_forge() {
            config.host = ["gitlab.example.org", "h:8443", "127.0.0.1"][next(3)..]
                .first()
                .map(|h| h.to_string());
        }
        if format.has_revisions() {
            let r: String = (0..1 + next(8)).map(|_| ref_chars[next(ref_chars.len())]).collect();
            config.r#ref = (next(2) == 0 && check_ref(&r).is_ok()).then_some(r);
            config.rev = (next(2) == 0).then(|| hex40(next(16) as u8));
        }
        config.hash = (next(2) == 0).then(|| TreeHash([next(256) as u8; 32]));
        config.nar_hash = (next(2) == 0).then(|| NarHash([next(256) as u8; 32]));
        let names = (0..next(4)).map(|_| {
            let name: String = (0..1 + next(4)).map(|_| name_chars[next(name_chars.len())]).collect();
            if name == "." || name == ".." {
                "x".to_string()
            } else {
                name
            }
        });
        let subpath = Subpath::new(names)
            .ok()
            .or_else(|| (format == Format::Fs).then(|| Subpath::new(["tmp"]).unwrap()));
        let island = Island {
            format,
            location,
            config,
            subpath,
        };
        if island.config.r#ref.as_deref().is_some_and(|r| r.contains('"')) {
            tested += 1;
        }
        round_trips(&island);
    }
    assert!(tested > 10, "too few refs with quotes: {tested}");
}

#[test]
fn huge_literals_are_refused_and_rendered_small() {
    let owner = "o".repeat(1_000_000);
    let input = format!("<github:{owner}/r>");
    let err = input.parse::<Island>().unwrap_err();
    assert!(err.message.contains("at most 8192 bytes"), "{}", err.message);
    assert_eq!(err.column, MAX_LITERAL_LEN + 1);
    let rendered = err.render(&input);
    assert!(rendered.len() < 400, "{} bytes", rendered.len());
    assert!(rendered.contains("…"), "{rendered}");
    assert!(rendered.ends_with('^'), "{rendered}");
    let just_fits = format!("<tarball:https://h/{}>", "a".repeat(MAX_LITERAL_LEN - 20));
    assert_eq!(just_fits.len(), MAX_LITERAL_LEN);
    assert!(just_fits.parse::<Island>().is_ok());
    assert_eq!(crate::text::shorten("short"), "short");
    assert!(crate::text::shorten(&owner).len() < 200);
}

#[test]
fn subpaths_and_formats() {
    let s = Subpath::parse("/a/b c").unwrap();
    assert_eq!(
        (s.names(), s.to_string().as_str()),
        (&["a".to_string(), "b c".to_string()][..], "/a/b c")
    );
    assert_eq!("/a/b".parse::<Subpath>().unwrap(), Subpath::new(["a", "b"]).unwrap());
    assert_eq!(Subpath::parse("a").unwrap_err().column, 1);
    assert_eq!(Subpath::parse("/a>b").unwrap_err().column, 3);
    for bad in [&[][..], &[""], &["."], &[".."], &["a/b"], &["a>"], &["a\0"]] {
        assert!(Subpath::new(bad.iter().copied()).is_err(), "{bad:?}");
    }
    for f in Format::ALL {
        assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
    }
    assert!("GitHub".parse::<Format>().unwrap_err().message.contains("`fs`"));
}
