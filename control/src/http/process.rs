//! The `process_*` figures of both daemons, read from `/proc` (proc(5)), for `/metrics`: CPU
//! time, resident memory, open file descriptors and start time. Control reads the relay's by
//! the pid the relay publishes in shm (both run as the same user).
//!
//! Owns: parsing those `/proc` files. May not touch: anything else.

/// One process's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
}

/// The `/proc` clock tick: `USER_HZ`, which the kernel fixes at 100 for the `/proc` ABI on the
/// architectures Sluice runs on (x86_64, aarch64), whatever its internal `HZ`.
const USER_HZ: f64 = 100.0;

/// `pid`'s figures, or `None` when it is gone or unreadable.
pub fn sample(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    parse(&stat, &status, &boot, open_fds)
}

/// From the texts of `/proc/PID/stat`, `/proc/PID/status` and `/proc/stat`.
fn parse(stat: &str, status: &str, boot: &str, open_fds: u64) -> Option<ProcessSample> {
    // Fields after the parenthesised command name (which may hold spaces): state is field 3,
    // utime 14, stime 15, starttime 22 (proc(5)); here index 0 is field 3.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime, start) = (num(11)?, num(12)?, num(19)?);
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_bytes: rss_kb * 1024,
        open_fds,
        start_time_seconds: btime as f64 + start as f64 / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        let stat = "4242 (sluice relay) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 12345 1000 300 18446744073709551615";
        let status = "Name:\tsluice-relay\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let s = parse(stat, status, boot, 7).unwrap();
        assert_eq!(s.cpu_seconds, 3.0, "(250 + 50) / 100");
        assert_eq!(s.resident_bytes, 2048 * 1024);
        assert_eq!(s.open_fds, 7);
        assert_eq!(s.start_time_seconds, 1_700_000_000.0 + 123.45);
        assert_eq!(parse("garbage", status, boot, 0), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc");
        assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.start_time_seconds > 1e9);
    }
}
