//! `nrl`: parse the command line, set up logging, run the chosen subcommand. Everything testable
//! lives in the library.

use clap::{CommandFactory, FromArgMatches};
use nrl_registry::cli::{Cli, Command, LogFormat};
use nrl_registry::config::{Origins, ServerConfig};
use nrl_registry::{server, telemetry};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a search allocates and frees ~160 times, and glibc's
/// malloc/free were a quarter of its instructions (loadtest/PROFILE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// BSD sysexits EX_USAGE: the configuration or command line is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // Parsed in two steps to keep the matches: they say which settings came from flags and which
    // from the environment, so that configuration errors name what the user typed.
    let parsed = Cli::command().try_get_matches().and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nrl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(mut args) => {
            if let Some(("serve", serve)) = matches.subcommand() {
                args.origins = Origins::of(serve);
            }
            let config = match ServerConfig::try_from(args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("nrl serve: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Inside the runtime: the trace exporter's channel runs on it.
            let exporting = match runtime
                .block_on(async { telemetry::init(cli.log_format == LogFormat::Json, config.otlp.as_ref()) })
            {
                Ok(exporting) => exporting,
                Err(e) => {
                    eprintln!("nrl serve: cannot start the trace export: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = runtime.block_on(serve(config));
            // After the drain, while the runtime still runs: the last spans, within a bound.
            if let Some(exporting) = exporting {
                exporting.shutdown();
            }
            code
        }
        Command::Client(command) => runtime.block_on(nrl_registry::cli::client::run(command)),
    }
}

async fn serve(config: ServerConfig) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("nrl serve: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match server::run(config, listener, server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
