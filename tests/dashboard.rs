//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`) driven over the
//! DevTools protocol, against a collector fed by `simulate` through a real mosquitto.
//!
//! The page must show a non-zero rate for every simulated kind and list every simulated source;
//! after one simulated source stops it must show that source, and only that one, as silent; a
//! hostile quarantined payload must appear as text; when the collector is gone the page says so.
//! Screenshots land in `<target>/test-artifacts/`. Every wait is bounded; no timing is asserted.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Every kind `simulate` produces (src/sim/zone.rs; its unit test checks there are 11).
const FLEET_KINDS: [&str; 11] = [
    "bsm",
    "device_status",
    "map_lane",
    "psm",
    "radar_target",
    "rsi_event",
    "rsm_participant",
    "spat_phase",
    "ssm_object",
    "vehicle_object",
    "vehicle_state",
];
/// The sources of `simulate --rsus 2 --vehicles 2`: each RSU, its radar, each vehicle.
const FLEET_SOURCES: [&str; 6] = [
    "RSU0001", "RSU0001R", "RSU0002", "RSU0002R", "veh-0001", "veh-0002",
];
/// The second simulator's single vehicle, stopped half way.
const EXTRA_PREFIX: &str = "extra-";
const EXTRA_SOURCE: &str = "extra-veh-0001";
const SILENT_AFTER_S: f64 = 3.0;
/// Not JSON, so quarantined; the page must show it as text and never run it.
const HOSTILE: &[u8] =
    b"<img src=x onerror=\"document.body.dataset.pwned=1\"><script>document.body.dataset.pwned=2</script>";

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn dashboard_shows_live_rates_sources_and_a_source_going_silent() {
    let broker = common::Mosquitto::start();
    let ws = common::Workspace::new();
    let config = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\nsilent_after_s = {SILENT_AFTER_S}\n",
        common::config(&broker)
    );
    let mut collector = ws.start(&config, &[]);
    let addr = collector.http_addr();

    let mut browser = Chromium::start();
    browser.navigate(&format!("http://{addr}/"));
    // The page is up and polling before any traffic, so it sees the rare kinds' first messages.
    wait_page(&mut browser, &collector, "its first poll", |p| {
        let mut missing = Vec::new();
        if p["polls"].as_u64().unwrap_or(0) == 0 {
            missing.push("a completed poll".to_string());
        }
        if !p["error"].is_null() {
            missing.push(format!("no connection error (shows {})", p["error"]));
        }
        missing
    });

    let mut fleet = Simulator::start(
        &ws,
        "fleet",
        &broker,
        &["--rsus", "2", "--vehicles", "2", "--hz", "5"],
    );
    let mut extra = Simulator::start(
        &ws,
        "extra",
        &broker,
        &[
            "--rsus",
            "0",
            "--vehicles",
            "1",
            "--hz",
            "5",
            "--id-prefix",
            EXTRA_PREFIX,
        ],
    );
    common::publish_bytes(broker.port, "V2X/RSU/RSU0001/RSM/UP", HOSTILE);

    // Heartbeats (every 100 ticks) and RSI (every 300) are in the 10 s window only part of the
    // time, so a kind (or source) counts once it has been seen with a non-zero rate.
    let all_sources: Vec<&str> = FLEET_SOURCES
        .iter()
        .copied()
        .chain([EXTRA_SOURCE])
        .collect();
    let mut live_kinds: BTreeSet<&str> = BTreeSet::new();
    let mut live_sources: BTreeSet<&str> = BTreeSet::new();
    let page = wait_page(&mut browser, &collector, "live rates and sources", |p| {
        fleet.assert_running();
        extra.assert_running();
        live_kinds.extend(
            FLEET_KINDS
                .iter()
                .copied()
                .filter(|k| rate(&p["kinds"][*k]) > 0.0),
        );
        live_sources.extend(all_sources.iter().filter(|s| rate(&p["sources"][*s]) > 0.0));
        let mut missing = Vec::new();
        for k in FLEET_KINDS.iter().filter(|k| !live_kinds.contains(*k)) {
            missing.push(format!("kind {k} with a non-zero rate"));
        }
        for s in all_sources.iter().filter(|s| !live_sources.contains(*s)) {
            missing.push(format!("source {s} with a non-zero rate"));
        }
        for s in all_sources
            .iter()
            .filter(|s| p["sources"][**s]["silent"] != false)
        {
            missing.push(format!("source {s} listed and not silent"));
        }
        let hostile_shown = p["quarantine"].as_array().is_some_and(|q| {
            q.iter()
                .any(|t| t.as_str().is_some_and(|t| t.contains("<img src=x")))
        });
        if !hostile_shown {
            missing.push("the hostile payload among the quarantined examples".into());
        }
        missing
    });
    assert_eq!(page["injected"], false, "the hostile payload ran as HTML");
    assert_eq!(page["ready"], "true", "{}", page["text"]);
    let shot = browser.screenshot("dashboard-live.png");
    println!("screenshot: {}", shot.display());

    extra.stop();
    let page = wait_page(
        &mut browser,
        &collector,
        "the stopped source as silent",
        |p| {
            fleet.assert_running();
            let row = &p["sources"][EXTRA_SOURCE];
            let mut missing = Vec::new();
            if row["silent"] != true || row["status"] != "silent" {
                missing.push(format!(
                    "{EXTRA_SOURCE} marked silent, with the word silent"
                ));
            }
            for s in FLEET_SOURCES
                .iter()
                .filter(|s| p["sources"][**s]["silent"] != false)
            {
                missing.push(format!("source {s} listed and not silent"));
            }
            missing
        },
    );
    assert_eq!(page["injected"], false, "the hostile payload ran as HTML");
    let shot = browser.screenshot("dashboard-silent.png");
    println!("screenshot: {}", shot.display());

    // Filtering and sorting hold across refreshes.
    browser.evaluate(
        r#"(() => { const f = document.getElementById("source-filter");
                    f.value = "silent"; f.dispatchEvent(new Event("input")); })()"#,
    );
    let polls = page["polls"].as_u64().unwrap_or(0);
    wait_page(
        &mut browser,
        &collector,
        "only silent sources once filtered",
        |p| match p["order"].as_array() {
            Some(o) if p["polls"].as_u64() > Some(polls + 2) && o == &[json!(EXTRA_SOURCE)] => {
                vec![]
            }
            _ => vec![format!(
                "{EXTRA_SOURCE} alone after two refreshes, not {}",
                p["order"]
            )],
        },
    );
    browser.evaluate(
        r#"(() => { const f = document.getElementById("source-filter");
                    f.value = ""; f.dispatchEvent(new Event("input"));
                    const th = document.querySelector('#sources th[data-sort="messages"]');
                    th.click(); th.click(); })()"#,
    );
    let polls = wait_page(&mut browser, &collector, "all sources again", |p| {
        let n = p["order"].as_array().map_or(0, Vec::len);
        if n == all_sources.len() {
            vec![]
        } else {
            vec![format!("{} rows, not {n}", all_sources.len())]
        }
    })["polls"]
        .as_u64()
        .unwrap_or(0);
    wait_page(
        &mut browser,
        &collector,
        "sources by messages, descending",
        |p| {
            let messages: Vec<f64> = p["order"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    p["sources"][s.as_str().unwrap_or("")]["messages"]
                        .as_f64()
                        .unwrap_or(-1.0)
                })
                .collect();
            let sorted = messages.windows(2).all(|w| w[0] >= w[1]);
            if p["polls"].as_u64() > Some(polls + 2)
                && sorted
                && messages.len() == all_sources.len()
            {
                vec![]
            } else {
                vec![format!(
                    "rows by messages, descending, after two refreshes: {messages:?}"
                )]
            }
        },
    );

    // Without a collector the page says it has lost the connection.
    collector.stop();
    wait_page(
        &mut browser,
        &collector,
        "a connection error",
        |p| match p["error"].as_str() {
            Some(e) if !e.is_empty() => vec![],
            _ => vec!["the connection error box".to_string()],
        },
    );
}

/// A row's `rate_10s` cell (its `data-value`), 0 when absent.
fn rate(row: &Value) -> f64 {
    row["rate_10s"].as_f64().unwrap_or(0.0)
}

/// What the page shows, read through its stable hooks (`tr[data-kind]`, `tr[data-source]`,
/// `td[data-field]` with `data-value` for numbers).
const SNAPSHOT: &str = r#"(() => {
  const err = document.getElementById("conn-error");
  if (!document.body || !err) {
    // Still loading, or not the dashboard at all.
    const text = document.documentElement ? document.documentElement.innerText : "";
    return { polls: 0, error: null, kinds: {}, sources: {}, order: [], quarantine: [], injected: false, text };
  }
  const cells = (tr) => Object.fromEntries([...tr.querySelectorAll("td[data-field]")].map((td) =>
    [td.dataset.field, td.dataset.value !== undefined ? Number(td.dataset.value) : td.textContent]));
  const rows = (sel, key) => Object.fromEntries([...document.querySelectorAll(sel)].map((tr) =>
    [tr.dataset[key], { ...cells(tr), silent: tr.dataset.silent === "true" }]));
  return {
    polls: Number(document.body.dataset.polls || 0),
    error: err && !err.hidden ? err.textContent : null,
    ready: document.getElementById("ready")?.dataset.ready ?? null,
    kinds: rows("tr[data-kind]", "kind"),
    sources: rows("tr[data-source]", "source"),
    order: [...document.querySelectorAll("tr[data-source]")].map((tr) => tr.dataset.source),
    quarantine: [...document.querySelectorAll('#quarantine-recent td[data-field="payload_head"]')]
      .map((td) => td.textContent),
    injected: document.querySelector("main img, main script") !== null
      || document.body.dataset.pwned !== undefined,
    text: document.body.innerText,
  };
})()"#;

/// Reads the page every 250 ms until `missing` returns nothing; panics after [`WAIT`] with
/// what is still missing, the page text and the collector's log.
fn wait_page(
    browser: &mut Chromium,
    collector: &common::Collector,
    what: &str,
    mut missing: impl FnMut(&Value) -> Vec<String>,
) -> Value {
    let start = Instant::now();
    loop {
        let page = browser.evaluate(SNAPSHOT);
        let lacking = missing(&page);
        if lacking.is_empty() {
            return page;
        }
        if start.elapsed() > WAIT {
            let log = collector.log_text();
            let tail = &log[log.floor_char_boundary(log.len().saturating_sub(3000))..];
            panic!(
                "the dashboard did not show {what} within {WAIT:?}; missing:\n  {}\n\
                 --- page text ---\n{}\n--- collector log (tail) ---\n{tail}",
                lacking.join("\n  "),
                page["text"].as_str().unwrap_or(""),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `<target>/test-artifacts/<name>`, where `<target>` is CARGO_TARGET_DIR or ./target.
fn artifact(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A `v2x-collector simulate` process, killed when dropped.
struct Simulator {
    child: Option<Child>,
    name: &'static str,
    log: PathBuf,
}

impl Simulator {
    fn start(
        ws: &common::Workspace,
        name: &'static str,
        broker: &common::Mosquitto,
        args: &[&str],
    ) -> Simulator {
        let log = ws.path().join(format!("simulate-{name}.log"));
        let child = common::bin()
            .arg("simulate")
            .arg("--broker")
            .arg(broker.url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start simulate");
        Simulator {
            child: Some(child),
            name,
            log,
        }
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            panic!(
                "the {} simulator exited early ({status}):\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// The source stops abruptly, as a unit losing power would.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Headless Chromium with its DevTools endpoint on a free port, in a scratch profile. Closed
/// (and its process group killed) when dropped.
struct Chromium {
    child: Child,
    ws: Option<WebSocket<TcpStream>>,
    /// The tab's flat session on the browser connection.
    session: Option<String>,
    next_id: u64,
    profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let exe = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            exe.exists(),
            "{} is missing: install Debian's chromium (tools/test.sh does), or set CHROMIUM",
            exe.display()
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                // Port 0: Chromium picks a free one and writes it to DevToolsActivePort.
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(profile.path().join("chromium.log")).unwrap())
            // Its own process group, so that the renderer and helpers die with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let mut browser = Chromium {
            child,
            ws: None,
            session: None,
            next_id: 0,
            profile,
        };
        let (port, path) = browser.devtools_endpoint();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"));
        browser.ws = Some(ws);
        // One tab, driven through a flat session on the browser's own connection.
        let tab = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": tab["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().map(String::from);
        assert!(browser.session.is_some(), "no DevTools session: {attached}");
        browser
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// The browser's DevTools port and WebSocket path, from DevToolsActivePort.
    fn devtools_endpoint(&mut self) -> (u16, String) {
        let file = self.profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        while start.elapsed() < WAIT {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(Ok(port)), Some(path)) = (lines.next().map(str::parse), lines.next()) {
                return (port, path.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before listening:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "chromium wrote no DevToolsActivePort in {WAIT:?}:\n{}",
            self.log()
        );
    }

    /// One DevTools command, to the tab once attached (`Target.*` and `Browser.*` go to the
    /// browser); events and stale answers in between are skipped.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let ws = self.ws.as_mut().ok_or("not connected")?;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session
            && !method.starts_with("Target.")
            && !method.starts_with("Browser.")
        {
            request["sessionId"] = json!(session);
        }
        ws.send(Message::text(request.to_string()))
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Message::Text(text) = ws.read().map_err(|e| e.to_string())? {
                let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                if v["id"] == id {
                    return match v.get("error") {
                        Some(e) => Err(e.to_string()),
                        None => Ok(v["result"].clone()),
                    };
                }
            }
        }
        Err(format!("no answer in {WAIT:?}"))
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}\n{}", self.log()))
    }

    fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
    }

    /// Evaluates a JavaScript expression in the page and returns its value as JSON.
    fn evaluate(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed in the page: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A PNG of the whole page, saved as a test artefact; returns its path.
    fn screenshot(&mut self, name: &str) -> PathBuf {
        let size = self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]",
        );
        let (w, h) = (
            size[0].as_f64().unwrap_or(1400.0),
            size[1].as_f64().unwrap_or(1000.0),
        );
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
        );
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let path = artifact(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if self.ws.is_some() {
            let _ = self.try_call("Browser.close", json!({}));
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of its group (the group id is the browser's pid).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the DevTools screenshot encoding). Hand-written: a dependency for
/// twenty lines of test code is not worth it.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes_padded_and_unpadded_input() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ"), b"hello world");
    assert_eq!(base64_decode("AAEC/w=="), [0, 1, 2, 255]);
}
