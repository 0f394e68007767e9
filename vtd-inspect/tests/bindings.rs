//! The passthrough view: a vtd-accel binder on the software host IOMMU, served through
//! `vtd_inspect::accel::attach_binder`; a client sees the device's nested HWPT with the guest's
//! first-stage table, and each binding change in the event stream.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd_accel::sim::{HostMemory, SimHostIommu};
use vtd_accel::{Bdf, HostHwInfo, HostIommuDevice, NestedBinder, PciTopology};
use vtd_inspect::accel::attach_binder;
use vtd_inspect::client::Client;
use vtd_inspect::protocol::{ClientMessage, Event, ServerMessage};
use vtd_inspect::server::{InspectServer, ServerOptions};
use vtd_regs::VtdConfig;
use vtd_regs::inv::PasidCacheGranularity;
use vtd_tables::builder::{
    ContextTablesBuilder, PageSize, PageTableBuilder, PageTableFormat, PasidTablesBuilder,
};
use vtd_tables::entries::PasidEntry;
use vtd_testkit::driver::{Guest, Mem, pasid_cache, pasid_iotlb_all};

const RAM: u64 = 64 << 20;
/// Where the host keeps guest RAM (HPA).
const HOST_BASE: u64 = 1 << 32;
const DEVICE: Bdf = Bdf::new(1, 0, 0);
const DID: u16 = 9;

#[test]
fn a_client_sees_the_nested_hwpt_and_the_binding_changes() {
    let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let cfg = VtdConfig::from_qemu_props("x-scalable-mode=on,x-flts=on").unwrap();
    let mut guest = Guest::with_memory(cfg, mem.clone());

    // The host: guest RAM mapped read-write into the nest parent, one device bound to it.
    let host = HostMemory::new().with_region(HOST_BASE, RAM, mem.clone(), 0);
    let sim = Arc::new(SimHostIommu::new(HostHwInfo::vtd_nesting_capable(), host));
    let ioas = sim.alloc_ioas();
    sim.ioas_map(ioas, 0, RAM, HOST_BASE, true).unwrap();
    let binder = NestedBinder::with_unit_faults(&guest.unit);
    let (dev, parent) = sim.vfio_bind_default(ioas, binder.viommu_flags()).unwrap();
    let host_dev = HostIommuDevice::query(sim.clone(), "0000:01:00.0", dev, parent).unwrap();
    binder
        .register(DEVICE, host_dev, PciTopology::default())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vtd.sock");
    // A feed large enough that nothing this test produces is dropped, however slowly the
    // server's client thread runs on a loaded machine (the feed drops the oldest by design).
    let options = ServerOptions {
        feed_capacity: 1 << 16,
        ..ServerOptions::default()
    };
    let server = InspectServer::start(guest.unit.clone(), &path, options).unwrap();
    attach_binder(&server, &binder);
    let mut client = Client::connect(&path).unwrap();
    client.send(&ClientMessage::Subscribe).unwrap();
    client.snapshot().unwrap();

    // The guest (as Linux 6.12 in scalable first-stage mode) gives the device a first-stage
    // table through PASID 0 (RID_PASID), then flushes the PASID cache and IOTLB.
    guest.enable_qi(true);
    let mut ctx = ContextTablesBuilder::new(&mem, &mut guest.frames, true).unwrap();
    let mut pasids = PasidTablesBuilder::new(&mem, &mut guest.frames, 0).unwrap();
    let mut pt = PageTableBuilder::new(
        &mem,
        &mut guest.frames,
        PageTableFormat::FirstStage { levels: 4 },
    )
    .unwrap();
    pt.map(
        &mut guest.frames,
        0x1000,
        0x20_0000,
        PageSize::Size4K,
        true,
        true,
    )
    .unwrap();
    let fs_root = pt.root();
    pasids
        .set_entry(
            &mut guest.frames,
            0,
            PasidEntry::first_stage(fs_root, false, DID, 2),
        )
        .unwrap();
    ctx.set_scalable_context(&mut guest.frames, DEVICE.sid(), pasids.context_entry())
        .unwrap();
    guest.set_root(ctx.rtaddr());
    guest.enable_translation();
    guest.submit(&[
        pasid_cache(DID, PasidCacheGranularity::Pasid { pasid: 0 }),
        pasid_iotlb_all(DID, 0),
    ]);

    // Event batches that arrived before the snapshot's answer come back beside it.
    let (snap, earlier) = client.snapshot().unwrap();
    assert_eq!(snap.bindings.len(), 1, "{:#?}", snap.bindings);
    let b = &snap.bindings[0];
    assert_eq!(b.bdf, "01:00.0");
    assert_eq!(b.backend, "sim");
    assert_eq!(b.parent_hwpt, Some(parent.0));
    assert_eq!(b.nested.len(), 1, "{b:#?}");
    assert_eq!(b.nested[0].fs_table, fs_root);
    assert!(b.state.starts_with("nested"), "{}", b.state);
    let bound = b.counters.iter().find(|f| f.name == "bound").unwrap();
    assert_eq!(bound.value, 1);

    // The stream carried the change: the device went from its parent to a nested HWPT. The
    // client blocks in `recv` once the stream is idle, so the wait runs on its own thread and
    // the test fails (rather than hangs) when the change never comes.
    let wanted = format!("0x{fs_root:x}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut changes = Vec::new();
        let mut batches = earlier
            .into_iter()
            .map(Ok)
            .chain(std::iter::from_fn(|| Some(client.recv())));
        while let Some(Ok(message)) = batches.next() {
            let ServerMessage::Events(batch) = message else {
                continue;
            };
            assert_eq!(batch.dropped, 0, "events dropped");
            for e in batch.events {
                if let Event::BindingChanged { bdf, change, .. } = e.event {
                    assert_eq!(bdf, "01:00.0");
                    let done = change.starts_with("nested") && change.contains(&wanted);
                    changes.push(change);
                    if done {
                        let _ = tx.send(changes);
                        return;
                    }
                }
            }
        }
    });
    let changes = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the nested binding change reached the client");
    assert!(
        changes.iter().any(|c| c.starts_with("nested")),
        "{changes:?}"
    );
    drop(server);
}
