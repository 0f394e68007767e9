//! The scalable-mode driver model against the unit: PASID entries with PGTT = 1, first-stage
//! 4 KiB and 2 MiB leaves, strict unmap (the translation is gone at once) and lazy unmap (the
//! IOTLB keeps the stale translation until the flush queue's invalidation, as on hardware).

use vtd_core::{AccessKind, DmaRequest, TranslateError};
use vtd_regs::fault::FaultReason;
use vtd_tables::builder::PageSize;
use vtd_testkit::driver::{FlushQueue, Guest, psi_aligned};

const PROPS: &str = "x-scalable-mode=on,x-flts=on,x-pasid-mode=on";

fn read(g: &Guest, sid: u16, pasid: Option<u32>, iova: u64) -> Result<u64, FaultReason> {
    let req = DmaRequest {
        sid,
        pasid,
        iova,
        access: AccessKind::Read,
        privileged: false,
    };
    match g.unit.translate(&req) {
        Ok(t) => Ok(t.output),
        Err(TranslateError::Fault(f)) => Err(f.reason),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn psi_alignment_matches_linux() {
    assert_eq!(psi_aligned(0x5000, 0x1000), (0x5000, 0));
    assert_eq!(psi_aligned(0x20_0000, 0x20_0000), (0x20_0000, 9));
    // Two pages straddling an 8 KiB boundary: the covering block is 16 KiB.
    assert_eq!(psi_aligned(0x3000, 0x2000), (0x0, 3));
    assert_eq!(psi_aligned(0x3000, 0x1001), (0x0, 3));
}

#[test]
fn first_stage_maps_and_strict_and_lazy_unmaps() {
    let mut g = Guest::new(PROPS, 64);
    let mut sm = g.enable_scalable_mode().unwrap();
    let sid = 0x18;
    g.setup_device(&mut sm, sid, true, false).unwrap();
    let d0 = g.attach_first_stage(&sm, sid, 0, 3).unwrap();
    let d1 = g.attach_first_stage(&sm, sid, 1, 4).unwrap();
    g.fs_map(&d0, 0x1000, 0x300_0000, PageSize::Size4K, true)
        .unwrap();
    g.fs_map(&d0, 0x4020_0000, 0x320_0000, PageSize::Size2M, false)
        .unwrap();
    g.fs_map(&d1, 0x1000, 0x301_0000, PageSize::Size4K, true)
        .unwrap();
    g.enable_translation();
    assert_eq!(read(&g, sid, None, 0x1234), Ok(0x300_0234));
    assert_eq!(read(&g, sid, None, 0x4031_2345), Ok(0x331_2345));
    assert_eq!(read(&g, sid, Some(1), 0x1234), Ok(0x301_0234));

    // Strict: the translation is gone with the unmap.
    g.fs_unmap_strict(&d0, 0x1000, 0x1000, PageSize::Size4K)
        .unwrap();
    assert_eq!(
        read(&g, sid, None, 0x1234),
        Err(FaultReason::FirstStageNotPresent)
    );
    // Lazy: the IOTLB still holds the 2 MiB leaf until the queue flushes.
    let mut fq = FlushQueue::new(2);
    let freed = g
        .fs_unmap_lazy(&d0, &mut fq, 0x4020_0000, 0x20_0000, PageSize::Size2M)
        .unwrap();
    assert!(freed.is_empty());
    assert_eq!(fq.len(), 1);
    assert_eq!(read(&g, sid, None, 0x4031_2345), Ok(0x331_2345));
    assert_eq!(g.flush_queue(&d0, &mut fq), vec![(0x4020_0000, 0x20_0000)]);
    assert_eq!(
        read(&g, sid, None, 0x4031_2345),
        Err(FaultReason::FirstStageNotPresent)
    );
    // PASID 1 was not touched by PASID 0's invalidations.
    assert_eq!(read(&g, sid, Some(1), 0x1234), Ok(0x301_0234));
    g.detach_first_stage(&sm, &d1).unwrap();
    assert!(read(&g, sid, Some(1), 0x1234).is_err());
    g.detach_first_stage(&sm, &d0).unwrap();
    g.release_device(&mut sm, sid, &[3, 4]).unwrap();
    assert!(read(&g, sid, None, 0x4031_2345).is_err());
    // Replug: the same directory and the same (now empty) table come back, no new frames.
    let before = g.frames.next_free();
    g.setup_device(&mut sm, sid, true, false).unwrap();
    let again = g.attach_first_stage_table(&sm, sid, 0, 3, d0.root).unwrap();
    assert_eq!(g.frames.next_free(), before);
    g.fs_map(&again, 0x1000, 0x300_0000, PageSize::Size4K, true)
        .unwrap();
    assert_eq!(read(&g, sid, None, 0x1234), Ok(0x300_0234));
}
