//! Criterion benchmarks, one per row of `vtd-bench`: `cargo bench -p vtd-bench`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vm_memory::iommu::Iommu;
use vm_memory::{Bytes, GuestAddress, IommuMemory, Permissions};
use vtd_bench::{AttachedInspector, Fixture, FixtureSpec, FloorRead, Layout1G, SID, gpa_of};
use vtd_core::CacheCapacity;

fn hits(c: &mut Criterion) {
    let f = Fixture::new(FixtureSpec::default());
    f.warm(SID);
    let pages = f.pages;
    let mut g = c.benchmark_group("hit");
    let mut i = 0u64;
    g.bench_function("vm_memory_lookup", |b| {
        b.iter(|| {
            i += 1;
            black_box(f.vm_lookup(i % pages))
        })
    });
    g.bench_function("translate", |b| {
        b.iter(|| {
            i += 1;
            black_box(f.translate(SID, i % pages))
        })
    });
    let space = f.unit.address_space(SID, None);
    g.bench_function("iommu_adapter", |b| {
        b.iter(|| {
            i += 1;
            let it = space
                .translate(GuestAddress(f.iova(i % pages) + 8), 8, Permissions::Read)
                .unwrap();
            it.map(|m| m.base.0).sum::<u64>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("read64k_16_scattered_pages");
    let iommu_mem = IommuMemory::new(f.mem.clone(), f.unit.address_space(SID, None), true, ());
    let mut buf = vec![0u8; 64 << 10];
    g.bench_function("direct", |b| {
        b.iter(|| {
            i += 1;
            let first = (i % 16) * 16;
            for (k, chunk) in buf.chunks_mut(4096).enumerate() {
                f.mem
                    .read_slice(chunk, GuestAddress(gpa_of(first + k as u64)))
                    .unwrap();
            }
        })
    });
    g.bench_function("iommu_memory", |b| {
        b.iter(|| {
            i += 1;
            iommu_mem
                .read_slice(&mut buf, GuestAddress(f.iova((i % 16) * 16)))
                .unwrap();
        })
    });
    g.finish();
}

fn two_threads(c: &mut Criterion) {
    let f = Fixture::new(FixtureSpec {
        pages: 512,
        devices: 2,
        layout: Layout1G::Spread,
        ..FixtureSpec::default()
    });
    f.warm(SID);
    f.warm(SID + 1);
    let mut g = c.benchmark_group("hit_threads");
    for (name, threads, same) in [
        ("one", 1, true),
        ("two_same_pages", 2, true),
        ("two_other_pages", 2, false),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // Per op of the slowest thread; Criterion wants the time of `iters` ops.
                let per_op = vtd_bench::ns_per_op_threads(1, threads, iters, |t, i| {
                    let (sid, page) = if same {
                        (SID, i % 64)
                    } else {
                        (SID + t as u16, (i % 32) * 2 + t as u64)
                    };
                    black_box(f.translate(sid, page));
                });
                std::time::Duration::from_secs_f64(per_op * iters as f64 / 1e9)
            })
        });
    }
    g.finish();
}

fn misses(c: &mut Criterion) {
    let mut g = c.benchmark_group("miss");
    for nested in [false, true] {
        let f = Fixture::new(FixtureSpec {
            pages: 4096,
            capacity: CacheCapacity {
                iotlb: 64,
                ..CacheCapacity::default()
            },
            nested,
            ..FixtureSpec::default()
        });
        f.warm(SID);
        let name = if nested {
            "nested"
        } else {
            "first_stage_4level"
        };
        let mut i = 0u64;
        g.bench_function(format!("{name}/translate"), |b| {
            b.iter(|| {
                i += 1;
                black_box(f.translate(SID, i % 4096))
            })
        });
        for how in FloorRead::ALL {
            g.bench_function(format!("{name}/floor_reads_{how:?}"), |b| {
                b.iter(|| {
                    i += 1;
                    let iova = f.iova(i % 4096) + 8;
                    black_box(if nested {
                        f.floor_nested(iova, how)
                    } else {
                        f.floor_first_stage(iova, how)
                    })
                })
            });
        }
    }
    g.finish();
}

fn invalidation(c: &mut Criterion) {
    let mut g = c.benchmark_group("page_invalidation");
    g.sample_size(10);
    for cached in [1_024u64, 65_536] {
        let f = Fixture::new(FixtureSpec {
            pages: cached,
            capacity: CacheCapacity {
                iotlb: 131_072,
                ..CacheCapacity::default()
            },
            layout: Layout1G::Spread,
            ..FixtureSpec::default()
        });
        f.warm(SID);
        let mut k = 0u64;
        g.bench_function(format!("{cached}_cached"), |b| {
            b.iter(|| {
                // Invalidate a cached page and bring it back, so the count stays.
                k = (k + 97) % cached;
                f.invalidate_page(k);
                black_box(f.translate(SID, k))
            })
        });
    }
    g.finish();
}

/// The IOTLB hit alone and with an inspector attached (`vtd-bench`'s `inspector` rows).
fn inspector(c: &mut Criterion) {
    let f = Fixture::new(FixtureSpec::default());
    f.warm(SID);
    let pages = f.pages;
    let mut g = c.benchmark_group("inspector");
    let mut i = 0u64;
    g.bench_function("hit_alone", |b| {
        b.iter(|| {
            i += 1;
            black_box(f.translate(SID, i % pages))
        })
    });
    let attached = AttachedInspector::attach(&f.unit);
    g.bench_function("hit_attached", |b| {
        b.iter(|| {
            i += 1;
            black_box(f.translate(SID, i % pages))
        })
    });
    let snapshots = attached.detach();
    assert!(snapshots > 0, "the client took no snapshot while attached");
    g.finish();
}

criterion_group!(benches, hits, two_threads, misses, invalidation, inspector);
criterion_main!(benches);
