//! The tenant's six SSM parameters (moto) read by hostd as the customer's role and written
//! to the tenant volume: files 0400 owned by the remapped root, visible read-only only in the
//! services that list them (external secrets); compose secrets and configs from an env-file
//! variable and inline content, and a bundle file sent with `--include`, mounted read-only
//! where the file says with the ids and mode it names; a service that lists nothing sees
//! nothing; `hostd ctl rotate-secrets` picks up a changed value and restarts the containers;
//! no value ever appears in hostd's log, its output or its state on the host disk.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture: a panic is the failure report

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use support::{
    busybox_tarball, env, put_parameters, require_root, tenant_docker, text, write_spec, Cleanup,
    Daemon, LEAVES,
};

fn app_output(name: &str) -> String {
    output_of(name, "app")
}

fn output_of(name: &str, service: &str) -> String {
    let container = format!("m8trx-{name}-{service}-1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = tenant_docker(name, &["logs", &container]);
        let out = text(&o);
        if out.contains("END") {
            return out;
        }
        assert!(Instant::now() < deadline, "no output from the app: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn parameters_reach_the_tenant_as_files_and_rotate() {
    require_root();
    let id = std::process::id();
    let name = format!("sec-{id}");
    let dir = std::env::temp_dir().join(format!("m8trx-hostd-secrets-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    put_parameters(&name, "v1");
    let _cleanup = Cleanup {
        dir: dir.clone(),
        names: vec![name.clone()],
    };
    let d = Daemon::start_with(
        &dir,
        &[
            "--secrets",
            "ssm",
            "--aws-endpoint",
            &env("M8TRX_MOTO_ENDPOINT"),
            "--host-id",
            "m8trx-test-host",
        ],
    );
    let spec = write_spec(&dir, &name, "256Mi");
    let created = d.ok(&["create", "-f", spec.to_str().unwrap()]);

    let secrets = dir.join("tenants").join(&name).join("secrets");
    let base = support::subuid_base(&name);
    for leaf in LEAVES {
        let path = secrets.join(leaf);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("secret-{leaf}-v1")
        );
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (m.mode() & 0o777, m.uid(), m.gid()),
            (0o400, base, base),
            "{leaf}"
        );
    }

    let (image, tar) = busybox_tarball(&dir);
    d.ok(&["load", &name, "-i", tar.to_str().unwrap()]);
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  app:\n    image: {image}\n    \
             command: [sh, -c, 'cat /run/secrets/brain-key; echo; cat /run/secrets/db; echo; \
             cat /etc/app/greeting; echo; cat /srv/site/index.html; ls -ln /etc/app/greeting; \
             if echo x > /run/secrets/brain-key; then echo writable; fi; \
             if echo x > /srv/site/index.html; then echo writable; fi; echo END; exec sleep 600']\n    \
             secrets: [brain-key, db]\n    \
             configs: [{{source: greeting, target: /etc/app/greeting, uid: '1000', mode: 0440}}]\n    \
             volumes: ['./site:/srv/site:ro']\n  \
             other:\n    image: {image}\n    \
             command: [sh, -c, 'ls /run/secrets /etc/app 2>&1; echo END; exec sleep 600']\n\
             secrets:\n  brain-key: {{external: true}}\n  db: {{environment: DB_PASS}}\n\
             configs:\n  greeting: {{content: hello-config}}\n"
        ),
    )
    .unwrap();
    let env_file = dir.join("vars.env");
    std::fs::write(&env_file, "DB_PASS=envpass-42\n").unwrap();
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "bundle-page").unwrap();
    let deployed = d.ok(&[
        "deploy",
        &name,
        "-f",
        compose.to_str().unwrap(),
        "--env-file",
        env_file.to_str().unwrap(),
        "--include",
        "site",
    ]);
    let out = app_output(&name);
    for want in [
        "secret-brain-key-v1",
        "envpass-42",
        "hello-config",
        "bundle-page",
    ] {
        assert!(out.contains(want), "{want} missing: {out}");
    }
    assert!(
        out.contains("-r--r-----") && out.contains(" 1000 "),
        "the config has the mode and owner the file names: {out}"
    );
    assert!(
        !out.contains("writable"),
        "read-only in the container: {out}"
    );
    // A service that lists no secret or config sees none of them.
    let other = output_of(&name, "other");
    assert!(
        other.contains("No such file or directory")
            && !other.contains("brain-key")
            && !other.contains("greeting"),
        "{other}"
    );
    // The files live on the tenant volume, in one directory per bundle.
    let bundles = dir.join("tenants").join(&name).join("bundle");
    // (Names only: a DirEntry keeps its directory open, which would hold the volume busy.)
    let kept: Vec<String> = std::fs::read_dir(&bundles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");

    // A new value in SSM: rotate-secrets rewrites the file and restarts the app.
    put_parameters(&name, "v2");
    let rotated = d.ok(&["rotate-secrets", &name]);
    assert!(
        rotated.contains(&format!("m8trx-{name}-app-1")),
        "{rotated}"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("brain-key")).unwrap(),
        "secret-brain-key-v2"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app_output(&name).contains("secret-brain-key-v2") {
        assert!(
            Instant::now() < deadline,
            "the restarted app did not read the new value"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Nothing secret in what hostd printed or logged, nor in its state on the host disk:
    // the bundle (inline content, the env file) lives only on the tenant's own volume.
    let log = std::fs::read_to_string(dir.join("hostd.log")).unwrap();
    let state = read_all(&dir.join("state"));
    assert!(
        state.contains("\"revision\""),
        "the record is in the state dir: {state}"
    );
    assert!(
        !state.contains("hello-config"),
        "inline content on the host disk:\n{state}"
    );
    for out in [&created, &deployed, &rotated, &log, &state] {
        assert!(!out.contains("secret-"), "a secret value leaked:\n{out}");
        assert!(!out.contains("envpass-42"), "a secret value leaked:\n{out}");
    }

    d.ok(&["destroy", &name, "--wipe"]);
    assert!(!secrets.exists());
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every file under `dir`, concatenated.
fn read_all(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push_str(&read_all(&p));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    out
}
