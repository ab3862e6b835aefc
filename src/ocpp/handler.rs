//! What the central system answers to each charger request.
//!
//! Decoding and decisions are pure (see [`super::messages`], [`crate::auth`]); this module
//! turns a decoded request into a store op, awaits its COMMIT, and only then builds the
//! CALLRESULT. A store failure is answered with a CALLERROR `InternalError`, so the charger
//! keeps the message and retries: nothing is acknowledged that is not durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::binding;
use super::commands::{self as ocpp_cmd, Command, TransactionRef, TransactionStatus};
use super::frame::{self, ErrorCode, Version};
use super::messages::{self, Request};
use super::registry::Registry;
use super::smart::Reason;
use super::v201;
use crate::auth;
use crate::config::OcppConfig;
use crate::events::LiveSnapshot;
use crate::notice::{Notice, Notices};
use crate::reading::Sample;
use crate::store::{
    Boot, CsrIn, MeterIn, SecurityAlert, StartTx, StatusIn, StopOutcome, StopTx, Store,
};
use crate::time::{fmt_ts, now};

/// What every connection's handler shares.
pub struct Context {
    /// `[ocpp]`.
    pub ocpp: OcppConfig,
    /// `[auth] free_vend`: every id tag is accepted.
    pub free_vend: bool,
    /// The store.
    pub store: Store,
    /// Whether the uplink is connected now (recorded on `session.started`).
    pub uplink_online: Arc<AtomicBool>,
    /// Snapshots for the uplink's retained and live topics.
    pub notices: Notices,
    /// The per-site key OTPs are hashed with.
    pub secret: auth::Secret,
    /// Connected chargers (the budget stop goes through it).
    pub registry: Registry,
    /// CALL counts and latency, security events, refused connections.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The site power limit's driver (sessions starting and stopping, readings).
    pub power: super::smart::Power,
    /// The reservation driver (chargers connecting).
    pub reservations: super::reserve::Reservations,
}

impl Context {
    /// Where `cp_id`'s connection comes from, for the OTP guessing limits (a charger
    /// that is not registered counts as configured or not by `[ocpp]`, with no address).
    pub fn origin(&self, cp_id: &str) -> auth::Origin {
        self.registry.origin(cp_id).unwrap_or_else(|| auth::Origin {
            remote: None,
            known: self.ocpp.chargers.contains_key(cp_id),
        })
    }
}

/// A charger's request, decoded for the version its connection speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// OCPP 1.6.
    V16(Request),
    /// OCPP 2.0.1.
    V201(v201::messages::Request),
}

/// Decodes one CALL from charger `cp_id`; a payload that does not decode is answered
/// with the CALLERROR frame returned as the error, spelled as `version` spells it.
///
/// Synchronous on purpose: the connection drops the frame's text and JSON tree before it
/// awaits the store in [`handle_request`], so a thousand chargers waiting on one group
/// commit do not each hold their message twice.
pub fn decode_call(
    cp_id: &str,
    version: Version,
    id: &str,
    action: &str,
    payload: &Value,
) -> Result<Decoded, String> {
    let decoded = match version {
        Version::V16 => messages::decode(action, payload).map(Decoded::V16),
        Version::V201 => v201::messages::decode(action, payload).map(Decoded::V201),
    };
    decoded.map_err(|e| {
        tracing::info!(
            cp_id,
            action,
            code = e.code.as_str(),
            "rejected: {}",
            e.description
        );
        frame::call_error_in(version, id, e.code, &e.description)
    })
}

/// Answers one decoded CALL from charger `cp_id`; returns the frame to send back.
pub async fn handle_request(
    ctx: &Context,
    cp_id: &str,
    version: Version,
    id: &str,
    action: &str,
    request: Decoded,
) -> String {
    let answered = match request {
        Decoded::V16(r) => answer(ctx, cp_id, r).await,
        Decoded::V201(r) => v201::handler::answer(ctx, cp_id, r).await,
    };
    match answered {
        Ok(payload) => frame::call_result(id, payload),
        Err(e) => {
            tracing::error!(cp_id, action, "store failed, answering InternalError: {e}");
            frame::call_error_in(
                version,
                id,
                ErrorCode::InternalError,
                "could not record the message; retry later",
            )
        }
    }
}

async fn answer(
    ctx: &Context,
    cp_id: &str,
    request: Request,
) -> Result<Value, crate::store::StoreError> {
    let received = now();
    let cp = cp_id.to_string();
    let free_vend = ctx.free_vend;
    Ok(match request {
        Request::BootNotification {
            vendor,
            model,
            serial,
            firmware,
        } => {
            ctx.store
                .booted(Boot {
                    cp_id: cp,
                    vendor,
                    model,
                    serial,
                    firmware,
                    at: received,
                })
                .await?;
            ctx.power.changed(Reason::ChargerReconnected, Some(cp_id));
            sync_local_list(
                ctx.store.clone(),
                ctx.registry.clone(),
                cp_id.to_string(),
                ctx.ocpp.call_timeout,
                false,
            );
            json!({
                "status": "Accepted",
                "currentTime": fmt_ts(now()),
                "interval": ctx.ocpp.heartbeat_interval.as_secs(),
            })
        }
        Request::Heartbeat => {
            // Only "last seen" depends on this write; a charger must not be told to retry
            // its heartbeat (and get no time) because of it.
            if let Err(e) = ctx.store.charger_seen(cp, received).await {
                tracing::warn!(cp_id, "cannot record the heartbeat: {e}");
            }
            json!({"currentTime": fmt_ts(now())})
        }
        Request::StatusNotification {
            connector_id,
            status,
            error_code,
            timestamp,
            info,
        } => {
            ctx.store
                .status(StatusIn {
                    cp_id: cp.clone(),
                    connector_id,
                    status,
                    error_code,
                    info,
                    charger_ts: timestamp,
                    at: received,
                })
                .await?;
            ctx.notices.send(Notice::Connectors { cp_id: cp });
            json!({})
        }
        Request::Authorize { id_tag } => {
            let decision = ctx
                .store
                .authorize(
                    cp,
                    ctx.origin(cp_id),
                    auth::present(&ctx.secret, &id_tag),
                    free_vend,
                    ctx.uplink_online.load(Ordering::Relaxed),
                    received,
                )
                .await?;
            let mut info = json!({"status": decision.result.ocpp_status()});
            if let Some(parent) = reserved_group(ctx, &decision).await {
                // the order's reservation: the charger lets its driver in by this
                info["parentIdTag"] = json!(parent);
            }
            json!({ "idTagInfo": info })
        }
        Request::StartTransaction {
            connector_id,
            id_tag,
            meter_start_wh,
            timestamp,
            reservation_id,
        } => {
            let started = ctx
                .store
                .start_transaction(StartTx {
                    cp_id: cp,
                    connector_id,
                    presented: auth::present(&ctx.secret, &id_tag),
                    free_vend,
                    origin: ctx.origin(cp_id),
                    meter_start_wh,
                    timestamp,
                    reservation_id,
                    uplink_online: ctx.uplink_online.load(Ordering::Relaxed),
                    received,
                })
                .await?;
            if started.result == auth::AuthResult::Accepted {
                ctx.power.changed(Reason::SessionStarted, None);
            }
            // A refused start still gets its transaction id (OCPP): the charger then ends it.
            json!({"transactionId": started.transaction_id,
                   "idTagInfo": {"status": started.result.ocpp_status()}})
        }
        Request::StopTransaction {
            transaction_id,
            meter_stop_wh,
            timestamp,
            reason,
            id_tag,
            transaction_data,
        } => {
            let outcome = ctx
                .store
                .stop_transaction(StopTx {
                    cp_id: cp,
                    transaction_id,
                    meter_stop_wh,
                    timestamp,
                    reason,
                    transaction_data,
                    received,
                })
                .await?;
            if let StopOutcome::Ended { session_id, .. } = outcome {
                ctx.notices.send(Notice::SessionEnded { session_id });
            }
            ctx.power.changed(Reason::SessionStopped, None);
            match id_tag {
                // The transaction is over whatever we say; the status only tells the
                // charger whether to keep the tag in its cache.
                Some(_) => json!({"idTagInfo": {"status": "Accepted"}}),
                None => json!({}),
            }
        }
        Request::MeterValues {
            connector_id,
            transaction_id,
            samples,
        } => {
            // The live topic is never buffered: without a listening uplink, or while it is
            // offline, the snapshot is not built at all.
            let live = (ctx.notices.is_open() && ctx.uplink_online.load(Ordering::Relaxed))
                .then(|| samples.last().map(Sample::values))
                .flatten();
            if let (Some(_), Some(w)) =
                (transaction_id, samples.iter().rev().find_map(|s| s.power_w))
            {
                ctx.power.drawn(cp_id, connector_id, w as f64);
            }
            let metered = ctx
                .store
                .record_meter(MeterIn {
                    cp_id: cp.clone(),
                    connector_id,
                    transaction_id,
                    samples,
                    received,
                })
                .await?;
            if let Some(transaction_id) = metered.budget_stop {
                budget_stop(ctx, &cp, TransactionRef::V16(transaction_id));
            }
            if let (Some(session_id), Some(energy_wh), Some(reading)) =
                (metered.session_id, metered.energy_wh, live)
            {
                let snapshot = LiveSnapshot {
                    session_id: &session_id,
                    cp_id: &cp,
                    connector_id,
                    reading,
                    energy_wh,
                    cost: metered.running.as_ref(),
                }
                .body();
                ctx.notices.send(Notice::Live {
                    session_id,
                    snapshot,
                });
            }
            json!({})
        }
        Request::DataTransfer {
            vendor_id,
            message_id,
        } => {
            tracing::info!(
                cp_id,
                vendor_id,
                ?message_id,
                "DataTransfer from an unknown vendor"
            );
            json!({"status": "UnknownVendorId"})
        }
        Request::FirmwareStatusNotification { status } => {
            ctx.store.charger_note(cp, Some(status), None).await?;
            json!({})
        }
        Request::DiagnosticsStatusNotification { status } => {
            ctx.store.charger_note(cp, None, Some(status)).await?;
            json!({})
        }
        Request::SignCertificate { csr } => {
            sign_certificate(ctx, cp_id, csr, "ChargePointCertificate".into()).await?
        }
        Request::Acknowledge { action } => {
            tracing::info!(cp_id, action, "acknowledged");
            json!({})
        }
    })
}

/// The group token of the reservation an accepted order holds now, if any: the charger
/// holds the connector under it, and lets the driver whose authorization names it start
/// (1.6 `parentIdTag`, 2.0.1 `groupIdToken`).
pub(crate) async fn reserved_group(ctx: &Context, d: &auth::AuthDecision) -> Option<String> {
    let order_id = d
        .order_id
        .clone()
        .filter(|_| d.result == auth::AuthResult::Accepted)?;
    match ctx.store.reservation_of_order(order_id, now()).await {
        Ok(r) => r.map(|r| auth::reservation_tokens(&ctx.secret, r.id).1),
        Err(e) => {
            tracing::error!("cannot look up the order's reservation: {e}");
            None
        }
    }
}

/// SignCertificate, both versions: a CSR that names the charger as its profile-3
/// certificate must (`ocpp::binding::check_csr`) goes upstream as `charger.csr` and is
/// answered Accepted; any other is Rejected, and reported as a `security.event`. The
/// operator's answer comes back as `charger.certificate` (CertificateSigned).
pub(crate) async fn sign_certificate(
    ctx: &Context,
    cp_id: &str,
    csr: String,
    certificate_type: String,
) -> Result<Value, crate::store::StoreError> {
    let entry = ctx.ocpp.chargers.get(cp_id);
    let expected = entry.and_then(|e| e.cert_cn.as_deref()).unwrap_or(cp_id);
    let checked = if binding::binds_charger(&certificate_type) {
        binding::check_csr(&csr, expected, ctx.ocpp.cpo_name.as_deref())
    } else {
        Ok(())
    };
    match checked {
        Ok(()) => {
            ctx.store
                .charger_csr(CsrIn {
                    cp_id: cp_id.to_string(),
                    certificate_type: certificate_type.clone(),
                    csr,
                    at: now(),
                })
                .await?;
            tracing::info!(cp_id, certificate_type, "CSR sent upstream for signing");
            Ok(json!({"status": "Accepted"}))
        }
        Err(why) => {
            tracing::warn!(cp_id, certificate_type, "CSR refused: {why}");
            ctx.metrics.security_event("csr_refused");
            ctx.store
                .security_alert(SecurityAlert {
                    cp_id: Some(cp_id.to_string()),
                    kind: "csr_refused",
                    detail: why,
                    remote: None,
                    suppressed: 0,
                    at: now(),
                })
                .await?;
            Ok(json!({"status": "Rejected"}))
        }
    }
}

/// The running cost reached the order's budget: stop the charger (1.6
/// RemoteStopTransaction, 2.0.1 RequestStopTransaction). Sent from a task of its own,
/// because the CALL goes out through this very connection's loop.
pub(crate) fn budget_stop(ctx: &Context, cp_id: &str, transaction: TransactionRef) {
    let transaction_id = transaction.to_string();
    tracing::info!(
        cp_id,
        transaction_id,
        "budget reached; stopping the charger"
    );
    let registry = ctx.registry.clone();
    let cp = cp_id.to_string();
    let timeout = ctx.ocpp.call_timeout;
    tokio::spawn(async move {
        match ocpp_cmd::send(&registry, &cp, Command::RemoteStop { transaction }, timeout).await {
            Ok(answer) => {
                tracing::info!(cp_id = %cp, transaction_id, %answer, "budget stop answered")
            }
            Err(e) => tracing::error!(cp_id = %cp, transaction_id, "budget stop failed: {e}"),
        }
    });
}

/// A 2.0.1 charger connected: for every transaction of it the store held open then, ask
/// GetTransactionStatus, from a task of its own (the CALLs go out through this very
/// connection's loop). The answers are only logged: a session is never closed or dropped
/// because of one. An `Ended` still queued at the charger will come and close it; one that
/// ended with nothing queued is flagged in the log for an operator.
pub(crate) fn ask_open_transactions(
    ctx: &Context,
    cp_id: &str,
    open: Vec<crate::store::OpenTransaction>,
) {
    let registry = ctx.registry.clone();
    let cp = cp_id.to_string();
    let timeout = ctx.ocpp.call_timeout;
    tokio::spawn(async move {
        for tx in open {
            let (session_id, transaction_id) = (tx.session_id, tx.charger_tx_id);
            let command = Command::GetTransactionStatus {
                transaction_id: Some(transaction_id.clone()),
            };
            let status = ocpp_cmd::send(&registry, &cp, command, timeout)
                .await
                .and_then(|answer| ocpp_cmd::transaction_status(&answer));
            match status {
                Ok(TransactionStatus::EndedUnreported) => tracing::warn!(
                    cp_id = %cp,
                    session_id,
                    transaction_id,
                    "GetTransactionStatus: ended at the charger but no Ended received; the session stays open"
                ),
                Ok(status) => tracing::info!(
                    cp_id = %cp,
                    session_id,
                    transaction_id,
                    ?status,
                    "GetTransactionStatus answered"
                ),
                Err(e) => tracing::warn!(
                    cp_id = %cp,
                    session_id,
                    transaction_id,
                    "GetTransactionStatus failed: {e}"
                ),
            }
        }
    });
}

/// Brings charger `cp_id`'s own local authorization list up to the site's fleet cards, in
/// the background (see [`super::local_list`]): GetLocalListVersion, and when the charger
/// holds another version, its per-message limit and the SendLocalList CALLs. Nothing is
/// sent while the site has never had a card. With `on_connect`, only a charger the site
/// has sent a list to before is checked (a reconnect); the others get theirs at their
/// BootNotification.
pub(crate) fn sync_local_list(
    store: Store,
    registry: Registry,
    cp_id: String,
    timeout: std::time::Duration,
    on_connect: bool,
) {
    tokio::spawn(async move {
        // One sync at a time per charger: a second one (the cards changed during a boot's)
        // waits, then reads the list afresh, so two versions' chunks never interleave.
        let lock = sync_lock(&cp_id);
        let _held = lock.lock().await;
        sync_local_list_now(store, registry, cp_id.clone(), timeout, on_connect).await;
        drop(_held);
        release_sync_lock(&cp_id, lock);
    });
}

type SyncLocks = std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>;

static SYNC_LOCKS: std::sync::Mutex<Option<SyncLocks>> = std::sync::Mutex::new(None);

fn sync_lock(cp_id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut g = SYNC_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(Default::default)
        .entry(cp_id.to_string())
        .or_default()
        .clone()
}

/// Forgets a charger's lock once no sync holds or waits for it (the map stays as small
/// as the syncs in flight).
fn release_sync_lock(cp_id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
    let mut g = SYNC_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    drop(lock);
    if let Some(map) = g.as_mut() {
        if map.get(cp_id).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(cp_id);
        }
    }
}

async fn sync_local_list_now(
    store: Store,
    registry: Registry,
    cp_id: String,
    timeout: std::time::Duration,
    on_connect: bool,
) {
    let list = match store.local_list(cp_id.clone()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(cp_id, "cannot read the local list: {e}");
            return;
        }
    };
    if list.site_version == 0 || (on_connect && list.charger_version.is_none()) {
        return;
    }
    let Some(version) = registry.version(&cp_id) else {
        return;
    };
    let held = match ocpp_cmd::send(&registry, &cp_id, Command::GetLocalListVersion, timeout).await
    {
        Ok(a) => a
            .get(if version == Version::V16 {
                "listVersion"
            } else {
                "versionNumber"
            })
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok()),
        Err(ocpp_cmd::CommandError::Call(super::registry::CallFailure::Rejected {
            code, ..
        })) if code == "NotImplemented" || code == "NotSupported" => {
            tracing::info!(
                        cp_id,
                        code,
                        "the charger keeps no local authorization list; fleet cards are checked by the gateway only"
                    );
            return;
        }
        Err(e) => {
            tracing::warn!(
                cp_id,
                "GetLocalListVersion failed, fleet cards not sent to the charger: {e}"
            );
            return;
        }
    };
    if held == Some(-1) {
        tracing::info!(cp_id, "the charger keeps no local authorization list (listVersion -1); fleet cards are checked by the gateway only");
        return;
    }
    if held == Some(list.site_version) {
        if list.charger_version != held {
            let _ = store.local_list_sent(cp_id, list.site_version).await;
        }
        return;
    }
    let per_message = items_per_message(&registry, &cp_id, version, timeout)
        .await
        .unwrap_or(super::local_list::DEFAULT_PER_MESSAGE);
    let entries: Vec<ocpp_cmd::LocalEntry> = list
        .entries
        .into_iter()
        .map(|c| ocpp_cmd::LocalEntry {
            id_tag: c.id_tag,
            id_type: c.id_type,
            expiry: c.expiry,
        })
        .collect();
    let calls = super::local_list::plan(version, list.site_version, held, &entries, per_message);
    let n = calls.len();
    for call in calls {
        match ocpp_cmd::send(&registry, &cp_id, call, timeout).await {
            Ok(a) if a["status"] == "Accepted" => {}
            Ok(a) => {
                tracing::warn!(cp_id, status = %a["status"], "SendLocalList refused; the charger's local list is stale");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    cp_id,
                    "SendLocalList failed; the charger's local list is stale: {e}"
                );
                return;
            }
        }
    }
    match store
        .local_list_sent(cp_id.clone(), list.site_version)
        .await
    {
        Ok(()) => tracing::info!(
            cp_id,
            version = list.site_version,
            messages = n,
            per_message,
            "local authorization list sent"
        ),
        Err(e) => tracing::warn!(cp_id, "cannot record the local list sent: {e}"),
    }
}

/// The most entries the charger takes in one SendLocalList (1.6 `SendLocalListMaxLength`,
/// 2.0.1 `LocalAuthListCtrlr.ItemsPerMessage`); `None` when it does not say.
async fn items_per_message(
    registry: &Registry,
    cp_id: &str,
    version: Version,
    timeout: std::time::Duration,
) -> Option<usize> {
    let (command, value): (Command, fn(&Value) -> Option<&str>) = match version {
        Version::V16 => (
            Command::GetConfiguration {
                keys: vec!["SendLocalListMaxLength".into()],
            },
            |a| a["configurationKey"][0]["value"].as_str(),
        ),
        Version::V201 => (
            Command::GetVariables {
                variables: vec![ocpp_cmd::VariableRef::new(
                    "LocalAuthListCtrlr",
                    "ItemsPerMessage",
                )],
            },
            |a| a["getVariableResult"][0]["attributeValue"].as_str(),
        ),
    };
    let answer = ocpp_cmd::send(registry, cp_id, command, timeout)
        .await
        .ok()?;
    value(&answer)?
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
}
