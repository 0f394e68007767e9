//! Replays every target's committed seed corpus (and any crash reproducers kept next to it)
//! through the same harness functions libFuzzer drives: the stable-toolchain half of
//! `fuzz/run`, and what keeps the seeds and the fixed crashes checked on every test run.

use std::path::Path;

use fuzz_harness::TARGETS;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!("{target}: {}", f.display());
        run(&data);
    }
    files.len()
}

#[test]
fn every_seed_of_every_target_passes() {
    for (target, run) in TARGETS {
        let n = replay(target, *run);
        assert!(n > 0, "{target} has no seed corpus");
        println!("{target}: {n} seeds replayed");
    }
}

/// Pseudo-random inputs through every target (xorshift, fixed seed): a smoke test of the
/// harnesses themselves on machines without libFuzzer.
#[test]
fn random_inputs_do_not_break_invariants() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (_, run) in TARGETS {
        for _ in 0..64 {
            let len = (next() % 512) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            run(&data);
        }
    }
}
