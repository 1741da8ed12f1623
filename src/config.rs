//! One tree of serde structs for everything `run` can be told.
//!
//! Precedence: command-line flag > environment variable > config file > default. Flags and
//! environment variables are handled by clap in `main.rs` and applied on top of the file with
//! [`Config::apply_overrides`]. Every field has a default, so an empty file (or none) is valid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::route::RouteTemplate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of `v2x-collector run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identifies this collector in file names and in the MQTT client id. Must be a safe
    /// identifier. Default: the host name.
    pub collector_id: String,
    /// Root of the dataset (Parquet tree). Default `./data`.
    pub data_dir: PathBuf,
    /// Directory for the collector's own write-ahead log. Default `./wal`.
    pub wal_dir: PathBuf,
    pub wal: WalConfig,
    /// Directory of schema files (`*.toml`). Empty: the schemas built into the binary.
    pub schema_dir: Option<PathBuf>,
    pub http: HttpConfig,
    /// Seconds between the `ingest stats` log lines.
    pub stats_interval_s: f64,
    pub mqtt: MqttConfig,
    pub embedded: EmbeddedConfig,
    pub routing: RoutingConfig,
    pub decode: DecodeConfig,
    pub time: TimeConfig,
    pub writer: WriterConfig,
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            collector_id: default_collector_id(),
            data_dir: PathBuf::from("data"),
            wal_dir: PathBuf::from("wal"),
            wal: WalConfig::default(),
            schema_dir: None,
            http: HttpConfig::default(),
            stats_interval_s: 10.0,
            mqtt: MqttConfig::default(),
            embedded: EmbeddedConfig::default(),
            routing: RoutingConfig::default(),
            decode: DecodeConfig::default(),
            time: TimeConfig::default(),
            writer: WriterConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// A credential (password, token, secret key): read from the configuration like a string,
/// shown as `<redacted>` by `Debug`, and never serialized (its fields are `skip_serializing`),
/// so no log line or config dump can carry it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that hands it to a client or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The HTTP server: dashboard, `/metrics`, `/healthz`, `/readyz`, `/api/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Listen address; port 0 picks a free port (logged as `http listening`).
    pub listen: SocketAddr,
    /// Bearer token every route but `/healthz` requires. Mandatory when `listen` is not a
    /// loopback address; optional on loopback. Never logged.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// A source that sent nothing for this long is flagged silent.
    pub silent_after_s: f64,
    /// HTTPS: with a certificate and key the server speaks TLS only.
    pub tls: HttpTlsConfig,
}

/// `[http.tls]`: serve HTTPS instead of HTTP (both files, or neither).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// Server certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1). Never logged.
    pub key_file: Option<PathBuf>,
}

impl HttpTlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            token: None,
            silent_after_s: 10.0,
            tls: HttpTlsConfig::default(),
        }
    }
}

/// MQTT protocol version used by the collector's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// External broker URL, `mqtt://host:port` or `mqtts://host:port` (TLS, port 8883 by
    /// default). Empty: start the embedded broker.
    pub broker: Option<String>,
    /// Protocol version towards an external broker. The collector speaks 3.1.1 to the
    /// embedded broker (devices may use either; see README).
    pub protocol: Protocol,
    /// MQTT client id. Default `v2x-collector-<collector_id>`. Keep it fixed: the persistent
    /// session (and with it redelivery) is bound to it.
    pub client_id: Option<String>,
    /// Keep-alive in seconds.
    pub keep_alive_s: u64,
    /// MQTT 5 session expiry interval in seconds (how long the broker keeps our queue while we
    /// are away).
    pub session_expiry_s: u32,
    /// Largest MQTT packet accepted from the broker. A bigger packet breaks the connection,
    /// so keep it at least as large as the broker's limit.
    pub max_packet_bytes: usize,
    /// MQTT 5 Receive Maximum: unacknowledged QoS 1 messages the broker may have in flight to us.
    pub receive_maximum: u16,
    /// Topic filters to subscribe to. Empty: derived from the routing templates (plus the
    /// `V2X/#` and `v2x/#` roots so unknown topics are quarantined rather than never seen).
    pub subscriptions: Vec<String>,
    /// Share the subscriptions with other collectors as `$share/<group>/<filter>` (MQTT 5
    /// shared subscriptions; mosquitto also honours them for 3.1.1): the broker gives each
    /// message to one member of the group. Unset: a normal subscription.
    pub shared_group: Option<String>,
    /// Subscription QoS.
    pub qos: u8,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub username: Option<String>,
    /// Never logged. Also from `V2X_MQTT_PASSWORD`.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// TLS towards an `mqtts://` broker.
    pub tls: MqttTlsConfig,
}

/// `[mqtt.tls]`: how the collector checks the broker and proves who it is. Server
/// certificate and host name verification are always on; there is no option to turn them off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// CA certificates (PEM) that sign the broker's certificate. Unset: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM). Never logged.
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, when it differs from the URL's host
    /// (connecting by IP address, for example). Default: the URL's host.
    pub server_name: Option<String>,
}

impl MqttTlsConfig {
    /// Whether anything is configured (so a plaintext URL is a mistake).
    pub fn any_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: None,
            protocol: Protocol::V5,
            client_id: None,
            keep_alive_s: 20,
            session_expiry_s: 7 * 24 * 3600,
            max_packet_bytes: 8 * 1024 * 1024,
            receive_maximum: 2000,
            subscriptions: Vec::new(),
            shared_group: None,
            qos: 1,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
            username: None,
            password: None,
            tls: MqttTlsConfig::default(),
        }
    }
}

/// The write-ahead log. Group commit size and delay are `decode.batch_messages` and
/// `decode.batch_max_delay_ms`: one fsync per batch, then the batch's acks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// A new segment file starts after this many bytes.
    pub segment_bytes: u64,
    /// Bound on the log's total size. When reached the collector stops acknowledging (the
    /// broker holds the data), commits open files so the log can be truncated, and resumes.
    pub max_bytes: u64,
    /// Message ids remembered to drop broker redeliveries (about 48 bytes each).
    pub dedup_window: usize,
    /// fsync the log before acknowledging. Only benchmarks turn this off (to measure what
    /// durability costs); without it a power loss can lose acknowledged messages.
    pub fsync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            dedup_window: 200_000,
            fsync: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Address devices connect to when no broker is given. One port for MQTT 3.1.1 and MQTT 5:
    /// each connection goes to the rumqttd listener of the version its CONNECT names.
    pub listen: SocketAddr,
    /// A second address that accepts devices like `listen` (both versions). Kept for
    /// configurations from when `listen` spoke 3.1.1 only; new ones need not set it.
    pub listen_v5: Option<SocketAddr>,
    /// Largest payload the embedded broker accepts from devices; a larger packet closes that
    /// device's connection. `mqtt.max_packet_bytes` must leave room for it.
    pub max_payload_bytes: usize,
    /// Per-filter in-memory log: a new segment starts after this many bytes of topic and
    /// payload. Every subscription filter (the collector's two by default) has one log, so
    /// the broker holds at most `filters x segment_bytes x segment_count` of messages.
    pub segment_bytes: usize,
    /// Segments kept per filter log. A subscriber that falls behind the oldest segment is
    /// skipped ahead by rumqttd (those messages are lost although the devices got their
    /// PUBACK), so keep `segment_bytes x segment_count` above a few seconds of traffic.
    pub segment_count: usize,
    /// Device connections accepted at once; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: None,
            max_payload_bytes: 4 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
            segment_count: 4,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Topic level separator used by the templates. `/` for MQTT-native topics; some
    /// deployments use `.`.
    pub separator: String,
    /// Use the built-in templates (OpenV2X upper case, `v2x/v1` lower case, radar) in
    /// addition to `routes`.
    pub builtin_routes: bool,
    /// Extra templates, tried before the built-in ones, in order.
    pub routes: Vec<RouteTemplate>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            separator: "/".into(),
            builtin_routes: true,
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// Payloads larger than this are quarantined with reason `too_large`.
    pub max_payload_bytes: usize,
    /// How much of a too-large payload is kept in the quarantine row.
    pub quarantine_payload_keep_bytes: usize,
    /// Messages decoded before a batch is handed to the writer.
    pub batch_messages: usize,
    /// Longest time a decoded message waits before its batch is handed over.
    pub batch_max_delay_ms: u64,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_payload_bytes: 1024 * 1024,
            quarantine_payload_keep_bytes: 64 * 1024,
            batch_messages: 4096,
            batch_max_delay_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// Earliest plausible event time (RFC 3339). Older rows go to quarantine.
    pub min_event_time: String,
    /// How far ahead of the receive time an event time may be, in seconds.
    pub max_future_skew_s: f64,
    /// How far behind the receive time an event time may be, in seconds. Unset: any age back
    /// to `min_event_time` (historical replays).
    pub max_past_skew_s: Option<f64>,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            min_event_time: "2010-01-01T00:00:00Z".into(),
            max_future_skew_s: 600.0,
            max_past_skew_s: None,
        }
    }
}

/// Timestamp resolution of `event_ts` and `recv_ts` in the Parquet files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    Ms,
    Us,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Commit a file when it holds this many rows.
    pub max_rows: usize,
    /// Commit a file when its buffered Arrow data reaches this many bytes.
    pub max_bytes: usize,
    /// Commit a file this many seconds after its first row.
    pub max_age_s: f64,
    /// Most partitions open at once; past it the oldest is committed.
    pub max_open_files: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level (1 is the measured sweet spot).
    pub zstd_level: i32,
    pub timestamp_unit: TimestampUnit,
    /// Batches queued between decoder and writer.
    pub channel_capacity: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_rows: 1_000_000,
            max_bytes: 128 * 1024 * 1024,
            max_age_s: 300.0,
            max_open_files: 64,
            row_group_rows: 128 * 1024,
            zstd_level: 1,
            timestamp_unit: TimestampUnit::Us,
            channel_capacity: 64,
        }
    }
}

/// Object store output. With `url` set, committed files are uploaded to an S3-compatible
/// bucket instead of being renamed into `data_dir` (see `sink::store`). Credentials, region and
/// endpoint also come from the standard `AWS_*` environment variables; these keys win.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`. Unset: files go to `data_dir` on local disk.
    pub url: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, OSS-style). Unset: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    /// Never logged or serialized.
    #[serde(skip_serializing)]
    pub secret_access_key: Option<Secret>,
    /// Allow an `http://` endpoint (a store on the same host or a trusted network).
    pub allow_http: bool,
    /// `bucket.endpoint/key` requests instead of `endpoint/bucket/key`.
    pub virtual_hosted_style: bool,
    /// Files at least this big are uploaded in parts of this size (S3 wants 5 MiB or more).
    pub multipart_part_bytes: usize,
    /// Timeout of one request, in seconds.
    pub timeout_s: f64,
    /// Retries of one request before the commit counts as failed (it is then retried with
    /// backoff, rows kept in the WAL).
    pub max_retries: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
            multipart_part_bytes: 8 * 1024 * 1024,
            timeout_s: 30.0,
            max_retries: 3,
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        crate::sink::store::parse_url(url)
            .map_err(|e| ConfigError::Invalid(format!("store.url {url:?} {e}")))?;
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "store.endpoint {e:?} must start with http:// or https://"
                )));
            }
            if e.starts_with("http://") && !self.allow_http {
                return Err(ConfigError::Invalid(format!(
                    "store.endpoint {e:?} is plain HTTP: set store.allow_http = true to send \
                     data and signed requests unencrypted"
                )));
            }
        }
        if self.multipart_part_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid(
                "store.multipart_part_bytes must be at least 64 KiB (S3 itself needs 5 MiB)".into(),
            ));
        }
        if self.timeout_s.is_nan() || self.timeout_s <= 0.0 {
            return Err(ConfigError::Invalid(
                "store.timeout_s must be above 0".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Reads a TOML file. A missing `--config` is not an error: defaults apply.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !crate::route::is_safe_identifier(&self.collector_id) {
            return Err(ConfigError::Invalid(format!(
                "collector_id {:?} must be 1-64 characters of A-Z a-z 0-9 _ . - and start with a letter or digit",
                self.collector_id
            )));
        }
        if self.mqtt.qos > 1 {
            return Err(ConfigError::Invalid("mqtt.qos must be 0 or 1".into()));
        }
        if self.mqtt.max_packet_bytes < 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "mqtt.max_packet_bytes must be at least 1 MiB".into(),
            ));
        }
        self.store.validate()?;
        if self.routing.separator.is_empty() {
            return Err(ConfigError::Invalid(
                "routing.separator must not be empty".into(),
            ));
        }
        if self.writer.max_rows == 0 || self.writer.row_group_rows == 0 {
            return Err(ConfigError::Invalid(
                "writer.max_rows and writer.row_group_rows must be positive".into(),
            ));
        }
        if !(1..=22).contains(&self.writer.zstd_level) {
            return Err(ConfigError::Invalid(
                "writer.zstd_level must be 1..=22".into(),
            ));
        }
        if self.wal.max_bytes < 2 * self.wal.segment_bytes {
            return Err(ConfigError::Invalid(
                "wal.max_bytes must be at least twice wal.segment_bytes (the active segment is never deleted)".into(),
            ));
        }
        if self.decode.batch_messages == 0 {
            return Err(ConfigError::Invalid(
                "decode.batch_messages must be positive".into(),
            ));
        }
        crate::decode::time::parse_rfc3339_us(&self.time.min_event_time).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "time.min_event_time {:?} is not an RFC 3339 time",
                self.time.min_event_time
            ))
        })?;
        match &self.mqtt.broker {
            Some(url) => {
                let broker = BrokerUrl::parse(url)?;
                if !broker.tls && self.mqtt.tls.any_set() {
                    return Err(ConfigError::Invalid(format!(
                        "mqtt.tls is set but mqtt.broker {url:?} is plaintext: use mqtts://{}:<port>",
                        broker.host
                    )));
                }
            }
            None if self.mqtt.tls.any_set() => {
                return Err(ConfigError::Invalid(
                    "mqtt.tls is set but there is no mqtt.broker (the embedded broker is plaintext): set mqtt.broker = \"mqtts://host:port\"".into(),
                ));
            }
            None => {
                // A packet the broker takes but our client refuses would put the collector
                // into a reconnect loop.
                let packet = self
                    .embedded
                    .max_payload_bytes
                    .saturating_add(crate::source::embedded::PACKET_OVERHEAD);
                if self.mqtt.max_packet_bytes < packet {
                    return Err(ConfigError::Invalid(format!(
                        "mqtt.max_packet_bytes ({}) must be at least embedded.max_payload_bytes + {} ({packet}): the collector must take every packet the embedded broker accepts",
                        self.mqtt.max_packet_bytes,
                        crate::source::embedded::PACKET_OVERHEAD
                    )));
                }
                if self.embedded.max_connections == 0 {
                    return Err(ConfigError::Invalid(
                        "embedded.max_connections must be positive".into(),
                    ));
                }
            }
        }
        if self.mqtt.tls.cert_file.is_some() != self.mqtt.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "mqtt.tls.cert_file and mqtt.tls.key_file go together: set both for a client certificate, or neither".into(),
            ));
        }
        if self
            .mqtt
            .tls
            .server_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(ConfigError::Invalid(
                "mqtt.tls.server_name must not be empty (leave it unset to check the URL's host)"
                    .into(),
            ));
        }
        if let Some(group) = &self.mqtt.shared_group
            && !crate::route::is_safe_identifier(group)
        {
            return Err(ConfigError::Invalid(format!(
                "mqtt.shared_group {group:?} must be 1-64 characters of A-Z a-z 0-9 _ . - (no / + #)"
            )));
        }
        if self.http.enabled {
            match self.http.token.as_ref().map(Secret::expose) {
                Some(t) if t.len() < 16 || t.chars().any(char::is_whitespace) => {
                    return Err(ConfigError::Invalid(
                        "http.token must be at least 16 characters without whitespace".into(),
                    ));
                }
                None if !self.http.listen.ip().is_loopback() => {
                    return Err(ConfigError::Invalid(format!(
                        "http.listen {} is not a loopback address: set http.token (or V2X_HTTP_TOKEN) so the dashboard, metrics and status need it",
                        self.http.listen
                    )));
                }
                _ => {}
            }
            if self.http.tls.cert_file.is_some() != self.http.tls.key_file.is_some() {
                return Err(ConfigError::Invalid(
                    "http.tls.cert_file and http.tls.key_file go together: set both for HTTPS, or neither".into(),
                ));
            }
            if self.http.silent_after_s.is_nan() || self.http.silent_after_s <= 0.0 {
                return Err(ConfigError::Invalid(
                    "http.silent_after_s must be positive".into(),
                ));
            }
        }
        Ok(())
    }

    /// The MQTT client id: fixed, so the broker keeps our persistent session across restarts.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("v2x-collector-{}", self.collector_id))
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://` (or `ssl://`): TLS.
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` (port 1883) or `mqtts://host[:port]` (TLS, port 8883).
    /// `tcp://` and `ssl://` are accepted as their synonyms.
    pub fn parse(url: &str) -> Result<BrokerUrl, ConfigError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ssl://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("tcp://") {
            (false, rest)
        } else {
            return Err(ConfigError::Invalid(format!(
                "broker URL {url:?} must look like mqtt://host:port or mqtts://host:port"
            )));
        };
        let (host, port) = split_host_port(url, rest, if tls { 8883 } else { 1883 })?;
        Ok(BrokerUrl { host, port, tls })
    }
}

/// Parses `mqtt://host:port` (port defaults to 1883) or `mqtts://host:port` (8883) into host
/// and port; [`BrokerUrl::parse`] also says whether it is TLS.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), ConfigError> {
    BrokerUrl::parse(url).map(|b| (b.host, b.port))
}

fn split_host_port(url: &str, rest: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port.parse::<u16>().map_err(|_| {
                ConfigError::Invalid(format!("broker URL {url:?} has an invalid port"))
            })?;
            (host, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "broker URL {url:?} has no host"
        )));
    }
    Ok((host.to_string(), port))
}

fn default_collector_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if id.is_empty() || !id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        "collector".into()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.embedded.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9180");
        assert!(c.mqtt.max_packet_bytes >= 1024 * 1024);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Config>("datadir = 'x'").is_err());
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1999").unwrap(),
            ("127.0.0.1".into(), 1999)
        );
        assert_eq!(
            parse_broker_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://:12").is_err());
        assert_eq!(
            BrokerUrl::parse("mqtts://broker.example").unwrap(),
            BrokerUrl {
                host: "broker.example".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://[::1]:18883/").unwrap(),
            BrokerUrl {
                host: "::1".into(),
                port: 18883,
                tls: true
            }
        );
        assert!(!BrokerUrl::parse("mqtt://b:1").unwrap().tls);
    }

    fn with_broker(url: Option<&str>, tls: &str) -> Result<(), ConfigError> {
        let broker = url.map(|u| format!("broker = {u:?}\n")).unwrap_or_default();
        let c: Config = toml::from_str(&format!("[mqtt]\n{broker}[mqtt.tls]\n{tls}")).unwrap();
        c.validate()
    }

    #[test]
    fn tls_settings_need_a_tls_url_and_come_in_pairs() {
        with_broker(
            Some("mqtts://b"),
            "ca_file = 'ca.pem'\ncert_file = 'c.pem'\nkey_file = 'k.pem'\n",
        )
        .unwrap();
        with_broker(Some("mqtts://10.0.0.1"), "server_name = 'broker.example'\n").unwrap();
        with_broker(Some("mqtt://b"), "").unwrap();
        let err = with_broker(Some("mqtt://b:1883"), "ca_file = 'ca.pem'\n").unwrap_err();
        assert!(err.to_string().contains("use mqtts://b:<port>"), "{err}");
        let err = with_broker(None, "ca_file = 'ca.pem'\n").unwrap_err();
        assert!(
            err.to_string().contains("embedded broker is plaintext"),
            "{err}"
        );
        let err = with_broker(Some("mqtts://b"), "cert_file = 'c.pem'\n").unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err = with_broker(Some("mqtts://b"), "key_file = 'k.pem'\n").unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err = with_broker(Some("mqtts://b"), "server_name = ' '\n").unwrap_err();
        assert!(err.to_string().contains("server_name"), "{err}");
        // There is no switch to turn verification off.
        assert!(toml::from_str::<Config>("[mqtt.tls]\ninsecure = true\n").is_err());
    }

    #[test]
    fn the_client_takes_every_packet_the_embedded_broker_accepts() {
        let c: Config = toml::from_str("[embedded]\nmax_payload_bytes = 8388608\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("mqtt.max_packet_bytes"), "{err}");
        let c: Config = toml::from_str(
            "[embedded]\nmax_payload_bytes = 8388608\n[mqtt]\nmax_packet_bytes = 9000000\n",
        )
        .unwrap();
        c.validate().unwrap();
        // An external broker's limits are its own.
        let c: Config = toml::from_str(
            "[embedded]\nmax_payload_bytes = 8388608\n[mqtt]\nbroker = 'mqtt://b'\n",
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn https_needs_both_files_and_secrets_stay_out_of_debug_output() {
        let c: Config = toml::from_str("[http.tls]\ncert_file = 'c.pem'\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("http.tls.key_file")
        );
        let c: Config = toml::from_str(
            "[http]\ntoken = 'secret-token-0123456789'\n[mqtt]\nusername = 'u'\npassword = 'hunter2-password'\n",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-token-0123456789"), "{shown}");
        assert!(!shown.contains("hunter2-password"), "{shown}");
        let serialized = toml::to_string(&c).unwrap();
        assert!(!serialized.contains("hunter2-password"), "{serialized}");
    }

    #[test]
    fn store_settings_are_checked_and_the_secret_never_shown() {
        let store = |extra: &str| -> Result<(), ConfigError> {
            let c: Config = toml::from_str(&format!(
                "[store]\nurl = \"s3://lake/zone1\"\nsecret_access_key = \"sekrit-value-42\"\n{extra}"
            ))
            .unwrap();
            let shown = format!("{c:?}");
            assert!(!shown.contains("sekrit-value-42"), "{shown}");
            assert!(!toml::to_string(&c).unwrap().contains("sekrit-value-42"));
            c.validate()
        };
        store("").unwrap();
        store("endpoint = \"https://minio.zone:9000\"").unwrap();
        store("endpoint = \"http://127.0.0.1:9000\"\nallow_http = true").unwrap();
        let err = store("endpoint = \"http://127.0.0.1:9000\"").unwrap_err();
        assert!(err.to_string().contains("store.allow_http"), "{err}");
        assert!(store("endpoint = \"minio:9000\"").is_err());
        assert!(store("multipart_part_bytes = 1024").is_err());
        assert!(store("timeout_s = 0").is_err());
        let bad_url: Config = toml::from_str("[store]\nurl = \"gs://lake\"").unwrap();
        assert!(bad_url.validate().is_err());
    }
}
