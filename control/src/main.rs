//! `control`: not built yet (issue #7). The binary exists so the workspace layout is final;
//! it refuses to run rather than pretend.

use clap::Parser;

/// Command line of `control`; the real options arrive with issue #7.
#[derive(Parser)]
#[command(
    version,
    about = "Control plane: deploy API, placement on shared hosts or dedicated EC2 (not implemented yet: issue #7)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("control is not implemented yet (issue #7); nothing was started")
}
