//! A compose project deployed into a real tenant engine the way hostd does it: the file
//! passes the policy, networks and named volumes come first, `probe` starts only once
//! `web` is healthy, compose labels let compose tooling list the project, and hostd's
//! hardening holds inside the containers whatever the file asked for. The probe script is
//! written with `$$` escapes, as compose requires, and hostd interpolates them as compose does.
//! Translated keys reach the engine (deploy.resources, stop_grace_period, logging, tmpfs,
//! environment from the tenant's variables), a service of an inactive profile does not start
//! until its profile is activated, and a service dropped from the file loses its container.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, WaitContainerOptions};
use futures_util::StreamExt;
use hostd::cgroup::Limits;
use hostd::compose::{labels, Hardening, Project};
use hostd::engine::Engine;
use hostd::policy::check_compose;
use hostd::spec::Template;
use m8trx_e2e::tenant::{load_image, Tenant};
use m8trx_e2e::{docker, env, logs, parse_status, require_root};

const PROBE: &str = r#"
grep -E '^Cap(Eff|Bnd):' /proc/self/status
grep -E '^NoNewPrivs:' /proc/self/status
if touch /probe 2>/dev/null; then echo 'RootWrite: allowed'; else echo 'RootWrite: denied'; fi
cp /bin/busybox /tmp/bb 2>/dev/null; if /tmp/bb true 2>/dev/null; then echo 'TmpExec: allowed'; else echo 'TmpExec: denied'; fi
if echo kept > /data/x; then echo 'VolumeWrite: allowed'; else echo 'VolumeWrite: denied'; fi
echo "Web: $$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 web 8080 | tail -n 1)"
echo "Broker: $$AWS_CONTAINER_CREDENTIALS_FULL_URI"
"#;

#[tokio::test]
async fn compose_project_deploys_in_order_with_hardening_enforced() {
    require_root();
    let tenant = Tenant::provision(
        "cmp",
        &Limits {
            cpu: 1.0,
            memory: 512 << 20,
            pids: 512,
            io: vec![],
        },
    );
    let mut engine = Engine::start(tenant.cfg.clone()).unwrap();
    let d = engine.wait_ready(Duration::from_secs(60)).await.unwrap();
    let image = env("M8TRX_IMAGE_BUSYBOX");
    load_image(&docker().await, &d, &image).await;

    let compose = format!(
        r#"
services:
  probe:
    image: {image}
    depends_on: {{ web: {{ condition: service_healthy }} }}
    command: ["sh", "-c", {probe:?}]
    volumes: ["data:/data"]
    cap_add: [SETUID]
  web:
    image: {image}
    command: ["sh", "-c", "echo hello-from-web > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
    healthcheck: {{ test: ["CMD", "test", "-f", "/tmp/index.html"], interval: 1s, retries: 20 }}
    mem_limit: 8g
    pids_limit: 64
    deploy: {{ resources: {{ limits: {{ cpus: "0.5" }}, reservations: {{ memory: 16m }} }} }}
    stop_grace_period: 5s
    logging: {{ driver: json-file, options: {{ max-size: 1m, max-file: "2" }} }}
    tmpfs: ["/cache:size=8m"]
    environment: [GREETING]
  debug:
    image: {image}
    profiles: [debug]
    command: ["sleep", "600"]
volumes:
  data: {{}}
"#,
        probe = PROBE
    );
    // The file's 8g is within what the policy allows this tenant; hostd's hardening below
    // still caps every container at its own maximum (256m).
    let mut policy_limits = Template::Agent.default_limits();
    policy_limits.memory = hostd::spec::ByteSize(16 << 30);
    let vars = HashMap::from([("GREETING".to_owned(), "from-the-env-file".to_owned())]);
    let bundle = hostd::compose::Bundle {
        compose: compose.clone(),
        env: vars.clone().into_iter().collect(),
        ..Default::default()
    };
    let doc = check_compose(&bundle, &policy_limits).expect("the test project passes the policy");
    let project_name = tenant.cfg.name.compose_project();
    let hardening = Hardening {
        security_opt: vec!["no-new-privileges:true".into()],
        default_memory: 128 << 20,
        max_memory: 256 << 20,
        pids_limit: 128,
        env: vec!["AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials".into()],
        binds: vec![],
        files: Default::default(),
        labels: HashMap::from([(labels::TENANT.to_owned(), tenant.cfg.name.to_string())]),
        bridge_prefix: "m8t-9-".into(),
    };
    let project = Project::new(&d, project_name.clone(), hardening);
    let mut steps = Vec::new();
    let order = project
        .deploy(&doc, &vars, &mut |s| steps.push(s))
        .await
        .unwrap();
    assert_eq!(
        order,
        [
            format!("{project_name}-web-1"),
            format!("{project_name}-probe-1")
        ],
        "web before probe"
    );
    assert!(
        steps.iter().any(|s| s.contains("creating network")),
        "{steps:?}"
    );

    let probe = format!("{project_name}-probe-1");
    let _ = d
        .wait_container(&probe, None::<WaitContainerOptions>)
        .next()
        .await;
    let out = logs(&d, &probe).await;
    let seen = parse_status(&out);
    // cap_add: [SETUID] is in the allowlist: it, and nothing else, is left (bit 7).
    assert_eq!(
        seen["CapEff"], "0000000000000080",
        "only SETUID may remain:\n{out}"
    );
    assert_eq!(
        seen["CapBnd"], "0000000000000080",
        "the bounding set holds only SETUID:\n{out}"
    );
    assert_eq!(seen["NoNewPrivs"], "1", "{out}");
    assert_eq!(seen["RootWrite"], "denied", "{out}");
    assert_eq!(seen["TmpExec"], "denied", "/tmp must be noexec:\n{out}");
    assert_eq!(seen["VolumeWrite"], "allowed", "{out}");
    assert_eq!(
        seen["Web"], "hello-from-web",
        "services reach each other by name:\n{out}"
    );
    assert_eq!(seen["Broker"], "http://169.254.170.23/v1/credentials");

    let web = d
        .inspect_container(&format!("{project_name}-web-1"), None)
        .await
        .unwrap();
    let hc = web.host_config.unwrap();
    assert_eq!(
        hc.memory,
        Some(256 << 20),
        "8g capped at the tenant's maximum"
    );
    assert_eq!(hc.cap_drop, Some(vec!["ALL".into()]));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.pids_limit, Some(64), "pids_limit");
    assert_eq!(
        hc.nano_cpus,
        Some(500_000_000),
        "deploy.resources.limits.cpus"
    );
    assert_eq!(hc.memory_reservation, Some(16 << 20), "reservations.memory");
    let log = hc.log_config.unwrap();
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    assert_eq!(log.config.unwrap()["max-size"], "1m");
    let tmpfs = hc.tmpfs.unwrap();
    assert_eq!(tmpfs["/cache"], "rw,noexec,nosuid,nodev,size=8m");
    let cfg = web.config.unwrap();
    assert_eq!(cfg.stop_timeout, Some(5), "stop_grace_period");
    assert!(
        cfg.env
            .unwrap()
            .contains(&"GREETING=from-the-env-file".to_owned()),
        "an environment key without a value takes the tenant's variable"
    );
    assert!(
        d.inspect_container(&format!("{project_name}-debug-1"), None)
            .await
            .is_err(),
        "a service of an inactive profile does not start"
    );

    // What `docker compose -p <project> ps -a` asks the engine for.
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{}={project_name}", labels::PROJECT)],
    )]);
    let listed = d
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    let mut services: Vec<String> = listed
        .iter()
        .filter_map(|c| c.labels.as_ref()?.get(labels::SERVICE).cloned())
        .collect();
    services.sort();
    assert_eq!(services, ["probe", "web"]);

    // And the real compose tool (Debian's docker-compose) lists the project from the labels.
    let file = std::env::temp_dir().join(format!("{project_name}.yml"));
    std::fs::write(&file, &compose).unwrap();
    let ps = std::process::Command::new("docker-compose")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", tenant.cfg.socket().display()),
        )
        .args(["-p", &project_name, "-f"])
        .arg(&file)
        .args(["ps", "-a"])
        .output()
        .expect("docker-compose runs (scripts/test-env installs it)");
    let table = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.status.success(),
        "docker-compose ps: {table}{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    for svc in ["web", "probe"] {
        assert!(
            table.contains(&format!("{project_name}-{svc}-1")),
            "docker-compose ps lists {svc}:\n{table}"
        );
    }
    std::fs::remove_file(&file).unwrap();

    // A second deploy changes nothing that is running and unchanged.
    let mut again = Vec::new();
    project
        .deploy(&doc, &vars, &mut |s| again.push(s))
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .any(|s| s == &format!("{project_name}-web-1 up to date")),
        "{again:?}"
    );

    // The debug profile activated, and probe dropped from the file: debug starts, probe's
    // container is removed (hostd owns the project; an orphan would run unrecorded).
    let mut vars2 = vars.clone();
    vars2.insert("COMPOSE_PROFILES".into(), "debug".into());
    let mut doc2 = doc.clone();
    doc2.services.remove("probe");
    let mut third = Vec::new();
    let order = project
        .deploy(&doc2, &vars2, &mut |s| third.push(s))
        .await
        .unwrap();
    assert_eq!(
        order,
        [
            format!("{project_name}-debug-1"),
            format!("{project_name}-web-1")
        ]
    );
    assert!(
        d.inspect_container(&probe, None).await.is_err(),
        "the dropped service's container is removed: {third:?}"
    );

    drop(engine);
    let left = tenant.teardown().await;
    assert!(left.is_empty(), "destroy left: {left:?}");
}
