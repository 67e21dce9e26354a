//! A tenant's compose file and env file, as hostd reads them on a deploy and in
//! `hostd ctl check`: the loader, the policy and the plan must never panic, whatever the
//! bytes (durations, sizes, anchors, merge keys, interpolation, every short and long form).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line, when it starts with `#!env `, is the env file (`;`-separated).
    let (env, compose) = match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!env ") => (first[6..].replace(';', "\n"), rest),
        _ => (String::new(), text),
    };
    let env = hostd::compose::parse_env_file(&env).unwrap_or_default();
    let bundle = hostd::compose::Bundle {
        compose: compose.to_owned(),
        env,
        ..Default::default()
    };
    // The agent template's limits: the baseline's differ only in the bounds' numbers.
    let checked = hostd::check::check(&bundle, &hostd::spec::Template::Agent.default_limits());
    let _ = hostd::check::text(&checked, std::path::Path::new("fuzz.yml"));
});
