//! The compose battery, through `hostd ctl check` (the check a deploy runs, offline): every
//! file under `compose/hostile/` must be refused with a violation naming the service and key
//! its `# expect: SERVICE KEY` header gives (`-` for a top-level key), and the message must name
//! the key; every file under `compose/benign/` (real-world stacks adapted from public examples
//! and the platform's templates) must be accepted, with a plan for each of its services.
#![allow(clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compose")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    out.sort();
    out
}

/// `hostd ctl check --json FILE [--template T] [--env-file F]`: (exit code, report).
fn check(file: &Path) -> (i32, Value) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hostd"));
    cmd.args(["ctl", "--json", "check"]).arg(file);
    // A `# template: agent` line picks the template; `# env-file: NAME` a file beside it;
    // `# include: PATH` a file or directory sent with the deploy.
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(t) = line.strip_prefix("# template: ") {
            cmd.args(["--template", t.trim()]);
        }
        if let Some(e) = line.strip_prefix("# env-file: ") {
            cmd.arg("--env-file").arg(file.with_file_name(e.trim()));
        }
        if let Some(i) = line.strip_prefix("# include: ") {
            cmd.args(["--include", i.trim()]);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{}: ctl check printed no JSON ({e}): {stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

#[test]
fn every_hostile_compose_file_is_refused_naming_service_and_key() {
    let battery = files("hostile");
    assert!(
        battery.len() >= 100,
        "the battery must hold at least 100 files, has {}",
        battery.len()
    );
    for path in battery {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let header = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: missing `# expect: SERVICE KEY` header"));
        let (service, key) = header.split_once(' ').unwrap();
        let service = (service != "-").then_some(service);
        let (code, report) = check(&path);
        assert_eq!(code, 1, "{name}: a refusal exits 1: {report}");
        assert_eq!(report["accepted"], false, "{name}: {report}");
        let violations = report["violations"].as_array().unwrap();
        assert!(
            violations.iter().any(|v| v["service"].as_str() == service
                && v["key"].as_str() == Some(key)
                && v["rule"].as_str().is_some_and(|r| !r.is_empty())),
            "{name}: expected a refusal of {service:?}/{key}, got:\n{report:#}"
        );
    }
}

#[test]
fn benign_real_world_stacks_are_accepted_with_a_plan() {
    let benign = files("benign");
    assert!(
        benign.len() >= 25,
        "at least 25 benign files, has {}",
        benign.len()
    );
    for path in benign {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (code, report) = check(&path);
        assert_eq!(code, 0, "{name} should be accepted:\n{report:#}");
        let services = report["services"].as_array().unwrap();
        assert!(!services.is_empty(), "{name}: {report}");
        for s in services {
            let hc = &s["container"]["HostConfig"];
            assert_eq!(hc["ReadonlyRootfs"], true, "{name}: {s}");
            assert_eq!(hc["CapDrop"][0], "ALL", "{name}: {s}");
            assert!(hc["Memory"].as_i64().is_some_and(|m| m > 0), "{name}: {s}");
        }
    }
}

#[test]
fn check_prints_every_violation_in_text_too() {
    let dir = std::env::temp_dir().join(format!("m8trx-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.yml");
    std::fs::write(
        &f,
        "services:\n  web:\n    image: x\n    privileged: true\n    cap_add: ALL\n    ports: ['80:80']\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(["ctl", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in ["`privileged`", "`cap_add`", "`ports`"] {
        assert!(text.contains(key), "{key} missing:\n{text}");
    }
    std::fs::write(&f, "services:\n  web:\n    image: ${IMG}\n").unwrap();
    let env = dir.join("vars.env");
    std::fs::write(&env, "IMG=nginx:1.27\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(["ctl", "check"])
        .arg(&f)
        .arg("--env-file")
        .arg(&env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("image nginx:1.27"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
