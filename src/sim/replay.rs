//! `replay`: publishes captured payloads to a broker.
//!
//! Accepted files (detected from their content; a UTF-8 BOM is skipped):
//! - a JSON array whose elements are payloads (the radar capture `track.json`);
//! - NDJSON, one payload per line (`derived_rsm_std_payloads.ndjson`);
//! - NDJSON of `{"topic": ..., "payload": ...}` lines (topic plus payload);
//! - one JSON object with `publish_topic` and `payload` (the OpenV2X function-test files);
//! - V2X-Seq trajectory or traffic-light CSV, turned into `vehicle_object` and `spat_phase`
//!   payloads on built-in topics ([`super::v2xseq`]).
//!
//! Payloads without a topic of their own need `--topic`. Pacing: as fast as the broker takes
//! them (default), a fixed rate, or real time from the payloads' own timestamps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("the broker acknowledged {acked} of {sent} QoS 1 messages before the timeout")]
    Unacknowledged { acked: u64, sent: u64 },
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub topic: String,
    pub payload: Bytes,
    /// The payload's own time (epoch ms), for real-time pacing.
    pub time_ms: Option<i64>,
}

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    AsFastAsPossible,
    Rate(f64),
    RealTime,
}

/// Reads one file into messages.
pub fn read_file(path: &Path, topic: Option<&str>) -> Result<Vec<Item>, ReplayError> {
    let bytes = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes, topic).map_err(|reason| ReplayError::Format {
        path: path.to_owned(),
        reason,
    })
}

/// Parses file content; see the module docs for the forms.
pub fn parse(bytes: &[u8], topic: Option<&str>) -> Result<Vec<Item>, String> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if super::v2xseq::is_v2xseq_csv(body) {
        return super::v2xseq::parse(body, topic).map_err(|e| e.to_string());
    }
    let need_topic = || {
        topic
            .map(str::to_string)
            .ok_or_else(|| "these payloads carry no topic: pass --topic".to_string())
    };
    let trimmed = body.trim_ascii_start();
    // A whole-file JSON value first (array of payloads, or a test file with its topic).
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        match &v {
            Value::Array(items) if trimmed.first() == Some(&b'[') => {
                let t = need_topic()?;
                return Ok(items.iter().map(|p| item(&t, p)).collect());
            }
            Value::Object(o) if o.contains_key("publish_topic") && o.contains_key("payload") => {
                let t = o["publish_topic"]
                    .as_str()
                    .ok_or("publish_topic is not a string")?;
                return Ok(vec![item(t, &o["payload"])]);
            }
            _ => {}
        }
    }
    // NDJSON: payloads, or topic-plus-payload lines.
    let mut out = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_slice(line).map_err(|e| format!("line {}: not JSON ({e})", n + 1))?;
        match v {
            Value::Object(o) if o.contains_key("topic") && o.contains_key("payload") => {
                let t = o["topic"]
                    .as_str()
                    .ok_or_else(|| format!("line {}: topic is not a string", n + 1))?;
                out.push(item(t, &o["payload"]));
            }
            _ => {
                let t = need_topic()?;
                // Keep the line's own bytes: replay what was captured.
                out.push(Item {
                    topic: t,
                    payload: Bytes::copy_from_slice(line),
                    time_ms: payload_time_ms(&v),
                });
            }
        }
    }
    Ok(out)
}

fn item(topic: &str, payload: &Value) -> Item {
    let bytes = match payload {
        // A payload given as a string is sent as that text.
        Value::String(s) => s.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    Item {
        topic: topic.to_string(),
        payload: Bytes::from(bytes),
        time_ms: payload_time_ms(payload),
    }
}

/// The payload's epoch-ms time, from the usual top-level fields.
fn payload_time_ms(v: &Value) -> Option<i64> {
    let o = match v {
        Value::Array(a) => a.first()?.as_object()?,
        Value::Object(o) => o,
        _ => return None,
    };
    for key in ["timeStamp", "timestamp", "time_ms"] {
        let t = match o.get(key) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        if let Some(t) = t.and_then(crate::decode::time::epoch_auto_us) {
            return Some(t / 1000);
        }
    }
    None
}

/// Connection settings for publishing.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub host: String,
    pub port: u16,
    pub qos: u8,
    pub client_id: String,
    /// `mqtts://`: the TLS configuration. `None`: plaintext.
    pub tls: Option<crate::source::tls::ClientTls>,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<crate::config::Secret>,
}

/// One MQTT connection for publishing; its event loop runs on its own task, so waiting on the
/// request channel here can never block it.
pub struct Publisher {
    client: rumqttc::AsyncClient,
    poller: tokio::task::JoinHandle<()>,
    acked: tokio::sync::watch::Receiver<u64>,
    error: tokio::sync::watch::Receiver<Option<String>>,
    qos: rumqttc::QoS,
    pub sent: u64,
}

impl Publisher {
    pub fn connect(s: &PublishSettings) -> Publisher {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
        let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
        if let Some(u) = &s.username {
            opts.set_credentials(
                u.clone(),
                s.password
                    .as_ref()
                    .map_or("", crate::config::Secret::expose),
            );
        }
        if let Some(t) = &s.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(t.config.clone()),
            ));
        }
        let tls = s.tls.clone();
        let (client, mut el) = AsyncClient::new(opts, 1024);
        let (ack_tx, acked) = tokio::sync::watch::channel(0u64);
        let (err_tx, error) = tokio::sync::watch::channel(None::<String>);
        let poller = tokio::spawn(async move {
            use crate::source::tls::{Attempt, cause_v4, explain};
            let mut n = 0u64;
            let mut connected = false;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        n += 1;
                        let _ = ack_tx.send(n);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        let attempt = Attempt {
                            tls: tls.as_ref(),
                            connected,
                        };
                        let msg = match explain(&cause_v4(&e), attempt) {
                            Some(why) => format!("{why} ({e})"),
                            None => e.to_string(),
                        };
                        connected = false;
                        let _ = err_tx.send(Some(msg));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Publisher {
            client,
            poller,
            acked,
            error,
            qos: if s.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            sent: 0,
        }
    }

    pub async fn send(&mut self, topic: &str, payload: Bytes) -> Result<(), ReplayError> {
        if let Some(e) = self.error.borrow_and_update().clone() {
            return Err(ReplayError::Mqtt(e));
        }
        self.client
            .publish_bytes(topic.to_string(), self.qos, false, payload)
            .await
            .map_err(|e| ReplayError::Mqtt(e.to_string()))?;
        self.sent += 1;
        Ok(())
    }

    /// Waits for every PUBACK (QoS 1, up to a minute), then disconnects.
    pub async fn finish(mut self) -> Result<u64, ReplayError> {
        if self.qos != rumqttc::QoS::AtMostOnce {
            let deadline = Instant::now() + Duration::from_secs(60);
            while *self.acked.borrow() < self.sent {
                if tokio::time::timeout_at(deadline.into(), self.acked.changed())
                    .await
                    .is_err()
                {
                    return Err(ReplayError::Unacknowledged {
                        acked: *self.acked.borrow(),
                        sent: self.sent,
                    });
                }
            }
        }
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.poller).await;
        Ok(self.sent)
    }
}

/// Publishes the items in order with the given pacing; for QoS 1 waits for every PUBACK.
/// Calls `progress(sent, total)` about twice a second.
pub async fn publish(
    items: &[Item],
    s: &PublishSettings,
    pace: Pace,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ReplayError> {
    let mut p = Publisher::connect(s);
    let total = items.len() as u64;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let first_time = items.iter().find_map(|i| i.time_ms);
    for (n, it) in items.iter().enumerate() {
        match pace {
            Pace::AsFastAsPossible => {}
            Pace::Rate(r) if r > 0.0 => {
                let due = started + Duration::from_secs_f64(n as f64 / r);
                tokio::time::sleep_until(due.into()).await;
            }
            Pace::Rate(_) => {}
            Pace::RealTime => {
                if let (Some(t0), Some(t)) = (first_time, it.time_ms) {
                    // Out-of-order captures: a time before the previous one goes out at once.
                    let offset = Duration::from_millis(t.saturating_sub(t0).max(0) as u64);
                    tokio::time::sleep_until((started + offset).into()).await;
                }
            }
        }
        p.send(&it.topic, it.payload.clone()).await?;
        if last_report.elapsed() >= Duration::from_millis(500) {
            progress(n as u64 + 1, total);
            last_report = Instant::now();
        }
    }
    let sent = p.finish().await?;
    progress(total, total);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .join(p)
    }

    #[test]
    fn reads_every_shape_of_capture() {
        let radar = read_file(
            &shared("openv2x-radar/track.json"),
            Some("V2X/RADAR/X/TRACK/UP"),
        )
        .unwrap();
        assert_eq!(radar.len(), 500);
        assert_eq!(radar[0].time_ms, Some(1_664_423_415_000));
        let rsm = read_file(
            &shared("openv2x-payloads/derived_rsm_std_payloads.ndjson"),
            Some("V2X/RSU/R/RSM/UP"),
        )
        .unwrap();
        assert_eq!(rsm.len(), 9);
        let tavern = read_file(&shared("openv2x-payloads/tavern_rsm_payload.json"), None).unwrap();
        assert_eq!(tavern.len(), 1);
        assert_eq!(tavern[0].topic, "V2X/RSU/R328328/RSM/UP/DAWNLINE");
        let tp = parse(
            b"{\"topic\":\"a/b\",\"payload\":{\"x\":1}}\n{\"topic\":\"c\",\"payload\":\"raw\"}\n",
            None,
        )
        .unwrap();
        assert_eq!(tp[0].topic, "a/b");
        assert_eq!(&tp[1].payload[..], b"raw");
        let err = read_file(&shared("openv2x-radar/track.json"), None).unwrap_err();
        assert!(err.to_string().contains("--topic"), "{err}");
    }
}
