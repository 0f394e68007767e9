//! The 30-second soak: the same run `scripts/soak` does for 10 minutes, short enough for
//! `cargo test`. The demo runs with 4 emulated device threads (plus its two passthrough devices)
//! and migrates live every few seconds, while an inspector client follows the event stream the
//! whole time (reconnecting across migrations, which replace the unit behind the socket).
//!
//! What must hold, as in the script: the demo exits 0 with `ok`, no failed check, every fault
//! seen exactly as often as the workload asked for one, at least one migration, events reached
//! the client, and memory stayed flat: RSS at the end within 10% of RSS after the first sixth of
//! the run (the script's rule for runs shorter than 6 minutes).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vtd_inspect::client::Client;
use vtd_inspect::protocol::{ClientMessage, ServerMessage};

const DEMO: &str = env!("CARGO_BIN_EXE_vtd-demo");
const SECONDS: u64 = 30;
/// The first sixth of the run: RSS after it is the baseline the end is compared with.
const WARMUP: Duration = Duration::from_secs(SECONDS / 6);
/// RSS at the end may exceed the baseline by at most this factor.
const RSS_LIMIT: f64 = 1.10;

/// Resident set size of `pid` in KiB, or `None` once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Follows the event stream until `done`, reconnecting whenever the connection ends (each
/// migration swaps the unit behind the socket). Counts the events received.
fn follow_events(sock: std::path::PathBuf, done: Arc<AtomicBool>, events: Arc<AtomicU64>) {
    while !done.load(Ordering::Relaxed) {
        let Ok(mut client) = Client::connect(&sock) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if client.send(&ClientMessage::Subscribe).is_err() {
            continue;
        }
        while let Ok(msg) = client.recv() {
            if let ServerMessage::Events(batch) = msg {
                events.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
            }
            if done.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

#[test]
fn thirty_second_soak_with_inspector_and_migrations_stays_flat_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("soak.sock");
    let seconds = SECONDS.to_string();
    let mut child = Command::new(DEMO)
        .args(["--seconds", &seconds, "--devices", "4", "--json", "--quiet"])
        .arg("--socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    let done = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let follower = {
        let (sock, done, events) = (sock.clone(), done.clone(), events.clone());
        std::thread::spawn(move || follow_events(sock, done, events))
    };

    let start = Instant::now();
    // The demo bounds its own run; a debug build gets generous slack before the test gives up.
    let deadline = start + Duration::from_secs(SECONDS + 120);
    let (mut rss_warm, mut rss_end) = (None, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // The end figure is the last sample before the demo's own deadline: after it the demo
        // tears down and frees everything, which says nothing about growth.
        let running = start.elapsed() < Duration::from_secs(SECONDS - 1);
        if let (true, Some(r)) = (running, rss_kib(pid)) {
            rss_end = r;
            if rss_warm.is_none() && start.elapsed() >= WARMUP {
                rss_warm = Some(r);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo ran past {SECONDS} s + 120 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    done.store(true, Ordering::Relaxed);
    let out = child.wait_with_output().unwrap();
    follower.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(0), "{stderr}");

    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(s["ok"], Value::Bool(true), "{s:#}");
    assert_eq!(s["failures"].as_u64(), Some(0), "{s:#}");
    assert!(s["checks"].as_u64().unwrap_or(0) > 1000, "{s:#}");
    assert_eq!(s["emulated_devices"].as_u64(), Some(4), "{s:#}");
    assert_eq!(s["faults"]["expected"], s["faults"]["seen"], "{s:#}");
    assert!(
        s["migration"]["migrations"].as_u64().unwrap_or(0) >= 1,
        "no live migration in {SECONDS} s: {s:#}"
    );
    let followed = events.load(Ordering::Relaxed);
    assert!(followed > 0, "the inspector client received no events");

    let rss_warm = rss_warm.expect("the demo ended before the warm-up was over");
    let ratio = rss_end as f64 / rss_warm as f64;
    eprintln!(
        "soak {SECONDS} s: {} rounds, {} checks, {} migrations, {followed} events followed; \
         RSS {rss_warm} KiB after {} s, {rss_end} KiB at the end (ratio {ratio:.3})",
        s["rounds"],
        s["checks"],
        s["migration"]["migrations"],
        WARMUP.as_secs()
    );
    assert!(
        ratio <= RSS_LIMIT,
        "memory grew: RSS {rss_warm} KiB after {} s, {rss_end} KiB at the end (ratio {ratio:.3}, limit {RSS_LIMIT})",
        WARMUP.as_secs()
    );
}
