//! `cred-broker`: not built yet (issue #4). The binary exists so the workspace layout is final;
//! it refuses to run rather than pretend.

use clap::Parser;

/// Command line of `cred-broker`; the real options arrive with issue #4.
#[derive(Parser)]
#[command(
    version,
    about = "Host-local per-tenant AWS credential broker of an m8trx shared host (not implemented yet: issue #4)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("cred-broker is not implemented yet (issue #4); nothing was started")
}
