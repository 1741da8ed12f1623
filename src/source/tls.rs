//! TLS towards the broker (`mqtts://`): the rustls client configuration we build ourselves
//! (ring provider, our CA or the system roots, an optional client certificate) and the
//! translation of connection failures into messages that say what to fix.
//!
//! Server certificate and host name verification are always on. `mqtt.tls.server_name`
//! changes which name is checked (for a broker reached by IP address), never whether.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct};
use rustls::{Error as TlsError, RootCertStore, SignatureScheme};

use crate::config::{BrokerUrl, ConfigError, MqttConfig, MqttTlsConfig};

/// A TLS file or setting that cannot be used. Reported at start, as a configuration error.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{key} {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<TlsSetupError> for ConfigError {
    fn from(e: TlsSetupError) -> ConfigError {
        ConfigError::Invalid(e.to_string())
    }
}

/// The process's one crypto provider: ring (aws-lc-rs needs cmake and builds slowly).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; `key` names the setting in error messages.
pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(file_error(
            key,
            path,
            "holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Error messages never
/// quote the file's content.
pub fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let bytes = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            key,
            path,
            "holds no private key (expected PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC)".into(),
        ),
        _ => file_error(key, path, "is not a valid PEM private key".into()),
    })
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn file_error(key: &'static str, path: &Path, reason: String) -> TlsSetupError {
    TlsSetupError::File {
        key,
        path: path.to_owned(),
        reason,
    }
}

/// What the MQTT client needs for `mqtts://`, and what error messages refer to.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// The name the broker's certificate must carry.
    pub checked_name: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert: bool,
}

impl std::fmt::Debug for ClientTls {
    // Leaves the rustls configuration (and with it the client key) out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("checked_name", &self.checked_name)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// The TLS settings for `mqtt.broker`: `None` for a plaintext URL or the embedded broker.
pub fn for_config(mqtt: &MqttConfig) -> Result<Option<ClientTls>, TlsSetupError> {
    let Some(url) = &mqtt.broker else {
        return Ok(None);
    };
    let broker = BrokerUrl::parse(url).map_err(|e| TlsSetupError::Invalid(e.to_string()))?;
    if !broker.tls {
        return Ok(None);
    }
    client_tls(&mqtt.tls, &broker.host).map(Some)
}

/// Builds the client configuration for a broker reached at `host`.
pub fn client_tls(tls: &MqttTlsConfig, host: &str) -> Result<ClientTls, TlsSetupError> {
    // rumqttc turns the URL's host into the TLS server name (SNI) itself, so it must be one.
    ServerName::try_from(host.to_string()).map_err(|_| {
        TlsSetupError::Invalid(format!(
            "broker host {host:?} is neither a DNS name nor an IP address usable for TLS"
        ))
    })?;
    let expected = match &tls.server_name {
        Some(name) => Some(ServerName::try_from(name.trim().to_string()).map_err(|_| {
            TlsSetupError::Invalid(format!(
                "mqtt.tls.server_name {name:?} is neither a DNS name nor an IP address"
            ))
        })?),
        None => None,
    };
    let roots = match &tls.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for (i, cert) in load_certs("mqtt.tls.ca_file", path)?
                .into_iter()
                .enumerate()
            {
                roots.add(cert).map_err(|e| {
                    file_error(
                        "mqtt.tls.ca_file",
                        path,
                        format!("certificate {} cannot be used as a CA: {e}", i + 1),
                    )
                })?;
            }
            roots
        }
        None => system_roots()?,
    };
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Invalid(format!("TLS setup: {e}")))?;
    let builder = match expected {
        Some(name) => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Invalid(format!("TLS setup: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CheckName { inner, name }))
        }
        None => builder.with_root_certificates(roots),
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("mqtt.tls.cert_file", cert)?;
            let key_der = load_key("mqtt.tls.key_file", key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsSetupError::Invalid(format!(
                    "mqtt.tls.cert_file {} and mqtt.tls.key_file {} cannot be used together: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsSetupError::Invalid(
                "mqtt.tls.cert_file and mqtt.tls.key_file go together: set both, or neither".into(),
            ));
        }
    };
    Ok(ClientTls {
        config: Arc::new(config),
        checked_name: tls
            .server_name
            .as_deref()
            .map_or_else(|| host.to_string(), |n| n.trim().to_string()),
        ca_file: tls.ca_file.clone(),
        client_cert: tls.cert_file.is_some(),
    })
}

fn system_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsSetupError::Invalid(
            "mqtt.tls.ca_file is unset and no system CA certificates were found (install ca-certificates, or set mqtt.tls.ca_file)".into(),
        ));
    }
    Ok(roots)
}

/// Verifies the broker's certificate exactly as rustls does, against `mqtt.tls.server_name`
/// instead of the URL's host.
#[derive(Debug)]
struct CheckName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for CheckName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Where a connection attempt failed, independent of the MQTT version's error types.
#[derive(Debug)]
pub enum Cause<'a> {
    /// The TCP connection could not be made.
    Connect(&'a io::Error),
    /// The TLS handshake failed.
    Handshake(&'a io::Error),
    /// Reading or writing failed after the connection was made (a TLS 1.3 server rejects a
    /// client certificate after the client considers the handshake done, so that lands here).
    Stream(&'a io::Error),
    /// The broker closed the connection.
    Closed,
    /// The broker sent bytes that are not MQTT.
    NotMqtt,
    /// The broker answered CONNECT with a refusal (the reason code's name).
    Refused(String),
    Other,
}

/// What a failure message needs to know about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// TLS settings, for an `mqtts://` broker.
    pub tls: Option<&'a ClientTls>,
    /// A CONNACK was received on this connection (so it is not a setup problem).
    pub connected: bool,
}

/// A message that says what is wrong and what to change, for failures a retry will not fix
/// by itself (certificates, a TLS/plaintext mix-up, refused credentials). `None` for the
/// ordinary ones (broker down, network cut), which the reconnect loop handles quietly.
pub fn explain(cause: &Cause<'_>, attempt: Attempt<'_>) -> Option<String> {
    let tls_error = match cause {
        Cause::Handshake(e) | Cause::Stream(e) | Cause::Connect(e) => rustls_error(e),
        _ => None,
    };
    if let Some(e) = tls_error {
        return Some(explain_tls(e, attempt));
    }
    match (cause, attempt.tls) {
        // rustls saw the connection end, or bytes that are no TLS record, during the handshake.
        (Cause::Handshake(e), Some(_)) => Some(match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::InvalidData
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => {
                "the broker did not answer with TLS (is this a plaintext port? use mqtt://)".into()
            }
            _ => format!("TLS handshake with the broker failed: {e}"),
        }),
        // A TLS server drops (or resets) a connection that starts with MQTT's CONNECT.
        (c, None) if !attempt.connected && closed(c) => {
            Some("connection closed before CONNACK (is this a TLS port? use mqtts://)".into())
        }
        (c, Some(_)) if !attempt.connected && closed(c) => {
            Some("the broker closed the TLS connection before CONNACK".into())
        }
        (Cause::Refused(code), _) => Some(refused(code)),
        _ => None,
    }
}

/// The [`Cause`] of an MQTT 3.1.1 connection error.
pub fn cause_v4(e: &rumqttc::ConnectionError) -> Cause<'_> {
    use rumqttc::ConnectionError as E;
    use rumqttc::StateError as S;
    use rumqttc::mqttbytes::Error as M;
    match e {
        E::Tls(rumqttc::TlsError::Io(io)) => Cause::Handshake(io),
        E::Io(io) => Cause::Connect(io),
        E::MqttState(S::Io(io) | S::Deserialization(M::Io(io))) => Cause::Stream(io),
        E::MqttState(S::ConnectionAborted) => Cause::Closed,
        E::MqttState(S::Deserialization(_)) | E::NotConnAck(_) => Cause::NotMqtt,
        E::ConnectionRefused(code) => Cause::Refused(format!("{code:?}")),
        _ => Cause::Other,
    }
}

/// The [`Cause`] of an MQTT 5 connection error.
pub fn cause_v5(e: &rumqttc::v5::ConnectionError) -> Cause<'_> {
    use rumqttc::v5::ConnectionError as E;
    use rumqttc::v5::StateError as S;
    use rumqttc::v5::mqttbytes::Error as M;
    match e {
        E::Tls(rumqttc::TlsError::Io(io)) => Cause::Handshake(io),
        E::Io(io) => Cause::Connect(io),
        E::MqttState(S::Io(io) | S::Deserialization(M::Io(io))) => Cause::Stream(io),
        E::MqttState(S::ConnectionAborted) => Cause::Closed,
        E::MqttState(S::Deserialization(_)) | E::NotConnAck(_) => Cause::NotMqtt,
        E::ConnectionRefused(code) | E::MqttState(S::ConnFail { reason: code }) => {
            Cause::Refused(format!("{code:?}"))
        }
        _ => Cause::Other,
    }
}

/// The connection ended (closed, reset, or answered with bytes that are not MQTT).
fn closed(cause: &Cause<'_>) -> bool {
    match cause {
        Cause::Closed | Cause::NotMqtt => true,
        Cause::Stream(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

fn refused(code: &str) -> String {
    match code {
        "BadUserNamePassword" => "the broker refused the connection: bad user name or password (check mqtt.username and mqtt.password / V2X_MQTT_PASSWORD)".into(),
        "NotAuthorized" => "the broker refused the connection: not authorized (check mqtt.username, mqtt.password and the broker's ACL)".into(),
        other => format!("the broker refused the connection ({other})"),
    }
}

/// The rustls error inside an I/O error (tokio-rustls wraps them that way).
fn rustls_error(e: &io::Error) -> Option<&TlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
}

fn explain_tls(e: &TlsError, attempt: Attempt<'_>) -> String {
    let name = attempt
        .tls
        .map_or("the broker", |t| t.checked_name.as_str());
    let client_cert = attempt.tls.is_some_and(|t| t.client_cert);
    match e {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::Expired => "broker certificate has expired".into(),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "broker certificate has expired (notAfter {}, now {})",
                rfc3339(*not_after),
                rfc3339(*time)
            ),
            CertificateError::NotValidYet => {
                "broker certificate is not valid yet (check the clocks)".into()
            }
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "broker certificate is not valid yet (notBefore {}, now {}; check the clocks)",
                rfc3339(*not_before),
                rfc3339(*time)
            ),
            CertificateError::UnknownIssuer => match attempt.tls.and_then(|t| t.ca_file.as_ref()) {
                Some(ca) => format!(
                    "broker certificate is signed by an unknown CA (not the one in mqtt.tls.ca_file {})",
                    ca.display()
                ),
                None => {
                    "broker certificate is signed by an unknown CA; set mqtt.tls.ca_file".into()
                }
            },
            CertificateError::NotValidForName => format!(
                "broker certificate is not valid for host {name}; check the URL or mqtt.tls.server_name"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "broker certificate is not valid for host {name} (it is for {}); check the URL or mqtt.tls.server_name",
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    presented
                        .iter()
                        .map(|p| presented_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            CertificateError::Revoked => "broker certificate has been revoked".into(),
            other => format!("broker certificate was rejected: {other:?}"),
        },
        TlsError::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                if !client_cert =>
            {
                "broker requires a client certificate; set mqtt.tls.cert_file and mqtt.tls.key_file"
                    .into()
            }
            AlertDescription::CertificateExpired => {
                "broker rejected our client certificate: it has expired (mqtt.tls.cert_file)".into()
            }
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
                if client_cert =>
            {
                format!(
                    "broker rejected our client certificate ({alert:?}): is mqtt.tls.cert_file signed by a CA the broker trusts, and still valid?"
                )
            }
            other => format!("the broker ended the TLS handshake with alert {other:?}"),
        },
        TlsError::InvalidMessage(_) | TlsError::InappropriateMessage { .. } => {
            "the broker did not answer with TLS (is this a plaintext port? use mqtt://)".into()
        }
        TlsError::PeerIncompatible(why) => {
            format!("the broker's TLS is incompatible with ours: {why:?}")
        }
        other => format!("TLS with the broker failed: {other}"),
    }
}

/// `broker.example` from webpki's `DnsName("broker.example")`, `10.0.0.1` from
/// `IpAddress(10.0.0.1)`.
fn presented_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            p.strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(p)
}

fn rfc3339(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || format!("{secs} s after the epoch"),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: bool, client_cert: bool) -> ClientTls {
        let roots = RootCertStore::empty();
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
            checked_name: "broker.example".into(),
            ca_file: ca.then(|| PathBuf::from("/etc/v2x/ca.pem")),
            client_cert,
        }
    }

    fn wrap(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn say(cause: Cause<'_>, t: Option<&ClientTls>) -> String {
        explain(
            &cause,
            Attempt {
                tls: t,
                connected: false,
            },
        )
        .unwrap_or_default()
    }

    #[test]
    fn certificate_problems_say_what_to_fix() {
        let t = tls(false, false);
        let expired = wrap(TlsError::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_767_225_600)),
                not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    1_735_689_600,
                )),
            },
        ));
        assert_eq!(
            say(Cause::Handshake(&expired), Some(&t)),
            "broker certificate has expired (notAfter 2025-01-01T00:00:00Z, now 2026-01-01T00:00:00Z)"
        );
        let unknown = wrap(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            say(Cause::Handshake(&unknown), Some(&t)),
            "broker certificate is signed by an unknown CA; set mqtt.tls.ca_file"
        );
        let with_ca = tls(true, false);
        assert!(
            say(Cause::Handshake(&unknown), Some(&with_ca)).contains("/etc/v2x/ca.pem"),
            "names the CA file in use"
        );
        let host = wrap(TlsError::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("broker.example").unwrap(),
                presented: vec![
                    "DnsName(\"other.example\")".into(),
                    "IpAddress(10.0.0.1)".into(),
                ],
            },
        ));
        let msg = say(Cause::Handshake(&host), Some(&t));
        assert!(
            msg.starts_with(
                "broker certificate is not valid for host broker.example (it is for other.example, 10.0.0.1); "
            ),
            "{msg}"
        );
        assert!(msg.contains("mqtt.tls.server_name"), "{msg}");
    }

    #[test]
    fn client_certificate_problems() {
        let required = wrap(TlsError::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(
            say(Cause::Stream(&required), Some(&tls(true, false))),
            "broker requires a client certificate; set mqtt.tls.cert_file and mqtt.tls.key_file"
        );
        let unknown_ca = wrap(TlsError::AlertReceived(AlertDescription::UnknownCA));
        assert!(
            say(Cause::Stream(&unknown_ca), Some(&tls(true, true)))
                .starts_with("broker rejected our client certificate (UnknownCA)")
        );
    }

    #[test]
    fn tls_and_plaintext_mixed_up() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(
            say(Cause::Handshake(&eof), Some(&tls(true, false))),
            "the broker did not answer with TLS (is this a plaintext port? use mqtt://)"
        );
        let garbage = wrap(TlsError::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert!(say(Cause::Handshake(&garbage), Some(&tls(true, false))).contains("use mqtt://"));
        assert_eq!(
            say(Cause::Closed, None),
            "connection closed before CONNACK (is this a TLS port? use mqtts://)"
        );
        assert!(say(Cause::NotMqtt, None).contains("use mqtts://"));
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(say(Cause::Stream(&reset), None).contains("use mqtts://"));
    }

    #[test]
    fn ordinary_failures_are_left_to_the_reconnect_loop() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(say(Cause::Connect(&refused), None), "");
        // A broker that closes an established session is not a setup problem.
        let after = explain(
            &Cause::Closed,
            Attempt {
                tls: None,
                connected: true,
            },
        );
        assert_eq!(after, None);
        assert!(say(Cause::Refused("BadUserNamePassword".into()), None).contains("mqtt.password"));
    }

    #[test]
    fn unreadable_or_invalid_files_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certs("mqtt.tls.ca_file", &missing).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("mqtt.tls.ca_file ") && msg.contains("missing.pem"),
            "{msg}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let msg = load_certs("mqtt.tls.ca_file", &junk)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("holds no certificate"), "{msg}");
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==!!\n-----END PRIVATE KEY-----\n";
        std::fs::write(&junk, secret).unwrap();
        let msg = load_key("mqtt.tls.key_file", &junk)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("mqtt.tls.key_file"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "key material in {msg}");
        let cfg = MqttTlsConfig {
            ca_file: Some(missing),
            ..MqttTlsConfig::default()
        };
        let msg = client_tls(&cfg, "broker.example").unwrap_err().to_string();
        assert!(msg.contains("missing.pem"), "{msg}");
        let msg = client_tls(&MqttTlsConfig::default(), "bad host!")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bad host!"), "{msg}");
        let named = MqttTlsConfig {
            server_name: Some("not a name!".into()),
            ..MqttTlsConfig::default()
        };
        let msg = client_tls(&named, "10.0.0.1").unwrap_err().to_string();
        assert!(msg.starts_with("mqtt.tls.server_name"), "{msg}");
    }
}
