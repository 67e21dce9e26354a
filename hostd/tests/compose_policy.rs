//! The hostile-compose battery: every file under `compose/hostile/` must be refused with a
//! violation naming the service and key its `# expect:` header gives; every file under
//! `compose/allowed/` (the shapes of the platform's templates) must pass.
#![allow(clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::path::Path;

use hostd::policy::{check_compose, PolicyError};

fn files(dir: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compose")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_hostile_compose_file_is_refused_naming_service_and_key() {
    let battery = files("hostile");
    assert!(
        battery.len() >= 30,
        "the battery must hold at least 30 files, has {}",
        battery.len()
    );
    for (name, text) in battery {
        let header = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: missing `# expect: SERVICE KEY` header"));
        let (service, key) = header.split_once(' ').unwrap();
        let service = (service != "-").then_some(service);
        match check_compose(&text) {
            Err(PolicyError::Refused(v)) => {
                assert!(
                    v.iter().any(|x| x.service.as_deref() == service
                        && x.key == key
                        && !x.rule.is_empty()),
                    "{name}: expected a refusal of {service:?}/{key}, got:\n{v:#?}"
                );
                let message = PolicyError::Refused(v).to_string();
                assert!(
                    message.contains(key),
                    "{name}: message must name the key: {message}"
                );
            }
            other => panic!("{name}: hostile file was not refused: {other:?}"),
        }
    }
}

#[test]
fn template_shaped_stacks_are_allowed() {
    let allowed = files("allowed");
    assert!(!allowed.is_empty());
    for (name, text) in allowed {
        if let Err(e) = check_compose(&text) {
            panic!("{name} should pass the policy: {e}");
        }
    }
}
