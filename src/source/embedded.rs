//! The embedded broker (rumqttd) for zero-config single-box, demo and test use.
//!
//! It keeps messages in memory only: devices get their PUBACK as soon as rumqttd holds the
//! message, and a restart of the collector loses what the broker held. Production deployments
//! point `--broker` at mosquitto, EMQX or another persistent broker (see README).
//!
//! rumqttd's `Broker::start` blocks forever and has no shutdown API, so it runs on a dedicated
//! thread that ends with the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::EmbeddedConfig;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "embedded broker cannot listen on {addr}: {source} (is another broker running? use --listen or --broker)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker thread: {0}")]
    Thread(std::io::Error),
}

fn server(name: &str, listen: SocketAddr, c: &EmbeddedConfig) -> ServerSettings {
    ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: c.max_payload_bytes,
            max_inflight_count: 2_000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Starts the broker and returns once its listener address was free. The returned address is
/// the MQTT 3.1.1 listener the collector connects to.
pub fn start(c: &EmbeddedConfig) -> Result<SocketAddr, EmbeddedError> {
    // rumqttd only logs a failed bind from its own thread; check first so the user gets a
    // clear error and exit code instead of a collector that never connects.
    for addr in std::iter::once(c.listen).chain(c.listen_v5) {
        TcpListener::bind(addr).map_err(|source| EmbeddedError::Bind { addr, source })?;
    }
    let mut v4 = HashMap::new();
    v4.insert("v4".to_string(), server("v4", c.listen, c));
    let v5 = c.listen_v5.map(|addr| {
        let mut m = HashMap::new();
        m.insert("v5".to_string(), server("v5", addr, c));
        m
    });
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: c.max_connections,
            max_outgoing_packet_count: 2_000,
            max_segment_size: c.segment_bytes.max(1024),
            max_segment_count: c.segment_count.max(1),
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5,
        ws: None,
        cluster: None,
        // No console and no Prometheus: they would open ports and install their own recorder.
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(EmbeddedError::Thread)?;
    tracing::info!(listen = %c.listen, listen_v5 = ?c.listen_v5, "embedded MQTT broker started (in memory; use --broker for production)");
    Ok(c.listen)
}
