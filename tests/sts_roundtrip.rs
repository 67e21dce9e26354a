//! Proves the harness's moto server answers a real aws-sdk-sts client the way the
//! credential broker will use it: AssumeRole with session name, transitive session tag,
//! source identity and external id, then the returned credentials identify as the role.

use aws_sdk_sts::config::{Credentials, Region};
use aws_sdk_sts::types::Tag;
use m8trx_e2e::env;
use m8trx_spec::CustomerName;

fn sts_client(creds: Credentials) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(env("M8TRX_MOTO_ENDPOINT"))
        .credentials_provider(creds)
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

#[tokio::test]
async fn assume_role_round_trip_against_moto() {
    let host = sts_client(Credentials::new(
        "AKIDHOSTTEST",
        "host-secret",
        None,
        None,
        "m8trx-e2e-host",
    ));
    let customer = CustomerName::parse("acme").expect("valid name");
    let role_arn = "arn:aws:iam::123456789012:role/m8trx-customer-acme";

    let out = host
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(customer.role_session_name())
        .external_id("ext-acme-0001")
        .source_identity("m8trx-host-e2e")
        .duration_seconds(3600)
        .tags(
            Tag::builder()
                .key("Customer")
                .value(customer.as_str())
                .build()
                .expect("tag"),
        )
        .transitive_tag_keys("Customer")
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "AssumeRole against moto at {} failed: {e:?}",
                env("M8TRX_MOTO_ENDPOINT")
            )
        });

    let creds = out.credentials.expect("AssumeRole returned credentials");
    assert!(!creds.access_key_id.is_empty() && !creds.secret_access_key.is_empty());
    assert!(
        !creds.session_token.is_empty(),
        "role credentials carry a session token"
    );
    let assumed = out.assumed_role_user.expect("assumed role user");
    assert_eq!(
        assumed.arn,
        "arn:aws:sts::123456789012:assumed-role/m8trx-customer-acme/m8trx-acme"
    );

    let as_role = sts_client(Credentials::new(
        creds.access_key_id,
        creds.secret_access_key,
        Some(creds.session_token),
        None,
        "m8trx-e2e-role",
    ));
    let who = as_role
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with the assumed-role credentials");
    assert_eq!(
        who.arn(),
        Some(assumed.arn.as_str()),
        "moto must see the assumed role, not the host"
    );
    assert_eq!(who.account(), Some("123456789012"));
}
