//! `control move` and `control drain` against the moto server: the ledger, the volume's
//! attachments and the hostd commands each host received, for a move, a move stopped at
//! every AWS call and resumed (what `kill -9` of control leaves), a failed move rolled back,
//! and a drain. moto cannot run hostd; the local two-host test (hostd/tests/host_move.rs)
//! moves a live tenant between two real hostd instances.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use control::moves::{choose_target, drain, move_shared};
use control::{Control, ControlError, Progress};
use m8trx_spec::CustomerName;

mod world;
use world::*;

/// From the `dead_from`-th AWS call on, every call fails before it leaves the client: what a
/// control killed at that point can no longer do. Counts every call either way.
#[derive(Debug, Clone)]
struct DeadFrom {
    dead_from: u32,
    seen: Arc<AtomicU32>,
}

impl aws_sdk_ec2::config::Intercept for DeadFrom {
    fn name(&self) -> &'static str {
        "dead-from-nth-call"
    }
    fn read_before_execution(
        &self,
        _context: &aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.dead_from {
            return Err("control is gone (killed)".into());
        }
        Ok(())
    }
}

/// `w`'s control with every EC2 and SSM call going through `dead`.
async fn dying(w: &World, dead: DeadFrom) -> Control {
    let mut c = w.control.clone();
    let conf = moto_conf().await;
    c.clients.ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&conf)
            .interceptor(dead.clone())
            .build(),
    );
    c.clients.ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&conf)
            .interceptor(dead)
            .build(),
    );
    c
}

/// A move as the CLI and the API make it: the target decided first, then the move to it.
async fn mv(
    c: &Control,
    name: &CustomerName,
    to: Option<&str>,
) -> Result<control::moves::MoveOutcome, ControlError> {
    let p = Progress::silent();
    let to = choose_target(&c.clients, &c.config, name, to, &p).await?;
    move_shared(&c.clients, &c.config, name, Some(&to), &p).await
}

/// The move to `host` itself (what a resumed job runs).
async fn mv_to(
    c: &Control,
    name: &CustomerName,
    host: &str,
) -> Result<control::moves::MoveOutcome, ControlError> {
    move_shared(&c.clients, &c.config, name, Some(host), &Progress::silent()).await
}

/// Where the tenant is: (host with its running entry, other hosts' entries, volume's host).
async fn whereabouts(
    w: &World,
    name: &CustomerName,
    hosts: &[&str],
) -> (Option<String>, usize, Option<String>) {
    let mut running = None;
    let mut entries = 0;
    for h in hosts {
        if let Some(r) = w.reservation(h, name).await {
            entries += 1;
            if r.state == "running" && r.from.is_none() {
                running = Some((*h).to_owned());
            }
        }
    }
    let vols = control::ec2::customer_volumes(&w.clients().ec2, name)
        .await
        .unwrap();
    assert_eq!(vols.len(), 1, "exactly one volume, moved not copied");
    let attached = vols[0]
        .attachments()
        .iter()
        .find(|a| a.state() == Some(&aws_sdk_ec2::types::VolumeAttachmentState::Attached))
        .and_then(|a| a.instance_id().map(str::to_owned));
    (running, entries, attached)
}

#[tokio::test]
async fn a_shared_tenant_moves_to_another_host_in_its_zone_and_back() {
    let mut w = World::new().await;
    let name = w.customer("move").await;
    // A is fuller, so the deploy goes there (best fit); B and C have room; C is in another zone.
    let a = w.host(1, 4096, 4, &[("other-tenant", 2048)]).await;
    let b = w.host(1, 8192, 8, &[]).await;
    let c = w.host(0, 8192, 8, &[]).await;
    let spec = w.request(&name, "shared").validate().unwrap();
    w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    assert_eq!(
        whereabouts(&w, &name, &[&a, &b, &c]).await,
        (Some(a.clone()), 1, Some(a.clone()))
    );

    let same = mv(&w.control, &name, Some(&a)).await.unwrap();
    assert_eq!(
        (same.from_host.as_str(), same.to_host.as_str()),
        (a.as_str(), a.as_str())
    );
    assert_eq!(
        whereabouts(&w, &name, &[&a, &b, &c]).await,
        (Some(a.clone()), 1, Some(a.clone())),
        "refusals change nothing"
    );

    let (progress, lines) = recorder();
    let out = move_shared(
        &w.control.clients,
        &w.control.config,
        &name,
        None,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(
        (out.from_host.as_str(), out.to_host.as_str()),
        (a.as_str(), b.as_str())
    );
    assert_eq!(
        whereabouts(&w, &name, &[&a, &b, &c]).await,
        (Some(b.clone()), 1, Some(b.clone()))
    );
    let r = w.reservation(&b, &name).await.unwrap();
    assert_eq!(
        (r.memory_mib, r.cpu_millis),
        (1024, 500),
        "the same room on the target"
    );
    // A was told to destroy without wiping, B to create the same tenant on the same volume.
    let sent_a = w.commands_sent(&a).await.join("\n");
    assert!(
        sent_a.contains("hostd ctl destroy") && !sent_a.contains("--wipe"),
        "{sent_a}"
    );
    let sent_b = w.commands_sent(&b).await.join("\n");
    assert!(
        sent_b.contains("hostd ctl create") && sent_b.contains(&out.volume_id),
        "{sent_b}"
    );
    let lines = lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("room held there") && lines.contains("point its DNS record"),
        "{lines}"
    );
    let st = w.control.status(&name).await.unwrap();
    assert_eq!(st.shared_host.as_deref(), Some(b.as_str()));

    // And back, naming the host, with a DNS hook: it fails first (the move stops with the
    // tenant serving on A, the ledger still "moving"), then works on the re-run.
    let dir = std::env::temp_dir().join(format!("m8trx-dns-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log, fail) = (dir.join("calls"), dir.join("fail"));
    let hook = dir.join("hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ -f {fail} ]; then echo 'the DNS API said no' >&2; exit 7; fi\necho \"$1 $2 $3\" >> {log}\n",
            fail = fail.display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(&fail, "").unwrap();
    let mut hooked = w.control.clone();
    hooked.config.dns_hook = Some(hook);
    let err = mv(&hooked, &name, Some(&a)).await.unwrap_err();
    assert!(err.to_string().contains("the DNS API said no"), "{err}");
    let moving = w.reservation(&a, &name).await.unwrap();
    assert_eq!(moving.state, "moving-in", "not done until DNS points at A");
    assert!(!log.exists());
    std::fs::remove_file(&fail).unwrap();
    let back = mv(&hooked, &name, Some(&a)).await.unwrap();
    assert_eq!(back.to_host, a);
    assert_eq!(
        whereabouts(&w, &name, &[&a, &b, &c]).await,
        (Some(a.clone()), 1, Some(a.clone()))
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.starts_with(&format!("{name}.m8trx.test {a} ")) && calls.lines().count() == 1,
        "{calls}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    w.control
        .delete(&name, false, &Progress::silent())
        .await
        .unwrap();
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

/// Stops a move between `x` and `y` at each of its AWS calls in turn (one way, then the
/// other), runs it again each time and checks where the tenant ended; leaves it on `x`.
/// Returns the calls a move makes.
async fn stop_at_each_call(w: &World, name: &CustomerName, x: &str, y: &str) -> u32 {
    let hosts = [x, y];
    let counter = DeadFrom {
        dead_from: u32::MAX,
        seen: Arc::default(),
    };
    mv_to(&dying(w, counter.clone()).await, name, y)
        .await
        .unwrap();
    let calls = counter.seen.load(Ordering::SeqCst);
    assert!(calls > 10, "{calls}");
    let mut to = x;
    for n in 1..=calls {
        let dead = DeadFrom {
            dead_from: n,
            seen: Arc::default(),
        };
        let stopped = mv_to(&dying(w, dead).await, name, to).await;
        assert!(
            stopped.is_err(),
            "killed at call {n} of {calls}, yet it finished"
        );
        let resumed = mv_to(&w.control, name, to).await;
        let out = resumed.unwrap_or_else(|e| panic!("resuming after call {n}: {e}"));
        assert_eq!(out.to_host, to, "after call {n}");
        assert_eq!(
            whereabouts(w, name, &hosts).await,
            (Some(to.to_owned()), 1, Some(to.to_owned())),
            "after a stop at call {n}: one running entry, on the target, with the one volume"
        );
        to = if to == x { y } else { x };
    }
    mv_to(&w.control, name, x).await.unwrap();
    calls
}

#[tokio::test]
async fn a_move_stopped_at_any_aws_call_is_finished_by_running_it_again() {
    let mut w = World::new().await;
    let name = w.customer("movekill").await;
    // Some 130 moves: waits poll moto every 5 ms, not every 50.
    w.control.config.poll_interval = std::time::Duration::from_millis(5);
    let a = w.host(1, 4096, 4, &[("other-tenant", 2048)]).await;
    let b = w.host(1, 8192, 8, &[]).await;
    let c = w.host(0, 8192, 8, &[]).await;
    let spec = w.request(&name, "shared").validate().unwrap();
    w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    let same_zone = stop_at_each_call(&w, &name, &a, &b).await;
    let other_zone = stop_at_each_call(&w, &name, &a, &c).await;
    println!(
        "move: stopped at each of its AWS calls in turn ({same_zone} in one zone, {other_zone} between zones), each resumed to the same end"
    );
    w.control
        .delete(&name, false, &Progress::silent())
        .await
        .unwrap();
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

#[tokio::test]
async fn a_move_to_another_zone_copies_the_volume_under_the_customers_key() {
    let mut w = World::new().await;
    let name = w.customer("movezone").await;
    let a = w.host(1, 4096, 4, &[]).await;
    let c = w.host(0, 8192, 8, &[]).await;
    let key = cmk_arn(&w, &name).await;
    let spec = w.request(&name, "shared").validate().unwrap();
    w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    let (_, _, Some(on)) = whereabouts(&w, &name, &[&a, &c]).await else {
        panic!("not attached")
    };
    assert_eq!(on, a);
    let original = control::ec2::customer_volumes(&w.clients().ec2, &name)
        .await
        .unwrap()[0]
        .volume_id()
        .unwrap()
        .to_owned();

    let (progress, lines) = recorder();
    let to = choose_target(
        &w.control.clients,
        &w.control.config,
        &name,
        Some(&c),
        &progress,
    )
    .await
    .unwrap();
    let out = move_shared(
        &w.control.clients,
        &w.control.config,
        &name,
        Some(&to),
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(out.to_host, c);
    assert_ne!(out.volume_id, original, "a copy in the other zone");
    assert_eq!(
        whereabouts(&w, &name, &[&a, &c]).await,
        (Some(c.clone()), 1, Some(c.clone()))
    );
    let v = control::ec2::volume(&w.clients().ec2, &out.volume_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.availability_zone(), Some("us-east-2a"));
    assert_eq!(
        v.kms_key_id(),
        Some(key.as_str()),
        "the customer's key, as before"
    );
    assert!(v.encrypted().unwrap());
    assert_eq!(
        control::tags::get(v.tags(), control::zone_copy::COPY_OF),
        Some(original.as_str())
    );
    assert!(
        control::ec2::volume(&w.clients().ec2, &original)
            .await
            .unwrap()
            .is_none_or(
                |o| o.state() == Some(&aws_sdk_ec2::types::VolumeState::Deleted)
                    || o.state() == Some(&aws_sdk_ec2::types::VolumeState::Deleting)
            ),
        "the original is deleted once the move completed"
    );
    let snaps = w
        .clients()
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(control::tags::filter(
            control::tags::CUSTOMER,
            name.as_str(),
        ))
        .send()
        .await
        .unwrap();
    assert!(
        snaps.snapshots().is_empty(),
        "the move's snapshot is deleted: {snaps:?}"
    );
    let sent_c = w.commands_sent(&c).await.join("\n");
    assert!(sent_c.contains(&out.volume_id), "{sent_c}");
    let lines = lines.lock().unwrap().join("\n");
    assert!(lines.contains("under the same key"), "{lines}");
    w.control
        .delete(&name, false, &Progress::silent())
        .await
        .unwrap();
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

/// Fails SendCommand to one instance: hostd there "cannot create the tenant".
#[derive(Debug)]
struct FailCommandsTo(String);

impl aws_sdk_ssm::config::Intercept for FailCommandsTo {
    fn name(&self) -> &'static str {
        "fail-send-command-to"
    }
    fn read_before_execution(
        &self,
        context: &aws_sdk_ssm::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_sdk_ssm::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let to_it = context
            .input()
            .downcast_ref::<aws_sdk_ssm::operation::send_command::SendCommandInput>()
            .is_some_and(|i| i.instance_ids().contains(&self.0));
        match to_it {
            true => Err("the target host refuses the command".into()),
            false => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_move_the_target_cannot_take_rolls_back_to_the_source() {
    let mut w = World::new().await;
    let name = w.customer("moveback").await;
    let a = w.host(1, 4096, 4, &[("other-tenant", 2048)]).await;
    let b = w.host(1, 8192, 8, &[]).await;
    let spec = w.request(&name, "shared").validate().unwrap();
    w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    let creates_on_a = w.commands_sent(&a).await;

    let mut broken = w.control.clone();
    let conf = moto_conf().await;
    broken.clients.ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&conf)
            .interceptor(FailCommandsTo(b.clone()))
            .build(),
    );
    let (progress, lines) = recorder();
    let err = move_shared(&broken.clients, &broken.config, &name, None, &progress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(
        whereabouts(&w, &name, &[&a, &b]).await,
        (Some(a.clone()), 1, Some(a.clone())),
        "back on A with its volume; B's room released"
    );
    // A: the destroy for the move, then a create again.
    let sent_a = w.commands_sent(&a).await;
    let creates = |s: &[String]| s.iter().filter(|c| c.contains("hostd ctl create")).count();
    assert!(creates(&sent_a) > creates(&creates_on_a), "{sent_a:?}");
    assert!(
        sent_a.iter().any(|c| c.contains("hostd ctl destroy")),
        "{sent_a:?}"
    );
    let lines = lines.lock().unwrap().join("\n");
    assert!(lines.contains("rolled back;"), "{lines}");
    w.control
        .delete(&name, false, &Progress::silent())
        .await
        .unwrap();
    w.cleanup().await;
}

#[tokio::test]
async fn a_drained_host_sends_its_tenants_elsewhere_and_takes_no_new_one() {
    let mut w = World::new().await;
    let one = w.customer("drain1").await;
    let two = w.customer("drain2").await;
    let a = w.host(1, 4096, 4, &[]).await;
    let b = w.host(1, 8192, 8, &[]).await;
    for n in [&one, &two] {
        let spec = w.request(n, "shared").validate().unwrap();
        w.control.deploy(&spec, &Progress::silent()).await.unwrap();
        assert_eq!(
            whereabouts(&w, n, &[&a, &b]).await.0,
            Some(a.clone()),
            "best fit: A"
        );
    }
    let moved = drain(
        &w.control.clients,
        &w.control.config,
        &a,
        &Progress::silent(),
    )
    .await
    .unwrap();
    assert_eq!(moved.len(), 2);
    for n in [&one, &two] {
        assert_eq!(
            whereabouts(&w, n, &[&a, &b]).await,
            (Some(b.clone()), 1, Some(b.clone()))
        );
    }
    let host_a = control::inventory::get_host(&w.clients().ec2, &a)
        .await
        .unwrap();
    assert!(
        host_a.draining && host_a.reservations.is_empty(),
        "{host_a:?}"
    );
    // A new tenant that would best fit on A goes to B.
    let three = w.customer("drain3").await;
    let spec = w.request(&three, "shared").validate().unwrap();
    w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    assert_eq!(whereabouts(&w, &three, &[&a, &b]).await.0, Some(b.clone()));
    for n in [&one, &two, &three] {
        w.control
            .delete(n, false, &Progress::silent())
            .await
            .unwrap();
    }
    w.cleanup().await;
}
