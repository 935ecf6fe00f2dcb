//! Writer for HdrHistogram's classic percentile-distribution text format
//! (what Java's `Histogram::outputPercentileDistribution` and wrk2 print,
//! readable by the HdrHistogram plotter).

use hdrhistogram::Histogram;
use std::io::{self, Write};

/// Number of sub-buckets an HdrHistogram uses for `sigfig` significant digits
/// (with a lowest discernible value of 1).
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    largest_single_unit.next_power_of_two()
}

/// Writes `h` as a percentile distribution. Values are divided by `scale`
/// (1000.0 turns microseconds into milliseconds); `ticks` is the number of
/// percentile reporting ticks per half distance (5 is the usual choice).
pub fn write_percentile_distribution<W: Write>(
    w: &mut W,
    h: &Histogram<u64>,
    ticks: u32,
    scale: f64,
) -> io::Result<()> {
    let digits = usize::from(h.sigfig());
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if !h.is_empty() {
        let mut total: u64 = 0;
        for v in h.iter_quantiles(ticks.max(1)) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                writeln!(
                    w,
                    "{value:12.digits$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(w, "{value:12.digits$} {q:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    writeln!(
        w,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]"
    )?;
    writeln!(
        w,
        "#[Max     = {max:12.digits$}, Total count    = {:12}]",
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(h: &Histogram<u64>) -> String {
        let mut out = Vec::new();
        write_percentile_distribution(&mut out, h, 5, 1000.0).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sub_buckets() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
    }

    #[test]
    fn format_matches_hdr_layout() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let text = render(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First data line: minimum value (10us = 0.010ms), quantile 0.
        assert_eq!(
            lines[2],
            "       0.010 0.000000000000          1           1.00"
        );
        // Data lines all have 4 columns except the final 100% line.
        let data: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with('#'))
            .collect();
        let last = data.last().unwrap();
        assert_eq!(last.split_whitespace().count(), 3);
        assert!(last.contains("1.000000000000"));
        assert!(last.trim_end().ends_with("1000"));
        for l in &data[..data.len() - 1] {
            assert_eq!(l.split_whitespace().count(), 4, "{l}");
        }
        // Total counts are monotonic.
        let counts: Vec<u64> = data
            .iter()
            .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        let footer: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("#["))
            .collect();
        assert_eq!(footer.len(), 3);
        assert!(
            footer[0].starts_with("#[Mean    =        5.00"),
            "{}",
            footer[0]
        );
        assert!(footer[0].contains(", StdDeviation   = "));
        assert_eq!(
            footer[1],
            "#[Max     =       10.007, Total count    =         1000]"
        );
        assert!(footer[2].starts_with("#[Buckets = "));
        assert!(footer[2].ends_with(", SubBuckets     =         2048]"));
    }

    #[test]
    fn median_line_present() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [100u64, 200, 300, 400] {
            h.record(v).unwrap();
        }
        let text = render(&h);
        assert!(
            text.contains("       0.200 0.500000000000          2           2.00"),
            "{text}"
        );
    }

    #[test]
    fn empty_histogram() {
        let h = Histogram::<u64>::new(3).unwrap();
        let text = render(&h);
        assert!(text.contains("#[Mean    =        0.000, StdDeviation   =        0.000]"));
        assert!(text.contains("#[Max     =        0.000, Total count    =            0]"));
    }
}
