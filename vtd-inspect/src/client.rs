//! The client side: connect, check the server's hello, ask for snapshots and events.
//!
//! Every way a connection can fail has its own [`ClientError`] with a message that says what
//! to do, because the person running the TUI usually typed the socket path by hand.

use std::io::{BufReader, ErrorKind as IoErrorKind};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{
    ClientMessage, ErrorKind, Hello, HelloCheck, LineError, MAX_SERVER_LINE, PROTOCOL_VERSION,
    ServerMessage, Snapshot, check_hello, read_line, write_message,
};

/// How long the server has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the client could not talk to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing at the path.
    #[error("{0}: no such socket (is the VMM running with --socket?)")]
    NoSuchSocket(PathBuf),
    /// The socket's mode or the server's uid check refused us.
    #[error("{path}: permission denied ({detail}); run as the VMM's user")]
    PermissionDenied {
        /// The path.
        path: PathBuf,
        /// What refused.
        detail: String,
    },
    /// The path is not a Unix socket.
    #[error("{0}: not a socket")]
    NotASocket(PathBuf),
    /// A socket nobody listens on (the VMM exited without removing it).
    #[error("{0}: connection refused (stale socket: the VMM is gone)")]
    Refused(PathBuf),
    /// The peer does not speak this protocol.
    #[error("{0}: not a vtd-inspect socket")]
    NotVtdSocket(PathBuf),
    /// The peer speaks another version.
    #[error(
        "protocol version mismatch: this client speaks version {ours}, the server {theirs}; use the vtd-inspect built with the VMM"
    )]
    VersionMismatch {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The server sent an error.
    #[error("server: {0}")]
    Server(String),
    /// The connection ended.
    #[error("the server closed the connection (the VMM exited?)")]
    Closed,
    /// A message that does not parse.
    #[error("malformed message from the server: {0}")]
    Malformed(String),
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<LineError> for ClientError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::Closed => ClientError::Closed,
            LineError::TooLong(n) => ClientError::Malformed(format!("line over {n} bytes")),
            LineError::Io(e) => ClientError::Io(e),
        }
    }
}

/// A connection to an inspection server.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    server: Hello,
    path: PathBuf,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.path)
            .field("server", &self.server)
            .finish()
    }
}

impl Client {
    /// Connects and exchanges hellos.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            IoErrorKind::NotFound => ClientError::NoSuchSocket(path.clone()),
            IoErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.clone(),
                detail: "socket file mode".into(),
            },
            IoErrorKind::ConnectionRefused => {
                let is_socket = std::fs::metadata(&path)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false);
                if is_socket {
                    ClientError::Refused(path.clone())
                } else {
                    ClientError::NotASocket(path.clone())
                }
            }
            _ => ClientError::Io(e),
        })?;
        stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let line = match read_line(&mut reader, MAX_SERVER_LINE) {
            Ok(l) => l,
            Err(LineError::Io(e))
                if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) =>
            {
                return Err(ClientError::NotVtdSocket(path));
            }
            Err(LineError::TooLong(_)) => return Err(ClientError::NotVtdSocket(path)),
            Err(e) => return Err(e.into()),
        };
        let server = match check_hello(&line) {
            HelloCheck::Compatible(h) => h,
            HelloCheck::VersionMismatch { theirs } => {
                return Err(ClientError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs,
                });
            }
            HelloCheck::NotOurs => return Err(ClientError::NotVtdSocket(path)),
        };
        reader.get_ref().set_read_timeout(None)?;
        let mut client = Self {
            reader,
            writer,
            server,
            path,
        };
        let hello = ClientMessage::Hello(Hello::ours(concat!(
            "vtd-inspect ",
            env!("CARGO_PKG_VERSION")
        )));
        if let Err(e) = client.send(&hello) {
            // The server may have refused us and closed before our hello: its reason is the
            // better error.
            return Err(match client.recv() {
                Err(refusal @ (ClientError::PermissionDenied { .. } | ClientError::Server(_))) => {
                    refusal
                }
                _ => e,
            });
        }
        Ok(client)
    }

    /// The server's hello.
    pub fn server(&self) -> &Hello {
        &self.server
    }

    /// Sends a request.
    pub fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        write_message(&mut self.writer, msg).map_err(|e| match e.kind() {
            IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset => ClientError::Closed,
            _ => ClientError::Io(e),
        })
    }

    /// Receives the next message; a server error becomes [`ClientError`].
    pub fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        let line = read_line(&mut self.reader, MAX_SERVER_LINE)?;
        let msg: ServerMessage =
            serde_json::from_slice(&line).map_err(|e| ClientError::Malformed(e.to_string()))?;
        match msg {
            ServerMessage::Error(e) => Err(match e.kind {
                ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                    path: self.path.clone(),
                    detail: e.message,
                },
                ErrorKind::VersionMismatch => ClientError::Server(e.message),
                _ => ClientError::Server(e.message),
            }),
            other => Ok(other),
        }
    }

    /// Asks for a snapshot and waits for it (events that arrive meanwhile are returned too).
    pub fn snapshot(&mut self) -> Result<(Snapshot, Vec<ServerMessage>), ClientError> {
        self.send(&ClientMessage::GetSnapshot)?;
        let mut other = Vec::new();
        loop {
            match self.recv()? {
                ServerMessage::Snapshot(s) => return Ok((*s, other)),
                m => other.push(m),
            }
        }
    }

    /// A second handle that sends requests while another thread blocks in
    /// [`Client::recv`].
    pub fn requester(&self) -> Result<Requester, ClientError> {
        Ok(Requester(self.writer.try_clone()?))
    }

    /// Closes both directions, waking a thread blocked in [`Client::recv`].
    pub fn shutdown(&self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

/// Sends requests on a [`Client`]'s connection.
#[derive(Debug)]
pub struct Requester(UnixStream);

impl Requester {
    /// Sends a request.
    pub fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        write_message(&mut self.0, msg).map_err(|e| match e.kind() {
            IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset => ClientError::Closed,
            _ => ClientError::Io(e),
        })
    }

    /// Closes the connection.
    pub fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}
