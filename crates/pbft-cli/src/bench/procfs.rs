//! CPU time and bytes written by processes, read from Linux's `/proc`.

use std::path::{Path, PathBuf};

/// Clock ticks per second of `utime` and `stime` in `/proc/<pid>/stat`. Linux reports these in USER_HZ, which is
/// 100 on every architecture it exports to user space (whatever the kernel's own tick rate).
pub const USER_HZ: f64 = 100.0;

/// What one process used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Bytes passed to write-like system calls (`wchar` of `/proc/<pid>/io`): sockets and files alike.
    /// `None` when the file could not be read (another user's process, or no permission).
    pub wchar: Option<u64>,
    /// Bytes the process caused to be written to storage (`write_bytes`: file data reaching the disk, counted
    /// in pages), `None` like `wchar`.
    pub write_bytes: Option<u64>,
}

/// `utime + stime` in seconds from the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so the fields are counted from the last `)`.
pub fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The `wchar` line of `/proc/<pid>/io`.
pub fn parse_io_wchar(io: &str) -> Option<u64> {
    parse_io_field(io, "wchar")
}

/// One `name: value` line of `/proc/<pid>/io`.
pub fn parse_io_field(io: &str, name: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

fn proc_dir(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}")),
        None => PathBuf::from("/proc/self"),
    }
}

/// The usage of process `pid` (`None`: this process). `None` when the process is gone.
pub fn usage(pid: Option<u32>) -> Option<Usage> {
    let dir = proc_dir(pid);
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let cpu_seconds = parse_stat_cpu_seconds(&stat)?;
    let io = std::fs::read_to_string(dir.join("io")).ok();
    let wchar = io.as_deref().and_then(parse_io_wchar);
    let write_bytes = io
        .as_deref()
        .and_then(|io| parse_io_field(io, "write_bytes"));
    Some(Usage {
        cpu_seconds,
        wchar,
        write_bytes,
    })
}

/// The sum of several processes' usage; `None` if any is gone (a delta would be meaningless). Bytes written
/// are `None` if any process's could not be read.
pub fn total_usage(pids: &[u32]) -> Option<Usage> {
    let mut total = Usage {
        cpu_seconds: 0.0,
        wchar: Some(0),
        write_bytes: Some(0),
    };
    for &pid in pids {
        let u = usage(Some(pid))?;
        total.cpu_seconds += u.cpu_seconds;
        total.wchar = match (total.wchar, u.wchar) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        total.write_bytes = match (total.write_bytes, u.write_bytes) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    Some(total)
}

/// The one-, five- and fifteen-minute load averages of the machine, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Whether a process's command line is `... replica --config PATH` with PATH (resolved against the process's
/// working directory) in `cluster_dir`.
pub fn is_replica_of(cmdline: &[String], cwd: &Path, cluster_dir: &Path) -> bool {
    if !cmdline.iter().any(|a| a == "replica") {
        return false;
    }
    let config = cmdline
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| cmdline.get(i + 1).map(PathBuf::from))
        .or_else(|| {
            cmdline
                .iter()
                .find_map(|a| a.strip_prefix("--config=").map(PathBuf::from))
        });
    let Some(config) = config else { return false };
    let config = cwd.join(config);
    let parent = config.parent().unwrap_or(Path::new("/"));
    match (parent.canonicalize(), cluster_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The pids of running `pbft replica` processes whose configuration lies in `cluster_dir` (for `--attach`).
pub fn find_replicas(cluster_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let dir = proc_dir(Some(*pid));
            let Ok(raw) = std::fs::read(dir.join("cmdline")) else {
                return false;
            };
            let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            is_replica_of(&args, &cwd, cluster_dir)
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpu_seconds_come_from_utime_and_stime_after_the_name() {
        // A name with spaces and a parenthesis, as a process may choose.
        let line = "4242 (pbft (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 \
                    123456 1000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_seconds(line), Some(3.25));
        assert_eq!(parse_stat_cpu_seconds("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat_cpu_seconds("no parenthesis"), None);
    }

    #[test]
    fn wchar_is_read_from_the_io_file() {
        let io =
            "rchar: 100\nwchar: 123456\nsyscr: 3\nsyscw: 4\nread_bytes: 0\nwrite_bytes: 4096\n";
        assert_eq!(parse_io_wchar(io), Some(123_456));
        assert_eq!(parse_io_wchar("rchar: 1\n"), None);
        assert_eq!(parse_io_field(io, "write_bytes"), Some(4096));
        assert_eq!(parse_io_field(io, "write"), None);
    }

    #[test]
    fn this_process_has_a_readable_usage() {
        let u = usage(None).unwrap();
        assert!(u.cpu_seconds >= 0.0);
        assert!(!loadavg().is_empty());
    }

    #[test]
    fn a_replica_is_recognised_by_its_configuration_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().to_path_buf();
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_replica_of(
            &cmd(&["pbft", "replica", "--config", "replica-0.toml"]),
            &cwd,
            dir.path()
        ));
        let absolute = format!("--config={}/replica-1.toml", cwd.display());
        assert!(is_replica_of(
            &cmd(&["pbft", "replica", &absolute]),
            Path::new("/"),
            dir.path()
        ));
        assert!(!is_replica_of(
            &cmd(&["pbft", "client", "--config", "client-0.toml"]),
            &cwd,
            dir.path()
        ));
        assert!(!is_replica_of(
            &cmd(&["pbft", "replica", "--config", "/elsewhere/replica-0.toml"]),
            &cwd,
            dir.path()
        ));
    }
}
