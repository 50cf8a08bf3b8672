//! The framing of Nix archives (NAR), the byte stream whose SHA-256 is a tree's `narHash`.
//!
//! A NAR is a sequence of length-prefixed strings, each padded with zeros to 8 bytes:
//! `"nix-archive-1"`, then the root node. We never build a NAR; we only produce its bytes in
//! order and feed them to SHA-256 (see [`super::walk`]), so this module writes framing only and
//! leaves file contents to the caller.

/// Appends one NAR string: little-endian u64 length, bytes, zero padding to 8.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0u8; 8][..padding(s.len() as u64)]);
}

/// The zero bytes that follow `len` bytes of string data.
pub fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// The archive header.
pub fn header(out: &mut Vec<u8>) {
    string(out, b"nix-archive-1");
}

/// Everything of a regular file up to its contents: the contents (`size` bytes) follow, then
/// [`file_end`].
pub fn file_start(out: &mut Vec<u8>, executable: bool, size: u64) {
    string(out, b"(");
    string(out, b"type");
    string(out, b"regular");
    if executable {
        string(out, b"executable");
        string(out, b"");
    }
    string(out, b"contents");
    out.extend_from_slice(&size.to_le_bytes());
}

/// Closes a regular file whose contents were `size` bytes long.
pub fn file_end(out: &mut Vec<u8>, size: u64) {
    out.extend_from_slice(&[0u8; 8][..padding(size)]);
    string(out, b")");
}

/// A whole symlink node.
pub fn symlink(out: &mut Vec<u8>, target: &[u8]) {
    string(out, b"(");
    string(out, b"type");
    string(out, b"symlink");
    string(out, b"target");
    string(out, target);
    string(out, b")");
}

/// Opens a directory node; its entries follow, then [`directory_end`].
pub fn directory_start(out: &mut Vec<u8>) {
    string(out, b"(");
    string(out, b"type");
    string(out, b"directory");
}

/// Opens a directory entry; the child node follows, then [`entry_end`].
pub fn entry_start(out: &mut Vec<u8>, name: &[u8]) {
    string(out, b"entry");
    string(out, b"(");
    string(out, b"name");
    string(out, name);
    string(out, b"node");
}

/// Closes a directory entry.
pub fn entry_end(out: &mut Vec<u8>) {
    string(out, b")");
}

/// Closes a directory node.
pub fn directory_end(out: &mut Vec<u8>) {
    string(out, b")");
}
