//! Every benign file of the compose battery (`compose/benign/`: real-world stacks adapted from
//! public examples, and the platform's templates) deploys end to end through `hostd serve`
//! into a real tenant engine: `hostd ctl deploy` with the file's env file and included files
//! succeeds (start order, `service_healthy` dependencies), every service the file starts has
//! a running container, every healthcheck passes inside it, and deploying the next file into
//! the same tenant removes the previous file's containers.
//!
//! There is no registry here, so each public image a file names is replaced by a stand-in
//! built on `m8trx-test/standin` (tests/images/standin.Dockerfile) and loaded into the tenant
//! with `hostd ctl load`, as an air-gapped host would: it serves HTTP on the real image's
//! ports and answers the health tools the battery's checks call. What the test proves is
//! hostd's part — the translated containers start and run under the tenant's user
//! namespace, read-only roots, dropped capabilities, limits, networks, volumes, secrets and
//! configs — not the behaviour of the public images themselves.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{env, put_parameters, require_root, ssm_flags, tenant_docker, text, Cleanup, Daemon};

/// The ports each stand-in serves: the real image's own (its documented `EXPOSE`), keyed by
/// the image's repository. A title goes on the stand-in's command line for healthchecks that
/// look for the real process by name.
const STANDINS: &[(&str, &str, &str)] = &[
    ("caddy", "80 443", ""),
    ("clickhouse/clickhouse-server", "8123 9000", ""),
    ("docker.n8n.io/n8nio/n8n", "5678", ""),
    ("eclipse-temurin", "8080", ""),
    ("elasticsearch", "9200 9300", ""),
    ("example/app", "8080", ""),
    ("frontend-image", "80", ""),
    ("backend-image", "80", ""),
    ("ghcr.io/example/agent-app", "8080", ""),
    ("ghcr.io/example/api", "8080", ""),
    ("ghcr.io/m8trxinfra/paperclip", "3100", ""),
    ("ghcr.io/mastodon/mastodon", "3000", "sidekiq 6"),
    ("ghcr.io/mastodon/mastodon-streaming", "4000", ""),
    ("ghcr.io/plausible/community-edition", "8000", ""),
    ("ghcr.io/umami-software/umami", "3000", ""),
    ("ghost", "2368", ""),
    ("gitea/gitea", "3000 22", ""),
    ("golang", "80", ""),
    ("grafana/grafana", "3000", ""),
    ("kibana", "5601", ""),
    ("louislam/uptime-kuma", "3001", ""),
    ("mariadb", "3306", ""),
    ("mongo", "27017", ""),
    ("mysql", "3306 33060", ""),
    ("nextcloud", "80", ""),
    ("nginx", "80", ""),
    ("node", "3000", ""),
    ("phpmyadmin", "80", ""),
    ("postgres", "5432", ""),
    ("prom/prometheus", "9090", ""),
    ("python", "8000", ""),
    ("quay.io/minio/minio", "9000 9001", ""),
    ("rabbitmq", "5672 15672", ""),
    ("redis", "6379", ""),
    ("traefik", "80", ""),
    ("traefik/whoami", "80", ""),
    ("vaultwarden/server", "80", ""),
    ("wordpress", "80", ""),
];

/// Tenants deploying files side by side (healthchecks wait, they do not compute).
const WORKERS: usize = 4;

/// One benign file with what `hostd ctl check` and `deploy` need beside it.
struct Case {
    path: PathBuf,
    template: String,
    args: Vec<String>,
}

impl Case {
    fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

fn benign() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose/benign");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The same headers `compose_policy.rs` reads: template, env file, included files.
        let mut case = Case {
            path: path.clone(),
            template: "baseline".into(),
            args: Vec::new(),
        };
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some(t) = line.strip_prefix("# template: ") {
                case.template = t.trim().into();
            }
            if let Some(e) = line.strip_prefix("# env-file: ") {
                case.args.push("--env-file".into());
                case.args
                    .push(path.with_file_name(e.trim()).display().to_string());
            }
            if let Some(i) = line.strip_prefix("# include: ") {
                case.args.push("--include".into());
                case.args.push(i.trim().into());
            }
        }
        out.push(case);
    }
    out.sort_by_key(Case::name);
    out
}

/// The plan `hostd ctl check` prints for an accepted file: service → container request.
fn plan(case: &Case) -> BTreeMap<String, Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(["ctl", "--json", "check"])
        .arg(&case.path)
        .args(["--template", &case.template])
        .args(&case.args)
        .current_dir(case.path.parent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", case.name(), text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_owned(),
                s["container"].clone(),
            )
        })
        .collect()
}

/// The repository of an image reference (`ghcr.io/x/y:1` → `ghcr.io/x/y`).
fn repository(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

/// Builds a stand-in for every image in `images` on the host's engine and saves them all
/// in one tarball (they share the base's layers).
fn standins(images: &BTreeSet<String>, dir: &Path) -> PathBuf {
    let base = env("M8TRX_IMAGE_STANDIN");
    let mut by_kind: BTreeMap<(&str, &str), Vec<&String>> = BTreeMap::new();
    for image in images {
        let (_, ports, title) = STANDINS
            .iter()
            .find(|(repo, _, _)| *repo == repository(image))
            .unwrap_or_else(|| {
                panic!("no stand-in for {image}: add its repository and ports to STANDINS")
            });
        by_kind.entry((ports, title)).or_default().push(image);
    }
    for ((ports, title), tags) in &by_kind {
        let dockerfile =
            format!("FROM {base}\nENV STANDIN_PORTS=\"{ports}\" STANDIN_TITLE=\"{title}\"\n");
        let mut cmd = Command::new("docker");
        cmd.args(["build", "-q"]);
        for t in tags {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dockerfile.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker build {tags:?}: {}",
            text(&out)
        );
    }
    let tar = dir.join("standins.tar");
    let out = Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .args(images)
        .output()
        .unwrap();
    assert!(out.status.success(), "docker save: {}", text(&out));
    tar
}

/// A tenant for one worker. Its ingress names a service no benign file has: the files were
/// not written for one tenant's ingress (a `web` on port 3000 is not a `web` on 8080), and
/// the ingress handover is `proxy_wiring.rs`'s subject.
fn write_spec(dir: &Path, name: &str, template: &str) -> PathBuf {
    let spec = dir.join(format!("{name}.yml"));
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: {name}\ntemplate: {template}\nsubdomains: [{name}.m8trx.test]\n\
             limits: {{ cpu: 1, memory: 2Gi, pids: 1024, disk: 2Gi }}\n\
             ingress: {{ service: m8trx-test-edge, port: 8443 }}\n\
             volume: {{ loop_image: {img} }}\n\
             role: {{ arn: \"arn:aws:iam::123456789012:role/m8trx-customer\", external_id: ext-1 }}\n",
            img = dir.join(format!("{name}.img")).display()
        ),
    )
    .unwrap();
    spec
}

/// `docker inspect` of one container of the tenant's engine.
fn inspect(tenant: &str, container: &str) -> Value {
    let o = tenant_docker(tenant, &["inspect", container]);
    assert!(o.status.success(), "inspect {container}: {}", text(&o));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()[0].clone()
}

/// The names of every container of the tenant's project.
fn containers(tenant: &str) -> BTreeSet<String> {
    let o = tenant_docker(
        tenant,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project=m8trx-{tenant}"),
            "--format",
            "{{.Names}}",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The highest open files hard limit the file's services ask for.
fn nofile_wanted(plan: &BTreeMap<String, Value>) -> u64 {
    plan.values()
        .flat_map(|r| {
            r["HostConfig"]["Ulimits"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|u| u["Name"] == "nofile")
        .filter_map(|u| u["Hard"].as_u64())
        .max()
        .unwrap_or(0)
}

/// How a file fared.
enum Outcome {
    /// Deployed, every container running and healthy, in this time.
    Ran(Duration),
    /// Refused as it must be on this host: it asks for more open files than a hostd
    /// without CAP_SYS_RESOURCE can grant (a sandboxed development machine).
    BeyondHost(u64),
}

/// Deploys `case` into `tenant` and checks what runs.
fn deploy_and_check(d: &Daemon, tenant: &str, case: &Case) -> Outcome {
    let name = case.name();
    let started = Instant::now();
    let plan = plan(case);
    let ceiling = hostd::engine::container_nofile_ceiling();
    let mut args = vec!["deploy", tenant, "-f", case.path.to_str().unwrap()];
    args.extend(case.args.iter().map(String::as_str));
    // `--include` paths are relative to the compose file, as in `ctl check`.
    let out = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .arg("ctl")
        .arg("--socket")
        .arg(&d.socket)
        .args(&args)
        .current_dir(case.path.parent().unwrap())
        .output()
        .unwrap();
    let wanted = nofile_wanted(&plan);
    if wanted > ceiling {
        assert_eq!(out.status.code(), Some(6), "{name}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("ulimits.nofile`: hard {wanted} is above what this host can give a container ({ceiling}")),
            "{name}: refused without naming the host's limit: {}",
            text(&out)
        );
        return Outcome::BeyondHost(wanted);
    }
    assert!(
        out.status.success(),
        "{name}: deploy failed:\n{}",
        text(&out)
    );

    // Exactly the file's services have containers: the previous file's are gone.
    let want: BTreeSet<String> = plan
        .keys()
        .map(|s| format!("m8trx-{tenant}-{s}-1"))
        .collect();
    assert_eq!(containers(tenant), want, "{name}: the project's containers");

    // Every container runs, and every healthcheck passes, within its own schedule.
    for (service, request) in &plan {
        let container = format!("m8trx-{tenant}-{service}-1");
        let health = &request["Healthcheck"];
        let checked = health["Test"]
            .as_array()
            .is_some_and(|t| t.first().and_then(Value::as_str) != Some("NONE"));
        let nanos =
            |k: &str, default: u64| health[k].as_u64().filter(|n| *n > 0).unwrap_or(default);
        let interval = nanos("Interval", 30_000_000_000);
        let retries = health["Retries"].as_u64().filter(|n| *n > 0).unwrap_or(3);
        let wait = Duration::from_nanos(nanos("StartPeriod", 0) + interval * (retries + 1))
            + Duration::from_secs(10);
        let until = Instant::now() + wait;
        loop {
            let state = inspect(tenant, &container)["State"].clone();
            assert_eq!(
                state["Status"],
                "running",
                "{name}: {container} is not running: {state}\n{}",
                text(&tenant_docker(tenant, &["logs", &container]))
            );
            let status = state["Health"]["Status"].as_str().unwrap_or("none");
            if !checked || status == "healthy" {
                break;
            }
            assert!(
                status != "unhealthy" && Instant::now() < until,
                "{name}: {container} did not become healthy within {wait:?}: {state}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Outcome::Ran(started.elapsed())
}

#[test]
fn every_benign_file_deploys_and_runs() {
    require_root();
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-benign-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = benign();
    assert!(
        cases.len() >= 25,
        "at least 25 benign files, has {}",
        cases.len()
    );

    let images: BTreeSet<String> = cases
        .iter()
        .flat_map(|c| plan(c).into_values())
        .map(|r| r["Image"].as_str().unwrap().to_owned())
        .collect();
    let tar = standins(&images, &dir);

    // One tenant per worker and template; each deploys its share of the files in turn.
    let mut shares: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let tenant = format!("bn{}{}-{id}", &case.template[..1], i % WORKERS);
        shares.entry(tenant).or_default().push(case);
    }
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: shares.keys().cloned().collect(),
    };
    // Files may mount the tenant's platform parameters (external secrets).
    for tenant in shares.keys() {
        put_parameters(tenant, "benign");
    }
    let flags = ssm_flags();
    let d = Daemon::start_with(&dir, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    let timings = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (tenant, share) in &shares {
            let (d, dir, tar, timings) = (&d, &dir, &tar, &timings);
            s.spawn(move || {
                let spec = write_spec(dir, tenant, &share[0].template);
                d.ok(&["create", "-f", spec.to_str().unwrap()]);
                d.ok(&["load", tenant, "-i", tar.to_str().unwrap()]);
                for case in share {
                    let took = deploy_and_check(d, tenant, case);
                    timings.lock().unwrap().push((case.name(), took));
                }
                d.ok(&["destroy", tenant, "--wipe"]);
            });
        }
    });
    let timings = timings.into_inner().unwrap();
    for (file, outcome) in &timings {
        match outcome {
            Outcome::Ran(took) => {
                println!("benign deploy: {file} running and healthy in {took:.1?}")
            }
            Outcome::BeyondHost(n) => println!(
                "benign deploy: {file} refused here as it must be: it asks for {n} open files, \
                 this hostd (no CAP_SYS_RESOURCE) can grant {}",
                hostd::engine::container_nofile_ceiling()
            ),
        }
    }
    assert_eq!(timings.len(), cases.len());
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
