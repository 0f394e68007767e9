//! `vtd-bench`: every performance figure of the vIOMMU with its target, in a few seconds.
//!
//! `cargo run --release --bin vtd-bench -- --json` prints `{"figures": [{name, value, unit,
//! target, pass}, ...], "missed": [...]}`; without `--json` a table. The exit status is 0
//! whether or not targets are met (the figures are the result; `missed` says which failed).

use clap::Parser;
use vtd_bench::{CountingAllocator, Effort, Figure};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Measures the IOTLB hit, adapter, read, scaling, miss, memory, invalidation and inspector
/// figures.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Multiply every iteration count (longer, steadier runs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    scale: u64,
    /// Runs per timing; the minimum is kept.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: u64,
    /// Measure only these groups of figures (comma-separated: hit, threads, miss, memory,
    /// invalidate, inspector, or miss-first-stage / miss-nested alone); all by default. A single
    /// group is what profiling under callgrind wants.
    #[arg(long, value_delimiter = ',')]
    only: Vec<vtd_bench::Group>,
}

fn main() {
    let args = Args::parse();
    let effort = Effort {
        scale: args.scale,
        runs: args.runs as usize,
    };
    let figures = if args.only.is_empty() {
        vtd_bench::all_figures(effort)
    } else {
        vtd_bench::figures_of(&args.only, effort)
    };
    let missed: Vec<&Figure> = figures.iter().filter(|f| f.pass() == Some(false)).collect();
    if args.json {
        let list: Vec<serde_json::Value> = figures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "value": (f.value * 1000.0).round() / 1000.0,
                    "unit": f.unit,
                    "target": f.target.map(|t| t.to_string()),
                    "pass": f.pass(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "machine": {
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            },
            "figures": list,
            "missed": missed.iter().map(|f| f.name).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
    } else {
        println!(
            "{:<42} {:>12} {:<8} {:<10} pass",
            "figure", "value", "unit", "target"
        );
        for f in &figures {
            println!(
                "{:<42} {:>12.3} {:<8} {:<10} {}",
                f.name,
                f.value,
                f.unit,
                f.target.map(|t| t.to_string()).unwrap_or_default(),
                match f.pass() {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "",
                }
            );
        }
        if missed.is_empty() {
            println!("every target met");
        } else {
            let names: Vec<&str> = missed.iter().map(|f| f.name).collect();
            println!("missed targets: {}", names.join(", "));
        }
    }
}
