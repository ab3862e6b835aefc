//! The site power limit on a rig: a real agent process with `[site] max_power_kw`, the
//! simulated chargers (1.6 and 2.0.1, each honouring the profiles it is sent) and a real
//! MQTT broker for `site.power_limit`. Every figure is read back from the meter values the
//! chargers report, as the store keeps them.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chargesite::sim::{Fault, FaultKind, Fleet, SimConfig};
use common::mqtt::{Bpp, Broker};
use common::Agent;
use serde_json::json;

const ROOT: &str = "chargesite/v1/site-001";

#[test]
fn broker_process() {
    common::mqtt::broker_process();
}

fn site(broker: &Broker, max_power_kw: u32) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[site]\nid = \"site-001\"\nmax_power_kw = {max_power_kw}\n\n[store]\npath = \"{}\"\n\n\
         [ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\n\n\
         [auth]\nfree_vend = true\n\n{}",
        dir.path().join("cs.db").display(),
        broker.uplink_toml("")
    );
    let config = dir.path().join("chargesite.toml");
    std::fs::write(&config, text).unwrap();
    Agent::start_with(dir, config)
}

fn charger(agent: &Agent, prefix: &str, ocpp: Fleet, session: Duration) -> SimConfig {
    SimConfig {
        url: format!("ws://{}/ocpp", agent.addr),
        chargers: 1,
        id_prefix: prefix.into(),
        ocpp,
        sessions: 1,
        session,
        meter_interval: Duration::from_millis(500),
        time_scale: 1.0,
        tags: vec!["FLEET-1".into()],
        password: None,
        faults: vec![],
        offline: Duration::from_secs(2),
        max_power_w: 22_000.0,
        deadline: Duration::from_secs(120),
        wait_remote_start: false,
    }
}

/// The latest power each running session reported, W (0 before its first reading).
fn running_power(db: &rusqlite::Connection) -> HashMap<String, i64> {
    let mut st = db
        .prepare(
            "SELECT s.cp_id,
                    (SELECT m.power_w FROM meter_values m
                     WHERE m.cp_id = s.cp_id AND m.connector_id = s.connector_id
                       AND m.received_at >= s.start_received_at AND m.power_w IS NOT NULL
                     ORDER BY m.id DESC LIMIT 1)
             FROM sessions s WHERE s.state = 'active' AND s.auth_result = 'accepted'",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (cp, w) = r.unwrap();
        (cp, w.unwrap_or(0))
    })
    .collect()
}

/// The longest time the site's readings stayed over its limit, and their peak.
fn longest_over(looks: &[Look]) -> (Duration, i64) {
    let mut over_since: Option<Instant> = None;
    let mut longest = Duration::ZERO;
    let mut peak = 0;
    for l in looks {
        let total: i64 = l.power.values().sum();
        peak = peak.max(total);
        if total > l.limit_w {
            let s = *over_since.get_or_insert(l.at);
            longest = longest.max(l.at - s);
        } else {
            over_since = None;
        }
    }
    (longest, peak)
}

/// One look at the site: when, the limit then in force, and each session's power.
struct Look {
    at: Instant,
    limit_w: i64,
    power: HashMap<String, i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_kw_site_shares_its_power_fairly_among_five_22_kw_chargers_and_obeys_a_lower_limit() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = site(&broker, 50);
    bpp.wait_agent_online().await;
    let db = agent.db();
    let t0 = Instant::now();
    // five chargers, 1.6 and 2.0.1 alternating, starting 4 s apart; all five charge
    // together from about 16 s to 34 s
    let mut sims = Vec::new();
    for i in 0..5u64 {
        let ocpp = if i % 2 == 0 { Fleet::V16 } else { Fleet::V201 };
        let cfg = charger(&agent, &format!("PW{i}"), ocpp, Duration::from_secs(34));
        sims.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4 * i)).await;
            chargesite::sim::run(cfg).await
        }));
    }
    let mut looks: Vec<Look> = Vec::new();
    let mut limit_w = 50_000;
    let (mut lowered, mut lifted) = (None, None);
    while looks.len() < 10 || !looks.last().unwrap().power.is_empty() {
        let at = Instant::now();
        let since = at - t0;
        if lowered.is_none() && since > Duration::from_secs(22) {
            bpp.command(json!({"id": "low", "type": "site.power_limit", "max_power_kw": 30}))
                .await;
            lowered = Some(at);
            limit_w = 30_000;
        }
        if lifted.is_none() && since > Duration::from_secs(28) {
            bpp.command(json!({"id": "back", "type": "site.power_limit", "max_power_kw": 0}))
                .await;
            lifted = Some(at);
            // the old (lower) limit binds until the change has taken effect
        }
        if lifted.is_some_and(|l| at - l > Duration::from_secs(2)) {
            limit_w = 50_000;
        }
        looks.push(Look {
            at,
            limit_w,
            power: running_power(&db),
        });
        assert!(since < Duration::from_secs(90), "the rig did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in sims {
        let summary = s.await.unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        assert_eq!(summary.sessions_stopped, 1);
    }
    assert_eq!(bpp.wait_result("low", 10).await["ok"], true);
    assert_eq!(bpp.wait_result("back", 10).await["ok"], true);

    // Never over the limit for longer than a rebalance (2 s), which is one reading step
    // of the charger that just started (it starts at its fail-safe share).
    let (longest, peak) = longest_over(&looks);
    assert!(
        longest <= Duration::from_secs(2),
        "the site stayed over its limit for {longest:?} (peak {peak} W)"
    );

    // Every charging session gets its fair share within 2 s of any change (a session
    // started or stopped, the limit changed): min(22 kW, limit / sessions), within 2 %.
    let mut last_change = looks[0].at;
    let mut checked = 0;
    for w in looks.windows(2) {
        let (before, l) = (&w[0], &w[1]);
        let mut a: Vec<_> = before.power.keys().collect();
        let mut b: Vec<_> = l.power.keys().collect();
        a.sort();
        b.sort();
        if a != b || before.limit_w != l.limit_w || lowered == Some(l.at) || lifted == Some(l.at) {
            last_change = l.at;
        }
        if l.at - last_change < Duration::from_millis(2500) || l.power.is_empty() {
            continue;
        }
        let fair = (l.limit_w / l.power.len() as i64).min(22_000);
        for (cp, w) in &l.power {
            assert!(
                (*w - fair).abs() * 50 <= fair,
                "{cp} draws {w} W, {:?} after a change, where its fair share is {fair} W ({:?})",
                l.at - last_change,
                l.power
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} readings were checked");
    println!(
        "site power rig: peak {peak} W on a 50,000 W site, longest over the limit {longest:?}, \
         {checked} readings at their fair share (within 2 %) 2.5 s after a change"
    );

    // site.power tells the BPP the allocation in force, for each cause
    let site_power = agent.events_of("site.power");
    let reasons: Vec<&str> = site_power
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for r in ["session_started", "session_stopped", "limit_changed"] {
        assert!(reasons.contains(&r), "no site.power for {r}: {reasons:?}");
    }
    let five = site_power
        .iter()
        .find(|e| e["allocations"].as_array().unwrap().len() == 5 && e["max_power_w"] == 30_000)
        .expect("a site.power with five sessions under the lowered limit");
    for a in five["allocations"].as_array().unwrap() {
        assert_eq!(a["limit_w"], 6_000, "{five}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_that_reconnects_gets_its_profiles_back_and_a_limit_above_the_cap_is_refused() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = site(&broker, 20);
    bpp.wait_agent_online().await;
    // a 2.0.1 and a 1.6 charger share 20 kW; the 1.6 one drops its connection mid-session
    let steady = charger(&agent, "RCA", Fleet::V201, Duration::from_secs(16));
    let mut dropping = charger(&agent, "RCB", Fleet::V16, Duration::from_secs(16));
    dropping.faults = vec![Fault {
        kind: FaultKind::Drop,
        charger: 0,
    }];
    let a = tokio::spawn(chargesite::sim::run(steady));
    let b = tokio::spawn(chargesite::sim::run(dropping));
    bpp.command(json!({"id": "high", "type": "site.power_limit", "max_power_kw": 25}))
        .await;
    let r = bpp.wait_result("high", 10).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "bad_request");
    let db = agent.db();
    let mut looks = Vec::new();
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until && !(a.is_finished() && b.is_finished()) {
        looks.push(Look {
            at: Instant::now(),
            limit_w: 20_000,
            power: running_power(&db),
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in [a, b] {
        let s = s.await.unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    let both: Vec<&Look> = looks
        .iter()
        .filter(|l| l.power.len() == 2 && l.power.values().all(|w| *w > 0))
        .collect();
    assert!(
        both.len() > 20,
        "both charged at once in {} looks",
        both.len()
    );
    // before, during and after the drop (the dropped charger keeps charging at its last
    // share, and is counted so), the site keeps its limit but for a start's first reading
    let (longest, peak) = longest_over(&looks);
    assert!(
        longest <= Duration::from_secs(2),
        "over for {longest:?}, peak {peak} W"
    );
    // at the end both draw their fair 10 kW
    let last = both.last().unwrap();
    for w in last.power.values() {
        assert!((*w - 10_000).abs() <= 200, "{:?}", last.power);
    }
    let log = agent.log();
    let installed = log
        .lines()
        .filter(|l| l.contains("fail-safe charging profile installed") && l.contains("RCB0001"))
        .count();
    assert!(
        installed >= 2,
        "the reconnected charger got its fail-safe back: {installed}\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_that_refuses_its_profile_is_counted_at_its_maximum_and_the_others_make_room() {
    let broker = Broker::start();
    let bpp = Bpp::connect(&broker, ROOT).await;
    let agent = site(&broker, 30);
    bpp.wait_agent_online().await;
    // a 1.6 charger that takes amperes but refuses every charging profile
    let mut rogue = common::Cp::connect(&agent, "ROGUE1", false).await;
    rogue.answers.insert(
        "GetConfiguration",
        json!({"configurationKey": [{"key": "ChargingScheduleAllowedChargingRateUnit",
            "readonly": true, "value": "Current"}]}),
    );
    rogue
        .answers
        .insert("SetChargingProfile", json!({"status": "Rejected"}));
    let tx = rogue
        .ok(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": "RFID1", "meterStart": 0, "timestamp": common::ts(0)}),
        )
        .await["transactionId"]
        .clone();
    rogue.idle(1).await;
    // a simulated one that obeys shares the 8 kW the rogue leaves
    let obeying = tokio::spawn(chargesite::sim::run(charger(
        &agent,
        "OBEY",
        Fleet::V201,
        Duration::from_secs(8),
    )));
    let db = agent.db();
    let mut last = HashMap::new();
    let until = Instant::now() + Duration::from_secs(20);
    while !obeying.is_finished() && Instant::now() < until {
        rogue.idle(1).await;
        rogue
            .ok(
                "MeterValues",
                json!({"connectorId": 1, "transactionId": tx, "meterValue": [
                    {"timestamp": common::ts(1), "sampledValue": [
                        {"value": "22000", "measurand": "Power.Active.Import", "unit": "W"}]}]}),
            )
            .await;
        let p = running_power(&db);
        if p.get("OBEY0001").is_some_and(|w| *w > 0) {
            last = p;
        }
    }
    assert!(obeying.await.unwrap().errors.is_empty());
    // 30 kW - 22 kW = 8,000 W, in watts on 2.0.1
    assert_eq!(last.get("OBEY0001"), Some(&8_000), "{last:?}");
    // site.power reports the rogue's share as assumed, at its maximum
    let site_power = agent.events_of("site.power");
    let rogue_share = site_power
        .iter()
        .flat_map(|e| e["allocations"].as_array().cloned().unwrap_or_default())
        .find(|a| a["cp_id"] == "ROGUE1")
        .expect("the rogue's share in site.power");
    assert_eq!(rogue_share["assumed"], true, "{site_power:?}");
    assert_eq!(rogue_share["limit_w"], 22_000);
    assert!(agent.log().contains("charger refused"));
}
