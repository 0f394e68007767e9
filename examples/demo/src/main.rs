//! `vtd-demo`: the whole system working in one process, the way a VMM uses it, and checked.
//!
//! No hardware and no setup: guest RAM (vm-memory with a dirty bitmap), a VT-d unit in scalable
//! first-stage mode programmed by a Linux 6.12-style driver, emulated virtio devices doing DMA
//! through `IommuMemory`, and passthrough devices bound through vtd-accel to two simulated host
//! IOMMUs (one device with a PASID other than 0). A seeded workload maps, moves data, unmaps
//! (strictly and lazily), invalidates, faults on purpose and hot-replugs, and every byte moved
//! is verified. The exit status is 0 only if every check held.

mod dma;
mod emulated;
mod inspect;
mod machine;
mod migrate;
mod passthrough;
mod stats;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;

use crate::machine::MAX_DEVICES;
use crate::workload::{Options, Workload};

/// The embedded vtd demo: an in-process machine with a VT-d vIOMMU, emulated and passthrough
/// devices, and a verified DMA workload.
#[derive(Debug, Parser)]
#[command(name = "vtd-demo", version)]
struct Cli {
    /// How long to run, in seconds; 0 runs until Ctrl-C (which ends cleanly with the summary).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop after this many workload rounds (whichever of --seconds and --rounds comes first);
    /// with the same seed, the same rounds do the same operations.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rounds: Option<u64>,
    /// Emulated (virtio-blk-like) devices, each on its own thread (1..=32).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=MAX_DEVICES as i64))]
    devices: u16,
    /// Workload seed: the same seed gives the same sequence of operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Serve the live inspector on this Unix socket (attach with `vtd-inspect --socket PATH`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("vtd-demo: cannot install the signal handler: {e}");
            return ExitCode::from(2);
        }
    }
    let opts = Options {
        duration: (cli.seconds > 0).then(|| Duration::from_secs(cli.seconds)),
        rounds: cli.rounds,
        devices: usize::from(cli.devices),
        seed: cli.seed,
        progress: !cli.quiet,
        tty: std::io::stderr().is_terminal(),
        socket: cli.socket,
    };
    let workload = match Workload::boot(opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("vtd-demo: the machine did not boot: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = workload.run(&stop);
    let mut out = std::io::stdout().lock();
    let printed = if cli.json {
        serde_json::to_writer_pretty(&mut out, &summary)
            .map_err(std::io::Error::other)
            .and_then(|()| {
                use std::io::Write;
                writeln!(out)
            })
    } else {
        summary.print_text(&mut out)
    };
    if let Err(e) = printed {
        eprintln!("vtd-demo: cannot print the summary: {e}");
        return ExitCode::FAILURE;
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
