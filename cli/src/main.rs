//! `ambit`: run a local mesh, and a built-in echo server for demos and tests.

use ambit::{authz, echo, local};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ambit",
    version,
    about = "Ambit: an ambient-style service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole mesh on this host, without Kubernetes.
    Local(local::LocalArgs),
    /// A small test server: HTTP/1.1 and h2c echo (and plain TCP), answering with who it is and what it got.
    Echo(echo::EchoArgs),
    /// Authorization: `ambit authz check` explains which tier allows or denies a request, and why.
    Authz(authz::AuthzArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Local(args) => local::run(args),
        Command::Echo(args) => run_echo(args),
        Command::Authz(args) => Ok(authz::run(args)),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run_echo(args: echo::EchoArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = ambit_core::signal::shutdown();
        echo::run(args, shutdown).await
    })?;
    Ok(0)
}
