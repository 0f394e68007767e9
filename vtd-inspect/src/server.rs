//! The inspection server a VMM embeds: a Unix socket that serves snapshots and the event
//! stream of one unit to local clients.
//!
//! Design, and why:
//! - **Read-only by construction.** The server holds the unit only to call its read methods
//!   (`snapshot`, `stats`, `root_table`, `memory` for table reads) and the client messages
//!   ([`ClientMessage`]) have no variant that could ask for more: there is no code path from a
//!   socket to a register write or a guest-memory write.
//! - **Local and private.** The socket is created with mode 0600 and each peer's uid is
//!   checked with `SO_PEERCRED` against the server's own ([`authorize`]): the file mode keeps
//!   other users from connecting, the uid check covers the moment between `bind` and `chmod`
//!   and sockets passed around by other means. The snapshot shows guest memory contents (page
//!   tables), so this is the VMM's owner's data.
//! - **Never slows the VMM.** The unit's observer is an [`EventFeed`] push (see its module
//!   doc); everything else runs on the server's threads: one accepting, one per client (at
//!   most [`ServerOptions::max_clients`]). A client that stops reading blocks only its own
//!   thread, until the write timeout disconnects it. Snapshots are built on the requesting
//!   client's thread and shared between clients for [`ServerOptions::snapshot_reuse`], so many
//!   clients asking often cost the unit no more than one.
//! - **Untrusted clients.** A request line is at most [`MAX_CLIENT_LINE`] bytes; a client that
//!   does not say hello within a few seconds, or says something else, is told why and
//!   disconnected.

use std::io::{ErrorKind as IoErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vtd_core::sync::{Mutex, RwLock};

use vtd_core::{VtdObserver, VtdUnit};
use vtd_tables::GuestRam;

use crate::collect::{self, Limits};
use crate::feed::{DEFAULT_CAPACITY, EventFeed};
use crate::protocol::{
    BindingView, ClientMessage, ErrorKind, EventBatch, Hello, HelloCheck, MAX_CLIENT_LINE,
    PROTOCOL_VERSION, ProtocolError, ServerMessage, Snapshot, check_hello, write_message,
};

/// How long a client thread waits for input before it looks at the event queue again.
const POLL: Duration = Duration::from_millis(20);
/// How long a new client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Events sent in one batch at most.
const BATCH: usize = 1024;

/// Where the passthrough bindings shown in the snapshot come from: implemented over the
/// accelerator's binder by the VMM (or by [`crate::accel`]), so this crate's server does not
/// depend on how the binder is built.
pub trait BindingSource: Send + Sync {
    /// The current bindings.
    fn bindings(&self) -> Vec<BindingView>;
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How the VMM names itself to clients.
    pub software: String,
    /// Events kept for clients that fall behind.
    pub feed_capacity: usize,
    /// Clients served at once; more are refused with a message.
    pub max_clients: usize,
    /// Bounds on what a snapshot reads.
    pub limits: Limits,
    /// A snapshot younger than this is sent again rather than rebuilt.
    pub snapshot_reuse: Duration,
    /// A client that does not take a message within this long is disconnected.
    pub write_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            software: format!("vtd-inspect {}", env!("CARGO_PKG_VERSION")),
            feed_capacity: DEFAULT_CAPACITY,
            max_clients: 16,
            limits: Limits::default(),
            snapshot_reuse: Duration::from_millis(100),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another server answers on that path.
    #[error("{0}: another process is serving on this socket")]
    InUse(PathBuf),
    /// The path exists and is not a socket: it is not ours to remove.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The decision on a connecting peer: only the server's own uid is served. Root is not an
/// exception: root can read the VMM's memory by other means, and an operator who wants the
/// TUI runs it as the VMM's user.
pub fn authorize(peer_uid: u32, server_uid: u32) -> Result<(), String> {
    if peer_uid == server_uid {
        Ok(())
    } else {
        Err(format!(
            "permission denied: peer uid {peer_uid} is not the VMM's uid {server_uid}"
        ))
    }
}

/// An encoded snapshot line, when it was built, and the event sequence number then.
type CachedSnapshot = (Instant, u64, Arc<Vec<u8>>);

type SnapshotFn = dyn Fn(&Limits) -> Snapshot + Send + Sync;

struct Shared {
    stop: AtomicBool,
    feed: Arc<EventFeed>,
    take_snapshot: Box<SnapshotFn>,
    bindings: RwLock<Option<Arc<dyn BindingSource>>>,
    clients: AtomicUsize,
    /// The last encoded snapshot, when it was built and the event sequence number then.
    cached: Mutex<Option<CachedSnapshot>>,
    options: ServerOptions,
    uid: u32,
}

/// A running inspection server; dropping it stops the threads, unsubscribes from the unit and
/// removes the socket.
pub struct InspectServer {
    shared: Arc<Shared>,
    path: PathBuf,
    accept: Option<JoinHandle<()>>,
    client_threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    unsubscribe: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for InspectServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InspectServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Removes a stale socket left by a VMM that died; refuses to touch anything else.
fn prepare_path(path: &Path) -> Result<(), ServerError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_path_buf())),
        Err(_) => std::fs::remove_file(path).map_err(|source| ServerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl InspectServer {
    /// Serves `unit` on a new socket at `path`.
    pub fn start<M: GuestRam + Send + Sync + 'static>(
        unit: Arc<VtdUnit<M>>,
        path: impl AsRef<Path>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ServerError::Io {
            path: path.clone(),
            source,
        };
        prepare_path(&path)?;
        let listener = UnixListener::bind(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;

        let feed = Arc::new(EventFeed::new(options.feed_capacity));
        let observer: Arc<dyn VtdObserver> = feed.clone();
        unit.subscribe(observer.clone());
        let unit_for_snapshots = unit.clone();
        let unsubscribe: Box<dyn FnOnce() + Send> =
            Box::new(move || unit.events().unsubscribe(&observer));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            feed,
            take_snapshot: Box::new(move |limits| collect::snapshot(&unit_for_snapshots, limits)),
            bindings: RwLock::new(None),
            clients: AtomicUsize::new(0),
            cached: Mutex::new(None),
            options,
            uid: rustix::process::getuid().as_raw(),
        });
        let client_threads = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let shared = shared.clone();
            let threads = client_threads.clone();
            std::thread::Builder::new()
                .name("vtd-inspect-accept".into())
                .spawn(move || accept_loop(listener, shared, threads))
                .map_err(io)?
        };
        tracing::info!(target: "vtd::inspect", socket = %path.display(), "inspection server listening");
        Ok(Self {
            shared,
            path,
            accept: Some(accept),
            client_threads,
            unsubscribe: Some(unsubscribe),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The event feed, for reporting events that do not come from the unit (binding changes,
    /// page requests): [`EventFeed::report`] never blocks.
    pub fn feed(&self) -> &Arc<EventFeed> {
        &self.shared.feed
    }

    /// Sets where the snapshot's passthrough bindings come from.
    pub fn set_binding_source(&self, source: Arc<dyn BindingSource>) {
        *self.shared.bindings.write() = Some(source);
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// A snapshot as a client would get it (for embedding VMMs and tests).
    pub fn snapshot(&self) -> Snapshot {
        build_snapshot(&self.shared)
    }
}

impl Drop for InspectServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(unsubscribe) = self.unsubscribe.take() {
            unsubscribe();
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut *self.client_threads.lock());
        for t in threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let mut list = threads.lock();
                list.retain(|t| !t.is_finished());
                if let Some(t) = admit(stream, &shared) {
                    list.push(t);
                }
            }
            Err(e) if e.kind() == IoErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!(target: "vtd::inspect", error = %e, "accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn refuse(mut stream: &UnixStream, kind: ErrorKind, message: String) {
    tracing::info!(target: "vtd::inspect", %message, "client refused");
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    let _ = write_message(
        &mut stream,
        &ServerMessage::Hello(Hello::ours("vtd-inspect server")),
    );
    let _ = write_message(
        &mut stream,
        &ServerMessage::Error(ProtocolError { kind, message }),
    );
}

fn admit(stream: UnixStream, shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    if stream.set_nonblocking(false).is_err() {
        return None;
    }
    let peer_uid = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) => cred.uid.as_raw(),
        Err(e) => {
            tracing::warn!(target: "vtd::inspect", error = %e, "SO_PEERCRED failed");
            return None;
        }
    };
    if let Err(message) = authorize(peer_uid, shared.uid) {
        refuse(&stream, ErrorKind::PermissionDenied, message);
        return None;
    }
    let max = shared.options.max_clients;
    if shared.clients.fetch_add(1, Ordering::AcqRel) >= max {
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        refuse(
            &stream,
            ErrorKind::TooManyClients,
            format!("the server already has {max} clients"),
        );
        return None;
    }
    let shared2 = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("vtd-inspect-client".into())
        .spawn(move || {
            if let Err(e) = serve_client(&stream, &shared2) {
                tracing::debug!(target: "vtd::inspect", error = %e, "client left");
            }
            shared2.clients.fetch_sub(1, Ordering::AcqRel);
        });
    match spawned {
        Ok(t) => Some(t),
        Err(_) => {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

fn build_snapshot(shared: &Shared) -> Snapshot {
    let mut snap = (shared.take_snapshot)(&shared.options.limits);
    snap.software = shared.options.software.clone();
    snap.uptime_ms = shared.feed.start().elapsed().as_millis() as u64;
    snap.counters = shared.feed.counters();
    if let Some(source) = shared.bindings.read().clone() {
        snap.bindings = source.bindings();
    }
    snap
}

/// The encoded snapshot message, rebuilt at most once per `snapshot_reuse` while the unit
/// reports no event (an event means registers or tables may have changed: a client that saw
/// it must get a snapshot from after it; only cache counters can be that much older).
fn snapshot_line(shared: &Shared) -> std::io::Result<Arc<Vec<u8>>> {
    let mut cached = shared.cached.lock();
    let seq = shared.feed.next_seq();
    if let Some((at, at_seq, line)) = &*cached {
        if at.elapsed() < shared.options.snapshot_reuse && *at_seq == seq {
            return Ok(line.clone());
        }
    }
    let msg = ServerMessage::Snapshot(Box::new(build_snapshot(shared)));
    let mut line = serde_json::to_vec(&msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let line = Arc::new(line);
    *cached = Some((Instant::now(), seq, line.clone()));
    Ok(line)
}

fn send_error(stream: &UnixStream, kind: ErrorKind, message: String) -> std::io::Result<()> {
    let mut w = stream;
    write_message(
        &mut w,
        &ServerMessage::Error(ProtocolError { kind, message }),
    )
}

fn serve_client(stream: &UnixStream, shared: &Shared) -> std::io::Result<()> {
    use std::io::Write;
    stream.set_write_timeout(Some(shared.options.write_timeout))?;
    stream.set_read_timeout(Some(POLL))?;
    let mut w = stream;
    write_message(
        &mut w,
        &ServerMessage::Hello(Hello::ours(&shared.options.software)),
    )?;
    let connected = Instant::now();
    let mut greeted = false;
    let mut subscribed = false;
    let mut cursor = 0u64;
    let mut lost = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    while !shared.stop.load(Ordering::Acquire) {
        let mut r = stream;
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => pending.extend_from_slice(buf.get(..n).unwrap_or(&buf)),
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {}
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).take(nl).collect();
            if !greeted {
                match check_hello(&line) {
                    HelloCheck::Compatible(_) => greeted = true,
                    HelloCheck::VersionMismatch { theirs } => {
                        return send_error(
                            stream,
                            ErrorKind::VersionMismatch,
                            format!(
                                "protocol version mismatch: the server speaks version \
                                 {PROTOCOL_VERSION}, the client {theirs}"
                            ),
                        );
                    }
                    HelloCheck::NotOurs => {
                        return send_error(
                            stream,
                            ErrorKind::BadHello,
                            "expected a vtd-inspect hello".into(),
                        );
                    }
                }
                continue;
            }
            match serde_json::from_slice::<ClientMessage>(&line) {
                Ok(ClientMessage::GetSnapshot) => w.write_all(&snapshot_line(shared)?)?,
                Ok(ClientMessage::Subscribe) => {
                    if !subscribed {
                        subscribed = true;
                        cursor = shared.feed.next_seq();
                    }
                }
                Ok(ClientMessage::Unsubscribe) => subscribed = false,
                Ok(ClientMessage::Hello(_)) => {}
                Err(e) => {
                    return send_error(stream, ErrorKind::BadRequest, format!("bad request: {e}"));
                }
            }
        }
        if pending.len() > MAX_CLIENT_LINE {
            return send_error(
                stream,
                ErrorKind::BadRequest,
                format!("request longer than {MAX_CLIENT_LINE} bytes"),
            );
        }
        if !greeted && connected.elapsed() > HELLO_TIMEOUT {
            return send_error(stream, ErrorKind::BadHello, "no hello received".into());
        }
        if subscribed {
            loop {
                let (events, missed) = shared.feed.read_from(&mut cursor, BATCH);
                lost += missed;
                if events.is_empty() && missed == 0 {
                    break;
                }
                let full = events.len() == BATCH;
                write_message(
                    &mut w,
                    &ServerMessage::Events(EventBatch {
                        events,
                        dropped: lost,
                    }),
                )?;
                if !full {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_uid_is_admitted() {
        assert!(authorize(1000, 1000).is_ok());
        let refused = authorize(1001, 1000).unwrap_err();
        assert!(
            refused.contains("1001") && refused.contains("1000"),
            "{refused}"
        );
        assert!(authorize(0, 1000).is_err(), "root is not the VMM's uid");
        assert!(authorize(1000, 0).is_err());
    }
}
