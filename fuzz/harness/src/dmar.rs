//! ACPI DMAR table parsing (vtd-tables `dmar`), the table a guest or a VMM reads.
//!
//! Invariants: no panic and no unbounded allocation on any bytes; a table that parses
//! serialises, and its serialisation parses to the same table.
//!
//! Input: one byte (bit 0: fix the header checksum first, so mutations of the body are not
//! all stopped at the checksum), then the table.

use vtd_tables::dmar::{ACPI_HEADER_LEN, Dmar};

/// Encodes a seed: `table` with the checksum-fixing flag.
pub fn encode(fix_checksum: bool, table: &[u8]) -> Vec<u8> {
    let mut v = vec![fix_checksum as u8];
    v.extend_from_slice(table);
    v
}

/// The target.
pub fn run(data: &[u8]) {
    let Some((&mode, table)) = data.split_first() else {
        return;
    };
    let mut table = table.to_vec();
    if mode & 1 != 0 && table.len() >= ACPI_HEADER_LEN {
        // ACPI 6.5 5.2.6: the bytes of the table (Length of them) sum to zero; byte 9.
        let len = u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize;
        let len = len.min(table.len());
        table[9] = 0;
        let sum = table[..len].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        table[9] = sum.wrapping_neg();
    }
    let Ok(dmar) = Dmar::parse(&table) else {
        return;
    };
    let bytes = match dmar.try_to_bytes() {
        Ok(b) => b,
        Err(e) => panic!("parsed table does not serialise: {e:?}: {dmar:?}"),
    };
    assert_eq!(
        Dmar::parse(&bytes).as_ref(),
        Ok(&dmar),
        "serialised table parses differently"
    );
}
