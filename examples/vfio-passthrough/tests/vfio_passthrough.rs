//! The `vfio-passthrough` binary's command line and its failure on a host without iommufd.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-passthrough"))
        .args(args)
        .output()
        .expect("the vfio-passthrough binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_prints_usage_and_succeeds() {
    for flag in ["--help", "-h"] {
        let o = run(&[flag]);
        assert_eq!(o.status.code(), Some(0), "{flag}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("Usage: vfio-passthrough --device"), "{out}");
        for opt in ["--device", "--bdf", "--iommu", "--memory", "/dev/iommu"] {
            assert!(out.contains(opt), "usage lacks {opt}: {out}");
        }
    }
}

#[test]
fn bad_arguments_fail_with_status_2_and_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "--device <PATH>"),
        (&["--bdf", "00:02.0"], "--device <PATH>"),
        (&["--device", "/dev/null"], "--bdf <BB:DD.F>"),
        (&["--device"], "a value is required for '--device <PATH>'"),
        (&["--frobnicate"], "unexpected argument '--frobnicate'"),
        (
            &["--device", "/dev/null", "--bdf", "zz:02.0"],
            "for '--bdf <BB:DD.F>': expected BB:DD.F",
        ),
        (
            &["--device", "/dev/null", "--bdf", "00:20.0"],
            "for '--bdf <BB:DD.F>': expected BB:DD.F",
        ),
        (
            &["--device", "/dev/null", "--bdf", "00:02.8"],
            "for '--bdf <BB:DD.F>': expected BB:DD.F",
        ),
        (
            &["--device", "/dev/null", "--bdf", "0002"],
            "for '--bdf <BB:DD.F>': expected BB:DD.F",
        ),
        (
            &["--device", "/dev/null", "--bdf", "0001:00:02.0"],
            "segment 0000",
        ),
        (
            &["--device", "/dev/null", "--bdf", "00:02.0", "--memory", "0"],
            "for '--memory <MIB>'",
        ),
        (
            &[
                "--device",
                "/dev/null",
                "--bdf",
                "00:02.0",
                "--memory",
                "lots",
            ],
            "for '--memory <MIB>'",
        ),
        (
            &[
                "--device",
                "/dev/null",
                "--device",
                "/dev/zero",
                "--bdf",
                "0:2.0",
            ],
            "the argument '--device <PATH>' cannot be used multiple times",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected `{want}` in: {err}");
        // clap shows the usage line, or points at --help where it omits it.
        assert!(
            err.contains("Usage: vfio-passthrough") || err.contains("try '--help'"),
            "{args:?}: {err}"
        );
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
}

#[test]
fn an_invalid_iommu_configuration_names_its_step() {
    let o = run(&[
        "--device",
        "/dev/null",
        "--bdf",
        "00:02.0",
        "--iommu",
        "x-no-such-property=on",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("configuring the vIOMMU (--iommu) failed"),
        "{err}"
    );
    assert!(err.contains("x-no-such-property"), "{err}");
}

#[test]
fn without_dev_iommu_it_stops_at_the_iommufd_step() {
    let o = run(&["--device", "/dev/null", "--bdf", "00:02.0"]);
    let err = stderr(&o);
    if Path::new("/dev/iommu").exists() {
        eprintln!(
            "/dev/iommu exists on this host; skipping the absent-iommufd assertion \
             (exit {:?}: {err})",
            o.status.code()
        );
        // /dev/null is no VFIO cdev, so the program must still fail, at a later step.
        assert_eq!(o.status.code(), Some(2), "{err}");
        return;
    }
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("opening the host iommufd failed"), "{err}");
    assert!(err.contains("cannot open /dev/iommu"), "{err}");
    assert!(err.contains("(needs CONFIG_IOMMUFD and an IOMMU)"), "{err}");
    assert!(stdout(&o).is_empty());
}
