//! What the run counts and how it reports it.
//!
//! Device threads and the vCPU thread update [`Stats`] with relaxed atomics (counters only, no
//! per-operation allocation, so a long soak keeps a constant footprint); the few keyed tallies
//! (faults and invalidations by kind) have a fixed, small key set and sit behind one mutex.
//! Failed checks are counted, and only the first [`MAX_FAILURE_MESSAGES`] messages are kept.
//! The [`Summary`] is a plain serde value: the text report and `--json` print the same figures.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Failure messages kept verbatim (the count of failures is exact regardless).
pub const MAX_FAILURE_MESSAGES: usize = 16;

/// DMA counters of one path.
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Requests completed (verified or failed).
    pub ops: AtomicU64,
    /// Bytes the device moved to or from guest memory (data buffers).
    pub bytes: AtomicU64,
}

impl PathCounters {
    /// Counts one completed request of `bytes`.
    pub fn add(&self, bytes: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn report(&self, secs: f64) -> PathSummary {
        let bytes = self.bytes.load(Ordering::Relaxed);
        PathSummary {
            ops: self.ops.load(Ordering::Relaxed),
            bytes,
            mib_per_s: if secs > 0.0 {
                bytes as f64 / secs / (1 << 20) as f64
            } else {
                0.0
            },
        }
    }
}

#[derive(Debug, Default)]
struct Tallies {
    faults_expected: BTreeMap<String, u64>,
    faults_seen: BTreeMap<String, u64>,
    invalidations: BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Everything the run counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Emulated devices (virtio-queue through `IommuMemory`).
    pub emulated: PathCounters,
    /// Passthrough devices (nested HWPTs on the simulated host IOMMUs).
    pub passthrough: PathCounters,
    /// Workload rounds completed.
    pub rounds: AtomicU64,
    /// Unmaps done strictly.
    pub strict_unmaps: AtomicU64,
    /// Unmaps done lazily (parked in a flush queue).
    pub lazy_unmaps: AtomicU64,
    /// Maps with 2 MiB leaves.
    pub maps_2m: AtomicU64,
    /// Maps with 4 KiB leaves.
    pub maps_4k: AtomicU64,
    /// Page requests served.
    pub page_requests: AtomicU64,
    /// Device registrations with a binder (boot and replug).
    pub bindings: AtomicU64,
    /// Hot-unplugs of passthrough devices.
    pub unplugs: AtomicU64,
    /// Replugs of passthrough devices.
    pub replugs: AtomicU64,
    /// Live migrations completed (the progress line's copy of the migration totals).
    pub migrations: AtomicU64,
    /// Checks that failed.
    pub failures: AtomicU64,
    /// Checks that held.
    pub checks: AtomicU64,
    tallies: Mutex<Tallies>,
}

impl Stats {
    fn tallies(&self) -> std::sync::MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a check: `ok`, or a failure with its message.
    pub fn check(&self, ok: bool, message: impl FnOnce() -> String) -> bool {
        if ok {
            self.checks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.fail(message());
        }
        ok
    }

    /// Records a failed check.
    pub fn fail(&self, message: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tallies();
        // Only the first failures are logged and kept: a broken run must not flood the
        // terminal or grow without bound; the count stays exact.
        if t.failures.len() < MAX_FAILURE_MESSAGES {
            tracing::error!(target: "vtd_demo", "check failed: {message}");
            t.failures.push(message);
        }
    }

    /// A fault the workload asked for.
    pub fn fault_expected(&self, reason: &str) {
        *self
            .tallies()
            .faults_expected
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// A fault the guest's fault handler found.
    pub fn fault_seen(&self, reason: &str) {
        *self
            .tallies()
            .faults_seen
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// An invalidation the unit carried out, by descriptor type.
    pub fn invalidation(&self, kind: &str) {
        *self
            .tallies()
            .invalidations
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// Total failures so far.
    pub fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// One path's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    /// Requests completed.
    pub ops: u64,
    /// Data bytes moved.
    pub bytes: u64,
    /// Throughput over the run.
    pub mib_per_s: f64,
}

/// The unit's IOTLB figures.
#[derive(Debug, Clone, Serialize)]
pub struct IotlbSummary {
    /// Lookups that hit.
    pub hits: u64,
    /// Lookups that missed.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
}

/// Fault figures: what the workload asked for and what the guest found, by reason.
#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    /// Deliberate faults, by reason.
    pub expected: BTreeMap<String, u64>,
    /// Faults the guest's fault handler read from the fault-recording registers, by reason.
    pub seen: BTreeMap<String, u64>,
}

/// Migration figures (zero until vtd-migrate is wired in).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationSummary {
    /// Live migrations completed.
    pub migrations: u64,
    /// Pre-copy rounds over all migrations.
    pub precopy_rounds: u64,
    /// Pages sent over all rounds (each migration's full copy included).
    pub dirty_pages: u64,
    /// Size of the last unit snapshot (vtd-migrate's format, passthrough devices included).
    pub snapshot_bytes: u64,
    /// Longest stop-and-copy phase, in microseconds.
    pub max_downtime_us: u64,
}

/// The final report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The workload seed.
    pub seed: u64,
    /// Wall-clock seconds the workload ran.
    pub seconds: f64,
    /// Workload rounds.
    pub rounds: u64,
    /// Emulated devices.
    pub emulated_devices: usize,
    /// Passthrough devices.
    pub passthrough_devices: usize,
    /// Emulated path (virtio-queue over `IommuMemory`).
    pub emulated: PathSummary,
    /// Passthrough path (nested binding on the simulated host IOMMUs).
    pub passthrough: PathSummary,
    /// The unit's IOTLB.
    pub iotlb: IotlbSummary,
    /// The host IOMMUs' IOTLBs (passthrough DMA never walks in the unit).
    pub host_iotlb: IotlbSummary,
    /// Invalidation entries the binders forwarded to the host IOMMUs.
    pub host_invalidations: u64,
    /// Invalidations the unit carried out, by descriptor type.
    pub invalidations: BTreeMap<String, u64>,
    /// Maps by leaf size and unmaps by policy.
    pub maps_4k: u64,
    /// Maps with 2 MiB leaves.
    pub maps_2m: u64,
    /// Strict unmaps.
    pub strict_unmaps: u64,
    /// Lazy unmaps.
    pub lazy_unmaps: u64,
    /// Faults.
    pub faults: FaultSummary,
    /// Page requests served.
    pub page_requests: u64,
    /// Binder registrations (boot and replug).
    pub bindings: u64,
    /// Hot-unplugs.
    pub unplugs: u64,
    /// Replugs.
    pub replugs: u64,
    /// Live migration.
    pub migration: MigrationSummary,
    /// Stages of the demo not run in this build, with the reason.
    pub not_run: Vec<String>,
    /// Checks that held.
    pub checks: u64,
    /// Checks that failed.
    pub failures: u64,
    /// The first failure messages.
    pub failure_messages: Vec<String>,
    /// Whether every check held.
    pub ok: bool,
}

/// Inputs of the summary that do not live in [`Stats`].
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Seed.
    pub seed: u64,
    /// Elapsed time.
    pub elapsed: Duration,
    /// Emulated devices.
    pub emulated_devices: usize,
    /// Passthrough devices.
    pub passthrough_devices: usize,
    /// IOTLB hits and misses.
    pub iotlb: (u64, u64),
    /// The host IOMMUs' IOTLB hits and misses (passthrough DMA).
    pub host_iotlb: (u64, u64),
    /// Invalidation entries the binders forwarded to the host IOMMUs.
    pub host_invalidations: u64,
    /// Migration figures.
    pub migration: MigrationSummary,
    /// Stages not run.
    pub not_run: Vec<String>,
}

impl Stats {
    /// The summary of the run so far.
    pub fn summary(&self, facts: RunFacts) -> Summary {
        let secs = facts.elapsed.as_secs_f64();
        let t = self.tallies();
        let rate = |(hits, misses): (u64, u64)| IotlbSummary {
            hits,
            misses,
            hit_rate: if hits + misses > 0 {
                hits as f64 / (hits + misses) as f64
            } else {
                0.0
            },
        };
        let failures = self.failures.load(Ordering::Relaxed);
        Summary {
            seed: facts.seed,
            seconds: secs,
            rounds: self.rounds.load(Ordering::Relaxed),
            emulated_devices: facts.emulated_devices,
            passthrough_devices: facts.passthrough_devices,
            emulated: self.emulated.report(secs),
            passthrough: self.passthrough.report(secs),
            iotlb: rate(facts.iotlb),
            host_iotlb: rate(facts.host_iotlb),
            host_invalidations: facts.host_invalidations,
            invalidations: t.invalidations.clone(),
            maps_4k: self.maps_4k.load(Ordering::Relaxed),
            maps_2m: self.maps_2m.load(Ordering::Relaxed),
            strict_unmaps: self.strict_unmaps.load(Ordering::Relaxed),
            lazy_unmaps: self.lazy_unmaps.load(Ordering::Relaxed),
            faults: FaultSummary {
                expected: t.faults_expected.clone(),
                seen: t.faults_seen.clone(),
            },
            page_requests: self.page_requests.load(Ordering::Relaxed),
            bindings: self.bindings.load(Ordering::Relaxed),
            unplugs: self.unplugs.load(Ordering::Relaxed),
            replugs: self.replugs.load(Ordering::Relaxed),
            migration: facts.migration,
            not_run: facts.not_run,
            checks: self.checks.load(Ordering::Relaxed),
            failures,
            failure_messages: t.failures.clone(),
            ok: failures == 0 && t.faults_expected == t.faults_seen,
        }
    }
}

impl Summary {
    /// The human-readable report.
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        writeln!(out, "vtd-demo summary (seed {})", self.seed)?;
        writeln!(
            out,
            "  ran {:.1} s, {} rounds, {} emulated + {} passthrough devices",
            self.seconds, self.rounds, self.emulated_devices, self.passthrough_devices
        )?;
        for (name, p) in [
            ("emulated (virtio, IommuMemory)", &self.emulated),
            ("passthrough (nested, sim host)", &self.passthrough),
        ] {
            writeln!(
                out,
                "  DMA {name}: {} ops, {:.1} MiB, {:.1} MiB/s",
                p.ops,
                mib(p.bytes),
                p.mib_per_s
            )?;
        }
        writeln!(
            out,
            "  IOTLB: {} hits, {} misses, hit rate {:.1}%",
            self.iotlb.hits,
            self.iotlb.misses,
            100.0 * self.iotlb.hit_rate
        )?;
        writeln!(
            out,
            "  host IOTLBs: {} hits, {} misses, hit rate {:.1}%; {} invalidations forwarded",
            self.host_iotlb.hits,
            self.host_iotlb.misses,
            100.0 * self.host_iotlb.hit_rate,
            self.host_invalidations
        )?;
        writeln!(
            out,
            "  maps: {} x 4 KiB, {} x 2 MiB; unmaps: {} strict, {} lazy",
            self.maps_4k, self.maps_2m, self.strict_unmaps, self.lazy_unmaps
        )?;
        let inv: Vec<String> = self
            .invalidations
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(out, "  invalidations: {}", inv.join(", "))?;
        let reasons: std::collections::BTreeSet<&String> = self
            .faults
            .expected
            .keys()
            .chain(self.faults.seen.keys())
            .collect();
        for r in reasons {
            writeln!(
                out,
                "  faults {r}: expected {}, seen {}",
                self.faults.expected.get(r).copied().unwrap_or(0),
                self.faults.seen.get(r).copied().unwrap_or(0)
            )?;
        }
        writeln!(
            out,
            "  page requests served: {}; binder registrations: {}; unplugs {}, replugs {}",
            self.page_requests, self.bindings, self.unplugs, self.replugs
        )?;
        writeln!(
            out,
            "  migrations: {} ({} pre-copy rounds, {} pages sent, snapshot {} bytes, max downtime {} us)",
            self.migration.migrations,
            self.migration.precopy_rounds,
            self.migration.dirty_pages,
            self.migration.snapshot_bytes,
            self.migration.max_downtime_us
        )?;
        for n in &self.not_run {
            writeln!(out, "  not run: {n}")?;
        }
        writeln!(
            out,
            "  checks: {} held, {} failed",
            self.checks, self.failures
        )?;
        for m in &self.failure_messages {
            writeln!(out, "    FAILED: {m}")?;
        }
        writeln!(out, "  result: {}", if self.ok { "OK" } else { "FAILED" })
    }
}

/// The live progress line: rewritten in place on a terminal, plain lines otherwise.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    last: Instant,
    every: Duration,
    drawn: bool,
}

impl Progress {
    /// Progress to stderr; `tty` selects the in-place line.
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            last: Instant::now(),
            every: if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            },
            drawn: false,
        }
    }

    /// Prints the line if it is due.
    pub fn tick(&mut self, stats: &Stats, started: Instant) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let secs = started.elapsed().as_secs_f64();
        let mib = |c: &PathCounters| c.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
        let line = format!(
            "[{secs:6.1}s] rounds {} | emulated {} ops {:.1} MiB | passthrough {} ops {:.1} MiB | \
             replugs {} | migrations {} | failures {}",
            stats.rounds.load(Ordering::Relaxed),
            stats.emulated.ops.load(Ordering::Relaxed),
            mib(&stats.emulated),
            stats.passthrough.ops.load(Ordering::Relaxed),
            mib(&stats.passthrough),
            stats.replugs.load(Ordering::Relaxed),
            stats.migrations.load(Ordering::Relaxed),
            stats.failure_count(),
        );
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop the workload.
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.drawn = true;
    }

    /// Ends the in-place line before the summary.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}
