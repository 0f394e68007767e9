//! Multiboot (v1) loading as QEMU's `-kernel` does it (hw/i386/multiboot.c), which is what
//! bare-metal test kernels expect (QEMU hw/i386/multiboot.c and the Multiboot 0.6.96 specification):
//!
//! - the multiboot header is looked for in the first 8 KiB, 4-byte aligned, with a valid
//!   checksum;
//! - without the address fields (flags bit 16) the image must be an ELF: its PT_LOAD segments
//!   are loaded at their physical addresses and bss (memsz > filesz) is zeroed; with them, the
//!   a.out-kludge addresses say what to load where;
//! - the information block is at 0x9500 with flags 0x24f (memory, boot device, command line,
//!   modules, memory map, boot loader name), the memory map at 0x9000 (never in page 0, which
//!   kernels may overwrite);
//! - behind the kernel image come the module list, the command lines and the loader name, then
//!   the modules (QEMU's `-initrd`), each page-aligned, in that order, as QEMU lays them out;
//! - the command line is always present and NUL-terminated: QEMU passes
//!   `"<kernel path> <-append string>"`.
//!
//! QEMU refuses ELF64 multiboot images ("Cannot load x86-64 image, give a 32bit one."); this
//! loader also takes x86-64 ELF files, whose physical addresses it uses the same way.
//!
//! The image is untrusted input: every header field is checked against the file and guest RAM,
//! and every loop is bounded by the file's size.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Magic number at the start of the multiboot header.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Value of EAX at the kernel's entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// Where the information block goes (QEMU: ADDR_MBI).
pub const INFO_ADDR: u64 = 0x9500;
/// Where the memory map goes (QEMU: ADDR_E820_MAP).
pub const MMAP_ADDR: u64 = 0x9000;
/// Information flags QEMU sets: MEMORY | BOOTDEV | CMDLINE | MODS | MEM_MAP | LOADER_NAME.
pub const INFO_FLAGS: u32 = 0x24f;
/// The boot loader name QEMU reports.
pub const LOADER_NAME: &str = "qemu";
/// How far into the image the header may start (multiboot spec 3.1.1).
pub const HEADER_SEARCH_LIMIT: usize = 8192;

const FLAG_ADDRESSES: u32 = 1 << 16;
const PAGE: u64 = 4096;
/// Upper bound on program headers: more than any kernel has, few enough to bound the work.
const MAX_PHDRS: usize = 1024;
/// The bytes the information block, its memory map and the low loader data occupy.
const BOOT_INFO_AREA: std::ops::Range<u64> = MMAP_ADDR..INFO_ADDR + 0x100;

/// Why a kernel could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// No multiboot header in the first 8 KiB.
    #[error("no multiboot header (magic 0x1badb002 with a valid checksum) in the first 8 KiB")]
    NoHeader,
    /// The image is not an ELF file and the header has no address fields.
    #[error("not an ELF file and the multiboot header has no address fields (flags bit 16)")]
    NotElf,
    /// An ELF file this loader does not take.
    #[error("unsupported ELF: {0}")]
    UnsupportedElf(&'static str),
    /// A header field points outside the file.
    #[error("malformed image: {0}")]
    Malformed(&'static str),
    /// Nothing to load.
    #[error("the image has no loadable segment")]
    NothingToLoad,
    /// A segment or module does not fit in guest RAM.
    #[error("{what} at {addr:#x} ({len:#x} bytes) is outside guest RAM")]
    OutsideRam {
        /// What was being placed.
        what: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Multiboot v1 passes 32-bit physical addresses (module start and end, command lines,
    /// the module list): something that must be named there was placed above 4 GiB.
    #[error("{what} at {addr:#x} lies above 4 GiB, which multiboot's 32-bit fields cannot name")]
    AboveFourGiB {
        /// What would be named.
        what: &'static str,
        /// Its guest-physical address (the end, for a module's end).
        addr: u64,
    },
    /// A segment overlaps the boot information at 0x9000-0x95ff.
    #[error("segment at {addr:#x} ({len:#x} bytes) overlaps the boot information at 0x9000")]
    OverlapsBootInfo {
        /// Its guest-physical address.
        addr: u64,
        /// Its length.
        len: u64,
    },
}

/// The multiboot header's address fields (flags bit 16, "a.out kludge").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutAddresses {
    /// Physical address of the header itself.
    pub header_addr: u32,
    /// Where the text segment starts (file offset = header offset - (header - load)).
    pub load_addr: u32,
    /// End of the data to load (0: to the end of the file).
    pub load_end_addr: u32,
    /// End of bss (0: no bss).
    pub bss_end_addr: u32,
    /// Entry point.
    pub entry_addr: u32,
}

/// A multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset in the file.
    pub offset: usize,
    /// Flags word.
    pub flags: u32,
    /// Address fields when flags bit 16 is set.
    pub addresses: Option<AoutAddresses>,
}

/// One piece to load: file bytes at a physical address, then zeros up to `mem_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub paddr: u64,
    /// Offset of the bytes in the file.
    pub file_offset: usize,
    /// Bytes taken from the file.
    pub file_size: usize,
    /// Bytes in memory (the rest is zeroed).
    pub mem_size: u64,
}

/// A parsed, validated kernel image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// The multiboot header.
    pub header: Header,
    /// Entry point (physical).
    pub entry: u64,
    /// What to load.
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Finds the multiboot header (multiboot spec 3.1: 4-byte aligned in the first 8 KiB, with
/// magic + flags + checksum = 0).
pub fn find_header(image: &[u8]) -> Result<Header, LoadError> {
    let limit = image.len().min(HEADER_SEARCH_LIMIT);
    let offset = (0..limit.saturating_sub(11))
        .step_by(4)
        .find(|&o| {
            let (Some(m), Some(f), Some(c)) =
                (u32_at(image, o), u32_at(image, o + 4), u32_at(image, o + 8))
            else {
                return false;
            };
            m == HEADER_MAGIC && m.wrapping_add(f).wrapping_add(c) == 0
        })
        .ok_or(LoadError::NoHeader)?;
    let flags = u32_at(image, offset + 4).ok_or(LoadError::NoHeader)?;
    let addresses = if flags & FLAG_ADDRESSES != 0 {
        let f = |i: usize| {
            u32_at(image, offset + 12 + 4 * i)
                .ok_or(LoadError::Malformed("multiboot address fields truncated"))
        };
        Some(AoutAddresses {
            header_addr: f(0)?,
            load_addr: f(1)?,
            load_end_addr: f(2)?,
            bss_end_addr: f(3)?,
            entry_addr: f(4)?,
        })
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        addresses,
    })
}

impl KernelImage {
    /// Parses and validates `image`.
    pub fn parse(image: &[u8]) -> Result<Self, LoadError> {
        let header = find_header(image)?;
        let (entry, segments) = match header.addresses {
            Some(a) => aout_segments(image, &header, &a)?,
            None => elf_segments(image)?,
        };
        if segments.iter().all(|s| s.mem_size == 0) {
            return Err(LoadError::NothingToLoad);
        }
        Ok(Self {
            header,
            entry,
            segments,
        })
    }

    /// The end of the highest segment in memory.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.paddr.saturating_add(s.mem_size))
            .max()
            .unwrap_or(0)
    }
}

fn aout_segments(
    image: &[u8],
    header: &Header,
    a: &AoutAddresses,
) -> Result<(u64, Vec<Segment>), LoadError> {
    // Multiboot spec 3.1.3: the header's file offset minus (header_addr - load_addr) is where
    // the text starts in the file.
    let delta = a
        .header_addr
        .checked_sub(a.load_addr)
        .ok_or(LoadError::Malformed("header_addr below load_addr"))? as usize;
    let file_offset = header
        .offset
        .checked_sub(delta)
        .ok_or(LoadError::Malformed(
            "load_addr before the start of the file",
        ))?;
    let load_len = if a.load_end_addr == 0 {
        image.len() - file_offset
    } else {
        a.load_end_addr
            .checked_sub(a.load_addr)
            .ok_or(LoadError::Malformed("load_end_addr below load_addr"))? as usize
    };
    if file_offset + load_len > image.len() {
        return Err(LoadError::Malformed(
            "load range extends past the end of the file",
        ));
    }
    let end = if a.bss_end_addr == 0 {
        a.load_addr as u64 + load_len as u64
    } else {
        (a.bss_end_addr as u64).max(a.load_addr as u64 + load_len as u64)
    };
    Ok((
        a.entry_addr as u64,
        vec![Segment {
            paddr: a.load_addr as u64,
            file_offset,
            file_size: load_len,
            mem_size: end - a.load_addr as u64,
        }],
    ))
}

fn elf_segments(image: &[u8]) -> Result<(u64, Vec<Segment>), LoadError> {
    if image.get(0..4) != Some(b"\x7fELF") {
        return Err(LoadError::NotElf);
    }
    let class = image[4];
    let is64 = match class {
        1 => false,
        2 => true,
        _ => return Err(LoadError::UnsupportedElf("unknown ELF class")),
    };
    if image.get(5) != Some(&1) {
        return Err(LoadError::UnsupportedElf("not little-endian"));
    }
    let bad = LoadError::Malformed("ELF header truncated");
    let machine = u16_at(image, 18).ok_or(bad.clone())?;
    match (is64, machine) {
        (false, 3) | (true, 62) => {}
        _ => {
            return Err(LoadError::UnsupportedElf(
                "not an x86 (EM_386 / EM_X86_64) executable",
            ));
        }
    }
    let (entry, phoff, phentsize, phnum) = if is64 {
        (
            u64_at(image, 24).ok_or(bad.clone())?,
            u64_at(image, 32).ok_or(bad.clone())? as usize,
            u16_at(image, 54).ok_or(bad.clone())? as usize,
            u16_at(image, 56).ok_or(bad.clone())? as usize,
        )
    } else {
        (
            u32_at(image, 24).ok_or(bad.clone())? as u64,
            u32_at(image, 28).ok_or(bad.clone())? as usize,
            u16_at(image, 42).ok_or(bad.clone())? as usize,
            u16_at(image, 44).ok_or(bad.clone())? as usize,
        )
    };
    let min_entsize = if is64 { 56 } else { 32 };
    if phentsize < min_entsize {
        return Err(LoadError::Malformed("program header entries too small"));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(LoadError::Malformed("no or too many program headers"));
    }
    let mut segments = Vec::new();
    let mut entry_paddr = entry;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .filter(|&o| o.checked_add(phentsize).is_some_and(|e| e <= image.len()))
            .ok_or(LoadError::Malformed(
                "program headers extend past the end of the file",
            ))?;
        let field32 = |o: usize| u32_at(image, ph + o).unwrap_or(0) as u64;
        let field64 = |o: usize| u64_at(image, ph + o).unwrap_or(0);
        let p_type = u32_at(image, ph).unwrap_or(0);
        if p_type != 1 {
            continue; // only PT_LOAD
        }
        let (offset, vaddr, paddr, filesz, memsz) = if is64 {
            (
                field64(8),
                field64(16),
                field64(24),
                field64(32),
                field64(40),
            )
        } else {
            (
                field32(4),
                field32(8),
                field32(12),
                field32(16),
                field32(20),
            )
        };
        if filesz > memsz {
            return Err(LoadError::Malformed(
                "segment file size exceeds its memory size",
            ));
        }
        if offset
            .checked_add(filesz)
            .is_none_or(|e| e > image.len() as u64)
        {
            return Err(LoadError::Malformed(
                "segment extends past the end of the file",
            ));
        }
        if paddr.checked_add(memsz).is_none() {
            return Err(LoadError::Malformed(
                "segment wraps around the address space",
            ));
        }
        // A kernel linked at a virtual address other than its load address gives a virtual
        // entry point; translate it through the segment that contains it, as GRUB does.
        if vaddr != paddr && entry >= vaddr && entry - vaddr < memsz {
            entry_paddr = paddr + (entry - vaddr);
        }
        segments.push(Segment {
            paddr,
            file_offset: offset as usize,
            file_size: filesz as usize,
            mem_size: memsz,
        });
    }
    Ok((entry_paddr, segments))
}

/// A module (QEMU `-initrd`) to load behind the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Its contents.
    pub data: Vec<u8>,
    /// Its command line (QEMU: the file name plus any arguments).
    pub cmdline: String,
}

/// One entry of the memory map (multiboot's `mmap`, the BIOS E820 format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// 1 = usable RAM, 2 = reserved.
    pub kind: u32,
}

/// What the loader placed where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Entry point (EIP).
    pub entry: u64,
    /// The information block's address (EBX).
    pub info_addr: u64,
    /// Where each module went: (start, end).
    pub modules: Vec<(u64, u64)>,
}

fn align_up(v: u64) -> u64 {
    v.saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// `addr` as a multiboot 32-bit address field, refused rather than truncated.
fn addr32(what: &'static str, addr: u64) -> Result<u32, LoadError> {
    u32::try_from(addr).map_err(|_| LoadError::AboveFourGiB { what, addr })
}

fn place<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LoadError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|_| LoadError::OutsideRam {
            what,
            addr,
            len: bytes.len() as u64,
        })
}

/// Loads `kernel` (parsed from `image`) and `modules` into `mem` and writes the multiboot
/// information block for `cmdline` and `mmap`. `ram_below_4g` (the RAM below 4 GiB the
/// firmware leaves to the kernel, `platform::usable_ram_below_4g`) sets mem_upper as QEMU
/// does (in KiB, minus the first MiB).
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    image: &[u8],
    kernel: &KernelImage,
    cmdline: &str,
    modules: &[Module],
    mmap: &[MemoryMapEntry],
    ram_below_4g: u64,
) -> Result<BootInfo, LoadError> {
    for s in &kernel.segments {
        if s.mem_size == 0 {
            continue;
        }
        let in_ram = usize::try_from(s.mem_size)
            .is_ok_and(|len| mem.check_range(GuestAddress(s.paddr), len));
        if !in_ram {
            return Err(LoadError::OutsideRam {
                what: "kernel segment",
                addr: s.paddr,
                len: s.mem_size,
            });
        }
        if s.paddr < BOOT_INFO_AREA.end && s.paddr + s.mem_size > BOOT_INFO_AREA.start {
            return Err(LoadError::OverlapsBootInfo {
                addr: s.paddr,
                len: s.mem_size,
            });
        }
        let bytes = s
            .file_offset
            .checked_add(s.file_size)
            .and_then(|end| image.get(s.file_offset..end))
            .ok_or(LoadError::Malformed(
                "segment extends past the end of the file",
            ))?;
        place(mem, "kernel segment", s.paddr, bytes)?;
        // Zero bss in bounded chunks (its size was checked against RAM above).
        let zeros = [0u8; 4096];
        let mut at = s.paddr + s.file_size as u64;
        let end = s.paddr + s.mem_size;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            place(mem, "kernel bss", at, &zeros[..n])?;
            at += n as u64;
        }
    }

    // Behind the kernel: module list, command lines, loader name; then the modules.
    let mut strings: Vec<u8> = Vec::new();
    let mut push_str = |s: &str| {
        let at = strings.len();
        strings.extend(s.bytes().filter(|&b| b != 0));
        strings.push(0);
        at as u64
    };
    let cmdline_off = push_str(cmdline);
    let module_cmdline_offs: Vec<u64> = modules.iter().map(|m| push_str(&m.cmdline)).collect();
    let loader_off = push_str(LOADER_NAME);
    let list_addr = align_up(kernel.end());
    let strings_addr = list_addr + 16 * modules.len() as u64;
    place(mem, "command lines", strings_addr, &strings)?;
    let mut next = align_up(strings_addr + strings.len() as u64);
    let mut placed = Vec::with_capacity(modules.len());
    let mut list = Vec::with_capacity(16 * modules.len());
    for (m, cmd_off) in modules.iter().zip(&module_cmdline_offs) {
        let start = next;
        let end = start + m.data.len() as u64;
        place(mem, "module", start, &m.data)?;
        placed.push((start, end));
        for v in [
            addr32("module", start)?,
            addr32("module end", end)?,
            addr32("module command line", strings_addr + cmd_off)?,
            0,
        ] {
            list.extend_from_slice(&v.to_le_bytes());
        }
        next = align_up(end);
    }
    place(mem, "module list", list_addr, &list)?;

    // Memory map at 0x9000: entries of {u32 size = 20, u64 base, u64 length, u32 type}.
    let mut map = Vec::with_capacity(24 * mmap.len());
    for e in mmap.iter().take((INFO_ADDR - MMAP_ADDR) as usize / 24) {
        map.extend_from_slice(&20u32.to_le_bytes());
        map.extend_from_slice(&e.addr.to_le_bytes());
        map.extend_from_slice(&e.len.to_le_bytes());
        map.extend_from_slice(&e.kind.to_le_bytes());
    }
    place(mem, "memory map", MMAP_ADDR, &map)?;

    let mut info = [0u8; 88];
    let mut put = |off: usize, v: u32| info[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(0, INFO_FLAGS);
    put(4, 640); // mem_lower (KiB)
    put(8, (ram_below_4g / 1024).saturating_sub(1024) as u32); // mem_upper, as QEMU
    put(12, 0x8000_ffff); // boot_device: QEMU's fixed value
    put(16, addr32("command line", strings_addr + cmdline_off)?);
    put(20, modules.len() as u32);
    put(24, addr32("module list", list_addr)?);
    put(44, map.len() as u32);
    put(48, MMAP_ADDR as u32);
    put(64, addr32("boot loader name", strings_addr + loader_off)?);
    place(mem, "information block", INFO_ADDR, &info)?;

    Ok(BootInfo {
        entry: kernel.entry,
        info_addr: INFO_ADDR,
        modules: placed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mb_header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// An ELF32 with one PT_LOAD at `paddr` holding a multiboot header and `body`.
    fn elf32(entry: u32, paddr: u32, body: &[u8], memsz_extra: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x54];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 1;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&3u16.to_le_bytes());
        f[24..28].copy_from_slice(&entry.to_le_bytes());
        f[28..32].copy_from_slice(&0x34u32.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&1u16.to_le_bytes());
        let mut seg = mb_header(0x3);
        seg.extend_from_slice(body);
        let ph = 0x34;
        let w = |f: &mut Vec<u8>, o: usize, v: u32| {
            f[ph + o..ph + o + 4].copy_from_slice(&v.to_le_bytes())
        };
        w(&mut f, 0, 1);
        w(&mut f, 4, 0x54);
        w(&mut f, 8, paddr);
        w(&mut f, 12, paddr);
        w(&mut f, 16, seg.len() as u32);
        w(&mut f, 20, seg.len() as u32 + memsz_extra);
        f.extend_from_slice(&seg);
        f
    }

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn rd32(m: &GuestMemoryMmap<()>, a: u64) -> u32 {
        m.read_obj::<u32>(GuestAddress(a)).unwrap()
    }

    fn cstr(m: &GuestMemoryMmap<()>, a: u64) -> String {
        let mut s = Vec::new();
        for i in 0..256 {
            let b: u8 = m.read_obj(GuestAddress(a + i)).unwrap();
            if b == 0 {
                break;
            }
            s.push(b);
        }
        String::from_utf8(s).unwrap()
    }

    #[test]
    fn loads_segments_zeroes_bss_and_writes_info() {
        let image = elf32(0x10_0000, 0x10_0000, b"kernel!", 0x2000);
        let k = KernelImage::parse(&image).unwrap();
        assert_eq!(k.entry, 0x10_0000);
        assert_eq!(k.header.offset, 0x54);
        let m = mem();
        m.write_slice(&[0xcc; 0x3000], GuestAddress(0x10_0000))
            .unwrap();
        let modules = [Module {
            data: b"module data".to_vec(),
            cmdline: "/tmp/mod.bin".into(),
        }];
        let mmap = [
            MemoryMapEntry {
                addr: 0,
                len: 0x9fc00,
                kind: 1,
            },
            MemoryMapEntry {
                addr: 0x10_0000,
                len: 15 << 20,
                kind: 1,
            },
        ];
        let info = load(
            &m,
            &image,
            &k,
            "/tmp/k.elf mode=x",
            &modules,
            &mmap,
            16 << 20,
        )
        .unwrap();
        assert_eq!(info.info_addr, 0x9500);
        let mut b = [0u8; 7];
        m.read_slice(&mut b, GuestAddress(0x10_000c)).unwrap();
        assert_eq!(&b, b"kernel!");
        assert_eq!(rd32(&m, 0x10_0014), 0, "bss zeroed");
        assert_eq!(rd32(&m, 0x10_200f), 0, "bss zeroed to its end");
        assert_eq!(rd32(&m, 0x10_2013), 0xcccc_cccc, "nothing past bss");
        assert_eq!(rd32(&m, 0x9500), 0x24f);
        assert_eq!(rd32(&m, 0x9504), 640);
        assert_eq!(rd32(&m, 0x9508), 15 * 1024);
        assert_eq!(rd32(&m, 0x950c), 0x8000_ffff);
        assert_eq!(cstr(&m, rd32(&m, 0x9510) as u64), "/tmp/k.elf mode=x");
        assert_eq!(rd32(&m, 0x9514), 1);
        let list = rd32(&m, 0x9518) as u64;
        assert_eq!(
            list, 0x10_3000,
            "module list behind the kernel, page aligned"
        );
        let (start, end) = (rd32(&m, list) as u64, rd32(&m, list + 4) as u64);
        assert_eq!(start % 4096, 0);
        assert_eq!(end - start, 11);
        assert_eq!(info.modules, vec![(start, end)]);
        assert_eq!(cstr(&m, rd32(&m, list + 8) as u64), "/tmp/mod.bin");
        assert_eq!(cstr(&m, start), "module data");
        assert_eq!(rd32(&m, 0x952c), 48, "two 24-byte entries");
        assert_eq!(rd32(&m, 0x9530), 0x9000);
        assert_eq!(rd32(&m, 0x9000), 20);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x9004 + 24)).unwrap(),
            0x10_0000
        );
        assert_eq!(cstr(&m, rd32(&m, 0x9540) as u64), "qemu");
    }

    #[test]
    fn aout_kludge_addresses() {
        // Header at file offset 16, header_addr 0x200010, load_addr 0x200000: the file is
        // loaded from offset 0; bss up to 0x201000.
        let mut image = vec![0x90u8; 16];
        image.extend_from_slice(&mb_header(0x1_0003));
        for v in [0x20_0010u32, 0x20_0000, 0, 0x20_1000, 0x20_0040] {
            image.extend_from_slice(&v.to_le_bytes());
        }
        let k = KernelImage::parse(&image).unwrap();
        assert_eq!(k.entry, 0x20_0040);
        assert_eq!(
            k.segments,
            vec![Segment {
                paddr: 0x20_0000,
                file_offset: 0,
                file_size: image.len(),
                mem_size: 0x1000
            }]
        );
        let m = mem();
        load(&m, &image, &k, "", &[], &[], 16 << 20).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0x90);
    }

    #[test]
    fn bad_images_are_clear_errors() {
        assert_eq!(KernelImage::parse(b""), Err(LoadError::NoHeader));
        assert_eq!(KernelImage::parse(&[0u8; 20000]), Err(LoadError::NoHeader));
        // Header past 8 KiB is not found.
        let mut late = vec![0u8; 8192];
        late.extend_from_slice(&mb_header(3));
        assert_eq!(KernelImage::parse(&late), Err(LoadError::NoHeader));
        // Bad checksum.
        let mut bad = mb_header(3);
        bad[8] ^= 1;
        assert_eq!(KernelImage::parse(&bad), Err(LoadError::NoHeader));
        // Header without addresses in a non-ELF file.
        assert_eq!(KernelImage::parse(&mb_header(3)), Err(LoadError::NotElf));
        // ELF for another machine.
        let mut arm = elf32(0x10_0000, 0x10_0000, b"x", 0);
        arm[18] = 40;
        assert!(matches!(
            KernelImage::parse(&arm),
            Err(LoadError::UnsupportedElf(_))
        ));
        // Segment past the end of the file.
        let mut trunc = elf32(0x10_0000, 0x10_0000, b"x", 0);
        trunc[0x34 + 16] = 0xff;
        trunc[0x34 + 20] = 0xff;
        assert!(matches!(
            KernelImage::parse(&trunc),
            Err(LoadError::Malformed(_))
        ));
        // filesz > memsz.
        let mut fm = elf32(0x10_0000, 0x10_0000, b"x", 0);
        fm[0x34 + 20] = 0;
        assert!(matches!(
            KernelImage::parse(&fm),
            Err(LoadError::Malformed(_))
        ));
        // Too many program headers / absurd phoff never panic.
        let mut many = elf32(0x10_0000, 0x10_0000, b"x", 0);
        many[44..46].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(KernelImage::parse(&many).is_err());
        let mut far = elf32(0x10_0000, 0x10_0000, b"x", 0);
        far[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(KernelImage::parse(&far).is_err());
        // Outside RAM and over the boot information.
        let m = mem();
        let high = elf32(0x4000_0000, 0x4000_0000, b"x", 0);
        let k = KernelImage::parse(&high).unwrap();
        assert!(matches!(
            load(&m, &high, &k, "", &[], &[], 16 << 20),
            Err(LoadError::OutsideRam { .. })
        ));
        let low = elf32(0x9000, 0x9000, b"x", 0);
        let k = KernelImage::parse(&low).unwrap();
        assert!(matches!(
            load(&m, &low, &k, "", &[], &[], 16 << 20),
            Err(LoadError::OverlapsBootInfo { .. })
        ));
        // Nothing named in the information block may lie above 4 GiB: a kernel whose bss ends
        // past 4 GiB puts the module list and command lines there (RAM contiguous across 4 GiB,
        // as a library user's memory may be). Truncating would point the kernel at low memory.
        let across = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(0xffff_0000), 0x2_0000),
        ])
        .unwrap();
        let top = elf32(0xffff_0000, 0xffff_0000, b"x", 0xf000);
        let k = KernelImage::parse(&top).unwrap();
        let e = load(&across, &top, &k, "", &[], &[], 16 << 20).unwrap_err();
        assert!(
            matches!(e, LoadError::AboveFourGiB { addr, .. } if addr >= 1 << 32),
            "{e}"
        );
        assert!(e.to_string().contains("above 4 GiB"), "{e}");
        // A huge bss is refused before anything is zeroed.
        let huge = elf32(0x10_0000, 0x10_0000, b"x", u32::MAX - 0x100);
        let k = KernelImage::parse(&huge).unwrap();
        assert!(matches!(
            load(&m, &huge, &k, "", &[], &[], 16 << 20),
            Err(LoadError::OutsideRam { .. })
        ));
    }

    /// An ELF32 like [`elf32`]'s whose program header table, moved behind the segment (the
    /// multiboot header must stay in the first 8 KiB), holds the PT_LOAD and `nulls` PT_NULL
    /// entries, with e_phnum claiming `claimed` of them.
    fn elf32_with_phdrs(nulls: usize, claimed: u16) -> Vec<u8> {
        let mut f = elf32(0x10_0000, 0x10_0000, b"kernel!", 0);
        let table = f.len();
        let load = f[0x34..0x54].to_vec();
        f.extend_from_slice(&load);
        f.resize(table + 32 * (1 + nulls), 0);
        f[28..32].copy_from_slice(&(table as u32).to_le_bytes());
        f[44..46].copy_from_slice(&claimed.to_le_bytes());
        f
    }

    /// MAX_PHDRS: an image claiming more program headers than that is refused with a clear
    /// error before any header is read (a short file claiming 65,535 gets the same error, not
    /// "past the end of the file"), even when the file really holds them all; 1,024 still load.
    #[test]
    fn program_headers_are_bounded_at_1024() {
        assert_eq!(MAX_PHDRS, 1024);
        let too_many = LoadError::Malformed("no or too many program headers");
        let at_bound = elf32_with_phdrs(1023, 1024);
        let k = KernelImage::parse(&at_bound).unwrap();
        assert_eq!(k.segments.len(), 1);
        assert_eq!(k.segments[0].paddr, 0x10_0000);
        assert_eq!(k.entry, 0x10_0000);
        let m = mem();
        load(&m, &at_bound, &k, "", &[], &[], 16 << 20).unwrap();
        let mut b = [0u8; 7];
        m.read_slice(&mut b, GuestAddress(0x10_000c)).unwrap();
        assert_eq!(&b, b"kernel!");

        // Present in the file, one too many, and all of e_phnum's range.
        for count in [1025u16, u16::MAX] {
            let image = elf32_with_phdrs(usize::from(count) - 1, count);
            assert_eq!(KernelImage::parse(&image), Err(too_many.clone()), "{count}");
        }
        // Claimed by a file holding one: refused on the count, before reading the table.
        for count in [1025u16, u16::MAX] {
            let image = elf32_with_phdrs(0, count);
            let e = KernelImage::parse(&image).unwrap_err();
            assert_eq!(e, too_many, "{count}");
            assert_eq!(
                e.to_string(),
                "malformed image: no or too many program headers"
            );
        }
    }
}
