//! A Nix binary cache beside a remote's own objects, so that Nix can substitute the trees cab
//! pushed. Each tree becomes the fixed-output store path Nix computes for a `fetchTarball` or
//! `fetchTree` source with that narHash (name `source`), described by a `.narinfo` (signed in
//! Nix's ed25519 key format when a secret key is given, and carrying the content address
//! Nix checks) and its NAR, compressed with zstd:
//!
//! ```text
//! nix-cache-info                 StoreDir: /nix/store
//! <32 chars>.narinfo             StorePath, URL, Compression, FileHash, FileSize, NarHash,
//!                                NarSize, References, CA, Sig
//! nar/<file hash>.nar.zst        the NAR
//! ```

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::{Backend, Body, Remote};
use crate::hash::{NarHash, TreeHash, encoding};
use crate::store::Store;

/// The store directory every path here lives in.
const STORE_DIR: &str = "/nix/store";
/// The name Nix gives a fetched source.
const NAME: &str = "source";

/// The store path of a `source` fixed-output path with this NAR hash (NAR serialisation,
/// SHA-256), as `builtins.fetchTarball { sha256 = …; }` and `nix-store --add` make it.
pub fn store_path(nar: &NarHash) -> String {
    let fingerprint = format!("source:sha256:{}:{STORE_DIR}:{NAME}", encoding::to_hex(&nar.0));
    let digest = Sha256::digest(fingerprint.as_bytes());
    let mut compressed = [0u8; 20];
    for (i, byte) in digest.iter().enumerate() {
        compressed[i % 20] ^= byte;
    }
    format!("{STORE_DIR}/{}-{NAME}", encoding::to_nix_base32(&compressed))
}

/// The hash part of a store path (its 32 base-32 characters): a narinfo's name.
fn hash_part(path: &str) -> &str {
    let name = path.trim_start_matches(STORE_DIR).trim_start_matches('/');
    name.split('-').next().unwrap_or(name)
}

/// A Nix signing key, as `nix-store --generate-binary-cache-key` and `nix key
/// generate-secret` write it: `NAME:BASE64` of 64 bytes (seed, then public key).
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<SecretKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the Nix secret key {}", path.display()))?;
        SecretKey::parse(text.trim()).with_context(|| {
            format!(
                "{} is not a Nix secret key (NAME:BASE64, as `nix-store --generate-binary-cache-key` writes)",
                path.display()
            )
        })
    }

    fn parse(text: &str) -> Result<SecretKey> {
        let (name, key) = text.split_once(':').context("no `:`")?;
        if name.is_empty() {
            bail!("no key name");
        }
        let bytes: [u8; 64] = encoding::from_base64(key).context("not 64 bytes of base64")?;
        let seed: [u8; 32] = bytes[..32].try_into().context("not 64 bytes")?;
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            bail!("its public half does not match its secret half");
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// The public key, as Nix's `trusted-public-keys` takes it.
    pub fn public(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            encoding::to_base64(self.key.verifying_key().as_bytes())
        )
    }

    /// Signs a path's fingerprint: `NAME:BASE64(signature)`.
    fn sign(&self, fingerprint: &str) -> String {
        let signature = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, encoding::to_base64(&signature.to_bytes()))
    }
}

/// Writes Nix binary cache entries to a remote.
pub struct CacheWriter {
    key: Option<SecretKey>,
}

impl CacheWriter {
    /// Entries signed with `key` (unsigned without: Nix then needs `require-sigs = false`, or
    /// trusts them by their content address where it checks one).
    pub fn new(key: Option<SecretKey>) -> CacheWriter {
        CacheWriter { key }
    }

    /// Whether the remote has the entry for a tree with this NAR hash.
    pub async fn has(&self, remote: &Remote, nar: &NarHash) -> Result<bool> {
        let path = store_path(nar);
        remote.backend.exists(&format!("{}.narinfo", hash_part(&path))).await
    }

    /// Writes the NAR of `tree` and its narinfo; returns (objects, bytes) uploaded.
    pub async fn write(&self, remote: &Remote, store: &Store, tree: &TreeHash, nar: &NarHash) -> Result<(u64, u64)> {
        let staging = store.staging()?;
        let file = staging.path().join("nar.zst");
        let made = {
            let (store, tree, file) = (store.clone(), *tree, file.clone());
            tokio::task::spawn_blocking(move || compressed_nar(&store, &tree, &file))
                .await
                .context("a NAR task panicked")??
        };
        if made.nar_hash != *nar {
            bail!(
                "{tree}: its NAR hashes to {}, not its recorded {nar}: run `cab store verify`",
                made.nar_hash
            );
        }
        let path = store_path(nar);
        let file_hash = encoding::to_nix_base32(&made.file_hash);
        let nar_key = format!("nar/{file_hash}.nar.zst");
        let nar_b32 = format!("sha256:{}", encoding::to_nix_base32(&nar.0));
        let mut narinfo = format!(
            "StorePath: {path}\nURL: {nar_key}\nCompression: zstd\nFileHash: sha256:{file_hash}\n\
             FileSize: {}\nNarHash: {nar_b32}\nNarSize: {}\nReferences: \nCA: fixed:r:{nar_b32}\n",
            made.file_size, made.nar_size
        );
        if let Some(key) = &self.key {
            let fingerprint = format!("1;{path};{nar_b32};{};", made.nar_size);
            narinfo.push_str(&format!("Sig: {}\n", key.sign(&fingerprint)));
        }
        let mut bytes = made.file_size + narinfo.len() as u64;
        let mut objects = 2;
        if !remote.backend.exists("nix-cache-info").await? {
            let info = format!("StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: 40\n");
            bytes += info.len() as u64;
            objects += 1;
            remote
                .backend
                .put("nix-cache-info", Body::Bytes(info.into_bytes()))
                .await?;
        }
        // The NAR before the narinfo that points at it.
        remote.backend.put(&nar_key, Body::File(file)).await?;
        remote
            .backend
            .put(
                &format!("{}.narinfo", hash_part(&path)),
                Body::Bytes(narinfo.into_bytes()),
            )
            .await?;
        drop(staging);
        Ok((objects, bytes))
    }
}

/// A NAR, compressed, and its hashes and sizes.
struct Made {
    nar_hash: NarHash,
    nar_size: u64,
    file_hash: [u8; 32],
    file_size: u64,
}

/// Writes the zstd-compressed NAR of `tree` to `file`, hashing both streams on the way.
fn compressed_nar(store: &Store, tree: &TreeHash, file: &Path) -> Result<Made> {
    let out = std::fs::File::create(file).with_context(|| format!("cannot write {}", file.display()))?;
    let mut hashed = HashingWriter {
        inner: std::io::BufWriter::new(out),
        sha: Sha256::new(),
        size: 0,
    };
    let mut nar_sha = Sha256::new();
    let nar_size = {
        let mut encoder = zstd::stream::write::Encoder::new(&mut hashed, 3).context("cannot start zstd")?;
        let size = store.write_nar(tree, &mut |bytes| {
            nar_sha.update(bytes);
            encoder.write_all(bytes).context("cannot compress the NAR")
        })?;
        encoder.finish().context("cannot finish the compressed NAR")?;
        size
    };
    hashed
        .inner
        .flush()
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(Made {
        nar_hash: NarHash(nar_sha.finalize().into()),
        nar_size,
        file_hash: hashed.sha.finalize().into(),
        file_size: hashed.size,
    })
}

struct HashingWriter<W> {
    inner: W,
    sha: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut both = [7u8; 64];
        both[32..].copy_from_slice(key.verifying_key().as_bytes());
        let text = format!("cab-test-1:{}", encoding::to_base64(&both));
        let parsed = SecretKey::parse(&text).unwrap();
        assert!(parsed.public().starts_with("cab-test-1:"));
        assert!(parsed.sign("1;x;y;0;").starts_with("cab-test-1:"));
        assert!(SecretKey::parse("no-colon").is_err());
        let mut wrong = both;
        wrong[40] ^= 1;
        assert!(SecretKey::parse(&format!("k:{}", encoding::to_base64(&wrong))).is_err());
    }

    #[test]
    fn store_paths_have_nix_shape() {
        let path = store_path(&NarHash([0; 32]));
        assert!(path.starts_with("/nix/store/") && path.ends_with("-source"), "{path}");
        assert_eq!(hash_part(&path).len(), 32);
    }
}
