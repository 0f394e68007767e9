//! Builds vtd-guest, the bare-metal VT-d self-test kernel the tests boot on vtd-vmm and QEMU,
//! into `$OUT_DIR/vtd-guest.elf` (see vtd-guests' crate doc).

fn main() {
    vtd_guests::build_script(vtd_guests::Guest::SelfTest, "vtd-vmm");
}
