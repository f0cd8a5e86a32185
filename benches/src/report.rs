//! Goal checks the benchmarks record, and what `storemesh-bench-report` makes of them: the
//! summary table of `BENCHMARKS.md` and its chart.
//!
//! A benchmark calls [`record`] for each figure that has a goal (or that the summary should
//! show); with `STOREMESH_BENCH_RESULTS=DIR` set (scripts/bench sets it) the check is appended to
//! `DIR/checks.jsonl`, otherwise it is only printed.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The environment variable naming the directory results are collected in.
pub const RESULTS_ENV: &str = "STOREMESH_BENCH_RESULTS";
const CHECKS_FILE: &str = "checks.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

/// One measured figure of a benchmark, with its goal when it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The benchmark (`grpc_load`, `thumbnail`, ...).
    pub bench: String,
    /// What was measured, with its baseline: "GetProduct req/s ÷ bare tonic".
    pub measure: String,
    pub value: f64,
    /// "×", "%", "µs", "MiB", ...
    pub unit: String,
    pub goal: Option<Goal>,
}

impl Check {
    pub fn new(bench: &str, measure: &str, value: f64, unit: &str, goal: Option<Goal>) -> Self {
        Self {
            bench: bench.into(),
            measure: measure.into(),
            value,
            unit: unit.into(),
            goal,
        }
    }

    pub fn met(&self) -> Option<bool> {
        match self.goal? {
            Goal::AtLeast(limit) => Some(self.value >= limit),
            Goal::AtMost(limit) => Some(self.value <= limit),
        }
    }

    /// How much of its goal the figure uses: ≤ 1 when met (value/limit for an upper bound,
    /// limit/value for a lower bound), so every goal reads the same way on the chart.
    pub fn load(&self) -> Option<f64> {
        let load = match self.goal? {
            Goal::AtLeast(limit) => limit / self.value,
            Goal::AtMost(limit) => self.value / limit,
        };
        load.is_finite().then_some(load.max(0.0))
    }

    pub fn goal_text(&self) -> String {
        match self.goal {
            Some(Goal::AtLeast(limit)) => format!("≥ {}{}", number(limit), self.unit_suffix()),
            Some(Goal::AtMost(limit)) => format!("≤ {}{}", number(limit), self.unit_suffix()),
            None => "—".into(),
        }
    }

    pub fn value_text(&self) -> String {
        format!("{}{}", number(self.value), self.unit_suffix())
    }

    fn unit_suffix(&self) -> String {
        match self.unit.as_str() {
            "×" | "%" => self.unit.clone(),
            "" => String::new(),
            unit => format!(" {unit}"),
        }
    }
}

/// A figure with as many decimals as its size deserves.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if !value.is_finite() {
        "n/a".into()
    } else if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Prints the check and, when `STOREMESH_BENCH_RESULTS` is set, appends it to the results.
pub fn record(check: &Check) {
    let verdict = match check.met() {
        Some(true) => " (goal met)",
        Some(false) => " (goal MISSED)",
        None => "",
    };
    println!(
        "check: {} = {} goal {}{verdict}",
        check.measure,
        check.value_text(),
        check.goal_text()
    );
    let Some(dir) = std::env::var_os(RESULTS_ENV) else {
        return;
    };
    let path = Path::new(&dir).join(CHECKS_FILE);
    let written = serde_json::to_string(check)
        .map_err(std::io::Error::other)
        .and_then(|line| {
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            writeln!(file, "{line}")
        });
    if let Err(error) = written {
        eprintln!("cannot record the check in {}: {error}", path.display());
    }
}

/// The checks recorded in `dir`, in order; a line that does not parse is an error.
pub fn read_checks(dir: &Path) -> Result<Vec<Check>, String> {
    let path = dir.join(CHECKS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .map_err(|error| format!("{} line {}: {error}", path.display(), index + 1))
        })
        .collect()
}

/// The Markdown summary: every check, its goal and whether it is met.
pub fn checks_table(checks: &[Check]) -> String {
    let mut out =
        String::from("| benchmark | measure | value | goal | met |\n|---|---|---|---|---|\n");
    for check in checks {
        let met = match check.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {met} |\n",
            check.bench,
            check.measure,
            check.value_text(),
            check.goal_text()
        ));
    }
    out
}

/// A criterion estimate: the median time per iteration and its 95 % confidence interval (ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub median_ns: f64,
    pub low_ns: f64,
    pub high_ns: f64,
}

/// Reads `{criterion_home}/{group}/{function}/new/estimates.json`; `None` when the benchmark
/// has not run (criterion's `--test` mode writes none).
pub fn criterion_estimate(criterion_home: &Path, group: &str, function: &str) -> Option<Estimate> {
    let path = criterion_home
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let median = json.get("median")?;
    let interval = median.get("confidence_interval")?;
    Some(Estimate {
        median_ns: median.get("point_estimate")?.as_f64()?,
        low_ns: interval.get("lower_bound")?.as_f64()?,
        high_ns: interval.get("upper_bound")?.as_f64()?,
    })
}

/// A horizontal bar per check with a goal: how much of the goal it uses (1.0 = the limit).
pub fn chart_svg(checks: &[Check], path: &Path, title: &str) -> Result<(), String> {
    use plotters::prelude::*;

    let bars: Vec<(&Check, f64)> = checks
        .iter()
        .filter_map(|check| Some((check, check.load()?)))
        .collect();
    let rows = bars.len().max(1);
    let height = 90 + 34 * rows as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    let error = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let x_max = bars
        .iter()
        .map(|(_, load)| *load)
        .fold(1.5_f64, f64::max)
        .min(5.0)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(56)
        .y_label_area_size(520)
        .build_cartesian_2d(0.0..x_max, (0..rows).into_segmented())
        .map_err(|e| error(&e))?;
    let labels: Vec<String> = bars
        .iter()
        .map(|(check, _)| {
            format!(
                "{}: {} (goal {})",
                check.measure,
                check.value_text(),
                check.goal_text()
            )
        })
        .collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .y_labels(rows)
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(index) => labels.get(*index).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("share of the goal used (≤ 1.0 = goal met; lower is better)")
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(index, (check, load))| {
            let colour = if check.met() == Some(true) {
                RGBColor(46, 139, 87)
            } else {
                RGBColor(200, 50, 50)
            };
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(index)),
                    (load.min(x_max), SegmentValue::Exact(index + 1)),
                ],
                colour.filled(),
            )
        }))
        .map_err(|e| error(&e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(rows)),
            ],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_read_the_same_way() {
        let ratio = Check::new("grpc_load", "r", 0.4, "×", Some(Goal::AtLeast(0.8)));
        assert_eq!(ratio.met(), Some(false));
        assert_eq!(ratio.load(), Some(2.0));
        let overhead = Check::new("grpc_load", "o", 7.5, "%", Some(Goal::AtMost(15.0)));
        assert_eq!(overhead.met(), Some(true));
        assert_eq!(overhead.load(), Some(0.5));
        let plain = Check::new("system", "rss", 30.0, "MiB", None);
        assert_eq!(plain.met(), None);
        assert_eq!(plain.load(), None);
        assert_eq!(overhead.goal_text(), "≤ 15.0%");
        assert_eq!(plain.value_text(), "30.0 MiB");
    }

    #[test]
    fn checks_round_trip_through_the_results_file() {
        let dir = tempfile::tempdir().unwrap();
        let checks = vec![
            Check::new("a", "x ÷ y", 1.5, "×", Some(Goal::AtLeast(1.0))),
            Check::new("b", "rss", 12.0, "MiB", None),
        ];
        let text: String = checks
            .iter()
            .map(|c| serde_json::to_string(c).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join(CHECKS_FILE), text).unwrap();
        assert_eq!(read_checks(dir.path()).unwrap(), checks);
        std::fs::write(dir.path().join(CHECKS_FILE), "{not json\n").unwrap();
        assert!(read_checks(dir.path()).unwrap_err().contains("line 1"));
        let table = checks_table(&checks);
        assert!(
            table.contains("| a | x ÷ y | 1.50× | ≥ 1.00× | yes |"),
            "{table}"
        );
    }

    #[test]
    fn chart_is_an_svg_with_a_bar_per_goal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let checks = vec![
            Check::new("a", "fast", 0.5, "×", Some(Goal::AtLeast(0.8))),
            Check::new("b", "small", 10.0, "MiB", Some(Goal::AtMost(32.0))),
            Check::new("c", "no goal", 1.0, "", None),
        ];
        chart_svg(&checks, &path, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("fast: 0.50×"), "labels name the figures");
        assert!(
            !svg.contains("no goal"),
            "only checks with a goal are drawn"
        );
    }
}
