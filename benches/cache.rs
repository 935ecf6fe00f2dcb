//! The per-core session cache: put, get, take and merge at a full cache
//! (20,000 entries, the default capacity), the steady state of a busy worker.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use ringterm::session::cache::{CacheConfig, SessionCache, SessionKind, SyncMsg};

const CAPACITY: usize = 20_000;

fn key(i: u64) -> Vec<u8> {
    let mut k = vec![0u8; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k
}

fn full_cache() -> (SessionCache, u64) {
    let mut c = SessionCache::new(CacheConfig {
        capacity: CAPACITY,
        timeout_ms: 300_000,
    });
    for i in 0..CAPACITY as u64 {
        c.put(key(i), vec![7u8; 200], i);
    }
    (c, CAPACITY as u64)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_cache");
    g.bench_function("put_evicting_oldest", |b| {
        let (mut cache, mut i) = full_cache();
        b.iter(|| {
            i += 1;
            black_box(cache.put(key(i), vec![7u8; 200], i));
        })
    });
    g.bench_function("get_hit", |b| {
        let (mut cache, n) = full_cache();
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % n;
            black_box(cache.get(&key(i), n));
        })
    });
    g.bench_function("take_then_put", |b| {
        let (mut cache, mut n) = full_cache();
        let mut i = 0u64;
        b.iter(|| {
            let (v, _) = cache.take(&key(i), n);
            black_box(v);
            n += 1;
            cache.put(key(i), vec![7u8; 200], n);
            i = (i + 1) % CAPACITY as u64;
        })
    });
    g.bench_function("merge_remote_put", |b| {
        b.iter_batched(
            || {
                let (cache, n) = full_cache();
                (cache, n)
            },
            |(mut cache, n)| {
                for j in 0..100 {
                    cache.merge(
                        SyncMsg::Put {
                            key: key(1_000_000 + j),
                            value: vec![7u8; 200],
                            kind: SessionKind::Tls12Id,
                            created_ms: n + j,
                        },
                        n + j,
                    );
                }
                cache
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
