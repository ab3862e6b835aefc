//! The config file (CONTRACT §2): TOML in, a typed and validated [`Config`] out.
//!
//! Unknown keys are errors, and every error names the key it is about, so an installer who
//! mistypes `alow_unknown_chargers` is told so instead of silently getting the default.
//! Keys beyond the contract's are documented in the README's config reference.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `run` and `check-config` look when neither `--config` nor `$CHARGESITE_CONFIG`
/// is given.
pub const DEFAULT_PATH: &str = "/etc/chargesite/chargesite.toml";

/// A config that cannot be used; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type; toml's message names the key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The path read.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A key has a value outside what it allows.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `site.id`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    site: RawSite,
    #[serde(default)]
    ocpp: RawOcpp,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    store: RawStore,
    uplink: Option<RawUplink>,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    id: String,
    #[serde(default)]
    max_power_kw: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOcpp {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    allow_unknown_chargers: bool,
    #[serde(default)]
    chargers: Vec<RawCharger>,
    #[serde(default = "default_heartbeat")]
    heartbeat_interval_secs: u64,
    #[serde(default = "default_ping")]
    ping_interval_secs: u64,
    #[serde(default = "default_pong")]
    pong_timeout_secs: u64,
    #[serde(default = "default_call_timeout")]
    call_timeout_secs: u64,
    #[serde(default = "default_max_message")]
    max_message_bytes: usize,
    #[serde(default = "default_max_power")]
    max_charger_power_kw: u32,
    #[serde(default = "default_clock_tolerance")]
    clock_tolerance_secs: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    assume_subprotocol: Option<String>,
    tls_listen: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    cpo_name: Option<String>,
    #[serde(default = "default_handshake_failures")]
    handshake_failures_per_minute: u32,
}

fn default_handshake_failures() -> u32 {
    10
}

fn default_listen() -> String {
    "0.0.0.0:9000".into()
}
fn default_heartbeat() -> u64 {
    300
}
fn default_ping() -> u64 {
    10
}
fn default_pong() -> u64 {
    10
}
fn default_call_timeout() -> u64 {
    30
}
fn default_max_message() -> usize {
    256 * 1024
}
fn default_max_power() -> u32 {
    400
}
fn default_clock_tolerance() -> u64 {
    300
}
fn default_max_connections() -> usize {
    2048
}

impl Default for RawOcpp {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            allow_unknown_chargers: false,
            chargers: Vec::new(),
            heartbeat_interval_secs: default_heartbeat(),
            ping_interval_secs: default_ping(),
            pong_timeout_secs: default_pong(),
            call_timeout_secs: default_call_timeout(),
            max_message_bytes: default_max_message(),
            max_charger_power_kw: default_max_power(),
            clock_tolerance_secs: default_clock_tolerance(),
            max_connections: default_max_connections(),
            assume_subprotocol: None,
            tls_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            cpo_name: None,
            handshake_failures_per_minute: default_handshake_failures(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCharger {
    id: String,
    password_hash: Option<String>,
    #[serde(default = "default_profile")]
    security_profile: u8,
    cert_cn: Option<String>,
    serial: Option<String>,
    max_power_kw: Option<f64>,
    phases: Option<u8>,
}

fn default_profile() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    free_vend: bool,
    #[serde(default = "default_failures")]
    otp_max_failures: u32,
    #[serde(default = "default_five_minutes")]
    otp_failure_window_secs: u64,
    #[serde(default = "default_five_minutes")]
    otp_lockout_secs: u64,
    #[serde(default = "default_site_failures")]
    otp_site_failures_per_hour: u32,
    #[serde(default = "default_address_failures")]
    otp_address_failures_per_hour: u32,
    #[serde(default)]
    unknown_tags: RawUnknownTags,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawUnknownTags {
    #[default]
    Refuse,
    AcceptOffline,
}

/// A guessing budget: at least one wrong code an hour.
fn per_hour(key: &str, n: u32) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn default_site_failures() -> u32 {
    30
}
fn default_address_failures() -> u32 {
    10
}

fn default_failures() -> u32 {
    5
}
fn default_five_minutes() -> u64 {
    300
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            free_vend: false,
            otp_max_failures: default_failures(),
            otp_failure_window_secs: default_five_minutes(),
            otp_lockout_secs: default_five_minutes(),
            otp_site_failures_per_hour: default_site_failures(),
            otp_address_failures_per_hour: default_address_failures(),
            unknown_tags: RawUnknownTags::Refuse,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_store_path")]
    path: PathBuf,
    #[serde(default = "default_batch")]
    max_batch: usize,
    #[serde(default = "default_quota")]
    quota_mb: u64,
}

fn default_quota() -> u64 {
    512
}

fn default_store_path() -> PathBuf {
    PathBuf::from("/var/lib/chargesite/chargesite.db")
}
fn default_batch() -> usize {
    2048
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            max_batch: default_batch(),
            quota_mb: default_quota(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    url: String,
    #[serde(default = "default_prefix")]
    topic_prefix: String,
    #[serde(default = "default_keepalive")]
    keepalive_secs: u64,
    #[serde(default = "default_payload")]
    max_payload_bytes: usize,
    #[serde(default = "default_command_bytes")]
    max_command_bytes: usize,
    #[serde(default = "default_retain")]
    retain_sent_hours: u64,
    #[serde(default = "default_live")]
    live_interval_secs: u64,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    "chargesite/v1".into()
}
fn default_keepalive() -> u64 {
    30
}
fn default_payload() -> usize {
    65536
}
fn default_command_bytes() -> usize {
    65536
}
fn default_retain() -> u64 {
    168
}
fn default_live() -> u64 {
    5
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    led: Option<PathBuf>,
    watchdog_device: Option<PathBuf>,
    uplink_interface: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    #[serde(default = "default_status_listen")]
    listen: String,
    password_hash: Option<String>,
    socket: Option<PathBuf>,
}

fn default_status_listen() -> String {
    "127.0.0.1:9001".into()
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            listen: default_status_listen(),
            password_hash: None,
            socket: None,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[site] id`.
    pub site_id: String,
    /// `[site] max_power_kw` in W: the grid connection's cap shared by every charger;
    /// `None` (0): no site limit.
    pub site_max_power_w: Option<u32>,
    /// `[ocpp]`.
    pub ocpp: OcppConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[uplink]`; `None` means buffer only.
    pub uplink: Option<UplinkConfig>,
    /// `[gateway]`: optional hardware.
    pub gateway: GatewayConfig,
    /// `[status]`: the local status page, `/metrics` and the local API.
    pub status: StatusConfig,
    /// The file it was loaded from (SIGHUP reads it again); `None` when parsed from text.
    pub source: Option<PathBuf>,
}

/// `[status]` (CONTRACT §5).
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// Where the HTTP server listens; `None` (`listen = ""`): no HTTP server.
    pub listen: Option<SocketAddr>,
    /// argon2 PHC string every HTTP request is checked against (Basic auth, any user name)
    /// when `listen` is not a loopback address; always set then (validated).
    pub password_hash: Option<String>,
    /// The local API's Unix socket, when set; otherwise `$RUNTIME_DIRECTORY/api.sock`
    /// when the agent runs under systemd with a runtime directory.
    pub socket: Option<PathBuf>,
}

impl StatusConfig {
    /// Whether HTTP requests need Basic auth: on any address other than a loopback one.
    pub fn requires_auth(&self) -> bool {
        self.listen.is_some_and(|a| !is_loopback(a.ip()))
    }
}

/// Whether only this machine can reach `ip`: 127.0.0.0/8, `::1` and `::ffff:127.x.y.z`.
/// The unspecified address (`0.0.0.0`, `::`) is every interface, so it is not.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The OCPP server's settings.
#[derive(Debug, Clone)]
pub struct OcppConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Accept charger ids that are not listed.
    pub allow_unknown_chargers: bool,
    /// Listed chargers by id.
    pub chargers: HashMap<String, ChargerEntry>,
    /// The `wss://` endpoint (`tls_listen` and its files), when configured.
    pub tls: Option<TlsConfig>,
    /// `cpo_name`: the O= that charger certificates (and CSRs) must carry.
    pub cpo_name: Option<String>,
    /// Failed handshakes (wrong password, refused certificate, downgrade) one charger id
    /// or one remote address may have in a minute; beyond it, answered 429 without argon2.
    pub handshake_failures_per_minute: u32,
    /// Heartbeat interval given in BootNotification.conf.
    pub heartbeat_interval: Duration,
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// Silence after a ping after which the charger is declared dead.
    pub pong_timeout: Duration,
    /// How long an outbound CALL waits for its answer.
    pub call_timeout: Duration,
    /// Largest WebSocket message accepted.
    pub max_message_bytes: usize,
    /// Fastest a charger can deliver energy, W: bounds a plausible register step.
    pub max_charger_power_w: i64,
    /// How far ahead of the site clock a charger clock may run before it is flagged.
    pub clock_tolerance_secs: i64,
    /// Concurrent WebSocket connections accepted.
    pub max_connections: usize,
    /// The version a charger that offers no subprotocol is taken to speak (`None`: such a
    /// charger is closed after the handshake, as OCPP-J says).
    pub assume_subprotocol: Option<&'static str>,
}

/// One `[[ocpp.chargers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargerEntry {
    /// argon2 PHC hash of its Basic auth password.
    pub password_hash: Option<String>,
    /// 1, 2 or 3: the least it is accepted with (CONTRACT §2).
    pub security_profile: u8,
    /// The subject CN its certificate must carry (profile 3); its id when unset.
    pub cert_cn: Option<String>,
    /// The serial number its BootNotification must report, when set.
    pub serial: Option<String>,
    /// What one of its connectors can deliver, W (`max_power_kw`; default 22 kW, the
    /// three-phase 32 A wallbox): the most the site limit's allocator grants it, and what
    /// it is assumed to draw when it refuses a charging profile.
    pub max_power_w: u32,
    /// Phases it charges on (1 or 3; default 3): its 6 A minimum and its limit in amperes.
    pub phases: u8,
}

/// A connector's power when `[[ocpp.chargers]] max_power_kw` is not set, W.
pub const DEFAULT_CONNECTOR_POWER_W: u32 = 22_000;

impl ChargerEntry {
    /// A profile-1 entry with an optional password hash.
    pub fn basic(password_hash: Option<String>) -> Self {
        Self {
            password_hash,
            security_profile: 1,
            cert_cn: None,
            serial: None,
            max_power_w: DEFAULT_CONNECTOR_POWER_W,
            phases: 3,
        }
    }
}

/// A power in kW from the config as whole watts: finite, >= 0, at most 100 MW.
fn kw(key: &str, v: f64) -> Result<u32, ConfigError> {
    if !v.is_finite() || !(0.0..=100_000.0).contains(&v) {
        return Err(invalid(key, "must be a number of kW from 0 to 100000"));
    }
    Ok((v * 1000.0).round() as u32)
}

/// `[ocpp] tls_listen` and the files it serves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Address of the `wss://` endpoint.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA that signs charger certificates (profile 3).
    pub client_ca_file: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Every id tag is accepted.
    pub free_vend: bool,
    /// Wrong OTPs on one charger within the window that lock OTP entry there.
    pub lockout: crate::auth::Lockout,
    /// What happens to an id tag the site does not know.
    pub unknown_tags: crate::auth::UnknownTags,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// SQLite file.
    pub path: PathBuf,
    /// Most writes grouped into one commit.
    pub max_batch: usize,
    /// Database size at which the quota rules start dropping what may go; `None` = no quota.
    pub quota_bytes: Option<u64>,
}

/// `[uplink]`.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// True for `mqtts://`.
    pub tls: bool,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix; `<prefix>/<site id>` is the root.
    pub topic_prefix: String,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// Largest events batch.
    pub max_payload_bytes: usize,
    /// Largest command accepted; a larger one is answered `too_large` and dropped.
    pub max_command_bytes: usize,
    /// How long sent events are kept for replay.
    pub retain_sent: Duration,
    /// How often a running session's live snapshot is published.
    pub live_interval: Duration,
    /// MQTT username.
    pub username: Option<String>,
    /// MQTT password (from `password`, or read from `password_file` at load).
    pub password: Option<String>,
    /// `password_file`: where the password was read from, if from a file.
    pub password_file: Option<PathBuf>,
    /// CA bundle for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mTLS).
    pub cert_file: Option<PathBuf>,
    /// Client key (mTLS).
    pub key_file: Option<PathBuf>,
}

/// `[gateway]`: hardware the agent drives when present.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// LED class directory, e.g. `/sys/class/leds/status`.
    pub led: Option<PathBuf>,
    /// Hardware watchdog device, e.g. `/dev/watchdog`.
    pub watchdog_device: Option<PathBuf>,
    /// Network interface of the uplink, e.g. `wwan0`.
    pub uplink_interface: Option<String>,
}

/// Reads and validates a config file.
///
/// # Errors
/// [`ConfigError`] naming the file or key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut config = load_unchecked(path)?;
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    resolve_files(&mut config, creds.as_deref())?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Reads and validates a config file without opening the files it names (for `chargesite
/// tls init`, which creates them).
///
/// # Errors
/// [`ConfigError`] naming the file or key.
pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

/// The prefix of a `*_file` value that names a systemd credential: `%d/NAME` is
/// `$CREDENTIALS_DIRECTORY/NAME`, as `%d` means in a unit file.
pub const CREDENTIAL_PREFIX: &str = "%d/";

/// Resolves `%d/` credential paths, checks that every `*_file` can be read and that no
/// private key or password file is open to other users, and reads `uplink.password_file`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key.
pub fn resolve_files(config: &mut Config, creds: Option<&Path>) -> Result<(), ConfigError> {
    if let Some(t) = &mut config.ocpp.tls {
        t.cert_file = checked_file("ocpp.tls_cert_file", &t.cert_file, creds, false)?;
        t.key_file = checked_file("ocpp.tls_key_file", &t.key_file, creds, true)?;
        if let Some(ca) = &t.client_ca_file {
            t.client_ca_file = Some(checked_file("ocpp.client_ca_file", ca, creds, false)?);
        }
    }
    if let Some(u) = &mut config.uplink {
        if let Some(p) = &u.ca_file {
            u.ca_file = Some(checked_file("uplink.ca_file", p, creds, false)?);
        }
        if let Some(p) = &u.cert_file {
            u.cert_file = Some(checked_file("uplink.cert_file", p, creds, false)?);
        }
        if let Some(p) = &u.key_file {
            u.key_file = Some(checked_file("uplink.key_file", p, creds, true)?);
        }
        if let Some(p) = &u.password_file {
            let p = checked_file("uplink.password_file", p, creds, true)?;
            let text = std::fs::read_to_string(&p)
                .map_err(|e| invalid("uplink.password_file", format!("{}: {e}", p.display())))?;
            let password = text.trim_end_matches(['\r', '\n']).to_string();
            if password.is_empty() {
                return Err(invalid("uplink.password_file", "the file is empty"));
            }
            u.password = Some(password);
            u.password_file = Some(p);
        }
    }
    Ok(())
}

/// `path` resolved (a `%d/` credential) and opened for reading; with `private`, a file
/// that other users may read or write is refused (its group may read it: Debian's
/// `ssl-cert` convention).
fn checked_file(
    key: &str,
    path: &Path,
    creds: Option<&Path>,
    private: bool,
) -> Result<PathBuf, ConfigError> {
    let resolved = match path
        .to_str()
        .and_then(|p| p.strip_prefix(CREDENTIAL_PREFIX))
    {
        Some(name) => {
            let Some(dir) = creds else {
                return Err(invalid(
                    key,
                    format!(
                        "`{}` names a systemd credential, but $CREDENTIALS_DIRECTORY is not set \
                         (LoadCredential= in the unit)",
                        path.display()
                    ),
                ));
            };
            if name.is_empty() || name.contains('/') {
                return Err(invalid(
                    key,
                    "a credential is `%d/NAME`, NAME without slashes",
                ));
            }
            dir.join(name)
        }
        None => path.to_path_buf(),
    };
    let file = std::fs::File::open(&resolved)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", resolved.display())))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| invalid(key, format!("{}: {e}", resolved.display())))?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            return Err(invalid(
                key,
                format!(
                    "{} is open to other users (mode {:o}); a secret must not be: chmod o-rwx",
                    resolved.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(resolved)
}

/// Parses and validates config text.
///
/// # Errors
/// [`ConfigError`] naming the key.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: PathBuf::new(),
        message: e.to_string().trim_end().to_string(),
    })?;
    validate(raw)
}

/// `listen` parsed, or an address no other parses to (validated separately).
fn listen_addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([255, 255, 255, 255], 0)))
}

fn valid_id(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn positive(key: &str, v: u64) -> Result<Duration, ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(Duration::from_secs(v))
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    if !valid_id(&raw.site.id, 64) {
        return Err(invalid("site.id", "must match [A-Za-z0-9_-]{1,64}"));
    }
    let o = raw.ocpp;
    let listen: SocketAddr = o.listen.parse().map_err(|_| {
        invalid(
            "ocpp.listen",
            "must be HOST:PORT with an IP address, e.g. 0.0.0.0:9000",
        )
    })?;
    let mut chargers = HashMap::new();
    for (i, c) in o.chargers.into_iter().enumerate() {
        let key = |k: &str| format!("ocpp.chargers[{i}].{k}");
        if !valid_id(&c.id, 48) {
            return Err(invalid(key("id"), "must match [A-Za-z0-9_-]{1,48}"));
        }
        if let Some(h) = &c.password_hash {
            if argon2::password_hash::phc::PasswordHash::new(h).is_err() {
                return Err(invalid(
                    key("password_hash"),
                    "is not a PHC string; create one with `chargesite hash-password`",
                ));
            }
        }
        match c.security_profile {
            1 | 3 => {}
            2 if c.password_hash.is_none() => {
                return Err(invalid(
                    key("password_hash"),
                    "is required with security_profile = 2 (TLS + Basic auth)",
                ))
            }
            2 => {}
            _ => return Err(invalid(key("security_profile"), "must be 1, 2 or 3")),
        }
        if c.security_profile >= 2 && o.tls_listen.is_none() {
            return Err(invalid(
                "ocpp.tls_listen",
                format!(
                    "is required: charger `{}` has security_profile = {}",
                    c.id, c.security_profile
                ),
            ));
        }
        if c.security_profile == 3 && o.client_ca_file.is_none() {
            return Err(invalid(
                "ocpp.client_ca_file",
                format!("is required: charger `{}` has security_profile = 3", c.id),
            ));
        }
        if c.cert_cn
            .as_deref()
            .is_some_and(|cn| cn.is_empty() || cn.len() > 64)
        {
            return Err(invalid(key("cert_cn"), "must be 1 to 64 characters"));
        }
        if c.serial
            .as_deref()
            .is_some_and(|s| s.is_empty() || s.len() > 64)
        {
            return Err(invalid(key("serial"), "must be 1 to 64 characters"));
        }
        let max_power_w = match c.max_power_kw {
            None => DEFAULT_CONNECTOR_POWER_W,
            Some(v) => match kw(&key("max_power_kw"), v)? {
                0 => return Err(invalid(key("max_power_kw"), "must be more than 0")),
                w => w,
            },
        };
        let phases = c.phases.unwrap_or(3);
        if phases != 1 && phases != 3 {
            return Err(invalid(key("phases"), "must be 1 or 3"));
        }
        let entry = ChargerEntry {
            password_hash: c.password_hash,
            security_profile: c.security_profile,
            cert_cn: c.cert_cn,
            serial: c.serial,
            max_power_w,
            phases,
        };
        if chargers.insert(c.id.clone(), entry).is_some() {
            return Err(invalid(
                key("id"),
                format!("charger `{}` is listed twice", c.id),
            ));
        }
    }
    let tls = match o.tls_listen.as_deref() {
        None => {
            for (k, set) in [
                ("ocpp.tls_cert_file", o.tls_cert_file.is_some()),
                ("ocpp.tls_key_file", o.tls_key_file.is_some()),
                ("ocpp.client_ca_file", o.client_ca_file.is_some()),
            ] {
                if set {
                    return Err(invalid(k, "is set but ocpp.tls_listen is not"));
                }
            }
            None
        }
        Some(text) => {
            let listen: SocketAddr = text.parse().map_err(|_| {
                invalid(
                    "ocpp.tls_listen",
                    "must be HOST:PORT with an IP address, e.g. 0.0.0.0:9443",
                )
            })?;
            if listen.port() != 0 && listen == listen_addr(&o.listen) {
                return Err(invalid("ocpp.tls_listen", "must differ from ocpp.listen"));
            }
            Some(TlsConfig {
                listen,
                cert_file: o.tls_cert_file.ok_or_else(|| {
                    invalid(
                        "ocpp.tls_cert_file",
                        "is required with tls_listen (create one with `chargesite tls init`)",
                    )
                })?,
                key_file: o
                    .tls_key_file
                    .ok_or_else(|| invalid("ocpp.tls_key_file", "is required with tls_listen"))?,
                client_ca_file: o.client_ca_file,
            })
        }
    };
    if o.cpo_name
        .as_deref()
        .is_some_and(|n| n.is_empty() || n.len() > 64)
    {
        return Err(invalid("ocpp.cpo_name", "must be 1 to 64 characters"));
    }
    if o.handshake_failures_per_minute == 0 {
        return Err(invalid(
            "ocpp.handshake_failures_per_minute",
            "must be at least 1",
        ));
    }
    if o.max_message_bytes < 4096 {
        return Err(invalid("ocpp.max_message_bytes", "must be at least 4096"));
    }
    if o.max_charger_power_kw == 0 {
        return Err(invalid("ocpp.max_charger_power_kw", "must be at least 1"));
    }
    if o.max_connections == 0 {
        return Err(invalid("ocpp.max_connections", "must be at least 1"));
    }
    let assume_subprotocol = match o.assume_subprotocol.as_deref() {
        None => None,
        Some(p) => Some(
            crate::ocpp::frame::Version::from_subprotocol(p)
                .ok_or_else(|| {
                    invalid(
                        "ocpp.assume_subprotocol",
                        format!("`{p}` is not a subprotocol served here (ocpp1.6, ocpp2.0.1)"),
                    )
                })?
                .subprotocol(),
        ),
    };
    let ocpp = OcppConfig {
        listen,
        allow_unknown_chargers: o.allow_unknown_chargers,
        chargers,
        heartbeat_interval: positive("ocpp.heartbeat_interval_secs", o.heartbeat_interval_secs)?,
        ping_interval: positive("ocpp.ping_interval_secs", o.ping_interval_secs)?,
        pong_timeout: positive("ocpp.pong_timeout_secs", o.pong_timeout_secs)?,
        call_timeout: positive("ocpp.call_timeout_secs", o.call_timeout_secs)?,
        max_message_bytes: o.max_message_bytes,
        max_charger_power_w: i64::from(o.max_charger_power_kw) * 1000,
        clock_tolerance_secs: i64::try_from(o.clock_tolerance_secs)
            .map_err(|_| invalid("ocpp.clock_tolerance_secs", "too large"))?,
        max_connections: o.max_connections,
        assume_subprotocol,
        tls,
        cpo_name: o.cpo_name,
        handshake_failures_per_minute: o.handshake_failures_per_minute,
    };
    if raw.store.path.as_os_str().is_empty() {
        return Err(invalid("store.path", "must not be empty"));
    }
    if raw.store.max_batch == 0 {
        return Err(invalid("store.max_batch", "must be at least 1"));
    }
    let uplink = raw.uplink.map(validate_uplink).transpose()?;
    if let Some(iface) = &raw.gateway.uplink_interface {
        if iface.is_empty() || iface.len() > 15 || iface.contains('/') || iface.starts_with('.') {
            return Err(invalid(
                "gateway.uplink_interface",
                "is not a network interface name",
            ));
        }
    }
    let status = validate_status(raw.status)?;
    let site_max_power_w = Some(kw("site.max_power_kw", raw.site.max_power_kw)?).filter(|&w| w > 0);
    Ok(Config {
        site_id: raw.site.id,
        site_max_power_w,
        ocpp,
        auth: AuthConfig {
            free_vend: raw.auth.free_vend,
            lockout: crate::auth::Lockout {
                max_failures: usize::try_from(raw.auth.otp_max_failures.max(1)).unwrap_or(5),
                window: chrono::Duration::seconds(
                    i64::try_from(
                        positive(
                            "auth.otp_failure_window_secs",
                            raw.auth.otp_failure_window_secs,
                        )?
                        .as_secs(),
                    )
                    .unwrap_or(300),
                ),
                duration: chrono::Duration::seconds(
                    i64::try_from(
                        positive("auth.otp_lockout_secs", raw.auth.otp_lockout_secs)?.as_secs(),
                    )
                    .unwrap_or(300),
                ),
                site_max_failures: per_hour(
                    "auth.otp_site_failures_per_hour",
                    raw.auth.otp_site_failures_per_hour,
                )?,
                address_max_failures: per_hour(
                    "auth.otp_address_failures_per_hour",
                    raw.auth.otp_address_failures_per_hour,
                )?,
                budget_window: chrono::Duration::hours(1),
            },
            unknown_tags: match raw.auth.unknown_tags {
                RawUnknownTags::Refuse => crate::auth::UnknownTags::Refuse,
                RawUnknownTags::AcceptOffline => crate::auth::UnknownTags::AcceptOffline,
            },
        },
        store: StoreConfig {
            path: raw.store.path,
            max_batch: raw.store.max_batch,
            quota_bytes: (raw.store.quota_mb > 0)
                .then(|| raw.store.quota_mb.saturating_mul(1 << 20)),
        },
        uplink,
        gateway: GatewayConfig {
            led: raw.gateway.led,
            watchdog_device: raw.gateway.watchdog_device,
            uplink_interface: raw.gateway.uplink_interface,
        },
        status,
        source: None,
    })
}

fn validate_status(s: RawStatus) -> Result<StatusConfig, ConfigError> {
    let listen = match s.listen.trim() {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "status.listen",
                "must be HOST:PORT with an IP address, e.g. 127.0.0.1:9001, or \"\" for off",
            )
        })?),
    };
    if let Some(h) = &s.password_hash {
        if argon2::password_hash::phc::PasswordHash::new(h).is_err() {
            return Err(invalid(
                "status.password_hash",
                "is not a PHC string; create one with `chargesite hash-password`",
            ));
        }
    }
    let status = StatusConfig {
        listen,
        password_hash: s.password_hash,
        socket: s.socket,
    };
    if status.requires_auth() && status.password_hash.is_none() {
        return Err(invalid(
            "status.password_hash",
            "is required when status.listen is not a loopback address (every request then \
             needs HTTP Basic auth); create one with `chargesite hash-password`",
        ));
    }
    if status
        .socket
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(invalid("status.socket", "must not be empty"));
    }
    Ok(status)
}

/// Largest `uplink.max_command_bytes`: the MQTT link reads up to twice this (see
/// `uplink::link::read_limit`), and a gateway should not hold more than that for one message.
const MAX_COMMAND_BYTES: usize = 16 << 20;

fn validate_uplink(u: RawUplink) -> Result<UplinkConfig, ConfigError> {
    let (tls, rest) = if let Some(r) = u.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = u.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(invalid("uplink.url", "must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| invalid("uplink.url", "port must be a number from 1 to 65535"))?,
        ),
        _ if !rest.is_empty() && !rest.contains('/') => {
            (rest.to_string(), if tls { 8883 } else { 1883 })
        }
        _ => {
            return Err(invalid(
                "uplink.url",
                "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
            ))
        }
    };
    if port == 0 {
        return Err(invalid(
            "uplink.url",
            "port must be a number from 1 to 65535",
        ));
    }
    let prefix = u.topic_prefix.trim_matches('/').to_string();
    if prefix.is_empty() || prefix.contains(['+', '#']) {
        return Err(invalid(
            "uplink.topic_prefix",
            "must be a non-empty topic without wildcards",
        ));
    }
    if u.max_payload_bytes < 4096 || u.max_payload_bytes > 256 * 1024 * 1024 {
        return Err(invalid(
            "uplink.max_payload_bytes",
            "must be between 4096 and 268435456",
        ));
    }
    if u.max_command_bytes < 4096 || u.max_command_bytes > MAX_COMMAND_BYTES {
        return Err(invalid(
            "uplink.max_command_bytes",
            "must be between 4096 and 16777216",
        ));
    }
    if (u.cert_file.is_some()) != (u.key_file.is_some()) {
        let key = if u.cert_file.is_some() {
            "uplink.key_file"
        } else {
            "uplink.cert_file"
        };
        return Err(invalid(key, "cert_file and key_file go together"));
    }
    if !tls && (u.ca_file.is_some() || u.cert_file.is_some()) {
        return Err(invalid(
            "uplink.url",
            "TLS files are set but the url is not mqtts://",
        ));
    }
    if u.password.is_some() && u.password_file.is_some() {
        return Err(invalid(
            "uplink.password_file",
            "password and password_file exclude each other",
        ));
    }
    if (u.password.is_some() || u.password_file.is_some()) && u.username.is_none() {
        return Err(invalid(
            "uplink.username",
            "is required when a password is set",
        ));
    }
    Ok(UplinkConfig {
        url: u.url.clone(),
        tls,
        host,
        port,
        topic_prefix: prefix,
        keepalive: positive("uplink.keepalive_secs", u.keepalive_secs)?,
        max_payload_bytes: u.max_payload_bytes,
        max_command_bytes: u.max_command_bytes,
        retain_sent: Duration::from_secs(u.retain_sent_hours.saturating_mul(3600)),
        live_interval: positive("uplink.live_interval_secs", u.live_interval_secs)?,
        username: u.username,
        password: u.password,
        password_file: u.password_file,
        ca_file: u.ca_file,
        cert_file: u.cert_file,
        key_file: u.key_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_config_gets_the_contract_defaults() {
        let c = parse("[site]\nid = \"site-001\"\n").unwrap();
        assert_eq!(c.ocpp.listen.to_string(), "0.0.0.0:9000");
        assert!(!c.ocpp.allow_unknown_chargers);
        assert!(!c.auth.free_vend);
        assert_eq!(
            c.store.path,
            PathBuf::from("/var/lib/chargesite/chargesite.db")
        );
        assert!(c.uplink.is_none());
    }

    #[test]
    fn the_site_power_limit_and_each_chargers_power_are_kilowatts_checked_by_key() {
        let c = parse("[site]\nid='s'\n").unwrap();
        assert_eq!(c.site_max_power_w, None);
        let c = parse(
            "[site]\nid='s'\nmax_power_kw = 50.5\n[ocpp]\n[[ocpp.chargers]]\nid='A'\n\
             [[ocpp.chargers]]\nid='B'\nmax_power_kw = 7.4\nphases = 1\n",
        )
        .unwrap();
        assert_eq!(c.site_max_power_w, Some(50_500));
        assert_eq!(
            (
                c.ocpp.chargers["A"].max_power_w,
                c.ocpp.chargers["A"].phases
            ),
            (DEFAULT_CONNECTOR_POWER_W, 3)
        );
        assert_eq!(
            (
                c.ocpp.chargers["B"].max_power_w,
                c.ocpp.chargers["B"].phases
            ),
            (7_400, 1)
        );
        for (text, key) in [
            ("[site]\nid='s'\nmax_power_kw = -1\n", "site.max_power_kw"),
            ("[site]\nid='s'\nmax_power_kw = nan\n", "site.max_power_kw"),
            (
                "[site]\nid='s'\n[[ocpp.chargers]]\nid='A'\nmax_power_kw = 0\n",
                "max_power_kw",
            ),
            (
                "[site]\nid='s'\n[[ocpp.chargers]]\nid='A'\nphases = 2\n",
                "phases",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn uplink_defaults_follow_the_contract() {
        let c = parse("[site]\nid='s'\n[uplink]\nurl='mqtt://127.0.0.1:1883'\n").unwrap();
        let u = c.uplink.unwrap();
        assert_eq!(u.topic_prefix, "chargesite/v1");
        assert_eq!(u.keepalive, Duration::from_secs(30));
        assert_eq!(u.max_payload_bytes, 65536);
        assert_eq!(u.max_command_bytes, 65536);
        assert_eq!(u.retain_sent, Duration::from_secs(168 * 3600));
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1883, false));
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let e = parse("[site]\nid='s'\n[ocpp]\nalow_unknown_chargers = true\n").unwrap_err();
        assert!(e.to_string().contains("alow_unknown_chargers"), "{e}");
    }

    #[test]
    fn no_subprotocol_is_assumed_unless_configured_and_only_a_served_one() {
        let c = parse("[site]\nid='s'\n").unwrap();
        assert_eq!(c.ocpp.assume_subprotocol, None);
        let c = parse("[site]\nid='s'\n[ocpp]\nassume_subprotocol = 'ocpp1.6'\n").unwrap();
        assert_eq!(c.ocpp.assume_subprotocol, Some("ocpp1.6"));
        let e = parse("[site]\nid='s'\n[ocpp]\nassume_subprotocol = 'ocpp2.1'\n").unwrap_err();
        assert!(e.to_string().contains("ocpp.assume_subprotocol"), "{e}");
    }

    #[test]
    fn a_bad_site_id_names_the_key() {
        let e = parse("[site]\nid='no spaces'\n").unwrap_err();
        assert!(e.to_string().contains("site.id"), "{e}");
    }

    #[test]
    fn a_missing_site_section_names_it() {
        let e = parse("[ocpp]\nlisten='0.0.0.0:1'\n").unwrap_err();
        assert!(e.to_string().contains("site"), "{e}");
    }

    #[test]
    fn a_bad_password_hash_names_the_charger_entry() {
        let e = parse("[site]\nid='s'\n[[ocpp.chargers]]\nid='CP1'\npassword_hash='plain'\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("ocpp.chargers[0].password_hash"),
            "{e}"
        );
    }

    #[test]
    fn a_command_limit_out_of_range_names_the_key() {
        for bad in ["100", "999999999"] {
            let e = parse(&format!(
                "[site]\nid='s'\n[uplink]\nurl='mqtt://x'\nmax_command_bytes = {bad}\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains("uplink.max_command_bytes"), "{e}");
        }
        let c = parse("[site]\nid='s'\n[uplink]\nurl='mqtt://x'\nmax_command_bytes = 1048576\n")
            .unwrap();
        assert_eq!(c.uplink.unwrap().max_command_bytes, 1 << 20);
    }

    #[test]
    fn the_status_page_listens_on_loopback_by_default_without_a_password() {
        let c = parse("[site]\nid='s'\n").unwrap();
        assert_eq!(c.status.listen, Some("127.0.0.1:9001".parse().unwrap()));
        assert!(!c.status.requires_auth());
        assert!(c.status.socket.is_none());
        let off = parse("[site]\nid='s'\n[status]\nlisten = ''\n").unwrap();
        assert_eq!(off.status.listen, None);
        assert!(!off.status.requires_auth());
    }

    #[test]
    fn a_non_loopback_status_address_without_a_password_hash_names_the_key() {
        for addr in ["0.0.0.0:9001", "192.168.1.2:9001", "[::]:9001"] {
            let e = parse(&format!("[site]\nid='s'\n[status]\nlisten = '{addr}'\n")).unwrap_err();
            assert!(
                e.to_string().contains("status.password_hash"),
                "{addr}: {e}"
            );
        }
        let hash = crate::password::hash("pw").unwrap();
        let c = parse(&format!(
            "[site]\nid='s'\n[status]\nlisten = '0.0.0.0:9001'\npassword_hash = '{hash}'\n"
        ))
        .unwrap();
        assert!(c.status.requires_auth());
    }

    #[test]
    fn every_loopback_address_counts_as_loopback() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1", "128.0.0.1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_bad_status_key_is_named() {
        let e = parse("[site]\nid='s'\n[status]\nlisten = 'localhost'\n").unwrap_err();
        assert!(e.to_string().contains("status.listen"), "{e}");
        let e = parse("[site]\nid='s'\n[status]\npassword_hash = 'x'\n").unwrap_err();
        assert!(e.to_string().contains("status.password_hash"), "{e}");
        let e = parse("[site]\nid='s'\n[status]\nlistn = ''\n").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
    }

    #[test]
    fn a_bad_uplink_scheme_names_the_key() {
        let e = parse("[site]\nid='s'\n[uplink]\nurl='http://x'\n").unwrap_err();
        assert!(e.to_string().contains("uplink.url"), "{e}");
    }

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3jGMZM0ZyLKnsUvQR0SH5xEAW2iPa7S9eRMLgWWKbO8";

    fn tls_site(extra_ocpp: &str, chargers: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "[site]\nid='s'\n[ocpp]\ntls_listen='0.0.0.0:9443'\ntls_cert_file='/c.pem'\ntls_key_file='/k.pem'\n{extra_ocpp}\n{chargers}"
        ))
    }

    #[test]
    fn security_profiles_come_with_what_they_need_and_name_the_key_that_is_missing() {
        let e = tls_site("", "[[ocpp.chargers]]\nid='CP1'\nsecurity_profile=2\n").unwrap_err();
        assert!(
            e.to_string().contains("ocpp.chargers[0].password_hash"),
            "{e}"
        );
        let e = tls_site("", "[[ocpp.chargers]]\nid='CP1'\nsecurity_profile=3\n").unwrap_err();
        assert!(e.to_string().contains("ocpp.client_ca_file"), "{e}");
        let e = tls_site("", "[[ocpp.chargers]]\nid='CP1'\nsecurity_profile=4\n").unwrap_err();
        assert!(
            e.to_string().contains("ocpp.chargers[0].security_profile"),
            "{e}"
        );
        let e = parse(&format!(
            "[site]\nid='s'\n[[ocpp.chargers]]\nid='CP1'\nsecurity_profile=2\npassword_hash='{HASH}'\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_listen"), "{e}");
        let c = tls_site(
            "client_ca_file='/ca.pem'\ncpo_name='ACME'",
            &format!("[[ocpp.chargers]]\nid='CP1'\nsecurity_profile=3\ncert_cn='cp-1.acme'\nserial='SN1'\n[[ocpp.chargers]]\nid='CP2'\nsecurity_profile=2\npassword_hash='{HASH}'\n"),
        )
        .unwrap();
        let cp1 = &c.ocpp.chargers["CP1"];
        assert_eq!(
            (
                cp1.security_profile,
                cp1.cert_cn.as_deref(),
                cp1.serial.as_deref()
            ),
            (3, Some("cp-1.acme"), Some("SN1"))
        );
        assert_eq!(c.ocpp.chargers["CP2"].security_profile, 2);
        assert_eq!(c.ocpp.cpo_name.as_deref(), Some("ACME"));
        let t = c.ocpp.tls.unwrap();
        assert_eq!(t.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(t.client_ca_file, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn tls_files_without_tls_listen_and_tls_listen_without_files_name_the_key() {
        let e = parse("[site]\nid='s'\n[ocpp]\ntls_cert_file='/c.pem'\n").unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_cert_file"), "{e}");
        let e = parse("[site]\nid='s'\n[ocpp]\ntls_listen='0.0.0.0:9443'\n").unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_cert_file"), "{e}");
        let e = parse("[site]\nid='s'\n[ocpp]\nlisten='0.0.0.0:9000'\ntls_listen='0.0.0.0:9000'\ntls_cert_file='/c'\ntls_key_file='/k'\n").unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_listen"), "{e}");
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_private_key_open_to_other_users_is_a_config_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "c.pem", "x", 0o644);
        let key = write(dir.path(), "k.pem", "x", 0o644);
        let text = format!(
            "[site]\nid='s'\n[ocpp]\ntls_listen='0.0.0.0:9443'\ntls_cert_file='{}'\ntls_key_file='{}'\n",
            cert.display(),
            key.display()
        );
        let mut c = parse(&text).unwrap();
        let e = resolve_files(&mut c, None).unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_key_file"), "{e}");
        assert!(e.to_string().contains("open to other users"), "{e}");
        // Group-readable is Debian's ssl-cert convention: allowed.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let mut c = parse(&text).unwrap();
        resolve_files(&mut c, None).unwrap();
        // A missing file names its key.
        std::fs::remove_file(&cert).unwrap();
        let mut c = parse(&text).unwrap();
        let e = resolve_files(&mut c, None).unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_cert_file"), "{e}");
    }

    #[test]
    fn secrets_come_from_systemd_credentials_named_percent_d() {
        let creds = tempfile::tempdir().unwrap();
        write(creds.path(), "broker", "hunter2\n", 0o400);
        write(creds.path(), "tls.key", "x", 0o400);
        let cert = write(creds.path(), "c.pem", "x", 0o644);
        let text = format!(
            "[site]\nid='s'\n[ocpp]\ntls_listen='0.0.0.0:9443'\ntls_cert_file='{}'\ntls_key_file='%d/tls.key'\n[uplink]\nurl='mqtt://127.0.0.1'\nusername='site'\npassword_file='%d/broker'\n",
            cert.display()
        );
        let mut c = parse(&text).unwrap();
        resolve_files(&mut c, Some(creds.path())).unwrap();
        let u = c.uplink.as_ref().unwrap();
        assert_eq!(
            u.password.as_deref(),
            Some("hunter2"),
            "the trailing newline is not part of it"
        );
        assert_eq!(
            c.ocpp.tls.as_ref().unwrap().key_file,
            creds.path().join("tls.key")
        );
        // Without $CREDENTIALS_DIRECTORY a credential is a config error naming the key.
        let mut c = parse(&text).unwrap();
        let e = resolve_files(&mut c, None).unwrap_err();
        assert!(e.to_string().contains("ocpp.tls_key_file"), "{e}");
        assert!(e.to_string().contains("CREDENTIALS_DIRECTORY"), "{e}");
        // A password file others may read is refused like a key.
        write(creds.path(), "broker", "hunter2", 0o644);
        let mut c = parse(&text.replace(
            "tls_key_file='%d/tls.key'",
            &format!("tls_key_file='{}'", creds.path().join("tls.key").display()),
        ))
        .unwrap();
        let e = resolve_files(&mut c, Some(creds.path())).unwrap_err();
        assert!(e.to_string().contains("uplink.password_file"), "{e}");
        // password and password_file exclude each other.
        let e = parse("[site]\nid='s'\n[uplink]\nurl='mqtt://h'\nusername='u'\npassword='p'\npassword_file='/f'\n").unwrap_err();
        assert!(e.to_string().contains("uplink.password_file"), "{e}");
    }
}
