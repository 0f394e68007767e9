//! The simulated host IOMMU's dirty tracking (iommufd `IOMMU_HWPT_SET_DIRTY_TRACKING`,
//! `IOMMU_HWPT_GET_DIRTY_BITMAP`): only parents allocated with dirty tracking, on a host that
//! offers it; DMA writes (not reads) record their guest-physical page while tracking is on;
//! reading clears; the kernel's argument checks.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_accel::sim::{HostMemory, SimHostIommu};
use vtd_accel::*;

type Mem = GuestMemoryMmap<()>;
const RAM: u64 = 1 << 24;
const HOST_BASE: u64 = 0x40_0000_0000;
const EOPNOTSUPP: i32 = 95;
const EINVAL: i32 = 22;

fn sim(dirty_capable: bool) -> (Arc<SimHostIommu<Mem>>, IoasId) {
    let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let mut info = HostHwInfo::vtd_nesting_capable();
    if dirty_capable {
        info.capabilities |= HW_CAP_DIRTY_TRACKING;
    }
    assert_eq!(info.supports_dirty_tracking(), dirty_capable);
    let sim = Arc::new(SimHostIommu::new(
        info,
        HostMemory::new().with_region(HOST_BASE, RAM, mem, 0),
    ));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, RAM, HOST_BASE, true).unwrap();
    (sim, ioas)
}

fn dirty_pages(sim: &SimHostIommu<Mem>, hwpt: HwptId) -> Vec<u64> {
    let mut bitmap = vec![0u64; (RAM / 4096 / 64) as usize];
    sim.read_and_clear_dirty(hwpt, 0, RAM, 4096, &mut bitmap)
        .unwrap();
    (0..RAM / 4096)
        .filter(|&i| bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0)
        .map(|i| i * 4096)
        .collect()
}

#[test]
fn dma_writes_through_a_tracked_parent_mark_their_pages() {
    let (sim, ioas) = sim(true);
    let (dev, parent) = sim.vfio_bind_default(ioas, ViommuFlags::default()).unwrap();
    // Before tracking: nothing recorded.
    sim.dma_write(dev, None, 0x5010, b"x").unwrap();
    sim.set_dirty_tracking(parent, true).unwrap();
    assert_eq!(dirty_pages(&sim, parent), Vec::<u64>::new());
    sim.dma_write(dev, None, 0x5010, b"x").unwrap();
    sim.dma_write(dev, None, 0x9ff8, b"y").unwrap();
    let mut buf = [0u8; 4];
    sim.dma_read(dev, None, 0x7000, &mut buf).unwrap();
    // IOTLB hits record too (the entry cached before tracking was dropped when it began).
    sim.dma_write(dev, None, 0x5020, b"z").unwrap();
    assert_eq!(dirty_pages(&sim, parent), [0x5000, 0x9000]);
    assert_eq!(dirty_pages(&sim, parent), Vec::<u64>::new(), "read clears");
    // A bitmap over a sub-range reports relative to its start, and only inside it.
    sim.dma_write(dev, None, 0x2_1000, b"a").unwrap();
    sim.dma_write(dev, None, 0x5000, b"b").unwrap();
    let mut bitmap = [0u64; 1];
    sim.read_and_clear_dirty(parent, 0x2_0000, 64 * 4096, 4096, &mut bitmap)
        .unwrap();
    assert_eq!(bitmap, [0b10]);
    assert_eq!(dirty_pages(&sim, parent), [0x5000]);
    sim.set_dirty_tracking(parent, false).unwrap();
    sim.dma_write(dev, None, 0x6000, b"c").unwrap();
    assert_eq!(dirty_pages(&sim, parent), Vec::<u64>::new());
}

#[test]
fn hosts_and_hwpts_without_dirty_tracking_refuse_it() {
    let (plain, ioas) = sim(false);
    let (dev, parent) = plain
        .vfio_bind_default(ioas, ViommuFlags::default())
        .unwrap();
    let e = plain.set_dirty_tracking(parent, true).unwrap_err();
    assert_eq!(
        (e.op, e.errno),
        (BackendOp::SetDirtyTracking, Some(EOPNOTSUPP))
    );
    let e = plain
        .alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: false,
                pasid: false,
                dirty_tracking: true,
            },
        )
        .unwrap_err();
    assert_eq!((e.op, e.errno), (BackendOp::AllocHwpt, Some(EOPNOTSUPP)));

    let (capable, ioas) = sim(true);
    let (dev, _) = capable
        .vfio_bind_default(ioas, ViommuFlags::default())
        .unwrap();
    let untracked = capable
        .alloc_hwpt(
            dev,
            &HwptAlloc::Parent {
                ioas,
                nest_parent: false,
                pasid: false,
                dirty_tracking: false,
            },
        )
        .unwrap();
    let e = capable.set_dirty_tracking(untracked, true).unwrap_err();
    assert_eq!(e.errno, Some(EOPNOTSUPP));
    let e = capable
        .read_and_clear_dirty(untracked, 0, 4096, 4096, &mut [0])
        .unwrap_err();
    assert_eq!(
        (e.op, e.errno),
        (BackendOp::GetDirtyBitmap, Some(EOPNOTSUPP))
    );
}

#[test]
fn bitmap_arguments_are_checked_as_the_kernel_does() {
    let (sim, ioas) = sim(true);
    let (_, parent) = sim.vfio_bind_default(ioas, ViommuFlags::default()).unwrap();
    sim.set_dirty_tracking(parent, true).unwrap();
    for (iova, length, page_size, words) in [
        (0x800, 4096, 4096, 1),  // unaligned IOVA
        (0, 4096, 3000, 1),      // page size not a power of two
        (0, 4096, 2048, 1),      // below 4 KiB
        (0, 65 * 4096, 4096, 1), // bitmap too small
        (0, 0, 4096, 1),         // empty range
        (!0xfff, 8192, 4096, 1), // wraps
    ] {
        let mut bitmap = vec![0u64; words];
        let e = sim
            .read_and_clear_dirty(parent, iova, length, page_size, &mut bitmap)
            .unwrap_err();
        assert_eq!(e.errno, Some(EINVAL), "{iova:#x}+{length:#x}/{page_size}");
    }
    let e = sim.set_dirty_tracking(HwptId(999), true).unwrap_err();
    assert_eq!(e.errno, Some(2), "ENOENT");
}
