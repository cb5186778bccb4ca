//! The broker's resident memory and CPU time, read from /proc given its pid.

use crate::error::{Context, Error, Result};

/// Clock ticks per second of /proc/<pid>/stat: USER_HZ, which the Linux ABI
/// fixes at 100 on every architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// VmRSS, in KiB.
    pub rss_kb: u64,
    /// utime + stime, in seconds.
    pub cpu_s: f64,
}

/// Reads VmRSS from /proc/<pid>/status and utime + stime from /proc/<pid>/stat.
pub fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context(format!(
        "cannot read /proc/{pid}/status (is the broker running?)"
    ))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context(format!("cannot read /proc/{pid}/stat"))?;
    Ok(Sample {
        rss_kb: parse_rss_kb(&status)
            .ok_or_else(|| Error::new(format!("no VmRSS in /proc/{pid}/status")))?,
        cpu_s: parse_cpu_ticks(&stat)
            .ok_or_else(|| Error::new(format!("cannot parse /proc/{pid}/stat")))?
            as f64
            / TICKS_PER_SECOND,
    })
}

fn parse_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime (field 14) + stime (field 15). The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after the last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')' come field 3 (state) onwards: utime is the 12th of them.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// One sample of every broker process: their sum, and each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    pub total: Sample,
    pub each: Vec<Sample>,
}

impl Default for Sample {
    fn default() -> Sample {
        Sample {
            rss_kb: 0,
            cpu_s: 0.0,
        }
    }
}

/// Samples the broker processes given (the nodes of a cluster): the first
/// sampling error is kept (and reported), later samples are skipped.
#[derive(Debug, Default)]
pub struct Sampler {
    pids: Vec<u32>,
    pub error: Option<Error>,
    /// Largest sum of the processes' RSS.
    pub max_rss_kb: u64,
    /// Largest RSS of each process.
    pub max_rss_each_kb: Vec<u64>,
}

impl Sampler {
    pub fn new(pids: &[u32]) -> Sampler {
        Sampler {
            pids: pids.to_vec(),
            error: None,
            max_rss_kb: 0,
            max_rss_each_kb: vec![0; pids.len()],
        }
    }

    pub fn sample(&mut self) -> Option<Samples> {
        if self.pids.is_empty() || self.error.is_some() {
            return None;
        }
        let each: Vec<Sample> = match self.pids.iter().map(|&pid| sample(pid)).collect() {
            Ok(each) => each,
            Err(error) => {
                self.error = Some(error);
                return None;
            }
        };
        let mut total = Sample::default();
        for (s, max) in each.iter().zip(self.max_rss_each_kb.iter_mut()) {
            total.rss_kb += s.rss_kb;
            total.cpu_s += s.cpu_s;
            *max = (*max).max(s.rss_kb);
        }
        self.max_rss_kb = self.max_rss_kb.max(total.rss_kb);
        Some(Samples { total, each })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\teasy-mqtt\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_rss_kb(status), Some(12345));
        let stat = "4242 (easy mqtt (x)) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id()).ok();
        assert!(me.is_some_and(|s| s.rss_kb > 0));
        // Twice the same process: the total is the sum of the two.
        let pid = std::process::id();
        let mut sampler = Sampler::new(&[pid, pid]);
        let both = sampler.sample();
        assert_eq!(both.as_ref().map(|b| b.each.len()), Some(2));
        assert!(both.is_some_and(|b| b.total.rss_kb == b.each[0].rss_kb + b.each[1].rss_kb));
        assert!(Sampler::new(&[]).sample().is_none());
    }
}
