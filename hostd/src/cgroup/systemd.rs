//! Tenant cgroups under systemd (cgroup v2, systemd as PID 1: the production host). systemd
//! is the only writer of its tree, so hostd never writes cgroupfs there: it asks systemd.
//!
//! ```text
//! m8trx.slice
//! └── m8trx-<name>.slice              MemoryMax = workload + engine allowance, TasksMax,
//!     │                               CPUQuota, IO{Read,Write}BandwidthMax
//!     ├── m8trx-engine-<name>.service the tenant's dockerd (a transient unit: systemd-run)
//!     └── m8trx-<name>-workload.slice MemoryMax, TasksMax of the customer's own limits;
//!         └── docker-<id>.scope       dockerd's --cgroup-parent (systemd cgroup driver)
//! ```
//!
//! Properties are set with `systemctl set-property --runtime`: they live in
//! `/run/systemd/system.control/` and vanish at reboot, when hostd's reconcile sets them again
//! from the tenant's record. The engine is a unit of its own, not a child of hostd.service,
//! so `systemctl stop hostd` leaves every tenant serving.

use std::path::PathBuf;
use std::process::Command;

use super::{CgroupError, Limits};

/// systemd's escaping of one unit-name component (`systemd-escape`): `-` separates slice
/// levels, so a tenant named `my-app` becomes `my\x2dapp` and stays one level.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The tenant's envelope slice.
pub fn envelope_slice(name: &str) -> String {
    format!("m8trx-{}.slice", escape(name))
}

/// The slice dockerd puts the tenant's containers in.
pub fn workload_slice(name: &str) -> String {
    format!("m8trx-{}-workload.slice", escape(name))
}

/// The transient service running the tenant's dockerd.
pub fn engine_unit(name: &str) -> String {
    format!("m8trx-engine-{}.service", escape(name))
}

/// The envelope's cgroup path below the hierarchy root.
pub fn envelope_rel(name: &str) -> PathBuf {
    PathBuf::from("m8trx.slice").join(envelope_slice(name))
}

/// The properties of the envelope slice, as `systemctl set-property` takes them.
pub fn envelope_properties(l: &Limits) -> Vec<String> {
    let mut p = vec![
        format!("MemoryMax={}", l.envelope_memory()),
        "MemorySwapMax=0".to_owned(),
        format!("TasksMax={}", l.envelope_pids()),
        format!("CPUQuota={}%", (l.cpu * 100.0).round().max(1.0)),
    ];
    for d in &l.io {
        let dev = format!("/dev/block/{}:{}", d.major, d.minor);
        if let Some(r) = d.read_bps {
            p.push(format!("IOReadBandwidthMax={dev} {r}"));
        }
        if let Some(w) = d.write_bps {
            p.push(format!("IOWriteBandwidthMax={dev} {w}"));
        }
    }
    p
}

/// The properties of the workload slice.
pub fn workload_properties(l: &Limits) -> Vec<String> {
    vec![
        format!("MemoryMax={}", l.memory),
        "MemorySwapMax=0".to_owned(),
        format!("TasksMax={}", l.pids),
    ]
}

fn systemctl(args: &[String], unit: &str, ok_codes: &[i32]) -> Result<(), CgroupError> {
    let shown = format!("systemctl {}", args.join(" "));
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| CgroupError::Systemd {
            command: shown.clone(),
            unit: unit.to_owned(),
            message: e.to_string(),
        })?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(c) if ok_codes.contains(&c) => Ok(()),
        _ => Err(CgroupError::Systemd {
            command: shown,
            unit: unit.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

/// Sets the envelope's and the workload's properties and starts the workload slice (which
/// starts the envelope), so both cgroups exist before the engine does; idempotent.
pub(super) fn apply(name: &str, l: &Limits) -> Result<(), CgroupError> {
    for (unit, props) in [
        (envelope_slice(name), envelope_properties(l)),
        (workload_slice(name), workload_properties(l)),
    ] {
        let mut args = vec![
            "set-property".to_owned(),
            "--runtime".to_owned(),
            unit.clone(),
        ];
        args.extend(props);
        systemctl(&args, &unit, &[])?;
    }
    let w = workload_slice(name);
    systemctl(&["start".to_owned(), w.clone()], &w, &[])
}

/// Stops the tenant's slices (nothing should run in them any more) and drops the runtime
/// properties; a tenant already gone is not an error.
pub(super) fn remove(name: &str) -> Result<(), CgroupError> {
    let (env, work) = (envelope_slice(name), workload_slice(name));
    // 5: "unit not loaded" — already gone.
    systemctl(&["stop".to_owned(), env.clone()], &env, &[5])?;
    systemctl(
        &["revert".to_owned(), work.clone(), env.clone()],
        &env,
        &[5],
    )
}

/// The command that starts `program args` as the tenant's engine unit inside its envelope,
/// with output appended to `log`. systemd-run returns once the unit has started.
pub fn engine_command(
    name: &str,
    program: &std::path::Path,
    args: &[String],
    log: &std::path::Path,
) -> Command {
    let mut c = Command::new("systemd-run");
    c.arg(format!("--unit={}", engine_unit(name)))
        .arg(format!("--slice={}", envelope_slice(name)))
        .args(["--collect", "--quiet"])
        .arg(format!(
            "--property=StandardOutput=append:{}",
            log.display()
        ))
        .arg(format!("--property=StandardError=append:{}", log.display()))
        // The envelope bounds the engine; no per-service default on top of it.
        .args([
            "--property=TasksMax=infinity",
            "--property=OOMScoreAdjust=-500",
        ])
        .arg(format!(
            "--property=LimitNOFILE={}",
            crate::engine::ENGINE_NOFILE
        ));
    if let Ok(path) = std::env::var("PATH") {
        c.arg(format!("--setenv=PATH={path}"));
    }
    c.arg("--").arg(program).args(args);
    c
}

/// The main process of a unit, if it runs.
pub fn main_pid(unit: &str) -> Option<u32> {
    let out = Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", unit])
        .output()
        .ok()?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (pid != 0).then_some(pid)
}

/// Clears a failed engine unit so its name can be started again (errors ignored: a unit
/// that is not failed needs nothing).
pub fn reset_failed(unit: &str) {
    let _ = Command::new("systemctl")
        .args(["reset-failed", unit])
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::IoLimit;

    #[test]
    fn names_escape_dashes_so_each_tenant_is_one_slice_level() {
        assert_eq!(escape("acme"), "acme");
        assert_eq!(escape("my-app"), "my\\x2dapp");
        assert_eq!(envelope_slice("my-app"), "m8trx-my\\x2dapp.slice");
        assert_eq!(workload_slice("acme"), "m8trx-acme-workload.slice");
        assert_eq!(engine_unit("acme"), "m8trx-engine-acme.service");
        // "my" and "my-app" must not nest: their envelopes are siblings below m8trx.slice.
        assert_eq!(
            envelope_rel("my-app"),
            PathBuf::from("m8trx.slice/m8trx-my\\x2dapp.slice")
        );
    }

    #[test]
    fn properties_carry_every_limit() {
        let l = Limits {
            cpu: 0.5,
            memory: 128 << 20,
            pids: 100,
            io: vec![IoLimit {
                major: 254,
                minor: 16,
                read_bps: Some(10 << 20),
                write_bps: Some(5 << 20),
            }],
        };
        let e = envelope_properties(&l);
        assert_eq!(
            e,
            vec![
                format!(
                    "MemoryMax={}",
                    (128u64 << 20) + crate::cgroup::ENGINE_MEMORY_ALLOWANCE
                ),
                "MemorySwapMax=0".to_owned(),
                format!("TasksMax={}", 100 + crate::cgroup::ENGINE_PIDS_ALLOWANCE),
                "CPUQuota=50%".to_owned(),
                format!("IOReadBandwidthMax=/dev/block/254:16 {}", 10u64 << 20),
                format!("IOWriteBandwidthMax=/dev/block/254:16 {}", 5u64 << 20),
            ]
        );
        assert_eq!(
            workload_properties(&l),
            vec![
                format!("MemoryMax={}", 128u64 << 20),
                "MemorySwapMax=0".to_owned(),
                "TasksMax=100".to_owned()
            ]
        );
    }

    #[test]
    fn engine_runs_as_a_unit_in_the_envelope() {
        let c = engine_command(
            "acme",
            "/usr/sbin/dockerd".as_ref(),
            &["--live-restore".to_owned()],
            "/var/log/m8trx/engines/acme.log".as_ref(),
        );
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(c.get_program(), "systemd-run");
        for want in [
            "--unit=m8trx-engine-acme.service",
            "--slice=m8trx-acme.slice",
            "--collect",
            "--property=StandardOutput=append:/var/log/m8trx/engines/acme.log",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
        let sep = args.iter().position(|a| a == "--").unwrap_or(usize::MAX);
        assert_eq!(args[sep + 1..], ["/usr/sbin/dockerd", "--live-restore"]);
    }
}
