//! Which handler a request of the status server goes to (pure). The charger verbs of
//! `chargesite charger` will be `POST /api/v1/chargers/{id}/{verb}` routes beside these:
//! a [`Route`] variant each, answered through `ocpp::commands`, and, since they change
//! something, allowed only to an [`Access`] that [`Access::may_change`].

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the status page a person reads.
    Page,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /api/v1/status`: the JSON `chargesite status` prints.
    Status,
    /// `POST /api/v1/chargers/{id}/command`: a commissioning verb (`chargesite charger`),
    /// for the charger named.
    ChargerCommand(String),
    /// A known path with another method: 405.
    MethodNotAllowed,
    /// 404.
    NotFound,
}

/// How a request reached the server, which decides what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Over the Unix socket (only the service's user and root can open it).
    pub via_socket: bool,
    /// It carried Basic auth that verified against `[status] password_hash`.
    pub authenticated: bool,
}

impl Access {
    /// Whether a request may change something (CONTRACT §5: auth on any address, or the
    /// Unix socket): the charger verbs.
    pub fn may_change(self) -> bool {
        self.via_socket || self.authenticated
    }
}

/// The route for `method` and `path` (the query string is not part of `path`).
pub fn route(method: &str, path: &str) -> Route {
    if let Some(id) = path
        .strip_prefix("/api/v1/chargers/")
        .and_then(|rest| rest.strip_suffix("/command"))
    {
        if id.is_empty() || id.contains('/') {
            return Route::NotFound;
        }
        return if method == "POST" {
            Route::ChargerCommand(id.to_string())
        } else {
            Route::MethodNotAllowed
        };
    }
    let target = match path {
        "/" | "/index.html" => Route::Page,
        "/metrics" => Route::Metrics,
        "/api/v1/status" => Route::Status,
        _ => return Route::NotFound,
    };
    if method == "GET" || method == "HEAD" {
        target
    } else {
        Route::MethodNotAllowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_routes_answer_get_and_nothing_else() {
        assert_eq!(route("GET", "/api/v1/status"), Route::Status);
        assert_eq!(route("GET", "/metrics"), Route::Metrics);
        assert_eq!(route("GET", "/"), Route::Page);
        assert_eq!(route("POST", "/api/v1/status"), Route::MethodNotAllowed);
        assert_eq!(route("GET", "/api/v1/secrets"), Route::NotFound);
    }

    #[test]
    fn a_charger_verb_is_a_post_to_that_chargers_command() {
        assert_eq!(
            route("POST", "/api/v1/chargers/CP001/command"),
            Route::ChargerCommand("CP001".into())
        );
        assert_eq!(
            route("GET", "/api/v1/chargers/CP001/command"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("POST", "/api/v1/chargers//command"), Route::NotFound);
        assert_eq!(
            route("POST", "/api/v1/chargers/a/b/command"),
            Route::NotFound
        );
    }

    #[test]
    fn only_the_socket_or_a_verified_password_may_change_things() {
        let tcp = Access {
            via_socket: false,
            authenticated: false,
        };
        assert!(!tcp.may_change());
        assert!(Access {
            authenticated: true,
            ..tcp
        }
        .may_change());
        assert!(Access {
            via_socket: true,
            ..tcp
        }
        .may_change());
    }
}
