//! An embedded MQTT broker (rumqttd), for `chargesite demo` and the test suite only.
//!
//! Behind the `embedded-broker` feature: a site agent talks to the operator's broker, it
//! does not run one, so the gateway build leaves this out.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Runs a plain-MQTT broker on `listen` on the calling thread, forever (rumqttd has no
/// shutdown; run it on a thread of its own, or in a process of its own to kill it).
///
/// # Errors
/// rumqttd's error text when it cannot start.
pub fn run(listen: SocketAddr) -> Result<(), String> {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5000,
        // Large enough for the tests' oversized commands (up to 8 MB).
        max_payload_size: 16 << 20,
        max_inflight_count: 200,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = rumqttd::RouterConfig {
        max_connections: 100,
        max_outgoing_packet_count: 200,
        max_segment_size: 100 * 1024 * 1024,
        max_segment_count: 10,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let config = rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    rumqttd::Broker::new(config)
        .start()
        .map_err(|e| e.to_string())
}
