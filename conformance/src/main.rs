//! `vtd-conformance`: runs scenarios on QEMU and on vtd-vmm and compares transcripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vtd_conformance::runner::{
    self, Machines, Target, WorkDir, check_qemu, default_qemu, find_vmm, run_scenario,
};
use vtd_conformance::scenario::{Scenario, load_scenario};
use vtd_conformance::transcript::{self, Transcript};
use vtd_conformance::{encode, expand_operands};

const USAGE: &str = "\
usage: vtd-conformance run --target qemu|vmm [OPTIONS] FILE|DIR...
       vtd-conformance diff [OPTIONS] FILE|DIR...
       vtd-conformance check FILE|DIR...
       vtd-conformance encode FILE -o OUT
       vtd-conformance interpreter -o OUT

  run          print each scenario's transcript on one machine
  diff         run on both machines, print a unified diff for each scenario whose
               transcripts differ, end with `N passed, M failed` (exit 0 only if all match)
  check        validate scenario files
  encode       write the binary module the interpreter reads
  interpreter  write the interpreter image (multiboot elf32-i386 kernel)

options:
  --qemu PATH      QEMU binary (default: $VTD_QEMU, else qemu-system-x86_64)
  --vmm PATH       vtd-vmm binary (default: $VTD_VMM, next to this program, then PATH)
  --timeout SECS   per-run timeout (default 60)
  -j N             parallel runs (default: number of CPUs, at most 4)
  -o OUT           output file (encode, interpreter)";

struct Opts {
    cmd: String,
    target: Option<Target>,
    qemu: PathBuf,
    vmm: Option<PathBuf>,
    timeout: Duration,
    jobs: usize,
    out: Option<PathBuf>,
    files: Vec<PathBuf>,
}

fn parse_args(args: Vec<String>) -> Result<Opts, String> {
    let mut it = args.into_iter();
    let cmd = it.next().ok_or("missing command")?;
    if !["run", "diff", "check", "encode", "interpreter"].contains(&cmd.as_str()) {
        return Err(format!("unknown command `{cmd}`"));
    }
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let mut o = Opts {
        cmd,
        target: None,
        qemu: default_qemu(),
        vmm: None,
        timeout: runner::DEFAULT_TIMEOUT,
        jobs,
        out: None,
        files: Vec::new(),
    };
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--target" => {
                o.target = Some(match val("--target")?.as_str() {
                    "qemu" => Target::Qemu,
                    "vmm" => Target::Vmm,
                    t => return Err(format!("unknown target `{t}` (qemu or vmm)")),
                })
            }
            "--qemu" => o.qemu = PathBuf::from(val("--qemu")?),
            "--vmm" => o.vmm = Some(PathBuf::from(val("--vmm")?)),
            "--timeout" => {
                let v = val("--timeout")?;
                o.timeout = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or(format!("bad --timeout `{v}`"))?;
            }
            "-j" | "--jobs" => {
                let v = val("-j")?;
                o.jobs = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("bad -j `{v}`"))?;
            }
            "-o" => o.out = Some(PathBuf::from(val("-o")?)),
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option `{s}`")),
            _ => o.files.push(PathBuf::from(a)),
        }
    }
    Ok(o)
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

fn machines(o: &Opts, need_qemu: bool) -> Result<Machines, String> {
    if need_qemu {
        let version = check_qemu(&o.qemu)?;
        if !version.contains("version 10.") {
            eprintln!(
                "vtd-conformance: warning: the corpus was validated against QEMU 10.0.2, this is `{version}`"
            );
        }
    }
    Ok(Machines {
        qemu: o.qemu.clone(),
        vmm: o.vmm.clone().or_else(find_vmm),
        timeout: o.timeout,
    })
}

fn checked(s: &Scenario, r: Result<Transcript, String>) -> Result<Transcript, String> {
    let t = r?;
    transcript::check(s, &t).map_err(|e| format!("malformed transcript: {e}"))?;
    Ok(t)
}

fn cmd_run(o: &Opts) -> Result<bool, String> {
    let target = o.target.ok_or("run needs --target qemu|vmm")?;
    let m = machines(o, target == Target::Qemu)?;
    if target == Target::Vmm && m.vmm.is_none() {
        return Err(
            "vtd-vmm not found: build it (cargo build -p vtd-vmm) or pass --vmm PATH".into(),
        );
    }
    let work = WorkDir::new()?;
    let loaded = load_all(&o.files)?;
    let results = runner::parallel(&loaded, o.jobs, |(_, s)| match s {
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

fn cmd_diff(o: &Opts) -> Result<bool, String> {
    let m = machines(o, true)?;
    if m.vmm.is_none() {
        return Err(
            "vtd-vmm not found: build it (cargo build -p vtd-vmm) or pass --vmm PATH".into(),
        );
    }
    let work = WorkDir::new()?;
    let loaded = load_all(&o.files)?;
    let jobs: Vec<(usize, Target)> = (0..loaded.len())
        .flat_map(|i| [(i, Target::Qemu), (i, Target::Vmm)])
        .filter(|(i, _)| loaded[*i].1.is_ok())
        .collect();
    let results = runner::parallel(&jobs, o.jobs, |(i, t)| match &loaded[*i].1 {
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

fn cmd_check(o: &Opts) -> Result<bool, String> {
    let mut ok = true;
    for (file, s) in load_all(&o.files)? {
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

fn cmd_encode(o: &Opts) -> Result<bool, String> {
    let [file] = o.files.as_slice() else {
        return Err("encode takes one scenario file".into());
    };
    let out = o.out.as_ref().ok_or("encode needs -o OUT")?;
    let s = load_scenario(file).map_err(|e| e.to_string())?;
    let bytes = encode::encode(&s)?;
    std::fs::write(out, bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(true)
}

fn cmd_interpreter(o: &Opts) -> Result<bool, String> {
    let out = o.out.as_ref().ok_or("interpreter needs -o OUT")?;
    std::fs::write(out, runner::INTERPRETER).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vtd-conformance: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let r = match o.cmd.as_str() {
        "run" => cmd_run(&o),
        "diff" => cmd_diff(&o),
        "check" => cmd_check(&o),
        "encode" => cmd_encode(&o),
        _ => cmd_interpreter(&o),
    };
    match r {
        Ok(true) => {
            if matches!(o.cmd.as_str(), "run" | "diff") {
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
