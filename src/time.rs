//! Time as the contract writes it (RFC 3339, UTC, milliseconds) and the charger clock
//! checks; pure except for [`now`], which callers pass down as an input.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};

/// A timestamp as the charger sent it and as it was understood.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargerTime {
    /// The exact string on the wire.
    pub raw: String,
    /// The instant, in UTC.
    pub at: DateTime<Utc>,
}

/// The site clock. Called at the edges only; everything below takes `now` as an input.
pub fn now() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}

/// `2026-11-21T10:00:00.000Z`.
pub fn fmt_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Chargers whose clock reads before this year have never been set (1970 after a
/// battery-less reboot, 2000 on some firmwares).
const EARLIEST_PLAUSIBLE_YEAR: i32 = 2015;

/// Flags a charger timestamp that cannot be right: `clock_unset` (a year before 2015) or
/// `clock_ahead` (later than the site clock by more than `tolerance_secs`). A timestamp in
/// the past is not flagged: chargers legitimately send queued messages late.
pub fn clock_flag(
    charger: DateTime<Utc>,
    received: DateTime<Utc>,
    tolerance_secs: i64,
) -> Option<&'static str> {
    if charger.year() < EARLIEST_PLAUSIBLE_YEAR {
        Some("clock_unset")
    } else if (charger - received).num_seconds() > tolerance_secs {
        Some("clock_ahead")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_are_utc_with_milliseconds_and_z() {
        let t = Utc.timestamp_millis_opt(1_795_000_000_123).unwrap();
        assert_eq!(fmt_ts(t), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn an_unset_or_fast_charger_clock_is_flagged_but_a_late_message_is_not() {
        let now = Utc.timestamp_opt(1_795_000_000, 0).unwrap();
        let epoch = Utc.timestamp_opt(0, 0).unwrap();
        assert_eq!(clock_flag(epoch, now, 300), Some("clock_unset"));
        let ahead = now + chrono::Duration::seconds(301);
        assert_eq!(clock_flag(ahead, now, 300), Some("clock_ahead"));
        let late = now - chrono::Duration::hours(5);
        assert_eq!(clock_flag(late, now, 300), None);
    }
}
