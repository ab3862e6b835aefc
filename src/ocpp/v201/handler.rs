//! What the central system answers to a 2.0.1 charger's requests: decided from the
//! store's committed result, as for 1.6 ([`crate::ocpp::handler`]). Nothing is answered
//! before it is durable; a store failure is answered `InternalError` by the caller, so
//! the charger keeps the message and retries.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::messages::{IdToken, Request, TxEvent, TxEventType};
use crate::auth::{self, AuthResult};
use crate::events::LiveSnapshot;
use crate::notice::Notice;
use crate::ocpp::commands::TransactionRef;
use crate::ocpp::handler::{budget_stop, Context};
use crate::reading::Sample;
use crate::session::RunningCost;
use crate::store::{
    Boot, EvseStatusIn, MeterIn, ReportPart, SecurityEventIn, StoreError, TxEventIn,
};
use crate::time::{fmt_ts, now};

/// The CALLRESULT payload for one decoded 2.0.1 request from charger `cp_id`.
///
/// # Errors
/// A store failure: the caller answers `InternalError`, so the charger retries.
pub async fn answer(ctx: &Context, cp_id: &str, request: Request) -> Result<Value, StoreError> {
    let received = now();
    let cp = cp_id.to_string();
    Ok(match request {
        Request::BootNotification {
            vendor,
            model,
            serial,
            firmware,
            reason,
        } => {
            tracing::info!(cp_id, reason, "BootNotification");
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
            ctx.power
                .changed(crate::ocpp::smart::Reason::ChargerReconnected, Some(cp_id));
            crate::ocpp::handler::sync_local_list(
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
        Request::Status(states) => {
            let changed = !states.is_empty();
            for s in states {
                ctx.store
                    .evse_status(EvseStatusIn {
                        cp_id: cp.clone(),
                        evse_id: s.evse_id,
                        connector_id: s.connector_id,
                        status: s.status,
                        charger_ts: s.timestamp,
                        at: received,
                    })
                    .await?;
            }
            if changed {
                ctx.notices.send(Notice::Connectors { cp_id: cp });
            }
            json!({})
        }
        Request::MeterValues { evse_id, samples } => {
            // Outside a transaction (2.0.1 sends a transaction's readings in its events):
            // linked to the EVSE's running session, if any, else stored as orphans.
            let metered = ctx
                .store
                .record_meter(MeterIn {
                    cp_id: cp,
                    connector_id: evse_id,
                    transaction_id: None,
                    samples,
                    received,
                })
                .await?;
            if metered.budget_stop.is_some() {
                tracing::warn!(
                    cp_id,
                    evse_id,
                    "budget reached on MeterValues; the next TransactionEvent stops it"
                );
            }
            json!({})
        }
        Request::Authorize { id_token } => {
            let presented = present(ctx, &id_token);
            let decision = ctx
                .store
                .authorize(
                    cp,
                    ctx.origin(cp_id),
                    presented,
                    ctx.free_vend,
                    ctx.uplink_online.load(Ordering::Relaxed),
                    received,
                )
                .await?;
            let mut info = token_info(decision.result, &id_token);
            if let Some(group) = crate::ocpp::handler::reserved_group(ctx, &decision).await {
                info["groupIdToken"] = json!({"idToken": group, "type": "Central"});
            }
            json!({ "idTokenInfo": info })
        }
        Request::TransactionEvent(event) => transaction_event(ctx, cp_id, event).await?,
        Request::SignCertificate {
            csr,
            certificate_type,
        } => crate::ocpp::handler::sign_certificate(ctx, cp_id, csr, certificate_type).await?,
        Request::SecurityEvent {
            kind,
            timestamp,
            tech_info,
        } => {
            tracing::warn!(cp_id, kind, ?tech_info, "charger reported a security event");
            ctx.metrics.security_event("charger_reported");
            ctx.store
                .security_event(SecurityEventIn {
                    cp_id: cp,
                    kind,
                    timestamp,
                    tech_info,
                    at: received,
                })
                .await?;
            json!({})
        }
        Request::NotifyReport {
            request_id,
            seq_no,
            tbc,
            report_data,
        } => {
            let done = ctx
                .store
                .report_part(ReportPart {
                    cp_id: cp,
                    request_id,
                    seq_no,
                    tbc,
                    report_data,
                    at: received,
                })
                .await?;
            if let Some(n) = done {
                tracing::info!(
                    cp_id,
                    request_id,
                    variables = n,
                    "device model report complete"
                );
            }
            json!({})
        }
        Request::FirmwareStatusNotification { status } => {
            tracing::info!(cp_id, status, "firmware status");
            ctx.store.charger_note(cp, Some(status), None).await?;
            json!({})
        }
        Request::LogStatusNotification { status } => {
            tracing::info!(cp_id, status, "log upload status");
            ctx.store.charger_note(cp, None, Some(status)).await?;
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
        Request::Acknowledge { action, answer } => {
            tracing::info!(cp_id, action, "acknowledged; not built yet");
            answer
        }
    })
}

/// An idToken, prepared by its type: a `KeyCode` of an OTP's shape is hashed as an OTP;
/// a card (ISO14443/15693), the agent's own `Central` token or any other type is a tag.
fn present(ctx: &Context, token: &IdToken) -> auth::Presented {
    match token.kind.as_str() {
        "KeyCode" => auth::present(&ctx.secret, &token.id),
        _ => auth::present_as_tag(&ctx.secret, &token.id),
    }
}

/// The 2.0.1 `AuthorizationStatusEnumType` for a decision.
fn status(result: AuthResult) -> &'static str {
    // 1.6 and 2.0.1 share these names (Accepted, Expired, Blocked, Invalid).
    result.ocpp_status()
}

/// The `idTokenInfo` for a judged token. A driver's code (`KeyCode`) is given a cache
/// expiry of now: a charger's authorization cache must never accept a used-up or revoked
/// OTP offline on its own; only the agent judges it.
fn token_info(result: AuthResult, token: &IdToken) -> Value {
    let mut info = json!({"status": status(result)});
    if token.kind == "KeyCode" {
        info["cacheExpiryDateTime"] = json!(fmt_ts(now()));
    }
    info
}

/// A cost as 2.0.1 writes it: a decimal in the currency's major unit (two decimals).
fn total_cost(cost: &RunningCost) -> Value {
    json!(cost.total_minor as f64 / 100.0)
}

async fn transaction_event(
    ctx: &Context,
    cp_id: &str,
    event: Box<TxEvent>,
) -> Result<Value, StoreError> {
    let received = now();
    let presented = event.id_token.as_ref().map(|t| present(ctx, t));
    // Only an idToken is judged: most events (Updated readings) carry none, and need no
    // registry lookup.
    let origin = presented
        .as_ref()
        .map(|_| ctx.origin(cp_id))
        .unwrap_or_default();
    let token = event.id_token.clone();
    let live =
        (!event.offline && ctx.notices.is_open() && ctx.uplink_online.load(Ordering::Relaxed))
            .then(|| event.samples.last().map(Sample::values))
            .flatten();
    let transaction_id = event.transaction_id.clone();
    let reason = super::messages::contract_reason(&event).to_string();
    let (event_type, drawn) = (
        event.event_type,
        event.samples.iter().rev().find_map(|s| s.power_w),
    );
    let outcome = ctx
        .store
        .transaction_event(TxEventIn {
            cp_id: cp_id.to_string(),
            event,
            presented,
            free_vend: ctx.free_vend,
            origin,
            reason,
            uplink_online: ctx.uplink_online.load(Ordering::Relaxed),
            received,
        })
        .await?;
    if outcome.replayed {
        tracing::info!(
            cp_id,
            transaction_id,
            "TransactionEvent replayed; acknowledged, nothing changed"
        );
    }
    if outcome.budget_stop {
        budget_stop(ctx, cp_id, TransactionRef::V201(transaction_id));
    }
    if !outcome.replayed && !outcome.after_ended && outcome.session_id.is_some() {
        use crate::ocpp::smart::Reason;
        if outcome.ended {
            ctx.power.changed(Reason::SessionStopped, None);
        } else if event_type == TxEventType::Started || token.is_some() {
            ctx.power.changed(Reason::SessionStarted, None);
        }
        if let (Some(w), false) = (drawn, outcome.ended) {
            ctx.power.drawn(cp_id, outcome.evse_id, w as f64);
        }
    }
    if let Some(session_id) = &outcome.session_id {
        if outcome.ended {
            ctx.notices.send(Notice::SessionEnded {
                session_id: session_id.clone(),
            });
        } else if let (Some(energy_wh), Some(reading), false) = (
            outcome.energy_wh,
            live,
            outcome.after_ended || outcome.replayed,
        ) {
            let snapshot = LiveSnapshot {
                session_id,
                cp_id,
                connector_id: outcome.evse_id,
                reading,
                energy_wh,
                cost: outcome.cost.as_ref(),
            }
            .body();
            ctx.notices.send(Notice::Live {
                session_id: session_id.clone(),
                snapshot,
            });
        }
    }
    let mut answer = json!({});
    if let (Some(result), Some(token)) = (outcome.id_token_status, &token) {
        answer["idTokenInfo"] = token_info(result, token);
    }
    if let Some(cost) = &outcome.cost {
        answer["totalCost"] = total_cost(cost);
    }
    Ok(answer)
}
