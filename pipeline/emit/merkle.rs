//! The Merkle root that names a dataset version: a blake3 binary Merkle tree over the lines of
//! `manifest.jsonl`, in manifest order.
//!
//! # Construction (`blake3-binary-v1`)
//! - The manifest is split into lines at `\n`; every line, the last included, ends with `\n`,
//!   and the newline is not part of the line.
//! - Leaf `i` is `blake3(line_i)` (the raw UTF-8 bytes of the line).
//! - A level is reduced pairwise, left to right: the parent of `(l, r)` is
//!   `blake3(0x01 || l || r)` (32-byte digests; the `0x01` prefix separates nodes from leaves,
//!   which always start with `{`). An odd node at the end of a level is carried up unchanged.
//! - The root is the single node left. An empty manifest has root `blake3("")`.
//!
//! The root is written as 64 lower-case hex digits in `dataset.json` (`merkle_root`).

/// Identifier of the construction above, recorded in `dataset.json` as `merkle`.
pub const CONSTRUCTION: &str = "blake3-binary-v1";

/// Leaf hash of one manifest line (without its newline).
pub fn leaf(line: &[u8]) -> blake3::Hash {
    blake3::hash(line)
}

/// Parent of two nodes: `blake3(0x01 || left || right)`.
pub fn node(left: &blake3::Hash, right: &blake3::Hash) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left.as_bytes());
    h.update(right.as_bytes());
    h.finalize()
}

/// Root over leaf hashes, in order (see the module docs).
pub fn root(leaves: &[blake3::Hash]) -> blake3::Hash {
    if leaves.is_empty() {
        return blake3::hash(b"");
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}

/// Root of a whole `manifest.jsonl` file. Errors when the bytes do not end with a newline (a
/// truncated or edited manifest) — the message says so.
pub fn manifest_root(manifest: &[u8]) -> Result<blake3::Hash, String> {
    if manifest.is_empty() {
        return Ok(root(&[]));
    }
    if !manifest.ends_with(b"\n") {
        return Err("manifest does not end with a newline".into());
    }
    let body = &manifest[..manifest.len() - 1];
    let leaves: Vec<blake3::Hash> = body.split(|b| *b == b'\n').map(leaf).collect();
    Ok(root(&leaves))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_trees_match_the_documented_construction() {
        let a = leaf(b"{\"a\":1}");
        let b = leaf(b"{\"b\":2}");
        let c = leaf(b"{\"c\":3}");
        assert_eq!(root(&[a]), a);
        assert_eq!(root(&[a, b]), node(&a, &b));
        // Odd node carried up: ((a,b), c).
        assert_eq!(root(&[a, b, c]), node(&node(&a, &b), &c));
        assert_eq!(
            manifest_root(b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n").unwrap(),
            node(&node(&a, &b), &c)
        );
        assert_eq!(manifest_root(b"").unwrap(), blake3::hash(b""));
    }

    #[test]
    fn order_and_truncation_matter() {
        let a = leaf(b"x");
        let b = leaf(b"y");
        assert_ne!(root(&[a, b]), root(&[b, a]));
        assert!(manifest_root(b"{}\n{}").is_err());
    }
}
