//! Differential conformance of vtd's VT-d unit against QEMU's intel-iommu.
//!
//! A scenario (JSON, format in the crate's README.md) is encoded into a small
//! binary module ([`encode`]) that a bare-metal interpreter guest (`guest/`, built by
//! build.rs) runs on both QEMU and vtd-vmm ([`runner`]); the two transcripts
//! ([`transcript`]) must be identical.

pub mod encode;
pub mod runner;
pub mod scenario;
pub mod transcript;

use std::path::{Path, PathBuf};

/// Expands the command-line operands: files as given, directories to their `*.json`
/// files in name order.
pub fn expand_operands(operands: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in operands {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json") && f.is_file())
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(format!("{}: no *.json scenarios", p.display()));
            }
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The corpus directory of this package (`conformance/scenarios`).
pub fn corpus_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))
}
