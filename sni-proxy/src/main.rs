//! `sni-proxy`: not built yet (issue #3). The binary exists so the workspace layout is final;
//! it refuses to run rather than pretend.

use clap::Parser;

/// Command line of `sni-proxy`; the real options arrive with issue #3.
#[derive(Parser)]
#[command(
    version,
    about = "Public TLS SNI passthrough router of an m8trx shared host (not implemented yet: issue #3)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("sni-proxy is not implemented yet (issue #3); nothing was started")
}
