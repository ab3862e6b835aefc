//! Reservations with a grace period (the Beckn guide's booked slot): what holds a
//! connector, when the charger is asked to hold it, who may start on it, and how it ends.
//! Pure: the stored reservations and `now` in, decisions out; the store keeps them and the
//! reservation driver (`ocpp::reserve`) sends ReserveNow / CancelReservation.
//!
//! A reservation is `scheduled` until its charger accepted ReserveNow (`held`), and then
//! `released` for one reason: `used` (the order's driver started on it before the
//! expiry, `start` + grace), `no_show` (nobody came), `cancelled` (`reservation.cancel`),
//! or `charger_refused` (ReserveNow answered Occupied, Faulted, Rejected or Unavailable).
//! From `start` until the expiry the connector is the order's at the site whatever the
//! charger knows: while the charger is out of reach, the agent still refuses any other
//! driver there, and sends ReserveNow when it comes back.

use chrono::{DateTime, Duration, Utc};

/// Where a reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stored; ReserveNow not (yet) accepted by the charger.
    Scheduled,
    /// The charger accepted ReserveNow.
    Held,
    /// Over.
    Released(Release),
}

/// Why a reservation ended (`reservation.released.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The order's driver started a session on it in time.
    Used,
    /// Nobody came within the grace period.
    NoShow,
    /// `reservation.cancel`.
    Cancelled,
    /// The charger refused ReserveNow.
    ChargerRefused,
}

impl Release {
    /// As the contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Used => "used",
            Release::NoShow => "no_show",
            Release::Cancelled => "cancelled",
            Release::ChargerRefused => "charger_refused",
        }
    }

    /// The stored spelling back.
    pub fn parse(s: &str) -> Option<Release> {
        Some(match s {
            "used" => Release::Used,
            "no_show" => Release::NoShow,
            "cancelled" => Release::Cancelled,
            "charger_refused" => Release::ChargerRefused,
            _ => return None,
        })
    }
}

/// One reservation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The OCPP `reservationId` (1.6 `reservationId`, 2.0.1 `id`).
    pub id: i64,
    /// The Beckn order.
    pub order_id: String,
    /// Charger.
    pub cp_id: String,
    /// Connector (2.0.1: EVSE).
    pub connector_id: u32,
    /// When the connector is held from.
    pub start: DateTime<Utc>,
    /// The booked slot's end (informational).
    pub end: Option<DateTime<Utc>>,
    /// `start` + grace: released as a no-show at this time.
    pub expires_at: DateTime<Utc>,
    /// Where it is.
    pub stage: Stage,
}

impl Reservation {
    /// Whether it holds its connector at `now`: from `start` until the expiry, unless
    /// released.
    pub fn holds(&self, now: DateTime<Utc>) -> bool {
        !matches!(self.stage, Stage::Released(_)) && self.start <= now && now < self.expires_at
    }
}

/// Why `reservation.upsert` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpsertError {
    /// The times do not make a reservation.
    #[error("{0}")]
    Bad(&'static str),
    /// Another live reservation holds the connector at an overlapping time.
    #[error("order {0} holds this connector at an overlapping time")]
    Overlaps(String),
    /// The order's reservation is live on another connector: cancel it first.
    #[error("the order's reservation is on another connector; cancel it first")]
    Moved,
    /// The order's reservation is already over.
    #[error("the order's reservation was already released ({0})")]
    Released(&'static str),
}

/// The expiry of a reservation from `start` with `grace_minutes`, judged against `now`:
/// the grace is 0 to 1,440 minutes, the expiry must lie ahead and `end`, when given, must
/// not come before `start`.
///
/// # Errors
/// [`UpsertError::Bad`].
pub fn expiry(
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    grace_minutes: i64,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, UpsertError> {
    if !(0..=1440).contains(&grace_minutes) {
        return Err(UpsertError::Bad("`grace_minutes` must be 0 to 1440"));
    }
    if end.is_some_and(|e| e < start) {
        return Err(UpsertError::Bad("`end` is before `start`"));
    }
    let expires_at = start + Duration::minutes(grace_minutes);
    if expires_at <= now {
        return Err(UpsertError::Bad(
            "the reservation's grace period is already over",
        ));
    }
    Ok(expires_at)
}

/// Whether `new` may be stored beside `existing` (the live reservations of the site; the
/// order's own, if any, among them).
///
/// # Errors
/// [`UpsertError`].
pub fn check_upsert(
    new: &Reservation,
    own: Option<&Reservation>,
    others: &[Reservation],
) -> Result<(), UpsertError> {
    if let Some(o) = own {
        if let Stage::Released(r) = o.stage {
            return Err(UpsertError::Released(r.as_str()));
        }
        if (o.cp_id.as_str(), o.connector_id) != (new.cp_id.as_str(), new.connector_id) {
            return Err(UpsertError::Moved);
        }
    }
    for r in others.iter().filter(|r| r.order_id != new.order_id) {
        let live = !matches!(r.stage, Stage::Released(_));
        let same = (r.cp_id.as_str(), r.connector_id) == (new.cp_id.as_str(), new.connector_id);
        if live && same && r.start < new.expires_at && new.start < r.expires_at {
            return Err(UpsertError::Overlaps(r.order_id.clone()));
        }
    }
    Ok(())
}

/// What the driver does about a reservation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send ReserveNow (its start has come, the charger is connected and has not
    /// accepted it on this connection).
    Reserve,
    /// Its grace period is over: release it as a no-show and cancel it at the charger.
    Expire,
}

/// What is due for `r` at `now`; `sent` is whether the charger accepted it on its current
/// connection.
pub fn due(r: &Reservation, connected: bool, sent: bool, now: DateTime<Utc>) -> Option<Action> {
    match r.stage {
        Stage::Released(_) => None,
        _ if now >= r.expires_at => Some(Action::Expire),
        _ if now >= r.start && connected && !sent => Some(Action::Reserve),
        _ => None,
    }
}

/// When the driver must look again: the next start or expiry after `now`.
pub fn next_wake(rs: &[Reservation], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    rs.iter()
        .filter(|r| !matches!(r.stage, Stage::Released(_)))
        .flat_map(|r| [r.start, r.expires_at])
        .filter(|t| *t > now)
        .min()
}

/// Who may start on a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// No reservation holds it.
    Free,
    /// The reservation's own order: it is used.
    Used(i64),
    /// Held for another order: refused.
    Refused(i64),
}

/// Whether a session of `order_id` (none: a card, a free-vend tag) may start on a
/// connector that `held` (the reservation holding it now, if any) holds; `own_tag` is
/// whether the session's tag is the reservation's own (its remote start).
pub fn admit(held: Option<&Reservation>, order_id: Option<&str>, own_tag: bool) -> Admission {
    match held {
        None => Admission::Free,
        Some(r) if own_tag || order_id == Some(r.order_id.as_str()) => Admission::Used(r.id),
        Some(r) => Admission::Refused(r.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(m: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + m * 60, 0).unwrap()
    }

    fn res(order: &str, connector: u32, start: i64, grace: i64) -> Reservation {
        Reservation {
            id: 1,
            order_id: order.into(),
            cp_id: "CP1".into(),
            connector_id: connector,
            start: t(start),
            end: Some(t(start + 60)),
            expires_at: t(start + grace),
            stage: Stage::Scheduled,
        }
    }

    #[test]
    fn a_reservation_holds_its_connector_from_start_until_the_grace_is_over() {
        let r = res("o1", 1, 10, 15);
        assert!(!r.holds(t(9)));
        assert!(r.holds(t(10)) && r.holds(t(24)));
        assert!(!r.holds(t(25)));
        let used = Reservation {
            stage: Stage::Released(Release::Used),
            ..r
        };
        assert!(!used.holds(t(12)));
    }

    #[test]
    fn reserve_now_goes_out_at_start_to_a_connected_charger_once_per_connection() {
        let r = res("o1", 1, 10, 15);
        assert_eq!(due(&r, true, false, t(9)), None);
        assert_eq!(due(&r, true, false, t(10)), Some(Action::Reserve));
        assert_eq!(due(&r, false, false, t(10)), None);
        assert_eq!(due(&r, true, true, t(10)), None);
        assert_eq!(due(&r, false, true, t(25)), Some(Action::Expire));
        assert_eq!(next_wake(std::slice::from_ref(&r), t(0)), Some(t(10)));
        assert_eq!(next_wake(&[r], t(10)), Some(t(25)));
    }

    #[test]
    fn only_the_orders_own_driver_starts_on_a_held_connector() {
        let mut r = res("o1", 1, 10, 15);
        r.id = 7;
        assert_eq!(admit(None, Some("o2"), false), Admission::Free);
        assert_eq!(admit(Some(&r), Some("o1"), false), Admission::Used(7));
        assert_eq!(admit(Some(&r), None, true), Admission::Used(7));
        assert_eq!(admit(Some(&r), Some("o2"), false), Admission::Refused(7));
        assert_eq!(admit(Some(&r), None, false), Admission::Refused(7));
    }

    #[test]
    fn an_upsert_may_not_overlap_another_order_nor_move_nor_revive() {
        let a = res("o1", 1, 10, 15);
        let b = res("o2", 1, 20, 15);
        assert_eq!(
            check_upsert(&b, None, std::slice::from_ref(&a)),
            Err(UpsertError::Overlaps("o1".into()))
        );
        let later = res("o2", 1, 25, 15);
        assert_eq!(check_upsert(&later, None, std::slice::from_ref(&a)), Ok(()));
        let elsewhere = res("o2", 2, 20, 15);
        assert_eq!(
            check_upsert(&elsewhere, None, std::slice::from_ref(&a)),
            Ok(())
        );
        let moved = res("o1", 2, 10, 15);
        assert_eq!(
            check_upsert(&moved, Some(&a), std::slice::from_ref(&a)),
            Err(UpsertError::Moved)
        );
        let done = Reservation {
            stage: Stage::Released(Release::NoShow),
            ..a.clone()
        };
        assert_eq!(
            check_upsert(&a, Some(&done), &[]),
            Err(UpsertError::Released("no_show"))
        );
        // the order's own may change its times
        assert_eq!(
            check_upsert(&res("o1", 1, 12, 15), Some(&a), std::slice::from_ref(&a)),
            Ok(())
        );
    }

    #[test]
    fn the_grace_must_be_sane_and_not_yet_over() {
        assert_eq!(expiry(t(10), None, 15, t(0)), Ok(t(25)));
        assert!(expiry(t(10), None, -1, t(0)).is_err());
        assert!(expiry(t(10), None, 1441, t(0)).is_err());
        assert!(expiry(t(10), Some(t(9)), 15, t(0)).is_err());
        assert!(expiry(t(10), None, 15, t(25)).is_err());
        // a reservation whose start is past but whose grace is not is still taken
        assert_eq!(expiry(t(10), None, 15, t(20)), Ok(t(25)));
    }

    #[test]
    fn release_reasons_round_trip_as_stored() {
        for r in [
            Release::Used,
            Release::NoShow,
            Release::Cancelled,
            Release::ChargerRefused,
        ] {
            assert_eq!(Release::parse(r.as_str()), Some(r));
        }
        assert_eq!(Release::parse("other"), None);
    }
}
