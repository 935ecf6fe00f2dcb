//! The cost of recording one latency into a worker's histograms (what the
//! connection path pays per measurement), of a clock read around it, and of
//! the on-demand copy and merge a scrape costs each worker.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringterm::metrics::hist::{Histograms, Metric};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("histograms");
    g.bench_function("record", |b| {
        let mut h = Histograms::new();
        let mut v = 1u64;
        b.iter(|| {
            // Spread values over the range like real latencies do.
            v = v
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            h.record(black_box(Metric::HandshakeFull), (v >> 40) % 2_000_000);
        })
    });
    g.bench_function("record_with_clock_read", |b| {
        let mut h = Histograms::new();
        let start = Instant::now();
        b.iter(|| {
            let us = start.elapsed().as_micros() as u64;
            h.record(black_box(Metric::Ttfb), us);
        })
    });
    let mut full = Histograms::new();
    for i in 0..100_000u64 {
        for m in Metric::ALL {
            full.record(m, (i * 7919) % 3_000_000);
        }
    }
    g.bench_function("clone_for_scrape", |b| b.iter(|| black_box(full.clone())));
    g.bench_function("merge_one_worker", |b| {
        let mut acc = Histograms::new();
        b.iter(|| acc.merge(black_box(&full)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
