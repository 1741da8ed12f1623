//! `simulate`: publishes a [`Zone`](super::zone::Zone) over MQTT, paced at `hz` ticks per
//! second (or as fast as the broker takes it with `--max`), until a duration, a message count
//! or Ctrl-C.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::replay::{PublishSettings, Publisher, ReplayError};
use super::zone::Zone;

#[derive(Debug, Clone)]
pub struct SimulateSettings {
    pub publish: PublishSettings,
    pub connections: usize,
    pub rsus: usize,
    pub vehicles: usize,
    pub hz: f64,
    pub seed: u64,
    /// Put before every RSU esn and vehicle id (see [`Zone::with_id_prefix`]).
    pub id_prefix: String,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub max: bool,
    /// Event time of the first tick, epoch ms (default: now). With `--max` the zone's clock
    /// runs ahead of the wall clock; a start in the past keeps a long run's event times
    /// plausible (not in the future) for the collector.
    pub start_ms: Option<i64>,
}

/// Runs until done or `stop` resolves; returns messages published.
pub async fn run(
    s: &SimulateSettings,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(u64, f64),
) -> Result<u64, ReplayError> {
    let start_ms = s
        .start_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let mut zone =
        Zone::new(s.seed, s.rsus, s.vehicles, s.hz, start_ms).with_id_prefix(&s.id_prefix);
    let mut pubs: Vec<Publisher> = (0..s.connections.max(1))
        .map(|i| {
            let mut p = s.publish.clone();
            p.client_id = format!("{}-{i}", s.publish.client_id);
            Publisher::connect(&p)
        })
        .collect();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = 0u64;
    tokio::pin!(stop);
    'ticks: for n in 0u64.. {
        if s.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if !s.max {
            let due = started + Duration::from_secs_f64(n as f64 / s.hz.max(0.1));
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        for m in zone.tick(n) {
            if s.count.is_some_and(|c| sent >= c) {
                break 'ticks;
            }
            let k = (sent as usize) % pubs.len();
            pubs[k].send(&m.topic, Bytes::from(m.payload)).await?;
            sent += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(
                sent,
                sent as f64 / started.elapsed().as_secs_f64().max(1e-3),
            );
            last_report = Instant::now();
        }
        // `stop` is also checked in --max mode, without waiting.
        if s.max && futures_ready(&mut stop).await {
            break;
        }
    }
    for p in pubs {
        p.finish().await?;
    }
    progress(
        sent,
        sent as f64 / started.elapsed().as_secs_f64().max(1e-3),
    );
    Ok(sent)
}

async fn futures_ready(f: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        _ = f.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}
