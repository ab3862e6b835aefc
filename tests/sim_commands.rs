//! The 2.0.1 simulator (`chargesite::sim`) driven by the agent's own outbound commands,
//! in-process over loopback: every answer it gives passes the agent's 2.0.1 response
//! schema check (`commands::send` refuses a malformed one), and what the commands ask for
//! happens (a two-part report, a triggered event, the remote stop).

mod common;

use std::time::Duration;

use chargesite::ocpp::commands::{self, Command, ReportBase, TransactionRef, VariableRef};
use chargesite::ocpp::registry::Registry;
use chargesite::sim::{Fleet, SimConfig};
use tokio_util::sync::CancellationToken;

const CP: &str = "CMD0001";

async fn agent(dir: &std::path::Path) -> (Registry, String, CancellationToken) {
    let text = common::base_config(
        dir,
        "[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n[auth]\nfree_vend = true\n",
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
    (registry, format!("ws://{addr}/ocpp"), token)
}

fn sim(url: String) -> SimConfig {
    SimConfig {
        url,
        chargers: 1,
        id_prefix: "CMD".into(),
        ocpp: Fleet::V201,
        sessions: 1,
        session: Duration::from_secs(30),
        meter_interval: Duration::from_millis(500),
        time_scale: 60.0,
        tags: vec!["482913".into()],
        password: None,
        faults: vec![],
        offline: Duration::from_secs(1),
        max_power_w: 11_000.0,
        deadline: Duration::from_secs(60),
        wait_remote_start: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2_0_1_simulator_answers_every_csms_command_as_the_schemas_say() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, url, token) = agent(dir.path()).await;
    let run = tokio::spawn(chargesite::sim::run(sim(url)));
    let db = rusqlite::Connection::open(dir.path().join("cs.db")).unwrap();
    let active = || -> Option<String> {
        db.query_row(
            "SELECT charger_tx_id FROM sessions WHERE cp_id = ?1 AND state = 'active'",
            [CP],
            |r| r.get(0),
        )
        .ok()
    };
    let mut tx = None;
    for _ in 0..100 {
        tx = active();
        if tx.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tx = tx.expect("the simulated station started a transaction");
    let send = |command: Command| {
        let r = registry.clone();
        async move {
            commands::send(&r, CP, command, Duration::from_secs(10))
                .await
                .unwrap()
        }
    };

    let v = send(Command::GetVariables {
        variables: vec![
            VariableRef::new("OCPPCommCtrlr", "HeartbeatInterval"),
            VariableRef::new("Nowhere", "Nothing"),
        ],
    })
    .await;
    assert_eq!(v["getVariableResult"][0]["attributeValue"], "300");
    assert_eq!(
        v["getVariableResult"][1]["attributeStatus"],
        "UnknownComponent"
    );
    let v = send(Command::SetVariables {
        values: vec![(
            VariableRef::new("OCPPCommCtrlr", "HeartbeatInterval"),
            "60".into(),
        )],
    })
    .await;
    assert_eq!(v["setVariableResult"][0]["attributeStatus"], "Accepted");
    let v = send(Command::GetBaseReport {
        request_id: 41,
        report: ReportBase::FullInventory,
    })
    .await;
    assert_eq!(v["status"], "Accepted");
    let v = send(Command::TriggerMessage {
        message: "TransactionEvent".into(),
        connector_id: Some(1),
    })
    .await;
    assert_eq!(v["status"], "Accepted");
    let v = send(Command::ChangeAvailability {
        connector_id: 1,
        operative: true,
        evse_connector: None,
    })
    .await;
    assert_eq!(v["status"], "Accepted");
    let v = send(Command::UnlockConnector {
        connector_id: 1,
        evse_connector: None,
    })
    .await;
    assert_eq!(v["status"], "OngoingAuthorizedTransaction");
    let v = send(Command::GetTransactionStatus {
        transaction_id: Some(tx.clone()),
    })
    .await;
    assert_eq!(v["ongoingIndicator"], true);
    assert_eq!(v["messagesInQueue"], false);
    let v = send(Command::ClearCache).await;
    assert_eq!(v["status"], "Accepted");
    // busy: a second transaction is refused, the running one stopped
    let v = send(Command::RemoteStart {
        id_tag: "CENTRAL-1".into(),
        connector_id: Some(1),
        remote_start_id: 9,
    })
    .await;
    assert_eq!(v["status"], "Rejected");
    let v = send(Command::RemoteStop {
        transaction: TransactionRef::V201(tx.clone()),
    })
    .await;
    assert_eq!(v["status"], "Accepted");

    let summary = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.sessions_stopped, 1);
    let reason: String = db
        .query_row(
            "SELECT stop_reason FROM sessions WHERE charger_tx_id = ?1",
            [&tx],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "Remote");
    // the two NotifyReport parts were reassembled into the station's device model, the
    // value set before the report included
    let (variables, heartbeat): (i64, String) = db
        .query_row(
            "SELECT count(*), max(CASE WHEN variable LIKE 'HeartbeatInterval%' THEN value END) \
             FROM device_model WHERE cp_id = ?1",
            [CP],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // 8 variables, and the simulator's three SmartChargingCtrlr ones
    assert_eq!((variables, heartbeat.as_str()), (11, "60"));
    let triggered: i64 = db
        .query_row(
            "SELECT count(*) FROM tx_events WHERE charger_tx_id = ?1 AND trigger_reason = 'Trigger'",
            [&tx],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggered, 1);
    token.cancel();
}
