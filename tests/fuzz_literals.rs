//! Fuzzing the island literal parser, which reads text from users and lock files: valid
//! literals of every form (IPv6 hosts, configs, subpaths, escapes), changed by a small
//! deterministic mutator. For every input: no panic; an error's column lies within the input
//! (or one past its end); a literal that parses prints to a canonical form that parses back
//! to the same island and prints the same again; and it becomes a derivation without panic.
//!
//! `CAB_FUZZ_SECONDS` is the time it gets (default 1; CI gives 15), `CAB_FUZZ_SEED` the seed,
//! as for the fetcher's fuzz tests (`fetcher/src/fuzz.rs`).

use std::time::{Duration, Instant};

use cab::derivation::{Environment, to_derivation};
use cab::island::Island;

const SEEDS: &[&str] = &[
    "<github:cull-os/cab>",
    "<github:cull-os/cab:{ ref = \"v1.2\" }>",
    "<github:cull-os/cab::/cab/cab-island>",
    "<github:o/r:{ ref = \"main\", rev = \"0123456789abcdef0123456789abcdef01234567\" }:/a/b>",
    "<tarball:https://example.org/x.tar.gz>",
    "<tarball:http://[::1]:8080/x.tar.gz:{ hash = \"blake3-0000000000000000000000000000000000000000000000000000000000000000\" }>",
    "<tarball:http://user@[2001:db8::1]/x.zip::/sub/dir>",
    "<git:https://example.org/x.git:{ ref = \"main\" }>",
    "<git:https://h/r.git:{ narHash = \"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\" }>",
    "<fs::/absolute/path>",
    "<fs::/a b/c\\\"d>",
    "<github:o/r:{ ref = \"a\\\"b\" }>",
    "<github:o/r:{}>",
    "<gitlab:group/sub/project:{ host = \"gitlab.example.org:8443\", ref = \"main\" }:/a>",
    "<sourcehut:~owner/repo:{ rev = \"0123456789abcdef0123456789abcdef01234567\" }>",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Characters the grammar gives meaning to, and a few it must refuse.
const SPECIAL: &[char] = &[
    '<', '>', ':', '{', '}', '[', ']', '"', '\\', '/', '=', ',', ' ', '\n', '\t', '@', '.', '\0', 'é', '𝄞',
];

fn mutate(rng: &mut Rng, text: &str, other: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let len = chars.len();
        match rng.below(6) {
            0 if len > 0 => {
                chars.remove(rng.below(len));
            }
            1 => chars.insert(rng.below(len + 1), SPECIAL[rng.below(SPECIAL.len())]),
            2 if len > 0 => chars[rng.below(len)] = SPECIAL[rng.below(SPECIAL.len())],
            3 => {
                let cut = rng.below(len + 1);
                let other: Vec<char> = other.chars().collect();
                let from = rng.below(other.len());
                chars.truncate(cut);
                chars.extend_from_slice(&other[from..]);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = (rng.below(16) + 1).min(len - at);
                let run: Vec<char> = chars[at..at + n].to_vec();
                let to = rng.below(len);
                chars.splice(to..to, run);
            }
            _ => chars.truncate(rng.below(len + 1)),
        }
    }
    chars.into_iter().collect()
}

fn check(text: &str, env: &Environment) {
    match text.parse::<Island>() {
        Err(e) => {
            let len = text.chars().count();
            assert!(
                (1..=len + 1).contains(&e.column),
                "{text:?}: column {} of {len}",
                e.column
            );
            let _ = e.render(text);
        }
        Ok(island) => {
            let printed = island.to_string();
            let again = printed
                .parse::<Island>()
                .unwrap_or_else(|e| panic!("{text:?} prints as {printed:?}, which does not parse: {e}"));
            assert_eq!(again, island, "{text:?} → {printed:?}");
            assert_eq!(again.to_string(), printed, "{text:?}");
            let _ = to_derivation(&island, env);
        }
    }
}

#[test]
fn island_literals_never_panic_and_round_trip() {
    let env = Environment {
        forges: cab::derivation::Forges::default(),
        fetcher: cab::realizer::module_hash(cab::realizer::FETCHER_WASM),
    };
    let budget = std::env::var("CAB_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    let seed = std::env::var("CAB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cab1_u64);
    for seed in SEEDS {
        assert!(seed.parse::<Island>().is_ok(), "{seed}");
        check(seed, &env);
    }
    let mut rng = Rng(seed | 1);
    let (started, budget) = (Instant::now(), Duration::from_secs_f64(budget.max(0.0)));
    let mut runs = 0u64;
    while started.elapsed() < budget {
        let (a, b) = (SEEDS[rng.below(SEEDS.len())], SEEDS[rng.below(SEEDS.len())]);
        let text = mutate(&mut rng, a, b);
        let result = std::panic::catch_unwind(|| check(&text, &env));
        assert!(result.is_ok(), "the input that failed: {text:?}");
        runs += 1;
    }
    eprintln!("fuzz literals: {runs} inputs in {:?} (seed {seed})", started.elapsed());
}
