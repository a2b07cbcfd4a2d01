//! The `silo` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;
use silo_control_plane::app::Application;
use silo_control_plane::config::{Cli, Command};

/// mimalloc instead of the system allocator: a request allocates dozens of small objects
/// (JSON, tokens, rows), and glibc's malloc/free were a tenth of the point-query profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; stdout carries only what scripts read (the listening address).
    // `_log_writer` flushes what is queued when main returns.
    let _log_writer = silo_control_plane::logging::init();
    let cli_result = match &cli.command {
        Command::Serve(_) => None,
        Command::Init(args) => Some(silo_control_plane::cli::init(args)),
        Command::VerifyCertificate(args) => Some(silo_control_plane::cli::verify_certificate(args)),
        Command::AdminToken { client, command } => {
            Some(silo_control_plane::cli::admin_token(client, command))
        }
        Command::Tenants { client, command } => {
            Some(silo_control_plane::cli::tenants(client, command))
        }
        Command::Audit { client, command } => Some(silo_control_plane::cli::audit(client, command)),
        Command::Accounts { client, command } => {
            Some(silo_control_plane::cli::accounts(client, command))
        }
        Command::Migrate { client, command } => {
            Some(silo_control_plane::cli::migrate(client, command))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "silo", &mut std::io::stdout());
            Some(Ok(()))
        }
    };
    if let Some(result) = cli_result {
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", e.0);
                std::process::ExitCode::FAILURE
            }
        };
    }
    let Command::Serve(args) = cli.command else {
        return std::process::ExitCode::FAILURE;
    };
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
        let app = Application::build(*args).await?;
        let addr = app.local_addr()?;
        tracing::info!(%addr, "listening");
        println!("silo listening on {}://{addr}", app.scheme());
        app.run_until_stopped().await
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
