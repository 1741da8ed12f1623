//! `run`: wires source -> decode -> sink and shuts them down in order.
//!
//! Threads and tasks:
//! - the MQTT poll task and the ack task (tokio, in `source::mqtt`);
//! - the decoder thread: routes and decodes messages into Arrow builders, hands batches to the
//!   writer every `decode.batch_messages` messages or `decode.batch_max_delay_ms`, then releases
//!   the ack tokens of those messages, in arrival order;
//! - the writer thread: holds open files, rotates and commits them.
//!
//! Shutdown: stop accepting new publishes (they stay unacknowledged at the broker), let the
//! decoder drain what was received, send its acks, disconnect, then commit every open file.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError, Protocol};
use crate::decode::{Batch, DecodeSettings, Decoder, Outcome, TimeWindow};
use crate::route::{Router, builtin_routes};
use crate::schema::{self, SchemaError};
use crate::sink::{FileSettings, PartitionWriter, SinkError, SinkStats, WriterSettings};
use crate::source::embedded::{self, EmbeddedError};
use crate::source::mqtt::{self, SourceSettings};
use crate::source::{AckSender, AckToken, Message};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("routing: {0}")]
    Route(#[from] crate::route::TemplateError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("{0} open files could not be committed at shutdown (see the errors above)")]
    Uncommitted(usize),
    #[error("a pipeline thread failed: {0}")]
    Thread(String),
}

impl RunError {
    /// Exit code: 2 for configuration problems, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) | RunError::Schema(_) | RunError::Route(_) => 2,
            RunError::Embedded(EmbeddedError::Bind { .. }) => 2,
            _ => 1,
        }
    }
}

/// Counters shared by the stages, for the stats line and for tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub decoded_messages: AtomicU64,
    pub rows: AtomicU64,
    pub quarantined: AtomicU64,
    pub files_committed: AtomicU64,
    pub rows_committed: AtomicU64,
}

/// What a finished run did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub received: u64,
    pub acked: u64,
    pub decoded_messages: u64,
    pub rows: u64,
    pub quarantined: u64,
    pub sink: SinkStats,
}

enum WriterMsg {
    Batch(Batch),
    Close,
}

/// Builds the decoder exactly as `run` does (also used by `schema check`).
pub fn build_decoder(config: &Config) -> Result<Decoder, RunError> {
    let schemas = schema::load_all(config.schema_dir.as_deref())?;
    let mut templates = config.routing.routes.clone();
    if config.routing.builtin_routes {
        templates.extend(builtin_routes());
    }
    let router = Router::new(&config.routing.separator, &templates)?;
    let window = TimeWindow::from_config(&config.time).ok_or_else(|| {
        ConfigError::Invalid("time.min_event_time is not an RFC 3339 time".into())
    })?;
    let settings = DecodeSettings {
        max_payload_bytes: config.decode.max_payload_bytes,
        quarantine_keep_bytes: config.decode.quarantine_payload_keep_bytes,
        window,
        unit: config.writer.timestamp_unit,
    };
    Ok(Decoder::new(router, schemas, settings)?)
}

/// Runs the collector until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, RunError> {
    config.validate()?;
    let decoder = build_decoder(&config)?;
    let kinds: Vec<_> = decoder.kinds().iter().map(|k| k.schema.clone()).collect();
    let writer = PartitionWriter::new(
        WriterSettings {
            data_dir: config.data_dir.clone(),
            collector_id: config.collector_id.clone(),
            max_rows: config.writer.max_rows,
            max_bytes: config.writer.max_bytes,
            max_age: Duration::from_secs_f64(config.writer.max_age_s.max(0.001)),
            max_open_files: config.writer.max_open_files.max(1),
            file: FileSettings {
                row_group_rows: config.writer.row_group_rows,
                zstd_level: config.writer.zstd_level,
            },
        },
        &kinds,
    )?;

    let (host, port, protocol) = match &config.mqtt.broker {
        Some(url) => {
            let (host, port) = crate::config::parse_broker_url(url)?;
            (host, port, config.mqtt.protocol)
        }
        None => {
            let addr = embedded::start(&config.embedded)?;
            // rumqttd's MQTT 5 support is partial; the collector talks 3.1.1 to it.
            let host = if addr.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                addr.ip()
            };
            (host.to_string(), addr.port(), Protocol::V311)
        }
    };
    let filters = if config.mqtt.subscriptions.is_empty() {
        decoder.router().subscription_filters()
    } else {
        config.mqtt.subscriptions.clone()
    };
    let source_settings = SourceSettings {
        host,
        port,
        protocol,
        client_id: config.client_id(),
        keep_alive: Duration::from_secs(config.mqtt.keep_alive_s.max(1)),
        session_expiry_s: config.mqtt.session_expiry_s,
        max_packet_bytes: config.mqtt.max_packet_bytes,
        receive_maximum: config.mqtt.receive_maximum.max(1),
        filters,
        qos: config.mqtt.qos,
        reconnect_min: Duration::from_millis(config.mqtt.reconnect_min_ms.max(1)),
        reconnect_max: Duration::from_millis(config.mqtt.reconnect_max_ms.max(1)),
        username: config.mqtt.username.clone(),
        password: config.mqtt.password.clone(),
    };
    tracing::info!(
        broker = %format!("{}:{}", source_settings.host, source_settings.port),
        protocol = ?source_settings.protocol,
        client_id = %source_settings.client_id,
        data = %config.data_dir.display(),
        "starting collector"
    );

    let stats = Arc::new(Stats::default());
    let draining = Arc::new(AtomicBool::new(false));
    let (msg_tx, msg_rx) = std::sync::mpsc::channel::<Message>();
    let source = mqtt::spawn(source_settings, msg_tx);

    let (writer_tx, writer_rx) =
        std::sync::mpsc::sync_channel::<WriterMsg>(config.writer.channel_capacity.max(1));
    let writer_stats = stats.clone();
    let writer_thread = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer_loop(writer, writer_rx, writer_stats))
        .map_err(|e| RunError::Thread(e.to_string()))?;

    let decoder_thread = {
        let acks = source.acks.clone();
        let stats = stats.clone();
        let draining = draining.clone();
        let writer_tx = writer_tx.clone();
        let batch_messages = config.decode.batch_messages;
        let max_delay = Duration::from_millis(config.decode.batch_max_delay_ms.max(1));
        std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || {
                decode_loop(
                    decoder,
                    msg_rx,
                    writer_tx,
                    acks,
                    stats,
                    draining,
                    batch_messages,
                    max_delay,
                )
            })
            .map_err(|e| RunError::Thread(e.to_string()))?
    };
    drop(writer_tx);

    // Periodic stats line until shutdown.
    let interval = Duration::from_secs_f64(config.stats_interval_s.max(0.1));
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => log_stats(&source.state, &stats),
        }
    }

    tracing::info!("shutting down: draining received messages and committing open files");
    source.stop_accepting();
    draining.store(true, Ordering::SeqCst);
    let state = source.state.clone();
    let decoder_result = tokio::task::spawn_blocking(move || decoder_thread.join())
        .await
        .map_err(|e| RunError::Thread(e.to_string()))?;
    source.shutdown().await;
    let writer_result = tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| RunError::Thread(e.to_string()))?;
    decoder_result.map_err(|_| RunError::Thread("decoder thread panicked".into()))?;
    let (sink, failed) =
        writer_result.map_err(|_| RunError::Thread("writer thread panicked".into()))?;
    log_stats(&state, &stats);
    if failed > 0 {
        return Err(RunError::Uncommitted(failed));
    }
    Ok(Summary {
        received: state.received.load(Ordering::SeqCst),
        acked: state.acked.load(Ordering::SeqCst),
        decoded_messages: stats.decoded_messages.load(Ordering::SeqCst),
        rows: stats.rows.load(Ordering::SeqCst),
        quarantined: stats.quarantined.load(Ordering::SeqCst),
        sink,
    })
}

fn log_stats(source: &mqtt::SourceState, stats: &Stats) {
    tracing::info!(
        connected = source.connected.load(Ordering::Relaxed),
        received = source.received.load(Ordering::Relaxed),
        acked = source.acked.load(Ordering::Relaxed),
        decoded = stats.decoded_messages.load(Ordering::Relaxed),
        rows = stats.rows.load(Ordering::Relaxed),
        quarantined = stats.quarantined.load(Ordering::Relaxed),
        files_committed = stats.files_committed.load(Ordering::Relaxed),
        rows_committed = stats.rows_committed.load(Ordering::Relaxed),
        "ingest stats"
    );
}

#[allow(clippy::too_many_arguments)]
fn decode_loop(
    mut decoder: Decoder,
    rx: Receiver<Message>,
    writer: SyncSender<WriterMsg>,
    acks: AckSender,
    stats: Arc<Stats>,
    draining: Arc<AtomicBool>,
    batch_messages: usize,
    max_delay: Duration,
) {
    let mut tokens: Vec<AckToken> = Vec::with_capacity(batch_messages);
    let mut oldest: Option<Instant> = None;
    let handle = |m: Message, tokens: &mut Vec<AckToken>, decoder: &mut Decoder| {
        match decoder.decode(&m.topic, &m.payload, m.recv_us) {
            Outcome::Filed { rows, .. } => {
                stats.decoded_messages.fetch_add(1, Ordering::Relaxed);
                stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
            }
            Outcome::Quarantined(_) => {
                stats.quarantined.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokens.push(m.ack);
    };
    loop {
        let wait = match oldest {
            Some(t) => max_delay.saturating_sub(t.elapsed()),
            None => max_delay,
        };
        let mut channel_empty = false;
        let mut disconnected = false;
        match rx.recv_timeout(wait) {
            Ok(m) => {
                oldest.get_or_insert_with(Instant::now);
                handle(m, &mut tokens, &mut decoder);
                while tokens.len() < batch_messages {
                    match rx.try_recv() {
                        Ok(m) => handle(m, &mut tokens, &mut decoder),
                        Err(TryRecvError::Empty) => {
                            channel_empty = true;
                            break;
                        }
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => channel_empty = true,
            Err(RecvTimeoutError::Disconnected) => disconnected = true,
        }
        let due = oldest.is_some_and(|t| t.elapsed() >= max_delay);
        let stopping = disconnected || (draining.load(Ordering::SeqCst) && channel_empty);
        // Flushing whenever the channel runs dry keeps acks prompt under light load (the
        // broker's in-flight window may be as small as 20); under load batches fill up.
        if !tokens.is_empty()
            && (tokens.len() >= batch_messages || due || stopping || channel_empty)
        {
            for b in decoder.take_batches() {
                if writer.send(WriterMsg::Batch(b)).is_err() {
                    tracing::error!("writer stopped; messages left unacknowledged");
                    return;
                }
            }
            // Rows are with the writer: release the tokens, in arrival order.
            let _ = acks.send(std::mem::take(&mut tokens));
            oldest = None;
        }
        if stopping {
            let _ = writer.send(WriterMsg::Close);
            return;
        }
    }
}

fn writer_loop(
    mut writer: PartitionWriter,
    rx: Receiver<WriterMsg>,
    stats: Arc<Stats>,
) -> (SinkStats, usize) {
    let publish = |w: &PartitionWriter| {
        let s = w.stats();
        stats
            .files_committed
            .store(s.files_committed, Ordering::Relaxed);
        stats
            .rows_committed
            .store(s.rows_committed, Ordering::Relaxed);
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(WriterMsg::Batch(b)) => writer.push(b),
            Ok(WriterMsg::Close) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => writer.tick(),
        }
        publish(&writer);
    }
    let failed = writer.close();
    publish(&writer);
    (writer.stats(), failed)
}
