//! The MQTT client (rumqttc), for MQTT 5 and 3.1.1.
//!
//! Fixed client id, persistent session, QoS 1 subscriptions, manual acknowledgements,
//! reconnect with exponential backoff, resubscribe on every connect. The task that polls the
//! event loop never awaits anything the pipeline controls: received messages go out through
//! an unbounded channel (the broker's in-flight window is the real bound) and acks come back
//! through another task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::tls::{self, Cause, ClientTls};
use super::{AckSender, AckToken, Message, now_us};
use crate::config::{Protocol, Secret};

/// Connection settings, resolved from config.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub client_id: String,
    pub keep_alive: Duration,
    pub session_expiry_s: u32,
    pub max_packet_bytes: usize,
    pub receive_maximum: u16,
    pub filters: Vec<String>,
    pub qos: u8,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `mqtts://`: the TLS configuration. `None`: plaintext.
    pub tls: Option<ClientTls>,
}

/// Connection state shared with the rest of the collector.
#[derive(Debug, Default)]
pub struct SourceState {
    /// Incremented on every CONNACK; tokens from an older epoch are never acked.
    pub epoch: AtomicU64,
    pub connected: AtomicBool,
    pub subscribed: AtomicBool,
    /// While false, new publishes are left unacknowledged (the broker redelivers them).
    pub accepting: AtomicBool,
    pub received: AtomicU64,
    /// Received with the DUP flag (broker redeliveries).
    pub redelivered: AtomicU64,
    pub acked: AtomicU64,
    pub stale_acks: AtomicU64,
    pub connects: AtomicU64,
}

/// A running source: its tasks and the way to stop them.
pub struct SourceHandle {
    pub state: Arc<SourceState>,
    pub acks: AckSender,
    stop: watch::Sender<bool>,
    poll_task: JoinHandle<()>,
    ack_task: JoinHandle<()>,
}

impl SourceHandle {
    /// Stops handing out new messages; already received ones can still be acknowledged.
    pub fn stop_accepting(&self) {
        self.state.accepting.store(false, Ordering::SeqCst);
    }

    /// Sends the acks still queued, disconnects cleanly, and ends the tasks.
    pub async fn shutdown(self) {
        let SourceHandle {
            acks,
            stop,
            poll_task,
            ack_task,
            ..
        } = self;
        drop(acks);
        // The pipeline holds the other senders; once it has dropped them the ack task ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), ack_task).await;
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), poll_task).await;
    }
}

/// Starts the client. Messages go to `out`.
pub fn spawn(settings: SourceSettings, out: std::sync::mpsc::Sender<Message>) -> SourceHandle {
    let state = Arc::new(SourceState {
        accepting: AtomicBool::new(true),
        ..SourceState::default()
    });
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (poll_task, ack_task) = match settings.protocol {
        Protocol::V5 => v5::spawn(settings, out, state.clone(), ack_rx, stop_rx),
        Protocol::V311 => v4::spawn(settings, out, state.clone(), ack_rx, stop_rx),
    };
    SourceHandle {
        state,
        acks: ack_tx,
        stop: stop_tx,
        poll_task,
        ack_task,
    }
}

fn next_backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).min(max)
}

/// Logs a connect and says whether the broker kept our session.
fn on_connect(state: &SourceState, session_present: bool) -> u64 {
    let epoch = state.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    let previous = state.connects.fetch_add(1, Ordering::SeqCst);
    state.connected.store(true, Ordering::SeqCst);
    metrics::gauge!("v2x_source_connected").set(1.0);
    if previous > 0 && !session_present {
        metrics::counter!("v2x_source_session_lost_total").increment(1);
        tracing::warn!(
            epoch,
            "reconnected without a session: messages queued for us while away may be lost; resubscribing"
        );
    } else {
        tracing::info!(epoch, session_present, "connected to MQTT broker");
    }
    epoch
}

/// Logs a failed connection. Failures a retry will not cure by itself (certificates, TLS on
/// a plaintext port, refused credentials) are logged as errors on every attempt, with a
/// `reason` that says what to change; the loop keeps retrying with backoff (the broker's
/// certificate may be renewed, or the CA fixed, without restarting the collector) and
/// readiness stays false meanwhile.
fn on_disconnect(
    state: &SourceState,
    error: &dyn std::fmt::Display,
    cause: Cause<'_>,
    tls: Option<&ClientTls>,
    retry: Duration,
) {
    let was = state.connected.swap(false, Ordering::SeqCst);
    state.subscribed.store(false, Ordering::SeqCst);
    metrics::gauge!("v2x_source_connected").set(0.0);
    let attempt = tls::Attempt {
        tls,
        connected: was,
    };
    if let Some(reason) = tls::explain(&cause, attempt) {
        metrics::counter!("v2x_source_connect_errors_total").increment(1);
        tracing::error!(
            %reason,
            %error,
            retry_in_ms = retry.as_millis() as u64,
            "cannot connect to the MQTT broker"
        );
    } else if was {
        tracing::warn!(%error, retry_in_ms = retry.as_millis() as u64, "MQTT connection lost");
    } else {
        tracing::debug!(%error, retry_in_ms = retry.as_millis() as u64, "MQTT connect failed");
    }
}

fn on_publish(
    state: &SourceState,
    out: &std::sync::mpsc::Sender<Message>,
    topic: String,
    payload: bytes::Bytes,
    pkid: u16,
    qos: u8,
    dup: bool,
) {
    if !state.accepting.load(Ordering::Relaxed) {
        // Shutting down: not acked, so the broker will deliver it again.
        return;
    }
    state.received.fetch_add(1, Ordering::Relaxed);
    if dup {
        state.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let msg = Message {
        topic,
        payload,
        recv_us: now_us(),
        dup,
        ack: AckToken {
            epoch: state.epoch.load(Ordering::SeqCst),
            pkid,
            qos,
        },
    };
    // The receiver only goes away at shutdown; an unsent message is simply not acked.
    let _ = out.send(msg);
}

macro_rules! client_impl {
    ($modname:ident, $root:path, $packet:path, $qos:path, $new_ack:expr, $filter_new:expr, $options:expr, $suback_ok:expr, $cause:path) => {
        mod $modname {
            use super::*;
            use $root as r;
            use $packet as p;
            use $qos as QoS;

            pub(super) fn spawn(
                s: SourceSettings,
                out: std::sync::mpsc::Sender<Message>,
                state: Arc<SourceState>,
                mut acks: mpsc::UnboundedReceiver<Vec<AckToken>>,
                mut stop: watch::Receiver<bool>,
            ) -> (JoinHandle<()>, JoinHandle<()>) {
                let opts = ($options)(&s);
                let (client, mut el) = r::AsyncClient::new(opts, 4096);
                let ack_client = client.clone();
                let ack_state = state.clone();
                let ack_task = tokio::spawn(async move {
                    while let Some(batch) = acks.recv().await {
                        let current = ack_state.epoch.load(Ordering::SeqCst);
                        for t in batch {
                            if t.qos == 0 {
                                continue;
                            }
                            if t.epoch != current {
                                // Its packet id belongs to a closed connection; the broker
                                // redelivers the message on the new one.
                                ack_state.stale_acks.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let publish = ($new_ack)(t.pkid);
                            // Awaiting here is safe: this task is not the one polling the loop.
                            if ack_client.ack(&publish).await.is_err() {
                                return;
                            }
                            ack_state.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                let poll_task = tokio::spawn(async move {
                    let mut backoff = s.reconnect_min;
                    let qos = if s.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                    loop {
                        tokio::select! {
                            biased;
                            _ = stop.changed() => break,
                            ev = el.poll() => match ev {
                                Ok(r::Event::Incoming(p::Packet::ConnAck(ca))) => {
                                    on_connect(&state, ca.session_present);
                                    backoff = s.reconnect_min;
                                    let filters: Vec<_> = s.filters.iter().map(|f| ($filter_new)(f.clone(), qos)).collect();
                                    if let Err(e) = client.try_subscribe_many(filters) {
                                        tracing::error!(error = %e, "could not queue the subscription");
                                    }
                                }
                                Ok(r::Event::Incoming(p::Packet::SubAck(sa))) => {
                                    if ($suback_ok)(&sa) {
                                        state.subscribed.store(true, Ordering::SeqCst);
                                        tracing::info!(filters = ?s.filters, "subscriptions acknowledged");
                                    } else {
                                        tracing::error!(?sa, filters = ?s.filters, "broker refused a subscription");
                                    }
                                }
                                Ok(r::Event::Incoming(p::Packet::Publish(pb))) => {
                                    let qos = pb.qos as u8;
                                    let topic = topic_string(pb.topic);
                                    on_publish(&state, &out, topic, pb.payload, pb.pkid, qos, pb.dup);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    on_disconnect(&state, &e, $cause(&e), s.tls.as_ref(), backoff);
                                    tokio::select! {
                                        _ = stop.changed() => break,
                                        _ = tokio::time::sleep(backoff) => {}
                                    }
                                    backoff = next_backoff(backoff, s.reconnect_max);
                                }
                            }
                        }
                    }
                    // Clean disconnect: queued acks go out first, then DISCONNECT.
                    if state.connected.load(Ordering::SeqCst) && client.try_disconnect().is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(3), async {
                            loop {
                                match el.poll().await {
                                    Ok(r::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                                    Ok(_) => {}
                                }
                            }
                        })
                        .await;
                    }
                    state.connected.store(false, Ordering::SeqCst);
                    metrics::gauge!("v2x_source_connected").set(0.0);
                });
                (poll_task, ack_task)
            }
        }
    };
}

trait TopicString {
    fn into_topic(self) -> String;
}
impl TopicString for String {
    fn into_topic(self) -> String {
        self
    }
}
impl TopicString for bytes::Bytes {
    fn into_topic(self) -> String {
        match String::from_utf8(self.to_vec()) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}
fn topic_string<T: TopicString>(t: T) -> String {
    t.into_topic()
}

client_impl!(
    v4,
    rumqttc,
    rumqttc,
    rumqttc::QoS,
    |pkid| {
        let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::<u8>::new());
        p.pkid = pkid;
        p
    },
    |f: String, q| rumqttc::SubscribeFilter::new(f, q),
    |s: &SourceSettings| {
        let mut o = rumqttc::MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        o.set_keep_alive(s.keep_alive);
        o.set_clean_session(false);
        o.set_manual_acks(true);
        o.set_max_packet_size(s.max_packet_bytes, s.max_packet_bytes);
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            o.set_credentials(u.clone(), p.expose());
        } else if let Some(u) = &s.username {
            o.set_credentials(u.clone(), "");
        }
        if let Some(t) = &s.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(t.config.clone()),
            ));
        }
        o
    },
    |sa: &rumqttc::SubAck| sa
        .return_codes
        .iter()
        .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)),
    tls::cause_v4
);

client_impl!(
    v5,
    rumqttc::v5,
    rumqttc::v5::mqttbytes::v5,
    rumqttc::v5::mqttbytes::QoS,
    |pkid| {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
            "",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            Vec::<u8>::new(),
            None,
        );
        p.pkid = pkid;
        p
    },
    |f: String, q| rumqttc::v5::mqttbytes::v5::Filter::new(f, q),
    |s: &SourceSettings| {
        let mut o = rumqttc::v5::MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        o.set_keep_alive(s.keep_alive);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(s.session_expiry_s));
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(s.receive_maximum));
        o.set_max_packet_size(Some(s.max_packet_bytes.min(u32::MAX as usize) as u32));
        if let Some(u) = &s.username {
            o.set_credentials(u.clone(), s.password.as_ref().map_or("", Secret::expose));
        }
        if let Some(t) = &s.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(t.config.clone()),
            ));
        }
        o
    },
    |sa: &rumqttc::v5::mqttbytes::v5::SubAck| sa.return_codes.iter().all(|c| matches!(
        c,
        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
    )),
    tls::cause_v5
);
