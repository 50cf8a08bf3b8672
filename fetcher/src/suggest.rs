//! "Did you mean": when a ref does not exist, the error lists the server's refs whose names are
//! closest to what was asked for. Refs arrive as a stream that may be long, so only the best
//! few are kept as they pass.

use crate::prelude::*;

/// How many suggestions an error lists.
pub const MAX_SUGGESTIONS: usize = 10;

/// Names longer than this are compared on their first this-many bytes only, which bounds the
/// cost of one comparison whatever the server sends.
const MAX_COMPARED: usize = 128;

/// The closest names seen so far.
#[derive(Debug, Clone)]
pub struct Nearest {
    wanted: Vec<u8>,
    /// Sorted best first: (edit distance, longer shared prefix first, name).
    best: Vec<(usize, core::cmp::Reverse<usize>, Vec<u8>)>,
}

impl Nearest {
    /// Looks for names close to `wanted`.
    pub fn new(wanted: &[u8]) -> Nearest {
        Nearest {
            wanted: wanted.to_vec(),
            best: Vec::new(),
        }
    }

    /// Considers `name`, shown as `name` but compared as `key` (a ref's short name when the
    /// question was a short name).
    pub fn consider(&mut self, key: &[u8], name: &[u8]) {
        if self.best.iter().any(|(_, _, n)| n == name) {
            return;
        }
        // The length difference bounds the distance from below: most names of a long list
        // are ruled out without computing it.
        if let Some((worst, _, _)) = self.best.get(MAX_SUGGESTIONS - 1)
            && key.len().abs_diff(self.wanted.len()) > *worst
        {
            return;
        }
        let score = (
            distance(&self.wanted, key),
            core::cmp::Reverse(shared_prefix(&self.wanted, key)),
        );
        let at = self
            .best
            .partition_point(|(d, p, n)| (*d, *p, n.as_slice()) <= (score.0, score.1, name));
        if at < MAX_SUGGESTIONS {
            self.best.insert(at, (score.0, score.1, name.to_vec()));
            self.best.truncate(MAX_SUGGESTIONS);
        }
    }

    /// The names kept, best first.
    pub fn names(&self) -> Vec<String> {
        self.best
            .iter()
            .map(|(_, _, n)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Levenshtein distance over bytes, with two rows.
pub fn distance(a: &[u8], b: &[u8]) -> usize {
    let a = a.get(..MAX_COMPARED).unwrap_or(a);
    let b = b.get(..MAX_COMPARED).unwrap_or(b);
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        let mut left = i + 1;
        let mut diag = i;
        for (j, y) in b.iter().enumerate() {
            let up = prev.get(j + 1).copied().unwrap_or(usize::MAX - 1);
            let value = (diag + usize::from(x != y)).min(left + 1).min(up + 1);
            if let Some(c) = cur.get_mut(j + 1) {
                *c = value;
            }
            diag = up;
            left = value;
        }
        if let Some(c) = cur.first_mut() {
            *c = i + 1;
        }
        core::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance(b"", b""), 0);
        assert_eq!(distance(b"main", b"main"), 0);
        assert_eq!(distance(b"mian", b"main"), 2);
        assert_eq!(distance(b"kitten", b"sitting"), 3);
        assert_eq!(distance(b"", b"abc"), 3);
        assert_eq!(distance(b"abc", b""), 3);
    }

    #[test]
    fn keeps_the_closest_ten() {
        let mut n = Nearest::new(b"v1.2");
        for i in 0..30 {
            let name = format!("refs/tags/v{i}.0");
            n.consider(&name.as_bytes()[10..], name.as_bytes());
        }
        n.consider(b"v1.2", b"refs/heads/v1.2");
        n.consider(b"main", b"refs/heads/main");
        let names = n.names();
        assert_eq!(names.len(), MAX_SUGGESTIONS);
        assert_eq!(names[0], "refs/heads/v1.2");
        assert_eq!(names[1], "refs/tags/v1.0");
        assert!(!names.contains(&"refs/heads/main".to_string()));
    }

    #[test]
    fn prefers_shared_prefix_on_ties() {
        let mut n = Nearest::new(b"feature");
        n.consider(b"xeature", b"refs/heads/xeature");
        n.consider(b"featurx", b"refs/heads/featurx");
        assert_eq!(n.names(), ["refs/heads/featurx", "refs/heads/xeature"]);
    }
}
