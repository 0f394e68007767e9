//! vtd-vmm serving its unit to vtd-inspect: the scalable-mode self-test guest runs with
//! `--socket`, a client attaches the way `vtd-inspect --dump` does, and sees the PASID entries
//! the guest set up and the invalidations it issued.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest_kernel, kvm_available, vmm};
use vtd_inspect::client::Client;
use vtd_inspect::protocol::ContextView;

#[test]
fn the_self_test_guest_is_inspectable_through_the_socket() {
    if !kvm_available() {
        eprintln!("SKIPPED: /dev/kvm is not usable here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vmm.sock");
    let mut child = Command::new(vmm())
        .args([
            "--iommu",
            "x-scalable-mode=on,x-flts=on,intremap=on",
            "--memory",
            "256",
        ])
        .args(["--timeout", "100", "--socket-linger", "30", "--kernel"])
        .arg(guest_kernel())
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    // The guest is done when its last invalidations are in and the queue is idle; poll.
    let snap = loop {
        assert!(Instant::now() < deadline, "no inspectable state in time");
        if let Ok(mut client) = Client::connect(&sock) {
            let (snap, _) = client.snapshot().unwrap();
            let pasids: usize = snap.devices.iter().map(|d| d.pasids.len()).sum();
            if pasids > 0 && !snap.counters.invalidations.is_empty() && snap.uptime_ms > 2000 {
                break snap;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let dump = serde_json::to_string_pretty(&snap).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(snap.software.starts_with("vtd-vmm"), "{dump}");
    assert_eq!(
        snap.unit.root.as_ref().map(|r| r.mode.as_str()),
        Some("scalable"),
        "{dump}"
    );
    let dev = snap
        .devices
        .iter()
        .find(|d| !d.pasids.is_empty())
        .expect("a device with PASID entries");
    assert!(
        matches!(dev.context, ContextView::Scalable { accepted: true, .. }),
        "{dump}"
    );
    let pe = &dev.pasids[0];
    assert_eq!(pe.pgtt, "first-stage", "{dump}");
    assert!(pe.accepted && pe.fs_table.is_some(), "{dump}");
    assert!(
        !pe.mappings.is_empty(),
        "the guest's first-stage table maps its DMA buffer: {dump}"
    );
    let total: u64 = snap.counters.invalidations.values().sum();
    assert!(total >= 2, "{dump}");
    assert!(snap.counters.queued_invalidations > 0, "{dump}");
    assert!(
        snap.queue.enabled && snap.queue.descriptors_processed > 0,
        "{dump}"
    );
    assert!(!dir.path().join("nothing").exists());
}
