//! The `nrl` command line: `nrl serve` runs the server; the other subcommands are a client for
//! operators and demos (see `cli::client`).

pub mod client;

use crate::config::ServeArgs;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "nrl", version, about = "National Record Locator pointer registry")]
pub struct Cli {
    /// Log format for `serve` (logs go to stderr).
    #[arg(long, env = crate::config::ENV_LOG_FORMAT, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Built once per process, so the size of `serve`'s settings (text until `config` checks them) costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the registry server.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}
