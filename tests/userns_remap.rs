//! Proves the tenant-engine pattern works on this host: a second dockerd with
//! `--userns-remap`, sharing the first engine's containerd, runs a container whose
//! root is an unprivileged host UID (read from /proc on the host, not from inside).
#![allow(clippy::expect_used)] // test fixture: a panic is the failure report

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ImportImageOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use m8trx_e2e::{
    connect_docker, docker, env, force_remove, parse_status, require_root, sub_id_range,
};

/// A second engine for the length of one test; stopped and removed on drop, even after a panic.
struct RemappedEngine {
    child: Child,
    exec_root: PathBuf,
    data_root: PathBuf,
    namespace: String,
    log: PathBuf,
}

impl RemappedEngine {
    fn start() -> Self {
        let id = std::process::id();
        let exec_root = PathBuf::from(format!("/run/m8trx-e2e/u{id}"));
        let data_root = PathBuf::from(format!("/var/lib/m8trx-e2e/userns-{id}"));
        std::fs::create_dir_all(&exec_root).expect("creating exec root");
        std::fs::create_dir_all(&data_root).expect("creating data root");
        let namespace = format!("m8trx-e2e-{id}");
        let log =
            PathBuf::from(env("M8TRX_TEST_HOME")).join(format!("log/userns-dockerd-{id}.log"));
        let log_file = std::fs::File::create(&log).expect("creating dockerd log");
        let child = Command::new("dockerd")
            .arg("--userns-remap=default")
            .arg(format!("--data-root={}", data_root.display()))
            .arg(format!("--exec-root={}", exec_root.display()))
            .arg(format!("--pidfile={}/dockerd.pid", exec_root.display()))
            .arg(format!("--host=unix://{}/docker.sock", exec_root.display()))
            .arg(format!("--containerd={}", env("M8TRX_CONTAINERD_SOCKET")))
            .arg(format!("--containerd-namespace={namespace}"))
            .arg(format!(
                "--containerd-plugins-namespace={namespace}-plugins"
            ))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning dockerd (is docker.io installed? run scripts/test-env)");
        Self {
            child,
            exec_root,
            data_root,
            namespace,
            log,
        }
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.exec_root.display())
    }

    async fn wait_ready(&mut self) -> Docker {
        let sock = self.exec_root.join("docker.sock");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("polling dockerd") {
                panic!(
                    "second dockerd exited with {status}; see {}",
                    self.log.display()
                );
            }
            if sock.exists() {
                let d = Docker::connect_with_unix(
                    sock.to_str().expect("utf-8 path"),
                    10,
                    bollard::API_DEFAULT_VERSION,
                )
                .expect("unix socket client");
                if d.ping().await.is_ok() {
                    return connect_docker(&self.host()).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "second dockerd not ready after 30s; see {}",
            self.log.display()
        );
    }
}

impl Drop for RemappedEngine {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let ctr = |ns: &str| {
            let _ = Command::new("ctr")
                .args([
                    "--address",
                    &env("M8TRX_CONTAINERD_SOCKET"),
                    "namespaces",
                    "remove",
                    ns,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        ctr(&self.namespace);
        ctr(&format!("{}-plugins", self.namespace));
        let _ = std::fs::remove_dir_all(&self.data_root);
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

#[tokio::test]
async fn remapped_engine_runs_container_root_as_unprivileged_host_uid() {
    require_root();
    let image = env("M8TRX_IMAGE_BUSYBOX");
    let main = docker().await;
    let mut engine = RemappedEngine::start();
    let remapped = engine.wait_ready().await;

    // No registry here: move the image as a tarball, the path air-gapped hosts use too.
    let tarball = main.export_image(&image);
    let mut load =
        remapped.import_image_stream(ImportImageOptionsBuilder::default().build(), tarball, None);
    while let Some(step) = load.next().await {
        step.unwrap_or_else(|e| panic!("loading {image} into the remapped engine: {e}"));
    }

    let created = remapped
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name("probe")
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(vec!["sleep".into(), "60".into()]),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("creating the probe in the remapped engine");
    remapped
        .start_container(&created.id, None)
        .await
        .expect("starting the probe");
    let inspect = remapped
        .inspect_container(&created.id, None)
        .await
        .expect("inspect");
    let pid = inspect
        .state
        .and_then(|s| s.pid)
        .expect("running container has a pid");

    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("reading /proc status on the host");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .expect("reading uid_map on the host");
    force_remove(&remapped, &created.id).await;
    drop(engine);

    let (base, count) = sub_id_range("/etc/subuid", "dockremap")
        .expect("dockerd created dockremap's /etc/subuid range");
    let host_uid: u64 = parse_status(&status)["Uid"]
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric Uid line");
    assert_ne!(host_uid, 0, "container root must not be host root");
    assert_eq!(
        host_uid, base,
        "container root must be the first id of dockremap's subuid range"
    );
    assert!(count >= 65536, "subuid range too small: {count}");
    let first_map: Vec<&str> = uid_map.split_whitespace().take(3).collect();
    assert_eq!(
        first_map,
        ["0", &base.to_string(), &count.to_string()],
        "uid_map: {uid_map}"
    );
}
