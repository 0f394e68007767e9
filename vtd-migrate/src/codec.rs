//! The container around a snapshot's payload: a fixed header, the checksum, and the payload
//! codec.
//!
//! The header is laid out by hand (not by the codec), so that a reader of any later version
//! can always find the magic, the format version and the payload length, and refuse what it
//! does not know before decoding anything. The checksum covers the header and the payload, so
//! a bit flip anywhere is caught before the payload is decoded.
//!
//! The payload codec is bincode 1.x through serde. bincode is no longer developed upstream;
//! it is used only inside [`encode_payload`] and [`decode_payload`], so it can be replaced by
//! another serde codec (postcard, or a hand-written one for the same byte layout) without
//! changing this crate's API. bincode 1.3 was chosen over 2.x because its byte layout with
//! fixed-width integers is frozen and trivially described (little-endian integers, `u64`
//! lengths before sequences and strings, a `u8` tag before an `Option`), so the committed
//! golden snapshot pins a format any codec can reproduce; 2.x's serde path adds nothing this
//! crate needs.

use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};

/// First bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"VTDSNAP\0";
/// Header size in bytes.
pub const HEADER_SIZE: usize = 32;
/// The largest payload any format version produces is a few KiB (the 4 KiB register image,
/// the devices and their PASIDs): anything claiming more than this is refused unread.
pub const MAX_PAYLOAD: u64 = 16 << 20;

/// CRC-64/XZ (ECMA-182 polynomial, reflected, as `xz` uses): detects every burst error of up
/// to 64 bits, more than enough for a state blob of a few KiB.
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Why bytes are not a snapshot this crate can read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Shorter than the header.
    #[error("snapshot is {0} bytes, shorter than its {HEADER_SIZE}-byte header")]
    Truncated(usize),
    /// Does not start with [`MAGIC`].
    #[error("not a VT-d unit snapshot (magic {0:02x?})")]
    Magic([u8; 8]),
    /// A format version this build does not know.
    #[error(
        "snapshot format version {found} is not supported: this build reads versions \
         {oldest} to {newest}"
    )]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Oldest version read.
        oldest: u32,
        /// Newest version read.
        newest: u32,
    },
    /// Header flags this build does not know.
    #[error("snapshot header flags {0:#x} are not known to this build")]
    Flags(u32),
    /// The payload length does not match the bytes present.
    #[error("header announces a {announced}-byte payload but {present} bytes follow it")]
    PayloadLength {
        /// Length in the header.
        announced: u64,
        /// Bytes after the header.
        present: usize,
    },
    /// The payload length is beyond what any snapshot needs.
    #[error("header announces a {0}-byte payload, more than the {MAX_PAYLOAD}-byte maximum")]
    Oversized(u64),
    /// Checksum mismatch.
    #[error(
        "checksum mismatch (header says {stored:#018x}, content gives {computed:#018x}): the snapshot is corrupt"
    )]
    Checksum {
        /// Stored.
        stored: u64,
        /// Computed.
        computed: u64,
    },
    /// The payload does not decode.
    #[error("snapshot payload does not decode: {0}")]
    Payload(String),
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) payload_len: u64,
}

/// `header || payload` with the checksum filled in.
pub(crate) fn seal(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    // The checksum covers the 24 header bytes so far, its own field as zero, and the payload.
    let crc = checksum(&out, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// CRC over the header with its checksum field as zero, then the payload.
fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut digest = CRC.digest();
    digest.update(header.get(..24).unwrap_or(header));
    digest.update(&[0; 8]);
    digest.update(payload);
    digest.finalize()
}

/// The little-endian field of `N` bytes at `at` in the header.
fn field<const N: usize>(header: &[u8; HEADER_SIZE], at: usize) -> [u8; N] {
    let mut a = [0; N];
    if let Some(src) = header.get(at..at + N) {
        a.copy_from_slice(src);
    }
    a
}

/// Checks the header and checksum; returns the header and the payload. `versions` is the
/// range of format versions the caller can decode.
pub(crate) fn open(
    bytes: &[u8],
    versions: std::ops::RangeInclusive<u32>,
) -> Result<(Header, &[u8]), FormatError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_SIZE>() else {
        return Err(FormatError::Truncated(bytes.len()));
    };
    let magic: [u8; 8] = field(header, 0);
    if magic != MAGIC {
        return Err(FormatError::Magic(magic));
    }
    let version = u32::from_le_bytes(field(header, 8));
    let flags = u32::from_le_bytes(field(header, 12));
    let payload_len = u64::from_le_bytes(field(header, 16));
    let stored = u64::from_le_bytes(field(header, 24));
    // Length before checksum: a length that lies is named as such, not as corruption.
    if payload_len > MAX_PAYLOAD {
        return Err(FormatError::Oversized(payload_len));
    }
    let present = payload.len();
    if payload_len != present as u64 {
        return Err(FormatError::PayloadLength {
            announced: payload_len,
            present,
        });
    }
    let computed = checksum(header, payload);
    if computed != stored {
        return Err(FormatError::Checksum { stored, computed });
    }
    // Version and flags after the checksum: an intact snapshot of an unknown version is the
    // one case where "upgrade the reader" is the right advice.
    if !versions.contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            oldest: *versions.start(),
            newest: *versions.end(),
        });
    }
    if flags != 0 {
        return Err(FormatError::Flags(flags));
    }
    Ok((
        Header {
            version,
            payload_len,
        },
        payload,
    ))
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes a payload.
pub(crate) fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    use bincode::Options;
    // Serializing plain structs into a Vec cannot fail (no maps with non-string keys, no
    // unsized sequences); an error here would be a bug in the format types, never a reaction
    // to input.
    #[allow(clippy::expect_used)]
    options()
        .serialize(value)
        .expect("snapshot format types always serialize")
}

/// Decodes a payload: reads at most `payload.len()` bytes (bincode's limit), refuses trailing
/// bytes. Sequences in the format types use [`bounded_vec`], so what is allocated grows with
/// what was actually read, never with a length field.
pub(crate) fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FormatError> {
    use bincode::Options;
    options()
        .with_limit(payload.len() as u64)
        .reject_trailing_bytes()
        .deserialize(payload)
        .map_err(|e| FormatError::Payload(e.to_string()))
}

/// serde `deserialize_with` for `Vec<T>` fields of at most `MAX` elements: grows the vector
/// as elements arrive instead of trusting the encoded length (serde's default pre-allocates
/// up to 1 MiB from the length field alone), and refuses a length above `MAX` before reading
/// any element. What is allocated is then at most about three times what was read (capacity
/// doubling, old and new buffer live together while growing), never what a length claims.
pub(crate) fn bounded_vec<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Grow<T, const MAX: usize>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>, const MAX: usize> Visitor<'de> for Grow<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a sequence of at most {MAX} elements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if seq.size_hint().is_some_and(|n| n > MAX) {
                return Err(serde::de::Error::invalid_length(
                    seq.size_hint().unwrap_or(0),
                    &self,
                ));
            }
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::invalid_length(MAX + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Grow::<T, MAX>(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_and_every_single_bit_flip_is_caught() {
        let sealed = seal(1, b"payload bytes");
        let (h, p) = open(&sealed, 1..=1).unwrap();
        assert_eq!(
            (h.version, h.payload_len, p),
            (1, 13, &b"payload bytes"[..])
        );
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&bad, 1..=1).is_err(), "flip of bit {bit} accepted");
        }
    }

    #[test]
    fn a_forged_sequence_length_allocates_nothing_up_front() {
        #[derive(serde::Deserialize, Debug)]
        struct S {
            #[serde(deserialize_with = "bounded_vec::<_, _, 16>")]
            v: Vec<u64>,
        }
        let mut payload = u64::MAX.to_le_bytes().to_vec();
        payload.extend_from_slice(&7u64.to_le_bytes());
        match decode_payload::<S>(&payload) {
            Err(FormatError::Payload(_)) => {}
            other => panic!("{:?}", other.map(|s| s.v.len())),
        }
    }
}
