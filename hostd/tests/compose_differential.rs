//! Differential tests against the reference implementation: for every benign real-world file,
//! Debian's `docker-compose config` (1.29) resolves anchors, merge keys, interpolation with
//! the env file, and the short forms into its normalised file. hostd reads both the original
//! and the reference's normalised output and translates each into the engine requests it
//! would send; the two must agree field by field, for every key hostd accepts. A file the
//! reference cannot read says so in a `# differential: skip (reason)` header.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixture: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn benign() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose/benign");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    out.sort();
    out
}

fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// Every leaf of a JSON value by its path (`HostConfig.Memory`, `Env[0]`).
fn leaves(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{path}[{i}]"), out);
            }
        }
        other => {
            out.insert(path, other.clone());
        }
    }
}

/// The engine requests hostd would send for `compose` with `env`, by service.
fn plan(compose: &str, env: BTreeMap<String, String>, what: &str) -> BTreeMap<String, Value> {
    let bundle = hostd::compose::Bundle {
        compose: compose.to_owned(),
        env,
        ..Default::default()
    };
    let checked = hostd::check::check(&bundle, &hostd::spec::Template::Agent.default_limits());
    assert!(checked.accepted, "{what} is refused:\n{:#}", checked.report);
    checked.report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut c = s["container"].clone();
            // Env order is the file's order, which a normaliser may sort: compare it as a set.
            if let Some(env) = c.get_mut("Env").and_then(Value::as_array_mut) {
                env.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            (s["service"].as_str().unwrap().to_owned(), c)
        })
        .collect()
}

#[test]
fn hostd_translates_each_file_as_docker_compose_normalises_it() {
    let mut compared = 0;
    let mut fields = 0;
    for path in benign() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        if let Some(why) = header(&text, "# differential: skip") {
            println!("differential: {name} skipped {why}");
            continue;
        }
        let env = match header(&text, "# env-file:") {
            Some(e) => {
                let f = path.with_file_name(e);
                hostd::compose::parse_env_file(&std::fs::read_to_string(&f).unwrap()).unwrap()
            }
            None => BTreeMap::new(),
        };
        let mut cmd = Command::new("docker-compose");
        if let Some(e) = header(&text, "# env-file:") {
            cmd.arg("--env-file").arg(path.with_file_name(e));
        }
        let out = cmd
            .arg("-f")
            .arg(&path)
            .arg("config")
            .env_remove("COMPOSE_PROFILES")
            .output()
            .expect("docker-compose runs (scripts/test-env installs it)");
        assert!(
            out.status.success(),
            "{name}: docker-compose config refused it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let normalised = String::from_utf8(out.stdout).unwrap();
        let ours = plan(&text, env, &name);
        let theirs = plan(
            &normalised,
            BTreeMap::new(),
            &format!("{name} as docker-compose normalised it"),
        );
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}: the same services start"
        );
        let mut diffs = Vec::new();
        for (svc, body) in &ours {
            let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
            leaves(body, String::new(), &mut a);
            leaves(&theirs[svc], String::new(), &mut b);
            fields += a.len();
            for k in a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                if a.get(k) != b.get(k) {
                    diffs.push(format!(
                        "  {svc}.{k}: hostd {:?}, docker-compose {:?}",
                        a.get(k),
                        b.get(k)
                    ));
                }
            }
        }
        assert!(
            diffs.is_empty(),
            "{name}: hostd's reading differs from docker-compose's:\n{}\nnormalised:\n{normalised}",
            diffs.join("\n")
        );
        compared += 1;
    }
    println!("differential: {compared} files, {fields} engine-request fields agree with docker-compose config");
    assert!(
        compared >= 20,
        "at least 20 real files compared, {compared}"
    );
}
