//! What the benchmarks report and how `bench/RESULTS.md` is written: figures with their
//! run counts, latency percentiles, the peer's figure from the same run and the ratio,
//! targets and whether they were met, and the machine it all ran on.

use std::fmt::Write as _;
use std::path::Path;

/// Percentiles of a set of samples (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// How many samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// The percentiles of `v`; `None` when it is empty.
    pub fn of(v: &[f64]) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            // Nearest rank: the smallest sample with at least p of them at or below it.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let k = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[k - 1]
        };
        Some(Self {
            n: s.len(),
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            min: s[0],
            max: s[s.len() - 1],
        })
    }

    /// `12.3 ms (p90 15.0, p99 20.1)`, values in `unit` scaled by 1.
    pub fn latency(&self, unit: &str) -> String {
        format!(
            "{} {unit} (p90 {}, p99 {})",
            num(self.p50),
            num(self.p90),
            num(self.p99)
        )
    }
}

/// A number with as many digits as it deserves.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A bound a figure should keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
}

impl Target {
    fn met(self, x: f64) -> bool {
        match self {
            Self::AtMost(t) => x <= t,
            Self::AtLeast(t) => x >= t,
        }
    }
}

/// One figure of a section.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Stable key (`footprint.idle.agent.rss`): CI checks every one is produced.
    pub id: String,
    /// What was measured.
    pub what: String,
    /// Grove's figure.
    pub value: String,
    /// How many runs or samples.
    pub runs: String,
    /// The peer's figure from the same run, when a peer runs here.
    pub peer: String,
    /// Grove ÷ peer.
    pub ratio: String,
    /// The target, as the issue states it.
    pub target: String,
    /// Whether the target was met (`None`: no target).
    pub met: Option<bool>,
}

impl Row {
    /// A figure with its run count.
    pub fn new(id: &str, what: &str, value: String, runs: impl ToString) -> Self {
        Self {
            id: id.to_owned(),
            what: what.to_owned(),
            value,
            runs: runs.to_string(),
            ..Self::default()
        }
    }

    /// With a target on `x` (the figure as a number), described as `text`.
    pub fn target(mut self, x: f64, t: Target, text: &str) -> Self {
        self.met = Some(t.met(x));
        self.target = text.to_owned();
        self
    }

    /// With two targets that must both hold (p50 and p99).
    pub fn targets(mut self, checks: &[(f64, Target)], text: &str) -> Self {
        self.met = (!checks.is_empty()).then(|| checks.iter().all(|(x, t)| t.met(*x)));
        self.target = text.to_owned();
        self
    }

    /// With the peer's figure and the ratio `grove / peer`.
    pub fn peer(mut self, figure: String, grove: f64, peer: f64) -> Self {
        self.peer = figure;
        self.ratio = if peer > 0.0 {
            format!("{:.2}", grove / peer)
        } else {
            "—".into()
        };
        self
    }

    /// With a peer's figure that was computed or published, not run here.
    pub fn reference(mut self, figure: String) -> Self {
        self.peer = figure;
        self
    }
}

/// One benchmark's part of RESULTS.md.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// Key (`footprint`), also the command that runs it.
    pub id: String,
    /// Heading.
    pub title: String,
    /// How it was measured.
    pub intro: String,
    /// The figures.
    pub rows: Vec<Row>,
    /// Remarks: what limits a missed target, what was left out.
    pub notes: Vec<String>,
    /// When, in which mode, on what, and how long it took (filled in by the harness).
    pub stamp: String,
    /// Why it could not be run.
    pub error: Option<String>,
}

/// The machine, as RESULTS.md names it.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| {
            #[allow(clippy::cast_precision_loss)]
            let g = kib as f64 / 1024.0 / 1024.0;
            g
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.1} GiB memory, Linux {}, {}",
        kernel.trim(),
        std::env::consts::ARCH
    )
}

/// The time now, `2026-12-01 07:40 UTC`.
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cell(s: &str) -> String {
    if s.is_empty() {
        "—".into()
    } else {
        s.replace('|', "\\|").replace('\n', " ")
    }
}

fn render_section(s: &Section) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<!-- section {} -->", s.id);
    let _ = writeln!(out, "## {}\n", s.title);
    let _ = writeln!(out, "_{}_\n", s.stamp);
    if !s.intro.is_empty() {
        let _ = writeln!(out, "{}\n", s.intro);
    }
    if let Some(e) = &s.error {
        let _ = writeln!(out, "**Not measured: the run failed:** {}\n", cell(e));
    }
    if !s.rows.is_empty() {
        out += "| id | measure | Grove | runs | peer (same run unless said) | ratio | target | met |\n";
        out += "|---|---|---|---|---|---|---|---|\n";
        for r in &s.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} | {} | {met} |",
                r.id,
                cell(&r.what),
                cell(&r.value),
                cell(&r.runs),
                cell(&r.peer),
                cell(&r.ratio),
                cell(&r.target),
            );
        }
        out += "\n";
    }
    for n in &s.notes {
        let _ = writeln!(out, "- {n}");
    }
    if !s.notes.is_empty() {
        out += "\n";
    }
    let _ = writeln!(out, "<!-- /section {} -->", s.id);
    out
}

/// The sections of an earlier RESULTS.md, by key, as written.
fn sections_of(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- section ") {
        let after = &rest[start + "<!-- section ".len()..];
        let Some(end_id) = after.find(" -->") else {
            break;
        };
        let id = after[..end_id].to_owned();
        let close = format!("<!-- /section {id} -->");
        let Some(end) = rest[start..].find(&close) else {
            break;
        };
        let stop = start + end + close.len();
        out.push((id, format!("{}\n", &rest[start..stop])));
        rest = &rest[stop..];
    }
    out
}

/// Every row id in a RESULTS.md text.
pub fn row_ids(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(id, _)| id.to_owned()))
        .collect()
}

/// Write `sections` into the file at `path`: sections of an earlier run that were not
/// run this time are kept as they were, in `order`.
pub fn write(path: &Path, sections: &[Section], order: &[&str]) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut kept = sections_of(&old);
    for s in sections {
        kept.retain(|(id, _)| *id != s.id);
        kept.push((s.id.clone(), render_section(s)));
    }
    kept.sort_by_key(|(id, _)| order.iter().position(|o| o == id).unwrap_or(usize::MAX));
    let body: String = kept
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let ids = row_ids(&body);
    let missed: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("| `") && l.trim_end().ends_with("| **no** |"))
        .filter_map(|l| row_ids(l).pop())
        .collect();
    let with_target = body
        .lines()
        .filter(|l| l.starts_with("| `") && !l.trim_end().ends_with("| — |"))
        .count();
    let mut head = String::new();
    head += "# Grove benchmark results\n\n";
    head += "Generated by `cargo run --release -p grove-bench -- all` (`bench/src/`); not \
             written by hand. Each section says when it ran, on what, and in which mode; \
             a section run again on its own (`grove-bench deploy`) replaces only itself. \
             Every run happens inside network namespaces the harness makes.\n\n";
    let _ = writeln!(
        head,
        "{} figures; {} with a target: {} met, {} missed{}.\n",
        ids.len(),
        with_target,
        with_target - missed.len(),
        missed.len(),
        if missed.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                missed
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, head + &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.n), (50.0, 90.0, 99.0, 100));
        assert_eq!(Stats::of(&[7.0]).unwrap().p99, 7.0);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn a_section_run_alone_replaces_only_itself() {
        let dir = std::env::temp_dir().join(format!("grove-bench-report-{}", std::process::id()));
        let path = dir.join("RESULTS.md");
        let sec = |id: &str, value: &str, met: bool| Section {
            id: id.into(),
            title: id.into(),
            rows: vec![Row::new(&format!("{id}.x"), "x", value.into(), 3).target(
                if met { 1.0 } else { 9.0 },
                Target::AtMost(5.0),
                "≤ 5",
            )],
            ..Section::default()
        };
        let order = ["a", "b"];
        write(
            &path,
            &[sec("b", "old b", true), sec("a", "old a", true)],
            &order,
        )
        .unwrap();
        write(&path, &[sec("b", "new b", false)], &order).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(row_ids(&text), ["a.x", "b.x"]);
        assert!(text.contains("old a") && text.contains("new b") && !text.contains("old b"));
        assert!(text.contains("1 missed (`b.x`)"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
