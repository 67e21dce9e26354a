//! `kill -9` of a process provisioning or destroying a tenant, between every pair of
//! lifecycle steps, then `reconcile` as a restarted hostd would run it: the tenant
//! converges to what was asked (provisioned, engine answering; or destroyed with nothing
//! left: user, id ranges, cgroup, rules, engine, mounts, socket). Runs itself as the
//! child (`--child create|destroy STATE_DIR`), hence `harness = false`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hostd::engine::Engine;
use hostd::host::{Host, HostConfig};
use hostd::network::{Firewall, HostServices};
use hostd::record::Desired;
use hostd::spec::TenantSpec;
use hostd::steps::STEPS;
use m8trx_e2e::{env, require_root, tenant::leftovers};

fn name() -> String {
    format!(
        "lc-{}",
        std::env::var("M8TRX_LC_ID").unwrap_or_else(|_| std::process::id().to_string())
    )
}

fn host(state: &Path) -> Host {
    Host::open(HostConfig {
        state_dir: state.to_path_buf(),
        tenants_root: "/var/lib/m8trx-e2e/lifecycle".into(),
        run_root: "/run/m8trx-e2e/engines".into(),
        log_dir: PathBuf::from(env("M8TRX_TEST_HOME")).join("log"),
        containerd: env("M8TRX_CONTAINERD_SOCKET").into(),
        dockerd: "dockerd".into(),
        etc: "/etc".into(),
        profiles_dir: state.join("profiles"),
        services: HostServices::default(),
        broker_admin: None,
        proxy_admin: None,
        token_dir: state.join("tokens"),
        token_ttl: std::time::Duration::from_secs(3600),
        firewall: Firewall::default(),
    })
    .unwrap()
}

fn spec() -> TenantSpec {
    TenantSpec::parse(&format!(
        r#"
version: 1
name: {}
template: baseline
subdomains: [lc.m8trx.test]
limits: {{ cpu: 0.5, memory: 256Mi, pids: 256, disk: 1Gi }}
volume: {{ loop_image: /var/lib/m8trx-e2e/{0}.img }}
role: {{ arn: "arn:aws:iam::123456789012:role/m8trx-customer-lc", external_id: ext-lc }}
"#,
        name()
    ))
    .unwrap()
}

/// The child: runs one lifecycle command, printing each progress line as it happens.
fn child(cmd: &str, state: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = host(state);
    let mut print = |l: String| println!("{l}");
    rt.block_on(async {
        match cmd {
            "create" => h.create(spec(), &mut print).await.map(|_| ()),
            _ => h.destroy(&name(), true, &mut print).await,
        }
    })
    .unwrap();
}

/// Runs the child and kills it with SIGKILL as soon as it prints its `n`-th step line.
fn run_and_kill_at(cmd: &str, state: &Path, n: usize) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--child", cmd, state.to_str().unwrap()])
        .env("M8TRX_LC_ID", std::process::id().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = 0;
    for line in BufReader::new(c.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains(": ") && !line.contains("recorded") {
            seen += 1;
            if seen == n {
                c.kill().unwrap(); // SIGKILL, between steps
                break;
            }
        }
    }
    c.wait().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], Path::new(&args[i + 2]));
        return;
    }
    require_root();
    let state = std::env::temp_dir().join(format!("m8trx-lc-state-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = host(&state);
    let mut quiet = |_l: String| {};

    // Create, killed after each step in turn; every run resumes where the last one died.
    for n in 1..=STEPS.len() {
        run_and_kill_at("create", &state, n + 1);
    }
    let errors = rt.block_on(h.reconcile(&mut quiet));
    assert!(
        errors.is_empty(),
        "reconcile after interrupted creates: {errors:?}"
    );
    let rec = h.record(&name()).unwrap().expect("record kept");
    assert_eq!(rec.desired, Desired::Present);
    assert_eq!(
        rec.done.len(),
        STEPS.len(),
        "every step done: {:?}",
        rec.done
    );
    let cfg = h.engine_config(&rec);
    let engine = Engine::adopt(cfg.clone()).expect("engine running after reconcile");
    assert!(rt.block_on(engine.connect()).is_some(), "engine answers");
    assert!(
        state
            .join(format!("profiles/apparmor/m8trx-tenant-{}", name()))
            .exists(),
        "profiles installed"
    );

    // Every step's check agrees that its effect is in place.
    assert_eq!(
        rt.block_on(h.drift(&rec)),
        vec![],
        "steps not in place after reconcile"
    );

    // A second reconcile (another restart) changes nothing: the same engine process.
    assert!(rt.block_on(h.reconcile(&mut quiet)).is_empty());
    assert_eq!(
        Engine::adopt(cfg.clone()).unwrap().pid(),
        engine.pid(),
        "engine adopted, not restarted"
    );

    // Destroy, killed after each undo step in turn, then reconcile finishes it.
    for n in 1..=STEPS.len() {
        run_and_kill_at("destroy", &state, n + 1);
    }
    let errors = rt.block_on(h.reconcile(&mut quiet));
    assert!(
        errors.is_empty(),
        "reconcile after interrupted destroys: {errors:?}"
    );
    assert!(
        h.record(&name()).unwrap().is_none(),
        "record deleted once destroyed"
    );
    let mut left = leftovers(&cfg, &spec().name.host_user());
    for table in ["filter", "nat"] {
        for rule in Firewall::default().rules(table).unwrap() {
            if rule.contains(&format!("M8T-{}-", rec.slot)) {
                left.push(format!("iptables {table}: {rule}"));
            }
        }
    }
    let mp = format!("/var/lib/m8trx-e2e/lifecycle/{}", name());
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.as_str()))
    {
        left.push(format!("mount {mp}"));
    }
    let image = format!("/var/lib/m8trx-e2e/{}.img", name());
    if std::path::Path::new(&image).exists() {
        left.push("volume image (destroy --wipe deletes it)".into());
    }
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    if String::from_utf8_lossy(&loops.stdout).contains(&image) {
        left.push("loop device".into());
    }
    let profile = state.join(format!("profiles/apparmor/m8trx-tenant-{}", name()));
    if profile.exists() {
        left.push(format!("AppArmor profile {}", profile.display()));
    }
    assert!(left.is_empty(), "destroy left: {left:?}");
    std::fs::remove_dir_all(&state).unwrap();
    println!("hostd_lifecycle: killed between every pair of steps of create and destroy; converged, nothing left");
    println!("1 passed, 0 failed");
}
