//! `v2x-collector top`: the dashboard's figures in a terminal.
//!
//! Polls `GET /api/status` once a second and redraws with plain ANSI escapes: the header
//! (id, version, uptime, readiness and health), the totals, one line per kind (counts, rates
//! over 10 s, 1 min and 15 min, a sparkline of the last 15 minutes), the sources with the
//! silent ones first, quarantine counts by reason with recent examples, and WAL and disk use.
//! `--once` prints one frame without escapes, for scripts.
//!
//! The HTTP client is a plain HTTP/1.1 GET over `std::net::TcpStream`: one request a second
//! to a loopback or LAN address does not justify an HTTP client stack in the binary.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How often the live view polls.
const INTERVAL: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Columns of the per-kind sparkline (the 15-minute history is averaged down to this).
const SPARK_WIDTH: usize = 30;
/// Recent quarantine examples shown.
const RECENT_EXAMPLES: usize = 3;

/// Why `top` could not show the collector's status.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("{0:?} is not a host:port address (example: 127.0.0.1:9180, or https://host:9180)")]
    BadAddress(String),
    #[error("HTTPS to the collector: {0}")]
    Tls(String),
    #[error(
        "cannot reach the collector at {addr}: {source} (is `v2x-collector run` up, and is --http its HTTP address?)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "the collector at {addr} refused the request ({status}): pass its HTTP token with --token"
    )]
    Unauthorized { addr: String, status: u16 },
    #[error("the collector at {addr} answered {status} to GET /api/status: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("the collector at {addr} sent a malformed HTTP response: {reason}")]
    Http { addr: String, reason: &'static str },
    #[error("the collector at {addr} sent a status this top cannot read: {source}")]
    Json {
        addr: String,
        source: serde_json::Error,
    },
    #[error("cannot write to the terminal: {0}")]
    Terminal(#[source] std::io::Error),
}

/// The `/api/status` document (see the HTTP contract). Every field has a default so a
/// collector of another version still shows what both know.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: String,
    pub collector_id: String,
    pub started: String,
    pub now: String,
    pub uptime_s: f64,
    pub silent_after_s: f64,
    pub ready: bool,
    pub health: Health,
    pub totals: Totals,
    pub history_step_s: f64,
    pub kinds: Vec<KindStatus>,
    pub sources: Vec<SourceStatus>,
    pub quarantine: QuarantineStatus,
    pub wal: WalStatus,
    pub disk: DiskStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Health {
    pub connected: bool,
    pub subscribed: bool,
    pub wal_ok: bool,
    pub wal_full: bool,
    pub disk_full: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub received: u64,
    pub acked: u64,
    pub decoded: u64,
    pub rows: u64,
    pub quarantined: u64,
    pub dedup_hits: u64,
    pub gap_messages: u64,
    pub files_committed: u64,
    pub rows_committed: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KindStatus {
    pub kind: String,
    pub messages: u64,
    pub rows: u64,
    pub quarantined: u64,
    pub rate_10s: f64,
    pub rate_1m: f64,
    pub rate_15m: f64,
    pub history: Vec<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SourceStatus {
    pub source_id: String,
    pub kinds: Vec<String>,
    pub messages: u64,
    pub quarantined: u64,
    pub gaps: u64,
    pub rate_10s: f64,
    pub last_seen: Option<String>,
    pub silent_for_s: f64,
    pub silent: bool,
    /// Receive minus event time, smoothed (delay plus clock offset); none before a row came.
    pub delay_avg_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QuarantineStatus {
    pub total: u64,
    pub by_reason: Vec<ReasonCount>,
    pub recent: Vec<QuarantineExample>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QuarantineExample {
    pub at: String,
    pub reason: String,
    pub topic: String,
    pub source_id: Option<String>,
    pub detail: String,
    pub payload_head: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WalStatus {
    pub bytes: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DiskStatus {
    pub data_dir: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Shows the collector at `addr` (`host:port`, an `http://` prefix is accepted). `once`
/// prints one plain frame and returns; otherwise redraws every second until Ctrl-C, showing
/// connection failures on screen and retrying. A refused token ends both modes.
pub fn run(
    addr: &str,
    token: Option<&str>,
    once: bool,
    ca_file: Option<&Path>,
) -> Result<(), TopError> {
    let addr = Target::new(addr, ca_file)?;
    if once {
        let status = fetch_status(&addr, token)?;
        let frame = render(&status, &View::plain());
        return std::io::stdout()
            .lock()
            .write_all(frame.as_bytes())
            .map_err(TopError::Terminal);
    }
    let color = std::env::var_os("NO_COLOR").is_none();
    loop {
        let next = Instant::now() + INTERVAL;
        let view = View {
            color,
            max_lines: terminal_rows(),
        };
        let body = match fetch_status(&addr, token) {
            Ok(status) => render(&status, &view),
            Err(e @ TopError::Unauthorized { .. }) => return Err(e),
            Err(e) => render_error(&e, &view),
        };
        draw(&body)?;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// Redraws in place: home, each line cleared to its end, the rest of the screen cleared.
/// No alternate screen and no hidden cursor, so an interrupted `top` leaves the terminal
/// as it found it.
fn draw(frame: &str) -> Result<(), TopError> {
    let mut out = String::with_capacity(frame.len() + 512);
    out.push_str("\x1b[H");
    for line in frame.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(TopError::Terminal)
}

/// The terminal's height, `None` when stdout is not a terminal.
fn terminal_rows() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which outlives the call.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0).then_some(usize::from(size.ws_row))
}

/// Splits `[http://|https://]host:port[/]` into whether it is HTTPS and `host:port`.
fn normalize_addr(addr: &str) -> Result<(bool, String), TopError> {
    let a = addr.trim();
    let (https, a) = match a.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, a.strip_prefix("http://").unwrap_or(a)),
    };
    let a = a.trim_end_matches('/');
    if a.is_empty() || a.contains('/') || !a.contains(':') {
        return Err(TopError::BadAddress(addr.to_string()));
    }
    Ok((https, a.to_string()))
}

/// Where the collector's HTTP server is, and how to speak to it.
pub struct Target {
    /// `host:port`, also the name used in messages.
    addr: String,
    /// HTTPS: the client configuration and the name the certificate must carry.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

impl Target {
    /// `addr` as `normalize_addr` takes it; `https://` verifies the server's certificate
    /// against `ca_file` (PEM) or the system roots, with the host name checked.
    pub fn new(addr: &str, ca_file: Option<&Path>) -> Result<Target, TopError> {
        let (https, addr) = normalize_addr(addr)?;
        if !https {
            if ca_file.is_some() {
                return Err(TopError::Tls(
                    "--ca-file is for an https:// address".to_string(),
                ));
            }
            return Ok(Target { addr, tls: None });
        }
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let settings = crate::config::MqttTlsConfig {
            ca_file: ca_file.map(Path::to_path_buf),
            ..Default::default()
        };
        let client = crate::source::tls::client_tls(&settings, &host)
            .map_err(|e| TopError::Tls(e.to_string().replace("mqtt.tls.ca_file", "--ca-file")))?;
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| TopError::Tls(e.to_string()))?;
        Ok(Target {
            addr,
            tls: Some((client.config, name)),
        })
    }
}

/// One `GET /api/status`, decoded.
pub fn fetch_status(target: &Target, token: Option<&str>) -> Result<Status, TopError> {
    let addr = &target.to_string();
    let raw = get(target, "/api/status", token).map_err(|source| TopError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    let (status, body) = parse_response(&raw).map_err(|reason| TopError::Http {
        addr: addr.to_string(),
        reason,
    })?;
    match status {
        200 => serde_json::from_slice(&body).map_err(|source| TopError::Json {
            addr: addr.to_string(),
            source,
        }),
        401 | 403 => Err(TopError::Unauthorized {
            addr: addr.to_string(),
            status,
        }),
        _ => Err(TopError::Status {
            addr: addr.to_string(),
            status,
            body: String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        }),
    }
}

fn get(target: &Target, path: &str, token: Option<&str>) -> std::io::Result<Vec<u8>> {
    let addr = target.addr.as_str();
    let mut last = None;
    let mut stream = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let s = stream.ok_or_else(|| {
        last.unwrap_or_else(|| std::io::Error::other("the name resolved to no address"))
    })?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n"
    );
    match &target.tls {
        None => exchange(s, &request),
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(std::io::Error::other)?;
            exchange(rustls::StreamOwned::new(conn, s), &request)
        }
    }
}

/// Sends `request` and reads the response until the server closes the connection.
fn exchange(mut s: impl Read + Write, request: &str) -> std::io::Result<Vec<u8>> {
    s.write_all(request.as_bytes())?;
    s.flush()?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // A TLS server that closes without close_notify has still sent the whole response
        // (Connection: close); a cut body fails the HTTP parsing instead.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// Splits an HTTP/1.1 response into its status code and body (de-chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), &'static str> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("http/1.") {
        return Err("not an HTTP/1 response");
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status code")?;
    let body = &raw[split + 4..];
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim() == "transfer-encoding" && value.contains("chunked")
        })
    });
    if chunked {
        dechunk(body).map(|b| (status, b))
    } else {
        Ok((status, body.to_vec()))
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk size")?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size")?;
        let rest = &body[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if rest.len() < n {
            return Err("truncated chunk");
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").ok_or("truncated chunk")?;
    }
}

/// How a frame is drawn.
#[derive(Debug, Clone)]
pub struct View {
    /// ANSI colours (red for silent sources and failed health, green for good health).
    pub color: bool,
    /// Terminal height: the sources table is cut to fit (silent sources come first, so they
    /// stay visible). `None` prints every source.
    pub max_lines: Option<usize>,
}

impl View {
    /// No escapes, nothing cut: for `--once` and tests.
    pub fn plain() -> View {
        View {
            color: false,
            max_lines: None,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn red(&self, text: &str) -> String {
        self.paint("1;31", text)
    }
    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// One frame of the view, lines separated by `\n`.
pub fn render(s: &Status, view: &View) -> String {
    let mut out = String::new();
    header(&mut out, s, view);
    out.push('\n');
    kinds(&mut out, s, view);
    out.push('\n');
    quarantine(&mut out, s, view);
    storage(&mut out, s, view);
    out.push('\n');
    // The sources table goes last: it is the one that can be long, and is cut to fit.
    let used = out.lines().count();
    let room = view
        .max_lines
        .map(|rows| rows.saturating_sub(used + 3).max(1));
    sources(&mut out, s, view, room);
    out
}

fn render_error(e: &TopError, view: &View) -> String {
    format!(
        "{}\n\n{}\n\nretrying every {} s; Ctrl-C quits\n",
        view.bold("v2x-collector top"),
        view.red(&e.to_string()),
        INTERVAL.as_secs()
    )
}

fn header(out: &mut String, s: &Status, view: &View) {
    let ready = if s.ready {
        view.green("READY")
    } else {
        view.red("NOT READY")
    };
    let h = &s.health;
    let flag = |ok: bool, good: &str, bad: &str| {
        if ok { view.green(good) } else { view.red(bad) }
    };
    let mut flags = vec![
        flag(h.connected, "connected", "DISCONNECTED"),
        flag(h.subscribed, "subscribed", "NOT SUBSCRIBED"),
        flag(h.wal_ok, "wal ok", "WAL FAILING"),
    ];
    if h.wal_full {
        flags.push(view.red("WAL FULL"));
    }
    if h.disk_full {
        flags.push(view.red("DISK FULL"));
    }
    let _ = writeln!(
        out,
        "{}  v{}  up {}  {}  {}",
        view.bold(&format!("v2x-collector {}", s.collector_id)),
        s.version,
        duration(s.uptime_s),
        ready,
        flags.join(" ")
    );
    let t = &s.totals;
    let _ = writeln!(
        out,
        "received {}  acked {}  decoded {}  rows {}  quarantined {}  dedup {}  missed (gaps) {}  files {}",
        t.received,
        t.acked,
        t.decoded,
        t.rows,
        t.quarantined,
        t.dedup_hits,
        t.gap_messages,
        t.files_committed
    );
}

fn kinds(out: &mut String, s: &Status, view: &View) {
    let w = s
        .kinds
        .iter()
        .map(|k| k.kind.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let _ = writeln!(
        out,
        "{}",
        view.bold(&format!(
            "{:<w$}  {:>10}  {:>10}  {:>8}  {:>8}  {:>8}  {:>8}  msg/s, last 15 min",
            "KIND", "MESSAGES", "ROWS", "QUARANT.", "10s/s", "1m/s", "15m/s"
        ))
    );
    for k in &s.kinds {
        let line = format!(
            "{:<w$}  {:>10}  {:>10}  {:>8}  {:>8}  {:>8}  {:>8}  {}",
            k.kind,
            k.messages,
            k.rows,
            k.quarantined,
            rate(k.rate_10s),
            rate(k.rate_1m),
            rate(k.rate_15m),
            sparkline(&k.history, SPARK_WIDTH)
        )
        .trim_end()
        .to_string();
        let _ = writeln!(
            out,
            "{}",
            if k.messages == 0 {
                view.dim(&line)
            } else {
                line
            }
        );
    }
}

fn sources(out: &mut String, s: &Status, view: &View, room: Option<usize>) {
    let silent = s.sources.iter().filter(|x| x.silent).count();
    let _ = writeln!(
        out,
        "{}",
        view.bold(&format!(
            "SOURCES {}  silent {}  (silent after {} s without a message)",
            s.sources.len(),
            silent,
            trim_float(s.silent_after_s)
        ))
    );
    if s.sources.is_empty() {
        out.push_str("no source has sent a message yet\n");
        return;
    }
    let mut sorted: Vec<&SourceStatus> = s.sources.iter().collect();
    sorted.sort_by(|a, b| {
        b.silent
            .cmp(&a.silent)
            .then_with(|| a.source_id.cmp(&b.source_id))
    });
    let w = sorted
        .iter()
        .map(|x| x.source_id.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let _ = writeln!(
        out,
        "{}",
        view.bold(&format!(
            "{:<w$}  {:<6}  {:>10}  {:>8}  {:>6}  {:>8}  {:>10}  {:>9}  KINDS",
            "SOURCE", "STATE", "MESSAGES", "QUARANT.", "GAPS", "10s/s", "LAST SEEN", "DELAY"
        ))
    );
    // One line is kept for the "more" note when the table is cut.
    let shown = match room {
        Some(r) if sorted.len() > r => r.saturating_sub(1).max(1),
        _ => sorted.len(),
    };
    for x in &sorted[..shown] {
        let line = format!(
            "{:<w$}  {:<6}  {:>10}  {:>8}  {:>6}  {:>8}  {:>10}  {:>9}  {}",
            x.source_id,
            if x.silent { "SILENT" } else { "ok" },
            x.messages,
            x.quarantined,
            x.gaps,
            rate(x.rate_10s),
            format!("{} ago", duration(x.silent_for_s)),
            delay(x.delay_avg_ms),
            x.kinds.join(",")
        );
        let _ = writeln!(out, "{}", if x.silent { view.red(&line) } else { line });
    }
    if shown < sorted.len() {
        let _ = writeln!(
            out,
            "... {} more (all of them: `top --once` or the dashboard)",
            sorted.len() - shown
        );
    }
}

fn quarantine(out: &mut String, s: &Status, view: &View) {
    let q = &s.quarantine;
    let mut reasons: Vec<&ReasonCount> = q.by_reason.iter().filter(|r| r.count > 0).collect();
    reasons.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    let listed = if reasons.is_empty() {
        "none".to_string()
    } else {
        reasons
            .iter()
            .map(|r| format!("{} {}", r.reason, r.count))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(
        out,
        "{} {}  {}",
        view.bold("QUARANTINE"),
        q.total,
        if q.total > 0 {
            view.red(&listed)
        } else {
            listed
        }
    );
    // The newest examples, whichever end of the list the server puts them.
    let mut recent: Vec<&QuarantineExample> = q.recent.iter().collect();
    recent.sort_by(|a, b| b.at.cmp(&a.at));
    for e in recent.into_iter().take(RECENT_EXAMPLES) {
        let detail = if e.detail.is_empty() {
            &e.payload_head
        } else {
            &e.detail
        };
        let _ = writeln!(
            out,
            "  {}  {}  {}  {}",
            e.at,
            e.reason,
            e.topic,
            clip(&one_line(detail), 80)
        );
    }
}

fn storage(out: &mut String, s: &Status, view: &View) {
    let wal = &s.wal;
    let wal_line = if wal.max_bytes > 0 {
        let share = wal.bytes as f64 / wal.max_bytes as f64;
        let text = format!(
            "WAL   {} of {} ({})",
            bytes(wal.bytes),
            bytes(wal.max_bytes),
            percent(share)
        );
        if share > 0.8 { view.red(&text) } else { text }
    } else {
        format!("WAL   {} (no bound)", bytes(wal.bytes))
    };
    let _ = writeln!(out, "{wal_line}");
    let d = &s.disk;
    let disk_line = if d.total_bytes > 0 {
        let free = d.free_bytes as f64 / d.total_bytes as f64;
        let text = format!(
            "DISK  {} free of {} ({} used) at {}",
            bytes(d.free_bytes),
            bytes(d.total_bytes),
            percent(1.0 - free),
            d.data_dir
        );
        if free < 0.1 { view.red(&text) } else { text }
    } else {
        format!("DISK  unknown at {}", d.data_dir)
    };
    let _ = writeln!(out, "{disk_line}");
}

/// `history` averaged down to at most `width` columns of block characters, scaled to its
/// own maximum. Empty history gives an empty string.
fn sparkline(history: &[f64], width: usize) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if history.is_empty() || width == 0 {
        return String::new();
    }
    let per = history.len().div_ceil(width);
    // Group from the newest end so the last column is always the newest data.
    let mut cols: Vec<f64> = history
        .rchunks(per)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    cols.reverse();
    let max = cols.iter().copied().fold(0.0_f64, f64::max);
    cols.iter()
        .map(|v| {
            if max <= 0.0 || !v.is_finite() {
                BLOCKS[0]
            } else {
                let i = ((v / max) * (BLOCKS.len() - 1) as f64).round() as usize;
                BLOCKS[i.min(BLOCKS.len() - 1)]
            }
        })
        .collect()
}

fn rate(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Seconds as `45.2s`, `3m 07s`, `2h 03m`, `4d 01h`.
/// A delay in ms as the sources table shows it: `-` when unknown, seconds beyond 10 s.
fn delay(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms.abs() < 10_000.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{:.1} s", ms / 1e3),
    }
}

fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_string();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match s {
        0..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes in binary units with one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's example, with a silent source and some quarantine.
    const FIXTURE: &str = r#"{
      "version": "0.1.0",
      "collector_id": "edge-7",
      "started": "2026-11-29T15:00:00Z",
      "now": "2026-11-29T16:02:03.123Z",
      "uptime_s": 3723.1,
      "silent_after_s": 10.0,
      "ready": false,
      "health": {"connected": true, "subscribed": true, "wal_ok": true, "wal_full": false, "disk_full": true},
      "totals": {"received": 630, "acked": 630, "decoded": 623, "rows": 1623, "quarantined": 7,
                 "dedup_hits": 2, "gap_messages": 4, "files_committed": 12, "rows_committed": 1500},
      "history_step_s": 5,
      "kinds": [
        {"kind": "bsm", "messages": 123, "rows": 123, "quarantined": 2,
         "rate_10s": 10.0, "rate_1m": 9.8, "rate_15m": 2.1, "history": [0.0, 10.2, 9.8]},
        {"kind": "rsm_participant", "messages": 500, "rows": 1500, "quarantined": 0,
         "rate_10s": 20.0, "rate_1m": 19.5, "rate_15m": 4.25, "history": [5.0, 20.0]},
        {"kind": "spat_phase", "messages": 0, "rows": 0, "quarantined": 0,
         "rate_10s": 0.0, "rate_1m": 0.0, "rate_15m": 0.0, "history": []}
      ],
      "sources": [
        {"source_id": "RSU0001", "kinds": ["rsm_participant", "spat_phase"], "messages": 500,
         "quarantined": 0, "gaps": 0, "rate_10s": 20.0,
         "last_seen": "2026-11-29T16:02:02.900Z", "silent_for_s": 0.2, "silent": false},
        {"source_id": "RSU0002", "kinds": ["rsm_participant"], "messages": 42,
         "quarantined": 1, "gaps": 3, "rate_10s": 0.0,
         "last_seen": "2026-11-29T16:00:00.000Z", "silent_for_s": 123.1, "silent": true},
        {"source_id": "car-1", "kinds": ["bsm"], "messages": 123,
         "quarantined": 2, "gaps": 0, "rate_10s": 10.0,
         "last_seen": "2026-11-29T16:02:03.000Z", "silent_for_s": 0.1, "silent": false}
      ],
      "quarantine": {"total": 7,
        "by_reason": [{"reason": "invalid_json", "count": 5}, {"reason": "type_mismatch", "count": 2},
                      {"reason": "too_large", "count": 0}],
        "recent": [
          {"at": "2026-11-29T16:01:00.000Z", "reason": "invalid_json", "topic": "v2x/v1/obu/car-1/bsm/up/float",
           "source_id": "car-1", "detail": "expected value at line 1 column 1", "payload_head": "not json"},
          {"at": "2026-11-29T16:02:00.000Z", "reason": "type_mismatch", "topic": "V2X/RSU/RSU0002/RSM/UP",
           "source_id": null, "detail": "", "payload_head": "{\"speed\":\"fast\"\n}"}
        ]},
      "wal": {"bytes": 943718400, "max_bytes": 1073741824},
      "disk": {"data_dir": "./data", "free_bytes": 5368709120, "total_bytes": 107374182400}
    }"#;

    fn fixture() -> Status {
        serde_json::from_str(FIXTURE).unwrap()
    }

    fn line_with<'a>(frame: &'a str, needle: &str) -> &'a str {
        frame
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting with {needle:?} in\n{frame}"))
    }

    #[test]
    fn plain_frame_has_no_escapes_and_shows_the_header() {
        let frame = render(&fixture(), &View::plain());
        assert!(!frame.contains('\x1b'), "{frame}");
        let first = frame.lines().next().unwrap();
        assert_eq!(
            first,
            "v2x-collector edge-7  v0.1.0  up 1h 02m  NOT READY  connected subscribed wal ok DISK FULL"
        );
        assert_eq!(
            frame.lines().nth(1).unwrap(),
            "received 630  acked 630  decoded 623  rows 1623  quarantined 7  dedup 2  missed (gaps) 4  files 12"
        );
    }

    #[test]
    fn every_kind_has_its_counts_and_three_rates() {
        let frame = render(&fixture(), &View::plain());
        let fields: Vec<&str> = line_with(&frame, "rsm_participant  ")
            .split_whitespace()
            .collect();
        assert_eq!(
            &fields[..7],
            ["rsm_participant", "500", "1500", "0", "20.0", "19.5", "4.2"]
        );
        let bsm: Vec<&str> = line_with(&frame, "bsm ").split_whitespace().collect();
        assert_eq!(&bsm[..7], ["bsm", "123", "123", "2", "10.0", "9.8", "2.1"]);
        // A kind with no traffic is still listed.
        let spat: Vec<&str> = line_with(&frame, "spat_phase  ")
            .split_whitespace()
            .collect();
        assert_eq!(spat, ["spat_phase", "0", "0", "0", "0.0", "0.0", "0.0"]);
    }

    #[test]
    fn silent_sources_come_first_then_by_id() {
        let frame = render(&fixture(), &View::plain());
        let order: Vec<&str> = frame
            .lines()
            .skip_while(|l| !l.starts_with("SOURCE "))
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(order, ["RSU0002", "RSU0001", "car-1"]);
        let silent = line_with(&frame, "RSU0002");
        assert!(silent.contains("SILENT"), "{silent}");
        assert!(silent.contains("2m 03s ago"), "{silent}");
        assert!(!line_with(&frame, "RSU0001 ").contains("SILENT"));
        assert!(frame.contains("SOURCES 3  silent 1  (silent after 10 s"));
    }

    #[test]
    fn colour_marks_silent_sources_red() {
        let view = View {
            color: true,
            max_lines: None,
        };
        let frame = render(&fixture(), &view);
        assert!(line_with(&frame, "\x1b[1;31mRSU0002").contains("SILENT"));
        assert!(!line_with(&frame, "RSU0001 ").contains("\x1b["));
        assert!(frame.contains("\x1b[1;31mNOT READY\x1b[0m"));
    }

    #[test]
    fn quarantine_by_reason_with_the_newest_examples() {
        let frame = render(&fixture(), &View::plain());
        assert_eq!(
            line_with(&frame, "QUARANTINE "),
            "QUARANTINE 7  invalid_json 5  type_mismatch 2"
        );
        let examples: Vec<&str> = frame.lines().filter(|l| l.starts_with("  2026")).collect();
        assert_eq!(examples.len(), 2);
        // Newest first; an empty detail falls back to the payload head, on one line.
        assert!(
            examples[0].contains("type_mismatch  V2X/RSU/RSU0002/RSM/UP  {\"speed\":\"fast\" }")
        );
        assert!(examples[1].contains("expected value at line 1 column 1"));
    }

    #[test]
    fn wal_and_disk_use() {
        let frame = render(&fixture(), &View::plain());
        assert_eq!(
            line_with(&frame, "WAL "),
            "WAL   900.0 MiB of 1.0 GiB (87.9%)"
        );
        assert_eq!(
            line_with(&frame, "DISK "),
            "DISK  5.0 GiB free of 100.0 GiB (95.0% used) at ./data"
        );
    }

    #[test]
    fn a_short_terminal_cuts_the_sources_but_keeps_the_silent_ones() {
        let view = View {
            color: false,
            max_lines: Some(1),
        };
        let frame = render(&fixture(), &view);
        assert!(frame.contains("RSU0002"), "{frame}");
        assert!(!frame.contains("car-1  "), "{frame}");
        assert!(frame.contains("... 2 more"), "{frame}");
    }

    #[test]
    fn an_older_or_partial_status_still_renders() {
        let s: Status =
            serde_json::from_str(r#"{"version": "0.0.9", "kinds": [{"kind": "bsm"}]}"#).unwrap();
        let frame = render(&s, &View::plain());
        assert!(frame.contains("no source has sent a message yet"));
        assert!(frame.contains("WAL   0 B (no bound)"));
    }

    #[test]
    fn sparkline_keeps_the_newest_column_and_scales_to_the_max() {
        assert_eq!(sparkline(&[0.0, 5.0, 10.0], 30), "▁▅█");
        assert_eq!(sparkline(&[], 30), "");
        assert_eq!(sparkline(&[0.0; 4], 30), "▁▁▁▁");
        // 180 buckets of 5 s become 30 columns of 30 s.
        let h: Vec<f64> = (0..180).map(|i| i as f64).collect();
        let s = sparkline(&h, 30);
        assert_eq!(s.chars().count(), 30);
        assert!(s.ends_with('█'));
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(duration(4.25), "4.2s");
        assert_eq!(duration(187.0), "3m 07s");
        assert_eq!(duration(7380.0), "2h 03m");
        assert_eq!(duration(90000.0), "1d 01h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn http_responses_with_length_or_chunks() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(raw).unwrap(), (200, b"{}".to_vec()));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let raw = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().0, 401);
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            normalize_addr("127.0.0.1:9180").unwrap(),
            (false, "127.0.0.1:9180".to_string())
        );
        assert_eq!(
            normalize_addr("https://edge:9180/").unwrap(),
            (true, "edge:9180".to_string())
        );
        assert_eq!(
            normalize_addr("http://localhost:9180/").unwrap(),
            (false, "localhost:9180".to_string())
        );
        assert!(normalize_addr("localhost").is_err());
        assert!(normalize_addr("http://h:1/api").is_err());
    }

    #[test]
    fn a_closed_port_is_a_connect_error_naming_the_address() {
        // Bind then drop: nothing listens on the port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let err = fetch_status(&Target::new(&addr, None).unwrap(), None).unwrap_err();
        assert!(matches!(err, TopError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
