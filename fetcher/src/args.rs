//! The fetcher's invocation, from WASI argv: `fetcher <format> key=value…`. The host builds it,
//! so anything wrong here is a bug on its side (exit code 2); values are checked anyway, since
//! they end up in URLs and in pkt-lines.

use crate::error::{Error, Result};
use crate::prelude::*;
use crate::refs::object_id;

/// How to call the fetcher.
pub const USAGE: &str = "usage: fetcher forge git=URL archive=URL [ref=REF] [rev=SHA1] | \
                         fetcher git url=URL [ref=REF] [rev=SHA1] | fetcher tarball url=URL \
                         [if-none-match=ETAG | if-modified-since=DATE unchanged=IDENTITY] | \
                         fetcher refs git=URL [prefix=REF]";

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A forge's repository at a ref or commit: one that serves git's smart HTTP and
    /// archives of commits (GitHub, GitLab, SourceHut).
    Forge(Forge),
    /// Any git smart-HTTP repository at a ref or commit.
    Git(Git),
    /// An archive at a URL, in any format [`crate::archive`] reads.
    Tarball {
        /// Where it is.
        url: String,
        /// What the host already holds from this URL, to ask the server with.
        known: Option<Known>,
    },
    /// Which refs a git smart-HTTP repository has: HEAD's target, or the names under a
    /// prefix. Reported, not fetched: no tree is written.
    Refs(Refs),
}

/// The `refs` format's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refs {
    /// The repository's smart-HTTP URL, without a trailing slash.
    pub git: String,
    /// List the branches and tags under `<prefix>/`; without it, what HEAD points to.
    pub prefix: Option<String>,
}

/// A download the host already holds from a tarball's URL: the request carries its validator,
/// so that the server can answer 304 Not Modified without the body, and a 304 is announced
/// as the identity of that download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The conditional header line, `If-None-Match: ETAG` or `If-Modified-Since: DATE`.
    pub condition: String,
    /// The held download's `http-identity` (64 hex digits).
    pub identity: String,
}

/// The `forge` format's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forge {
    /// The repository's smart-HTTP URL, without a trailing slash.
    pub git: String,
    /// The archive's URL, `{rev}` standing for the commit id wherever it appears.
    pub archive: String,
    /// A branch, tag or `refs/…` name.
    pub reference: Option<String>,
    /// A commit id, lowercase; when given, no ref is looked up.
    pub rev: Option<String>,
}

/// The `git` format's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Git {
    /// The repository's URL, without a trailing slash.
    pub url: String,
    /// A branch, tag or `refs/…` name.
    pub reference: Option<String>,
    /// A commit id, lowercase; when given, no ref is looked up.
    pub rev: Option<String>,
}

fn usage(message: String) -> Error {
    Error::usage(format!("{message}\n{USAGE}"))
}

/// Parses argv (with `argv[0]`).
pub fn parse(args: &[String]) -> Result<Request> {
    let format = args.get(1).ok_or_else(|| usage("no format given".into()))?;
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for arg in args.iter().skip(2) {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| usage(format!("argument `{arg}` is not key=value")))?;
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(usage(format!("`{k}` given twice")));
        }
        pairs.push((k, v));
    }
    let allowed: &[&str] = match format.as_str() {
        "forge" => &["git", "archive", "ref", "rev"],
        "git" => &["url", "ref", "rev"],
        "tarball" => &["url", "if-none-match", "if-modified-since", "unchanged"],
        "refs" => &["git", "prefix"],
        other => return Err(usage(format!("unknown format `{other}`"))),
    };
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(k)) {
        return Err(usage(format!("unknown key `{k}` for format `{format}`")));
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let need = |key: &str| get(key).ok_or_else(|| usage(format!("`{key}=` is missing")));
    let reference = get("ref").map(|r| check_ref(r).map(str::to_owned)).transpose()?;
    let rev = match get("rev") {
        None => None,
        Some(r) => Some(object_id(r.as_bytes()).ok_or_else(|| usage(format!("`rev={r}` is not 40 hex digits")))?),
    };
    match format.as_str() {
        "forge" => Ok(Request::Forge(Forge {
            git: http_url("git", need("git")?)?.trim_end_matches('/').to_owned(),
            archive: http_url("archive", need("archive")?)?.to_owned(),
            reference,
            rev,
        })),
        "git" => Ok(Request::Git(Git {
            url: http_url("url", need("url")?)?.trim_end_matches('/').to_owned(),
            reference,
            rev,
        })),
        "refs" => Ok(Request::Refs(Refs {
            git: http_url("git", need("git")?)?.trim_end_matches('/').to_owned(),
            prefix: get("prefix").map(|p| check_ref(p).map(str::to_owned)).transpose()?,
        })),
        _ => Ok(Request::Tarball {
            url: http_url("url", need("url")?)?.to_owned(),
            known: known(get("if-none-match"), get("if-modified-since"), get("unchanged"))?,
        }),
    }
}

/// A tarball's held download: one validator and its identity, or nothing.
fn known(etag: Option<&str>, since: Option<&str>, identity: Option<&str>) -> Result<Option<Known>> {
    let condition = match (etag, since) {
        (None, None) if identity.is_none() => return Ok(None),
        (Some(etag), None) => format!("If-None-Match: {}", header_value("if-none-match", etag)?),
        (None, Some(date)) => format!("If-Modified-Since: {}", header_value("if-modified-since", date)?),
        _ => {
            return Err(usage(
                "give one of `if-none-match=` and `if-modified-since=`, with `unchanged=`".into(),
            ));
        }
    };
    let identity = identity.ok_or_else(|| usage("`unchanged=` is missing".into()))?;
    if identity.len() != 64
        || !identity
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(usage(format!("`unchanged={identity}` is not 64 lowercase hex digits")));
    }
    Ok(Some(Known {
        condition,
        identity: identity.to_owned(),
    }))
}

/// A value that can go into a header line as it is: visible ASCII and spaces, one line.
fn header_value<'a>(key: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() || value.len() > 1024 || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(usage(format!("`{key}=` is not a header value")));
    }
    Ok(value)
}

fn http_url<'a>(key: &str, url: &'a str) -> Result<&'a str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) => Ok(url),
        _ => Err(usage(format!("`{key}={url}` is not an http(s) URL"))),
    }
}

/// A ref name that git could have (the gist of `git check-ref-format`), which also keeps it
/// safe inside a pkt-line.
fn check_ref(r: &str) -> Result<&str> {
    let bad = r.is_empty()
        || r.len() > 1000
        || r.starts_with('/')
        || r.ends_with('/')
        || r.ends_with('.')
        || r.as_bytes().windows(2).any(|w| w == b".." || w == b"//" || w == b"@{")
        || r.bytes().any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b));
    if bad {
        Err(usage(format!("`ref={r}` is not a valid ref name")))
    } else {
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Request> {
        let v: Vec<String> = std::iter::once("fetcher")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        parse(&v)
    }

    #[test]
    fn forms() {
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(
            p(&[
                "forge",
                "git=https://gitlab.com/g/s/r.git/",
                "archive=https://gitlab.com/g/s/r/-/archive/{rev}/r-{rev}.tar.gz",
                "ref=v1.2",
                &format!("rev={sha}")
            ])
            .unwrap(),
            Request::Forge(Forge {
                git: "https://gitlab.com/g/s/r.git".into(),
                archive: "https://gitlab.com/g/s/r/-/archive/{rev}/r-{rev}.tar.gz".into(),
                reference: Some("v1.2".into()),
                rev: Some(sha.to_lowercase()),
            })
        );
        let r = p(&[
            "forge",
            "archive=http://127.0.0.1:8080/a/{rev}.tar.gz",
            "git=http://127.0.0.1:8080/a",
        ])
        .unwrap();
        assert!(matches!(
            r,
            Request::Forge(Forge {
                reference: None,
                rev: None,
                ..
            })
        ));
        assert_eq!(
            p(&["git", "url=https://h/a/b.git/", "ref=main", &format!("rev={sha}")]).unwrap(),
            Request::Git(Git {
                url: "https://h/a/b.git".into(),
                reference: Some("main".into()),
                rev: Some(sha.to_lowercase()),
            })
        );
        assert_eq!(
            p(&["git", "url=http://127.0.0.1:8/x"]).unwrap(),
            Request::Git(Git {
                url: "http://127.0.0.1:8/x".into(),
                reference: None,
                rev: None,
            })
        );
        assert_eq!(
            p(&["refs", "git=https://h/o/r.git/", "prefix=release/v1"]).unwrap(),
            Request::Refs(Refs {
                git: "https://h/o/r.git".into(),
                prefix: Some("release/v1".into()),
            })
        );
        assert_eq!(
            p(&["refs", "git=https://h/o/r.git"]).unwrap(),
            Request::Refs(Refs {
                git: "https://h/o/r.git".into(),
                prefix: None,
            })
        );
        assert_eq!(
            p(&["tarball", "url=https://x/y.tar.gz"]).unwrap(),
            Request::Tarball {
                url: "https://x/y.tar.gz".into(),
                known: None,
            }
        );
        let identity = "ab".repeat(32);
        assert_eq!(
            p(&[
                "tarball",
                "url=https://x/y.tar.gz",
                "if-none-match=\"1-2\"",
                &format!("unchanged={identity}")
            ])
            .unwrap(),
            Request::Tarball {
                url: "https://x/y.tar.gz".into(),
                known: Some(Known {
                    condition: "If-None-Match: \"1-2\"".into(),
                    identity: identity.clone(),
                }),
            }
        );
        let since = p(&[
            "tarball",
            "url=https://x/y.tar.gz",
            "if-modified-since=Mon, 07 Dec 2026 10:00:00 GMT",
            &format!("unchanged={identity}"),
        ])
        .unwrap();
        assert!(
            matches!(since, Request::Tarball { known: Some(k), .. } if k.condition == "If-Modified-Since: Mon, 07 Dec 2026 10:00:00 GMT")
        );
    }

    #[test]
    fn bad_invocations_exit_2() {
        for bad in [
            &[][..],
            &["git"],
            &["git", "url=file:///x"],
            &["git", "url=https://x", "rev=abc"],
            &["git", "url=https://x", "ref=a..b"],
            &["git", "url=https://x", "repo=a/b"],
            &["gitlab", "url=https://x"],
            &["github", "base=https://g", "repo=a/b"],
            &[
                "forge",
                "git=https://x/r.git",
                "archive=https://x/{rev}.tar.gz",
                "rev=123",
            ],
            &[
                "forge",
                "git=https://x/r.git",
                "archive=https://x/{rev}.tar.gz",
                "ref=a b",
            ],
            &[
                "forge",
                "git=https://x/r.git",
                "archive=https://x/{rev}.tar.gz",
                "ref=a..b",
            ],
            &[
                "forge",
                "git=https://x/r.git",
                "archive=https://x/{rev}.tar.gz",
                "ref=x\n0000",
            ],
            &[
                "forge",
                "git=https://x/r.git",
                "archive=https://x/{rev}.tar.gz",
                "ref=a",
                "ref=b",
            ],
            &["forge", "git=https://x/r.git"],
            &["forge", "archive=https://x/{rev}.tar.gz"],
            &["forge", "git=ssh://x/r.git", "archive=https://x/{rev}.tar.gz"],
            &[
                "forge",
                "git=https://x/r.git",
                "archive=https://x/{rev}.tar.gz",
                "repo=a/b",
            ],
            &["tarball", "url=https://x", "extra"],
            &["refs", "git=https://x/r.git", "prefix=a/"],
            &["refs", "git=https://x/r.git", "ref=main"],
            &["refs", "prefix=a"],
            &["tarball", "url=https://x", "if-none-match=\"a\""],
            &["tarball", "url=https://x", "unchanged=00"],
            &[
                "tarball",
                "url=https://x",
                "if-none-match=\"a\"\nX: y",
                &format!("unchanged={}", "0".repeat(64)),
            ],
            &[
                "tarball",
                "url=https://x",
                "if-none-match=\"a\"",
                "if-modified-since=Mon, 07 Dec 2026 10:00:00 GMT",
                &format!("unchanged={}", "0".repeat(64)),
            ],
            &["tarball"],
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.code(), 2, "{bad:?}: {e}");
            assert!(e.message().contains("usage:"));
        }
    }
}
