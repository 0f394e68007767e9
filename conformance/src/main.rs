//! `vtd-conformance`: runs scenarios on QEMU and on vtd-vmm and compares transcripts.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vtd_conformance::runner::{
    self, Machines, Target, WorkDir, check_qemu, default_qemu, find_vmm, run_scenario,
};
use vtd_conformance::scenario::{Scenario, load_scenario};
use vtd_conformance::transcript::{self, Transcript};
use vtd_conformance::{encode, expand_operands};

/// vtd-conformance: runs scenarios on QEMU and on vtd-vmm and compares transcripts
#[derive(Debug, Parser)]
#[command(
    name = "vtd-conformance",
    version,
    after_help = "RUST_LOG filters tracing events on standard error.\n\
                  Exit status: 0 when everything passed, 1 when a scenario failed or differs, \
                  2 for a usage or setup error."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print each scenario's transcript on one machine
    Run {
        /// The machine
        #[arg(long, value_enum)]
        target: TargetArg,
        #[command(flatten)]
        machines: MachineArgs,
        /// Scenario files, or directories of them
        #[arg(value_name = "FILE|DIR", required = true)]
        files: Vec<PathBuf>,
    },
    /// Run on both machines, print a unified diff for each scenario whose transcripts differ,
    /// end with `N passed, M failed` (exit 0 only if all match)
    Diff {
        #[command(flatten)]
        machines: MachineArgs,
        /// Scenario files, or directories of them
        #[arg(value_name = "FILE|DIR", required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate scenario files
    Check {
        /// Scenario files, or directories of them
        #[arg(value_name = "FILE|DIR", required = true)]
        files: Vec<PathBuf>,
    },
    /// Write the binary module the interpreter reads
    Encode {
        /// The scenario file
        file: PathBuf,
        /// Output file
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
    },
    /// Write the interpreter image (multiboot elf32-i386 kernel)
    Interpreter {
        /// Output file
        #[arg(short = 'o', value_name = "OUT")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TargetArg {
    /// qemu-system-x86_64 (TCG) with its intel-iommu and edu
    Qemu,
    /// This project's vtd-vmm
    Vmm,
}

impl From<TargetArg> for Target {
    fn from(t: TargetArg) -> Target {
        match t {
            TargetArg::Qemu => Target::Qemu,
            TargetArg::Vmm => Target::Vmm,
        }
    }
}

/// Where the machines are and how runs are scheduled.
#[derive(Debug, clap::Args)]
struct MachineArgs {
    /// QEMU binary [default: $VTD_QEMU, else qemu-system-x86_64]
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// vtd-vmm binary [default: $VTD_VMM, next to this program, then PATH]
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Per-run timeout in seconds
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_timeout)]
    timeout: Duration,
    /// Parallel runs [default: number of CPUs, at most 4]
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
}

impl MachineArgs {
    fn jobs(&self) -> usize {
        match self.jobs {
            Some(n) => n as usize,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
        }
    }
}

/// `--timeout`: positive seconds, fractions allowed.
fn parse_timeout(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| "expected a positive number of seconds".to_string())
}

/// A scenario file and what loading it gave.
type Loaded = (PathBuf, Result<Scenario, String>);

/// Loads every operand; failures are reported and returned as errors in place.
fn load_all(files: &[PathBuf]) -> Result<Vec<Loaded>, String> {
    let files = expand_operands(files)?;
    if files.is_empty() {
        return Err("no scenario files given".into());
    }
    Ok(files
        .into_iter()
        .map(|f| {
            let s = load_scenario(&f).map_err(|e| e.to_string());
            (f, s)
        })
        .collect())
}

fn machines(o: &MachineArgs, need_qemu: bool) -> Result<Machines, String> {
    let qemu = o.qemu.clone().unwrap_or_else(default_qemu);
    if need_qemu {
        let version = check_qemu(&qemu)?;
        if !version.contains("version 10.") {
            eprintln!(
                "vtd-conformance: warning: the corpus was validated against QEMU 10.0.2, this is `{version}`"
            );
        }
    }
    Ok(Machines {
        qemu,
        vmm: o.vmm.clone().or_else(find_vmm),
        timeout: o.timeout,
    })
}

fn checked(s: &Scenario, r: Result<Transcript, String>) -> Result<Transcript, String> {
    let t = r?;
    transcript::check(s, &t).map_err(|e| format!("malformed transcript: {e}"))?;
    Ok(t)
}

fn cmd_run(target: Target, o: &MachineArgs, files: &[PathBuf]) -> Result<bool, String> {
    let m = machines(o, target == Target::Qemu)?;
    if target == Target::Vmm && m.vmm.is_none() {
        return Err(
            "vtd-vmm not found: build it (cargo build -p vtd-vmm) or pass --vmm PATH".into(),
        );
    }
    let work = WorkDir::new()?;
    let loaded = load_all(files)?;
    let results = runner::parallel(&loaded, o.jobs(), |(_, s)| match s {
        Ok(s) => checked(s, run_scenario(&m, &work, target, s)),
        Err(e) => Err(e.clone()),
    });
    let mut all_ok = true;
    for ((file, s), r) in loaded.iter().zip(results) {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        let name = match s {
            Ok(s) => s.name.clone(),
            Err(_) => stem.unwrap_or_default(),
        };
        println!("# {name} ({})", file.display());
        match r {
            Ok(t) => print!("{}", t.text()),
            Err(e) => {
                all_ok = false;
                println!("error: {e}");
            }
        }
    }
    Ok(all_ok)
}

fn cmd_diff(o: &MachineArgs, files: &[PathBuf]) -> Result<bool, String> {
    let m = machines(o, true)?;
    if m.vmm.is_none() {
        return Err(
            "vtd-vmm not found: build it (cargo build -p vtd-vmm) or pass --vmm PATH".into(),
        );
    }
    let work = WorkDir::new()?;
    let loaded = load_all(files)?;
    let jobs: Vec<(usize, Target)> = (0..loaded.len())
        .flat_map(|i| [(i, Target::Qemu), (i, Target::Vmm)])
        .filter(|(i, _)| loaded[*i].1.is_ok())
        .collect();
    let results = runner::parallel(&jobs, o.jobs(), |(i, t)| match &loaded[*i].1 {
        Ok(s) => checked(s, run_scenario(&m, &work, *t, s)),
        Err(e) => Err(e.clone()),
    });
    let mut by_scenario: Vec<[Option<Result<Transcript, String>>; 2]> =
        (0..loaded.len()).map(|_| [None, None]).collect();
    for ((i, t), r) in jobs.iter().zip(results) {
        by_scenario[*i][usize::from(*t == Target::Vmm)] = Some(r);
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for ((file, s), [q, v]) in loaded.iter().zip(by_scenario) {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e}", file.display());
                continue;
            }
        };
        match (q, v) {
            (Some(Ok(q)), Some(Ok(v))) if q == v => {
                passed += 1;
                println!("ok   {}", s.name);
            }
            (Some(Ok(q)), Some(Ok(v))) => {
                failed += 1;
                println!("FAIL {} ({}): transcripts differ", s.name, file.display());
                let (qt, vt) = (q.text(), v.text());
                let diff = similar::TextDiff::from_lines(&qt, &vt);
                print!(
                    "{}",
                    diff.unified_diff()
                        .context_radius(3)
                        .header(&format!("qemu/{}", s.name), &format!("vmm/{}", s.name))
                );
            }
            (q, v) => {
                failed += 1;
                println!("FAIL {} ({})", s.name, file.display());
                for r in [q, v].into_iter().flatten() {
                    if let Err(e) = r {
                        println!("  {e}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn cmd_check(files: &[PathBuf]) -> Result<bool, String> {
    let mut ok = true;
    for (file, s) in load_all(files)? {
        match s {
            Ok(s) => println!(
                "ok   {} ({}, {} steps)",
                file.display(),
                s.name,
                s.steps.len()
            ),
            Err(e) => {
                ok = false;
                println!("error: {e}");
            }
        }
    }
    Ok(ok)
}

fn cmd_encode(file: &Path, out: &Path) -> Result<bool, String> {
    let s = load_scenario(file).map_err(|e| e.to_string())?;
    let bytes = encode::encode(&s)?;
    std::fs::write(out, bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(true)
}

fn cmd_interpreter(out: &Path) -> Result<bool, String> {
    std::fs::write(out, runner::INTERPRETER).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(true)
}

fn main() -> ExitCode {
    // args_os: a non-UTF-8 argument is clap's usage error (status 2), not a panic.
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Tracing events on standard error, filtered by RUST_LOG (errors only when it is unset or
    // invalid): transcripts on standard output stay clean.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let start = Instant::now();
    let timed = matches!(cli.command, Cmd::Run { .. } | Cmd::Diff { .. });
    let r = match &cli.command {
        Cmd::Run {
            target,
            machines,
            files,
        } => cmd_run((*target).into(), machines, files),
        Cmd::Diff { machines, files } => cmd_diff(machines, files),
        Cmd::Check { files } => cmd_check(files),
        Cmd::Encode { file, out } => cmd_encode(file, out),
        Cmd::Interpreter { out } => cmd_interpreter(out),
    };
    match r {
        Ok(true) => {
            if timed {
                eprintln!("vtd-conformance: done in {:.1?}", start.elapsed());
            }
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vtd-conformance: {e}");
            ExitCode::from(2)
        }
    }
}
