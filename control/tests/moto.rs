//! control's flows against the real moto server `scripts/test-env` starts
//! (M8TRX_MOTO_ENDPOINT). Every test makes its own uniquely named customer, CMK, instance
//! profile, AMI, VPC, subnets and shared-host fleet, and looks only at resources carrying its
//! own tags, because other suites use the same moto server at the same time.
//!
//! moto records SSM SendCommand calls but cannot execute them (every invocation reports
//! Success with empty output), so these tests check the command control sent — the exact
//! `hostd ctl` script with the tenant spec — and the unit tests in `src/hostd.rs` check the
//! handling of hostd's output, failures and a stand-in hostd executing the script.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::{HttpTokensState, InstanceMetadataTagsState, InstanceType, VolumeType};
use aws_sdk_ssm::types::ParameterType;
use control::inventory::{self, Need};
use control::tags;
use control::{ControlError, Progress};
use http_body_util::BodyExt;
use m8trx_spec::CustomerName;
use tower::ServiceExt;

mod world;
use world::*;

async fn check_parameters(w: &World, name: &CustomerName, key_arn: &str) {
    let ssm = &w.clients().ssm;
    let described = ssm
        .describe_parameters()
        .parameter_filters(
            aws_sdk_ssm::types::ParameterStringFilter::builder()
                .key("Name")
                .option("Equals")
                .set_values(Some(name.ssm_parameter_names()))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.parameters().len(),
        6,
        "six parameters under {}",
        name.ssm_prefix()
    );
    for p in described.parameters() {
        let leaf = p.name().unwrap().rsplit('/').next().unwrap();
        let plain = leaf == "brain-customer-id" || leaf == "brain-url";
        let want = if plain {
            ParameterType::String
        } else {
            ParameterType::SecureString
        };
        assert_eq!(p.r#type(), Some(&want), "{leaf}");
        if !plain {
            assert_eq!(
                p.key_id(),
                Some(key_arn),
                "{leaf} encrypted with the customer's CMK"
            );
        }
    }
    let got = ssm
        .get_parameter()
        .name(format!("{}brain-customer-id", name.ssm_prefix()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.parameter().unwrap().value(), Some(name.uid().as_str()));
    let pw = ssm
        .get_parameter()
        .name(format!("{}agent-ui-password", name.ssm_prefix()))
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        pw.parameter().unwrap().value().unwrap().len(),
        24,
        "generated password"
    );
}

#[tokio::test]
async fn shared_flow_places_attaches_drives_hostd_resumes_and_deletes_everything() {
    let mut w = World::new().await;
    let name = w.customer("shared").await;
    // Host A (AZ a) is nearly full; host B (AZ b) has room: placement must choose B.
    let host_a = w.host(0, 4096, 4, &[("other-tenant", 3584)]).await;
    let host_b = w.host(1, 8192, 8, &[]).await;
    assert!(
        w.leftovers(&name).await.is_empty(),
        "fresh customer owns nothing"
    );
    let key = cmk_arn(&w, &name).await;

    let spec = w.request(&name, "shared").validate().unwrap();
    let (progress, lines) = recorder();
    let out = w
        .control
        .deploy(&spec, &progress)
        .await
        .expect("shared deploy");
    let control::ops::Placement::Shared(p) = &out.placement else {
        panic!("placed dedicated: {out:?}")
    };
    assert_eq!(p.host_instance_id, host_b);
    assert_eq!(p.availability_zone, "us-east-2b");
    assert_eq!(out.hostname, format!("{name}.m8trx.test"));
    check_parameters(&w, &name, &key).await;

    // The volume: the customer's CMK, gp3, the requested size, in B's AZ, attached to B.
    let v = control::ec2::volume(&w.clients().ec2, &p.volume_id)
        .await
        .unwrap()
        .unwrap();
    assert!(v.encrypted().unwrap());
    assert_eq!(v.kms_key_id(), Some(key.as_str()));
    assert_eq!(v.volume_type(), Some(&VolumeType::Gp3));
    assert_eq!(v.size(), Some(40));
    assert_eq!(v.availability_zone(), Some("us-east-2b"));
    assert_eq!(
        control::ec2::attached_to(&v, &host_b).as_deref(),
        Some(p.device.as_str())
    );
    assert_eq!(tags::get(v.tags(), tags::CUSTOMER), Some(name.as_str()));

    // The ledger on B says running with the volume; A is untouched.
    let r = w
        .reservation(&host_b, &name)
        .await
        .expect("reservation on B");
    assert_eq!(
        (r.state.as_str(), r.memory_mib, r.volume_id.as_deref()),
        ("running", 1024, Some(p.volume_id.as_str()))
    );
    assert!(w.reservation(&host_a, &name).await.is_none());

    // The command hostd received over SSM: the spec (volume, role, limits) then hostd ctl create.
    let sent = w.commands_sent(&host_b).await;
    // (moto's ListCommands may also list other suites' commands under this instance, so the
    // customer's own command is picked by its spec path.)
    let create = sent
        .iter()
        .find(|s| s.contains(&format!("/run/m8trx/control/{name}.json")))
        .expect("create command sent");
    let to_b = format!("hostd: create tenant {name} sent to {host_b}");
    assert!(
        lines.lock().unwrap().iter().any(|l| l.starts_with(&to_b)),
        "command went to host B"
    );
    for needle in [
        format!("\"name\":\"{name}\""),
        format!("\"volume\":{{\"ebs\":\"{}\"}}", p.volume_id),
        format!(":role/m8trx-{name}\""),
        format!("\"external_id\":\"ext-{name}\""),
        // 1024 MiB: the typed spec (m8trx_spec::tenant) sends byte counts.
        format!("\"memory\":{}", 1024u64 << 20),
        "\"tls\":\"passthrough\"".to_owned(),
        format!("hostd ctl create -f /run/m8trx/control/{name}.json --json"),
    ] {
        assert!(
            create.contains(&needle),
            "command lacks {needle}:\n{create}"
        );
    }
    // The spec file is hostd's own format: hostd's parser accepts it.
    let json = create
        .lines()
        .find(|l| l.starts_with("{\"version\""))
        .expect("spec line in the command");
    hostd::spec::TenantSpec::parse(json)
        .unwrap_or_else(|e| panic!("hostd would refuse the spec control sent: {e}\n{json}"));
    for secret in ["_secret", "tskey-auth", "ghp_fleetwidepat"] {
        assert!(
            !create.contains(secret),
            "the command must not carry secrets"
        );
        assert!(
            !lines.lock().unwrap().iter().any(|l| l.contains(secret)),
            "progress leaks a secret"
        );
    }
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("hostd: ")),
        "hostd result surfaced"
    );

    // Re-running the same deploy changes nothing and creates nothing.
    let again = w
        .control
        .deploy(&spec, &Progress::silent())
        .await
        .expect("re-run");
    assert_eq!(again.placement, out.placement);
    assert!(
        again
            .ssm_parameters
            .iter()
            .all(|(_, a)| *a == control::params::ParamAction::Unchanged),
        "{again:?}"
    );
    assert_eq!(
        control::ec2::customer_volumes(&w.clients().ec2, &name)
            .await
            .unwrap()
            .len(),
        1
    );

    // Delete: hostd destroy, volume detached and deleted, reservation released, parameters gone.
    let before = w.leftovers(&name).await;
    assert_eq!(
        before.len(),
        1 + 6 + 1,
        "volume, six parameters, reservation: {before:?}"
    );
    let del = w
        .control
        .delete(&name, false, &Progress::silent())
        .await
        .expect("delete");
    assert_eq!(del.shared.volumes_deleted, [p.volume_id.as_str()]);
    assert_eq!(del.ssm_parameters_deleted, 6);
    assert!(w
        .commands_sent(&host_b)
        .await
        .iter()
        .any(|s| s.contains(&format!("hostd ctl destroy '{name}' --json"))));
    assert_eq!(
        w.leftovers(&name).await,
        Vec::<String>::new(),
        "delete leaves nothing"
    );
    // And a second delete is a clean no-op.
    let del2 = w
        .control
        .delete(&name, false, &Progress::silent())
        .await
        .expect("second delete");
    assert_eq!(del2.ssm_parameters_deleted, 0);
    w.cleanup().await;
}

#[tokio::test]
async fn dedicated_flow_launches_the_hardened_instance_and_deletes_everything() {
    let mut w = World::new().await;
    let name = w.customer("dedi").await;
    let key = cmk_arn(&w, &name).await;
    let mut req = w.request(&name, "dedicated");
    req.subdomain = Some(format!("{name}-inbox"));
    let spec = req.validate().unwrap();
    let out = w
        .control
        .deploy(&spec, &Progress::silent())
        .await
        .expect("dedicated deploy");
    let control::ops::Placement::Dedicated(p) = &out.placement else {
        panic!("placed shared: {out:?}")
    };
    check_parameters(&w, &name, &key).await;

    let ec2 = &w.clients().ec2;
    let d = ec2
        .describe_instances()
        .instance_ids(&p.instance_id)
        .send()
        .await
        .unwrap();
    let i = &d.reservations()[0].instances()[0];
    assert_eq!(i.image_id(), w.control.config.ami_id.as_deref());
    assert_eq!(i.instance_type(), Some(&InstanceType::T3Medium));
    let md = i.metadata_options().unwrap();
    assert_eq!(
        md.http_tokens(),
        Some(&HttpTokensState::Required),
        "IMDSv2 required"
    );
    assert_eq!(md.http_put_response_hop_limit(), Some(1), "hop limit 1");
    assert_eq!(
        md.instance_metadata_tags(),
        Some(&InstanceMetadataTagsState::Enabled)
    );
    assert!(i
        .iam_instance_profile()
        .unwrap()
        .arn()
        .unwrap()
        .ends_with(&format!("/m8trx-{name}")));
    assert_eq!(tags::get(i.tags(), tags::CUSTOMER), Some(name.as_str()));
    assert_eq!(
        tags::get(i.tags(), tags::NAME),
        Some(format!("m8trx-{name}").as_str())
    );
    assert_eq!(
        tags::get(i.tags(), tags::HOSTNAME),
        Some(format!("{name}-inbox.m8trx.test").as_str())
    );
    let root = control::ec2::volume(ec2, p.root_volume_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(root.encrypted().unwrap());
    assert_eq!(root.kms_key_id(), Some(key.as_str()));
    assert_eq!(root.volume_type(), Some(&VolumeType::Gp3));
    assert_eq!(root.size(), Some(40));
    let ud = ec2
        .describe_instance_attribute()
        .instance_id(&p.instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let raw = aws_smithy_types::base64::decode(ud.user_data().unwrap().value().unwrap()).unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.len() < 16 * 1024, "user-data {} bytes", text.len());
    assert!(text.contains(&format!("M8TRX_EXPECTED_CUSTOMER='{name}'")));
    assert!(text.contains(&format!("M8TRX_HOSTNAME='{name}-inbox.m8trx.test'")));
    assert!(
        !text.contains("_secret") && !text.contains("tskey-auth"),
        "no secret in user-data"
    );

    // Idempotent: the same deploy finds the instance instead of launching a second one.
    let again = w
        .control
        .deploy(&spec, &Progress::silent())
        .await
        .expect("re-run");
    assert_eq!(again.placement, out.placement);
    assert_eq!(
        w.control.status(&name).await.unwrap().dedicated_instances,
        [p.instance_id.as_str()]
    );

    // A shared deploy of a dedicated customer is refused before anything changes.
    let shared = w.request(&name, "shared").validate().unwrap();
    let err = w
        .control
        .deploy(&shared, &Progress::silent())
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Conflict(_)), "{err}");

    let before = w.leftovers(&name).await;
    assert_eq!(
        before.len(),
        1 + 1 + 6,
        "instance, root volume, six parameters: {before:?}"
    );
    let del = w
        .control
        .delete(&name, false, &Progress::silent())
        .await
        .expect("delete");
    assert_eq!(del.instances_terminated, [p.instance_id.as_str()]);
    assert_eq!(
        w.leftovers(&name).await,
        Vec::<String>::new(),
        "delete leaves nothing"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn regulated_customer_is_refused_shared_hosting_and_nothing_is_created() {
    let mut w = World::new().await;
    let name = w.customer("reg").await;
    w.host(0, 8192, 8, &[]).await;
    let mut req = w.request(&name, "shared");
    req.regulated = true;
    let errs = req.validate().unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "hosting");
    assert!(
        errs[0]
            .message
            .contains("regulated customers run on dedicated EC2 only"),
        "{}",
        errs[0]
    );

    // Through the API: 422 naming the field, and no job started.
    let app = authed_app(&w.control);
    let resp = app
        .clone()
        .oneshot(
            axum::http::Request::post("/v1/deployments")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(serde_json::to_vec(&req).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["errors"][0]["field"], "hosting");
    let jobs = app
        .oneshot(
            axum::http::Request::get("/v1/jobs")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let jobs: serde_json::Value =
        serde_json::from_slice(&jobs.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0);

    // Regulated without a hosting choice is forced onto dedicated.
    req.hosting = None;
    assert_eq!(req.validate().unwrap().hosting, control::Hosting::Dedicated);
    assert!(
        w.leftovers(&name).await.is_empty(),
        "{:?}",
        w.leftovers(&name).await
    );
    w.cleanup().await;
}

#[tokio::test]
async fn all_hosts_full_is_a_clear_error_and_creates_nothing() {
    let mut w = World::new().await;
    let name = w.customer("full").await;
    let a = w.host(0, 4096, 4, &[("t1", 2048), ("t2", 1536)]).await; // 512 MiB free
    let b = w.host(1, 8192, 2, &[("t3", 512), ("t4", 512)]).await; // no slot free
    let spec = w.request(&name, "shared").validate().unwrap();
    let err = w
        .control
        .deploy(&spec, &Progress::silent())
        .await
        .unwrap_err();
    let ControlError::NoCapacity(msg) = &err else {
        panic!("expected NoCapacity, got {err}")
    };
    assert!(msg.contains(&a) && msg.contains(&b), "{msg}");
    assert!(msg.contains("needs 1024 MiB"), "{msg}");
    assert!(msg.contains("Nothing was created"), "{msg}");
    assert!(
        w.leftovers(&name).await.is_empty(),
        "{:?}",
        w.leftovers(&name).await
    );
    for h in [&a, &b] {
        let host = inventory::get_host(&w.clients().ec2, h).await.unwrap();
        assert_eq!(host.reservations.len(), 2, "{h} ledger unchanged");
    }
    w.cleanup().await;
}

#[tokio::test]
async fn half_done_deploy_and_delete_are_completed_by_a_rerun() {
    let mut w = World::new().await;
    let name = w.customer("resume").await;
    let host = w.host(0, 8192, 8, &[]).await;
    let mut req = w.request(&name, "shared");
    // The dashboard hands over terraform's external id; it wins over the role tag.
    let xid = format!("xid-{name}-0123456789abcdef0123456789abcdef");
    req.secrets.external_id = Some(xid.clone());
    let spec = req.validate().unwrap();

    // A deploy interrupted after its reservation: control made the reservation, then stopped.
    let c = w.clients();
    inventory::place(
        &c.ec2,
        &c.ssm,
        &w.control.config.fleet,
        name.as_str(),
        Need {
            memory_mib: 1024,
            cpu_millis: 500,
        },
        None,
        &Progress::silent(),
    )
    .await
    .unwrap();
    assert_eq!(w.reservation(&host, &name).await.unwrap().state, "reserved");
    let (progress, lines) = recorder();
    let out = w
        .control
        .deploy(&spec, &progress)
        .await
        .expect("resumed deploy");
    let control::ops::Placement::Shared(p) = &out.placement else {
        panic!()
    };
    assert_eq!(p.host_instance_id, host);
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("resuming on")),
        "{:?}",
        lines.lock().unwrap()
    );
    assert_eq!(w.reservation(&host, &name).await.unwrap().state, "running");
    let sent = w.commands_sent(&host).await;
    assert!(
        sent.iter()
            .any(|c| c.contains(&format!("\"external_id\":\"{xid}\""))),
        "tenant spec carries the request's external id"
    );

    // A deploy whose volume was detached behind control's back is re-attached by a re-run.
    c.ec2
        .detach_volume()
        .volume_id(&p.volume_id)
        .instance_id(&host)
        .device(&p.device)
        .send()
        .await
        .unwrap();
    let again = w
        .control
        .deploy(&spec, &Progress::silent())
        .await
        .expect("re-attach");
    let control::ops::Placement::Shared(p2) = &again.placement else {
        panic!()
    };
    assert_eq!(p2.volume_id, p.volume_id, "same volume reused");
    let v = control::ec2::volume(&c.ec2, &p.volume_id)
        .await
        .unwrap()
        .unwrap();
    assert!(control::ec2::attached_to(&v, &host).is_some());

    // A delete interrupted after the shared part (tenant, volume, reservation gone, parameters
    // left): the re-run removes the rest.
    control::shared::delete(c, &w.control.config, &name, false, &Progress::silent())
        .await
        .unwrap();
    let half = w.leftovers(&name).await;
    assert_eq!(half.len(), 6, "only the parameters are left: {half:?}");
    w.control
        .delete(&name, false, &Progress::silent())
        .await
        .expect("resumed delete");
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

#[tokio::test]
async fn keep_volume_detaches_and_a_redeploy_reuses_it_in_its_zone() {
    let mut w = World::new().await;
    let name = w.customer("keep").await;
    let host_a = w.host(0, 8192, 8, &[]).await;
    let spec = w.request(&name, "shared").validate().unwrap();
    let out = w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    let control::ops::Placement::Shared(p) = &out.placement else {
        panic!()
    };
    assert_eq!(p.host_instance_id, host_a);
    let del = w
        .control
        .delete(&name, true, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(del.shared.volumes_kept, [p.volume_id.as_str()]);
    let left = w.leftovers(&name).await;
    assert_eq!(left.len(), 1, "only the kept volume: {left:?}");
    // A roomier host in the other AZ appears; the kept volume pins placement to its own AZ.
    w.host(1, 65536, 32, &[]).await;
    let back = w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    let control::ops::Placement::Shared(p2) = &back.placement else {
        panic!()
    };
    assert_eq!(p2.volume_id, p.volume_id);
    assert_eq!(p2.host_instance_id, host_a);
    w.control
        .delete(&name, false, &Progress::silent())
        .await
        .unwrap();
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

#[tokio::test]
async fn api_runs_deploy_and_delete_as_pollable_jobs() {
    let mut w = World::new().await;
    let name = w.customer("api").await;
    let host = w.host(1, 8192, 8, &[]).await;
    let app = authed_app(&w.control);
    async fn call(
        app: &axum::Router,
        req: axum::http::Request<axum::body::Body>,
    ) -> (u16, serde_json::Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }
    async fn wait_job(app: &axum::Router, id: u64) -> serde_json::Value {
        let mut lines: Vec<String> = Vec::new();
        for _ in 0..600 {
            let (s, job) = call(
                app,
                axum::http::Request::get(format!("/v1/jobs/{id}?since={}", lines.len()))
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
            assert_eq!(s, 200);
            for l in job["lines"].as_array().unwrap() {
                assert_eq!(
                    l["seq"].as_u64().unwrap() as usize,
                    lines.len(),
                    "polling with since returns only new lines"
                );
                lines.push(l["text"].as_str().unwrap().to_owned());
            }
            if job["state"] != "running" {
                let mut job = job;
                job["all_lines"] = serde_json::json!(lines);
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish");
    }
    let json = |method: &str, uri: String, body: &serde_json::Value| {
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    };

    let (s, body) = call(
        &app,
        json(
            "POST",
            "/v1/deployments".into(),
            &serde_json::json!({"name": "x"}),
        ),
    )
    .await;
    assert_eq!(s, 422);
    let fields: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        fields.contains(&"name".to_owned()) && fields.contains(&"template".to_owned()),
        "{fields:?}"
    );
    let (s, _) = call(
        &app,
        json(
            "POST",
            "/v1/deployments".into(),
            &serde_json::json!({"name": "acme", "colour": 1}),
        ),
    )
    .await;
    assert_eq!(s, 400);

    let req = serde_json::to_value(w.request(&name, "shared")).unwrap();
    let (s, body) = call(&app, json("POST", "/v1/validate".into(), &req)).await;
    assert_eq!((s, body["hosting"].as_str()), (200, Some("shared")));
    let (s, body) = call(&app, json("POST", "/v1/deployments".into(), &req)).await;
    assert_eq!(s, 202, "{body}");
    let id = body["job"].as_u64().unwrap();
    let job = wait_job(&app, id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["placement"]["host_instance_id"],
        host.as_str()
    );

    // Moves: only to another shared host, named by its instance id; with no other host in
    // the fleet there is nowhere to go, said before any job starts.
    let move_uri = format!("/v1/deployments/{name}/move");
    for (body, status, field) in [
        (serde_json::json!({"to": "dedicated"}), 422, "to"),
        (
            serde_json::json!({"to": "shared", "host": "web-1"}),
            422,
            "host",
        ),
    ] {
        let (s, v) = call(&app, json("POST", move_uri.clone(), &body)).await;
        assert_eq!(
            (s, v["errors"][0]["field"].as_str()),
            (status, Some(field)),
            "{v}"
        );
    }
    let (s, v) = call(
        &app,
        json(
            "POST",
            move_uri.clone(),
            &serde_json::json!({"to": "shared"}),
        ),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no other shared host"),
        "{v}"
    );

    // The tenant's compose bundle, forwarded to hostd on its host as a job.
    let compose_uri = format!("/v1/deployments/{name}/compose");
    let raw = |body: Vec<u8>| {
        axum::http::Request::post(compose_uri.clone())
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let (s, _) = call(&app, raw(b"{\"compose\": 1}".to_vec())).await;
    assert_eq!(s, 400, "not a bundle");
    let (s, body) = call(&app, raw(vec![b' '; 50 << 10])).await;
    assert_eq!(s, 413, "{body}");
    let bad = serde_json::json!({"compose": "services: {}", "files": {"../etc/passwd": "eA=="}});
    let (s, body) = call(&app, json("POST", compose_uri.clone(), &bad)).await;
    assert_eq!(s, 422, "{body}");
    let bundle = serde_json::json!({
        "compose": "services:\n  web:\n    image: nginx:1.27\n    configs: [site]\nconfigs:\n  site: {file: ./site.conf}\n",
        "env": {"A": "1"},
        "files": {"site.conf": "c2VydmVyIHt9"},
    });
    let (s, body) = call(&app, json("POST", compose_uri.clone(), &bundle)).await;
    assert_eq!(s, 202, "{body}");
    let cjob = wait_job(&app, body["job"].as_u64().unwrap()).await;
    assert_eq!(cjob["state"], "succeeded", "{cjob}");
    assert_eq!(cjob["result"]["host_instance_id"], host.as_str());
    let (s, body) = call(
        &app,
        json("POST", "/v1/deployments/nowhere/compose".into(), &bundle),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let cjob = wait_job(&app, body["job"].as_u64().unwrap()).await;
    assert_eq!(cjob["state"], "failed", "{cjob}");
    // No such customer, so no key of its own to keep the bundle under: refused before
    // anything is changed.
    assert!(
        cjob["error"]
            .as_str()
            .unwrap()
            .contains("alias/m8trx-nowhere")
            && cjob["error"]
                .as_str()
                .unwrap()
                .contains("nothing was changed"),
        "{cjob}"
    );

    let all: Vec<String> = serde_json::from_value(job["all_lines"].clone()).unwrap();
    for step in [
        "ssm: ",
        "placement: reserved",
        "volume: created",
        "volume: attached",
        "hostd: ",
        "done",
    ] {
        assert!(
            all.iter().any(|l| l.contains(step)),
            "no {step:?} line in {all:?}"
        );
    }
    let (s, st) = call(
        &app,
        axum::http::Request::get(format!("/v1/deployments/{name}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            s,
            st["shared_host"].as_str(),
            st["reservation_state"].as_str()
        ),
        (200, Some(host.as_str()), Some("running"))
    );

    let (s, body) = call(
        &app,
        axum::http::Request::delete(format!("/v1/deployments/{name}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 202);
    let job = wait_job(&app, body["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

/// Fails the Nth PutParameter before it leaves the client: a real fault in a real call path.
#[derive(Debug)]
struct FailNthPut {
    n: usize,
    seen: AtomicU32,
}

impl aws_sdk_ssm::config::Intercept for FailNthPut {
    fn name(&self) -> &'static str {
        "fail-nth-put-parameter"
    }
    fn read_before_execution(
        &self,
        context: &aws_sdk_ssm::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_sdk_ssm::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if context
            .input()
            .downcast_ref::<aws_sdk_ssm::operation::put_parameter::PutParameterInput>()
            .is_some()
        {
            let seen = self.seen.fetch_add(1, Ordering::SeqCst) as usize + 1;
            if seen == self.n {
                return Err("injected PutParameter failure".into());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn ssm_failure_aborts_before_compute_and_restores_parameters() {
    let mut w = World::new().await;
    let name = w.customer("ssmfail").await;
    let host = w.host(0, 8192, 8, &[]).await;
    // brain-url exists from an earlier deploy with another value; it must be restored.
    let url_param = format!("{}brain-url", name.ssm_prefix());
    w.clients()
        .ssm
        .put_parameter()
        .name(&url_param)
        .value("http://old-brain:8080")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    let mut control = w.control.clone();
    let shared_conf = moto_conf().await;
    control.clients.ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&shared_conf)
            .interceptor(FailNthPut {
                n: 4,
                seen: AtomicU32::new(0),
            })
            .build(),
    );
    let spec = w.request(&name, "shared").validate().unwrap();
    let (progress, lines) = recorder();
    let err = control.deploy(&spec, &progress).await.unwrap_err();
    assert!(err.to_string().contains("PutParameter"), "{err}");
    let left = w.leftovers(&name).await;
    assert_eq!(
        left,
        [format!("parameter {url_param}")],
        "only the pre-existing parameter remains"
    );
    let url = w
        .clients()
        .ssm
        .get_parameter()
        .name(&url_param)
        .send()
        .await
        .unwrap();
    assert_eq!(
        url.parameter().unwrap().value(),
        Some("http://old-brain:8080"),
        "restored"
    );
    assert!(
        w.reservation(&host, &name).await.is_none(),
        "no placement after an SSM failure"
    );
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("rolled back")),
        "{:?}",
        lines.lock().unwrap()
    );
    w.cleanup().await;
}

#[tokio::test]
async fn dedicated_keep_volume_keeps_the_root_volume_until_a_plain_delete() {
    let mut w = World::new().await;
    let name = w.customer("dkeep").await;
    let spec = w.request(&name, "dedicated").validate().unwrap();
    let out = w.control.deploy(&spec, &Progress::silent()).await.unwrap();
    let control::ops::Placement::Dedicated(p) = &out.placement else {
        panic!("{out:?}")
    };
    let root = p.root_volume_id.clone().unwrap();
    let kept = w
        .control
        .delete(&name, true, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(kept.instances_terminated, [p.instance_id.as_str()]);
    let left = w.leftovers(&name).await;
    assert_eq!(left.len(), 1, "only the kept root volume: {left:?}");
    assert!(left[0].contains(&root), "{left:?}");
    let gone = w
        .control
        .delete(&name, false, &Progress::silent())
        .await
        .unwrap();
    assert_eq!(gone.volumes_deleted, [root.as_str()]);
    assert!(w.leftovers(&name).await.is_empty());
    w.cleanup().await;
}

#[tokio::test]
async fn concurrent_placements_never_over_commit_a_host() {
    let mut w = World::new().await;
    let host = w.host(0, 8192, 1, &[]).await; // room for exactly one tenant
    let need = Need {
        memory_mib: 1024,
        cpu_millis: 500,
    };
    let tenants: Vec<String> = (0..4).map(|i| unique(&format!("race{i}"))).collect();
    let ec2 = w.clients().ec2.clone();
    let ssm = w.clients().ssm.clone();
    let fleet = w.control.config.fleet.clone();
    let runs = tenants.iter().map(|t| {
        let (ec2, ssm, fleet, t) = (ec2.clone(), ssm.clone(), fleet.clone(), t.clone());
        tokio::spawn(async move {
            inventory::place(&ec2, &ssm, &fleet, &t, need, None, &Progress::silent()).await
        })
    });
    let results: Vec<_> = futures_join(runs).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, ControlError::NoCapacity(_)), "{e}");
        }
    }
    let h = inventory::get_host(&w.clients().ec2, &host).await.unwrap();
    eprintln!(
        "concurrent placements: {won} of {} won the single slot",
        results.len()
    );
    assert_eq!(won, 1, "exactly one placement wins the single slot");
    assert_eq!(
        h.reservations.len(),
        won,
        "ledger matches the winners: {:?}",
        h.reservations
    );
    assert!(h.free().slots >= 0 && h.free().memory_mib >= 0);
    let lock = w
        .clients()
        .ssm
        .get_parameter()
        .name(inventory::lock_parameter(&host))
        .send()
        .await;
    assert!(lock.is_err(), "the placement lock is removed after use");
    for t in &tenants {
        let _ = inventory::release(&w.clients().ec2, &host, t).await;
    }
    w.cleanup().await;
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn cli_exit_codes_name_the_field_and_missing_prerequisites() {
    let bin = env!("CARGO_BIN_EXE_control");
    let out = std::process::Command::new(bin)
        .args([
            "validate",
            "--name",
            "acme",
            "--template",
            "agent",
            "--hosting",
            "shared",
            "--regulated",
        ])
        .env("M8TRX_BRAIN_KEY", "br_x")
        .env("M8TRX_TAILSCALE_AUTH_KEY", "tskey-x")
        .env("M8TRX_AGENT_FETCH_PAT", "ghp_x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hosting: regulated customers run on dedicated EC2 only"),
        "{err}"
    );

    // A deploy whose customer has no CMK stops before writing anything: exit 4.
    let name = unique("cli");
    let out = std::process::Command::new(bin)
        .args([
            "--brain-url",
            "http://brain:8080",
            "deploy",
            "--name",
            &name,
            "--template",
            "baseline",
        ])
        .env("M8TRX_AWS_ENDPOINT", moto())
        .env("AWS_ACCESS_KEY_ID", "AKIDCONTROLTEST")
        .env("AWS_SECRET_ACCESS_KEY", "control-secret")
        .env("AWS_REGION", REGION)
        .env("M8TRX_BRAIN_KEY", "br_x")
        .env("M8TRX_TAILSCALE_AUTH_KEY", "tskey-x")
        .env("M8TRX_AGENT_FETCH_PAT", "ghp_x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("alias/m8trx-{name} does not exist")),
        "{err}"
    );
    let w = World::new().await;
    let cname = CustomerName::parse(&name).unwrap();
    assert!(w.leftovers(&cname).await.is_empty());
}
