//! Runs the `vtd-demo` binary as a user would and checks what it reports: exit status 0, and a
//! JSON summary whose figures show every path of the system at work and nothing unasked-for.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vtd_testkit::process::run_bounded;

const DEMO: &str = env!("CARGO_BIN_EXE_vtd-demo");

fn demo(args: &[&str]) -> Command {
    let mut cmd = Command::new(DEMO);
    cmd.args(args);
    cmd
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v:#}"))
}

/// The summary's figures that every run, however short, must show.
fn check_summary(s: &Value, devices: u64) {
    assert_eq!(s["ok"], Value::Bool(true), "{s:#}");
    assert_eq!(u(s, &["failures"]), 0, "{s:#}");
    assert!(u(s, &["checks"]) > 1000, "{s:#}");
    assert_eq!(u(s, &["emulated_devices"]), devices);
    assert_eq!(u(s, &["passthrough_devices"]), 2);
    for path in ["emulated", "passthrough"] {
        assert!(u(s, &[path, "ops"]) > 100, "{path}: {s:#}");
        assert!(u(s, &[path, "bytes"]) > 1 << 20, "{path}: {s:#}");
    }
    assert!(u(s, &["iotlb", "hits"]) > 0);
    assert!(u(s, &["iotlb", "misses"]) > 0);
    assert!(u(s, &["maps_4k"]) > 0 && u(s, &["maps_2m"]) > 0, "{s:#}");
    assert!(
        u(s, &["strict_unmaps"]) > 0 && u(s, &["lazy_unmaps"]) > 0,
        "{s:#}"
    );
    assert!(u(s, &["invalidations", "pasid-iotlb"]) > 0, "{s:#}");
    assert!(u(s, &["invalidations", "wait"]) > 0, "{s:#}");
    // Deliberate faults of both kinds, each seen exactly as often as asked for.
    let expected = &s["faults"]["expected"];
    assert_eq!(expected, &s["faults"]["seen"], "{s:#}");
    assert!(u(expected, &["emulated FirstStageNotPresent"]) > 0, "{s:#}");
    assert!(u(expected, &["emulated SmWriteNotPermitted"]) > 0, "{s:#}");
    // A passthrough device sent back to an IOVA unmapped strictly: its DMA fails (the
    // invalidation was forwarded) and the host logs the fault.
    assert!(
        u(expected, &["passthrough FirstStageNotPresent (host log)"]) > 0,
        "{s:#}"
    );
    // The PRI device sent back to an unmapped IOVA: a page request the guest refuses.
    assert!(
        u(
            expected,
            &["passthrough page request refused (unmapped IOVA)"]
        ) > 0,
        "{s:#}"
    );
    assert_eq!(expected.as_object().map(|o| o.len()), Some(4), "{s:#}");
    // The PRI device's demand-paged buffers: each page came in by a page request the guest
    // served (mapped, answered Success), and every request was answered.
    let served = u(s, &["page_requests"]);
    assert!(served > 0, "{s:#}");
    assert_eq!(
        u(s, &["invalidations", "page-group-response"]),
        served
            + u(
                expected,
                &["passthrough page request refused (unmapped IOVA)"]
            ),
        "{s:#}"
    );
    assert_eq!(s["not_run"].as_array().map(Vec::len), Some(0), "{s:#}");
    // Hot-unplug and replug happened, each replug registered the device again.
    let replugs = u(s, &["replugs"]);
    assert!(replugs > 0, "{s:#}");
    assert_eq!(u(s, &["unplugs"]), replugs);
    // Live migration: pre-copy rounds, then the stop-and-copy; every migration re-registers
    // both passthrough devices on the target's host IOMMUs.
    let migrations = u(s, &["migration", "migrations"]);
    assert!(migrations > 0, "{s:#}");
    assert!(
        u(s, &["migration", "precopy_rounds"]) >= 4 * migrations,
        "{s:#}"
    );
    assert!(u(s, &["migration", "dirty_pages"]) > 0, "{s:#}");
    assert!(u(s, &["migration", "max_downtime_us"]) > 0, "{s:#}");
    assert_eq!(u(s, &["bindings"]), 2 + replugs + 2 * migrations);
}

#[test]
fn short_run_exits_zero_with_every_path_in_the_summary() {
    let out = run_bounded(
        // A short run, bounded by rounds so a loaded machine still reaches the first migration
        // (round 200) and several replugs; the time limit only guards against a hang.
        demo(&[
            "--seconds",
            "60",
            "--rounds",
            "600",
            "--json",
            "--devices",
            "3",
            "--seed",
            "7",
        ]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(!out.timed_out, "{}", out.stderr);
    assert_eq!(
        out.code,
        Some(0),
        "stderr: {}\nstdout: {}",
        out.stderr,
        out.stdout
    );
    let s: Value = serde_json::from_str(&out.stdout).expect("JSON summary on stdout");
    assert_eq!(u(&s, &["seed"]), 7);
    check_summary(&s, 3);
    // Not a terminal: the progress goes to stderr as plain lines, never carriage returns.
    assert!(!out.stderr.contains('\r'));
}

#[test]
fn the_same_seed_gives_the_same_workload() {
    let run = |seed: &str| {
        let out = run_bounded(
            demo(&[
                "--seconds",
                "0",
                "--rounds",
                "300",
                "--seed",
                seed,
                "--json",
                "--quiet",
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let mut s: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(u(&s, &["rounds"]), 300);
        assert_eq!(u(&s, &["migration", "migrations"]), 1);
        // Timing and cache figures depend on the threads' interleaving; everything the
        // workload decided does not.
        let o = s.as_object_mut().unwrap();
        for timing in ["seconds", "iotlb", "host_iotlb"] {
            o.remove(timing);
        }
        for path in ["emulated", "passthrough"] {
            o[path].as_object_mut().unwrap().remove("mib_per_s");
        }
        o["migration"]
            .as_object_mut()
            .unwrap()
            .remove("max_downtime_us");
        s
    };
    let a = run("42");
    assert_eq!(a, run("42"));
    assert_ne!(a["emulated"]["bytes"], run("43")["emulated"]["bytes"]);
}

#[test]
fn interrupt_ends_cleanly_with_the_summary() {
    let mut child = demo(&["--seconds", "0", "--json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the demo did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    // However far it got before the signal, the summary is complete and every check held.
    assert_eq!(s["ok"], Value::Bool(true), "{s:#}");
    assert_eq!(u(&s, &["failures"]), 0, "{s:#}");
    assert!(u(&s, &["rounds"]) > 0, "{s:#}");
    assert!(u(&s, &["emulated", "ops"]) > 0 && u(&s, &["passthrough", "ops"]) > 0);
    assert!(stderr.is_empty(), "--quiet prints no progress: {stderr}");
}

#[test]
fn inspector_attaches_to_the_running_demo() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("demo.sock");
    let mut child = demo(&[
        "--seconds",
        "60",
        "--rounds",
        "600",
        "--json",
        "--quiet",
        "--socket",
    ])
    .arg(&sock)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match vtd_inspect::client::Client::connect(&sock) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("no inspector on {}: {e}", sock.display());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(
        client.server().software.starts_with("vtd-demo"),
        "{:?}",
        client.server()
    );
    // Once the guest booted, the snapshot shows its scalable-mode tables: every emulated device
    // (00:04.0, 00:05.0) and both passthrough devices, and the binders' nested HWPTs.
    let snapshot = loop {
        let (snap, _) = client.snapshot().unwrap();
        if snap
            .bindings
            .iter()
            .filter(|b| !b.nested.is_empty())
            .count()
            == 2
        {
            break snap;
        }
        assert!(
            Instant::now() < deadline,
            "bindings never showed: {:?}",
            snap.bindings
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let sids: Vec<u16> = snapshot.devices.iter().map(|d| d.sid).collect();
    for sid in [0x20, 0x28, 0x100, 0x200] {
        assert!(sids.contains(&sid), "{sid:#x} missing from {sids:x?}");
    }
    let pasids: Vec<u32> = snapshot
        .bindings
        .iter()
        .flat_map(|b| b.nested.iter().map(|n| n.pasid))
        .collect();
    assert!(pasids.contains(&0) && pasids.contains(&5), "{pasids:?}");
    client.shutdown();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    check_summary(&s, 2);
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn socket_errors_are_reported_clearly() {
    let out = run_bounded(
        demo(&["--socket", "/nonexistent-dir/demo.sock", "--seconds", "1"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--socket /nonexistent-dir/demo.sock"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["--devices", "0"][..],
        &["--devices", "33"],
        &["--seconds", "x"],
    ] {
        let out = run_bounded(demo(args), Duration::from_secs(30)).unwrap();
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("error"), "{args:?}: {}", out.stderr);
    }
}
