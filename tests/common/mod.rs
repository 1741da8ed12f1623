//! Shared test helpers: a real mosquitto on a free loopback port, the collector binary run as
//! a user would run it, publishing with `mosquitto_pub`, and reading the Parquet back.
//!
//! Every wait here is bounded in time; nothing asserts a timing.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn shared(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(path)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A mosquitto started for one test, with a config written by the test.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    conf: PathBuf,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Starts with extra configuration lines (persistence, queue limits, ...). `{dir}` in
    /// `extra` is replaced by the broker's own scratch directory.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let has = |key: &str| extra.lines().any(|l| l.starts_with(key));
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\nmessage_size_limit 0\n"
        );
        for (key, default) in [
            ("persistence", "persistence false"),
            ("max_queued_messages", "max_queued_messages 200000"),
            ("max_inflight_messages", "max_inflight_messages 1000"),
        ] {
            if !has(key) {
                text.push_str(default);
                text.push('\n');
            }
        }
        text.push_str(&extra);
        text.push('\n');
        std::fs::write(&conf, text).unwrap();
        let child = Self::spawn(&conf, port);
        Mosquitto {
            port,
            child,
            conf,
            dir,
        }
    }

    fn spawn(conf: &Path, port: u16) -> Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (tools/test.sh installs it)");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "mosquitto did not listen on {port}"
        );
        child
    }

    /// Stops the broker with SIGTERM (`kill = false`) or SIGKILL, then starts it again on the
    /// same port with the same configuration.
    pub fn restart(&mut self, kill: bool) {
        if kill {
            let _ = self.child.kill();
        } else {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
        }
        let _ = self.child.wait();
        // The port may take a moment to be free again.
        let start = Instant::now();
        while TcpListener::bind(("127.0.0.1", self.port)).is_err()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Self::spawn(&self.conf, self.port);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The collector binary, started with a config file written by the test.
pub struct Collector {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub data: PathBuf,
}

/// A scratch directory holding the config, the log and the data directory.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes `config.toml` with the data dir and a fast stats line, plus `extra` TOML.
    pub fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        let data = self.data();
        // Each collector's HTTP server on a free port unless the test configures it.
        let http = if extra.contains("[http]") {
            ""
        } else {
            "[http]\nlisten = \"127.0.0.1:0\"\n"
        };
        let text = format!(
            "collector_id = \"test\"\ndata_dir = {:?}\nwal_dir = {:?}\nstats_interval_s = 0.2\n{http}{extra}\n",
            data.display().to_string(),
            self.dir.path().join("wal").display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the collector and waits until its subscriptions are acknowledged.
    pub fn start(&self, extra_config: &str, args: &[&str]) -> Collector {
        self.start_with_env(extra_config, args, &[])
    }

    /// As [`Workspace::start`], with extra environment variables.
    pub fn start_with_env(
        &self,
        extra_config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Collector {
        let c = self.spawn_with_env(extra_config, args, env);
        c.wait_log("subscriptions acknowledged", Duration::from_secs(30));
        c
    }

    /// Starts the collector without waiting for anything (for runs that must not connect).
    pub fn spawn_with_env(
        &self,
        extra_config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Collector {
        let config = self.config(extra_config);
        let log = self.dir.path().join(format!(
            "collector-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_v2x-collector"))
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Collector {
            child: Some(child),
            log,
            data: self.data(),
        }
    }
}

impl Collector {
    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The HTTP server's address, from its `http listening` log line.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.wait_log("http listening", Duration::from_secs(30));
        for line in self.log_text().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["fields"]["message"] == "http listening"
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                return addr.parse().unwrap();
            }
        }
        panic!("no http listening line with an addr field")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("collector never logged {needle:?}:\n{}", self.log_text());
    }

    /// Waits until `needle` appears at least `n` times in the log.
    pub fn wait_log_count(&self, needle: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log_text().matches(needle).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "collector never logged {needle:?} {n} times:\n{}",
            self.log_text()
        );
    }

    /// The latest `ingest stats` line.
    pub fn stats(&self) -> Option<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|v| v["fields"]["message"] == "ingest stats")
            .map(|v| v["fields"].clone())
    }

    /// Waits until the collector has taken `n` messages through decode (filed or quarantined).
    pub fn wait_processed(&self, n: u64, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.stats() {
                let done =
                    s["decoded"].as_u64().unwrap_or(0) + s["quarantined"].as_u64().unwrap_or(0);
                if done >= n {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "collector did not process {n} messages in {limit:?}; last stats {:?}\n{}",
            self.stats(),
            self.log_text()
        );
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends the named signal (`TERM`, `INT`) and waits for the exit.
    // `try_wait` returning a status has reaped the child; clippy cannot see that.
    #[allow(clippy::zombie_processes)]
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "collector did not stop within 60 s after SIG{signal}:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `mosquitto_pub` at QoS 1 to the test broker.
fn mosquitto_pub(port: u16, topic: &str) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ]);
    c
}

/// A publisher that has not finished by then (waiting for a CONNACK or a PUBACK that never
/// comes) fails the test instead of hanging it.
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(120);

/// Waits for `child` to exit within `limit` and returns its output; kills it and fails the
/// test with `what` otherwise.
pub fn finish_within(child: Child, limit: Duration, what: &str) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{what} did not finish within {limit:?}")
        }
    }
}

/// Publishes each line of `lines` as one message, QoS 1. `mosquitto_pub -l` (2.0.11) can exit
/// before a long input is all delivered, so it gets at most 1,000 lines per call.
pub fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    publish_lines_with(port, topic, lines, &[]);
}

/// As [`publish_lines`], with extra `mosquitto_pub` arguments after the defaults (`-V mqttv5`,
/// `-q 0`, ...). Each call must exit 0 within [`PUBLISH_LIMIT`].
pub fn publish_lines_with(port: u16, topic: &str, lines: &[String], extra: &[&str]) {
    for chunk in lines.chunks(1000) {
        let mut child = mosquitto_pub(port, topic)
            .args(extra)
            .arg("-l")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub must be installed (tools/test.sh installs it)");
        {
            let mut stdin = child.stdin.take().unwrap();
            for l in chunk {
                assert!(!l.contains('\n'), "one message per line");
                stdin.write_all(l.as_bytes()).unwrap();
                stdin.write_all(b"\n").unwrap();
            }
        }
        let what = format!("mosquitto_pub {extra:?} -t {topic}");
        let out = finish_within(child, PUBLISH_LIMIT, &what);
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Publishes one payload (any bytes) from a file.
pub fn publish_bytes(port: u16, topic: &str, payload: &[u8]) {
    publish_bytes_with(port, topic, payload, &[]);
}

/// As [`publish_bytes`], with extra `mosquitto_pub` arguments; must exit 0 within
/// [`PUBLISH_LIMIT`].
pub fn publish_bytes_with(port: u16, topic: &str, payload: &[u8], extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("payload");
    std::fs::write(&f, payload).unwrap();
    let child = mosquitto_pub(port, topic)
        .args(extra)
        .arg("-f")
        .arg(&f)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let what = format!("mosquitto_pub {extra:?} -f <{} bytes>", payload.len());
    let out = finish_within(child, PUBLISH_LIMIT, &what);
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What [`paho_publish`] saw.
#[derive(Debug, serde::Deserialize)]
pub struct PahoReport {
    /// CONNACK reason code (0 is success).
    pub connack: i64,
    /// Messages paho counts as published: for QoS 1, those whose PUBACK came.
    pub published: usize,
    /// PUBACK reason codes other than success (MQTT 5).
    pub failed_acks: Vec<i64>,
}

/// Publishes each line as one message with a paho-mqtt client (`python3` with paho-mqtt 2;
/// tools/test.sh installs it) speaking `version` (`"5"` or `"3.1.1"`) at `qos`, waiting at most
/// 60 s for each PUBACK.
pub fn paho_publish(
    port: u16,
    version: &str,
    qos: u8,
    topic: &str,
    lines: &[String],
) -> PahoReport {
    const SCRIPT: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, version, qos, topic = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = sys.stdin.read().split("\n")[:-1]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-%s-%s" % (version, qos), protocol=proto)
c.max_inflight_messages_set(100)
connected, state = threading.Event(), {"connack": -1, "failed": []}
def on_connect(client, userdata, flags, reason_code, properties):
    state["connack"] = reason_code.value
    connected.set()
def on_publish(client, userdata, mid, reason_code, properties):
    if reason_code.is_failure:
        state["failed"].append(reason_code.value)
c.on_connect, c.on_publish = on_connect, on_publish
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
if not connected.wait(30):
    sys.exit("no CONNACK within 30 s")
infos = [c.publish(topic, l, qos=qos) for l in lines]
for i in infos:
    i.wait_for_publish(timeout=60)
published = sum(1 for i in infos if i.is_published())
c.disconnect()
c.loop_stop()
print(json.dumps({"connack": state["connack"], "published": published, "failed_acks": state["failed"]}))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args([&port.to_string(), version, &qos.to_string(), topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            assert!(!l.contains('\n'), "one message per line");
            stdin.write_all(l.as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let what = format!("paho-mqtt MQTT {version} QoS {qos} publisher");
    let out = finish_within(child, PUBLISH_LIMIT, &what);
    assert!(
        out.status.success(),
        "{what} failed (python3 -m pip install paho-mqtt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The collector binary, for command-line tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_v2x-collector"))
}

/// The radar capture, one compact JSON frame per entry.
pub fn radar_frames() -> Vec<String> {
    let text = std::fs::read_to_string(shared("openv2x-radar/track.json")).unwrap();
    let frames: Vec<serde_json::Value> =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
    frames
        .iter()
        .map(|f| serde_json::to_string(f).unwrap())
        .collect()
}

/// Every `.parquet` file below `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

/// All files (any name) below `dir`.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn read_parquet(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let schema = batches[0].schema();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// All rows of one table (kind or `_quarantine`), with the partition directory of each file.
pub fn read_table(data: &Path, table: &str) -> (Option<RecordBatch>, Vec<String>) {
    let files = parquet_files(&data.join(table));
    let partitions = files
        .iter()
        .map(|f| {
            let rel = f.parent().unwrap().strip_prefix(data.join(table)).unwrap();
            rel.display().to_string()
        })
        .collect();
    if files.is_empty() {
        return (None, partitions);
    }
    let batches: Vec<RecordBatch> = files.iter().map(|f| read_parquet(f)).collect();
    let schema = batches[0].schema();
    (
        Some(arrow::compute::concat_batches(&schema, &batches).unwrap()),
        partitions,
    )
}

// ---- Unique-message helpers for the crash and fault tests ----

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One BSM per message, each with its own vehicle id `m<i>`, so rows map back to messages.
pub fn messages(range: std::ops::Range<usize>) -> Vec<String> {
    let base_ms: i64 = chrono::Utc::now().timestamp_millis() - 60_000;
    range
        .map(|i| {
            format!(
                r#"{{"msgCnt":{},"id":"m{i}","timeStamp":{},"pos":{{"lat":39.9,"lon":116.5}},"speed":{}.5,"heading":90.0}}"#,
                i % 128,
                base_ms + i as i64,
                i % 30
            )
        })
        .collect()
}

pub const TOPIC: &str = "v2x/v1/obu/car-1/bsm/up/float";

pub fn config(broker: &Mosquitto) -> String {
    format!(
        "[mqtt]\nbroker = \"{}\"\nreconnect_max_ms = 500\n[writer]\nmax_age_s = 0.5\nmax_rows = 5000\n",
        broker.url()
    )
}

/// Counts rows per vehicle id over the whole dataset.
pub fn rows_by_id(data: &std::path::Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for f in parquet_files(&data.join("bsm")) {
        let b = read_parquet(&f);
        let ids = b.column_by_name("vehicle_id").unwrap().as_string::<i32>();
        for i in 0..ids.len() {
            *out.entry(ids.value(i).to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// Files are named `<collector-id>-<sequence>.parquet` (collector ids `test`, or `c1`...
/// when several collectors share a dataset), no temporary
/// file is left, every file reads, and rows are sorted by (source_id, event_ts) in each file.
pub fn assert_dataset_is_clean(data: &Path) {
    for f in all_files(data) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.ends_with(".tmp"),
            "temporary file left: {}",
            f.display()
        );
        if name == "_schema.json" {
            continue;
        }
        let (id, seq) = name
            .strip_suffix(".parquet")
            .and_then(|n| n.split_once('-'))
            .unwrap_or_else(|| panic!("unexpected file {}", f.display()));
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{name}"
        );
        assert!(
            seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()),
            "{name}"
        );
        let b = read_parquet(&f);
        // The message index is sorted by receive time (a message without rows has no event time).
        let time = if f.components().any(|c| c.as_os_str() == "_messages") {
            "recv_ts"
        } else {
            "event_ts"
        };
        if let (Some(src), Some(ts)) = (b.column_by_name("source_id"), b.column_by_name(time)) {
            let src = src.as_string::<i32>();
            let ts = ts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            let sorted = (1..b.num_rows())
                .all(|i| (src.value(i - 1), ts.value(i - 1)) <= (src.value(i), ts.value(i)));
            assert!(sorted, "{} is not sorted", f.display());
        }
    }
}

pub fn assert_exactly_once(data: &std::path::Path, n: usize) -> (usize, usize) {
    assert_dataset_is_clean(data);
    let got = rows_by_id(data);
    let missing = (0..n)
        .filter(|i| !got.contains_key(&format!("m{i}")))
        .count();
    let duplicates: usize = got.values().map(|c| c.saturating_sub(1)).sum();
    let unexpected = got.keys().filter(|k| {
        k.strip_prefix('m')
            .and_then(|n| n.parse::<usize>().ok())
            .is_none_or(|i| i >= n)
    });
    assert_eq!(unexpected.count(), 0);
    (missing, duplicates)
}

/// Lets a final, uninterrupted collector drain the broker, then stops it cleanly.
pub fn drain(ws: &Workspace, broker: &Mosquitto) {
    let mut c = ws.start(&config(broker), &[]);
    let start = Instant::now();
    let mut last = (0u64, Instant::now());
    while start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(250));
        let received = c.stats().and_then(|s| s["received"].as_u64()).unwrap_or(0);
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            // The publisher has finished; 3 s without a new message means the broker's
            // queue for us is empty.
            break;
        }
    }
    let status = c.stop();
    assert!(status.success(), "{}", c.log_text());
}

/// One HTTP/1.1 GET on loopback: (status, body). `token` becomes a Bearer header.
pub fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = raw[split..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The radar capture's topic (500 frames, 11,165 targets).
pub const RADAR_TOPIC: &str = "V2X/RADAR/N22W75HMBLD/TRACK/UP";

/// Runs `v2x-collector replay --broker <broker> ARGS...` and asserts it succeeded.
pub fn replay(broker: &Mosquitto, args: &[&str]) {
    let out = bin()
        .arg("replay")
        .arg("--broker")
        .arg(broker.url())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replays the real radar capture (11,165 rows of `radar_target`).
pub fn replay_radar(broker: &Mosquitto) {
    let track = shared("openv2x-radar/track.json");
    replay(broker, &["--topic", RADAR_TOPIC, track.to_str().unwrap()]);
}

/// The build's target directory (`CARGO_TARGET_DIR` or `./target`), where tests cache venvs.
#[allow(dead_code)]
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
            }
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs `cmd` and returns its output; a failure to start or a non-zero exit fails the test with
/// `what`, the command and both output streams.
#[allow(dead_code)]
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python of a venv `<target>/<name>` that can `import <import>`, made once with
/// `packages` (and `optional` ones when they install) and kept. Built under a private name and
/// renamed into place, so a concurrent run never sees a half-made venv; run it as
/// `python -m ...`, never through the venv's bin/ scripts (their shebangs name the build path).
/// Any failure fails the test with the reason.
#[allow(dead_code)]
pub fn python_venv(name: &str, import: &str, packages: &[&str], optional: &[&str]) -> PathBuf {
    let venv = target_dir().join(name);
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import {import}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&py) {
        return py;
    }
    let tmp = target_dir().join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(target_dir()).unwrap();
    let started = Instant::now();
    run_ok(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        &format!(
            "creating the {name} venv with `python3 -m venv` (Debian needs python3-venv; \
             tools/test.sh installs it)"
        ),
    );
    let tmp_py = tmp.join("bin/python");
    let pip = |pkgs: &[&str]| {
        let mut c = Command::new(&tmp_py);
        c.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .args(pkgs);
        c
    };
    run_ok(
        &mut pip(packages),
        &format!("pip install {} into the {name} venv", packages.join(" ")),
    );
    for p in optional {
        let out = pip(&[p]).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("note: optional {p} did not install into {name}: {out:?}");
        }
    }
    if std::fs::rename(&tmp, &venv).is_err() {
        // Another run finished first, or a broken venv is in the way.
        if ready(&py) {
            let _ = std::fs::remove_dir_all(&tmp);
            return py;
        }
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::rename(&tmp, &venv).unwrap();
    }
    eprintln!(
        "made {} in {:.1} s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(ready(&py), "{} cannot import {import}", py.display());
    py
}

// ---- Every real capture, on its device's topic ----

/// The `payload` of a tavern capture and the topic it was published on.
fn tavern(name: &str) -> (String, String) {
    let text = std::fs::read_to_string(shared(&format!("openv2x-payloads/{name}"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["publish_topic"].as_str().unwrap().to_string(),
        v["payload"].to_string(),
    )
}

/// Every message of every capture in `../shared/data` (2,049), as (topic, one-line JSON) in
/// the order the captures list them: radar track frames and the radar's other feeds on
/// `V2X/RADAR/{esn}/{feed}/UP`, the RSM and tavern payloads on their recorded topics, and the
/// J2735 ODE renderings on the RSU or OBU topics of their kind (no vendor suffix: the
/// collector detects the ODE shape).
pub fn every_capture() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for feed in ["track", "cross", "flow", "status", "event"] {
        let topic = format!("V2X/RADAR/N22W75HMBLD/{}/UP", feed.to_uppercase());
        let text = std::fs::read_to_string(shared(&format!("openv2x-radar/{feed}.json"))).unwrap();
        let items: Vec<serde_json::Value> =
            serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
        out.extend(items.iter().map(|v| (topic.clone(), v.to_string())));
    }
    let rsm = std::fs::read_to_string(shared("openv2x-payloads/derived_rsm_std_payloads.ndjson"))
        .unwrap();
    out.extend(
        rsm.lines()
            .map(|l| ("V2X/RSU/R328328/RSM/UP".to_string(), l.to_string())),
    );
    for name in ["clc", "dnp", "mwr", "rsi", "rsm", "sds"] {
        out.push(tavern(&format!("tavern_{name}_payload.json")));
    }
    for (file, topic) in [
        ("valid.bsm.json", "V2X/OBU/12A7A951/BSM/UP"),
        ("sample.processed-bsm.json", "V2X/OBU/12A7A951/BSM/UP"),
        ("valid.spat.json", "V2X/RSU/RSU12111/SPAT/UP"),
        ("sample.processed-spat.json", "V2X/RSU/RSU12110/SPAT/UP"),
        ("valid.map.json", "V2X/RSU/RSU12110/MAP/UP"),
        ("valid.psm.json", "V2X/RSU/RSU12110/PSM/UP"),
        ("sample-psm.json", "V2X/RSU/RSU12110/PSM/UP"),
        ("sample-sdsm.json", "V2X/RSU/RSU12110/SDSM/UP"),
    ] {
        let text = std::fs::read_to_string(shared(&format!("usdot-jpo/{file}"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        out.push((topic.to_string(), v.to_string()));
    }
    out
}
