//! A tenant engine as hostd starts it: its own host user and subordinate id range, its
//! cgroup as parent, the shared containerd. Container root is the tenant's first remapped
//! uid (read on the host), the container is charged to the tenant cgroup, the engine is
//! re-adopted from its pidfile, and after a `kill -9` of dockerd a restart finds the
//! container still running (live-restore); destroy then leaves nothing. Prints the
//! engine's resident memory.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use hostd::cgroup::Limits;
use hostd::engine::Engine;
use m8trx_e2e::tenant::{load_image, Tenant};
use m8trx_e2e::{docker, env, parse_status, require_root};

#[tokio::test]
async fn tenant_engine_remaps_root_charges_its_cgroup_and_survives_restart() {
    require_root();
    let tenant = Tenant::provision(
        "e2e",
        &Limits {
            cpu: 1.0,
            memory: 512 << 20,
            pids: 512,
            io: vec![],
        },
    );
    let (cfg, name, user, base) = (
        tenant.cfg.clone(),
        tenant.cfg.name.clone(),
        tenant.user.clone(),
        tenant.base,
    );
    let cg = tenant.cgroup();
    assert!(
        cfg.args()
            .contains(&format!("--cgroup-parent={}", cg.docker_parent())),
        "dockerd's containers go below the tenant's workload cgroup"
    );

    let mut engine = Engine::start(cfg.clone()).unwrap();
    let d = engine.wait_ready(Duration::from_secs(60)).await.unwrap();

    // No registry: the image arrives as a tarball, as on an air-gapped host.
    let image = env("M8TRX_IMAGE_BUSYBOX");
    load_image(&docker().await, &d, &image).await;
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
    // A process's memory cgroup (v1) or unified cgroup (v2), and the whole file for messages.
    let memory_cgroup = |pid: u32| -> (String, String) {
        let all = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let line = all
            .lines()
            .find(|l| l.contains(":memory:") || l.starts_with("0::"))
            .unwrap()
            .to_owned();
        (line, all)
    };
    let (mem_line, cgroups) = memory_cgroup(u32::try_from(pid).unwrap());
    assert!(
        mem_line.contains(&format!("/m8trx/{name}/workload/")),
        "container not in the tenant's workload cgroup: {cgroups}"
    );
    // The engine itself is charged to the tenant too, beside its containers.
    let (engine_mem, engine_cgroups) = memory_cgroup(engine.pid());
    assert!(
        engine_mem.ends_with(&format!("/m8trx/{name}/engine")),
        "dockerd not in the tenant's engine cgroup: {engine_cgroups}"
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
