//! Interrupts the unit itself raises (fault events, invalidation completion) and the messages
//! interrupt remapping produces.

/// A message-signalled interrupt as it goes on the bus: address and data (spec 5.1.2, 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Msi {
    /// Address (0xFEEx_xxxx plus the upper 32 bits with x2APIC).
    pub address: u64,
    /// Data.
    pub data: u32,
}

/// Where the unit's own interrupts go: the VMM delivers them (e.g. KVM_SIGNAL_MSI).
///
/// The unit's fault-event and invalidation-completion interrupts are not subject to interrupt
/// remapping (spec 5.1.6): they go straight to the platform. A panic in `send_msi` is caught
/// and logged; the unit goes on delivering.
pub trait InterruptSink: Send + Sync {
    /// Delivers one MSI.
    fn send_msi(&self, msi: Msi);
}

/// A sink that records every MSI (tests and the embedded demo).
#[derive(Debug, Default)]
pub struct RecordingSink {
    sent: crate::sync::Mutex<Vec<Msi>>,
}

impl RecordingSink {
    /// Takes the MSIs sent so far.
    pub fn take(&self) -> Vec<Msi> {
        std::mem::take(&mut *self.sent.lock())
    }
}

impl InterruptSink for RecordingSink {
    fn send_msi(&self, msi: Msi) {
        self.sent.lock().push(msi);
    }
}
