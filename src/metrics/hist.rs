//! Per-worker latency histograms (HdrHistogram), sans-IO.
//!
//! Each worker owns one [`Histograms`] and records into it on its own
//! thread: no lock, no atomic, no allocation per record (every histogram is
//! allocated once, for its whole range, and never resizes). Durations come
//! in as microseconds measured by the runtime; this module never reads the
//! clock. Readers get copies: a worker publishes a clone when asked, and
//! [`Histograms::merge`] adds copies together, so "all workers" is the sum of
//! the per-worker histograms, exactly.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::WorkerFilter;

/// Significant digits kept: values are exact to 0.1%.
pub const SIGFIG: u8 = 3;

/// What a histogram measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Accept → handshake complete, full handshakes.
    HandshakeFull,
    /// Accept → handshake complete, resumed handshakes.
    HandshakeResumed,
    /// Backend connect started → connected.
    Connect,
    /// First plaintext from the client → first byte back from the backend.
    Ttfb,
    /// Accept → connection closed.
    Lifetime,
    /// An L2 session store lookup: asked → answered (or timed out).
    StoreLookup,
}

impl Metric {
    /// Every metric, in storage order.
    pub const ALL: [Metric; 6] = [
        Self::HandshakeFull,
        Self::HandshakeResumed,
        Self::Connect,
        Self::Ttfb,
        Self::Lifetime,
        Self::StoreLookup,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Largest value recorded exactly, in microseconds; larger values are
    /// recorded as this.
    fn max_us(self) -> u64 {
        match self {
            // A day: long-lived connections (tunnels, websockets).
            Self::Lifetime => 86_400_000_000,
            // Ten minutes: far above any timeout.
            _ => 600_000_000,
        }
    }

    /// `(prometheus family, label)` of this metric.
    fn prometheus(self) -> (&'static str, &'static str) {
        match self {
            Self::HandshakeFull => ("handshake_duration_seconds", "kind=\"full\""),
            Self::HandshakeResumed => ("handshake_duration_seconds", "kind=\"resumed\""),
            Self::Connect => ("backend_connect_duration_seconds", ""),
            Self::Ttfb => ("time_to_first_byte_seconds", ""),
            Self::Lifetime => ("connection_lifetime_seconds", ""),
            Self::StoreLookup => ("session_store_lookup_duration_seconds", ""),
        }
    }

    /// Bucket bounds in seconds for the Prometheus histogram.
    fn buckets(self) -> &'static [f64] {
        const SHORT: &[f64] = &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        const LONG: &[f64] = &[
            0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
            21600.0, 86400.0,
        ];
        match self {
            Self::Lifetime => LONG,
            _ => SHORT,
        }
    }
}

/// Names accepted by [`Histograms::by_name`] (`/histograms/NAME`).
pub const NAMES: [&str; 7] = [
    "handshake",
    "handshake_full",
    "handshake_resumed",
    "connect",
    "ttfb",
    "lifetime",
    "session_store_lookup",
];

/// One worker's histograms, plus exact sums (HdrHistogram keeps none).
#[derive(Debug, Clone)]
pub struct Histograms {
    hists: [Histogram<u64>; 6],
    sums_us: [u64; 6],
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

impl Histograms {
    /// Empty histograms, allocated for their whole range.
    pub fn new() -> Self {
        let make = |m: Metric| {
            let mut h = Histogram::new_with_bounds(1, m.max_us(), SIGFIG)
                .expect("static histogram bounds are valid");
            h.auto(false);
            h
        };
        Self {
            hists: Metric::ALL.map(make),
            sums_us: [0; 6],
        }
    }

    /// Records `us` microseconds (clamped to the metric's range). Never
    /// allocates.
    #[inline]
    pub fn record(&mut self, m: Metric, us: u64) {
        let i = m.index();
        let v = us.clamp(1, m.max_us());
        self.hists[i].saturating_record(v);
        self.sums_us[i] = self.sums_us[i].saturating_add(v);
    }

    /// Adds `other`'s records into `self`.
    pub fn merge(&mut self, other: &Histograms) {
        for i in 0..self.hists.len() {
            // Same bounds on both sides: cannot fail.
            let _ = self.hists[i].add(&other.hists[i]);
            self.sums_us[i] = self.sums_us[i].saturating_add(other.sums_us[i]);
        }
    }

    /// The histogram of `m` (microseconds).
    pub fn get(&self, m: Metric) -> &Histogram<u64> {
        &self.hists[m.index()]
    }

    /// Exact sum of the recorded values of `m`, in microseconds.
    pub fn sum_us(&self, m: Metric) -> u64 {
        self.sums_us[m.index()]
    }

    /// The histogram a `/histograms/NAME` path names: one of [`NAMES`];
    /// `handshake` is full and resumed together.
    pub fn by_name(&self, name: &str) -> Option<Histogram<u64>> {
        let m = match name {
            "handshake" => {
                let mut h = self.get(Metric::HandshakeFull).clone();
                let _ = h.add(self.get(Metric::HandshakeResumed));
                return Some(h);
            }
            "handshake_full" => Metric::HandshakeFull,
            "handshake_resumed" => Metric::HandshakeResumed,
            "connect" => Metric::Connect,
            "ttfb" => Metric::Ttfb,
            "lifetime" => Metric::Lifetime,
            "session_store_lookup" => Metric::StoreLookup,
            _ => return None,
        };
        Some(self.get(m).clone())
    }

    /// A one-screen percentile summary (for SIGUSR1 and shutdown), in
    /// milliseconds.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for m in Metric::ALL {
            let h = self.get(m);
            let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{:<18} {:>9} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                label(m),
                h.len(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                h.max() as f64 / 1000.0
            );
        }
        out
    }
}

fn label(m: Metric) -> &'static str {
    match m {
        Metric::HandshakeFull => "handshake full",
        Metric::HandshakeResumed => "handshake resumed",
        Metric::Connect => "backend connect",
        Metric::Ttfb => "time to 1st byte",
        Metric::Lifetime => "conn lifetime",
        Metric::StoreLookup => "store lookup",
    }
}

/// Appends every metric as a Prometheus histogram, per worker (label
/// `worker="N"`), and p50/p99/p999 gauges per worker and, with
/// [`WorkerFilter::All`], merged over all workers (`worker="all"`).
pub fn render_prometheus(out: &mut String, workers: &[&Histograms], filter: WorkerFilter) {
    // The merged copy is only shown for all workers.
    let all = (filter == WorkerFilter::All).then(|| {
        let mut all = Histograms::new();
        for w in workers {
            all.merge(w);
        }
        all
    });
    let mut done_family = "";
    for m in Metric::ALL {
        let (family, label) = m.prometheus();
        if family != done_family {
            let _ = writeln!(out, "# HELP ringterm_{family} {}", help(family));
            let _ = writeln!(out, "# TYPE ringterm_{family} histogram");
        }
        let sep = if label.is_empty() { "" } else { "," };
        for (w, hs) in workers
            .iter()
            .enumerate()
            .filter(|(w, _)| filter.includes(*w))
        {
            let h = hs.get(m);
            let mut cumulative = 0;
            for (&bound, n) in m.buckets().iter().zip(bucket_counts(h, m.buckets())) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "ringterm_{family}_bucket{{worker=\"{w}\"{sep}{label},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "ringterm_{family}_bucket{{worker=\"{w}\"{sep}{label},le=\"+Inf\"}} {}",
                h.len()
            );
            let _ = writeln!(
                out,
                "ringterm_{family}_sum{{worker=\"{w}\"{sep}{label}}} {}",
                hs.sum_us(m) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "ringterm_{family}_count{{worker=\"{w}\"{sep}{label}}} {}",
                h.len()
            );
        }
        done_family = family;
    }
    for (suffix, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let mut done_family = "";
        for m in Metric::ALL {
            let (family, label) = m.prometheus();
            let gauge = format!("{}_{suffix}_seconds", family.trim_end_matches("_seconds"));
            if family != done_family {
                let _ = writeln!(
                    out,
                    "# HELP ringterm_{gauge} The {suffix} quantile of ringterm_{family}."
                );
                let _ = writeln!(out, "# TYPE ringterm_{gauge} gauge");
            }
            let sep = if label.is_empty() { "" } else { "," };
            let mut emit = |who: &str, h: &Histogram<u64>| {
                let _ = writeln!(
                    out,
                    "ringterm_{gauge}{{worker=\"{who}\"{sep}{label}}} {}",
                    h.value_at_quantile(q) as f64 / 1e6
                );
            };
            for (w, hs) in workers
                .iter()
                .enumerate()
                .filter(|(w, _)| filter.includes(*w))
            {
                emit(&w.to_string(), hs.get(m));
            }
            if let Some(all) = &all {
                emit("all", all.get(m));
            }
            done_family = family;
        }
    }
}

/// Counts of `h` per Prometheus bucket (not cumulative): one pass over the
/// recorded values, each counted in the first bucket whose bound (seconds)
/// is at least the value.
fn bucket_counts(h: &Histogram<u64>, bounds: &[f64]) -> Vec<u64> {
    let bounds_us: Vec<u64> = bounds.iter().map(|b| (b * 1e6) as u64).collect();
    let mut counts = vec![0; bounds.len()];
    for v in h.iter_recorded() {
        let value = h.lowest_equivalent(v.value_iterated_to());
        if let Some(i) = bounds_us.iter().position(|&b| value <= b) {
            counts[i] += v.count_at_value();
        }
    }
    counts
}

fn help(family: &str) -> &'static str {
    match family {
        "handshake_duration_seconds" => "Accept to handshake complete, by full or resumed.",
        "backend_connect_duration_seconds" => "Backend connect time.",
        "time_to_first_byte_seconds" => {
            "First plaintext from the client to the first byte back from the backend."
        }
        _ => "Accept to connection closed.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic values, no crate needed.
    fn values(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 5_000_000
            })
            .collect()
    }

    #[test]
    fn merging_workers_equals_recording_everything_in_one() {
        let mut workers: Vec<Histograms> = (0..4).map(|_| Histograms::new()).collect();
        let mut one = Histograms::new();
        for (i, v) in values(7, 20_000).into_iter().enumerate() {
            let m = Metric::ALL[i % Metric::ALL.len()];
            workers[i % 4].record(m, v);
            one.record(m, v);
        }
        let mut merged = Histograms::new();
        for w in &workers {
            merged.merge(w);
        }
        for m in Metric::ALL {
            assert_eq!(merged.get(m), one.get(m), "{m:?}");
            assert_eq!(merged.sum_us(m), one.sum_us(m));
            for q in [0.5, 0.99, 0.999] {
                assert_eq!(
                    merged.get(m).value_at_quantile(q),
                    one.get(m).value_at_quantile(q)
                );
            }
        }
        let refs: Vec<&Histograms> = workers.iter().collect();
        let mut a = String::new();
        render_prometheus(&mut a, &refs, WorkerFilter::All);
        assert!(a.contains("worker=\"all\""));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = Histograms::new();
        h.record(Metric::Connect, 0);
        h.record(Metric::Connect, u64::MAX);
        assert_eq!(h.get(Metric::Connect).len(), 2);
        assert!(h.get(Metric::Connect).max() >= 600_000_000 - 1_000_000);
    }

    #[test]
    fn prometheus_buckets_are_cumulative_and_end_in_count() {
        let mut h = Histograms::new();
        for us in [50, 150, 900, 2_000, 2_000_000] {
            h.record(Metric::HandshakeFull, us);
        }
        let mut out = String::new();
        render_prometheus(&mut out, &[&h], WorkerFilter::All);
        let bucket = |le: &str| -> u64 {
            let prefix = format!(
                "ringterm_handshake_duration_seconds_bucket{{worker=\"0\",kind=\"full\",le=\"{le}\"}} "
            );
            out.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix}"))
                .parse()
                .unwrap()
        };
        assert_eq!(bucket("0.0001"), 1);
        assert_eq!(bucket("0.001"), 3);
        assert_eq!(bucket("0.0025"), 4);
        assert_eq!(bucket("1"), 4);
        assert_eq!(bucket("+Inf"), 5);
        assert!(out
            .contains("ringterm_handshake_duration_seconds_count{worker=\"0\",kind=\"full\"} 5\n"));
        assert!(out.contains(
            "ringterm_handshake_duration_seconds_sum{worker=\"0\",kind=\"full\"} 2.0031\n"
        ));
        assert!(out.contains("# TYPE ringterm_handshake_duration_p99_seconds gauge\n"));
        // One HELP/TYPE per family.
        assert_eq!(
            out.matches("# TYPE ringterm_handshake_duration_seconds histogram")
                .count(),
            1
        );
    }

    #[test]
    fn by_name_knows_every_listed_name() {
        let mut h = Histograms::new();
        h.record(Metric::HandshakeFull, 10);
        h.record(Metric::HandshakeResumed, 20);
        for name in NAMES {
            assert!(h.by_name(name).is_some(), "{name}");
        }
        assert_eq!(h.by_name("handshake").unwrap().len(), 2);
        assert!(h.by_name("nope").is_none());
        assert!(h.summary().contains("handshake full"));
    }
}
