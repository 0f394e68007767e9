//! What an attached inspector costs the VMM's translate path.
//!
//! Criterion-style: each case is sampled many times and the median per-operation time is
//! reported, for the unit alone, with the server and two clients attached (one following the
//! stream and asking for a snapshot every 100 ms like the TUI, one subscribed and never
//! reading), and alone again (to see drift). Run with `cargo bench -p vtd-inspect`.
//!
//! Cases: `translate-hit` is the hot path (an IOTLB hit publishes nothing, so the observer is
//! not even called); `flush+translate` is a page-selective PASID-IOTLB flush through the queue
//! (three events: register write, invalidation, wait) followed by a translate that misses and
//! walks, the path where every event goes through the inspector's feed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{GPA, Guest, IOVA};
use vtd_inspect::client::Client;
use vtd_inspect::protocol::{ClientMessage, ServerMessage};
use vtd_inspect::server::{InspectServer, ServerOptions};

const SAMPLES: usize = 31;

/// The lowest of three medians: the machine is shared, and a burst of someone else's work
/// during one run should not read as the inspector's cost.
fn median_ns(mut f: impl FnMut() -> u64) -> f64 {
    (0..3)
        .map(|_| median_once(&mut f))
        .fold(f64::INFINITY, f64::min)
}

fn median_once(f: &mut impl FnMut() -> u64) -> f64 {
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            let ops = f();
            start.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[SAMPLES / 2]
}

fn hit(guest: &Guest) -> f64 {
    median_ns(|| {
        for _ in 0..100_000 {
            black_box(guest.dma(1, IOVA).unwrap());
        }
        100_000
    })
}

fn flush_translate(guest: &mut Guest) -> f64 {
    median_ns(|| {
        for i in 0..500u64 {
            guest.flush_page(1, 2, IOVA);
            assert_eq!(guest.dma(1, IOVA + (i & 0xff)).unwrap(), GPA + (i & 0xff));
        }
        500
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut guest = Guest::new();
    guest.program();
    if quick {
        assert_eq!(guest.dma(1, IOVA).unwrap(), GPA);
        println!("translate_overhead: run with `cargo bench -p vtd-inspect` to measure");
        return;
    }
    let (hit_a, fl_a) = (hit(&guest), flush_translate(&mut guest));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sock");
    let server = InspectServer::start(guest.unit.clone(), &path, ServerOptions::default()).unwrap();
    // The observer alone: the server is subscribed, nobody is attached.
    let (hit_0, fl_0) = (hit(&guest), flush_translate(&mut guest));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let path = path.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&path).unwrap();
            c.send(&ClientMessage::Subscribe).unwrap();
            let mut req = c.requester().unwrap();
            let ticker = std::thread::spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        if req.send(&ClientMessage::GetSnapshot).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    req.shutdown();
                }
            });
            let (mut events, mut snapshots) = (0u64, 0u64);
            while let Ok(m) = c.recv() {
                match m {
                    ServerMessage::Events(b) => events += b.events.len() as u64,
                    ServerMessage::Snapshot(_) => snapshots += 1,
                    _ => {}
                }
            }
            ticker.join().unwrap();
            (events, snapshots)
        })
    };
    let mut stuck = UnixStream::connect(&path).unwrap();
    stuck
        .write_all(b"{\"msg\":\"hello\",\"magic\":\"vtd-inspect\",\"version\":1,\"software\":\"stuck\"}\n{\"msg\":\"subscribe\"}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (hit_b, fl_b) = (hit(&guest), flush_translate(&mut guest));
    stop.store(true, Ordering::Relaxed);
    let (events, snapshots) = follower.join().unwrap();
    drop(stuck);
    drop(server);

    let (hit_c, fl_c) = (hit(&guest), flush_translate(&mut guest));
    let base_hit = (hit_a + hit_c) / 2.0;
    let base_fl = (fl_a + fl_c) / 2.0;
    let pct = |x: f64, base: f64| (x / base - 1.0) * 100.0;
    println!(
        "case              alone(before)  server,no client  2 clients  alone(after)  overhead(no client / clients)"
    );
    println!(
        "translate-hit     {hit_a:>10.1} ns {hit_0:>14.1} ns {hit_b:>8.1} ns {hit_c:>9.1} ns  {:>+6.1}% / {:>+6.1}%",
        pct(hit_0, base_hit),
        pct(hit_b, base_hit)
    );
    println!(
        "flush+translate   {fl_a:>10.1} ns {fl_0:>14.1} ns {fl_b:>8.1} ns {fl_c:>9.1} ns  {:>+6.1}% / {:>+6.1}%",
        pct(fl_0, base_fl),
        pct(fl_b, base_fl)
    );
    println!("the following client received {events} events and {snapshots} snapshots meanwhile");
}
