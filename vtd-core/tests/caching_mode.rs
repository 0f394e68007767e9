//! Caching mode: a watched device's mapping changes come out of the event bus as Unmap/Map
//! pairs after each covering invalidation, from a replay walk of the guest's tables.

use vtd_core::{ShadowEvent, VtdEvent};
use vtd_regs::inv::*;
use vtd_tables::builder::*;
use vtd_tables::entries::*;
use vtd_testkit::driver::*;

const SID: u16 = 0x10;
const DID: u16 = 2;

fn shadow(g: &Guest) -> Vec<ShadowEvent> {
    g.log
        .take()
        .into_iter()
        .filter_map(|e| match e {
            VtdEvent::Shadow(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn iotlb(granularity: IotlbGranularity) -> InvDesc {
    InvDesc::Iotlb(IotlbInv {
        granularity,
        drain_read: false,
        drain_write: false,
        ignored: Default::default(),
    })
}

#[test]
fn page_and_domain_invalidations_replay_the_tables() {
    let mut g = Guest::new("caching-mode=on", 64);
    assert_eq!(g.r64(0x08) & 0x80, 0x80, "CAP.CM");
    let mem = g.mem.clone();
    g.enable_qi(false);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut g.frames, false).unwrap();
    let mut ss = PageTableBuilder::new(
        &mem,
        &mut g.frames,
        PageTableFormat::SecondStage { levels: 3 },
    )
    .unwrap();
    ctx.set_legacy_context(&mut g.frames, SID, ContextEntry::new(ss.root(), 1, DID))
        .unwrap();
    g.set_root(ctx.rtaddr());
    g.enable_translation();
    g.unit.watch_mappings(SID, None);
    shadow(&g);

    // A new mapping followed by a page-selective invalidation: Unmap(page) then Map(page).
    ss.map(
        &mut g.frames,
        0x5000,
        0x80_0000,
        PageSize::Size4K,
        true,
        false,
    )
    .unwrap();
    g.submit(&[iotlb(IotlbGranularity::Page {
        did: DID,
        addr: 0x5000,
        am: 0,
        ih: false,
    })]);
    let ev = shadow(&g);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        ev[0],
        ShadowEvent::Unmap {
            sid: SID,
            pasid: None,
            iova: 0x5000,
            size: 0x1000
        }
    );
    let ShadowEvent::Map {
        iova,
        size,
        output,
        perms,
        ..
    } = ev[1]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (iova, size, output, perms.read, perms.write),
        (0x5000, 0x1000, 0x80_0000, true, false)
    );

    // Another domain's invalidation does not concern this device.
    g.submit(&[iotlb(IotlbGranularity::Domain { did: DID + 1 })]);
    assert!(shadow(&g).is_empty());

    // Unmapping and invalidating a 4-page range: only the Unmap.
    ss.unmap(0x5000, PageSize::Size4K).unwrap();
    ss.map(
        &mut g.frames,
        0x20_0000,
        0x40_0000,
        PageSize::Size2M,
        true,
        true,
    )
    .unwrap();
    g.submit(&[iotlb(IotlbGranularity::Page {
        did: DID,
        addr: 0x4000,
        am: 2,
        ih: false,
    })]);
    assert_eq!(
        shadow(&g),
        vec![ShadowEvent::Unmap {
            sid: SID,
            pasid: None,
            iova: 0x4000,
            size: 0x4000
        }]
    );

    // A domain flush replays the whole address space: the 2 MiB page appears.
    g.submit(&[iotlb(IotlbGranularity::Domain { did: DID })]);
    let ev = shadow(&g);
    assert_eq!(
        ev[0],
        ShadowEvent::Unmap {
            sid: SID,
            pasid: None,
            iova: 0,
            size: 1 << 39
        }
    );
    assert!(matches!(
        ev[1],
        ShadowEvent::Map {
            iova: 0x20_0000,
            size: 0x20_0000,
            output: 0x40_0000,
            ..
        }
    ));
    assert_eq!(ev.len(), 2);

    // Without caching mode nothing is reported.
    let mut plain = Guest::new("", 64);
    plain.unit.watch_mappings(SID, None);
    plain.enable_qi(false);
    plain.submit(&[iotlb(IotlbGranularity::Global)]);
    assert!(shadow(&plain).is_empty());
}
