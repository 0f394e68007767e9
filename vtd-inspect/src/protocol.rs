//! The wire protocol between the inspection server (in the VMM) and its clients.
//!
//! **JSON lines**, one serde-encoded message per `\n`-terminated line, rather than bincode:
//! - the two outputs scripts want (`--dump`, `--follow`) are JSON anyway, so the client prints
//!   what it received without a second schema, and a person can read a live socket with
//!   `socat - UNIX-CONNECT:PATH`;
//! - the first line is a self-describing [`Hello`]: a client reads `magic` and `version` from it
//!   before it trusts anything else, so a version mismatch or a socket that is not ours is a
//!   clear error, where a binary decoder would report garbage or misread fields;
//! - the volume is small (a snapshot per refresh and the event stream, itself bounded by the
//!   server's queue), so JSON's cost is irrelevant next to the VMM's own work, which it never
//!   touches: encoding happens on the client's thread in the server.
//!
//! The types here are the protocol's own, not vtd-core's: the wire format is versioned
//! ([`PROTOCOL_VERSION`]) independently of the library's internal types, and decoding one
//! needs none of the emulation crates.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// The value of [`Hello::magic`]: tells a vtd inspection socket from any other.
pub const MAGIC: &str = "vtd-inspect";

/// Version of this protocol. Bumped on any change of the messages' shape; both sides refuse a
/// peer with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line a client accepts from the server (a snapshot of a large machine).
pub const MAX_SERVER_LINE: usize = 64 << 20;

/// The longest line the server accepts from a client: requests are tiny, and the client is
/// untrusted input to the VMM.
pub const MAX_CLIENT_LINE: usize = 4096;

/// The first message of each side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Who is speaking (e.g. "vtd-vmm 0.1.0"), for display only.
    pub software: String,
}

impl Hello {
    /// This side's hello.
    pub fn ours(software: &str) -> Self {
        Self {
            magic: MAGIC.to_string(),
            version: PROTOCOL_VERSION,
            software: software.to_string(),
        }
    }
}

/// What the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First line on every connection.
    Hello(Hello),
    /// Answer to [`ClientMessage::GetSnapshot`].
    Snapshot(Box<Snapshot>),
    /// Events since the previous batch, once subscribed.
    Events(EventBatch),
    /// The server refuses or ends the session; the connection closes after it.
    Error(ProtocolError),
}

/// What a client sends. None of these can change the unit: the server only reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First line from the client.
    Hello(Hello),
    /// Asks for one [`Snapshot`].
    GetSnapshot,
    /// Starts the event stream: [`ServerMessage::Events`] batches from now on.
    Subscribe,
    /// Stops the event stream.
    Unsubscribe,
}

/// Why the server refused or ended a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolError {
    /// Machine-readable kind.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

/// Kinds of [`ProtocolError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The client speaks another protocol version.
    VersionMismatch,
    /// The client is not a vtd-inspect client (bad hello).
    BadHello,
    /// A request line was malformed or too long.
    BadRequest,
    /// The server has as many clients as it serves.
    TooManyClients,
    /// The peer's uid is not the server's.
    PermissionDenied,
}

/// A batch of events in the order the unit produced them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The events.
    pub events: Vec<EventRecord>,
    /// Events this client lost so far because it read slower than the unit produced them
    /// (the server's queue dropped the oldest).
    pub dropped: u64,
}

/// One event with its place in the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequence number, from 0 when the server started; gaps are dropped events.
    pub seq: u64,
    /// Microseconds since the server started.
    pub time_us: u64,
    /// What happened.
    pub event: Event,
}

/// Where an invalidation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum InvalidationSourceView {
    /// The invalidation queue, slot `index`.
    Queue {
        /// Slot.
        index: u32,
        /// Last invalidation of its batch.
        ends_batch: bool,
    },
    /// CCMD_REG or IOTLB_REG.
    Register,
}

/// A decoded invalidation (spec 6.5.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidationView {
    /// Queue or register.
    pub source: InvalidationSourceView,
    /// Descriptor type as QEMU's traces name it ("iotlb", "p-iotlb", "pasid-cache", ...).
    pub desc_type: String,
    /// Granularity ("global", "domain", "device", "page", "pasid", "index", ...).
    pub granularity: String,
    /// Domain ID, when the descriptor has one that counts.
    pub did: Option<u16>,
    /// PASID, when the descriptor has one.
    pub pasid: Option<u32>,
    /// Source ID, when the descriptor names a device.
    pub sid: Option<u16>,
    /// Address, for page-selective descriptors.
    pub addr: Option<u64>,
    /// Address mask, for page-selective descriptors.
    pub am: Option<u8>,
    /// Invalidation hint, for page-selective descriptors.
    pub ih: Option<bool>,
    /// The whole descriptor in QEMU's trace style.
    pub text: String,
}

/// Something the unit (or the binder, or the page-request path) did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An invalidation was carried out.
    Invalidation(InvalidationView),
    /// A DMA translation fault.
    DmaFault {
        /// Requester.
        sid: u16,
        /// PASID of the request.
        pasid: Option<u32>,
        /// Faulting address (page).
        address: u64,
        /// Fault reason code (spec 7.1.3).
        reason_code: u8,
        /// Its description.
        reason: String,
        /// Recorded, suppressed, overflow or coalesced.
        disposition: String,
    },
    /// An interrupt-remapping fault.
    InterruptFault {
        /// Requester.
        sid: u16,
        /// Interrupt index.
        index: u16,
        /// Fault reason code.
        reason_code: u8,
        /// Its description.
        reason: String,
        /// Recorded, suppressed, overflow or coalesced.
        disposition: String,
    },
    /// A device's page request, written into the guest's page request queue (spec 7.5).
    PageRequest {
        /// Requester.
        sid: u16,
        /// PASID.
        pasid: Option<u32>,
        /// Page address.
        address: u64,
        /// Page request group index.
        prg_index: u16,
        /// Last request of its group.
        last_in_group: bool,
        /// Access asked for ("r", "rw", "rwx", with "p" for privileged).
        access: String,
        /// Page request queue slot it was written to.
        slot: u32,
    },
    /// A page group response for a device (spec 7.10): the guest's descriptor (type 0x9), or
    /// the unit's own answer to a request it dropped.
    PageResponse {
        /// Requester the response goes to.
        rid: u16,
        /// PASID, when present.
        pasid: Option<u32>,
        /// Response code (0 success, 1 invalid request, 0xF failure).
        response_code: u8,
        /// Page request group index.
        prg_index: u16,
        /// An outstanding group was answered by it.
        matched: bool,
        /// "guest" (with its queue slot), "overflow" or "blocked".
        origin: String,
    },
    /// A passthrough device's nested binding changed (attach, replace, detach, failure).
    BindingChanged {
        /// Device, as bus:dev.fn.
        bdf: String,
        /// PASID, if the change is PASID-granular.
        pasid: Option<u32>,
        /// What changed.
        change: String,
    },
    /// SRTP latched a root table.
    RootTableLatched {
        /// Root-table address.
        addr: u64,
        /// "legacy", "scalable", ...
        mode: String,
        /// Differs from the previous one.
        changed: bool,
    },
    /// GSTS.TES changed.
    TranslationEnabled {
        /// New value.
        on: bool,
    },
    /// GSTS.QIES changed.
    QueuedInvalidationEnabled {
        /// New value.
        on: bool,
    },
    /// GSTS.IRES changed.
    InterruptRemappingEnabled {
        /// New value.
        on: bool,
    },
    /// SIRTP latched an interrupt-remapping table.
    InterruptTableLatched {
        /// Table base.
        base: u64,
        /// Entries.
        entries: u32,
        /// Extended interrupt mode.
        eime: bool,
    },
    /// The queue stopped on an error.
    QueueError {
        /// IQH slot of the offending descriptor.
        head: u32,
        /// IQERCD.IQEI.
        iqei: u8,
    },
    /// A wait descriptor completed.
    WaitCompleted {
        /// Status address written.
        status_addr: Option<u64>,
        /// ICS.IWC raised.
        interrupt: bool,
    },
    /// A caching-mode shadow mapping change.
    Shadow {
        /// "map", "unmap" or "incomplete".
        op: String,
        /// Requester.
        sid: u16,
        /// PASID.
        pasid: Option<u32>,
        /// IOVA.
        iova: u64,
        /// Length.
        size: u64,
    },
    /// A guest register write.
    RegisterWrite {
        /// Offset.
        offset: u64,
        /// 4 or 8.
        size: u8,
        /// Value.
        value: u64,
    },
    /// The unit was reset.
    Reset,
}

impl Event {
    /// The name the event is counted and filtered under: the descriptor type for
    /// invalidations, the variant otherwise.
    pub fn type_name(&self) -> &str {
        match self {
            Event::Invalidation(inv) => &inv.desc_type,
            Event::DmaFault { .. } => "dma-fault",
            Event::InterruptFault { .. } => "ir-fault",
            Event::PageRequest { .. } => "page-request",
            Event::PageResponse { .. } => "page-response",
            Event::BindingChanged { .. } => "binding",
            Event::RootTableLatched { .. } => "root-table",
            Event::TranslationEnabled { .. } => "te",
            Event::QueuedInvalidationEnabled { .. } => "qie",
            Event::InterruptRemappingEnabled { .. } => "ire",
            Event::InterruptTableLatched { .. } => "irt",
            Event::QueueError { .. } => "queue-error",
            Event::WaitCompleted { .. } => "wait",
            Event::Shadow { .. } => "shadow",
            Event::RegisterWrite { .. } => "register-write",
            Event::Reset => "reset",
        }
    }
}

/// A named numeric field of a decoded register or entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The spec's field name.
    pub name: String,
    /// Its value.
    pub value: u64,
}

impl Field {
    /// A field.
    pub fn new(name: &str, value: impl Into<u64>) -> Self {
        Self {
            name: name.to_string(),
            value: value.into(),
        }
    }
}

/// Everything the inspector shows, read at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The VMM's name for itself.
    pub software: String,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Configuration and global registers.
    pub unit: UnitView,
    /// Invalidation queue.
    pub queue: QueueView,
    /// Fault status and records.
    pub faults: FaultsView,
    /// Cache statistics.
    pub caches: CachesView,
    /// Devices with a present context entry, in requester-ID order.
    pub devices: Vec<DeviceView>,
    /// How the table walk went (bounds reached, unreadable tables).
    pub enumeration: EnumerationView,
    /// Passthrough devices' nested bindings (empty without a binder).
    pub bindings: Vec<BindingView>,
    /// Event counters since the server started.
    pub counters: CountersView,
}

/// The unit's configuration and global state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitView {
    /// The configuration, as QEMU-style properties or Debug text.
    pub config: String,
    /// VER_REG.
    pub version: u32,
    /// CAP_REG.
    pub cap: u64,
    /// Decoded CAP fields.
    pub cap_fields: Vec<Field>,
    /// ECAP_REG.
    pub ecap: u64,
    /// Decoded ECAP fields.
    pub ecap_fields: Vec<Field>,
    /// GSTS_REG.
    pub gsts: u32,
    /// The GSTS status bits that are set ("TES", "RTPS", ...).
    pub gsts_flags: Vec<String>,
    /// RTADDR_REG as the guest last wrote it.
    pub rtaddr: u64,
    /// The latched root table, if SRTP was done.
    pub root: Option<RootView>,
    /// IRTA_REG.
    pub irta: u64,
}

/// A latched root table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootView {
    /// Address.
    pub addr: u64,
    /// "legacy", "scalable", "reserved" or "abort-dma".
    pub mode: String,
}

/// The invalidation queue (spec 6.5.2, 10.4.22-10.4.25).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    /// GSTS.QIES.
    pub enabled: bool,
    /// IQA_REG.
    pub iqa: u64,
    /// Queue base.
    pub base: u64,
    /// Descriptor slots.
    pub slots: u32,
    /// Descriptor size in bytes (16 or 32).
    pub descriptor_bytes: u32,
    /// IQH as a slot index.
    pub head: u32,
    /// IQT as a slot index.
    pub tail: u32,
    /// ICS.IWC.
    pub wait_completed: bool,
    /// IQERCD_REG.
    pub iqercd: u64,
    /// Descriptors processed since reset.
    pub descriptors_processed: u64,
}

/// Fault status (spec 10.4.9) and the recorded faults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultsView {
    /// FSTS_REG.
    pub fsts: u32,
    /// FSTS bits that are set ("PFO", "PPF", "IQE", ...).
    pub fsts_flags: Vec<String>,
    /// FSTS.FRI.
    pub fri: u8,
    /// FECTL_REG.
    pub fectl: u32,
    /// Fault records with F set.
    pub records: Vec<FaultRecordView>,
    /// Number of fault-recording registers.
    pub record_slots: u16,
    /// DMA faults the unit saw since start (recorded or not).
    pub dma_faults_total: u64,
}

/// One fault-recording register with F set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecordView {
    /// FRCD index.
    pub index: u16,
    /// The raw 128 bits (low, high).
    pub raw: [u64; 2],
    /// Requester.
    pub sid: u16,
    /// PASID.
    pub pasid: Option<u32>,
    /// Fault info (page address).
    pub address: u64,
    /// Reason code.
    pub reason_code: u8,
    /// Reason, or "undecodable record".
    pub reason: String,
    /// Request kind ("read", "write", ...).
    pub request: String,
}

/// Statistics of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheView {
    /// Entries held.
    pub entries: u64,
    /// Lookups that hit.
    pub hits: u64,
    /// Lookups that missed.
    pub misses: u64,
    /// Evictions.
    pub evictions: u64,
    /// Entries removed by invalidations.
    pub invalidated: u64,
    /// hits / (hits + misses), 0 with no lookups.
    pub hit_rate: f64,
}

/// The unit's caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachesView {
    /// IOTLB.
    pub iotlb: CacheView,
    /// Context cache.
    pub context: CacheView,
    /// PASID cache.
    pub pasid: CacheView,
}

/// One device the guest programmed: its context entry and PASID entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Requester ID.
    pub sid: u16,
    /// bus:dev.fn.
    pub bdf: String,
    /// Guest physical address of the context entry.
    pub entry_addr: u64,
    /// The context entry.
    pub context: ContextView,
    /// Present PASID entries, in PASID order (scalable mode), at most the server's bound.
    pub pasids: Vec<PasidView>,
    /// More present PASID entries exist than are listed, or the walk ran out of budget.
    pub pasids_truncated: bool,
    /// Mappings of the context's own second-stage table (legacy mode), the first few.
    pub mappings: Vec<MappingView>,
}

/// A context entry, decoded, with its raw bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ContextView {
    /// Legacy context entry (spec 9.3).
    Legacy {
        /// Raw 128 bits.
        raw: [u64; 2],
        /// TT.
        translation_type: String,
        /// AW.
        aw: u8,
        /// DID.
        did: u16,
        /// SLPTPTR.
        ss_table: u64,
        /// FPD.
        fpd: bool,
        /// The unit's own lookup accepts the entry (else a DMA through it faults).
        accepted: bool,
    },
    /// Scalable-mode context entry (spec 9.4).
    Scalable {
        /// Raw 256 bits.
        raw: [u64; 4],
        /// PASIDDIRPTR.
        pasid_dir: u64,
        /// PDTS.
        pdts: u8,
        /// The PASIDs the directory covers.
        pasid_limit: u32,
        /// PASIDE.
        paside: bool,
        /// PRE.
        pre: bool,
        /// DTE.
        dte: bool,
        /// RID_PASID.
        rid_pasid: u32,
        /// FPD.
        fpd: bool,
        /// The unit's own lookup accepts the entry (else a DMA through it faults).
        accepted: bool,
    },
}

/// A present PASID entry (spec 9.6), decoded, with its raw bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasidView {
    /// The PASID.
    pub pasid: u32,
    /// Guest physical address of the entry.
    pub entry_addr: u64,
    /// Raw 512 bits.
    pub raw: [u64; 8],
    /// PGTT ("first-stage", "second-stage", "nested", "pass-through", "reserved(n)").
    pub pgtt: String,
    /// DID.
    pub did: u16,
    /// AW.
    pub aw: u8,
    /// FSPTPTR (first-stage and nested).
    pub fs_table: Option<u64>,
    /// SSPTPTR (second-stage and nested).
    pub ss_table: Option<u64>,
    /// FSPM (0 = 4-level, 1 = 5-level).
    pub fspm: u8,
    /// SRE.
    pub sre: bool,
    /// WPE.
    pub wpe: bool,
    /// EAFE.
    pub eafe: bool,
    /// ERE.
    pub ere: bool,
    /// FPD.
    pub fpd: bool,
    /// PWSNP.
    pub pwsnp: bool,
    /// PGSNP.
    pub pgsnp: bool,
    /// The unit's own lookup accepts the entry (else a DMA through it faults).
    pub accepted: bool,
    /// Present entries of the first-stage root table (first-stage PGTT), the first few.
    pub fs_root_entries: Vec<TableEntryView>,
    /// Leaves of the stage table this entry translates through, the first few.
    pub mappings: Vec<MappingView>,
}

/// A present entry of a paging-structure table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntryView {
    /// Slot in the table.
    pub index: u16,
    /// The raw entry.
    pub raw: u64,
}

/// One present leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingView {
    /// Input address.
    pub iova: u64,
    /// Page size.
    pub size: u64,
    /// Output address.
    pub output: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

/// How the enumeration of the guest's tables went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnumerationView {
    /// Entries read from guest memory.
    pub entries_read: u32,
    /// The read budget ran out: the lists are incomplete.
    pub budget_exhausted: bool,
    /// Tables the walk could not read (address outside RAM), first few.
    pub unreadable: Vec<String>,
}

/// A passthrough device's nested binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingView {
    /// bus:dev.fn.
    pub bdf: String,
    /// Backend ("iommufd", "sim").
    pub backend: String,
    /// Parent (second-stage) HWPT.
    pub parent_hwpt: Option<u32>,
    /// Nested HWPTs per PASID.
    pub nested: Vec<NestedHwptView>,
    /// "bound", "blocked", "failed", ...
    pub state: String,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Counters.
    pub counters: Vec<Field>,
}

/// A nested HWPT of a binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedHwptView {
    /// PASID.
    pub pasid: u32,
    /// HWPT ID.
    pub hwpt: u32,
    /// First-stage table the host walks.
    pub fs_table: u64,
}

/// Event counters since the server started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersView {
    /// Invalidations by descriptor type.
    pub invalidations: BTreeMap<String, u64>,
    /// Of which through the queue.
    pub queued_invalidations: u64,
    /// Of which through registers.
    pub register_invalidations: u64,
    /// DMA faults.
    pub dma_faults: u64,
    /// Interrupt-remapping faults.
    pub interrupt_faults: u64,
    /// Page requests.
    pub page_requests: u64,
    /// Page responses.
    pub page_responses: u64,
    /// Binding changes.
    pub binding_changes: u64,
    /// All events.
    pub events: u64,
    /// Events the server's queue dropped before any client read them.
    pub events_overwritten: u64,
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A line longer than the limit.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one `\n`-terminated line of at most `max` bytes (without the newline).
pub fn read_line<R: BufRead>(reader: &mut R, max: usize) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::new();
    let mut limited = std::io::Read::take(reader, max as u64 + 1);
    let n = limited.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(LineError::Closed);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > max {
            return Err(LineError::TooLong(max));
        }
        return Err(LineError::Closed);
    }
    line.pop();
    Ok(line)
}

/// Writes one message as a JSON line.
pub fn write_message(writer: &mut impl Write, msg: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()
}

/// What a first line says about its sender.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloCheck {
    /// A vtd-inspect peer with our version.
    Compatible(Hello),
    /// A vtd-inspect peer with another version.
    VersionMismatch {
        /// The peer's version.
        theirs: u32,
    },
    /// Not a vtd-inspect peer.
    NotOurs,
}

/// Checks a peer's first line. Only `magic` and `version` are read before the versions are
/// known to agree, so a future version's hello (with other fields) still gives a clear
/// mismatch.
pub fn check_hello(line: &[u8]) -> HelloCheck {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
        return HelloCheck::NotOurs;
    };
    if value.get("msg").and_then(|m| m.as_str()) != Some("hello")
        || value.get("magic").and_then(|m| m.as_str()) != Some(MAGIC)
    {
        return HelloCheck::NotOurs;
    }
    let Some(version) = value.get("version").and_then(|v| v.as_u64()) else {
        return HelloCheck::NotOurs;
    };
    if version != PROTOCOL_VERSION as u64 {
        return HelloCheck::VersionMismatch {
            theirs: u32::try_from(version).unwrap_or(u32::MAX),
        };
    }
    match serde_json::from_value::<ServerMessage>(value) {
        Ok(ServerMessage::Hello(h)) => HelloCheck::Compatible(h),
        _ => HelloCheck::NotOurs,
    }
}

/// Formats a requester ID as bus:dev.fn.
pub fn bdf(sid: u16) -> String {
    format!("{:02x}:{:02x}.{}", sid >> 8, (sid >> 3) & 0x1f, sid & 7)
}
