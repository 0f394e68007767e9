//! The ACPI tables a guest needs to find the remapping unit the Linux way: RSDP in the BIOS
//! area (ACPI 6.5, 5.2.5.1: 16-byte aligned in 0xe0000..0xfffff), an XSDT, a MADT (one local
//! APIC, the IOAPIC the DMAR's device scope names) and the DMAR (VT-d spec chapter 8) built by
//! `vtd_tables::dmar`. The generic tables come from `acpi_tables`.
//!
//! This is not a full firmware table set: there is no FADT or DSDT (bare-metal test kernels
//! use none; a Linux guest would need them, but Linux does not boot under this project's KVM).

use acpi_tables::Aml;
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vtd_regs::VtdConfig;
use vtd_tables::dmar::{Atsr, Dmar, DmarError, RemappingStructure};

use crate::ioapic::IOAPIC_BASE;

/// Where the tables start: the RSDP, then the others, 16-byte aligned.
pub const ACPI_BASE: u64 = 0xe_0000;
/// The end of the BIOS area the tables must fit in.
pub const ACPI_END: u64 = 0xf_0000;
/// OEM ID of our tables.
pub const OEM_ID: [u8; 6] = *b"VTDVMM";
/// OEM table ID of our tables.
pub const OEM_TABLE_ID: [u8; 8] = *b"VTDVMM  ";
/// The IOAPIC's ID (MADT and the DMAR's IOAPIC device scope; QEMU: ACPI_BUILD_IOAPIC_ID 0).
pub const IOAPIC_ID: u8 = 0;
/// Local APIC base.
pub const LAPIC_BASE: u32 = 0xfee0_0000;

/// Why the tables could not be built or placed.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The DMAR could not be encoded.
    #[error("cannot encode the DMAR table: {0}")]
    Dmar(#[from] DmarError),
    /// The tables do not fit in the BIOS area or guest RAM.
    #[error("the ACPI tables do not fit at {ACPI_BASE:#x}..{ACPI_END:#x} in guest RAM")]
    NoRoom,
}

/// Encoded tables and where each goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// (guest-physical address, bytes) for the RSDP, XSDT, MADT and DMAR, in that order.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// The RSDP's address.
    pub fn rsdp_addr(&self) -> u64 {
        ACPI_BASE
    }

    /// The DMAR's address and bytes.
    pub fn dmar(&self) -> Option<&(u64, Vec<u8>)> {
        self.blobs.iter().find(|(_, b)| b.starts_with(b"DMAR"))
    }
}

/// The DMAR for a unit configured like `config` at `register_base`, as QEMU's q35 presents it:
/// host address width = aw-bits, INTR_REMAP when interrupt remapping is on (never
/// X2APIC_OPT_OUT: QEMU 10.0.2 leaves it clear, as vtd-guest's transcript shows), one DRHD
/// with INCLUDE_PCI_ALL and the IOAPIC scope, and an ATSR for all root ports with
/// `device-iotlb=on`.
///
/// QEMU 6.1 and later list each device on bus 0 in an endpoint scope instead of
/// INCLUDE_PCI_ALL; both say that the unit translates for edu (00:01.0), which is what a
/// driver takes from the table.
pub fn dmar_for(config: &VtdConfig, register_base: u64) -> Dmar {
    let mut dmar = Dmar::for_single_unit(
        register_base,
        config.aw_bits,
        config.interrupt_remapping,
        false,
        Some(IOAPIC_ID),
    );
    if config.device_iotlb {
        dmar.structures.push(RemappingStructure::Atsr(Atsr {
            all_ports: true,
            segment: 0,
            scopes: Vec::new(),
        }));
    }
    dmar
}

fn encode(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}

/// Builds the RSDP, XSDT, MADT and DMAR for `config`, laid out from [`ACPI_BASE`].
pub fn build(config: &VtdConfig, register_base: u64) -> Result<AcpiTables, AcpiError> {
    let dmar = dmar_for(config, register_base).try_to_bytes()?;
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(LAPIC_BASE),
    );
    madt.add_structure(ProcessorLocalApic::new(0, 0, EnabledStatus::Enabled));
    madt.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_BASE as u32, 0));
    let madt = encode(&madt);

    let rsdp_len = Rsdp::len() as u64;
    let xsdt_addr = align16(ACPI_BASE + rsdp_len);
    let xsdt_len = 36 + 8 * 2;
    let madt_addr = align16(xsdt_addr + xsdt_len);
    let dmar_addr = align16(madt_addr + madt.len() as u64);
    if dmar_addr + dmar.len() as u64 > ACPI_END {
        return Err(AcpiError::NoRoom);
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(dmar_addr);
    let xsdt = encode(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let rsdp = encode(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        blobs: vec![
            (ACPI_BASE, rsdp),
            (xsdt_addr, xsdt),
            (madt_addr, madt),
            (dmar_addr, dmar),
        ],
    })
}

/// Writes the tables into guest memory.
pub fn write<M: GuestMemoryBackend>(mem: &M, tables: &AcpiTables) -> Result<(), AcpiError> {
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| AcpiError::NoRoom)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on,intremap=on").unwrap();
        let t = build(&cfg, 0xfed9_0000).unwrap();
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem, &t).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(t.rsdp_addr()))
            .unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(rsdp[15], 2, "revision 2: XSDT");
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let mut xsdt = [0u8; 52];
        mem.read_slice(&mut xsdt, GuestAddress(xsdt_addr)).unwrap();
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        let mut sigs = Vec::new();
        for i in 0..2 {
            let a = u64::from_le_bytes(xsdt[36 + 8 * i..44 + 8 * i].try_into().unwrap());
            assert_eq!(a % 16, 0);
            let len: u32 = mem.read_obj(GuestAddress(a + 4)).unwrap();
            let mut table = vec![0u8; len as usize];
            mem.read_slice(&mut table, GuestAddress(a)).unwrap();
            assert_eq!(sum(&table), 0);
            sigs.push(table);
        }
        assert_eq!(&sigs[0][..4], b"APIC");
        let dmar = &sigs[1];
        assert_eq!(&dmar[..4], b"DMAR");
        assert_eq!(dmar[36], 47, "host address width - 1");
        assert_eq!(dmar[37], 0b1, "INTR_REMAP, no X2APIC_OPT_OUT (as QEMU)");
        assert_eq!(
            u64::from_le_bytes(dmar[56..64].try_into().unwrap()),
            0xfed9_0000
        );
        assert_eq!(dmar[52] & 1, 1, "INCLUDE_PCI_ALL");
        assert_eq!(t.dmar().unwrap().1, *dmar);
    }

    #[test]
    fn dmar_follows_the_properties() {
        let cfg = VtdConfig::from_qemu_props("intremap=off,aw-bits=39,device-iotlb=on").unwrap();
        let d = dmar_for(&cfg, 0xfed9_0000).to_bytes();
        assert_eq!(d[36], 38);
        assert_eq!(d[37], 0);
        assert!(d.len() > 72, "ATSR present");
        let cfg = VtdConfig::from_qemu_props("intremap=on,eim=on").unwrap();
        assert_eq!(dmar_for(&cfg, 0xfed9_0000).to_bytes()[37], 1);
    }
}
