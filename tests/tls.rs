//! TLS: the broker connection matrix against mosquitto's TLS listeners with a CA made here
//! (mutual TLS, the certificate's name as the MQTT user, an ACL per device), HTTPS on the
//! collector's own server, and bad TLS files refused at start.
//!
//! Every wait is bounded; nothing asserts a timing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Collector, Mosquitto, Workspace, bin, free_port, http_get, messages};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// The device's own topic: its certificate name is the source id in the topic.
const OWN_TOPIC: &str = "v2x/v1/rsu/rsu-7/bsm/up/float";
/// Another device's topic, which the ACL does not let `rsu-7` write.
const OTHER_TOPIC: &str = "v2x/v1/rsu/rsu-8/bsm/up/float";
const TOKEN: &str = "https-token-0123456789abcdef";

/// A test PKI on disk: a CA, a second CA nobody trusts, and certificates for every case.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto may read these after dropping root for its own user.
        set_mode(dir.path(), 0o755);
        let pki = Pki { dir };
        let (ca, ca_pem) = pki.ca("v2x test CA");
        let (other_ca, other_pem) = pki.ca("some other CA");
        pki.write("ca.pem", &ca_pem);
        pki.write("other-ca.pem", &other_pem);
        let valid = (2024, 2099);
        let here = ["localhost", "127.0.0.1"];
        pki.leaf("server", "broker", &here, true, valid, &ca);
        pki.leaf("expired", "broker", &here, true, (2020, 2021), &ca);
        pki.leaf(
            "wrong-host",
            "broker",
            &["broker.elsewhere.example"],
            true,
            valid,
            &ca,
        );
        pki.leaf("collector", "v2x-collector", &[], false, valid, &ca);
        pki.leaf("rsu-7", "rsu-7", &[], false, valid, &ca);
        pki.leaf("rogue", "v2x-collector", &[], false, valid, &other_ca);
        pki
    }

    fn ca(&self, name: &str) -> (Issuer<'static, KeyPair>, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2099, 1, 1);
        let pem = p.self_signed(&key).unwrap().pem();
        (Issuer::new(p, key), pem)
    }

    /// Writes `<file>.pem` and `<file>.key`: a server (`server = true`) or client certificate,
    /// valid from January 1st of the first year to January 1st of the second.
    fn leaf(
        &self,
        file: &str,
        common_name: &str,
        names: &[&str],
        server: bool,
        (from, to): (i32, i32),
        issuer: &Issuer<'static, KeyPair>,
    ) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        p.not_before = date_time_ymd(from, 1, 1);
        p.not_after = date_time_ymd(to, 1, 1);
        let cert = p.signed_by(&key, issuer).unwrap();
        self.write(&format!("{file}.pem"), &cert.pem());
        self.write(&format!("{file}.key"), &key.serialize_pem());
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        set_mode(&path, 0o644);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn show(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// mosquitto with its plaintext listener (from the helper) and three TLS listeners that all
/// require a client certificate signed by the test CA and take its name as the user name:
/// `good` (a valid certificate for localhost and 127.0.0.1), `expired`, and `wrong_host` (a
/// certificate for broker.elsewhere.example).
struct TlsBroker {
    broker: Mosquitto,
    good: u16,
    expired: u16,
    wrong_host: u16,
}

impl TlsBroker {
    fn start(pki: &Pki) -> TlsBroker {
        let acl = pki.path("acl");
        pki.write(
            "acl",
            "# The collector reads everything.\nuser v2x-collector\ntopic read #\n\n\
             # A device writes below its own id (its certificate's name) only.\n\
             pattern write v2x/v1/rsu/%u/#\n",
        );
        let (good, expired, wrong_host) = (free_port(), free_port(), free_port());
        let listener = |port: u16, cert: &str| {
            format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate true\nuse_identity_as_username true\n",
                pki.show("ca.pem"),
                pki.show(&format!("{cert}.pem")),
                pki.show(&format!("{cert}.key")),
            )
        };
        let extra = format!(
            "acl_file {}\n{}{}{}",
            acl.display(),
            listener(good, "server"),
            listener(expired, "expired"),
            listener(wrong_host, "wrong-host"),
        );
        let broker = Mosquitto::start_with(&extra);
        for port in [good, expired, wrong_host] {
            wait_for_port(port);
        }
        TlsBroker {
            broker,
            good,
            expired,
            wrong_host,
        }
    }
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The collector's `[mqtt]` and `[mqtt.tls]` sections.
fn mqtt_config(url: &str, tls: &[(&str, String)]) -> String {
    let mut text =
        format!("[mqtt]\nbroker = {url:?}\nreconnect_max_ms = 500\n[writer]\nmax_age_s = 0.5\n");
    if !tls.is_empty() {
        text.push_str("[mqtt.tls]\n");
        for (k, v) in tls {
            text.push_str(&format!("{k} = {v:?}\n"));
        }
    }
    text
}

fn mutual(pki: &Pki, ca: &str, client: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ca_file", pki.show(ca)),
        ("cert_file", pki.show(&format!("{client}.pem"))),
        ("key_file", pki.show(&format!("{client}.key"))),
    ]
}

/// Waits (bounded) until the collector has said twice why it cannot connect, and returns the
/// reason it gave.
fn connect_failure(c: &Collector) -> String {
    c.wait_log_count(
        "cannot connect to the MQTT broker",
        2,
        Duration::from_secs(30),
    );
    c.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "cannot connect to the MQTT broker")
        .and_then(|v| v["fields"]["reason"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no reason logged:\n{}", c.log_text()))
}

/// Publishes with `mosquitto_pub` over TLS as a device with its client certificate.
fn device_publish(pki: &Pki, port: u16, device: &str, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-l"])
        .args(["--cafile", &pki.show("ca.pem")])
        .args(["--cert", &pki.show(&format!("{device}.pem"))])
        .args(["--key", &pki.show(&format!("{device}.key"))])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub as {device} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn only_the_valid_tls_configuration_connects_and_the_others_say_why() {
    let pki = Pki::new();
    let b = TlsBroker::start(&pki);
    let good = format!("mqtts://127.0.0.1:{}", b.good);

    // The valid configuration connects; its persistent session then queues what the device
    // publishes while the wrong configurations below try (with the same client id) and fail.
    let ws = Workspace::new();
    let valid = mqtt_config(&good, &mutual(&pki, "ca.pem", "collector"));
    let mut c = ws.start(&valid, &[]);
    assert!(c.stop().success(), "{}", c.log_text());

    // The device publishes with its own certificate: through our own publisher (replay) on
    // its own topic, and with mosquitto_pub on another device's topic, which the ACL drops.
    let capture = pki.path("capture.ndjson");
    std::fs::write(&capture, messages(0..20).join("\n")).unwrap();
    let out = bin()
        .args(["replay", "--broker", &good, "--topic", OWN_TOPIC])
        .args(["--ca-file", &pki.show("ca.pem")])
        .args(["--cert-file", &pki.show("rsu-7.pem")])
        .args(["--key-file", &pki.show("rsu-7.key")])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    device_publish(&pki, b.good, "rsu-7", OTHER_TOPIC, &messages(100..105));

    let plain = format!("mqtt://127.0.0.1:{}", b.broker.port);
    let unknown_ca = format!(
        "broker certificate is signed by an unknown CA (not the one in mqtt.tls.ca_file {})",
        pki.show("other-ca.pem")
    );
    // (case, broker URL, [mqtt.tls], the reason the collector must give or begin with)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "expired",
            format!("mqtts://127.0.0.1:{}", b.expired),
            mutual(&pki, "ca.pem", "collector"),
            "broker certificate has expired (notAfter 2021-01-01T00:00:00Z, now ",
        ),
        (
            "wrong CA",
            good.clone(),
            mutual(&pki, "other-ca.pem", "collector"),
            &unknown_ca,
        ),
        (
            "wrong host",
            format!("mqtts://127.0.0.1:{}", b.wrong_host),
            mutual(&pki, "ca.pem", "collector"),
            "broker certificate is not valid for host 127.0.0.1 (it is for broker.elsewhere.example); \
             check the URL or mqtt.tls.server_name",
        ),
        (
            "no client certificate",
            good.clone(),
            vec![("ca_file", pki.show("ca.pem"))],
            "broker requires a client certificate; set mqtt.tls.cert_file and mqtt.tls.key_file",
        ),
        (
            "client certificate from another CA",
            good.clone(),
            mutual(&pki, "ca.pem", "rogue"),
            "broker rejected our client certificate (",
        ),
        (
            "plaintext to the TLS port",
            format!("mqtt://127.0.0.1:{}", b.good),
            vec![],
            "connection closed before CONNACK (is this a TLS port? use mqtts://)",
        ),
        (
            "TLS to the plaintext port",
            plain.replace("mqtt://", "mqtts://"),
            vec![("ca_file", pki.show("ca.pem"))],
            "the broker did not answer with TLS (is this a plaintext port? use mqtt://)",
        ),
    ];
    let mut observed = Vec::new();
    for (case, url, tls, want) in &cases {
        let ws = Workspace::new();
        let mut c = ws.spawn_with_env(&mqtt_config(url, tls), &[], &[]);
        let reason = connect_failure(&c);
        assert!(
            reason.starts_with(want),
            "{case}: got {reason:?}, want {want:?}\n{}",
            c.log_text()
        );
        // Not ready, and the probe says why without a token.
        let (code, body) = http_get(c.http_addr(), "/readyz", None).unwrap();
        assert_eq!(
            (code, body.trim()),
            (503, "not ready: not connected to the broker"),
            "{case}"
        );
        assert!(c.stop().success(), "{case}: {}", c.log_text());
        assert!(
            !c.log_text().contains("subscriptions acknowledged"),
            "{case} connected:\n{}",
            c.log_text()
        );
        assert!(
            common::parquet_files(&ws.data()).is_empty(),
            "{case} ingested something"
        );
        observed.push(format!("{case}: {reason}"));
    }
    eprintln!("observed:\n{}", observed.join("\n"));

    // Naming the certificate's host explicitly makes the wrong-host listener acceptable: the
    // check is moved, not dropped.
    let ws_named = Workspace::new();
    let mut tls = mutual(&pki, "ca.pem", "collector");
    tls.push(("server_name", "broker.elsewhere.example".into()));
    let named = mqtt_config(&format!("mqtts://127.0.0.1:{}", b.wrong_host), &tls);
    // Its own client id, so it does not take the queue kept for the valid collector.
    let mut c = ws_named.start(&named, &["--client-id", "v2x-collector-named"]);
    assert!(c.stop().success(), "{}", c.log_text());

    // The valid collector drains its queue: exactly the device's own messages, none of those
    // it tried to write on another device's topic.
    let mut c = ws.start(&valid, &[]);
    c.wait_processed(20, Duration::from_secs(60));
    assert!(c.stop().success(), "{}", c.log_text());
    assert_eq!(common::assert_exactly_once(&ws.data(), 20), (0, 0));
    let (bsm, _) = common::read_table(&ws.data(), "bsm");
    let bsm = bsm.expect("bsm rows");
    let sources = bsm.column_by_name("source_id").unwrap();
    let sources = arrow::array::AsArray::as_string::<i32>(sources);
    assert!(sources.iter().all(|s| s == Some("rsu-7")));
}

/// A rustls client that trusts only the test CA.
fn https_get(
    pki: &Pki,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem"))?;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify still sent a whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

#[test]
fn https_serves_probes_and_data_with_the_token_and_refuses_plain_http() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let extra = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n[http.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        common::config(&broker),
        pki.show("server.pem"),
        pki.show("server.key"),
    );
    let mut c = ws.start_with_env(&extra, &[], &[("V2X_HTTP_TOKEN", TOKEN)]);
    let addr = c.http_addr();
    let listening = c
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "http listening")
        .unwrap();
    assert_eq!(listening["fields"]["scheme"], "https");

    assert_eq!(
        https_get(&pki, addr, "/healthz", None).unwrap(),
        (200, "ok\n".into())
    );
    let (code, body) = https_get(&pki, addr, "/readyz", None).unwrap();
    assert_eq!((code, body.trim()), (200, "ready"));
    assert_eq!(https_get(&pki, addr, "/api/status", None).unwrap().0, 401);
    assert_eq!(
        https_get(&pki, addr, "/metrics", Some("https-token-0123456789abcdeX"))
            .unwrap()
            .0,
        401
    );
    let (code, body) = https_get(&pki, addr, "/api/status", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    // `top` reads it over HTTPS with the CA, and refuses a server it cannot verify.
    let url = format!("https://{addr}");
    let top = |ca: &str| {
        bin()
            .args(["top", "--once", "--http", &url, "--ca-file"])
            .arg(pki.path(ca))
            .env("V2X_HTTP_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = top("ca.pem");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("test"),
        "top over HTTPS: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = top("other-ca.pem");
    assert!(!out.status.success(), "top trusted an unknown CA");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["collector_id"],
        "test"
    );
    assert_eq!(
        https_get(&pki, addr, "/api/export?kind=..%2F..%2Fetc", Some(TOKEN))
            .unwrap()
            .0,
        404
    );

    // Plain HTTP to the HTTPS port gets no HTTP answer at all.
    if let Ok((code, body)) = http_get(addr, "/healthz", None) {
        assert_eq!(code, 0, "plain HTTP was answered: {body}");
    }
    // Nor does a client that does not trust the server's CA.
    let other = Pki::new();
    assert!(https_get(&other, addr, "/healthz", None).is_err());
    // The server is still there for the right client.
    assert_eq!(https_get(&pki, addr, "/healthz", None).unwrap().0, 200);

    assert!(c.stop().success(), "{}", c.log_text());
    assert!(
        !c.log_text().contains(TOKEN),
        "the token must never be logged"
    );
}

#[test]
fn user_name_and_password_over_tls_and_a_wrong_password_says_so() {
    const PASSWORD: &str = "correct-horse-battery-42";
    let pki = Pki::new();
    let passwd = pki.path("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["collector1", PASSWORD])
        .status()
        .expect("mosquitto_passwd");
    assert!(made.success());
    set_mode(&passwd, 0o644);
    // A TLS listener without client certificates: the password is the credential.
    let port = free_port();
    let broker = Mosquitto::start_with(&format!(
        "password_file {}\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        passwd.display(),
        pki.show("ca.pem"),
        pki.show("server.pem"),
        pki.show("server.key"),
    ));
    wait_for_port(port);
    let url = format!("mqtts://127.0.0.1:{port}");
    let config = format!(
        "[mqtt]\nbroker = {url:?}\nreconnect_max_ms = 500\nusername = \"collector1\"\n\
         [mqtt.tls]\nca_file = {:?}\n",
        pki.show("ca.pem")
    );

    let ws = Workspace::new();
    let mut c = ws.start_with_env(&config, &[], &[("V2X_MQTT_PASSWORD", PASSWORD)]);
    assert!(c.stop().success(), "{}", c.log_text());
    assert!(
        !c.log_text().contains(PASSWORD),
        "the password reached the log"
    );

    let ws = Workspace::new();
    let mut c = ws.spawn_with_env(&config, &[], &[("V2X_MQTT_PASSWORD", "wrong-password-0")]);
    let reason = connect_failure(&c);
    eprintln!("wrong password: {reason}");
    assert!(
        reason.starts_with("the broker refused the connection: "),
        "{reason}\n{}",
        c.log_text()
    );
    assert!(c.stop().success(), "{}", c.log_text());
    assert!(!c.log_text().contains("subscriptions acknowledged"));
    assert!(!c.log_text().contains("wrong-password-0"));
    drop(broker);
}

#[test]
fn unusable_tls_settings_are_configuration_errors() {
    let pki = Pki::new();
    let ws = Workspace::new();
    let run = |extra: &str| {
        let config = ws.config(extra);
        let out = bin()
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = pki.show("missing.pem");
    for (extra, want) in [
        (
            mqtt_config("mqtts://127.0.0.1:1", &[("ca_file", missing.clone())]),
            format!("mqtt.tls.ca_file {missing}: cannot read"),
        ),
        (
            mqtt_config(
                "mqtts://127.0.0.1:1",
                &[("ca_file", pki.show("collector.key"))],
            ),
            "holds no certificate".into(),
        ),
        (
            mqtt_config(
                "mqtts://127.0.0.1:1",
                &[
                    ("cert_file", pki.show("collector.pem")),
                    ("key_file", pki.show("rsu-7.key")),
                ],
            ),
            "cannot be used together".into(),
        ),
        (
            mqtt_config(
                "mqtts://127.0.0.1:1",
                &[("cert_file", pki.show("collector.pem"))],
            ),
            "mqtt.tls.cert_file and mqtt.tls.key_file go together".into(),
        ),
        (
            mqtt_config("mqtt://127.0.0.1:1", &[("ca_file", pki.show("ca.pem"))]),
            "use mqtts://127.0.0.1:<port>".into(),
        ),
        (
            format!(
                "{}[http]\nlisten = \"127.0.0.1:0\"\n[http.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                mqtt_config("mqtt://127.0.0.1:1", &[]),
                pki.show("server.pem"),
                pki.show("missing.key"),
            ),
            "http.tls.key_file".into(),
        ),
    ] {
        let (code, err) = run(&extra);
        assert_eq!(code, Some(2), "{extra}\n{err}");
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
        assert!(!err.contains("PRIVATE KEY"), "key material in:\n{err}");
    }
}
