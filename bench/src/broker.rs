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

/// Samples the broker if a pid was given: the first sampling error is kept
/// (and reported), later samples are skipped.
#[derive(Debug, Default)]
pub struct Sampler {
    pid: Option<u32>,
    pub error: Option<Error>,
    pub max_rss_kb: u64,
}

impl Sampler {
    pub fn new(pid: Option<u32>) -> Sampler {
        Sampler {
            pid,
            error: None,
            max_rss_kb: 0,
        }
    }

    pub fn sample(&mut self) -> Option<Sample> {
        let pid = self.pid?;
        if self.error.is_some() {
            return None;
        }
        match sample(pid) {
            Ok(sample) => {
                self.max_rss_kb = self.max_rss_kb.max(sample.rss_kb);
                Some(sample)
            }
            Err(error) => {
                self.error = Some(error);
                None
            }
        }
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
    }
}
