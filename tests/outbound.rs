//! Outbound CALLs from the agent to a charger: one outstanding at a time, answers checked,
//! timeouts and CALLERRORs reported. The agent runs in-process here so the test can hold
//! its registry, exactly as the uplink's command intake does.

mod common;

use std::time::Duration;

use chargesite::ocpp::commands::{self, Command, CommandError, TransactionRef};
use chargesite::ocpp::registry::{CallFailure, Registry};
use common::Charger;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn agent() -> (Registry, String, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = common::base_config(
        dir.path(),
        "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n",
    );
    let config = chargesite::config::parse(&text).unwrap();
    let token = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let t = token.clone();
    tokio::spawn(async move {
        chargesite::agent::run(config, t, move |a| {
            let _ = tx.send((a.registry.clone(), a.local_addr));
        })
        .await
        .unwrap();
    });
    let (registry, addr) = rx.await.unwrap();
    (registry, format!("ws://{addr}/ocpp/CP001"), token, dir)
}

async fn wait_connected(registry: &Registry) {
    assert!(common::eventually(5, || registry.is_connected("CP001")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_start_reaches_the_charger_and_its_answer_comes_back() {
    let (registry, url, token, _dir) = agent().await;
    let mut cp = Charger::connect(&url).await;
    wait_connected(&registry).await;
    let r = registry.clone();
    let call = tokio::spawn(async move {
        commands::send(
            &r,
            "CP001",
            Command::RemoteStart {
                id_tag: "ORDER-1".into(),
                connector_id: Some(1),
                remote_start_id: 1,
            },
            Duration::from_secs(5),
        )
        .await
    });
    let frame = cp.recv().await;
    assert_eq!(frame[0], 2);
    assert_eq!(frame[2], "RemoteStartTransaction");
    assert_eq!(frame[3], json!({"idTag": "ORDER-1", "connectorId": 1}));
    cp.send_text(&json!([3, frame[1], {"status": "Accepted"}]).to_string())
        .await;
    assert_eq!(call.await.unwrap().unwrap(), json!({"status": "Accepted"}));
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_call_is_outstanding_per_direction() {
    let (registry, url, token, _dir) = agent().await;
    let mut cp = Charger::connect(&url).await;
    wait_connected(&registry).await;
    let mut calls = Vec::new();
    for connector_id in [1, 2] {
        let r = registry.clone();
        calls.push(tokio::spawn(async move {
            commands::send(
                &r,
                "CP001",
                Command::UnlockConnector {
                    connector_id,
                    evse_connector: None,
                },
                Duration::from_secs(5),
            )
            .await
        }));
    }
    let first = cp.recv().await;
    // the second CALL must not arrive before the first is answered
    assert!(cp.try_recv(Duration::from_millis(500)).await.is_none());
    // meanwhile the charger's own CALLs are still answered
    assert!(cp.ok("Heartbeat", json!({})).await["currentTime"].is_string());
    cp.send_text(&json!([3, first[1], {"status": "Unlocked"}]).to_string())
        .await;
    let second = cp.recv().await;
    assert_eq!(second[2], "UnlockConnector");
    assert_ne!(second[1], first[1]);
    cp.send_text(&json!([3, second[1], {"status": "NotSupported"}]).to_string())
        .await;
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_charger_times_out_and_a_callerror_is_reported() {
    let (registry, url, token, _dir) = agent().await;
    let mut cp = Charger::connect(&url).await;
    wait_connected(&registry).await;
    let err = commands::send(
        &registry,
        "CP001",
        Command::Reset {
            hard: false,
            evse_id: None,
        },
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(err, CommandError::Call(CallFailure::Timeout));
    let _ignored = cp.recv().await; // the Reset CALL we never answered

    let r = registry.clone();
    let call = tokio::spawn(async move {
        commands::send(
            &r,
            "CP001",
            Command::GetConfiguration { keys: vec![] },
            Duration::from_secs(5),
        )
        .await
    });
    let frame = cp.recv().await;
    assert_eq!(frame[3], json!({}));
    cp.send_text(&json!([4, frame[1], "NotSupported", "nope", {}]).to_string())
        .await;
    match call.await.unwrap() {
        Err(CommandError::Call(CallFailure::Rejected { code, .. })) => {
            assert_eq!(code, "NotSupported")
        }
        other => panic!("{other:?}"),
    }

    // a malformed answer is not believed
    let r = registry.clone();
    let call = tokio::spawn(async move {
        commands::send(
            &r,
            "CP001",
            Command::RemoteStop {
                transaction: TransactionRef::V16(3),
            },
            Duration::from_secs(5),
        )
        .await
    });
    let frame = cp.recv().await;
    cp.send_text(&json!([3, frame[1], {"status": "Maybe"}]).to_string())
        .await;
    assert!(matches!(
        call.await.unwrap(),
        Err(CommandError::BadResponse(_))
    ));
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_absent_charger_fails_at_once() {
    let (registry, _url, token, _dir) = agent().await;
    let err = commands::send(
        &registry,
        "NOPE",
        Command::UnlockConnector {
            connector_id: 1,
            evse_connector: None,
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(err, CommandError::Call(CallFailure::NotConnected));
    let err = commands::send(
        &registry,
        "NOPE",
        Command::TriggerMessage {
            message: "Dance".into(),
            connector_id: None,
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CommandError::BadRequest(_)));
    token.cancel();
}
