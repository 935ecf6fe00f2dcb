//! Parsing of CPU lists such as `0-3,8`.

/// Parses a CPU list like `0-3,8,10-11` into the list of CPU ids, in the
/// order given, without duplicates.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out: Vec<usize> = Vec::new();
    if s.trim().is_empty() {
        return Err("empty CPU list".to_string());
    }
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("empty element in CPU list {s:?}"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_id(a, s)?, parse_id(b, s)?),
            None => {
                let v = parse_id(part, s)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(format!("descending range {part:?} in CPU list"));
        }
        if hi - lo > 65_536 {
            return Err(format!("range {part:?} in CPU list is too large"));
        }
        for id in lo..=hi {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

fn parse_id(s: &str, whole: &str) -> Result<usize, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid CPU id {s:?} in CPU list {whole:?}"));
    }
    t.parse::<usize>()
        .map_err(|_| format!("invalid CPU id {s:?} in CPU list {whole:?}"))
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn single_and_ranges() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list(" 2 , 4-5 ").unwrap(), vec![2, 4, 5]);
        assert_eq!(parse_cpu_list("3-3").unwrap(), vec![3]);
    }

    #[test]
    fn dedup_keeps_order() {
        assert_eq!(parse_cpu_list("5,1-3,2,5").unwrap(), vec![5, 1, 2, 3]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", " ", ",", "1,", "a", "1-", "-1", "3-1", "1--2", "1-2-3", "+1", "0x1",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
