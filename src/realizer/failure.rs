//! Why a realization failed, carried as data. Whoever retries — the mount above all — must
//! tell apart a failure caused on this machine (the disk is full: try again as soon as asked),
//! a forge or network that may come back (try again at the next look), and a failure that the
//! same request would meet again (a limit, a hash that does not match). Deciding that by
//! matching error text would break with every rewording, so the errors that matter are typed
//! here, and [`Cause::of`] reads them off an error's chain.

use std::io;

/// What kind of failure an error is, for deciding when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Something on this machine ran out: space, descriptors, memory. Freeing it fixes it.
    Local,
    /// The island names something that does not exist (a repository or file the server
    /// answers 404 for, a ref the repository lacks).
    NotFound,
    /// The forge, the network or the remote store failed; it may come back.
    Unreachable,
    /// The answer itself: over a limit, or a tree that is not the one pinned. Asking again
    /// gives the same.
    Content,
}

impl Cause {
    /// The cause of `error`: the first typed failure on its chain, else an errno that says
    /// this machine ran out, else a failure of the source (it may come back).
    pub fn of(error: &anyhow::Error) -> Cause {
        for cause in error.chain() {
            if let Some(failed) = cause.downcast_ref::<Failed>() {
                return failed.cause;
            }
            if cause.is::<NotFound>() {
                return Cause::NotFound;
            }
            if cause.is::<OverLimit>() {
                return Cause::Content;
            }
            if let Some(io) = cause.downcast_ref::<io::Error>()
                && is_local(io)
            {
                return Cause::Local;
            }
        }
        Cause::Unreachable
    }
}

/// Whether an I/O error says this machine ran out of something.
fn is_local(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EFBIG)
    )
}

/// A failure with its cause decided where it happened (a fetcher run, a check), and its
/// message as the user sees it.
#[derive(Debug)]
pub struct Failed {
    /// The whole message.
    pub message: String,
    /// Its kind.
    pub cause: Cause,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

impl Failed {
    /// An error of `cause` saying `message`.
    pub fn error(cause: Cause, message: String) -> anyhow::Error {
        anyhow::Error::new(Failed { message, cause })
    }
}

/// The island names something that does not exist: a repository or file the server answers
/// 404 for, or a ref the repository lacks. The mount answers ENOENT for these, not EIO.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// A run went past one of its limits (`--max-download` and the others); the message names
/// the flag that raises it.
#[derive(Debug)]
pub struct OverLimit(pub String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverLimit {}

impl OverLimit {
    /// An error saying `message`.
    pub fn error(message: String) -> anyhow::Error {
        anyhow::Error::new(OverLimit(message))
    }
}

/// What went wrong with the network, in a few words, where an error says: the connection was
/// refused or reset, the host name did not resolve, TLS failed, nothing came in time.
pub fn network_summary(error: &anyhow::Error) -> Option<String> {
    for cause in error.chain() {
        // I/O errors wrap others (rustls's among them, sometimes in two layers), and their
        // chain skips what they wrap: look inside each.
        let mut layer: Option<&(dyn std::error::Error + 'static)> = Some(cause);
        while let Some(error) = layer {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return Some(format!("TLS failed ({tls})"));
            }
            let Some(io) = error.downcast_ref::<io::Error>() else {
                break;
            };
            let summary = match io.kind() {
                io::ErrorKind::ConnectionRefused => Some("the connection was refused"),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                    Some("the connection was reset")
                }
                io::ErrorKind::TimedOut => Some("the connection timed out"),
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => {
                    Some("the host is unreachable")
                }
                io::ErrorKind::UnexpectedEof => Some("the connection was closed early"),
                _ => None,
            };
            if let Some(summary) = summary {
                return Some(summary.into());
            }
            layer = io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static));
        }
    }
    // The resolver's failure reaches us without a type of its own (hyper's connector wraps
    // getaddrinfo's message in a plain error), so its words are all there is to go on.
    let text = format!("{error:#}");
    if text.contains("dns error") || text.contains("failed to lookup address") {
        return Some("the host name could not be resolved".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_are_read_off_the_chain() {
        let full = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC)).context("cannot ingest");
        assert_eq!(Cause::of(&full), Cause::Local);
        let limit = OverLimit::error("over the download limit (raise --max-download)".into());
        assert_eq!(Cause::of(&limit.context("x")), Cause::Content);
        let missing = anyhow::Error::new(NotFound("no branch or tag `x`".into()));
        assert_eq!(Cause::of(&missing), Cause::NotFound);
        let failed = Failed::error(Cause::Local, "out of memory".into()).context("island");
        assert_eq!(Cause::of(&failed), Cause::Local);
        let refused = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(Cause::of(&refused), Cause::Unreachable);
    }

    #[test]
    fn network_failures_are_summarized() {
        let refused = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused)).context("request failed");
        assert_eq!(network_summary(&refused).as_deref(), Some("the connection was refused"));
        let reset = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(network_summary(&reset).as_deref(), Some("the connection was reset"));
        // As reqwest gives it: rustls's error in an I/O error in another.
        let tls = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let tls = network_summary(&anyhow::Error::new(tls)).unwrap();
        assert!(tls.starts_with("TLS failed"), "{tls}");
        let dns = Err::<(), _>(io::Error::other(
            "failed to lookup address information: Name or service not known",
        ))
        .context("dns error")
        .unwrap_err();
        assert_eq!(
            network_summary(&dns).as_deref(),
            Some("the host name could not be resolved")
        );
        assert_eq!(network_summary(&anyhow::anyhow!("a 500 from the server")), None);
    }
}
