//! Storemesh's benchmarks live in `benches/` of this crate; `scripts/bench` runs all of them
//! and writes `BENCHMARKS.md` (one at a time: `cargo bench -p storemesh-benches --bench NAME`).
//! Each benchmark measures a baseline in the same run (these machines are shared and noisy, so
//! ratios are what we track).
//!
//! This library is what the benchmarks share: the smoke switch, order statistics, and the
//! goal checks each benchmark records for the report (`report`).

pub mod h2load;
pub mod images;
pub mod machine;
pub mod report;

/// `STOREMESH_BENCH_SMOKE=1`: small sizes, one iteration, so CI proves the code still runs.
pub fn smoke() -> bool {
    std::env::var_os("STOREMESH_BENCH_SMOKE").is_some_and(|value| !value.is_empty() && value != "0")
}

/// The median of `values` (the upper one of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// (min, max) of `values`; NaN when empty.
pub fn spread(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (
        values.iter().copied().fold(f64::INFINITY, f64::min),
        values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// A `VmRSS:`/`VmHWM:`-style field of a `/proc/<pid>/status` text, in KiB.
pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tstoremesh\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
    }
}
