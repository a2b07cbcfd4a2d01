//! The `silo` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;
use silo_control_plane::app::Application;
use silo_control_plane::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; stdout carries only what scripts read (the listening address).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SILO_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let app = Application::build(args).await?;
                let addr = app.local_addr()?;
                tracing::info!(%addr, "listening");
                println!("silo listening on http://{addr}");
                app.run_until_stopped().await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
