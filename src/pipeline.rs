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

use std::collections::{HashSet, VecDeque};
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
use crate::wal::{Wal, WalError};

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
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{0} open files could not be committed at shutdown (see the errors above)")]
    Uncommitted(usize),
    #[error("a pipeline thread failed: {0}")]
    Thread(String),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

impl RunError {
    /// Exit code: 2 for configuration problems, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) | RunError::Schema(_) | RunError::Route(_) => 2,
            RunError::Embedded(EmbeddedError::Bind { .. }) | RunError::Http(_) => 2,
            _ => 1,
        }
    }
}

/// Counters shared by the stages, for the stats line and for tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub decoded_messages: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub acked_groups: AtomicU64,
    pub recovered_records: AtomicU64,
    /// Messages missed upstream, from message-counter jumps.
    pub gap_messages: AtomicU64,
    /// The WAL cannot be written: nothing is acknowledged.
    pub unhealthy: AtomicBool,
    /// The WAL is at its bound: nothing is acknowledged until files commit.
    pub wal_full: AtomicBool,
    /// A commit failed (disk, object store) and is being retried with backoff.
    pub commit_failing: AtomicBool,
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
    /// Every WAL record below this LSN has been handed over.
    Progress(u64),
    /// Commit every open file (the WAL is at its bound).
    CommitAll,
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
    // TLS files are read now, so a bad one is a configuration error before anything starts.
    let mqtt_tls = crate::source::tls::for_config(&config.mqtt).map_err(ConfigError::from)?;
    let http_tls = crate::http::tls::server_config(&config.http.tls).map_err(ConfigError::from)?;
    // Before any metric handle exists (the decoder registers its counters when built).
    let prometheus = config.http.enabled.then(crate::http::prometheus);
    let mut decoder = build_decoder(&config)?;
    let kinds: Vec<_> = decoder.kinds().iter().map(|k| k.schema.clone()).collect();
    // A `compact` killed between its directory swap and its clean-up leaves files the writer
    // may need to rename into: finish it first (one stat when there is nothing to do).
    match crate::dataset::compact::recover(&config.data_dir) {
        Ok(done) if !done.is_empty() => {
            tracing::info!(
                partitions = done.len(),
                "completed an interrupted compaction"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not check for an interrupted compaction"),
    }
    // Likewise a `reprocess` killed mid-set: finish it, so no set stays partly visible.
    match crate::dataset::reprocess::recover(&config.data_dir) {
        Ok(done) if !done.is_empty() => {
            tracing::info!(sets = done.len(), "completed an interrupted reprocess");
        }
        Ok(_) => {}
        // A reprocess running now recovers by itself.
        Err(crate::dataset::reprocess::ReprocessError::Busy { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "could not check for an interrupted reprocess"),
    }
    let mut writer = PartitionWriter::new(
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
            wal_dir: Some(config.wal_dir.clone()),
            store: match &config.store.url {
                // Building the client makes no request: its errors are settings.
                Some(_) => Some(Arc::new(
                    crate::sink::store::ObjectTarget::new(&config.store)
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?,
                )),
                None => None,
            },
        },
        &kinds,
    )?;

    // Replay what the WAL holds beyond the checkpoint before taking new messages.
    let stats = Arc::new(Stats::default());
    stats
        .commit_failing
        .store(writer.failing(), Ordering::Relaxed);
    let mut recent = RecentIds::new(config.wal.dedup_window);
    let next_lsn = recover(
        &mut decoder,
        &mut writer,
        &config.wal_dir,
        &mut recent,
        &stats,
    )?;
    let mut wal = Wal::open(&config.wal_dir, next_lsn, config.wal.segment_bytes)?;
    wal.set_fsync(config.wal.fsync);
    if !config.wal.fsync {
        tracing::warn!("wal.fsync = false: acknowledged messages can be lost on power failure");
    }

    let (host, port, protocol) = match &config.mqtt.broker {
        Some(url) => {
            let (host, port) = crate::config::parse_broker_url(url)?;
            (host, port, config.mqtt.protocol)
        }
        None => {
            let broker = embedded::start(&config.embedded).await?;
            // Devices speak 3.1.1 or 5 on `embedded.listen`; the collector itself uses
            // rumqttd's private 3.1.1 port directly (no splice in between).
            let addr = broker.collector_addr;
            (addr.ip().to_string(), addr.port(), Protocol::V311)
        }
    };
    let mut filters = if config.mqtt.subscriptions.is_empty() {
        decoder.router().subscription_filters()
    } else {
        config.mqtt.subscriptions.clone()
    };
    if let Some(group) = &config.mqtt.shared_group {
        filters = filters
            .into_iter()
            .map(|f| format!("$share/{group}/{f}"))
            .collect();
    }
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
        tls: mqtt_tls,
    };
    tracing::info!(
        broker = %format!("{}:{}", source_settings.host, source_settings.port),
        tls = source_settings.tls.is_some(),
        protocol = ?source_settings.protocol,
        client_id = %source_settings.client_id,
        data = %config.data_dir.display(),
        "starting collector"
    );

    let draining = Arc::new(AtomicBool::new(false));
    let (msg_tx, msg_rx) = std::sync::mpsc::channel::<Message>();
    let source = mqtt::spawn(source_settings, msg_tx);

    let published = crate::status::Published::default();
    let http = match prometheus {
        Some(prometheus) => {
            let shared = crate::http::Shared::new(crate::http::StatusInputs {
                collector_id: config.collector_id.clone(),
                kinds: kinds.iter().map(|k| k.kind.clone()).collect(),
                silent_after_s: config.http.silent_after_s,
                data_dir: config.data_dir.clone(),
                wal_dir: config.wal_dir.clone(),
                wal_max_bytes: config.wal.max_bytes,
                stats: stats.clone(),
                source: source.state.clone(),
                activity: published.clone(),
                prometheus,
            });
            let token = config.http.token.as_ref().map(|t| t.expose().to_string());
            let server = crate::http::Server::start_with_tls(
                config.http.listen,
                token,
                http_tls,
                Arc::new(shared),
            );
            match server.await {
                Ok(server) => Some(server),
                Err(e) => {
                    source.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };

    let (writer_tx, writer_rx) =
        std::sync::mpsc::sync_channel::<WriterMsg>(config.writer.channel_capacity.max(1));
    let writer_stats = stats.clone();
    let writer_thread = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer_loop(writer, writer_rx, writer_stats))
        .map_err(|e| RunError::Thread(e.to_string()))?;

    let decoder_thread = {
        let ingest = Ingest {
            decoder,
            wal,
            wal_dir: config.wal_dir.clone(),
            wal_segment_bytes: config.wal.segment_bytes,
            wal_max_bytes: config.wal.max_bytes,
            wal_bytes: crate::wal::disk_bytes(&config.wal_dir),
            wal_fsync: config.wal.fsync,
            wal_failed: None,
            to_truncate: None,
            recent,
            writer: writer_tx.clone(),
            acks: source.acks.clone(),
            stats: stats.clone(),
            draining: draining.clone(),
            tokens: Vec::with_capacity(config.decode.batch_messages),
            pending: Vec::with_capacity(config.decode.batch_messages),
            oldest: None,
            activity: crate::status::Publisher::new(published, Duration::from_millis(500)),
        };
        let batch_messages = config.decode.batch_messages;
        let max_delay = Duration::from_millis(config.decode.batch_max_delay_ms.max(1));
        std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || ingest.run(msg_rx, batch_messages, max_delay))
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
    if let Some(server) = http {
        server.shutdown().await;
    }
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
        redelivered = source.redelivered.load(Ordering::Relaxed),
        acked = source.acked.load(Ordering::Relaxed),
        decoded = stats.decoded_messages.load(Ordering::Relaxed),
        rows = stats.rows.load(Ordering::Relaxed),
        quarantined = stats.quarantined.load(Ordering::Relaxed),
        dedup_hits = stats.dedup_hits.load(Ordering::Relaxed),
        gap_messages = stats.gap_messages.load(Ordering::Relaxed),
        recovered = stats.recovered_records.load(Ordering::Relaxed),
        files_committed = stats.files_committed.load(Ordering::Relaxed),
        rows_committed = stats.rows_committed.load(Ordering::Relaxed),
        "ingest stats"
    );
}

/// Replays the WAL from the checkpoint into the writer. Returns the next LSN to log.
///
/// The writer has already completed any interrupted commit set, so every record at or above
/// the checkpoint is in no committed file: all of them are replayed, except broker
/// redeliveries of a message logged before (DUP flag set and the same `msg_uid`).
fn recover(
    decoder: &mut Decoder,
    writer: &mut PartitionWriter,
    wal_dir: &std::path::Path,
    recent: &mut RecentIds,
    stats: &Stats,
) -> Result<u64, RunError> {
    // Past the checkpoint when a commit set is still to be published (object store down).
    let checkpoint = writer.replay_from();
    let segments = crate::wal::segments(wal_dir)?;
    let started = Instant::now();
    let mut next_lsn = checkpoint;
    let (mut replayed, mut duplicates, mut skipped_bytes) = (0u64, 0u64, 0u64);
    let mut in_chunk = 0usize;
    for (_, path) in &segments {
        let scan = crate::wal::read_segment(path)?;
        if let Some(damage) = &scan.damage {
            tracing::warn!(segment = %path.display(), %damage, skipped_bytes = scan.skipped_bytes, "WAL segment damaged: kept its intact prefix");
            metrics::counter!("v2x_wal_recovery_skipped_bytes_total").increment(scan.skipped_bytes);
        }
        skipped_bytes += scan.skipped_bytes;
        for r in scan.records {
            next_lsn = next_lsn.max(r.lsn + 1);
            let raw = crate::decode::Raw::new(&r.topic, &r.payload, r.recv_us);
            let redelivery = r.dup && recent.contains(raw.uid);
            recent.insert(raw.uid);
            if r.lsn < checkpoint {
                continue;
            }
            if redelivery {
                duplicates += 1;
                continue;
            }
            decoder.decode_raw(&raw);
            replayed += 1;
            in_chunk += 1;
            if in_chunk >= 4096 {
                for b in decoder.take_batches() {
                    writer.push(b);
                }
                // Every record up to this one is handed over: a boundary where the writer
                // may commit, so a long replay does not pile up in memory.
                writer.progress(r.lsn + 1);
                in_chunk = 0;
            }
        }
    }
    for b in decoder.take_batches() {
        writer.push(b);
    }
    writer.progress(next_lsn);
    stats.recovered_records.store(replayed, Ordering::SeqCst);
    metrics::counter!("v2x_wal_recovered_records_total").increment(replayed);
    if !segments.is_empty() {
        tracing::info!(
            checkpoint,
            replayed,
            duplicates,
            skipped_bytes,
            next_lsn,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "write-ahead log recovered"
        );
    }
    Ok(next_lsn)
}

/// Message ids seen recently, to drop broker redeliveries of messages already logged.
pub struct RecentIds {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            set: HashSet::with_capacity(capacity.min(1 << 20)),
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, id: u128) -> bool {
        self.set.contains(&id)
    }

    pub fn insert(&mut self, id: u128) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// A logged message of the current group, kept until its fsync succeeds so it can be
/// written again to a fresh segment after a write error.
struct Pending {
    /// Where it was logged, if the append succeeded.
    lsn: Option<u64>,
    recv_us: i64,
    qos: u8,
    dup: bool,
    topic: String,
    payload: bytes::Bytes,
}

/// The decoder thread: log, decode, group commit, hand over, acknowledge.
struct Ingest {
    decoder: Decoder,
    wal: Wal,
    wal_dir: std::path::PathBuf,
    wal_segment_bytes: u64,
    wal_max_bytes: u64,
    /// Bytes of the log on disk, as of the last look plus what was appended since.
    wal_bytes: u64,
    wal_fsync: bool,
    wal_failed: Option<String>,
    /// A failed segment still to be cut back to its fsynced length.
    to_truncate: Option<(std::path::PathBuf, u64)>,
    recent: RecentIds,
    writer: SyncSender<WriterMsg>,
    acks: AckSender,
    stats: Arc<Stats>,
    draining: Arc<AtomicBool>,
    tokens: Vec<AckToken>,
    pending: Vec<Pending>,
    oldest: Option<Instant>,
    activity: crate::status::Publisher,
}

impl Ingest {
    fn handle(&mut self, m: Message) {
        let raw = crate::decode::Raw::new(&m.topic, &m.payload, m.recv_us);
        let uid = raw.uid;
        // Only a message the broker marks as redelivered can be a copy of one already logged:
        // two identical payloads published twice are two messages (real captures have them).
        if m.dup && self.recent.contains(uid) {
            // A redelivery of a message already logged: acknowledge it with this group.
            self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("v2x_dedup_hits_total").increment(1);
            self.tokens.push(m.ack);
            return;
        }
        self.oldest.get_or_insert_with(Instant::now);
        let mut lsn = None;
        if self.wal_failed.is_none() {
            match self
                .wal
                .append(m.recv_us, m.ack.qos, m.dup, &m.topic, &m.payload)
            {
                Ok(l) => {
                    lsn = Some(l);
                    self.wal_bytes += (m.topic.len() + m.payload.len() + 27) as u64;
                }
                Err(e) => self.wal_failed = Some(e.to_string()),
            }
        }
        match self.decoder.decode_raw(&raw) {
            Outcome::Filed { rows, .. } => {
                self.stats.decoded_messages.fetch_add(1, Ordering::Relaxed);
                self.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
            }
            Outcome::Quarantined(_) => {
                self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.recent.insert(uid);
        self.stats
            .gap_messages
            .store(self.decoder.sequence_gaps().total_missed, Ordering::Relaxed);
        self.tokens.push(m.ack);
        self.pending.push(Pending {
            lsn,
            recv_us: m.recv_us,
            qos: m.ack.qos,
            dup: m.dup,
            topic: m.topic,
            payload: m.payload,
        });
    }

    /// Makes the group durable, hands its rows to the writer, then acknowledges it. Returns
    /// false when the writer is gone or shutdown interrupted a WAL outage (the group stays
    /// unacknowledged: the broker delivers it again).
    fn flush(&mut self) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.wal_failed.is_none() {
                match self.wal.sync() {
                    Ok(()) => break,
                    Err(e) => self.wal_failed = Some(e.to_string()),
                }
            }
            let error = self.wal_failed.clone().unwrap_or_default();
            if !self.stats.unhealthy.swap(true, Ordering::SeqCst) {
                tracing::error!(%error, "write-ahead log failed: not acknowledging until it recovers");
            }
            metrics::counter!("v2x_wal_errors_total").increment(1);
            if self.draining.load(Ordering::SeqCst) {
                tracing::warn!(
                    messages = self.tokens.len(),
                    "stopping with messages not durable; they stay unacknowledged at the broker"
                );
                return false;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // Cut the failed segment back to what was fsynced, then log the group again in
            // a fresh segment: no segment may hold a second copy of these messages.
            if let Some((path, len)) = &self.to_truncate {
                if let Err(e) = crate::wal::truncate(path, *len) {
                    self.wal_failed = Some(e.to_string());
                    continue;
                }
                self.to_truncate = None;
            }
            // Records a segment rotation already fsynced stay where they are.
            let durable_next = self.wal.synced_next_lsn();
            match Wal::open(&self.wal_dir, self.wal.next_lsn(), self.wal_segment_bytes) {
                Ok(mut wal) => {
                    wal.set_fsync(self.wal_fsync);
                    self.pending
                        .retain(|p| p.lsn.is_none_or(|l| l >= durable_next));
                    // What stays is logged again below; until then it is logged nowhere.
                    for p in self.pending.iter_mut() {
                        p.lsn = None;
                    }
                    let old = std::mem::replace(&mut self.wal, wal);
                    let (path, len) = old.abandon();
                    if let Err(e) = crate::wal::truncate(&path, len) {
                        self.to_truncate = Some((path, len));
                        self.wal_failed = Some(e.to_string());
                        continue;
                    }
                }
                Err(e) => {
                    self.wal_failed = Some(e.to_string());
                    continue;
                }
            }
            self.wal_failed = None;
            for p in &self.pending {
                match self
                    .wal
                    .append(p.recv_us, p.qos, p.dup, &p.topic, &p.payload)
                {
                    Ok(_) => {}
                    Err(e) => {
                        self.wal_failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if self.stats.unhealthy.swap(false, Ordering::SeqCst) {
            tracing::info!("write-ahead log recovered; acknowledging again");
        }
        let next = self.wal.next_lsn();
        for batch in self.decoder.take_batches() {
            if self.writer.send(WriterMsg::Batch(batch)).is_err() {
                tracing::error!("writer stopped; messages left unacknowledged");
                return false;
            }
        }
        if self.writer.send(WriterMsg::Progress(next)).is_err() {
            return false;
        }
        // Durable: release the tokens, in arrival order.
        self.stats.acked_groups.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.oldest.take() {
            metrics::histogram!("v2x_ack_lag_seconds").record(t.elapsed().as_secs_f64());
        }
        let _ = self.acks.send(std::mem::take(&mut self.tokens));
        self.pending.clear();
        true
    }

    /// When the log has reached its bound: commit open files so it can be truncated, and
    /// wait (not acknowledging; the broker holds the data) until there is room.
    fn wait_for_wal_room(&mut self) {
        let mut warned = false;
        loop {
            let bytes = crate::wal::disk_bytes(&self.wal_dir);
            self.wal_bytes = bytes;
            metrics::gauge!("v2x_wal_bytes").set(bytes as f64);
            if bytes < self.wal_max_bytes || self.draining.load(Ordering::SeqCst) {
                if warned {
                    tracing::info!(bytes, "write-ahead log below its bound again");
                    self.stats.wal_full.store(false, Ordering::SeqCst);
                }
                return;
            }
            if !warned {
                tracing::warn!(
                    bytes,
                    bound = self.wal_max_bytes,
                    "write-ahead log at its bound: committing open files, not acknowledging meanwhile"
                );
                self.stats.wal_full.store(true, Ordering::SeqCst);
                warned = true;
                if self.writer.send(WriterMsg::CommitAll).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn run(mut self, rx: Receiver<Message>, batch_messages: usize, max_delay: Duration) {
        loop {
            let wait = match self.oldest {
                Some(t) => max_delay.saturating_sub(t.elapsed()),
                None => max_delay,
            };
            let mut channel_empty = false;
            let mut disconnected = false;
            match rx.recv_timeout(wait) {
                Ok(m) => {
                    self.handle(m);
                    while self.tokens.len() < batch_messages && self.wal_bytes < self.wal_max_bytes
                    {
                        match rx.try_recv() {
                            Ok(m) => self.handle(m),
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
            self.activity.maybe_publish(self.decoder.activity());
            let due = self.oldest.is_some_and(|t| t.elapsed() >= max_delay);
            let stopping = disconnected || (self.draining.load(Ordering::SeqCst) && channel_empty);
            // Flushing whenever the channel runs dry keeps acks prompt under light load (the
            // broker's in-flight window may be as small as 20); under load batches fill up.
            if (self.tokens.len() >= batch_messages || due || stopping || channel_empty)
                && !self.flush()
            {
                break;
            }
            if self.wal_bytes >= self.wal_max_bytes {
                // The bound: the group so far is durable and acked; wait for room.
                if !self.flush() {
                    break;
                }
                self.wait_for_wal_room();
            }
            if stopping {
                break;
            }
        }
        let _ = self.writer.send(WriterMsg::Close);
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
        stats.commit_failing.store(w.failing(), Ordering::Relaxed);
    };
    let tick_every = Duration::from_millis(500);
    let mut last_tick = Instant::now();
    loop {
        match rx.recv_timeout(tick_every) {
            Ok(WriterMsg::Batch(batch)) => writer.push(batch),
            Ok(WriterMsg::Progress(next)) => writer.progress(next),
            Ok(WriterMsg::CommitAll) => writer.request_commit(),
            Ok(WriterMsg::Close) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Age-based rotation and the checkpoint run on time, busy or not.
        if last_tick.elapsed() >= tick_every {
            last_tick = Instant::now();
            writer.tick();
        }
        publish(&writer);
    }
    let failed = writer.close();
    publish(&writer);
    (writer.stats(), failed)
}
