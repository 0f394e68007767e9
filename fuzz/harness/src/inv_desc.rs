//! Invalidation-descriptor decode (vtd-regs `inv`): any 256-bit pattern in a 128- or
//! 256-bit queue either decodes or names the queue error; what decodes encodes back to the
//! same bits (the descriptor keeps the ignored bits the guest set), and decoding the
//! encoding gives the same descriptor.
//!
//! Input: one byte (bit 0: 256-bit queue), then up to 32 bytes of descriptor, little-endian.

use vtd_regs::inv::{DescWidth, InvDesc, RawDesc};

use crate::input::{Reader, Writer};

/// Encodes a seed.
pub fn encode(wide: bool, words: [u64; 4]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(wide as u8);
    for word in words {
        w.u64(word);
    }
    w.0
}

/// The target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let width = DescWidth::from_iqa_dw(r.u8() & 1 != 0);
    let mut bytes = [0u8; 32];
    let src = r.bytes(32);
    bytes[..src.len()].copy_from_slice(src);
    let raw =
        RawDesc::from_le_bytes(&bytes[..width.bytes()]).expect("16 or 32 bytes are a descriptor");
    let Ok(desc) = InvDesc::decode(&raw, width) else {
        return;
    };
    let _ = (desc.type_code(), desc.trace_name());
    assert_eq!(
        desc.type_code(),
        raw.type_code(),
        "decoded type differs from the raw type"
    );
    let encoded = match desc.encode(width) {
        Ok(e) => e,
        Err(e) => panic!("{desc:?} decoded from {raw:?} does not encode: {e:?}"),
    };
    // A 128-bit queue holds only the first two quadwords.
    let n = width.qwords();
    assert_eq!(
        encoded.0[..n],
        raw.0[..n],
        "{desc:?}: encode(decode(raw)) differs from raw"
    );
    assert_eq!(
        InvDesc::decode(&encoded, width).as_ref(),
        Ok(&desc),
        "decode(encode(desc)) differs"
    );
}
