//! The PCI requester ID: the one type for "which device" across the workspace.
//!
//! Every DMA request, fault record, invalidation descriptor and interrupt-remapping check names
//! its requester by the 16-bit source ID `bus << 8 | device << 3 | function` (VT-d spec 3.4.1,
//! "Source Identifier"; PCIe's Requester ID). [`Bdf`] holds it as bus and devfn so that it
//! prints as `bb:dd.f` and cannot be confused with a domain ID or a PASID.

use core::fmt;

/// A PCI requester: bus and device/function (the SID the unit sees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7:3) and function (bits 2:0).
    pub devfn: u8,
}

impl Bdf {
    /// `bus:device.function`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            devfn: (device & 0x1f) << 3 | (function & 7),
        }
    }
    /// From a requester ID (`bus << 8 | devfn`).
    pub const fn from_sid(sid: u16) -> Self {
        Self {
            bus: (sid >> 8) as u8,
            devfn: sid as u8,
        }
    }
    /// The requester ID.
    pub const fn sid(self) -> u16 {
        (self.bus as u16) << 8 | self.devfn as u16
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus,
            self.devfn >> 3,
            self.devfn & 7
        )
    }
}

impl From<u16> for Bdf {
    fn from(sid: u16) -> Self {
        Self::from_sid(sid)
    }
}

impl From<Bdf> for u16 {
    fn from(bdf: Bdf) -> Self {
        bdf.sid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_round_trips_and_prints_as_bus_device_function() {
        let bdf = Bdf::new(0x12, 0x1f, 7);
        assert_eq!(bdf.sid(), 0x12ff);
        assert_eq!(Bdf::from_sid(0x12ff), bdf);
        assert_eq!(Bdf::from(0x0018u16).to_string(), "00:03.0");
        assert_eq!(u16::from(Bdf::new(0, 3, 0)), 0x18);
    }

    #[test]
    fn device_and_function_are_masked_to_their_fields() {
        assert_eq!(Bdf::new(1, 0xff, 0xff).sid(), 0x01ff);
    }
}
