//! The `chargesite` command line (CONTRACT §1): parsing and process wiring only.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chargesite::config;

/// mimalloc, not glibc malloc: frames are decoded on the runtime's threads and freed on
/// the store thread, a pattern glibc serves poorly (~30 % of the agent's CPU at load, and
/// more RSS). Measured in `cargo bench --bench ocpp_load`; see the README.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc's `mimalloc.h` (v3).
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// mimalloc commits its arenas eagerly on Linux by default, and never purges memory it
/// committed that way: the agent's RSS then stays at its high-water mark (41 MB idle with
/// 1,000 chargers instead of 26 MB). Committing on demand lets freed pages go back.
///
/// It must run before the first allocation, which reserves the first arena, and Rust's
/// runtime allocates before `main`: so it is a constructor, run by the loader (ELF's
/// `.init_array`; the agent is built for Linux gateways).
#[cfg(target_os = "linux")]
extern "C" fn tune_allocator() {
    // SAFETY: mi_option_set is not thread-safe; constructors run before any thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

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
enum TlsVerb {
    /// Create the site CA (once) and a server certificate for the gateway.
    Init {
        /// A host name or IP address chargers use to reach the gateway (repeatable;
        /// default: this machine's host name and `localhost`).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// A client certificate for charger CP_ID (CN=CP_ID, O=cpo_name, serialNumber=serial
    /// from its [[ocpp.chargers]] entry).
    Issue {
        /// The charger's id.
        cp_id: String,
    },
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
    /// What the running agent sees now: chargers, connectors, sessions, uplink, store.
    /// Asks it over the local API (the Unix socket, else HTTP to [status] listen; set
    /// CHARGESITE_STATUS_PASSWORD where that address needs Basic auth).
    Status {
        /// Config file (else $CHARGESITE_CONFIG, else /etc/chargesite/chargesite.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the agent's JSON (docs/status.md) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Commissioning a charger through the running agent: config get [KEY...], config set
    /// KEY VALUE, reset [--hard], trigger MESSAGE [CONNECTOR], unlock CONNECTOR,
    /// availability CONNECTOR operative|inoperative. OCPP 1.6 and 2.0.1 alike (a 2.0.1 key
    /// is Component.Variable). Needs the local API socket, or CHARGESITE_STATUS_PASSWORD.
    Charger {
        /// Config file (else $CHARGESITE_CONFIG, else /etc/chargesite/chargesite.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The charger's id.
        cp_id: String,
        /// The verb and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        action: Vec<String>,
    },
    /// The site's certificates for wss:// (security profiles 2 and 3): `tls init` creates a
    /// site CA and the gateway's server certificate in the state directory and prints the
    /// CA fingerprint to load into chargers; `tls issue CP_ID` makes a client certificate
    /// for a charger that cannot make a CSR.
    Tls {
        /// Config file (else $CHARGESITE_CONFIG, else /etc/chargesite/chargesite.toml).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Where the files go (default: `tls/` beside the store's database).
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        verb: TlsVerb,
    },
    /// Simulated OCPP 1.6 or 2.0.1 chargers against any central system (test rigs, field
    /// checks).
    Simulate(SimulateArgs),
    /// The whole story on this machine, no configuration: an embedded broker, the agent,
    /// simulated chargers with OTP orders, a link outage and its recovery.
    #[cfg(feature = "embedded-broker")]
    Demo,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Central system URL; each charger connects to URL/<id>, e.g. ws://gateway:9000/ocpp
    #[arg(long)]
    url: String,
    /// Number of chargers (1 to 10000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
    chargers: u32,
    /// Charger ids are PREFIX0001, PREFIX0002, ...
    #[arg(long, default_value = "SIM")]
    id_prefix: String,
    /// OCPP version of the chargers: 1.6, 2.0.1, or mixed (alternating, the first 1.6).
    #[arg(long, default_value = "1.6")]
    ocpp: chargesite::sim::Fleet,
    /// Sessions per charger.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    sessions: u32,
    /// Seconds (wall clock) each session charges.
    #[arg(long, default_value_t = 30)]
    session_secs: u64,
    /// Milliseconds (wall clock) between MeterValues.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    meter_interval_ms: u64,
    /// Charger clock speed: 60 makes each real second a minute of charging.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Id tag (or OTP) to present; repeat for several, used round-robin by charger.
    #[arg(long)]
    tag: Vec<String>,
    /// A file of id tags or OTPs, one per line (added to --tag).
    #[arg(long)]
    tags_file: Option<PathBuf>,
    /// HTTP Basic auth password for every charger (user = charger id).
    #[arg(long)]
    password: Option<String>,
    /// Fault to inject: drop, clock or reboot, optionally =CHARGER_INDEX (0-based); repeatable.
    #[arg(long)]
    fault: Vec<chargesite::sim::Fault>,
    /// Seconds a dropped charger stays away.
    #[arg(long, default_value_t = 5)]
    offline_secs: u64,
    /// Maximum charger power, kW.
    #[arg(long, default_value_t = 22.0)]
    max_power_kw: f64,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Begin each session only when the central system asks (RemoteStartTransaction /
    /// RequestStartTransaction), as a charger waiting for a driver does: for
    /// `chargesite charger CP_ID test-session`.
    #[arg(long)]
    wait_remote_start: bool,
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
            Ok(c) if c.ocpp.tls.is_some() && tls_config_error(&c) => ExitCode::from(EXIT_USAGE),
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
        Command::Status { config, json } => match load_config(config) {
            Ok(c) => status(&c, json),
            Err(code) => code,
        },
        Command::Charger {
            config,
            cp_id,
            action,
        } => {
            if !chargesite::ocpp::handshake::valid_cp_id(&cp_id) {
                eprintln!(
                    "chargesite charger: CP_ID {cp_id:?} is not a charger id (1-48 of A-Z a-z 0-9 . _ : -)"
                );
                return ExitCode::from(EXIT_USAGE);
            }
            if action.first().map(String::as_str) == Some("test-session") {
                let t = match chargesite::status::test_session::parse(&action[1..]) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("chargesite charger: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                return match load_config(config) {
                    Ok(c) => test_session(&c, &cp_id, &t),
                    Err(code) => code,
                };
            }
            let verb = match chargesite::status::verbs::parse_args(&action) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("chargesite charger: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            match load_config(config) {
                Ok(c) => charger(&c, &cp_id, &verb),
                Err(code) => code,
            }
        }
        Command::Tls { config, dir, verb } => {
            let path = config_path(config);
            match config::load_unchecked(&path) {
                Ok(c) => tls(&c, dir, verb),
                Err(e) => {
                    eprintln!("chargesite: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Simulate(args) => simulate(args),
        #[cfg(feature = "embedded-broker")]
        Command::Demo => demo(),
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

/// `check-config`: the wss:// certificates and keys must load as the agent loads them.
fn tls_config_error(c: &config::Config) -> bool {
    match c
        .ocpp
        .tls
        .as_ref()
        .map(chargesite::ocpp::tls::server_config)
    {
        Some(Err(e)) => {
            eprintln!("chargesite: {e}");
            true
        }
        _ => false,
    }
}

/// Where `tls init` puts its files: `--dir`, else `tls/` beside the database.
fn tls_dir(c: &config::Config, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| {
        c.store
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .join("tls")
    })
}

/// Writes `text` to a new file `path` (never over an existing one), with `mode`.
fn write_new(path: &std::path::Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn tls(c: &config::Config, dir: Option<PathBuf>, verb: TlsVerb) -> ExitCode {
    use chargesite::pki;
    let dir = tls_dir(c, dir);
    let now = chargesite::time::now();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("chargesite tls: {what}: {e}");
        ExitCode::FAILURE
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(&format!("cannot create {}", dir.display()), &e);
    }
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let cpo_name = c.ocpp.cpo_name.as_deref();
    match verb {
        TlsVerb::Init { names } => {
            let names = if names.is_empty() {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default();
                [host, "localhost".to_string()]
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .collect()
            } else {
                names
            };
            if !ca_cert.exists() {
                let ca = match pki::new_ca(&c.site_id, cpo_name, now) {
                    Ok(ca) => ca,
                    Err(e) => return fail("cannot create the site CA", &e),
                };
                if let Err(e) = write_new(&ca_key, &ca.key_pem, 0o600)
                    .and_then(|()| write_new(&ca_cert, &ca.cert_pem, 0o644))
                {
                    return fail("cannot write the site CA", &e);
                }
                println!("created the site CA: {}", ca_cert.display());
            } else {
                println!("the site CA exists: {} (kept)", ca_cert.display());
            }
            let (server_cert, server_key) = (dir.join("server.pem"), dir.join("server.key"));
            if server_cert.exists() {
                println!(
                    "the server certificate exists: {} (kept; remove it and server.key to make a new one)",
                    server_cert.display()
                );
            } else {
                let (Ok(cert_pem), Ok(key_pem)) = (
                    std::fs::read_to_string(&ca_cert),
                    std::fs::read_to_string(&ca_key),
                ) else {
                    return fail("cannot read the site CA", &"ca.pem or ca.key");
                };
                let leaf = match pki::issue_server(&cert_pem, &key_pem, &names, now) {
                    Ok(l) => l,
                    Err(e) => return fail("cannot issue the server certificate", &e),
                };
                // The chain a charger is sent: the server certificate, then the CA.
                if let Err(e) = write_new(&server_key, &leaf.key_pem, 0o600).and_then(|()| {
                    write_new(
                        &server_cert,
                        &format!("{}{}", leaf.cert_pem, cert_pem),
                        0o644,
                    )
                }) {
                    return fail("cannot write the server certificate", &e);
                }
                println!(
                    "created the server certificate for {}: {}",
                    pki::describe_sans(&names),
                    server_cert.display()
                );
            }
            let der = std::fs::read_to_string(&ca_cert).ok().and_then(|p| {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::CertificateDer::from_pem_slice(p.as_bytes()).ok()
            });
            if let Some(der) = der {
                println!("site CA SHA-256 fingerprint (load ca.pem into each charger as its CSMS root certificate):");
                println!("  {}", pki::fingerprint(&der));
            }
            println!("\nin [ocpp] of the config:");
            println!("  tls_listen = \"0.0.0.0:9443\"");
            println!("  tls_cert_file = \"{}\"", server_cert.display());
            println!("  tls_key_file = \"{}\"", server_key.display());
            println!("  client_ca_file = \"{}\"", ca_cert.display());
            println!("keep ca.key off the gateway once the chargers have their certificates (docs/ocpp.md)");
            ExitCode::SUCCESS
        }
        TlsVerb::Issue { cp_id } => {
            if !chargesite::ocpp::handshake::valid_cp_id(&cp_id) {
                eprintln!("chargesite tls issue: {cp_id:?} is not a charger id");
                return ExitCode::from(EXIT_USAGE);
            }
            let entry = c.ocpp.chargers.get(&cp_id);
            let cn = entry.and_then(|e| e.cert_cn.as_deref()).unwrap_or(&cp_id);
            let serial = entry.and_then(|e| e.serial.as_deref());
            let (Ok(cert_pem), Ok(key_pem)) = (
                std::fs::read_to_string(&ca_cert),
                std::fs::read_to_string(&ca_key),
            ) else {
                return fail(
                    &format!("no site CA in {}", dir.display()),
                    &"run `chargesite tls init` first",
                );
            };
            let issued = match pki::issue_client(&cert_pem, &key_pem, cn, cpo_name, serial, now) {
                Ok(i) => i,
                Err(e) => return fail("cannot issue the certificate", &e),
            };
            let (crt, key) = (
                dir.join(format!("{cp_id}.pem")),
                dir.join(format!("{cp_id}.key")),
            );
            if let Err(e) = write_new(&key, &issued.key_pem, 0o600)
                .and_then(|()| write_new(&crt, &issued.cert_pem, 0o644))
            {
                return fail(
                    "cannot write the certificate (an older one is not overwritten)",
                    &e,
                );
            }
            println!(
                "created {} and {} for charger {cp_id} (CN={cn}{}{}), valid {} years",
                crt.display(),
                key.display(),
                cpo_name.map(|o| format!(", O={o}")).unwrap_or_default(),
                serial
                    .map(|s| format!(", serialNumber={s}"))
                    .unwrap_or_default(),
                pki::LEAF_YEARS
            );
            if entry.is_none_or(|e| e.security_profile != 3) {
                println!(
                    "note: set security_profile = 3 in its [[ocpp.chargers]] entry to require it"
                );
            }
            ExitCode::SUCCESS
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

/// `chargesite charger CP_ID ...`: the verb through the running agent; exit 0 when the
/// charger did it, 1 when it refused, did not answer, or is not connected (the reason
/// printed).
fn charger(
    config: &config::Config,
    cp_id: &str,
    verb: &chargesite::status::verbs::Verb,
) -> ExitCode {
    use chargesite::ocpp::frame::Version;
    use chargesite::status::{client, verbs};
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let (targets, password) = local_api(config);
    let body = serde_json::to_string(verb).unwrap_or_default();
    // The agent gives the charger 30 s; a little more for the way there and back.
    let path = format!("/api/v1/chargers/{cp_id}/command");
    let asked = client::post(
        &targets,
        &path,
        body,
        password.as_deref(),
        std::time::Duration::from_secs(40),
    );
    let answer = match runtime.block_on(asked) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chargesite: {e}; is the agent running (systemctl status chargesite)?");
            return ExitCode::FAILURE;
        }
    };
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    match answer.status {
        200 => {}
        401 => {
            eprintln!(
                "chargesite: {} wants a password for charger verbs: set CHARGESITE_STATUS_PASSWORD, or run this on the gateway as the service's user or root (Unix socket)",
                answer.from
            );
            return ExitCode::FAILURE;
        }
        code => {
            let message = body
                .pointer("/error/message")
                .and_then(|m| m.as_str())
                .map_or_else(|| answer.body.trim().to_string(), str::to_string);
            eprintln!(
                "chargesite: {cp_id}: {} (HTTP {code})",
                verbs::printable(&message)
            );
            // The agent found the verb itself wrong (a 2.0.1 key that is not
            // Component.Variable): bad usage, as CONTRACT §1 has it.
            return if code == 400 {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            };
        }
    }
    let version = match body["ocpp_version"].as_str() {
        Some("2.0.1") => Version::V201,
        _ => Version::V16,
    };
    let action = body["action"].as_str().unwrap_or("?");
    let verdict = verbs::verdict(verb, version, &body["answer"]);
    println!("{cp_id} (OCPP {}): {action}", version.as_str());
    for line in &verdict.lines {
        println!("  {}", verbs::printable(line));
    }
    if verdict.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "chargesite: {cp_id} refused: {}",
            verbs::printable(&verdict.lines.join("; "))
        );
        ExitCode::FAILURE
    }
}

/// `chargesite charger CP_ID test-session`: remote start with a test tag, a live progress
/// line, the stop, and a verdict (exit 0 when every check passed, 1 otherwise).
fn test_session(
    config: &config::Config,
    cp_id: &str,
    t: &chargesite::status::test_session::TestSession,
) -> ExitCode {
    use chargesite::ocpp::frame::Version;
    use chargesite::status::test_session as ts;
    use chargesite::status::{client, verbs};
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let (targets, password) = local_api(config);
    let password = password.as_deref();
    let path = format!("/api/v1/chargers/{cp_id}/command");
    // A verb's answer (its body), or the reason it failed, printed.
    let verb = |v: verbs::Verb| {
        let body = serde_json::to_string(&v).unwrap_or_default();
        let asked = client::post(&targets, &path, body, password, Duration::from_secs(40));
        match runtime.block_on(asked) {
            Ok(a) if a.status == 200 => {
                serde_json::from_str::<serde_json::Value>(&a.body).map_err(|e| e.to_string())
            }
            Ok(a) => {
                let body: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
                Err(body
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map_or_else(|| format!("HTTP {}", a.status), str::to_string))
            }
            Err(e) => Err(e.to_string()),
        }
    };
    let status = || -> Result<serde_json::Value, String> {
        let a = runtime
            .block_on(client::get(&targets, "/api/v1/status", password))
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&a.body).map_err(|e| format!("HTTP {}: {e}", a.status))
    };
    let fail = |why: String| {
        eprintln!("chargesite: {cp_id}: {}", verbs::printable(&why));
        ExitCode::FAILURE
    };
    let before: Vec<String> = match status() {
        Ok(s) => ts::running(&s, cp_id)
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
        Err(e) => return fail(format!("{e}; is the agent running?")),
    };
    // The interval the charger is configured to send MeterValues at, if it says.
    let configured = [
        "MeterValueSampleInterval",
        "SampledDataCtrlr.TxUpdatedInterval",
    ]
    .iter()
    .find_map(|key| {
        let answer = verb(verbs::Verb::ConfigGet {
            keys: vec![key.to_string()],
        })
        .ok()?;
        ts::configured_interval(&answer["answer"])
    });
    let started = match verb(verbs::Verb::TestStart {
        connector: t.connector,
        tag: t.tag.clone(),
    }) {
        Ok(b) => b,
        Err(e) => return fail(format!("the remote start failed: {e}")),
    };
    let version = match started["ocpp_version"].as_str() {
        Some("2.0.1") => Version::V201,
        _ => Version::V16,
    };
    let start_verdict = verbs::verdict(
        &verbs::Verb::TestStart {
            connector: t.connector,
            tag: None,
        },
        version,
        &started["answer"],
    );
    println!(
        "{cp_id} (OCPP {}): {}",
        version.as_str(),
        verbs::printable(&start_verdict.lines.join("; "))
    );
    if !start_verdict.ok {
        return fail("refused the remote start".into());
    }
    // The transaction, once the charger has started it.
    let waited = Instant::now();
    let session_id = loop {
        if let Ok(s) = status() {
            if let Some(id) = ts::started(&s, cp_id, t.connector, &before) {
                break id;
            }
        }
        if waited.elapsed() > Duration::from_secs(60) {
            return fail(format!(
                "accepted the remote start but began no transaction on connector {} within 60 s (is a vehicle or tester plugged in?)",
                t.connector
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("  session {session_id} started; charging for {} s", t.secs);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let began = Instant::now();
    let mut samples = Vec::new();
    let mut flags = String::new();
    let mut last_printed = -10.0;
    while began.elapsed() < Duration::from_secs(t.secs) {
        std::thread::sleep(Duration::from_secs(1));
        let secs = began.elapsed().as_secs_f64();
        match status().map(|s| ts::progress(&s, &session_id, secs)) {
            Ok(Some((p, f))) => {
                samples.push(p);
                flags = f;
                if tty {
                    print!("\r  {}   ", ts::progress_line(&p));
                    let _ = std::io::stdout().flush();
                } else if secs - last_printed >= 5.0 {
                    println!("  {}", ts::progress_line(&p));
                    last_printed = secs;
                }
            }
            Ok(None) => {
                if tty {
                    println!();
                }
                return fail(format!(
                    "session {session_id} ended before the stop (stopped at the charger?)"
                ));
            }
            Err(e) => eprintln!("chargesite: status: {e}"),
        }
    }
    if tty {
        println!();
    }
    let offset = status().ok().and_then(|s| ts::clock_offset(&s, cp_id));
    let stopped = verb(verbs::Verb::TestStop {
        session_id: session_id.clone(),
    });
    match &stopped {
        Ok(b) if b["answer"]["status"] == "Accepted" => {}
        Ok(b) => eprintln!(
            "chargesite: {cp_id} answered the remote stop {}",
            b["answer"]
        ),
        Err(e) => eprintln!("chargesite: the remote stop failed: {e}"),
    }
    let gone = Instant::now();
    let mut ended = false;
    while gone.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = status() {
            if ts::progress(&s, &session_id, 0.0).is_none() {
                ended = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut verdict = ts::verdict(&samples, &flags, offset, configured);
    if !ended {
        verdict.ok = false;
        verdict
            .lines
            .push("FAIL the session was still running 30 s after the remote stop".into());
    }
    println!(
        "  session {session_id} {}",
        if ended { "stopped" } else { "still running" }
    );
    for line in &verdict.lines {
        println!("  {}", verbs::printable(line));
    }
    if verdict.ok {
        println!("{cp_id}: test session passed");
        ExitCode::SUCCESS
    } else {
        fail("test session failed (see the FAIL lines)".into())
    }
}

/// Where the running agent's local API may answer, and the password for HTTP
/// (`CHARGESITE_STATUS_PASSWORD`).
fn local_api(config: &config::Config) -> (Vec<chargesite::status::client::Target>, Option<String>) {
    let targets = chargesite::status::client::targets(
        &config.status,
        std::env::var("RUNTIME_DIRECTORY").ok().as_deref(),
    );
    (targets, std::env::var("CHARGESITE_STATUS_PASSWORD").ok())
}

/// `chargesite status`: exit 0 with the agent's answer printed, 1 when no agent answered
/// or it refused.
fn status(config: &config::Config, json: bool) -> ExitCode {
    use chargesite::status::{client, summary};
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let (targets, password) = local_api(config);
    let answer =
        match runtime.block_on(client::get(&targets, "/api/v1/status", password.as_deref())) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("chargesite: {e}; is the agent running (systemctl status chargesite)?");
                return ExitCode::FAILURE;
            }
        };
    match answer.status {
        200 => {}
        401 => {
            eprintln!(
                "chargesite: {} wants a password: set CHARGESITE_STATUS_PASSWORD, or run this on the gateway as the service's user or root (Unix socket)",
                answer.from
            );
            return ExitCode::FAILURE;
        }
        code => {
            eprintln!(
                "chargesite: {} answered HTTP {code}: {}",
                answer.from,
                answer.body.trim()
            );
            return ExitCode::FAILURE;
        }
    }
    let body: serde_json::Value = match serde_json::from_str(&answer.body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "chargesite: {} answered something that is not JSON: {e}",
                answer.from
            );
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            chargesite::status::verbs::printable(&summary::render(&body))
        );
    }
    ExitCode::SUCCESS
}

/// A multi-threaded runtime for the client commands; `None` (reported) if it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("chargesite: runtime: {e}");
            None
        }
    }
}

#[cfg(feature = "embedded-broker")]
fn demo() -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(chargesite::demo::run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chargesite: demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(a: SimulateArgs) -> ExitCode {
    let mut tags = a.tag;
    if let Some(f) = &a.tags_file {
        match std::fs::read_to_string(f) {
            Ok(text) => tags.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            ),
            Err(e) => {
                eprintln!("chargesite: --tags-file {}: {e}", f.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if tags.is_empty() {
        tags.push("SIMTAG".into());
    }
    if !(a.time_scale > 0.0 && a.time_scale <= 3600.0) {
        eprintln!("chargesite: --time-scale must be > 0 and <= 3600");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(f) = a.fault.iter().find(|f| f.charger >= a.chargers as usize) {
        eprintln!(
            "chargesite: --fault index {} is beyond --chargers {}",
            f.charger, a.chargers
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if !(a.url.starts_with("ws://") || a.url.starts_with("wss://")) {
        eprintln!("chargesite: --url must start with ws://");
        return ExitCode::from(EXIT_USAGE);
    }
    let cfg = chargesite::sim::SimConfig {
        url: a.url,
        chargers: a.chargers as usize,
        id_prefix: a.id_prefix,
        ocpp: a.ocpp,
        sessions: a.sessions,
        session: std::time::Duration::from_secs(a.session_secs),
        meter_interval: std::time::Duration::from_millis(a.meter_interval_ms),
        time_scale: a.time_scale,
        tags,
        password: a.password,
        faults: a.fault,
        offline: std::time::Duration::from_secs(a.offline_secs),
        max_power_w: a.max_power_kw * 1000.0,
        deadline: std::time::Duration::from_secs(a.duration_secs),
        wait_remote_start: a.wait_remote_start,
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let summary = runtime.block_on(chargesite::sim::run(cfg));
    println!("{}", summary.render());
    if summary.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Logs go to stderr, one line per event (`CHARGESITE_LOG`: an `EnvFilter`, default
/// `info`). Colours only on a terminal (and not with `NO_COLOR`): a pipe, a file or the
/// journal gets plain text. Under systemd, when stderr is the journal's stream, each line
/// starts with its syslog priority (`<4>` for a warning, sd-daemon(3)), which journald
/// strips and records (`journalctl -p warning`), and carries no timestamp: journald stamps
/// every line itself.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHARGESITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = chargesite_hal::systemd::stderr_is_journal();
    let colour = !journal
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .event_format(LineFormat {
            journal,
            stamped: tracing_subscriber::fmt::format(),
            bare: tracing_subscriber::fmt::format().without_time(),
        })
        .init();
}

/// tracing's full line format, either with its timestamp or, for the journal, without it
/// and behind the line's sd-daemon(3) priority (journald's `SyslogLevelPrefix=`, on by
/// default). One type for both, so the gateway binary carries one logging stack.
struct LineFormat {
    journal: bool,
    stamped: tracing_subscriber::fmt::format::Format,
    bare: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if !self.journal {
            return self.stamped.format_event(ctx, writer, event);
        }
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.bare.format_event(ctx, writer, event)
    }
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
            if let Some(a) = agent.tls_addr {
                println!("tls listening on {a}");
            }
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
