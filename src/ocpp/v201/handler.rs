//! What the central system answers to a 2.0.1 charger's requests: decided from the
//! store's committed result, as for 1.6 ([`crate::ocpp::handler`]).

use serde_json::{json, Value};

use super::messages::Request;
use crate::ocpp::handler::Context;
use crate::store::StoreError;
use crate::time::{fmt_ts, now};

/// The CALLRESULT payload for one decoded 2.0.1 request from charger `cp_id`.
///
/// # Errors
/// A store failure: the caller answers `InternalError`, so the charger retries.
pub async fn answer(ctx: &Context, cp_id: &str, request: Request) -> Result<Value, StoreError> {
    let received = now();
    Ok(match request {
        Request::Heartbeat => {
            if let Err(e) = ctx.store.charger_seen(cp_id.to_string(), received).await {
                tracing::warn!(cp_id, "cannot record the heartbeat: {e}");
            }
            json!({"currentTime": fmt_ts(now())})
        }
    })
}
