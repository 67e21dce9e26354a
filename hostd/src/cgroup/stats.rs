//! What a tenant's envelope has used, as the kernel counts it: CPU (and throttled time),
//! memory (now and at its peak), OOM kills, processes, and block I/O — what hostd's metrics
//! export per tenant. v2 (and systemd's tree): `cpu.stat`, `memory.current`, `memory.peak`,
//! `memory.events`, `pids.current`, `io.stat`; v1: `cpuacct.usage`, `cpu.stat`,
//! `memory.usage_in_bytes`, `memory.max_usage_in_bytes`, `memory.oom_control` (summed over the
//! subtree), `pids.current`, `blkio.throttle.io_service*_recursive`.

use std::path::Path;

use super::{read, CgroupError, TenantCgroup, Version};

/// One reading of a tenant's envelope; counters are cumulative since the cgroup was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: u64,
    /// Time its processes were throttled by the CPU limit, in nanoseconds.
    pub throttled_ns: u64,
    /// Memory charged now, in bytes.
    pub memory: u64,
    /// The most memory ever charged, in bytes (0 where the kernel does not keep it).
    pub memory_peak: u64,
    /// Processes the kernel OOM-killed.
    pub oom_kills: u64,
    /// Processes and threads now.
    pub pids: u64,
    /// Bytes read from and written to block devices.
    pub io_read_bytes: u64,
    /// Bytes written.
    pub io_write_bytes: u64,
    /// Read operations.
    pub io_reads: u64,
    /// Write operations.
    pub io_writes: u64,
}

/// `key value` lines (`cpu.stat`, `memory.events`): the value of `key`, or 0.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A file that may be missing (an older kernel, a controller not enabled): its text or "".
fn optional(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// v2 `io.stat`: per device `rbytes= wbytes= rios= wios= …`, summed over devices.
fn v2_io(text: &str) -> (u64, u64, u64, u64) {
    let mut sum = (0, 0, 0, 0);
    for field in text.split_whitespace() {
        let Some((k, v)) = field.split_once('=') else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "rbytes" => sum.0 += v,
            "wbytes" => sum.1 += v,
            "rios" => sum.2 += v,
            "wios" => sum.3 += v,
            _ => {}
        }
    }
    sum
}

/// v1 `blkio.throttle.io_service*`: `MAJ:MIN Read N` / `MAJ:MIN Write N` lines, summed.
fn v1_io(text: &str) -> (u64, u64) {
    let mut sum = (0, 0);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => sum.0 += n,
            "Write" => sum.1 += n,
            _ => {}
        }
    }
    sum
}

impl TenantCgroup {
    /// Reads the envelope's usage. Blocking (file reads): call it off the async runtime.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let rel = self.rel();
        match self.fs.version {
            Version::V2 => {
                let dir = self.fs.root.join(&rel);
                let cpu = read(&dir.join("cpu.stat"))?;
                let (rb, wb, ri, wi) = v2_io(&optional(&dir.join("io.stat")));
                Ok(Stats {
                    cpu_ns: keyed(&cpu, "usage_usec").saturating_mul(1000),
                    throttled_ns: keyed(&cpu, "throttled_usec").saturating_mul(1000),
                    memory: super::parse_u64(&dir.join("memory.current"))?,
                    memory_peak: optional(&dir.join("memory.peak"))
                        .trim()
                        .parse()
                        .unwrap_or(0),
                    oom_kills: keyed(&read(&dir.join("memory.events"))?, "oom_kill"),
                    pids: super::parse_u64(&dir.join("pids.current"))?,
                    io_read_bytes: rb,
                    io_write_bytes: wb,
                    io_reads: ri,
                    io_writes: wi,
                })
            }
            Version::V1 => {
                let dir = |c: &str| self.fs.v1_dir(c, &rel);
                let mem = dir("memory");
                let (rb, wb) = v1_io(&optional(
                    &dir("blkio").join("blkio.throttle.io_service_bytes_recursive"),
                ));
                let (ri, wi) = v1_io(&optional(
                    &dir("blkio").join("blkio.throttle.io_serviced_recursive"),
                ));
                Ok(Stats {
                    cpu_ns: optional(&dir("cpuacct").join("cpuacct.usage"))
                        .trim()
                        .parse()
                        .unwrap_or(0),
                    throttled_ns: keyed(&optional(&dir("cpu").join("cpu.stat")), "throttled_time"),
                    memory: super::parse_u64(&mem.join("memory.usage_in_bytes"))?,
                    memory_peak: optional(&mem.join("memory.max_usage_in_bytes"))
                        .trim()
                        .parse()
                        .unwrap_or(0),
                    oom_kills: self.oom_kills()?,
                    pids: super::parse_u64(&dir("pids").join("pids.current"))?,
                    io_read_bytes: rb,
                    io_write_bytes: wb,
                    io_reads: ri,
                    io_writes: wi,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, CgroupFs, Driver};
    use super::*;

    #[test]
    fn v2_counters_are_read_and_io_summed_over_devices() {
        let root = fixture::tempdir();
        let dir = root.join("m8trx/acme");
        std::fs::create_dir_all(&dir).unwrap();
        for (f, text) in [
            ("cpu.stat", "usage_usec 2500\nuser_usec 2000\nthrottled_usec 40\n"),
            ("memory.current", "1048576\n"),
            ("memory.peak", "2097152\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("pids.current", "7\n"),
            (
                "io.stat",
                "259:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n7:3 rbytes=5 wbytes=0 rios=1 wios=0\n",
            ),
        ] {
            std::fs::write(dir.join(f), text).unwrap();
        }
        let fs = CgroupFs::with_layout(&root, Version::V2, Driver::Cgroupfs);
        let s = fs.tenant("acme").stats().unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_ns: 2_500_000,
                throttled_ns: 40_000,
                memory: 1 << 20,
                memory_peak: 2 << 20,
                oom_kills: 1,
                pids: 7,
                io_read_bytes: 105,
                io_write_bytes: 200,
                io_reads: 2,
                io_writes: 2,
            }
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_blkio_lines_are_summed_by_operation() {
        let text =
            "259:0 Read 4096\n259:0 Write 8192\n259:0 Sync 0\n259:0 Total 12288\nTotal 12288\n";
        assert_eq!(v1_io(text), (4096, 8192));
    }
}
