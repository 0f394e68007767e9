//! Bounded child processes: run a program with no standard input, collect both output streams
//! and kill it when a time limit passes.
//!
//! The tests (vtd-vmm's, vtd-conformance's) and the conformance runner start machines that
//! may hang (a guest that never exits, a QEMU waiting on something); a test must end with a
//! clear failure instead. Both pipes are drained on threads of their own while the child runs,
//! so a child that fills one pipe cannot block on it while we wait on the other (the
//! deadlock `Command::output` avoids the same way), and the limit is checked by polling
//! `try_wait`, which needs no signal handling or extra dependency.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the child's state is polled.
const POLL: Duration = Duration::from_millis(5);

/// What a bounded run produced.
#[derive(Debug)]
pub struct Output {
    /// Exit code (None when killed at the time limit or ended by a signal).
    pub code: Option<i32>,
    /// Whether the time limit ended it.
    pub timed_out: bool,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Wall time from start to exit.
    pub elapsed: Duration,
}

/// Why a bounded run could not take place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program as given to [`Command::new`].
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Waiting for the child failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program as given to [`Command::new`].
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            // A read error ends the stream: what was read so far is the output.
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` with null standard input, collecting its output; kills it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Wait { program, source });
            }
        }
        if started.elapsed() >= limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(POLL);
    };
    let elapsed = started.elapsed();
    Ok(Output {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        timed_out,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_at_the_limit() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let out = run_bounded(c, Duration::from_millis(200)).unwrap();
        assert!(out.timed_out);
        assert_eq!(out.code, None);
        assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    }

    #[test]
    fn collects_status_and_both_streams() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_bounded(c, Duration::from_secs(30)).unwrap();
        assert!(!out.timed_out);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let out = run_bounded(Command::new("true"), Duration::from_secs(30)).unwrap();
        assert_eq!(out.code, Some(0));
    }

    #[test]
    fn large_output_on_both_pipes_does_not_block() {
        // 1 MiB on each stream, far more than a pipe buffer holds.
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "head -c 1048576 /dev/zero | tr '\\0' a; head -c 1048576 /dev/zero | tr '\\0' b >&2",
        ]);
        let out = run_bounded(c, Duration::from_secs(60)).unwrap();
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout.len(), 1 << 20);
        assert_eq!(out.stderr.len(), 1 << 20);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e =
            run_bounded(Command::new("/nonexistent/program"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, Error::Spawn { .. }));
        assert!(
            e.to_string()
                .starts_with("cannot start /nonexistent/program: "),
            "{e}"
        );
    }
}
