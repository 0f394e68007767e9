//! IOTLB hit path against vm-memory's `Iotlb::lookup`, measured in one run (compare the two
//! numbers of the same run; this machine is small and noisy).
//!
//! `cargo bench -p vtd-core --bench iotlb_hit`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::iommu::Iotlb;
use vm_memory::{GuestAddress, GuestMemoryMmap, Permissions};
use vtd_core::{RecordingSink, VtdUnit};
use vtd_regs::VtdConfig;
use vtd_regs::regs::offset as reg;
use vtd_tables::builder::*;
use vtd_tables::walk::{AccessKind, DmaRequest};

const PAGES: u64 = 256;
const ROUNDS: u64 = 2000;

fn main() {
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
    let unit = VtdUnit::new(cfg, mem.clone(), Arc::new(RecordingSink::default())).unwrap();
    let mut frames = FrameAllocator::new(0x100_0000, 0x200_0000);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut frames, 0).unwrap();
    let mut fs =
        PageTableBuilder::new(&mem, &mut frames, PageTableFormat::FirstStage { levels: 4 })
            .unwrap();
    let mut vm_iotlb = Iotlb::new();
    for p in 0..PAGES {
        let (iova, gpa) = (
            0x1000_0000 + p * 4096,
            0x300_0000 + ((p * 7) % PAGES) * 4096,
        );
        fs.map(&mut frames, iova, gpa, PageSize::Size4K, true, true)
            .unwrap();
        vm_iotlb
            .set_mapping(
                GuestAddress(iova),
                GuestAddress(gpa),
                4096,
                Permissions::ReadWrite,
            )
            .unwrap();
    }
    pasids
        .set_entry(
            &mut frames,
            0,
            vtd_tables::entries::PasidEntry::first_stage(fs.root(), false, 1, 2),
        )
        .unwrap();
    ctx.set_scalable_context(&mut frames, 8, pasids.context_entry())
        .unwrap();
    unit.write(reg::RTADDR, 8, ctx.rtaddr());
    unit.write(reg::GCMD, 4, 1 << 30);
    unit.write(reg::GCMD, 4, 1 << 31);
    // Warm the IOTLB (reads and writes so D is set).
    for p in 0..PAGES {
        let r = DmaRequest::new(8, 0x1000_0000 + p * 4096, AccessKind::Write);
        unit.translate(&r).unwrap();
    }
    let n = PAGES * ROUNDS;
    let start = Instant::now();
    for i in 0..n {
        let iova = 0x1000_0000 + (i % PAGES) * 4096 + 8;
        let t = unit
            .translate(&DmaRequest::new(8, iova, AccessKind::Read))
            .unwrap();
        black_box(t.output);
    }
    let ours = start.elapsed().as_nanos() as f64 / n as f64;
    let start = Instant::now();
    for i in 0..n {
        let iova = 0x1000_0000 + (i % PAGES) * 4096 + 8;
        let it = Iotlb::lookup(&vm_iotlb, GuestAddress(iova), 8, Permissions::Read).unwrap();
        for m in it {
            black_box(m.base);
        }
    }
    let theirs = start.elapsed().as_nanos() as f64 / n as f64;
    let stats = unit.stats();
    println!("vtd-core translate (IOTLB hit): {ours:.1} ns/lookup");
    println!("vm-memory Iotlb::lookup:        {theirs:.1} ns/lookup");
    println!("ratio: {:.2} (target <= 0.35)", ours / theirs);
    println!("hits {} misses {}", stats.iotlb.hits, stats.iotlb.misses);
}
