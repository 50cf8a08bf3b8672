//! The protocol between a client and a realizer elsewhere (`cab realize --stdio` at the other
//! end of an ssh connection), as DESIGN.md lays it out: frames of a 4-byte big-endian length
//! and that many bytes of JSON, one message each; a versioned handshake (each side says its
//! protocol version, and the realizer its features, its remote store and the fetcher modules
//! it runs); then derivations, one at a time, each answered by what the fetcher reports as it
//! happens — which the client answers, so that the early stop crosses the wire — and a result.
//!
//! Everything read is checked: a frame longer than [`FRAME_MAX`], a truncated one, JSON that is
//! no message of this version, are errors that say so (never a panic), and a peer that speaks
//! another version is refused by name.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this cab speaks.
pub const VERSION: u32 = 1;

/// The largest frame either side accepts: a derivation is a few KiB, a message less.
pub const FRAME_MAX: u32 = 1 << 20;

/// What the realizer says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FromRealizer {
    /// The first message: who it is and what it offers.
    Hello {
        /// Its protocol version.
        protocol: u32,
        /// Its cab's version.
        cab: String,
        /// The features it offers (`wasm`, `network`, its system).
        features: Vec<String>,
        /// Its remote store (credentials never included), where its trees go.
        remote: Option<String>,
        /// The fetcher modules it runs, by hash: it refuses derivations of any other.
        modules: Vec<String>,
    },
    /// A line the fetcher wrote to its FIFO, which the realizer does not hold a tree for:
    /// the client answers with a [`ToRealizer::Verdict`] before the fetcher goes on.
    Report {
        /// The line's format (`git-rev`, …).
        format: String,
        /// Its value.
        value: String,
    },
    /// Bytes downloaded so far.
    Progress {
        /// Bytes.
        bytes: u64,
    },
    /// The derivation is realized, and its tree is on the remote store.
    Done {
        /// The island's tree (the subpath's).
        tree: String,
        /// Its narHash.
        nar: String,
        /// The commit, where there is one.
        rev: Option<String>,
        /// The whole fetched tree.
        whole: String,
        /// Bytes the realizer downloaded.
        downloaded: u64,
        /// Whether it stopped early on a tree it held.
        stopped_early: bool,
        /// Every line the fetcher reported (`format value`), for the client's index.
        reported: Vec<(String, String)>,
    },
    /// The client said it holds the tree a reported line names: the run stopped there.
    Stopped {
        /// That tree.
        whole: String,
        /// The commit, where the fetcher said it.
        rev: Option<String>,
        /// What the fetcher reported before it stopped (`format value`).
        reported: Vec<(String, String)>,
    },
    /// The derivation failed there, or was refused.
    Failed {
        /// The error, whole.
        message: String,
        /// What kind of failure: `local`, `not-found`, `unreachable` or `content` as
        /// `realizer::Cause` names them, or `refused` (a derivation this realizer does not
        /// run, a message it did not expect).
        cause: String,
    },
}

/// The kind of a message, as its frame names it.
pub fn kind(message: &FromRealizer) -> &'static str {
    match message {
        FromRealizer::Hello { .. } => "hello",
        FromRealizer::Report { .. } => "report",
        FromRealizer::Progress { .. } => "progress",
        FromRealizer::Done { .. } => "done",
        FromRealizer::Stopped { .. } => "stopped",
        FromRealizer::Failed { .. } => "failed",
    }
}

/// What the client says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToRealizer {
    /// The first message.
    Hello {
        /// Its protocol version.
        protocol: u32,
        /// Its cab's version.
        cab: String,
    },
    /// Realize this derivation (its canonical JSON, with its id).
    Realize {
        /// The derivation.
        derivation: serde_json::Value,
        /// How to name it in logs (the island).
        label: String,
    },
    /// The answer to a [`FromRealizer::Report`]: the tree the client holds for that line, if
    /// any (then the realizer stops).
    Verdict {
        /// The tree, as `blake3-…`.
        hit: Option<String>,
    },
}

/// Writes one message as a frame.
pub async fn send<W: AsyncWrite + Unpin, M: Serialize>(out: &mut W, message: &M) -> Result<()> {
    let bytes = serde_json::to_vec(message).context("cannot encode a message")?;
    let len = u32::try_from(bytes.len()).ok().filter(|&l| l <= FRAME_MAX);
    let len = len.with_context(|| format!("a message of {} bytes is too large to send", bytes.len()))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(&bytes).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one message; `None` at a clean end of the stream (between frames).
pub async fn receive<R: AsyncRead + Unpin, M: for<'de> Deserialize<'de>>(input: &mut R) -> Result<Option<M>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = input.read(&mut len[got..]).await.context("cannot read a frame")?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("the stream ended inside a frame's length");
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len > FRAME_MAX {
        bail!("a frame of {len} bytes, more than the {FRAME_MAX} this protocol allows (not a cab realizer?)");
    }
    let mut bytes = vec![0u8; len as usize];
    input
        .read_exact(&mut bytes)
        .await
        .with_context(|| format!("the stream ended inside a frame of {len} bytes"))?;
    let message = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "a frame that is no message of protocol {VERSION}: {}",
            crate::text::shorten(&String::from_utf8_lossy(&bytes))
        )
    })?;
    Ok(Some(message))
}

/// Checks the peer's protocol version.
pub fn check_version(theirs: u32, cab: &str) -> Result<()> {
    if theirs != VERSION {
        bail!(
            "the other side speaks realizer protocol {theirs} (cab {cab}), this cab speaks {VERSION}: \
             use the same cab version on both"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_frames_are_errors() {
        let mut buf = Vec::new();
        let hello = FromRealizer::Hello {
            protocol: VERSION,
            cab: "0.1.0".into(),
            features: vec!["wasm".into()],
            remote: None,
            modules: vec![],
        };
        send(&mut buf, &hello).await.unwrap();
        send(&mut buf, &ToRealizer::Verdict { hit: None }).await.unwrap();
        let mut input = &buf[..];
        assert_eq!(receive::<_, FromRealizer>(&mut input).await.unwrap(), Some(hello));
        assert_eq!(
            receive::<_, ToRealizer>(&mut input).await.unwrap(),
            Some(ToRealizer::Verdict { hit: None })
        );
        assert_eq!(receive::<_, ToRealizer>(&mut input).await.unwrap(), None);

        // Garbage, truncation, a huge length, a message of another kind.
        let garbage = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
        let e = receive::<_, FromRealizer>(&mut &garbage[..]).await.unwrap_err();
        assert!(format!("{e:#}").contains("more than"), "{e:#}");
        let e = receive::<_, FromRealizer>(&mut &buf[..6]).await.unwrap_err();
        assert!(format!("{e:#}").contains("ended inside a frame"), "{e:#}");
        let e = receive::<_, FromRealizer>(&mut &[0u8, 0][..]).await.unwrap_err();
        assert!(format!("{e:#}").contains("length"), "{e:#}");
        let mut other = Vec::new();
        send(&mut other, &serde_json::json!({"type": "launch-missiles"}))
            .await
            .unwrap();
        let e = receive::<_, FromRealizer>(&mut &other[..]).await.unwrap_err();
        assert!(format!("{e:#}").contains("no message of protocol"), "{e:#}");
        assert!(check_version(2, "9.9").unwrap_err().to_string().contains("protocol 2"));
    }
}
