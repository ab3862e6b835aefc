//! The `chargesite` command line (CONTRACT §1): parsing and process wiring only.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chargesite::config;

#[derive(Parser)]
#[command(
    name = "chargesite",
    version,
    about = "Site agent for EV charging: local OCPP central system with a durable store and an MQTT uplink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (else $CHARGESITE_CONFIG, else /etc/chargesite/chargesite.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit.
    CheckConfig {
        /// Config file (else $CHARGESITE_CONFIG, else /etc/chargesite/chargesite.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a password on stdin and print the `password_hash` for it.
    HashPassword,
}

/// Exit status for bad usage or bad config (CONTRACT §1).
const EXIT_USAGE: u8 = 2;

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("CHARGESITE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

fn load_config(flag: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    let path = config_path(flag);
    config::load(&path).map_err(|e| {
        eprintln!("chargesite: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load_config(config) {
            Ok(c) => {
                println!(
                    "config ok: site {} listening on {}, {} charger(s) listed, uplink {}",
                    c.site_id,
                    c.ocpp.listen,
                    c.ocpp.chargers.len(),
                    c.uplink
                        .as_ref()
                        .map_or("none (buffer only)", |u| u.url.as_str())
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashPassword => hash_password(),
        Command::Run { config } => {
            let config = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing();
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chargesite: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("chargesite: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .unwrap_or(&input);
    if password.is_empty() {
        eprintln!("chargesite: password on stdin is empty");
        return ExitCode::from(EXIT_USAGE);
    }
    match chargesite::password::hash(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chargesite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHARGESITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chargesite")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            signals.cancel();
        });
        chargesite::agent::run(config, shutdown, |agent| {
            // Test rigs and field engineers read this line to find the port.
            println!("listening on {}", agent.local_addr);
        })
        .await
        .context("agent failed")
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the daemon still runs; ctrl-c is the fallback.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
