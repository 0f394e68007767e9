//! `vtd-inspect`: attach to a running VMM's VT-d unit.
//!
//! `vtd-inspect --socket PATH` opens the TUI; `--dump` prints one snapshot as JSON and exits;
//! `--follow` prints the event stream as JSON lines until the VMM goes away.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vtd_inspect::client::{Client, ClientError};
use vtd_inspect::protocol::{ClientMessage, ServerMessage};

/// Inspect a running VMM's emulated VT-d unit.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The VMM's inspection socket (the path given to its --socket).
    #[arg(long)]
    socket: PathBuf,
    /// Print one snapshot as JSON and exit.
    #[arg(long, conflicts_with = "follow")]
    dump: bool,
    /// Print the event stream as JSON lines (one event per line) until the VMM exits.
    #[arg(long)]
    follow: bool,
}

fn dump(socket: &PathBuf) -> Result<(), ClientError> {
    let mut client = Client::connect(socket)?;
    let (snap, _) = client.snapshot()?;
    let text =
        serde_json::to_string_pretty(&snap).map_err(|e| ClientError::Malformed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn follow(socket: &PathBuf) -> Result<(), ClientError> {
    let mut client = Client::connect(socket)?;
    client.send(&ClientMessage::Subscribe)?;
    let stdout = std::io::stdout();
    let mut reported = 0;
    loop {
        let msg = match client.recv() {
            Ok(m) => m,
            Err(ClientError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let ServerMessage::Events(batch) = msg {
            let mut out = stdout.lock();
            if batch.dropped > reported {
                tracing::warn!(
                    dropped = batch.dropped - reported,
                    "events dropped by the server (reading too slowly)"
                );
                reported = batch.dropped;
            }
            for rec in batch.events {
                let line = serde_json::to_string(&rec)
                    .map_err(|e| ClientError::Malformed(e.to_string()))?;
                if writeln!(out, "{line}").is_err() {
                    // stdout closed (e.g. `| head`): done.
                    return Ok(());
                }
            }
            let _ = out.flush();
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = if args.dump {
        dump(&args.socket)
    } else if args.follow {
        follow(&args.socket)
    } else {
        // Check the socket first so a bad path is a clear error, not a TUI saying "down".
        match Client::connect(&args.socket) {
            Ok(c) => {
                drop(c);
                vtd_inspect::tui::run(args.socket.clone()).map_err(ClientError::Io)
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vtd-inspect: {e}");
            ExitCode::FAILURE
        }
    }
}
