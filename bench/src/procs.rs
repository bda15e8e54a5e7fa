//! What a process costs, read from /proc: resident and proportional set sizes
//! (`VmRSS`, `smaps_rollup`'s `Pss`) and CPU time (`stat`), summed over groups of
//! processes and sampled over a window.

use crate::report::Stats;
use std::time::{Duration, Instant};

fn status_kib(pid: u32, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set size, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "status", "VmRSS:")
}

/// Proportional set size (shared pages split among their users), KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "smaps_rollup", "Pss:")
}

/// User plus system CPU time, clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields count from after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second.
pub fn clk_tck() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

/// What a group of processes cost over a window.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Summed RSS at each sample, MiB.
    pub rss_mib: Stats,
    /// Summed PSS at each sample, MiB.
    pub pss_mib: Stats,
    /// CPU over the window, percent of one core.
    pub cpu_pct: f64,
    /// Samples taken.
    pub samples: usize,
    /// The window.
    pub window: Duration,
}

impl Usage {
    /// `12 samples over 60 s`.
    pub fn runs(&self) -> String {
        format!(
            "{} samples over {} s",
            self.samples,
            self.window.as_secs_f64().round()
        )
    }
}

/// Sample the groups every second for `window`: sizes at each sample, CPU from the
/// ticks between the first and the last. A group is named and lists its PIDs.
pub fn watch(groups: &[(&str, Vec<u32>)], window: Duration) -> Result<Vec<Usage>, String> {
    let every = Duration::from_secs(1).min(window / 2);
    let ticks = |pids: &[u32]| -> Result<u64, String> {
        pids.iter()
            .map(|p| cpu_ticks(*p).ok_or_else(|| format!("process {p} is gone")))
            .sum()
    };
    let start_ticks: Vec<u64> = groups
        .iter()
        .map(|(_, p)| ticks(p))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
    let mut pss: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
    loop {
        for (i, (_, pids)) in groups.iter().enumerate() {
            let (mut r, mut p) = (0u64, 0u64);
            for pid in pids {
                r += rss_kib(*pid).ok_or_else(|| format!("process {pid} is gone"))?;
                p += pss_kib(*pid).unwrap_or(0);
            }
            #[allow(clippy::cast_precision_loss)]
            {
                rss[i].push(r as f64 / 1024.0);
                pss[i].push(p as f64 / 1024.0);
            }
        }
        if started.elapsed() >= window {
            break;
        }
        std::thread::sleep(every.min(window.saturating_sub(started.elapsed())));
    }
    let wall = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let tck = clk_tck() as f64;
    groups
        .iter()
        .enumerate()
        .map(|(i, (_, pids))| {
            let used = ticks(pids)?.saturating_sub(start_ticks[i]);
            #[allow(clippy::cast_precision_loss)]
            let cpu_pct = used as f64 / tck / wall * 100.0;
            Ok(Usage {
                rss_mib: Stats::of(&rss[i]).ok_or("no sample")?,
                pss_mib: Stats::of(&pss[i]).ok_or("no sample")?,
                cpu_pct,
                samples: rss[i].len(),
                window: started.elapsed(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let me = std::process::id();
        let rss = rss_kib(me).unwrap();
        assert!(rss > 100, "{rss} KiB");
        assert!(pss_kib(me).unwrap() <= rss);
        // Burn some CPU, then it shows.
        let before = cpu_ticks(me).unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_ticks(me).unwrap() > before);
    }
}
