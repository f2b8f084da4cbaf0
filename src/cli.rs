//! The command line: `serve`, `migrate`, `health`, `keys hash`, `policy check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "teamgate",
    version,
    about = "Organizations, members, roles and permission checks over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(CommonArgs),
    /// Ask a running server whether it is serving (grpc.health.v1.Health/Check over plaintext
    /// gRPC): exit 0 when SERVING, 1 otherwise. The container image's health check.
    Health(HealthArgs),
    /// Work with service keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random service key and the hash to put in the configuration.
    Hash,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print every problem with its line; with --database-url,
    /// also list what that database references that the policy no longer declares (the
    /// check `serve` makes before starting), without changing anything.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// Compare the policy with this database, e.g. postgres://user@host/db.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Configuration file (TOML) for the other database settings (schema, timeouts).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server's address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// The health service name to ask about; the empty default is the whole server.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,
    /// Give up (and report unhealthy) after this long.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://teamgate.db?mode=rwc or postgres://user@host/db.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format: auto, human or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on (default 127.0.0.1:50051).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Redis URL for the shared decision cache.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Policy file (TOML); the embedded default policy when absent.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Allow a non-loopback listener with no service keys configured (anyone who can reach
    /// the port can then call every RPC).
    #[arg(long)]
    pub insecure_allow_remote: bool,
}

impl CommonArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            database_url: self.database_url.clone(),
            log_format: self.log_format.clone(),
            ..Overrides::default()
        }
    }
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            redis_url: self.redis_url.clone(),
            policy: self.policy.clone(),
            insecure_allow_remote: self.insecure_allow_remote,
            ..self.common.overrides()
        }
    }
}
