//! The TUI's state and what keys do to it, apart from any terminal so tests can drive it.

use std::collections::{BTreeMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::protocol::{Event, EventBatch, EventRecord, Snapshot};

/// Invalidation log lines kept.
const LOG_CAPACITY: usize = 5000;
/// Fault events kept.
const FAULT_CAPACITY: usize = 500;
/// Seconds of rate history per type.
pub const RATE_SECONDS: usize = 60;

/// The tabs, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Configuration, registers, queue, caches, counters.
    Overview,
    /// Devices, drilled down to PASID entries.
    Devices,
    /// Passthrough bindings.
    Bindings,
    /// The invalidation log and rates.
    Invalidations,
    /// Fault records and fault events.
    Faults,
}

impl Tab {
    /// All tabs.
    pub const ALL: [Tab; 5] = [
        Tab::Overview,
        Tab::Devices,
        Tab::Bindings,
        Tab::Invalidations,
        Tab::Faults,
    ];
    /// Title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Devices => "Devices",
            Tab::Bindings => "Bindings",
            Tab::Invalidations => "Invalidations",
            Tab::Faults => "Faults",
        }
    }
    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
    /// The tab `steps` places after this one, wrapping around.
    fn after(self, steps: usize) -> Tab {
        let at = (self.index() + steps) % Tab::ALL.len();
        Tab::ALL.get(at).copied().unwrap_or(self)
    }
}

/// How deep the Devices tab is drilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drill {
    /// The device list.
    List,
    /// One device's context entry and its PASID entries.
    Context,
    /// One PASID entry and its first-stage root.
    Pasid,
}

/// The connection as the TUI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Trying.
    Connecting,
    /// Attached to a server.
    Connected {
        /// The server's name.
        server: String,
    },
    /// Lost or never made; retrying.
    Down {
        /// Why.
        error: String,
    },
}

/// The invalidation log filter: every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Domain ID.
    pub did: Option<u16>,
    /// PASID.
    pub pasid: Option<u32>,
    /// A substring of the descriptor type.
    pub kind: Option<String>,
}

impl Filter {
    /// Parses `did=N pasid=N type=NAME` (any subset, any order; numbers decimal or 0x hex).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut f = Filter::default();
        let num = |v: &str| -> Result<u64, String> {
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.map_err(|_| format!("not a number: {v}"))
        };
        for word in text.split_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {word}"))?;
            match key {
                "did" => {
                    f.did = Some(
                        u16::try_from(num(value)?).map_err(|_| format!("DID too big: {value}"))?,
                    )
                }
                "pasid" => {
                    f.pasid = Some(
                        u32::try_from(num(value)?)
                            .map_err(|_| format!("PASID too big: {value}"))?,
                    )
                }
                "type" => f.kind = Some(value.to_string()),
                other => return Err(format!("unknown filter key {other} (did, pasid, type)")),
            }
        }
        Ok(f)
    }

    /// Whether the filter is empty.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether a log event passes.
    pub fn matches(&self, e: &Event) -> bool {
        let (did, pasid) = match e {
            Event::Invalidation(inv) => (inv.did, inv.pasid),
            Event::PageResponse { pasid, .. } => (None, *pasid),
            _ => (None, None),
        };
        self.did.is_none_or(|d| did == Some(d))
            && self.pasid.is_none_or(|p| pasid == Some(p))
            && self
                .kind
                .as_ref()
                .is_none_or(|k| e.type_name().contains(k.as_str()))
    }

    /// As typed.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.did {
            parts.push(format!("did={d}"));
        }
        if let Some(p) = self.pasid {
            parts.push(format!("pasid={p}"));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("type={k}"));
        }
        parts.join(" ")
    }
}

/// Events per second by type, over the last [`RATE_SECONDS`] seconds of server time.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    now: u64,
    by_type: BTreeMap<String, VecDeque<u64>>,
}

impl Rates {
    fn advance(&mut self, sec: u64) {
        if sec <= self.now {
            return;
        }
        let steps = (sec - self.now).min(RATE_SECONDS as u64) as usize;
        for series in self.by_type.values_mut() {
            for _ in 0..steps {
                series.pop_front();
                series.push_back(0);
            }
        }
        self.now = sec;
    }

    /// Counts one event of `kind` at `time_us`.
    pub fn count(&mut self, kind: &str, time_us: u64) {
        let sec = time_us / 1_000_000;
        self.advance(sec);
        let back = (self.now - sec.min(self.now)) as usize;
        let series = self
            .by_type
            .entry(kind.to_string())
            .or_insert_with(|| VecDeque::from(vec![0; RATE_SECONDS]));
        if back < RATE_SECONDS {
            let i = RATE_SECONDS - 1 - back;
            series[i] += 1;
        }
    }

    /// The series (oldest first) per type.
    pub fn series(&self) -> impl Iterator<Item = (&str, Vec<u64>)> {
        self.by_type
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().copied().collect()))
    }
}

/// What the user asked for, besides redrawing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing further.
    None,
    /// Leave.
    Quit,
    /// Reconnect now.
    Reconnect,
}

/// The whole TUI state.
#[derive(Clone, Debug)]
pub struct App {
    /// Socket path shown in the title.
    pub socket: String,
    /// Current tab.
    pub tab: Tab,
    /// The last snapshot.
    pub snapshot: Option<Snapshot>,
    /// Connection state.
    pub link: Link,
    /// Invalidation log (newest last).
    pub log: VecDeque<EventRecord>,
    /// Events received while paused, shown on resume.
    pub held: VecDeque<EventRecord>,
    /// The log is paused.
    pub paused: bool,
    /// Log lines from the bottom the view is scrolled up (0 follows the newest).
    pub scroll: usize,
    /// Active filter.
    pub filter: Filter,
    /// Filter being typed, if the filter prompt is open.
    pub filter_input: Option<String>,
    /// Error from the last filter parse.
    pub filter_error: Option<String>,
    /// Rates by event type.
    pub rates: Rates,
    /// Recent fault events.
    pub fault_events: VecDeque<EventRecord>,
    /// Events the server dropped for us.
    pub dropped: u64,
    /// Devices tab: selected device.
    pub device: usize,
    /// Devices tab: selected PASID entry of the device.
    pub pasid: usize,
    /// Devices tab: drill level.
    pub drill: Drill,
}

impl App {
    /// A fresh state for `socket`.
    pub fn new(socket: &str) -> Self {
        Self {
            socket: socket.to_string(),
            tab: Tab::Overview,
            snapshot: None,
            link: Link::Connecting,
            log: VecDeque::new(),
            held: VecDeque::new(),
            paused: false,
            scroll: 0,
            filter: Filter::default(),
            filter_input: None,
            filter_error: None,
            rates: Rates::default(),
            fault_events: VecDeque::new(),
            dropped: 0,
            device: 0,
            pasid: 0,
            drill: Drill::List,
        }
    }

    /// Takes a snapshot, keeping the selection in range.
    pub fn on_snapshot(&mut self, snap: Snapshot) {
        let devices = snap.devices.len();
        self.device = self.device.min(devices.saturating_sub(1));
        let pasids = snap.devices.get(self.device).map_or(0, |d| d.pasids.len());
        self.pasid = self.pasid.min(pasids.saturating_sub(1));
        if devices == 0 {
            self.drill = Drill::List;
        }
        self.snapshot = Some(snap);
    }

    /// Takes a batch of events.
    pub fn on_events(&mut self, batch: EventBatch) {
        self.dropped = batch.dropped;
        for rec in batch.events {
            match rec.event {
                // Rates are of what the Invalidations and Faults tabs list.
                Event::Invalidation(_)
                | Event::PageResponse { .. }
                | Event::PageRequest { .. }
                | Event::DmaFault { .. }
                | Event::InterruptFault { .. } => {
                    self.rates.count(rec.event.type_name(), rec.time_us)
                }
                _ => {}
            }
            match rec.event {
                Event::DmaFault { .. } | Event::InterruptFault { .. } => {
                    push_bounded(&mut self.fault_events, rec, FAULT_CAPACITY)
                }
                Event::Invalidation(_) | Event::PageResponse { .. } | Event::PageRequest { .. } => {
                    if self.paused {
                        push_bounded(&mut self.held, rec, LOG_CAPACITY);
                    } else {
                        push_bounded(&mut self.log, rec, LOG_CAPACITY);
                    }
                }
                _ => {}
            }
        }
    }

    /// The log lines that pass the filter, oldest first.
    pub fn filtered_log(&self) -> Vec<&EventRecord> {
        self.log
            .iter()
            .filter(|r| self.filter.matches(&r.event))
            .collect()
    }

    fn device_count(&self) -> usize {
        self.snapshot.as_ref().map_or(0, |s| s.devices.len())
    }

    fn pasid_count(&self) -> usize {
        self.snapshot
            .as_ref()
            .and_then(|s| s.devices.get(self.device))
            .map_or(0, |d| d.pasids.len())
    }

    /// Applies a key.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if let Some(input) = &mut self.filter_input {
            match key.code {
                KeyCode::Enter => {
                    match Filter::parse(input) {
                        Ok(f) => {
                            self.filter = f;
                            self.filter_error = None;
                            self.scroll = 0;
                        }
                        Err(e) => self.filter_error = Some(e),
                    }
                    self.filter_input = None;
                }
                KeyCode::Esc => self.filter_input = None,
                KeyCode::Backspace => {
                    input.pop();
                }
                KeyCode::Char(c) if input.len() < 80 => input.push(c),
                _ => {}
            }
            return Action::None;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('r') => return Action::Reconnect,
            KeyCode::Tab => self.tab = self.tab.after(1),
            KeyCode::BackTab => self.tab = self.tab.after(Tab::ALL.len() - 1),
            KeyCode::Char(c @ '1'..='5') => {
                self.tab = Tab::Overview.after(c as usize - '1' as usize)
            }
            _ => match self.tab {
                Tab::Devices => self.devices_key(key.code),
                Tab::Invalidations => self.log_key(key.code),
                _ => {}
            },
        }
        Action::None
    }

    fn devices_key(&mut self, code: KeyCode) {
        let step = |v: &mut usize, n: usize, down: bool| {
            if n == 0 {
                *v = 0;
            } else if down {
                *v = (*v + 1).min(n - 1);
            } else {
                *v = v.saturating_sub(1);
            }
        };
        match (self.drill, code) {
            (Drill::List, KeyCode::Down | KeyCode::Char('j')) => {
                let n = self.device_count();
                step(&mut self.device, n, true);
                self.pasid = 0;
            }
            (Drill::List, KeyCode::Up | KeyCode::Char('k')) => {
                let n = self.device_count();
                step(&mut self.device, n, false);
                self.pasid = 0;
            }
            (Drill::Context, KeyCode::Down | KeyCode::Char('j')) => {
                let n = self.pasid_count();
                step(&mut self.pasid, n, true);
            }
            (Drill::Context, KeyCode::Up | KeyCode::Char('k')) => {
                let n = self.pasid_count();
                step(&mut self.pasid, n, false);
            }
            (Drill::List, KeyCode::Enter | KeyCode::Right | KeyCode::Char('l'))
                if self.device_count() > 0 =>
            {
                self.drill = Drill::Context;
            }
            (Drill::Context, KeyCode::Enter | KeyCode::Right | KeyCode::Char('l'))
                if self.pasid_count() > 0 =>
            {
                self.drill = Drill::Pasid;
            }
            (
                Drill::Pasid,
                KeyCode::Esc | KeyCode::Left | KeyCode::Backspace | KeyCode::Char('h'),
            ) => self.drill = Drill::Context,
            (
                Drill::Context,
                KeyCode::Esc | KeyCode::Left | KeyCode::Backspace | KeyCode::Char('h'),
            ) => self.drill = Drill::List,
            _ => {}
        }
    }

    fn log_key(&mut self, code: KeyCode) {
        match code {
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    while let Some(r) = self.held.pop_front() {
                        push_bounded(&mut self.log, r, LOG_CAPACITY);
                    }
                }
            }
            KeyCode::Char('/') => self.filter_input = Some(self.filter.describe()),
            KeyCode::Char('c') => {
                self.filter = Filter::default();
                self.filter_error = None;
            }
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(20),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(20),
            KeyCode::End => self.scroll = 0,
            _ => {}
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_reject_clearly() {
        let f = Filter::parse("did=5 pasid=0x10 type=iotlb").unwrap();
        assert_eq!(f.did, Some(5));
        assert_eq!(f.pasid, Some(16));
        assert_eq!(f.kind.as_deref(), Some("iotlb"));
        assert_eq!(Filter::parse(&f.describe()).unwrap(), f);
        assert!(Filter::parse("did=70000").unwrap_err().contains("too big"));
        assert!(Filter::parse("sid=1").unwrap_err().contains("unknown"));
        assert!(Filter::parse("did").unwrap_err().contains("key=value"));
        assert!(Filter::parse("").unwrap().is_empty());
    }

    #[test]
    fn rates_bucket_by_second_and_slide() {
        let mut r = Rates::default();
        r.count("iotlb", 500_000);
        r.count("iotlb", 900_000);
        r.count("iotlb", 2_100_000);
        let (_, s) = r.series().next().unwrap();
        assert_eq!(s.len(), RATE_SECONDS);
        assert_eq!(&s[RATE_SECONDS - 3..], &[2, 0, 1]);
        r.count("iotlb", 200_000_000);
        let (_, s) = r.series().next().unwrap();
        assert_eq!(s.iter().sum::<u64>(), 1, "old seconds slid out");
    }
}
