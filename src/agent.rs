//! The daemon's wiring: store thread, OCPP server, gateway hardware and systemd, and the
//! orderly shutdown that flushes the store before the process exits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chargesite_hal::{self as hal, Indicator, IndicatorState, LinkState, Watchdog};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Secret;
use crate::config::Config;
use crate::notice::Notices;
use crate::ocpp::handler::Context;
use crate::ocpp::registry::Registry;
use crate::ocpp::server::Server;
use crate::session::Limits;
use crate::store::{self, Store, StoreError, StoreSettings};

/// Failures that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store could not be opened.
    #[error("store {path}: {source}")]
    Store {
        /// Database path.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The OCPP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The `wss://` certificates or keys cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::ocpp::tls::TlsError),
    /// The uplink could not be configured.
    #[error("uplink: {0}")]
    Uplink(#[from] crate::uplink::UplinkError),
    /// Gateway hardware named in the config could not be opened.
    #[error("gateway {what}: {source}")]
    Hardware {
        /// Which device.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A running agent's handles, for the daemon and for tests that embed it.
pub struct Agent {
    /// The address the OCPP server listens on.
    pub local_addr: SocketAddr,
    /// The `wss://` endpoint's address, when `[ocpp] tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
    /// Connected chargers and outbound CALLs.
    pub registry: Registry,
    /// The store handle.
    pub store: Store,
}

/// Runs the agent until `shutdown` is cancelled; `on_ready` is called once it listens.
///
/// # Errors
/// [`AgentError`] when startup fails; after startup, failures are logged and survived.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Agent),
) -> Result<(), AgentError> {
    let config = Arc::new(config);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let state_dir = config
        .store
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let secret = Secret::load_or_create(&state_dir).map_err(|source| AgentError::Hardware {
        what: "otp-secret in the state directory",
        source,
    })?;
    let (store, store_thread) = store::open(
        &config.store.path,
        StoreSettings {
            site_id: config.site_id.clone(),
            max_batch: config.store.max_batch,
            limits: Limits {
                max_charger_power_w: config.ocpp.max_charger_power_w,
                clock_tolerance_secs: config.ocpp.clock_tolerance_secs,
            },
            lockout: config.auth.lockout,
            metrics: metrics.clone(),
            secret: secret.clone(),
            unknown_tags: config.auth.unknown_tags,
        },
    )
    .map_err(|source| AgentError::Store {
        path: config.store.path.display().to_string(),
        source,
    })?;
    let listener = TcpListener::bind(config.ocpp.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.ocpp.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: config.ocpp.listen,
        source,
    })?;
    let (tls_slot, tls_listener) = match &config.ocpp.tls {
        None => (None, None),
        Some(t) => {
            let slot = crate::ocpp::tls::Slot::load(t)?;
            let l = TcpListener::bind(t.listen)
                .await
                .map_err(|source| AgentError::Listen {
                    addr: t.listen,
                    source,
                })?;
            (Some(slot), Some(l))
        }
    };
    let tls_addr = match &tls_listener {
        Some(l) => Some(l.local_addr().map_err(|source| AgentError::Listen {
            addr: local_addr,
            source,
        })?),
        None => None,
    };
    let gateway = Gateway::open(&config)?;
    let registry = Registry::default();
    let uplink_online = Arc::new(AtomicBool::new(false));
    let (notices, notices_rx) = Notices::channel();
    let (power, power_task) = crate::ocpp::smart::spawn(
        crate::ocpp::smart::Parts {
            cap_w: config.site_max_power_w,
            chargers: config.ocpp.chargers.clone(),
            store: store.clone(),
            registry: registry.clone(),
            call_timeout: config.ocpp.call_timeout,
        },
        shutdown.clone(),
    );
    let (reservations, reservations_task) = crate::ocpp::reserve::spawn(
        crate::ocpp::reserve::Parts {
            store: store.clone(),
            registry: registry.clone(),
            secret: secret.clone(),
            call_timeout: config.ocpp.call_timeout,
        },
        shutdown.clone(),
    );
    let ctx = Arc::new(Context {
        ocpp: config.ocpp.clone(),
        free_vend: config.auth.free_vend,
        store: store.clone(),
        uplink_online: uplink_online.clone(),
        notices,
        secret: secret.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        power: power.clone(),
        reservations: reservations.clone(),
    });
    // The uplink gets its own token: it must outlive the OCPP side on shutdown so that the
    // last events and the offline state still go out.
    let uplink_token = CancellationToken::new();
    let uplink = tokio::spawn(crate::uplink::run(
        crate::uplink::Parts {
            uplink: config.uplink.clone(),
            site_id: config.site_id.clone(),
            call_timeout: config.ocpp.call_timeout,
            store: store.clone(),
            registry: registry.clone(),
            online: uplink_online.clone(),
            notices: notices_rx,
            secret,
            metrics: metrics.clone(),
            power,
            reservations,
            binding: crate::uplink::Binding {
                cert_cn: config
                    .ocpp
                    .chargers
                    .iter()
                    .filter_map(|(id, e)| e.cert_cn.clone().map(|cn| (id.clone(), cn)))
                    .collect(),
                cpo_name: config.ocpp.cpo_name.clone(),
            },
        },
        uplink_token.clone(),
    ));
    let server = Server::new(ctx, registry.clone(), tls_slot);
    tracing::info!(site = %config.site_id, %local_addr, "chargesite listening for chargers on ws://{local_addr}/ocpp/<id>");
    let tls_server = tls_listener.map(|l| {
        if let Some(a) = tls_addr {
            tracing::info!(%a, "and on wss://{a}/ocpp/<id> (security profiles 2 and 3)");
        }
        tokio::spawn(server.clone().serve_tls(l, shutdown.clone()))
    });
    let reloader = tokio::spawn(reload_on_sighup(
        config.clone(),
        server.clone(),
        shutdown.clone(),
    ));
    on_ready(&Agent {
        tls_addr,
        local_addr,
        registry: registry.clone(),
        store: store.clone(),
    });
    notify(hal::systemd::ready());

    let probe_store = store.clone();
    let supervisor = tokio::spawn(gateway.supervise(
        // The supervisor's only contact with the store. A no-op goes through the store
        // thread's commit path like any write, so a wedged thread or a stuck COMMIT fails
        // the probe, where checking the channel alone would not.
        move || {
            let store = probe_store.clone();
            async move { store.probe().await.is_ok() }
        },
        registry.clone(),
        config.uplink.is_some().then(|| uplink_online.clone()),
        hal::systemd::watchdog_interval(),
        shutdown.clone(),
    ));
    // Never a reason not to start: it logs and returns when it cannot listen.
    let status = tokio::spawn(crate::status::run(
        crate::status::Parts {
            config: config.status.clone(),
            site_id: config.site_id.clone(),
            store: store.clone(),
            store_path: config.store.path.clone(),
            quota_bytes: config.store.quota_bytes,
            registry: registry.clone(),
            metrics,
            uplink: config.uplink.is_some().then(|| uplink_online.clone()),
        },
        shutdown.clone(),
    ));
    let retain_sent = config.uplink.as_ref().map(|u| u.retain_sent);
    let housekeeping = tokio::spawn(housekeeping(
        retain_sent,
        config.store.quota_bytes,
        store.clone(),
        shutdown.clone(),
    ));
    server.serve(listener, shutdown.clone()).await;
    notify(hal::systemd::stopping());
    shutdown.cancel();
    if let Some(t) = tls_server {
        if let Err(e) = t.await {
            tracing::error!("wss:// server failed: {e}");
        }
    }
    for (name, task) in [
        ("config reloader", reloader),
        ("gateway supervisor", supervisor),
        ("housekeeping", housekeeping),
        ("site power", power_task),
        ("reservations", reservations_task),
        ("status server", status),
    ] {
        if let Err(e) = task.await {
            tracing::error!("{name} failed: {e}");
        }
    }
    uplink_token.cancel();
    match uplink.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("{e}"),
        Err(e) => tracing::error!("uplink task failed: {e}"),
    }
    // Everything acknowledged is already committed; Close commits what is queued and
    // stops the thread, which checkpoints the WAL.
    if let Err(e) = store.close().await {
        tracing::error!("store close: {e}");
    }
    drop(store);
    let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
    tracing::info!("chargesite stopped");
    Ok(())
}

/// SIGHUP (`systemctl reload`): reads the config file again and applies what can change
/// without a restart (CONTRACT §6): the charger list and the TLS certificates and keys.
/// An invalid new config, or TLS files that cannot be used, are refused with a log line
/// and the old config stays in force; connected chargers stay connected unless their
/// own entry changed.
async fn reload_on_sighup(config: Arc<Config>, server: Arc<Server>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(path) = config.source.clone() else {
        return;
    };
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; a config reload needs a restart");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        notify(hal::systemd::reloading());
        let outcome = crate::config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|new| {
                let restart = restart_only_changes(&config, &new);
                server.reload(&new.ocpp).map(|notes| (notes, restart))
            });
        match outcome {
            Ok((notes, restart)) => {
                tracing::info!(
                    "config reloaded from {}: {}",
                    path.display(),
                    notes.join("; ")
                );
                if !restart.is_empty() {
                    tracing::warn!(
                        "changed keys that only a restart applies: {}",
                        restart.join(", ")
                    );
                }
            }
            Err(e) => {
                tracing::warn!("config reload refused, the running config stays in force: {e}")
            }
        }
        notify(hal::systemd::ready());
    }
}

/// The sections a reload does not apply, when the new config changes them.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let (o, n) = (&old.ocpp, &new.ocpp);
    if o.listen != n.listen {
        changed.push("ocpp.listen");
    }
    if (
        o.heartbeat_interval,
        o.ping_interval,
        o.pong_timeout,
        o.call_timeout,
    ) != (
        n.heartbeat_interval,
        n.ping_interval,
        n.pong_timeout,
        n.call_timeout,
    ) {
        changed.push("ocpp timers");
    }
    if old.site_id != new.site_id {
        changed.push("site.id");
    }
    if old.store.path != new.store.path {
        changed.push("store.path");
    }
    if format!("{:?}", old.uplink) != format!("{:?}", new.uplink) {
        changed.push("uplink");
    }
    if format!("{:?}", old.status) != format!("{:?}", new.status) {
        changed.push("status");
    }
    if old.auth.free_vend != new.auth.free_vend {
        changed.push("auth");
    }
    if old.site_max_power_w != new.site_max_power_w {
        changed.push("site.max_power_kw");
    }
    let power = |c: &Config| -> Vec<(String, u32, u8)> {
        let mut v: Vec<_> = c
            .ocpp
            .chargers
            .iter()
            .map(|(id, e)| (id.clone(), e.max_power_w, e.phases))
            .collect();
        v.sort();
        v
    };
    if power(old) != power(new) {
        changed.push("ocpp.chargers max_power_kw / phases (the site power allocator)");
    }
    changed
}

/// Longest retention the arithmetic takes: a hundred years.
const MAX_RETAIN_SECS: i64 = 100 * 365 * 86_400;

/// Every minute: drop what retention and the storage quota allow (see `store::outbox`).
/// Runs with or without an uplink: the quota protects the gateway's flash either way.
async fn housekeeping(
    retain_sent: Option<Duration>,
    quota_bytes: Option<u64>,
    store: Store,
    shutdown: CancellationToken,
) {
    // Without an uplink nothing is ever sent, so retention never applies; the bound only
    // keeps the arithmetic in range.
    let retain_secs = retain_sent.map_or(MAX_RETAIN_SECS, |r| {
        i64::try_from(r.as_secs()).map_or(MAX_RETAIN_SECS, |s| s.min(MAX_RETAIN_SECS))
    });
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let pruned = store
            .prune(crate::time::now(), retain_secs, quota_bytes)
            .await;
        match pruned {
            Ok(n) if n > 0 => tracing::info!(dropped = n, "outbox pruned"),
            Ok(_) => {}
            Err(e) => tracing::error!("pruning: {e}"),
        }
    }
}

/// How often the supervisor looks, unless systemd's watchdog wants it more often.
const TICK: Duration = Duration::from_secs(1);
/// How long the store gets to commit the supervisor's no-op before it counts as wedged.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the supervisor saw on one tick; [`health`] turns it into what to show and whether
/// the agent has earned its watchdog kick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    /// The store committed a no-op within the probe timeout.
    store_answered: bool,
    /// The uplink's network interface reports up; true when none is configured, since
    /// without one there is nothing that could say otherwise.
    interface_up: bool,
    /// Whether the uplink is connected to the broker; `None` without an uplink.
    uplink_online: Option<bool>,
    /// Chargers connected right now, for the status line.
    chargers: usize,
}

/// What the supervisor does about one [`Probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    /// What the status light shows.
    indicator: IndicatorState,
    /// Whether to kick the hardware watchdog and ping systemd's.
    kick: bool,
    /// systemd's `STATUS=` line (see [`status_line`]).
    status: String,
}

/// The supervisor's decision. Only the store earns a kick: a wedged store thread means a
/// wedged agent, which a restart fixes, while a network outage does not get better by
/// rebooting the board, so it only changes the light.
fn health(probe: Probe) -> Health {
    let uplink_usable = probe.interface_up && probe.uplink_online.unwrap_or(true);
    let indicator = match (probe.store_answered, uplink_usable) {
        (false, _) => IndicatorState::Fault,
        (true, false) => IndicatorState::Offline,
        (true, true) => IndicatorState::Online,
    };
    Health {
        indicator,
        kick: probe.store_answered,
        status: status_line(probe.chargers, probe.uplink_online, probe.store_answered),
    }
}

/// What `systemctl status chargesite` shows on its `Status:` line, e.g.
/// `3 chargers connected, uplink online, store ok`. `uplink` is `None` without one.
fn status_line(chargers: usize, uplink: Option<bool>, store_ok: bool) -> String {
    format!(
        "{chargers} charger{} connected, uplink {}, store {}",
        if chargers == 1 { "" } else { "s" },
        match uplink {
            None => "not configured",
            Some(true) => "online",
            Some(false) => "offline (buffering)",
        },
        if store_ok { "ok" } else { "NOT ANSWERING" }
    )
}

fn notify(r: std::io::Result<bool>) {
    if let Err(e) = r {
        tracing::warn!("sd_notify: {e}");
    }
}

/// The gateway's optional hardware, each piece behind its hal trait so the supervisor runs
/// the same over the board's devices and over `chargesite_hal::fake` in tests.
struct Gateway {
    indicator: Option<Box<dyn Indicator>>,
    watchdog: Option<Box<dyn Watchdog>>,
    link: Option<Box<dyn LinkState>>,
}

impl Gateway {
    /// Opens the devices `config.gateway` names; the one place that picks the Linux
    /// implementations.
    fn open(config: &Config) -> Result<Self, AgentError> {
        let g = &config.gateway;
        let indicator =
            match &g.led {
                Some(p) => Some(Box::new(hal::linux::SysfsLed::open(p.clone()).map_err(
                    |source| AgentError::Hardware {
                        what: "led",
                        source,
                    },
                )?) as Box<dyn Indicator>),
                None => None,
            };
        let watchdog = match &g.watchdog_device {
            Some(p) => Some(Box::new(hal::linux::DevWatchdog::open(p.clone()).map_err(
                |source| AgentError::Hardware {
                    what: "watchdog_device",
                    source,
                },
            )?) as Box<dyn Watchdog>),
            None => None,
        };
        let link = match &g.uplink_interface {
            Some(i) => Some(
                Box::new(hal::linux::SysfsOperstate::new(i).map_err(|source| {
                    AgentError::Hardware {
                        what: "uplink_interface",
                        source,
                    }
                })?) as Box<dyn LinkState>,
            ),
            None => None,
        };
        Ok(Self {
            indicator,
            watchdog,
            link,
        })
    }

    /// Every second: ask `probe_store` whether the store answers (the daemon's probe
    /// commits a no-op); only a store that answers within [`STORE_PROBE_TIMEOUT`] earns a watchdog kick (hardware, and systemd's when
    /// `systemd_watchdog` is the unit's `WatchdogSec=`), so a wedged agent gets restarted.
    /// The light and systemd's `STATUS=` line follow [`health`]; the status line is sent
    /// only when it changes. `uplink_online` is `None` without an uplink. On shutdown the
    /// light goes offline and the watchdog is disarmed, so a deliberate stop does not
    /// reboot the board.
    ///
    /// `probe_store` is called once per tick; a probe that never finishes counts as a
    /// store that does not answer.
    async fn supervise<P, F>(
        mut self,
        mut probe_store: P,
        registry: Registry,
        uplink_online: Option<Arc<AtomicBool>>,
        systemd_watchdog: Option<Duration>,
        shutdown: CancellationToken,
    ) where
        P: FnMut() -> F,
        F: Future<Output = bool>,
    {
        let mut last_status = String::new();
        // systemd wants a ping at least every half of WatchdogSec=.
        let systemd_period = systemd_watchdog.map(|d| d / 2);
        let period = systemd_period.unwrap_or(TICK).min(TICK);
        let mut tick = tokio::time::interval(period);
        // Starts true so that a healthy start logs nothing.
        let mut store_was_answering = true;
        loop {
            tokio::select! {
                // After a hung probe the missed ticks are ready at once; without `biased`
                // the pick is random, and each lost draw cost shutdown another probe timeout.
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let store_answered = tokio::time::timeout(STORE_PROBE_TIMEOUT, probe_store())
                .await
                .unwrap_or(false);
            // An unreadable operstate counts as down: the light should not claim a link
            // nobody can vouch for.
            let interface_up = self
                .link
                .as_ref()
                .is_none_or(|l| l.is_up().unwrap_or(false));
            let health = health(Probe {
                store_answered,
                interface_up,
                uplink_online: uplink_online.as_ref().map(|o| o.load(Ordering::Relaxed)),
                chargers: registry.connected_count(),
            });
            if store_answered != store_was_answering {
                tracing::warn!(store_ok = store_answered, "store health changed");
                store_was_answering = store_answered;
            }
            if health.kick {
                if let Some(w) = self.watchdog.as_mut() {
                    if let Err(e) = w.kick() {
                        tracing::warn!("watchdog kick: {e}");
                    }
                }
                if systemd_period.is_some() {
                    notify(hal::systemd::watchdog());
                }
            }
            if let Some(i) = self.indicator.as_mut() {
                if let Err(e) = i.set(health.indicator) {
                    tracing::warn!("indicator: {e}");
                }
            }
            if health.status != last_status {
                notify(hal::systemd::status(&health.status));
                last_status = health.status;
            }
        }
        if let Some(i) = self.indicator.as_mut() {
            let _ = i.set(IndicatorState::Offline);
        }
        if let Some(w) = self.watchdog.as_mut() {
            if let Err(e) = w.disarm() {
                tracing::warn!("watchdog disarm: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway where everything works: store answers, interface up, broker connected.
    fn all_well() -> Probe {
        Probe {
            store_answered: true,
            interface_up: true,
            uplink_online: Some(true),
            chargers: 2,
        }
    }

    #[test]
    fn a_store_that_answers_with_link_and_broker_up_shows_online_and_earns_a_kick() {
        let h = health(all_well());
        assert_eq!(h.indicator, IndicatorState::Online);
        assert!(h.kick);
        assert_eq!(h.status, "2 chargers connected, uplink online, store ok");
    }

    #[test]
    fn a_store_that_does_not_answer_shows_fault_and_earns_no_kick() {
        let h = health(Probe {
            store_answered: false,
            ..all_well()
        });
        assert_eq!(h.indicator, IndicatorState::Fault);
        assert!(!h.kick);
        assert_eq!(
            h.status,
            "2 chargers connected, uplink online, store NOT ANSWERING"
        );
    }

    #[test]
    fn a_store_that_does_not_answer_shows_fault_even_while_offline() {
        let h = health(Probe {
            store_answered: false,
            interface_up: false,
            uplink_online: Some(false),
            ..all_well()
        });
        assert_eq!(h.indicator, IndicatorState::Fault);
        assert!(!h.kick);
    }

    #[test]
    fn a_down_interface_shows_offline_even_with_the_broker_connected() {
        let h = health(Probe {
            interface_up: false,
            ..all_well()
        });
        assert_eq!(h.indicator, IndicatorState::Offline);
    }

    #[test]
    fn a_disconnected_broker_shows_offline_with_the_interface_up() {
        let h = health(Probe {
            uplink_online: Some(false),
            ..all_well()
        });
        assert_eq!(h.indicator, IndicatorState::Offline);
        assert_eq!(
            h.status,
            "2 chargers connected, uplink offline (buffering), store ok"
        );
    }

    #[test]
    fn an_offline_gateway_still_earns_its_kick() {
        let h = health(Probe {
            interface_up: false,
            uplink_online: Some(false),
            ..all_well()
        });
        assert!(h.kick);
    }

    #[test]
    fn without_an_uplink_only_the_interface_decides_online() {
        let no_uplink = Probe {
            uplink_online: None,
            ..all_well()
        };
        let h = health(no_uplink);
        assert_eq!(h.indicator, IndicatorState::Online);
        assert_eq!(
            h.status,
            "2 chargers connected, uplink not configured, store ok"
        );
        let h = health(Probe {
            interface_up: false,
            ..no_uplink
        });
        assert_eq!(h.indicator, IndicatorState::Offline);
    }

    use chargesite_hal::fake::{FakeIndicator, FakeLink, FakeWatchdog};
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, Instant};

    /// The supervisor running over the hal fakes, with an uplink that is connected and a
    /// store the test can wedge. Its ticks fall on whole seconds from the start; the tests
    /// look half-way between two ticks.
    struct Rig {
        led: FakeIndicator,
        watchdog: FakeWatchdog,
        link: FakeLink,
        store_answers: Arc<AtomicBool>,
        shutdown: CancellationToken,
        supervisor: JoinHandle<()>,
    }

    impl Rig {
        fn start() -> Self {
            let led = FakeIndicator::new();
            let watchdog = FakeWatchdog::new();
            let link = FakeLink::new(true);
            let gateway = Gateway {
                indicator: Some(Box::new(led.clone())),
                watchdog: Some(Box::new(watchdog.clone())),
                link: Some(Box::new(link.clone())),
            };
            let store_answers = Arc::new(AtomicBool::new(true));
            let answers = store_answers.clone();
            // While the test says the store does not answer, the probe never finishes, as
            // when the store thread is stuck: only the supervisor's timeout ends it.
            let probe_store = move || {
                let answering = answers.load(Ordering::SeqCst);
                async move {
                    if !answering {
                        std::future::pending::<()>().await;
                    }
                    true
                }
            };
            let shutdown = CancellationToken::new();
            let supervisor = tokio::spawn(gateway.supervise(
                probe_store,
                Registry::default(),
                Some(Arc::new(AtomicBool::new(true))),
                None,
                shutdown.clone(),
            ));
            Self {
                led,
                watchdog,
                link,
                store_answers,
                shutdown,
                supervisor,
            }
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn the_light_follows_the_link_and_every_tick_earns_a_kick_while_the_store_answers() {
        let rig = Rig::start();
        sleep(secs(2.5)).await; // ticks at 0, 1, 2
        assert_eq!(rig.led.history(), vec![IndicatorState::Online; 3]);
        assert_eq!(rig.watchdog.kicks(), 3);

        rig.link.set_up(false);
        sleep(secs(1.0)).await; // tick at 3
        assert_eq!(rig.led.current(), Some(IndicatorState::Offline));
        assert_eq!(
            rig.watchdog.kicks(),
            4,
            "a down link must not cost the kick"
        );

        rig.link.set_up(true);
        sleep(secs(1.0)).await; // tick at 4
        assert_eq!(rig.led.current(), Some(IndicatorState::Online));
        assert_eq!(rig.watchdog.kicks(), 5);
        assert!(!rig.watchdog.disarmed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_stops_answering_shows_fault_after_the_probe_timeout_and_stops_the_kicks()
    {
        let rig = Rig::start();
        sleep(secs(1.5)).await; // ticks at 0, 1
        assert_eq!(rig.watchdog.kicks(), 2);

        rig.store_answers.store(false, Ordering::SeqCst);
        sleep(secs(5.0)).await; // the probe from the tick at 2 hangs until 7
        assert_eq!(rig.led.current(), Some(IndicatorState::Online));
        assert_eq!(rig.watchdog.kicks(), 2);
        sleep(secs(1.0)).await; // timed out at 7; the next probe hangs until 12
        assert_eq!(rig.led.current(), Some(IndicatorState::Fault));
        assert_eq!(rig.watchdog.kicks(), 2);

        sleep(secs(20.0)).await;
        assert_eq!(rig.led.current(), Some(IndicatorState::Fault));
        assert_eq!(
            rig.watchdog.kicks(),
            2,
            "a wedged store must let the watchdog run out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_disarms_the_watchdog_and_leaves_the_light_offline() {
        let rig = Rig::start();
        sleep(secs(1.5)).await;
        rig.shutdown.cancel();
        rig.supervisor.await.unwrap();
        assert!(rig.watchdog.disarmed());
        assert_eq!(rig.led.current(), Some(IndicatorState::Offline));
        assert_eq!(rig.watchdog.kicks(), 2, "no kick after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_hung_probe_waits_at_most_the_probe_timeout() {
        let rig = Rig::start();
        rig.store_answers.store(false, Ordering::SeqCst);
        sleep(secs(0.5)).await; // the probe from the tick at 0 hangs
        let asked = Instant::now();
        rig.shutdown.cancel();
        rig.supervisor.await.unwrap();
        assert!(asked.elapsed() <= STORE_PROBE_TIMEOUT);
        assert!(rig.watchdog.disarmed());
        assert_eq!(rig.led.current(), Some(IndicatorState::Offline));
    }

    #[test]
    fn the_status_line_names_chargers_uplink_and_store() {
        assert_eq!(
            status_line(1, None, true),
            "1 charger connected, uplink not configured, store ok"
        );
        assert_eq!(
            status_line(12, Some(true), true),
            "12 chargers connected, uplink online, store ok"
        );
        assert_eq!(
            status_line(0, Some(false), false),
            "0 chargers connected, uplink offline (buffering), store NOT ANSWERING"
        );
    }
}
