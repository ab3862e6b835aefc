//! `chargesite charger CP_ID test-session [--connector N] [--tag TAG] [--secs S]`, pure:
//! the arguments, the session it started found in the agent's status, a live progress
//! line, and the verdict a field engineer can act on once it has stopped: the meter went
//! up, the charger's clock is in sync, MeterValues come at the configured interval, the
//! energy fits the power, and the session carries no meter anomaly.
//!
//! The CLI drives it over the local API (`main.rs`): the agent accepts the session's tag
//! on that charger only, for a while, with no order ([`crate::store::Store::test_start`]),
//! remote-starts it, and remote-stops it when asked.

use serde_json::Value;

use super::verbs::Verdict;

/// The default connector (2.0.1: EVSE).
pub const DEFAULT_CONNECTOR: u32 = 1;
/// The default charging time, seconds.
pub const DEFAULT_SECS: u64 = 60;
/// The longest a test session may be asked to charge.
pub const MAX_SECS: u64 = 3600;
/// How far the charger clock may be off the site's and still count as in sync, seconds.
pub const CLOCK_TOLERANCE_SECS: i64 = 60;

/// What `test-session` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSession {
    /// Connector (2.0.1: EVSE).
    pub connector: u32,
    /// The id tag to start with; the agent makes one up when `None`.
    pub tag: Option<String>,
    /// Seconds to charge before the stop.
    pub secs: u64,
}

/// Parses the words after `test-session`.
///
/// # Errors
/// What is wrong, naming the option.
pub fn parse(words: &[String]) -> Result<TestSession, String> {
    let mut t = TestSession {
        connector: DEFAULT_CONNECTOR,
        tag: None,
        secs: DEFAULT_SECS,
    };
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match w.as_str() {
            "--connector" => {
                let v = value("--connector")?;
                t.connector = v
                    .parse()
                    .map_err(|_| format!("--connector must be a number, not {v:?}"))?;
            }
            "--tag" => {
                let v = value("--tag")?;
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "--tag must be 1-20 printable ASCII characters (an OCPP 1.6 idTag), not {v:?}"
                    ));
                }
                t.tag = Some(v);
            }
            "--secs" => {
                let v = value("--secs")?;
                t.secs = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_SECS).contains(s))
                    .ok_or_else(|| format!("--secs must be 1 to {MAX_SECS}, not {v:?}"))?;
            }
            other => return Err(format!("test-session: unknown argument {other:?}")),
        }
    }
    Ok(t)
}

/// The running sessions of `cp_id` in a status body: (session id, connector).
pub fn running(status: &Value, cp_id: &str) -> Vec<(String, u32)> {
    status["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["cp_id"] == cp_id)
        .filter_map(|s| {
            let id = s["session_id"].as_str()?.to_string();
            let connector = u32::try_from(s["connector_id"].as_i64()?).ok()?;
            Some((id, connector))
        })
        .collect()
}

/// The session on `cp_id`'s `connector` that was not running `before` the start.
pub fn started(status: &Value, cp_id: &str, connector: u32, before: &[String]) -> Option<String> {
    running(status, cp_id)
        .into_iter()
        .find(|(id, c)| *c == connector && !before.contains(id))
        .map(|(id, _)| id)
}

/// One look at the running session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Seconds since the session was found.
    pub secs: f64,
    /// Energy so far, Wh.
    pub energy_wh: i64,
    /// Latest power, W.
    pub power_w: Option<i64>,
}

/// The session's progress in a status body, and its flags; `None` once it is not running.
pub fn progress(status: &Value, session_id: &str, secs: f64) -> Option<(Progress, String)> {
    let s = status["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["session_id"] == session_id)?;
    Some((
        Progress {
            secs,
            energy_wh: s["energy_wh"].as_i64().unwrap_or(0),
            power_w: s["power_w"].as_i64(),
        },
        s["flags"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The charger's clock offset in a status body, seconds (charger minus site).
pub fn clock_offset(status: &Value, cp_id: &str) -> Option<i64> {
    status["chargers"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == cp_id)?
        .get("clock_offset_secs")?
        .as_i64()
}

/// The live line: seconds, power, energy.
pub fn progress_line(p: &Progress) -> String {
    let power = p.power_w.map_or_else(
        || "power ?".to_string(),
        |w| format!("{:.1} kW", w as f64 / 1000.0),
    );
    format!(
        "{:>4.0} s  {power}  {:.3} kWh",
        p.secs,
        p.energy_wh as f64 / 1000.0
    )
}

/// The configured MeterValues interval in a charger's answer to `config get` of
/// `MeterValueSampleInterval` (1.6) or `SampledDataCtrlr.TxUpdatedInterval` (2.0.1), s.
pub fn configured_interval(answer: &Value) -> Option<f64> {
    let v16 = answer["configurationKey"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["key"] == "MeterValueSampleInterval")
        .and_then(|k| k["value"].as_str());
    let v201 = answer["getVariableResult"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["attributeStatus"] == "Accepted")
        .and_then(|r| r["attributeValue"].as_str());
    v16.or(v201)?.trim().parse().ok().filter(|s: &f64| *s > 0.0)
}

/// The seconds between the energy's changes: how often readings arrived, as seen.
fn observed_interval(samples: &[Progress]) -> Option<f64> {
    let changes: Vec<f64> = samples
        .windows(2)
        .filter(|w| w[1].energy_wh != w[0].energy_wh)
        .map(|w| w[1].secs)
        .collect();
    if changes.len() < 2 {
        return None;
    }
    Some((changes[changes.len() - 1] - changes[0]) / (changes.len() - 1) as f64)
}

/// The verdict on a test session from what was seen of it while it ran.
pub fn verdict(
    samples: &[Progress],
    flags: &str,
    clock_offset_secs: Option<i64>,
    configured_interval_secs: Option<f64>,
) -> Verdict {
    let mut ok = true;
    let mut lines = Vec::new();
    let mut check = |passed: Option<bool>, line: String| {
        let mark = match passed {
            Some(true) => "ok  ",
            Some(false) => {
                ok = false;
                "FAIL"
            }
            None => "?   ",
        };
        lines.push(format!("{mark} {line}"));
    };
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        check(Some(false), "no reading of the session was seen".into());
        return Verdict { ok, lines };
    };
    let delivered = last.energy_wh - first.energy_wh;
    let monotonic = samples.windows(2).all(|w| w[1].energy_wh >= w[0].energy_wh);
    check(
        Some(delivered > 0 && monotonic),
        if !monotonic {
            "meter ran backwards during the session".to_string()
        } else if delivered > 0 {
            format!(
                "meter increasing: {delivered} Wh in {:.0} s",
                last.secs - first.secs
            )
        } else {
            format!(
                "meter did not increase in {:.0} s (no energy delivered, or no MeterValues)",
                last.secs - first.secs
            )
        },
    );
    match clock_offset_secs {
        Some(off) => check(
            Some(off.abs() <= CLOCK_TOLERANCE_SECS),
            format!("charger clock {off:+} s from the site's (tolerance {CLOCK_TOLERANCE_SECS} s)"),
        ),
        None => check(None, "charger clock offset not known".into()),
    }
    match (observed_interval(samples), configured_interval_secs) {
        (Some(seen), Some(want)) => check(
            Some((seen - want).abs() <= (want * 0.5).max(2.0)),
            format!("MeterValues about every {seen:.0} s (configured {want:.0} s)"),
        ),
        (Some(seen), None) => check(
            None,
            format!("MeterValues about every {seen:.0} s (configured interval not known)"),
        ),
        (None, _) => check(
            None,
            "too few readings to tell the MeterValues interval".into(),
        ),
    }
    let powers: Vec<f64> = samples
        .iter()
        .filter_map(|p| p.power_w)
        .map(|w| w as f64)
        .collect();
    let hours = (last.secs - first.secs) / 3600.0;
    if powers.is_empty() || hours <= 0.0 {
        check(
            None,
            "no power reported: energy not checked against it".into(),
        );
    } else {
        let mean_w = powers.iter().sum::<f64>() / powers.len() as f64;
        let expected = mean_w * hours;
        if expected < 1.0 {
            check(
                None,
                format!("power {mean_w:.0} W too low to check the energy"),
            );
        } else {
            let ratio = delivered as f64 / expected;
            check(
                Some((0.5..=1.5).contains(&ratio)),
                format!(
                    "energy {delivered} Wh for {:.1} kW over {:.0} s: {:.0} % of the power's",
                    mean_w / 1000.0,
                    last.secs - first.secs,
                    ratio * 100.0
                ),
            );
        }
    }
    if flags.is_empty() {
        check(Some(true), "no meter or clock anomaly flagged".into());
    } else {
        check(Some(false), format!("session flagged: {flags}"));
    }
    Verdict { ok, lines }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn ramp(n: usize, every: usize, wh_per_change: i64, power: i64) -> Vec<Progress> {
        (0..n)
            .map(|i| Progress {
                secs: i as f64,
                energy_wh: (i / every) as i64 * wh_per_change,
                power_w: Some(power),
            })
            .collect()
    }

    #[test]
    fn the_arguments_default_and_a_wrong_one_is_named() {
        assert_eq!(
            parse(&[]),
            Ok(TestSession {
                connector: 1,
                tag: None,
                secs: 60
            })
        );
        assert_eq!(
            parse(&words("--connector 2 --tag FIELDTEST --secs 30")),
            Ok(TestSession {
                connector: 2,
                tag: Some("FIELDTEST".into()),
                secs: 30
            })
        );
        assert!(parse(&words("--secs 0")).unwrap_err().contains("--secs"));
        assert!(parse(&words("--tag")).unwrap_err().contains("--tag"));
        assert!(parse(&words("--bogus")).unwrap_err().contains("--bogus"));
    }

    #[test]
    fn a_healthy_session_passes_every_check() {
        // 7.2 kW: 2 Wh a second; a reading every 5 s carries 10 Wh
        let v = verdict(&ramp(60, 5, 10, 7200), "", Some(3), Some(5.0));
        assert!(v.ok, "{:#?}", v.lines);
        assert!(
            v.lines[0].contains("meter increasing: 110 Wh"),
            "{:?}",
            v.lines
        );
    }

    #[test]
    fn a_stuck_meter_a_drifting_clock_and_a_wrong_interval_each_fail() {
        let stuck = verdict(&ramp(30, 5, 0, 7200), "", Some(0), None);
        assert!(!stuck.ok);
        assert!(stuck.lines[0].starts_with("FAIL meter did not increase"));
        let drift = verdict(&ramp(60, 5, 10, 7200), "", Some(-600), Some(5.0));
        assert!(!drift.ok);
        assert!(drift.lines[1].contains("-600 s"), "{:?}", drift.lines);
        let slow = verdict(&ramp(60, 20, 40, 7200), "", Some(0), Some(5.0));
        assert!(!slow.ok, "{:?}", slow.lines);
        let implausible = verdict(&ramp(60, 5, 100, 7200), "", Some(0), Some(5.0));
        assert!(
            !implausible.ok,
            "ten times the power's energy: {:?}",
            implausible.lines
        );
        let flagged = verdict(&ramp(60, 5, 10, 7200), "meter_jump", Some(0), Some(5.0));
        assert!(!flagged.ok);
    }

    #[test]
    fn the_session_started_is_the_new_one_on_that_connector() {
        let status = json!({"sessions": [
            {"session_id": "old", "cp_id": "CP1", "connector_id": 1, "energy_wh": 5, "flags": ""},
            {"session_id": "new", "cp_id": "CP1", "connector_id": 1, "energy_wh": 7, "power_w": 7200, "flags": ""},
            {"session_id": "other", "cp_id": "CP2", "connector_id": 1, "energy_wh": 1, "flags": ""}]});
        assert_eq!(
            started(&status, "CP1", 1, &["old".into()]),
            Some("new".into())
        );
        assert_eq!(started(&status, "CP1", 2, &[]), None);
        let (p, flags) = progress(&status, "new", 3.0).unwrap();
        assert_eq!(
            (p.energy_wh, p.power_w, flags.as_str()),
            (7, Some(7200), "")
        );
        assert_eq!(progress_line(&p), "   3 s  7.2 kW  0.007 kWh");
        assert!(progress(&status, "gone", 3.0).is_none());
        assert_eq!(
            configured_interval(
                &json!({"configurationKey": [{"key": "MeterValueSampleInterval", "readonly": false, "value": "15"}]})
            ),
            Some(15.0)
        );
    }
}
