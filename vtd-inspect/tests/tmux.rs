//! The real binary in a real terminal: tmux runs `vtd-inspect --socket`, send-keys types,
//! capture-pane reads the screen. Skipped (with a message) where tmux is not installed.
//!
//! Set VTD_INSPECT_CAPTURE=DIR to keep each tab's capture (the README's screenshots).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Guest;
use vtd_inspect::server::{InspectServer, ServerOptions};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Waits until the screen contains every needle.
    fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.capture();
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {needles:?}, screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "t"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn keep(name: &str, screen: &str) {
    if let Some(dir) = std::env::var_os("VTD_INSPECT_CAPTURE") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.txt")), screen).unwrap();
    }
}

#[test]
fn switch_tabs_drill_into_a_device_survive_the_vmm_leaving_and_quit() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux to run this test)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vtd.sock");
    let mut guest = Guest::new();
    let options = || ServerOptions {
        software: "tmux-test-vmm".into(),
        ..ServerOptions::default()
    };
    let server = InspectServer::start(guest.unit.clone(), &sock, options()).unwrap();
    let tmux = Tmux {
        socket: format!("vtd-inspect-test-{}", std::process::id()),
    };
    let bin = env!("CARGO_BIN_EXE_vtd-inspect");
    let cmd = format!("{bin} --socket {}; sleep 30", sock.display());
    assert!(
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "130",
            "-y",
            "40",
            &cmd
        ])
        .status
        .success()
    );
    tmux.wait_for(&[
        "attached: tmux-test-vmm",
        "1 Overview",
        "root",
        "not latched",
    ]);

    // The guest programs the unit while the TUI watches.
    guest.program();
    guest.flush_page(1, 2, common::IOVA);
    let _ = guest.dma(7, 0x1000);
    let s = tmux.wait_for(&["(scalable)", "TES", "p-iotlb", "Tab/Shift-Tab or 1-5 tabs"]);
    keep("overview", &s);

    tmux.keys(&["2"]);
    let s = tmux.wait_for(&["00:03.0", "scalable", "PASIDDIRPTR", "Enter context entry"]);
    keep("devices", &s);
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for(&["PASID entries (3)", "first-stage"]);
    keep("devices-context", &s);
    tmux.keys(&["Down", "Enter"]);
    let s = tmux.wait_for(&[
        "PASID          1 of 00:03.0",
        "FSPTPTR",
        "qword 0",
        "first-stage root at",
    ]);
    keep("devices-pasid", &s);
    tmux.keys(&["Escape"]);
    tmux.wait_for(&["PASID entries (3)"]);

    tmux.keys(&["3"]);
    let s = tmux.wait_for(&["No passthrough bindings"]);
    keep("bindings", &s);
    tmux.keys(&["4"]);
    let s = tmux.wait_for(&["Rates", "pasid-cache", "QI[", "Invalidations: 7 shown"]);
    keep("invalidations", &s);
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "pasid=1"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["Invalidations: 3 shown, filter [pasid=1]"]);
    tmux.keys(&["5"]);
    let s = tmux.wait_for(&["1 of 1 records pending", "DMA 00:03.0 pasid 7"]);
    keep("faults", &s);

    // A resize is redrawn at the new size.
    tmux.run(&["resize-window", "-t", "t", "-x", "90", "-y", "24"]);
    tmux.wait_for(&["5 Faults", "records pending"]);

    // The VMM goes away: the TUI says so and keeps the last snapshot; it comes back: attached.
    drop(server);
    let s = tmux.wait_for(&["VMM GONE"]);
    keep("vmm-gone", &s);
    let server = InspectServer::start(guest.unit.clone(), &sock, options()).unwrap();
    tmux.wait_for(&["attached: tmux-test-vmm"]);

    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tmux.capture();
        // The shell's `sleep 30` keeps the pane after the TUI exits: the alternate screen is
        // gone and the tabs with it.
        if !s.contains("1 Overview") || !tmux.alive() {
            break;
        }
        assert!(Instant::now() < deadline, "still running after q:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
}
