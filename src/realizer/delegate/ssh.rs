//! The way to a realizer on another machine: the system's `ssh` running `cab realize --stdio`
//! there, so that `~/.ssh/config`, keys, agents and known hosts work as users expect, and
//! ssh's own authentication is the only door. `CAB_SSHOPTS` adds options, as `NIX_SSHOPTS`
//! does for Nix.

use std::collections::VecDeque;
use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::protocol::{self, FromRealizer, ToRealizer};
use crate::sync::MutexExt;

/// How long the other side may take to answer the handshake (ssh's own connection and
/// authentication included).
const HANDSHAKE: Duration = Duration::from_secs(30);

/// Lines of the other side's standard error kept for an error message.
const STDERR_TAIL: usize = 8;

/// A realizer reached over ssh, as its URI names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    /// The login, if not ssh's default.
    pub user: Option<String>,
    /// The host (a name or address; an IPv6 address without its brackets).
    pub host: String,
    /// The port, if not ssh's default.
    pub port: Option<u16>,
    /// The `cab` to run there.
    pub program: String,
    /// How many realizations it runs at once.
    pub jobs: usize,
}

impl SshTarget {
    /// Parses what follows `ssh://`: `[USER@]HOST[:PORT][?program=PATH&jobs=N]`.
    pub fn parse(text: &str, default_jobs: usize) -> Result<SshTarget> {
        let (authority, query) = text.split_once('?').unwrap_or((text, ""));
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, authority),
        };
        let (host, port) = match host_port.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').context("an IPv6 address without its `]`")?;
                (host, after.strip_prefix(':'))
            }
            None => match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        let word = |what: &str, w: &str| -> Result<()> {
            let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%');
            if w.is_empty() || w.starts_with('-') || !w.chars().all(fine) {
                bail!("`{w}` is not a {what}");
            }
            Ok(())
        };
        if let Some(user) = user {
            word("user name", user)?;
        }
        word("host", host)?;
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .with_context(|| format!("`{p}` is not a port"))
            })
            .transpose()?;
        let mut target = SshTarget {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
            program: "cab".into(),
            jobs: default_jobs,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("program", path)) if !path.is_empty() && !path.contains(['\n', '\0']) => {
                    target.program = path.to_owned();
                }
                Some(("jobs", n)) => {
                    target.jobs = n
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .with_context(|| format!("jobs `{n}` is not a number of at least 1"))?;
                }
                _ => bail!("`{pair}` is not program=PATH or jobs=N"),
            }
        }
        Ok(target)
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ssh://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        // Two `cab`s on one host are two realizers.
        if self.program != "cab" {
            write!(f, "?program={}", self.program)?;
        }
        Ok(())
    }
}

/// What the realizer said in its handshake.
#[derive(Clone, Debug)]
pub struct Hello {
    /// The features it offers.
    pub features: Vec<String>,
    /// Its remote store, if it has one.
    pub remote: Option<String>,
}

/// A running `ssh … cab realize --stdio`, past its handshake.
pub struct Connection {
    /// Kept so that dropping the connection kills ssh.
    _child: Child,
    input: BufReader<ChildStdout>,
    output: ChildStdin,
    stderr: Arc<Mutex<VecDeque<String>>>,
    target: String,
    /// What the realizer said it is.
    pub hello: Hello,
}

impl Connection {
    /// Runs ssh to `target` and shakes hands with the cab there.
    pub async fn open(target: &SshTarget) -> Result<Connection> {
        let mut command = tokio::process::Command::new("ssh");
        // No terminal, no X11, and never a password prompt: a mount has no one to type it.
        command.args(["-T", "-x", "-o", "BatchMode=yes"]);
        if let Ok(options) = std::env::var("CAB_SSHOPTS") {
            command.args(options.split_whitespace());
        }
        if let Some(port) = target.port {
            command.arg("-p").arg(port.to_string());
        }
        if let Some(user) = &target.user {
            command.arg("-l").arg(user);
        }
        command
            .arg("--")
            .arg(&target.host)
            .arg(format!("{} realize --stdio", shell_quote(&target.program)));
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .context("cannot run `ssh` (is OpenSSH's client installed?)")?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("ssh started without its pipes");
        };
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let name = target.to_string();
        tokio::spawn({
            let (tail, name) = (tail.clone(), name.clone());
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!("{name}: {line}");
                    let mut tail = tail.locked();
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
        let mut connection = Connection {
            _child: child,
            input: BufReader::new(stdout),
            output: stdin,
            stderr: tail,
            target: name,
            hello: Hello {
                features: Vec::new(),
                remote: None,
            },
        };
        connection.handshake().await?;
        Ok(connection)
    }

    async fn handshake(&mut self) -> Result<()> {
        let hello = ToRealizer::Hello {
            protocol: protocol::VERSION,
            cab: env!("CARGO_PKG_VERSION").into(),
        };
        self.send(&hello).await?;
        match self.receive(HANDSHAKE).await? {
            FromRealizer::Hello {
                protocol: theirs,
                cab,
                features,
                remote,
                ..
            } => {
                protocol::check_version(theirs, &cab)?;
                tracing::debug!(
                    "{}: cab {cab}, offers {}, remote {}",
                    self.target,
                    features.join(", "),
                    remote.as_deref().unwrap_or("none")
                );
                self.hello = Hello { features, remote };
                Ok(())
            }
            FromRealizer::Failed { message, .. } => bail!("{message}"),
            other => bail!("it answered the handshake with {}", protocol::kind(&other)),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &ToRealizer) -> Result<()> {
        match protocol::send(&mut self.output, message).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.lost(e).await),
        }
    }

    /// The next message, waiting at most `within`.
    pub async fn receive(&mut self, within: Duration) -> Result<FromRealizer> {
        let error = match tokio::time::timeout(within, protocol::receive(&mut self.input)).await {
            Ok(Ok(Some(message))) => return Ok(message),
            Ok(Ok(None)) => anyhow::anyhow!("the connection closed"),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("it sent nothing for {within:?}"),
        };
        Err(self.lost(error).await)
    }

    /// `error`, with what the other side last wrote to its standard error (ssh's own
    /// complaints, a missing `cab`, the realizer's last words).
    async fn lost(&self, error: anyhow::Error) -> anyhow::Error {
        // Let the stderr reader catch up with a process that just died.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tail = self.stderr.locked();
        if tail.is_empty() {
            error
        } else {
            error.context(format!(
                "{} said: {}",
                self.target,
                tail.iter().cloned().collect::<Vec<_>>().join("\n  ")
            ))
        }
    }
}

/// `text` as one word for the remote shell that ssh hands its command to.
fn shell_quote(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | '='))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("/opt/cab/bin/cab"), "/opt/cab/bin/cab");
        assert_eq!(shell_quote("/a b/cab"), "'/a b/cab'");
        assert_eq!(shell_quote("x'; rm -rf /; '"), r"'x'\''; rm -rf /; '\'''");
    }
}
