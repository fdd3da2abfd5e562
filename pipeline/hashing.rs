//! blake3 helpers shared by the stages: file hashes, hex formatting and checking.

use std::io::Read;
use std::path::Path;

/// Lower-case hex of a blake3 hash (64 characters).
pub fn hex(hash: &blake3::Hash) -> String {
    hash.to_hex().to_string()
}

/// blake3 of a byte slice, as lower-case hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    hex(&blake3::hash(bytes))
}

/// blake3 of a file's bytes, streamed (memory-mapped when possible), as lower-case hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(hex(&hasher.finalize()))
}

/// blake3 of everything a reader yields, as lower-case hex.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// True when `s` is 64 lower- or upper-case hex digits.
pub fn is_blake3_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
