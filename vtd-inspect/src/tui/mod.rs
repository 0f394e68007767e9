//! The terminal interface: a network thread that keeps a connection (and reconnects), and
//! the UI loop that draws [`app::App`] with [`ui::render`] and feeds it keys.
//!
//! The network thread owns the blocking reads, so the UI never waits on the socket: it polls
//! the terminal for 100 ms at a time and drains whatever the network thread sent meanwhile.
//! When the VMM goes away the thread reports it, the header says so, the last snapshot stays
//! on screen, and the thread tries again every second. A resize is just a redraw: ratatui
//! re-measures the terminal on each draw.

pub mod app;
pub mod ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;
use vtd_core::sync::Mutex;

use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};

use crate::client::{Client, ClientError, Requester};
use crate::protocol::{ClientMessage, EventBatch, ServerMessage, Snapshot};
use app::{Action, App, Link};

/// How often the TUI asks for a snapshot.
const REFRESH: Duration = Duration::from_millis(500);
/// How long it waits between reconnection attempts.
const RETRY: Duration = Duration::from_secs(1);

/// What the network thread tells the UI.
#[derive(Debug)]
pub enum NetEvent {
    /// Attached.
    Connected(String),
    /// A snapshot.
    Snapshot(Box<Snapshot>),
    /// Events.
    Events(EventBatch),
    /// The connection failed or ended.
    Down(String),
}

/// The network side of the TUI: connects, subscribes, asks for snapshots periodically and
/// reconnects after a failure, until dropped.
pub struct Net {
    rx: Receiver<NetEvent>,
    stop: Arc<AtomicBool>,
    kick: Arc<Mutex<Option<Requester>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Net {
    /// Starts the network thread for `socket`.
    pub fn start(socket: PathBuf) -> Self {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let kick = Arc::new(Mutex::new(None));
        let thread = {
            let stop = stop.clone();
            let kick = kick.clone();
            std::thread::spawn(move || net_loop(&socket, &tx, &stop, &kick))
        };
        Self {
            rx,
            stop,
            kick,
            thread: Some(thread),
        }
    }

    /// Drops the current connection so the thread reconnects at once.
    pub fn reconnect(&self) {
        if let Some(c) = &*self.kick.lock() {
            c.shutdown();
        }
    }

    /// What arrived since the last call.
    pub fn drain(&self) -> Vec<NetEvent> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.reconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < total && !stop.load(Ordering::Acquire) {
        std::thread::sleep(step);
        waited += step;
    }
}

fn net_loop(
    socket: &PathBuf,
    tx: &Sender<NetEvent>,
    stop: &Arc<AtomicBool>,
    kick: &Arc<Mutex<Option<Requester>>>,
) {
    while !stop.load(Ordering::Acquire) {
        match session(socket, tx, stop, kick) {
            Ok(()) => return,
            Err(e) => {
                if tx.send(NetEvent::Down(e.to_string())).is_err() {
                    return;
                }
            }
        }
        sleep_unless_stopped(stop, RETRY);
    }
}

/// One connection: runs until it fails or the TUI stops.
fn session(
    socket: &PathBuf,
    tx: &Sender<NetEvent>,
    stop: &Arc<AtomicBool>,
    kick: &Arc<Mutex<Option<Requester>>>,
) -> Result<(), ClientError> {
    let mut client = Client::connect(socket)?;
    client.send(&ClientMessage::Subscribe)?;
    client.send(&ClientMessage::GetSnapshot)?;
    let _ = tx.send(NetEvent::Connected(client.server().software.clone()));
    let mut requester = client.requester()?;
    // A second handle that the UI's "reconnect" (and Drop) shuts down to wake the reader.
    *kick.lock() = Some(client.requester()?);
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let ticker_stop = ticker_stop.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !ticker_stop.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                sleep_unless_stopped(&ticker_stop, REFRESH);
                if requester.send(&ClientMessage::GetSnapshot).is_err() {
                    return;
                }
            }
            requester.shutdown();
        })
    };
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        match client.recv() {
            Ok(ServerMessage::Snapshot(s)) => {
                if tx.send(NetEvent::Snapshot(s)).is_err() {
                    break Ok(());
                }
            }
            Ok(ServerMessage::Events(b)) => {
                if tx.send(NetEvent::Events(b)).is_err() {
                    break Ok(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                break if stop.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        }
    };
    ticker_stop.store(true, Ordering::Release);
    client.shutdown();
    let _ = ticker.join();
    *kick.lock() = None;
    result
}

/// Applies what the network thread reported to the app.
pub fn apply(app: &mut App, ev: NetEvent) {
    match ev {
        NetEvent::Connected(server) => app.link = Link::Connected { server },
        NetEvent::Snapshot(s) => app.on_snapshot(*s),
        NetEvent::Events(b) => app.on_events(b),
        NetEvent::Down(error) => app.link = Link::Down { error },
    }
}

/// Runs the TUI on the terminal until the user quits.
pub fn run(socket: PathBuf) -> std::io::Result<()> {
    let mut app = App::new(&socket.display().to_string());
    let net = Net::start(socket);
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            for ev in net.drain() {
                apply(&mut app, ev);
            }
            terminal.draw(|f| ui::render(&app, f))?;
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    TermEvent::Key(k) if k.kind != KeyEventKind::Release => match app.on_key(k) {
                        Action::Quit => return Ok(()),
                        Action::Reconnect => net.reconnect(),
                        Action::None => {}
                    },
                    // Drawn again at the top of the loop, at the new size.
                    TermEvent::Resize(..) => {}
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    drop(net);
    result
}
