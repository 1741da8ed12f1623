//! The embedded broker (rumqttd) for zero-config single-box, demo and test use.
//!
//! It keeps messages in memory only: devices get their PUBACK as soon as rumqttd holds the
//! message, and a restart of the collector loses what the broker held. Production deployments
//! point `--broker` at mosquitto, EMQX or another persistent broker (see README).
//!
//! One port for MQTT 3.1.1 and MQTT 5. rumqttd 0.20 serves one protocol version per listener
//! (its v4 listener drops a v5 CONNECT, which `mosquitto_pub -V mqttv5` answers by reconnecting
//! forever; one-port support is an unmerged pull request, bytebeamio/rumqtt#641). So rumqttd
//! listens on two private loopback ports, and `embedded.listen` is ours: each connection's
//! CONNECT says the protocol level in its first bytes, and the connection is spliced through to
//! the rumqttd listener of that version. Everything after those bytes is rumqttd's.
//!
//! rumqttd's `Broker::start` blocks forever and has no shutdown API, so it and the front
//! listener run on dedicated threads that end with the process.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::EmbeddedConfig;

/// A device must send its CONNECT within this time, or its connection is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long rumqttd may take to listen on its private ports and answer a CONNECT.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Room in a packet beside the payload: a topic of up to 65,535 bytes, the packet id and MQTT 5
/// properties. rumqttd's limit counts the whole packet, `embedded.max_payload_bytes` the payload.
pub const PACKET_OVERHEAD: usize = 64 * 1024 + 1024;
/// Packets rumqttd reads from one connection before it hands them to its router.
const INCOMING_BATCH: usize = 2_000;
/// Connections beyond `max_connections` that the router keeps free for the collector's own
/// client and the readiness checks (they reach rumqttd's private ports directly).
const RESERVED_CONNECTIONS: usize = 16;
/// Copy buffer per direction per spliced connection (tokio's default).
const SPLICE_BUFFER: usize = 8 * 1024;

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
    #[error(
        "embedded broker did not answer an MQTT {version} CONNECT on its private port {addr} within {timeout:?}: {reason}"
    )]
    NotReady {
        version: &'static str,
        addr: SocketAddr,
        timeout: Duration,
        reason: String,
    },
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// Where the collector's own client connects: rumqttd's private MQTT 3.1.1 port.
    pub collector_addr: SocketAddr,
    /// The addresses devices connect to (`embedded.listen`, and `embedded.listen_v5` when set).
    pub listening: Vec<SocketAddr>,
}

/// The protocol version a connection asked for, from the first bytes of its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V5,
    /// 3.1.1 and anything else: rumqttd's v4 listener answers levels it does not speak itself.
    V311,
}

impl Version {
    fn label(self) -> &'static str {
        match self {
            Version::V5 => "5",
            Version::V311 => "3.1.1",
        }
    }
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    More,
    Version(Version),
    NotMqtt,
}

/// Reads the protocol level of a CONNECT: fixed header (0x10, remaining length in 1-4 bytes),
/// protocol name (u16 length, "MQTT" or "MQIsdp"), level (4 = 3.1.1, 5 = 5). At most 14 bytes.
fn sniff(buf: &[u8]) -> Sniff {
    match buf.first() {
        None => return Sniff::More,
        Some(0x10) => {}
        Some(_) => return Sniff::NotMqtt,
    }
    let mut name_at = None;
    for i in 1..=4 {
        match buf.get(i) {
            None => return Sniff::More,
            Some(b) if b & 0x80 == 0 => {
                name_at = Some(i + 1);
                break;
            }
            Some(_) => {}
        }
    }
    let Some(at) = name_at else {
        return Sniff::NotMqtt;
    };
    let (Some(&hi), Some(&lo)) = (buf.get(at), buf.get(at + 1)) else {
        return Sniff::More;
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Sniff::NotMqtt;
    }
    match buf.get(at + 2 + name_len) {
        None => Sniff::More,
        Some(5) => Sniff::Version(Version::V5),
        Some(_) => Sniff::Version(Version::V311),
    }
}

fn server(name: &str, listen: SocketAddr, c: &EmbeddedConfig) -> ServerSettings {
    ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: c.max_payload_bytes.saturating_add(PACKET_OVERHEAD),
            max_inflight_count: INCOMING_BATCH,
            auth: None,
            external_auth: None,
            // rumqttd 0.20 never reads this for publishes (`DataLog::matches` always answers
            // `Some`), so a publish no subscription matches is acked and dropped, as mosquitto
            // does. Off, so that a version that honours it cannot open a log per stray topic.
            dynamic_filters: false,
        },
    }
}

/// Starts rumqttd on two private loopback ports and the front listener on `embedded.listen`
/// (and `embedded.listen_v5`), and returns once rumqttd answers a CONNECT of each version.
pub async fn start(c: &EmbeddedConfig) -> Result<Embedded, EmbeddedError> {
    // Our own bind: a taken port is a clear error and exit code 2, not a silent rumqttd log line.
    let mut fronts = Vec::new();
    for addr in std::iter::once(c.listen).chain(c.listen_v5) {
        let l = TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| EmbeddedError::Bind { addr, source })?;
        let local = l
            .local_addr()
            .map_err(|source| EmbeddedError::Bind { addr, source })?;
        fronts.push((local, l));
    }
    // rumqttd binds by address and cannot report a port it picked, so the private ports are
    // picked here (both at once, so they differ) and checked by `ready` once rumqttd has them.
    let (v4_addr, v5_addr) = {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let err = |source| EmbeddedError::Bind { addr: any, source };
        let a = TcpListener::bind(any).map_err(err)?;
        let b = TcpListener::bind(any).map_err(err)?;
        (a.local_addr().map_err(err)?, b.local_addr().map_err(err)?)
    };
    let mut v4 = HashMap::new();
    v4.insert("v4".to_string(), server("v4", v4_addr, c));
    let mut v5 = HashMap::new();
    v5.insert("v5".to_string(), server("v5", v5_addr, c));
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: c.max_connections.saturating_add(RESERVED_CONNECTIONS),
            max_outgoing_packet_count: 2_000,
            max_segment_size: c.segment_bytes.max(1024),
            max_segment_count: c.segment_count.max(1),
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: Some(v5),
        ws: None,
        cluster: None,
        // No console and no Prometheus: they would open ports and install their own recorder.
        console: None,
        bridge: None,
        prometheus: None,
        // Only the timer that pushes alerts to our alerts link (`watch_skips`).
        metrics: alert_timer(),
    };
    let mut broker = rumqttd::Broker::new(config);
    match broker.alerts() {
        Ok(link) => {
            std::thread::Builder::new()
                .name("embedded-alerts".into())
                .spawn(move || watch_skips(link))
                .map_err(EmbeddedError::Thread)?;
        }
        Err(e) => {
            tracing::warn!(error = %e, "embedded broker alerts unavailable: skips will not be counted")
        }
    }
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(EmbeddedError::Thread)?;
    ready(v4_addr, Version::V311).await?;
    ready(v5_addr, Version::V5).await?;

    let upstream = Upstream {
        v4: v4_addr,
        v5: v5_addr,
    };
    let permits = Arc::new(Semaphore::new(
        c.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let listening: Vec<SocketAddr> = fronts.iter().map(|(a, _)| *a).collect();
    let listeners: Vec<TcpListener> = fronts.into_iter().map(|(_, l)| l).collect();
    std::thread::Builder::new()
        .name("embedded-front".into())
        .spawn(move || front(listeners, upstream, permits))
        .map_err(EmbeddedError::Thread)?;
    tracing::info!(
        listen = ?listening,
        protocols = "3.1.1, 5",
        private_v4 = %v4_addr,
        private_v5 = %v5_addr,
        max_connections = c.max_connections,
        log_bytes_per_filter = c.segment_bytes.max(1024).saturating_mul(c.segment_count.max(1)),
        "embedded MQTT broker started (in memory; use --broker for production)"
    );
    Ok(Embedded {
        collector_addr: v4_addr,
        listening,
    })
}

/// rumqttd pushes its alerts every second. Its timer unwraps both intervals whichever is
/// configured, so meters get one too (rarely: no one reads them). `MetricSettings` has private
/// fields and no constructor, so it is built through its serde form.
fn alert_timer() -> Option<HashMap<rumqttd::MetricType, rumqttd::MetricSettings>> {
    let mut m = HashMap::new();
    for (kind, secs) in [
        (rumqttd::MetricType::Alerts, 1),
        (rumqttd::MetricType::Meters, 3600),
    ] {
        match serde_json::from_value(serde_json::json!({ "push_interval": secs })) {
            Ok(settings) => {
                m.insert(kind, settings);
            }
            Err(e) => {
                tracing::warn!(error = %e, "embedded broker alerts off: skips will not be counted");
                return None;
            }
        }
    }
    Some(m)
}

/// rumqttd skips a subscriber that fell behind the oldest segment of a filter's log ahead to
/// the oldest message it still has, and only says so in an alert: the skipped messages were
/// acknowledged to the devices and are lost. Count and log every such jump.
fn watch_skips(link: rumqttd::alerts::AlertsLink) {
    metrics::counter!("v2x_embedded_subscriber_skips_total").increment(0);
    while let Ok(alerts) = link.router_rx.recv() {
        for alert in alerts {
            if alert.kind.name() == "cursor_jump" {
                metrics::counter!("v2x_embedded_subscriber_skips_total").increment(1);
                tracing::warn!(
                    client_id = %alert.client_id,
                    alert = %alert.kind.description(),
                    "embedded broker skipped a subscriber ahead: messages acknowledged to devices were dropped (the collector fell behind embedded.segment_bytes x embedded.segment_count)"
                );
            }
        }
    }
}

/// Connects with the given protocol version and waits for a successful CONNACK: rumqttd gives
/// no other sign that a listener is up (it logs a failed bind on its own thread).
async fn ready(addr: SocketAddr, version: Version) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = match version {
            Version::V311 => tokio::time::timeout(left, probe_v4(addr)).await,
            Version::V5 => tokio::time::timeout(left, probe_v5(addr)).await,
        };
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(EmbeddedError::NotReady {
        version: version.label(),
        addr,
        timeout: READY_TIMEOUT,
        reason: last,
    })
}

macro_rules! probe {
    ($name:ident, $root:path, $packet:path) => {
        async fn $name(addr: SocketAddr) -> Result<(), String> {
            use $packet as p;
            use $root as r;
            let mut o = r::MqttOptions::new(
                concat!("v2x-embedded-ready-", stringify!($name)),
                addr.ip().to_string(),
                addr.port(),
            );
            o.set_keep_alive(Duration::from_secs(5));
            let (_client, mut el) = r::AsyncClient::new(o, 4);
            loop {
                match el.poll().await {
                    Ok(r::Event::Incoming(p::Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            // Close the socket without a DISCONNECT. rumqttd 0.20 turns a DISCONNECT followed
            // by the close into two disconnect events for one connection id; when the
            // collector's own connection takes that id in between, the second event drops it,
            // and its reconnect then panics rumqttd's listener (a stale will handler under a
            // poisoned lock), so no 3.1.1 client could connect again. A bare close is one event.
            Ok(())
        }
    };
}
probe!(probe_v4, rumqttc, rumqttc);
probe!(probe_v5, rumqttc::v5, rumqttc::v5::mqttbytes::v5);

/// rumqttd's private listeners, one per protocol version.
#[derive(Debug, Clone, Copy)]
struct Upstream {
    v4: SocketAddr,
    v5: SocketAddr,
}

/// The front listener's thread: accepts on every public address and splices each connection to
/// the rumqttd listener of its protocol version.
fn front(listeners: Vec<TcpListener>, upstream: Upstream, permits: Arc<Semaphore>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "embedded broker front listener has no runtime");
            return;
        }
    };
    runtime.block_on(async move {
        // Counters that only move on trouble exist from the start, so `increase()` sees them.
        for reason in ["limit", "not_mqtt"] {
            metrics::counter!("v2x_embedded_connections_refused_total", "reason" => reason)
                .increment(0);
        }
        let mut tasks = Vec::new();
        for l in listeners {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => tasks.push(tokio::spawn(accept_loop(l, upstream, permits.clone()))),
                Err(e) => tracing::error!(error = %e, "embedded broker front listener failed"),
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

async fn accept_loop(l: tokio::net::TcpListener, upstream: Upstream, permits: Arc<Semaphore>) {
    loop {
        let (device, peer) = match l.accept().await {
            Ok(v) => v,
            Err(e) => {
                // Out of file descriptors, for example: wait instead of spinning.
                tracing::warn!(error = %e, "embedded broker cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("v2x_embedded_connections_refused_total", "reason" => "limit")
                .increment(1);
            tracing::debug!(%peer, "embedded broker at embedded.max_connections: connection closed");
            continue;
        };
        tokio::spawn(async move {
            splice(device, peer, upstream).await;
            drop(permit);
        });
    }
}

/// Keeps the open-connection gauge right however a connection ends.
struct Open;
impl Open {
    fn new() -> Open {
        metrics::gauge!("v2x_embedded_connections_open").increment(1.0);
        Open
    }
}
impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("v2x_embedded_connections_open").decrement(1.0);
    }
}

async fn splice(mut device: TcpStream, peer: SocketAddr, upstream: Upstream) {
    let mut head = Vec::with_capacity(256);
    let version = match tokio::time::timeout(CONNECT_TIMEOUT, read_head(&mut device, &mut head))
        .await
    {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) => {
            metrics::counter!("v2x_embedded_connections_refused_total", "reason" => "not_mqtt")
                .increment(1);
            tracing::debug!(%peer, "embedded broker: not an MQTT CONNECT, connection closed");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "embedded broker: connection lost before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "embedded broker: no CONNECT within {CONNECT_TIMEOUT:?}");
            return;
        }
    };
    let target = match version {
        Version::V5 => upstream.v5,
        Version::V311 => upstream.v4,
    };
    let mut broker = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, %target, error = %e, "embedded broker: private listener unreachable");
            return;
        }
    };
    metrics::counter!("v2x_embedded_connections_total", "protocol" => version.label()).increment(1);
    let _open = Open::new();
    tracing::debug!(%peer, protocol = version.label(), "embedded broker: device connected");
    // MQTT acks are small and latency-bound.
    let _ = device.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let result = async {
        tokio::io::AsyncWriteExt::write_all(&mut broker, &head).await?;
        drop(head);
        tokio::io::copy_bidirectional_with_sizes(
            &mut device,
            &mut broker,
            SPLICE_BUFFER,
            SPLICE_BUFFER,
        )
        .await
    }
    .await;
    match result {
        Ok((up, down)) => {
            tracing::debug!(%peer, bytes_in = up, bytes_out = down, "embedded broker: device left")
        }
        Err(e) => tracing::debug!(%peer, error = %e, "embedded broker: device connection ended"),
    }
}

/// Reads until the CONNECT's protocol level is known; everything read is kept in `head` and
/// goes to rumqttd first.
async fn read_head(s: &mut TcpStream, head: &mut Vec<u8>) -> std::io::Result<Option<Version>> {
    loop {
        match sniff(head) {
            Sniff::Version(v) => return Ok(Some(v)),
            Sniff::NotMqtt => return Ok(None),
            Sniff::More => {}
        }
        if s.read_buf(head).await? == 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(level: u8, name: &[u8]) -> Vec<u8> {
        let mut v = vec![0x10, 0x20, 0x00, name.len() as u8];
        v.extend_from_slice(name);
        v.push(level);
        v.extend_from_slice(&[0x02, 0x00, 0x3c]);
        v
    }

    #[test]
    fn the_level_byte_picks_the_listener() {
        assert_eq!(sniff(&connect(5, b"MQTT")), Sniff::Version(Version::V5));
        assert_eq!(sniff(&connect(4, b"MQTT")), Sniff::Version(Version::V311));
        // MQTT 3.1 goes to the v4 listener, which refuses it itself.
        assert_eq!(sniff(&connect(3, b"MQIsdp")), Sniff::Version(Version::V311));
    }

    #[test]
    fn every_prefix_asks_for_more() {
        let full = connect(5, b"MQTT");
        let level_at = 1 + 1 + 2 + 4;
        for n in 0..=level_at {
            assert_eq!(sniff(&full[..n]), Sniff::More, "{n} bytes");
        }
        assert_eq!(sniff(&full[..=level_at]), Sniff::Version(Version::V5));
    }

    #[test]
    fn long_remaining_lengths_are_read() {
        // A 4 MiB CONNECT (a large will message): remaining length in 4 bytes.
        let mut v = vec![0x10, 0x80, 0x80, 0x80, 0x02, 0x00, 0x04];
        v.extend_from_slice(b"MQTT");
        v.push(5);
        assert_eq!(sniff(&v), Sniff::Version(Version::V5));
    }

    #[test]
    fn other_protocols_are_refused() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotMqtt);
        // TLS ClientHello on the plaintext port.
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniff::NotMqtt);
        // PUBLISH before CONNECT.
        assert_eq!(sniff(&[0x30, 0x02, 0x00, 0x00]), Sniff::NotMqtt);
        // Five length bytes with the continuation bit.
        assert_eq!(sniff(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]), Sniff::NotMqtt);
        // A protocol name longer than any MQTT version's.
        assert_eq!(sniff(&[0x10, 0x20, 0x01, 0x00, b'x']), Sniff::NotMqtt);
    }
}
