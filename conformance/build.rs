//! Builds the bare-metal scenario interpreter into `$OUT_DIR/interp.elf`, which the runner
//! embeds (see vtd-guests' crate doc).

fn main() {
    vtd_guests::build_script(vtd_guests::Guest::Interpreter, "vtd-conformance");
}
