//! Proves the harness reaches a real dockerd through bollard and that the container
//! hardening hostd will enforce (no capabilities, read-only root, memory limit, own
//! bridge network) holds when observed from inside the container.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, WaitContainerOptions};
use futures_util::StreamExt;
use m8trx_e2e::{docker, env, force_remove, logs, parse_status, require_root, unique};

const MEMORY: i64 = 64 * 1024 * 1024;

const PROBE: &str = r#"
grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status
grep -E '^NoNewPrivs:' /proc/self/status
if touch /probe-write 2>/dev/null; then echo 'RootWrite: allowed'; else echo 'RootWrite: denied'; fi
if touch /tmp/probe-write 2>/dev/null; then echo 'TmpWrite: allowed'; else echo 'TmpWrite: denied'; fi
echo "MemLimit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "Interfaces: $(ls /sys/class/net | tr '\n' ' ')"
"#;

#[tokio::test]
async fn container_without_capabilities_on_read_only_root_and_own_bridge() {
    require_root();
    let d = docker().await;
    let image = env("M8TRX_IMAGE_BUSYBOX");

    let net = unique("net");
    d.create_network(NetworkCreateRequest {
        name: net.clone(),
        driver: Some("bridge".into()),
        ..Default::default()
    })
    .await
    .expect("creating the test bridge network");

    let name = unique("iso");
    let host_config = HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        readonly_rootfs: Some(true),
        memory: Some(MEMORY),
        memory_swap: Some(MEMORY),
        pids_limit: Some(64),
        security_opt: Some(vec!["no-new-privileges".into()]),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            "rw,noexec,nosuid,size=8m".to_owned(),
        )])),
        network_mode: Some(net.clone()),
        ..Default::default()
    };
    let created = d
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(vec!["/bin/sh".into(), "-c".into(), PROBE.into()]),
                host_config: Some(host_config),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("creating a container from {image}: {e}"));

    d.start_container(&created.id, None)
        .await
        .expect("starting the probe container");
    let waited = d
        .wait_container(&created.id, None::<WaitContainerOptions>)
        .next()
        .await
        .expect("wait stream ended without a status");
    let output = logs(&d, &created.id).await;
    let inspect = d
        .inspect_container(&created.id, None)
        .await
        .expect("inspecting the probe");
    force_remove(&d, &created.id).await;
    d.remove_network(&net)
        .await
        .expect("removing the test network");

    assert!(
        waited.is_ok(),
        "probe exited non-zero: {waited:?}\n{output}"
    );
    let seen = parse_status(&output);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            seen.get(cap).map(String::as_str),
            Some("0000000000000000"),
            "{cap} not empty:\n{output}"
        );
    }
    assert_eq!(seen["NoNewPrivs"], "1", "no_new_privs not set:\n{output}");
    assert_eq!(
        seen["RootWrite"], "denied",
        "root filesystem was writable:\n{output}"
    );
    assert_eq!(
        seen["TmpWrite"], "allowed",
        "tmpfs /tmp not writable:\n{output}"
    );
    assert_eq!(
        seen["MemLimit"],
        MEMORY.to_string(),
        "memory limit not applied:\n{output}"
    );
    let ifaces: Vec<&str> = seen["Interfaces"].split_whitespace().collect();
    assert!(
        ifaces.contains(&"eth0") && ifaces.contains(&"lo"),
        "unexpected interfaces: {ifaces:?}"
    );

    let networks = inspect
        .network_settings
        .and_then(|n| n.networks)
        .expect("inspect shows the container's networks");
    let attached: Vec<&String> = networks.keys().collect();
    assert_eq!(
        attached,
        vec![&net],
        "container must be on its own bridge only"
    );
}
