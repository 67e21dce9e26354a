//! `hostd`: not built yet (issue #5). The binary exists so the workspace layout is final;
//! it refuses to run rather than pretend.

use clap::Parser;

/// Command line of `hostd`; the real options arrive with issue #5.
#[derive(Parser)]
#[command(
    version,
    about = "Host daemon and operator CLI of an m8trx shared host (not implemented yet: issue #5)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("hostd is not implemented yet (issue #5); nothing was started")
}
