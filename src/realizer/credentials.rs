//! Credentials, per host: forge tokens from the configuration or the environment, and logins
//! from a netrc file (`~/.netrc`), each sent to its own host only. The realizer adds them to the
//! fetcher's requests — the guest never sees them — and looks the host up again at every
//! redirect hop, so a redirect never carries one host's secret to another.

use std::collections::BTreeMap;
use std::fmt;

use crate::hash::encoding::to_base64;

/// A secret for one host.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// An access token, sent as the host's forge expects tokens.
    Token(String),
    /// A login and password (a netrc entry), sent as HTTP Basic.
    Login {
        /// The user name.
        login: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for Secret {
    /// Never the secret itself: credentials must not reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Token(_) => f.write_str("Token(…)"),
            Secret::Login { login, .. } => write!(f, "Login({login:?}, …)"),
        }
    }
}

/// Every host's credentials.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    hosts: BTreeMap<String, Secret>,
    /// Hosts that are GitLab instances: a token goes there as GitLab's git over HTTP takes it.
    gitlab: Vec<String>,
}

impl Credentials {
    /// No credentials at all.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// Adds `secret` for `host`, unless the host has credentials already (sources are added
    /// from the most specific to the least, so the first one wins).
    pub fn add(&mut self, host: &str, secret: Secret) {
        self.hosts.entry(host.to_ascii_lowercase()).or_insert(secret);
    }

    /// Says that `host` is a GitLab instance.
    pub fn add_gitlab_host(&mut self, host: &str) {
        self.gitlab.push(host.to_ascii_lowercase());
    }

    /// Adds each `machine` entry of a netrc file that has a password (`default` is ignored: a
    /// login meant for every host is exactly what must not be sent to every host).
    pub fn add_netrc(&mut self, text: &str) {
        for (host, login, password) in netrc_entries(text) {
            self.add(&host, Secret::Login { login, password });
        }
    }

    /// The hosts that have credentials (for logs: names only).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// The `Authorization` header for a request to `host`, if it has credentials. `gitlab`:
    /// the request is for a GitLab island (its host is then a GitLab instance too).
    pub fn authorization(&self, host: &str, gitlab: bool) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let secret = self.hosts.get(&host)?;
        let basic =
            |user: &str, password: &str| format!("Basic {}", to_base64(format!("{user}:{password}").as_bytes()));
        Some(match secret {
            Secret::Login { login, password } => basic(login, password),
            // GitLab's git over HTTP takes a token as the password of any user; `oauth2` is
            // the name its documentation uses.
            Secret::Token(token) if gitlab || self.gitlab.contains(&host) => basic("oauth2", token),
            Secret::Token(token) => format!("Bearer {token}"),
        })
    }
}

/// The `machine` entries of a netrc file that have a password: (host, login, password). The
/// syntax is curl's and git's: whitespace-separated words, double quotes around a word with
/// spaces (`\` escaping the next character), `macdef` bodies skipped up to a blank line.
fn netrc_entries(text: &str) -> Vec<(String, String, String)> {
    let words = netrc_words(text);
    let mut entries = Vec::new();
    // (host or None for `default`, login, password) of the entry being read.
    let mut current: Option<(Option<String>, String, Option<String>)> = None;
    let mut finish = |current: &mut Option<(Option<String>, String, Option<String>)>| {
        if let Some((Some(host), login, Some(password))) = current.take() {
            entries.push((host, login, password));
        }
    };
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "machine" => {
                finish(&mut current);
                current = Some((Some(words.next().unwrap_or_default()), String::new(), None));
            }
            "default" => {
                finish(&mut current);
                current = Some((None, String::new(), None));
            }
            "login" => {
                let value = words.next().unwrap_or_default();
                if let Some(entry) = current.as_mut() {
                    entry.1 = value;
                }
            }
            "password" => {
                let value = words.next();
                if let Some(entry) = current.as_mut() {
                    entry.2 = value;
                }
            }
            "account" => {
                words.next();
            }
            // Words netrc does not define (or a macro's name) are skipped.
            _ => {}
        }
    }
    finish(&mut current);
    entries
}

/// A netrc file's words, without `macdef` bodies.
fn netrc_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        let Some(first) = rest.chars().next() else { break };
        let mut word = String::new();
        if first == '"' {
            let mut chars = rest[1..].char_indices();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = 1 + i + 1;
                        break;
                    }
                    '\\' => word.extend(chars.next().map(|(_, c)| c)),
                    c => word.push(c),
                }
            }
            rest = &rest[end..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            word.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        if word == "macdef" {
            // The macro's name ends its line; its body runs to the first blank line.
            let body = rest.find('\n').map_or("", |i| &rest[i + 1..]);
            rest = body.find("\n\n").map_or("", |i| &body[i + 2..]);
            continue;
        }
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_machines_logins_and_quotes() {
        let text = "machine a.example login alice password s3cret\n\
                    default login anyone password everywhere\n\
                    machine b.example\n  login \"bob smith\"\n  password \"with \\\"quote\\\"\"\n\
                    macdef init\ncd /pub\nmachine evil.example login x password y\n\n\
                    machine c.example login carol account acct password pw\n\
                    machine nopass.example login dave\n";
        assert_eq!(
            netrc_entries(text),
            [
                ("a.example".into(), "alice".into(), "s3cret".into()),
                ("b.example".into(), "bob smith".into(), "with \"quote\"".into()),
                ("c.example".into(), "carol".into(), "pw".into()),
            ]
        );
    }

    #[test]
    fn each_host_gets_its_own_scheme_and_the_first_source_wins() {
        let mut creds = Credentials::none();
        creds.add("GitHub.example", Secret::Token("gh".into()));
        creds.add("github.example", Secret::Token("later".into()));
        creds.add("lab.example", Secret::Token("gl".into()));
        creds.add_gitlab_host("lab.example");
        creds.add_netrc("machine other.example login me password pw");
        assert_eq!(
            creds.authorization("github.example", false).as_deref(),
            Some("Bearer gh")
        );
        // GitLab: Basic, user oauth2 ("oauth2:gl").
        assert_eq!(
            creds.authorization("lab.example", false).as_deref(),
            Some("Basic b2F1dGgyOmds")
        );
        assert_eq!(
            creds.authorization("github.example", true).as_deref(),
            Some("Basic b2F1dGgyOmdo")
        );
        assert_eq!(
            creds.authorization("other.example", false).as_deref(),
            Some("Basic bWU6cHc=")
        );
        assert_eq!(creds.authorization("nobody.example", false), None);
        assert!(!format!("{creds:?}").contains("gh\""), "{creds:?}");
    }
}
