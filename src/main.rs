//! The `v2x-collector` binary: command line, logging, signals, exit codes.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use v2x_collector::config::{Config, Protocol, Secret};
use v2x_collector::decode::Outcome;
use v2x_collector::pipeline;

#[derive(Parser)]
#[command(
    name = "v2x-collector",
    version,
    about = "MQTT to event-time partitioned Parquet for V2X telemetry"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "V2X_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Subscribe, decode and write Parquet until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Publish a deterministic synthetic zone: RSUs with radars, vehicles.
    Simulate(SimulateArgs),
    /// Publish captured payloads (JSON array, NDJSON, topic+payload NDJSON) to a broker.
    Replay(ReplayArgs),
    /// Live status of a running collector in the terminal (its /api/status).
    Top(TopArgs),
    /// Kinds in the dataset: partitions, files, rows, bytes, event times, sources.
    Ls(LsArgs),
    /// SQL over the dataset (DataFusion): each kind is a table with `date` and `hour` columns.
    Query(QueryArgs),
    /// One kind, a time window and optional sources to one sorted Parquet, CSV or NDJSON file.
    Export(ExportArgs),
    /// Merge the small files of closed partitions into files near a target size, atomically.
    Compact(CompactArgs),
    /// Decode quarantined messages again with the current schemas and routes; file those that
    /// now decode, exactly once.
    Reprocess(ReprocessArgs),
    /// List, show and check the declared schemas.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
}

#[derive(Args)]
struct CompactArgs {
    /// Dataset directory.
    #[arg(long, env = "V2X_DATA", default_value = "data")]
    data: PathBuf,
    /// Only this kind (default: every kind; the quarantine table is never compacted).
    #[arg(long)]
    kind: Option<String>,
    /// Size to aim for per output file: bytes, or binary K, M, G (128M, 1G).
    #[arg(long, default_value = "128M", value_parser = v2x_collector::dataset::compact::parse_bytes)]
    target_bytes: u64,
    /// Most rows per output file.
    #[arg(long, default_value_t = v2x_collector::dataset::compact::DEFAULT_MAX_ROWS,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_rows: u64,
    /// Leave the current UTC hour and the N-1 hours before it alone (the writer keeps an hour
    /// open up to writer.max_age_s after it ends).
    #[arg(long, default_value_t = v2x_collector::dataset::compact::DEFAULT_MIN_AGE_HOURS,
          value_parser = clap::value_parser!(u32).range(1..))]
    min_age_hours: u32,
    /// Leave a partition alone when any of its files changed in the last S seconds (late data).
    #[arg(long, default_value_t = v2x_collector::dataset::compact::DEFAULT_QUIET_SECS)]
    quiet_secs: u64,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON for scripts instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReprocessArgs {
    /// TOML configuration file of the collector: its routes, schema_dir, time window, decode
    /// and writer settings are used exactly as `run` uses them.
    #[arg(long, env = "V2X_CONFIG")]
    config: Option<PathBuf>,
    /// Dataset directory (default: the config's data_dir, else `data`).
    #[arg(long, env = "V2X_DATA")]
    data: Option<PathBuf>,
    /// Directory of schema files replacing the built-in ones (as for `run`).
    #[arg(long, env = "V2X_SCHEMA_DIR")]
    schema_dir: Option<PathBuf>,
    /// Only rows quarantined for this reason (repeat for several), e.g. unknown_kind.
    #[arg(long = "reason")]
    reasons: Vec<String>,
    /// Only rows whose topic matches this MQTT filter, `+` and `#` allowed (repeat for several).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Only rows of this kind: their `kind` column, or the kind their topic routes to now.
    #[arg(long)]
    kind: Option<String>,
    /// Only rows received at or after this time: RFC 3339 or `YYYY-MM-DD[ HH:MM]` UTC.
    #[arg(long)]
    from: Option<String>,
    /// Only rows received before this time.
    #[arg(long)]
    to: Option<String>,
    /// Print what would be filed and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON for scripts instead of the summary.
    #[arg(long)]
    json: bool,
    /// Messages decoded per commit set (memory is bounded by it).
    #[arg(long, default_value_t = v2x_collector::dataset::reprocess::DEFAULT_COMMIT_MESSAGES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    commit_messages: u64,
}

#[derive(Args)]
struct LsArgs {
    /// Dataset directory.
    #[arg(long, env = "V2X_DATA", default_value = "data")]
    data: PathBuf,
    /// JSON for scripts instead of the table.
    #[arg(long)]
    json: bool,
    /// Per source and kind, from the message index: messages, rows, messages with no rows,
    /// delay (receive minus event time: delay plus the source's clock offset), first and last
    /// receive time.
    #[arg(long)]
    sources: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// Dataset directory, or s3://bucket/prefix (client from the AWS_* variables).
    #[arg(long, env = "V2X_DATA", default_value = "data")]
    data: PathBuf,
    /// The kind to export.
    #[arg(long)]
    kind: String,
    /// Start of the window (inclusive): RFC 3339 or `YYYY-MM-DD[ HH:MM]` UTC.
    #[arg(long)]
    from: Option<String>,
    /// End of the window (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Only this source (repeat for several).
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Output file; the format follows its extension (.parquet, .csv, .ndjson) unless
    /// --format is given.
    #[arg(long)]
    out: PathBuf,
    /// parquet, csv or json (NDJSON).
    #[arg(long, value_enum)]
    format: Option<v2x_collector::dataset::query::Format>,
    /// Memory for sorting before it spills to temporary files, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: usize,
}

#[derive(Args)]
struct QueryArgs {
    /// Dataset directory, or s3://bucket/prefix (client from the AWS_* variables).
    #[arg(long, env = "V2X_DATA", default_value = "data")]
    data: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: v2x_collector::dataset::query::Format,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The query, e.g. "select source_id, count(*) from bsm group by 1".
    sql: String,
}

#[derive(Args)]
struct TopArgs {
    /// The collector's HTTP address, host:port; https://host:port when it serves HTTPS
    /// ([http.tls]).
    #[arg(long, env = "V2X_HTTP", default_value = "127.0.0.1:9180")]
    http: String,
    /// Bearer token, when the collector requires one.
    #[arg(long, env = "V2X_HTTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one plain frame and exit (for scripts).
    #[arg(long)]
    once: bool,
    /// CA certificate (PEM) that signs an https:// collector's certificate (default: the
    /// system roots). The host name is always checked.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "V2X_CONFIG")]
    config: Option<PathBuf>,
    /// Dataset directory.
    #[arg(long, env = "V2X_DATA")]
    data: Option<PathBuf>,
    /// Write-ahead log directory.
    #[arg(long, env = "V2X_WAL")]
    wal: Option<PathBuf>,
    /// External broker, mqtt://host:port or mqtts://host:port (TLS: see [mqtt.tls] in the
    /// config). Without it the embedded broker starts.
    #[arg(long, env = "V2X_BROKER")]
    broker: Option<String>,
    /// MQTT user name. The password is read from V2X_MQTT_PASSWORD (or mqtt.password), never
    /// from a flag: command lines are visible to every local user.
    #[arg(long, env = "V2X_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// Listen address of the embedded broker.
    #[arg(long, env = "V2X_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP address for dashboard, metrics and status (default 127.0.0.1:9180).
    #[arg(long, env = "V2X_HTTP")]
    http: Option<SocketAddr>,
    /// Bearer token for the HTTP server (required when it listens off loopback).
    #[arg(long, env = "V2X_HTTP_TOKEN", hide_env_values = true)]
    http_token: Option<String>,
    /// MQTT client id (keep it fixed: the persistent session is bound to it).
    #[arg(long, env = "V2X_CLIENT_ID")]
    client_id: Option<String>,
    /// Collector id used in file names.
    #[arg(long, env = "V2X_COLLECTOR_ID")]
    collector_id: Option<String>,
    /// MQTT protocol towards an external broker.
    #[arg(long, env = "V2X_MQTT_PROTOCOL", value_parser = ["5", "3.1.1"])]
    protocol: Option<String>,
    /// Directory of schema files replacing the built-in ones.
    #[arg(long, env = "V2X_SCHEMA_DIR")]
    schema_dir: Option<PathBuf>,
    /// Upload committed files to this object store, s3://bucket/prefix (see [store] in the
    /// config; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "V2X_STORE_URL")]
    store: Option<String>,
}

/// How `simulate` and `replay` reach an `mqtts://` broker and log in.
#[derive(Args)]
struct PublishBrokerArgs {
    /// CA certificate (PEM) that signs an mqtts:// broker's certificate (default: the system
    /// roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for a broker that requires one.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// MQTT user name; the password is read from V2X_MQTT_PASSWORD.
    #[arg(long, env = "V2X_MQTT_USERNAME")]
    username: Option<String>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Broker to publish to: mqtt://host:port or mqtts://host:port.
    #[arg(long, env = "V2X_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    #[command(flatten)]
    login: PublishBrokerArgs,
    /// Roadside units (each with a radar).
    #[arg(long, default_value_t = 4)]
    rsus: usize,
    /// Vehicles (every second one instrumented: state and objects too).
    #[arg(long, default_value_t = 10)]
    vehicles: usize,
    /// Ticks per second (RSM, SSM, PSM, radar, BSM rate).
    #[arg(long, default_value_t = 10.0)]
    hz: f64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long, conflicts_with = "count")]
    duration: Option<f64>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event time of the first message (RFC 3339 or `YYYY-MM-DD[ HH:MM]` UTC; default now).
    /// For long `--max` runs, whose zone clock runs ahead of the wall clock.
    #[arg(long)]
    start: Option<String>,
    /// Put before every RSU esn and vehicle id, so that two simulators do not collide.
    #[arg(long, default_value = "")]
    id_prefix: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT connections to spread the messages over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Publish as fast as the broker takes it, ignoring --hz (load tests).
    #[arg(long)]
    max: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// Broker to publish to: mqtt://host:port or mqtts://host:port.
    #[arg(long, env = "V2X_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    #[command(flatten)]
    login: PublishBrokerArgs,
    /// Topic for payloads that carry none of their own. For V2X-Seq CSV it replaces the
    /// built-in topic; `{source_id}` in it becomes the intersection's source id.
    #[arg(long)]
    topic: Option<String>,
    /// Pace by the payloads' own timestamps.
    #[arg(long, conflicts_with = "rate")]
    realtime: bool,
    /// Messages per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT client id (default: v2x-replay-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    /// Captures: JSON, NDJSON, or V2X-Seq trajectory / traffic-light CSV.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// The kinds and their payload profiles.
    List {
        #[arg(long, env = "V2X_SCHEMA_DIR")]
        schema_dir: Option<PathBuf>,
    },
    /// A kind's columns, units and profiles, as JSON (the `_schema.json` beside the data).
    Show {
        kind: String,
        #[arg(long, env = "V2X_SCHEMA_DIR")]
        schema_dir: Option<PathBuf>,
    },
    /// Markdown reference of every kind: columns, units, source field per profile.
    Docs {
        #[arg(long, env = "V2X_SCHEMA_DIR")]
        schema_dir: Option<PathBuf>,
    },
    /// Decode a payload file as a kind and print the rows, or the quarantine reason.
    Check {
        #[arg(long)]
        kind: String,
        /// Payload profile (default: the kind's default).
        #[arg(long)]
        profile: Option<String>,
        /// The file holds one payload per line.
        #[arg(long, conflicts_with = "array")]
        ndjson: bool,
        /// The file is a JSON array whose elements are payloads.
        #[arg(long)]
        array: bool,
        /// Rows to print.
        #[arg(long, default_value_t = 10)]
        show: usize,
        #[arg(long, env = "V2X_SCHEMA_DIR")]
        schema_dir: Option<PathBuf>,
        file: PathBuf,
    },
}

/// An error and its causes, `: `-separated, leaving out a cause whose text the message
/// already quotes (most of ours say `...: {source}`).
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if matches!(cli.command, Command::Run(_)) {
        // Only `run`, whose writer commits file after file, where it was measured; the others
        // (DataFusion's queries and sorts among them) keep glibc's defaults, which return memory.
        // Refused only by an allocator with other limits: nothing to report then.
        let _ = v2x_collector::heap::keep_freed_buffers();
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::Simulate(args) => match simulate(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, e)) => {
                eprintln!("error: {}", chain(&e));
                ExitCode::from(code)
            }
        },
        Command::Replay(args) => match replay(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, e)) => {
                eprintln!("error: {}", chain(&e));
                ExitCode::from(code)
            }
        },
        Command::Top(args) => {
            match v2x_collector::top::run(
                &args.http,
                args.token.as_deref(),
                args.once,
                args.ca_file.as_deref(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Ls(args) => ls(args),
        Command::Query(args) => query(args),
        Command::Export(args) => export(args),
        Command::Compact(args) => compact(args),
        Command::Reprocess(args) => reprocess(args),
        Command::Schema { command } => match schema(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                ExitCode::from(2)
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_run_config(args: RunArgs) -> anyhow::Result<Config> {
    let mut c = Config::load(args.config.as_deref())?;
    if let Some(v) = args.data {
        c.data_dir = v;
    }
    if let Some(v) = args.wal {
        c.wal_dir = v;
    }
    if let Some(v) = args.broker {
        c.mqtt.broker = Some(v);
    }
    if let Some(v) = args.mqtt_username {
        c.mqtt.username = Some(v);
    }
    if let Ok(v) = std::env::var("V2X_MQTT_PASSWORD") {
        c.mqtt.password = Some(Secret::new(v));
    }
    if let Some(v) = args.listen {
        c.embedded.listen = v;
    }
    if let Some(v) = args.http {
        c.http.listen = v;
    }
    if let Some(v) = args.http_token {
        c.http.token = Some(Secret::new(v));
    }
    if let Some(v) = args.client_id {
        c.mqtt.client_id = Some(v);
    }
    if let Some(v) = args.collector_id {
        c.collector_id = v;
    }
    if let Some(v) = args.protocol {
        c.mqtt.protocol = if v == "5" {
            Protocol::V5
        } else {
            Protocol::V311
        };
    }
    if let Some(v) = args.schema_dir {
        c.schema_dir = Some(v);
    }
    if let Some(v) = args.store {
        c.store.url = Some(v);
    }
    c.validate()?;
    Ok(c)
}

fn run(args: RunArgs) -> ExitCode {
    let config = match load_run_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(pipeline::run(config, shutdown_signal()));
    match result {
        Ok(summary) => {
            tracing::info!(
                received = summary.received,
                acked = summary.acked,
                rows = summary.rows,
                quarantined = summary.quarantined,
                files = summary.sink.files_committed,
                "stopped cleanly"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "collector failed");
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The publishing connection of `simulate` and `replay`: exit 2 for a bad URL or TLS file.
fn publish_settings(
    broker: &str,
    login: PublishBrokerArgs,
    qos: u8,
    client_id: String,
) -> Result<v2x_collector::sim::replay::PublishSettings, (u8, anyhow::Error)> {
    use v2x_collector::config::{BrokerUrl, MqttTlsConfig};
    let url = BrokerUrl::parse(broker).map_err(|e| (2, e.into()))?;
    let files = MqttTlsConfig {
        ca_file: login.ca_file,
        cert_file: login.cert_file,
        key_file: login.key_file,
        server_name: None,
    };
    let tls = if url.tls {
        let tls = v2x_collector::source::tls::client_tls(&files, &url.host);
        Some(tls.map_err(|e| (2, e.into()))?)
    } else if files.any_set() {
        return Err((
            2,
            anyhow::anyhow!(
                "--ca-file, --cert-file and --key-file are for TLS: use --broker mqtts://{}:<port>",
                url.host
            ),
        ));
    } else {
        None
    };
    Ok(v2x_collector::sim::replay::PublishSettings {
        host: url.host,
        port: url.port,
        qos,
        client_id,
        tls,
        username: login.username,
        password: std::env::var("V2X_MQTT_PASSWORD").ok().map(Secret::new),
    })
}

fn simulate(args: SimulateArgs) -> Result<(), (u8, anyhow::Error)> {
    use v2x_collector::sim::simulate::{self, SimulateSettings};
    let publish = publish_settings(
        &args.broker,
        args.login,
        args.qos,
        format!("v2x-simulate-{}", std::process::id()),
    )?;
    if args.hz <= 0.0 || !args.hz.is_finite() {
        return Err((2, anyhow::anyhow!("--hz must be positive")));
    }
    // The prefix starts every source id, so it must be one itself (no topic separators).
    if !args.id_prefix.is_empty() && !v2x_collector::route::is_safe_identifier(&args.id_prefix) {
        return Err((
            2,
            anyhow::anyhow!(
                "--id-prefix {:?} must start with a letter or digit and use only A-Z a-z 0-9 _ . -",
                args.id_prefix
            ),
        ));
    }
    let start_ms = match &args.start {
        None => None,
        Some(t) => match v2x_collector::dataset::export::parse_time(t) {
            Some(us) => Some(us / 1000),
            None => {
                return Err((
                    2,
                    anyhow::anyhow!("--start {t:?} is not RFC 3339 or YYYY-MM-DD[ HH:MM] (UTC)"),
                ));
            }
        },
    };
    let settings = SimulateSettings {
        publish,
        connections: args.connections,
        rsus: args.rsus,
        vehicles: args.vehicles,
        hz: args.hz,
        seed: args.seed,
        id_prefix: args.id_prefix,
        duration: args.duration.map(std::time::Duration::from_secs_f64),
        count: args.count,
        max: args.max,
        start_ms,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, e.into()))?;
    let sent = runtime
        .block_on(simulate::run(&settings, shutdown_signal(), |sent, rate| {
            eprint!("\r{sent} messages, {rate:.0} msg/s   ");
        }))
        .map_err(|e| (1, e.into()))?;
    eprintln!();
    eprintln!("published {sent} messages");
    Ok(())
}

fn replay(args: ReplayArgs) -> Result<(), (u8, anyhow::Error)> {
    use v2x_collector::sim::replay::{self, Pace};
    let usage = |e: anyhow::Error| (2u8, e);
    let settings = publish_settings(
        &args.broker,
        args.login,
        args.qos,
        args.client_id
            .unwrap_or_else(|| format!("v2x-replay-{}", std::process::id())),
    )?;
    let mut items = Vec::new();
    for f in &args.files {
        items.extend(replay::read_file(f, args.topic.as_deref()).map_err(|e| usage(e.into()))?);
    }
    let pace = match (args.realtime, args.rate) {
        (true, _) => Pace::RealTime,
        (false, Some(r)) => Pace::Rate(r),
        (false, None) => Pace::AsFastAsPossible,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, e.into()))?;
    let started = std::time::Instant::now();
    let sent = runtime
        .block_on(replay::publish(&items, &settings, pace, |sent, total| {
            let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-3);
            eprint!("\r{sent}/{total} messages, {rate:.0} msg/s   ");
        }))
        .map_err(|e| (1, e.into()))?;
    eprintln!();
    eprintln!(
        "published {sent} messages in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A runtime for the dataset commands (DataFusion is async); `None` after printing why not.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// Prints `value` as pretty JSON; false (after saying why) when it cannot be serialized.
fn print_json(value: &impl serde::Serialize) -> bool {
    match serde_json::to_string_pretty(value) {
        Ok(j) => {
            println!("{j}");
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// `export`: exit 2 for bad arguments (times, kind, sources, format), 1 for failures.
fn export(args: ExportArgs) -> ExitCode {
    use std::io::IsTerminal;
    use v2x_collector::dataset::export::{self, Request};
    use v2x_collector::dataset::query::Format;
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let time = |flag: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        match v {
            None => Ok(None),
            Some(s) => export::parse_time(s)
                .map(Some)
                .ok_or_else(|| format!("{flag} {s:?} is not RFC 3339 or YYYY-MM-DD[ HH:MM] (UTC)")),
        }
    };
    let (from_us, to_us) = match (time("--from", &args.from), time("--to", &args.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    let format = match args.format.or_else(|| export::format_of(&args.out)) {
        Some(Format::Table) => return usage("--format table is not a file format".into()),
        Some(f) => f,
        None => {
            return usage(format!(
                "cannot tell the format of {}: use .parquet, .csv or .ndjson, or --format",
                args.out.display()
            ));
        }
    };
    let req = Request {
        data: args.data,
        kind: args.kind,
        from_us,
        to_us,
        sources: args.sources,
        out: args.out,
        format,
        memory_bytes: args.memory_mib.saturating_mul(1 << 20),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    let tty = std::io::stderr().is_terminal();
    let progress = |rows: u64, estimate: u64| {
        if tty {
            if estimate > 0 {
                let pct = (100 * rows / estimate.max(1)).min(100);
                eprint!("\rexport: {rows} of ~{estimate} rows ({pct} %)   ");
            } else {
                eprint!("\rexport: {rows} rows   ");
            }
        }
    };
    match runtime.block_on(export::run(&req, progress)) {
        Ok(s) => {
            if tty {
                eprintln!();
            }
            eprintln!(
                "exported {} rows of {} to {} ({} bytes)",
                s.rows,
                req.kind,
                req.out.display(),
                s.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            if tty {
                eprintln!();
            }
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `query`: exit 2 for a query that does not parse or plan, or a wrong data directory.
fn query(args: QueryArgs) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    let run =
        v2x_collector::dataset::query::run(&args.data, &args.sql, args.format, args.out.as_deref());
    match runtime.block_on(run) {
        Ok(rows) => {
            if args.out.is_some() {
                eprintln!("{rows} rows");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `ls`: exit 2 when the data directory is wrong, 1 when a file could not be read (it is
/// still listed, with its error).
fn ls(args: LsArgs) -> ExitCode {
    use v2x_collector::dataset::ls;
    if args.sources {
        let Some(runtime) = runtime() else {
            return ExitCode::from(1);
        };
        let format = if args.json {
            v2x_collector::dataset::query::Format::Json
        } else {
            v2x_collector::dataset::query::Format::Table
        };
        return match runtime.block_on(ls::sources(&args.data, format)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let listing = match ls::list(&args.data) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if args.json {
        if !print_json(&listing) {
            return ExitCode::from(1);
        }
    } else {
        print!("{}", ls::render(&listing));
    }
    let mut failed = false;
    for e in listing.errors() {
        eprintln!("error: {}: {}", e.path, e.error);
        failed = true;
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `compact`: exit 2 for a wrong data directory or kind, 1 when something could not be
/// compacted (it is left as it was) or an interrupted step failed.
fn compact(args: CompactArgs) -> ExitCode {
    use v2x_collector::dataset::compact;
    let opts = compact::Options {
        target_bytes: args.target_bytes,
        max_rows: args.max_rows,
        min_age_hours: args.min_age_hours,
        quiet_secs: args.quiet_secs,
        dry_run: args.dry_run,
        ..compact::Options::default()
    };
    let report = match compact::compact(&args.data, args.kind.as_deref(), &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if args.json {
        if !print_json(&report) {
            return ExitCode::from(1);
        }
    } else {
        print!("{}", compact::render(&report));
    }
    for e in &report.errors {
        eprintln!("error: {} {}: {}", e.kind, e.partition, e.error);
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `reprocess`: exit 2 for a bad filter, time, config or data directory, 1 for failures; 0
/// when done, also when some messages still fail (they are reported).
fn reprocess(args: ReprocessArgs) -> ExitCode {
    use std::io::IsTerminal;
    use v2x_collector::dataset::export::parse_time;
    use v2x_collector::dataset::reprocess::{self, Filters, Options, TopicFilter};
    use v2x_collector::quarantine::Reason;
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    if let Some(v) = args.data {
        config.data_dir = v;
    }
    if let Some(v) = args.schema_dir {
        config.schema_dir = Some(v);
    }
    let mut filters = Filters::default();
    for r in &args.reasons {
        match Reason::parse(r) {
            Some(r) => filters.reasons.push(r),
            None => {
                let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                return usage(format!(
                    "--reason {r:?} is not a quarantine reason (one of: {})",
                    known.join(", ")
                ));
            }
        }
    }
    for t in &args.topics {
        match TopicFilter::parse(t) {
            Ok(f) => filters.topics.push(f),
            Err(e) => return usage(format!("--topic: {e}")),
        }
    }
    filters.kind = args.kind;
    let time = |flag: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        match v {
            None => Ok(None),
            Some(s) => parse_time(s)
                .map(Some)
                .ok_or_else(|| format!("{flag} {s:?} is not RFC 3339 or YYYY-MM-DD[ HH:MM] (UTC)")),
        }
    };
    match (time("--from", &args.from), time("--to", &args.to)) {
        (Ok(f), Ok(t)) => (filters.from_us, filters.to_us) = (f, t),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    }
    let w = &config.writer;
    if w.row_group_rows == 0 || !(1..=22).contains(&w.zstd_level) {
        return usage("writer.row_group_rows must be positive and writer.zstd_level 1..=22".into());
    }
    let opts = Options {
        filters,
        dry_run: args.dry_run,
        commit_messages: usize::try_from(args.commit_messages).unwrap_or(usize::MAX),
        file: v2x_collector::sink::FileSettings {
            row_group_rows: w.row_group_rows,
            zstd_level: w.zstd_level,
        },
    };
    let mut decoder = match pipeline::build_decoder(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let tty = std::io::stderr().is_terminal();
    let mut shown = false;
    let progress = |done: u64, total: u64| {
        if tty && total > 0 {
            let pct = (100 * done / total.max(1)).min(100);
            eprint!("\rreprocess: {done} of {total} messages ({pct} %)   ");
            shown = true;
        }
    };
    let result = reprocess::reprocess(&config.data_dir, &mut decoder, &opts, progress);
    if shown {
        eprintln!();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if args.json {
        if !print_json(&report) {
            return ExitCode::from(1);
        }
    } else {
        print!("{}", reprocess::render(&report));
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn schema(cmd: SchemaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SchemaCommand::List { schema_dir } => {
            let all = v2x_collector::schema::load_all(schema_dir.as_deref())?;
            println!(
                "{:<18} {:>7}  {:<40} description",
                "kind", "columns", "profiles"
            );
            for s in all {
                let profiles: Vec<_> = s
                    .profiles
                    .iter()
                    .filter(|(name, _)| !s.profiles.values().any(|p| p.parts.contains(name)))
                    .map(|(name, _)| name.as_str())
                    .collect();
                println!(
                    "{:<18} {:>7}  {:<40} {}",
                    s.kind,
                    s.columns.len() + v2x_collector::schema::COMMON_COLUMNS.len(),
                    profiles.join(", "),
                    s.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Show { kind, schema_dir } => {
            let all = v2x_collector::schema::load_all(schema_dir.as_deref())?;
            let Some(s) = all.into_iter().find(|s| s.kind == kind) else {
                bail!("no kind {kind:?}; `v2x-collector schema list` shows the kinds");
            };
            println!("{}", s.to_json());
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Docs { schema_dir } => {
            print!(
                "{}",
                v2x_collector::schema::docs::generate(schema_dir.as_deref())?
            );
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Check {
            kind,
            profile,
            ndjson,
            array,
            show,
            schema_dir,
            file,
        } => check(kind, profile, ndjson, array, show, schema_dir, file),
    }
}

fn check(
    kind: String,
    profile: Option<String>,
    ndjson: bool,
    array: bool,
    show: usize,
    schema_dir: Option<PathBuf>,
    file: PathBuf,
) -> anyhow::Result<ExitCode> {
    let config = Config {
        schema_dir,
        ..Config::default()
    };
    let mut decoder = pipeline::build_decoder(&config)?;
    let Some(k) = decoder.kinds().iter().position(|d| d.schema.kind == kind) else {
        bail!("no kind {kind:?}; `v2x-collector schema list` shows the kinds");
    };
    // Without --profile, as on a topic that names none: the default, or a detected one.
    let named = profile.is_some();
    let profile = profile.unwrap_or_else(|| decoder.kinds()[k].schema.default_profile.clone());
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let payloads: Vec<Vec<u8>> = if ndjson {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    } else if array {
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(body)
            .with_context(|| format!("{} is not a JSON array", file.display()))?;
        items
            .into_iter()
            .map(|r| r.get().as_bytes().to_vec())
            .collect()
    } else {
        vec![bytes]
    };
    let now = v2x_collector::source::now_us();
    let (mut filed, mut rows, mut bad) = (0usize, 0usize, 0usize);
    for (i, p) in payloads.iter().enumerate() {
        let raw = v2x_collector::decode::Raw::new("check", p, now);
        let outcome = if named {
            decoder.decode_as(k, &profile, Some("check"), &raw)
        } else {
            decoder.decode_detecting(k, &profile, Some("check"), &raw)
        };
        match outcome {
            Outcome::Filed { rows: n, .. } => {
                filed += 1;
                rows += n;
            }
            Outcome::Quarantined(reason) => {
                bad += 1;
                println!("payload {}: quarantined ({reason})", i + 1);
            }
        }
    }
    let batches = decoder.take_batches();
    for b in &batches {
        if &*b.table == v2x_collector::quarantine::TABLE {
            let errors = b.batch.column_by_name("error").cloned();
            if let Some(errors) = errors {
                let errors = arrow::array::AsArray::as_string::<i32>(&errors);
                for e in errors.iter().flatten() {
                    println!("  {e}");
                }
            }
        }
    }
    let shown: Vec<_> = batches
        .iter()
        .filter(|b| &*b.table != v2x_collector::quarantine::TABLE)
        .map(|b| b.batch.slice(0, b.batch.num_rows().min(show)))
        .collect();
    if show > 0 && !shown.is_empty() {
        println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&shown[..1])?
        );
    }
    println!(
        "{kind}/{profile}: {} payloads, {filed} filed as {rows} rows, {bad} quarantined",
        payloads.len()
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
