//! What the harness reads from the operating system: file-descriptor limits, CPU time and RSS
//! of a process, and a description of the machine for the report.

use std::fs;
use std::time::Duration;

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
///
/// Children inherit it, so raising it here before spawning the server also raises the server's.
/// Without CAP_SYS_RESOURCE the hard limit cannot be raised, so that is the ceiling.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
    }
    lim.rlim_cur
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) this process has used so far.
pub fn self_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (utime + stime) of another process, from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Option<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text).map(|ticks| Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// utime + stime in clock ticks from a /proc/PID/stat line. The command name may hold spaces
/// and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")" come: state(3) ppid(4) ... utime is field 14 and stime 15 of the full line.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process in KiB, from /proc/PID/status.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, "VmRSS:")
}

/// RSS of this process in KiB.
pub fn self_rss_kib() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&text, "VmRSS:")
}

pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The machine as the report names it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_mib: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub nofile_limit: u64,
}

pub fn machine(nofile_limit: u64) -> Machine {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_total_mib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_status_kib(&t, "MemTotal:"))
        .map(|k| k / 1024)
        .unwrap_or(0);
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Machine {
        nproc,
        mem_total_mib,
        cpu_model,
        kernel,
        nofile_limit,
    }
}

/// The commit the harness runs from, or "unknown" (e.g. before the first commit).
pub fn git_commit(repo: &std::path::Path) -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Microseconds since the UNIX epoch. Publisher and subscribers run in one process on one
/// machine, so this one clock serves both ends of the latency measurement.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_odd_command_names() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu(line), Some(300));
    }

    #[test]
    fn status_kib() {
        let t = "Name:\tx\nVmRSS:\t   12345 kB\nVmSwap:\t0 kB\n";
        assert_eq!(parse_status_kib(t, "VmRSS:"), Some(12345));
        assert_eq!(parse_status_kib(t, "VmHWM:"), None);
    }

    #[test]
    fn own_stat_parses() {
        assert!(proc_cpu(std::process::id()).is_some());
        assert!(self_rss_kib().unwrap_or(0) > 0);
    }
}
