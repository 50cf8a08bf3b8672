//! `islands.toml` (the manifest: names → island literals) and `islands.lock` (the pins: each
//! name's original literal and its fully locked literal). This module is the only writer of
//! both: the lock whole, the manifest only by adding islands after what it holds (`cab
//! import`), so a user's comments and order stay.
//!
//! The lock is written whole, deterministically (names sorted, one table per island), to a
//! temporary file that is synced and renamed over the old one, so it is never half-written.
//! Writers hold an exclusive `flock` on the lock's directory for the read-modify-write, so two
//! `cab` processes never interleave.
//!
//! ```toml
//! # islands.lock: written by cab from islands.toml. Do not edit by hand.
//! version = 1
//!
//! [islands.cab]
//! original = '<github:cull-os/cab>'
//! locked = '<github:cull-os/cab:{ rev = "…", hash = "blake3-…", narHash = "sha256-…" }>'
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::island::Island;

/// Names the mount uses for its own levels; no island may take them.
pub const RESERVED_NAMES: &[&str] = &["github", "gitlab", "sourcehut", "by-hash"];

/// The manifest: each name and the island it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// Name → island, sorted by name.
    pub islands: BTreeMap<String, Island>,
}

/// One entry of the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The literal as the manifest had it when this pin was made.
    pub original: Island,
    /// The fully locked literal.
    pub locked: Island,
}

/// The lock file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    /// Name → pin, sorted by name.
    pub pins: BTreeMap<String, Pin>,
}

/// Checks that `name` can be a directory at the top of the mount.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("`{name}` is not a single path component"));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("`{name}` is reserved for the mount's own `{name}/` directory"));
    }
    Ok(())
}

/// The lock file that goes with a manifest: `islands.lock` beside it.
pub fn lock_path(manifest: &Path) -> PathBuf {
    manifest.with_file_name("islands.lock")
}

impl Manifest {
    /// Reads and checks a manifest. Errors name the file, the island's name and the column.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read the manifest {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow!("{}: not valid TOML: {e}", path.display()))?;
        let mut islands = BTreeMap::new();
        for (name, value) in table {
            check_name(&name).map_err(|e| anyhow!("{}: island name {e}", path.display()))?;
            let Some(literal) = value.as_str() else {
                bail!(
                    "{}: `{name}` must be an island literal in quotes, like {name} = '<github:owner/repo>'",
                    path.display()
                );
            };
            let island = literal
                .parse::<Island>()
                .map_err(|e| anyhow!("{}: island `{name}` is invalid\n{}", path.display(), e.render(literal)))?;
            islands.insert(name, island);
        }
        Ok(Manifest {
            path: path.to_owned(),
            islands,
        })
    }
}

/// Quotes a string for TOML: a literal string when it can be one (island literals are full of
/// double quotes), else a basic string with escapes.
fn toml_string(s: &str) -> String {
    if !s.contains('\'') && !s.chars().any(|c| c.is_control()) {
        return format!("'{s}'");
    }
    toml::Value::String(s.to_owned()).to_string()
}

/// Quotes a table key for TOML when it is not a bare key.
fn toml_key(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        s.to_owned()
    } else {
        toml::Value::String(s.to_owned()).to_string()
    }
}

impl Lock {
    /// Reads a lock file; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<Lock> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read the lock {}", path.display())),
        };
        Lock::parse(&text)
            .with_context(|| format!("the lock {} is invalid (delete it to repin everything)", path.display()))
    }

    /// Parses a lock file's text.
    pub fn parse(text: &str) -> Result<Lock> {
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("not valid TOML: {e}"))?;
        match table.get("version").and_then(|v| v.as_integer()) {
            Some(1) => {}
            other => bail!("unknown lock version {other:?} (this cab writes version 1)"),
        }
        let mut pins = BTreeMap::new();
        let islands = match table.get("islands") {
            None => return Ok(Lock { pins }),
            Some(v) => v.as_table().context("`islands` must be a table")?,
        };
        for (name, entry) in islands {
            let field = |key: &str| -> Result<Island> {
                let literal = entry
                    .get(key)
                    .and_then(|v| v.as_str())
                    .with_context(|| format!("`{name}` has no `{key}`"))?;
                literal
                    .parse::<Island>()
                    .map_err(|e| anyhow!("`{name}`.{key} is invalid\n{}", e.render(literal)))
            };
            let pin = Pin {
                original: field("original")?,
                locked: field("locked")?,
            };
            if !pin.locked.is_locked() {
                bail!("`{name}`.locked is not fully locked: {}", pin.locked);
            }
            pins.insert(name.clone(), pin);
        }
        Ok(Lock { pins })
    }

    /// The file's text: deterministic, one table per island, names sorted.
    pub fn render(&self) -> String {
        let mut out =
            String::from("# islands.lock: written by cab from islands.toml. Do not edit by hand.\nversion = 1\n");
        for (name, pin) in &self.pins {
            out.push_str(&format!(
                "\n[islands.{}]\noriginal = {}\nlocked = {}\n",
                toml_key(name),
                toml_string(&pin.original.to_string()),
                toml_string(&pin.locked.to_string())
            ));
        }
        out
    }

    /// The pin for `name` if it still matches the manifest's literal (else it must be repinned).
    pub fn current(&self, name: &str, island: &Island) -> Option<&Pin> {
        self.pins.get(name).filter(|pin| pin.original == *island)
    }
}

/// Holds the lock's directory locked for one read-modify-write of the lock file.
pub struct LockGuard {
    _dir: File,
    path: PathBuf,
}

impl LockGuard {
    /// Waits for exclusive use of the lock file at `path`.
    pub fn acquire(path: &Path) -> Result<LockGuard> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let handle = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        // SAFETY: a plain syscall on a descriptor we own.
        if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("cannot lock {}", dir.display()));
        }
        Ok(LockGuard {
            _dir: handle,
            path: path.to_owned(),
        })
    }

    /// Reads the lock as it is now, under the guard.
    pub fn read(&self) -> Result<Lock> {
        Lock::read(&self.path)
    }

    /// Replaces the lock file atomically and durably. Unchanged contents are not rewritten.
    pub fn write(&self, lock: &Lock) -> Result<()> {
        let text = lock.render();
        if fs::read_to_string(&self.path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        replace_file(&self.path, &text).with_context(|| format!("cannot write the lock {}", self.path.display()))
    }

    /// Adds `islands` to the manifest beside the lock (`islands.toml` or `manifest`, in the
    /// same directory), after what it holds now; returns its text before, to put back if
    /// what follows fails. Names it already has are the caller's to refuse.
    pub fn append_to_manifest(&self, manifest: &Path, islands: &[(String, Island)]) -> Result<Option<String>> {
        let before = match fs::read_to_string(manifest) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read the manifest {}", manifest.display())),
        };
        let mut text = before.clone().unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for (name, island) in islands {
            text.push_str(&format!("{} = {}\n", toml_key(name), toml_string(&island.to_string())));
        }
        replace_file(manifest, &text).with_context(|| format!("cannot write the manifest {}", manifest.display()))?;
        Ok(before)
    }

    /// Puts the manifest back as it was before [`LockGuard::append_to_manifest`] (removes it
    /// if there was none).
    pub fn restore_manifest(&self, manifest: &Path, before: Option<&str>) -> Result<()> {
        let result = match before {
            Some(text) => replace_file(manifest, text),
            None => fs::remove_file(manifest),
        };
        result.with_context(|| format!("cannot put the manifest {} back as it was", manifest.display()))
    }
}

/// Replaces `path` atomically and durably: a temporary file beside it, synced, renamed over it,
/// and the directory synced; the temporary file is removed on failure.
fn replace_file(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        io::Result::Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trips_and_is_deterministic() {
        let mut lock = Lock::default();
        let locked = format!(
            "<github:o/r:{{ ref = \"main\", rev = \"{}\", hash = \"blake3-{}\", narHash = \"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\" }}>",
            "a".repeat(40),
            "b".repeat(64)
        );
        for name in ["zeta", "alpha", "with.dot"] {
            lock.pins.insert(
                name.into(),
                Pin {
                    original: "<github:o/r:{ ref = \"main\" }>".parse().unwrap(),
                    locked: locked.parse().unwrap(),
                },
            );
        }
        let text = lock.render();
        assert_eq!(Lock::parse(&text).unwrap(), lock);
        assert!(text.find("[islands.alpha]").unwrap() < text.find("[islands.zeta]").unwrap());
        assert!(text.contains("[islands.\"with.dot\"]"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("cab").is_ok());
        for bad in ["github", "gitlab", "sourcehut", "by-hash", "a/b", "", ".", ".."] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
