//! A tenant engine as hostd starts it: its own host user and subordinate id range, its
//! cgroup as parent, the shared containerd. Container root is the tenant's first remapped
//! uid (read on the host), the container is charged to the tenant cgroup, the engine is
//! re-adopted from its pidfile, and after a `kill -9` of dockerd a restart finds the
//! container still running (live-restore); destroy then leaves nothing. Prints the
//! engine's resident memory.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ImportImageOptionsBuilder};
use futures_util::StreamExt;
use hostd::cgroup::{CgroupFs, Limits};
use hostd::engine::{self, Engine, EngineConfig};
use hostd::ids;
use m8trx_e2e::{docker, env, parse_status, require_root};
use m8trx_spec::CustomerName;

/// Removes everything the test made, even after a failed assertion.
struct Tenant {
    cfg: EngineConfig,
    user: String,
}

impl Tenant {
    /// What destroy must do; returns what is left, which must be nothing.
    async fn teardown(&self) -> Vec<String> {
        engine::purge(&self.cfg, true).await.unwrap();
        if let Ok(fs) = CgroupFs::detect() {
            fs.tenant(self.cfg.name.as_str()).remove().unwrap();
        }
        ids::remove_range("/etc/subuid".as_ref(), &self.user).unwrap();
        ids::remove_range("/etc/subgid".as_ref(), &self.user).unwrap();
        ids::remove_user(&self.user).unwrap();
        leftovers(&self.cfg, &self.user)
    }
}

fn leftovers(cfg: &EngineConfig, user: &str) -> Vec<String> {
    let mut left = Vec::new();
    for m in engine::mounts_below(&cfg.data_root)
        .into_iter()
        .chain(engine::mounts_below(&cfg.exec_root()))
    {
        left.push(format!("mount {}", m.display()));
    }
    for p in [cfg.data_root.clone(), cfg.exec_root(), cfg.socket()] {
        if p.exists() {
            left.push(format!("path {}", p.display()));
        }
    }
    let ns = Command::new("ctr")
        .args([
            "--address",
            &env("M8TRX_CONTAINERD_SOCKET"),
            "namespaces",
            "ls",
            "-q",
        ])
        .output()
        .unwrap();
    for n in String::from_utf8_lossy(&ns.stdout).split_whitespace() {
        if n.starts_with(&cfg.containerd_namespace()) {
            left.push(format!("containerd namespace {n}"));
        }
    }
    if ids::user_exists(user).unwrap() {
        left.push(format!("user {user}"));
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        if std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{user}:")))
        {
            left.push(format!("{f} line"));
        }
    }
    if CgroupFs::detect()
        .unwrap()
        .tenant(cfg.name.as_str())
        .exists()
    {
        left.push("cgroup".into());
    }
    if Engine::adopt(cfg.clone()).is_some() {
        left.push("engine process".into());
    }
    left
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The assertion failed mid-way: clean up on a fresh runtime, best effort.
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let cfg = self.cfg.clone();
                let _ = rt.block_on(engine::purge(&cfg, true));
            }
            if let Ok(fs) = CgroupFs::detect() {
                let _ = fs.tenant(self.cfg.name.as_str()).remove();
            }
            let _ = ids::remove_range("/etc/subuid".as_ref(), &self.user);
            let _ = ids::remove_range("/etc/subgid".as_ref(), &self.user);
            let _ = ids::remove_user(&self.user);
        }
    }
}

#[tokio::test]
async fn tenant_engine_remaps_root_charges_its_cgroup_and_survives_restart() {
    require_root();
    let name = CustomerName::parse(&format!("e2e-{}", std::process::id())).unwrap();
    let user = name.host_user();
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let slot = ids::free_slot(&[], &[&subuid, &subgid]).unwrap();
    let base = ids::range_base(slot);
    let cfg = EngineConfig {
        name: name.clone(),
        data_root: PathBuf::from(format!("/var/lib/m8trx-e2e/engines/{name}")),
        run_root: PathBuf::from("/run/m8trx-e2e/engines"),
        containerd: env("M8TRX_CONTAINERD_SOCKET").into(),
        cgroup_parent: format!("/m8trx/{name}"),
        subnet: ids::subnet(slot),
        seccomp_profile: None,
        log: PathBuf::from(env("M8TRX_TEST_HOME")).join(format!("log/engine-{name}.log")),
        dockerd: "dockerd".into(),
    };
    let tenant = Tenant {
        cfg: cfg.clone(),
        user: user.clone(),
    };

    ids::ensure_user(&user).unwrap();
    ids::ensure_range("/etc/subuid".as_ref(), &user, base).unwrap();
    ids::ensure_range("/etc/subgid".as_ref(), &user, base).unwrap();
    let cg = CgroupFs::detect().unwrap().tenant(name.as_str());
    cg.apply(&Limits {
        cpu: 1.0,
        memory: 512 << 20,
        pids: 512,
        io: vec![],
    })
    .unwrap();
    assert_eq!(cg.docker_parent(), cfg.cgroup_parent);

    let mut engine = Engine::start(cfg.clone()).unwrap();
    let d = engine.wait_ready(Duration::from_secs(60)).await.unwrap();

    // No registry: the image arrives as a tarball, as on an air-gapped host.
    let image = env("M8TRX_IMAGE_BUSYBOX");
    let main = docker().await;
    let mut load = d.import_image_stream(
        ImportImageOptionsBuilder::default().build(),
        main.export_image(&image),
        None,
    );
    while let Some(step) = load.next().await {
        step.unwrap();
    }
    let created = d
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name("probe")
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(image),
                cmd: Some(vec!["sleep".into(), "300".into()]),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    d.start_container(&created.id, None).await.unwrap();
    let pid = d
        .inspect_container(&created.id, None)
        .await
        .unwrap()
        .state
        .unwrap()
        .pid
        .unwrap();

    let status = parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap());
    let host_uid: u64 = status["Uid"]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        host_uid, base,
        "container root must be {user}'s first subordinate uid"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem_line = cgroups
        .lines()
        .find(|l| l.contains(":memory:") || l.starts_with("0::"))
        .unwrap();
    assert!(
        mem_line.contains(&format!("/m8trx/{name}/")),
        "container not in the tenant cgroup: {cgroups}"
    );
    assert!(
        cg.pids_current().unwrap() >= 1,
        "the tenant cgroup must count the container's processes"
    );

    let rss = engine.rss_bytes().unwrap();
    println!(
        "tenant engine RSS with one container: {:.1} MiB",
        rss as f64 / (1 << 20) as f64
    );

    // A new hostd finds the engine from its pidfile.
    let adopted = Engine::adopt(cfg.clone()).expect("engine re-adopted from its pidfile");
    assert_eq!(adopted.pid(), engine.pid());

    // dockerd dies hard; with live-restore the container keeps running, and a restarted
    // engine takes it back.
    Command::new("kill")
        .args(["-KILL", &engine.pid().to_string()])
        .status()
        .unwrap();
    for _ in 0..50 {
        if !engine.is_alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!engine.is_alive(), "dockerd must be gone after kill -9");
    assert!(
        Engine::adopt(cfg.clone()).is_none(),
        "a dead engine must not be adopted"
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container survives its engine (live-restore)"
    );
    let mut engine = Engine::start(cfg.clone()).unwrap();
    let d = engine.wait_ready(Duration::from_secs(60)).await.unwrap();
    let state = d
        .inspect_container(&created.id, None)
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!(
        state.running,
        Some(true),
        "restarted engine must find the container running"
    );
    assert_eq!(state.pid, Some(pid), "the same process, not a restart");

    // Destroy: containers (still running under the restarted engine), engine, namespaces,
    // mounts, cgroup, user and id ranges all go.
    drop(engine);
    let left = tenant.teardown().await;
    assert!(left.is_empty(), "destroy left: {left:?}");
}
