//! Per-thread statistics, merging and report output.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Statistics gathered by one worker thread.
pub struct Stats {
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
    pub ops: u64,
    pub errors: u64,
    /// Payload bytes transferred (bulk mode).
    pub bytes: u64,
    /// Resumption attempts and successes (resume mode).
    pub resume_attempts: u64,
    pub resumed: u64,
    /// Graceful closes where the server did not close within the drain time.
    pub slow_closes: u64,
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1us .. 1h, auto-resizing beyond that; 3 significant digits.
    let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    h.auto(true);
    h
}

impl Stats {
    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            ops: 0,
            errors: 0,
            bytes: 0,
            resume_attempts: 0,
            resumed: 0,
            slow_closes: 0,
            first_error: None,
        }
    }

    /// Records one successful operation.
    pub fn ok(&mut self, latency: Duration) {
        self.ops += 1;
        self.hist.saturating_record(duration_us(latency));
    }

    /// Records one failed operation.
    pub fn error(&mut self, err: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }

    pub fn merge(&mut self, other: Stats) {
        // Both histograms auto-resize, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ops += other.ops;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.resume_attempts += other.resume_attempts;
        self.resumed += other.resumed;
        self.slow_closes += other.slow_closes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

pub fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub mode: String,
    pub ops: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub ops_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<f64>,
    pub latency_us: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency {
            p50: 0,
            p90: 0,
            p99: 0,
            p999: 0,
            max: 0,
            mean: 0.0,
        };
    }
    Latency {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: (h.mean() * 10.0).round() / 10.0,
    }
}

/// Formats microseconds as a human-friendly value.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

impl Report {
    pub fn build(
        mode: &str,
        stats: &Stats,
        elapsed: Duration,
        with_mb: bool,
        with_resume: bool,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let per_s = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        Report {
            mode: mode.to_string(),
            ops: stats.ops,
            errors: stats.errors,
            duration_s: (secs * 1000.0).round() / 1000.0,
            ops_per_s: (per_s(stats.ops as f64) * 10.0).round() / 10.0,
            mb_per_s: with_mb.then(|| (per_s(stats.bytes as f64 / 1e6) * 100.0).round() / 100.0),
            latency_us: latency(&stats.hist),
            resumed_fraction: with_resume.then(|| {
                if stats.resume_attempts == 0 {
                    0.0
                } else {
                    stats.resumed as f64 / stats.resume_attempts as f64
                }
            }),
            first_error: if stats.errors > 0 {
                stats.first_error.clone()
            } else {
                None
            },
        }
    }

    pub fn human(&self, detail: &str, stats: &Stats) -> String {
        let l = &self.latency_us;
        let mut s = String::new();
        s += &format!("mode:      {}{}\n", self.mode, detail);
        s += &format!("ops:       {}\n", self.ops);
        s += &format!("errors:    {}\n", self.errors);
        s += &format!("duration:  {:.3}s\n", self.duration_s);
        s += &format!("ops/s:     {:.1}\n", self.ops_per_s);
        if let Some(mb) = self.mb_per_s {
            s += &format!(
                "MB/s:      {mb:.2}  ({} bytes of payload, MB = 10^6 bytes)\n",
                stats.bytes
            );
        }
        if let Some(f) = self.resumed_fraction {
            s += &format!(
                "resumed:   {:.2}% ({} of {} resumption attempts)\n",
                f * 100.0,
                stats.resumed,
                stats.resume_attempts
            );
        }
        s += &format!(
            "latency:   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}\n",
            fmt_us(l.p50 as f64),
            fmt_us(l.p90 as f64),
            fmt_us(l.p99 as f64),
            fmt_us(l.p999 as f64),
            fmt_us(l.max as f64),
            fmt_us(l.mean)
        );
        if let Some(e) = &self.first_error {
            s += &format!("first error: {e}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Stats::new();
        a.ok(Duration::from_micros(100));
        a.ok(Duration::from_micros(300));
        let mut b = Stats::new();
        b.ok(Duration::from_micros(200));
        b.error("boom");
        b.error("second");
        b.resume_attempts = 4;
        b.resumed = 3;
        a.merge(b);
        assert_eq!(a.ops, 3);
        assert_eq!(a.errors, 2);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        let r = Report::build("resume", &a, Duration::from_secs(2), false, true);
        assert_eq!(r.ops_per_s, 1.5);
        assert_eq!(r.resumed_fraction, Some(0.75));
        assert_eq!(r.latency_us.p50, 200);
        assert_eq!(r.latency_us.max, 300);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mode"], "resume");
        assert_eq!(json["latency_us"]["p999"], 300);
        assert!(json.get("mb_per_s").is_none());
        assert_eq!(json["first_error"], "boom");
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(12.0), "12us");
        assert_eq!(fmt_us(1500.0), "1.50ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
    }
}
