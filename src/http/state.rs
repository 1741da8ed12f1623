//! What the HTTP routes read: the decoder's published activity, the pipeline's counters, and
//! the per-second samples that rates and the 15-minute chart come from.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::pipeline::Stats;
use crate::source::mqtt::SourceState;
use crate::status::{Activity, Published};

/// Below this much free space the data disk counts as full for `/readyz`.
pub const LOW_DISK_BYTES: u64 = 64 << 20;
/// Seconds per point of the chart history.
pub const HISTORY_STEP_S: usize = 5;
/// Points of history: 15 minutes.
pub const HISTORY_POINTS: usize = 180;
/// Per-second samples kept: 15 minutes and one.
const SAMPLES: usize = HISTORY_STEP_S * HISTORY_POINTS + 1;

/// Everything the server needs from the running collector.
pub struct StatusInputs {
    pub collector_id: String,
    pub kinds: Vec<String>,
    pub silent_after_s: f64,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub wal_max_bytes: u64,
    pub stats: Arc<Stats>,
    pub source: Arc<SourceState>,
    pub activity: Published,
    pub prometheus: PrometheusHandle,
}

struct Sample {
    at: Instant,
    /// Cumulative messages (filed + quarantined) per kind.
    kinds: Vec<u64>,
}

#[derive(Default)]
struct Samples {
    per_second: VecDeque<Sample>,
    /// Cumulative messages per source, ten seconds ago and now (for `rate_10s`).
    sources: VecDeque<(Instant, Arc<Activity>)>,
}

pub struct Shared {
    pub inputs: StatusInputs,
    pub prometheus: PrometheusHandle,
    started: Instant,
    started_us: i64,
    samples: Mutex<Samples>,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn rfc3339(us: i64) -> Value {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) if us > 0 => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        _ => Value::Null,
    }
}

/// (free, total) bytes of the file system holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by statvfs on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit targets).
    #[allow(clippy::unnecessary_cast)]
    let (frsize, avail, blocks) = (st.f_frsize as u64, st.f_bavail as u64, st.f_blocks as u64);
    Some((avail * frsize, blocks * frsize))
}

/// Rate between the newest sample and the one about `secs` older (or the oldest there is).
fn rate(samples: &VecDeque<Sample>, k: usize, secs: usize) -> f64 {
    let Some(new) = samples.back() else {
        return 0.0;
    };
    let idx = samples.len().saturating_sub(secs + 1);
    let old = &samples[idx];
    let dt = new.at.duration_since(old.at).as_secs_f64();
    if dt <= 0.0 {
        return 0.0;
    }
    new.kinds[k].saturating_sub(old.kinds[k]) as f64 / dt
}

impl Shared {
    pub fn new(inputs: StatusInputs) -> Shared {
        // Counters that only move on trouble exist from the start, so that `increase()` sees
        // their first event.
        for name in [
            "v2x_dedup_hits_total",
            "v2x_sink_commit_errors_total",
            "v2x_source_session_lost_total",
            "v2x_wal_errors_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        Shared {
            prometheus: inputs.prometheus.clone(),
            inputs,
            started: Instant::now(),
            started_us: now_us(),
            samples: Mutex::new(Samples::default()),
        }
    }

    fn activity(&self) -> Arc<Activity> {
        self.inputs
            .activity
            .get()
            .unwrap_or_else(|| Arc::new(Activity::new(self.inputs.kinds.len())))
    }

    /// Called once a second: one more sample, and the gauges.
    pub fn sample(&self) {
        let a = self.activity();
        let kinds = (0..self.inputs.kinds.len())
            .map(|k| a.kinds.get(k).map_or(0, |c| c.messages + c.quarantined))
            .collect();
        let now = Instant::now();
        {
            let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            s.per_second.push_back(Sample { at: now, kinds });
            while s.per_second.len() > SAMPLES {
                s.per_second.pop_front();
            }
            s.sources.push_back((now, a));
            while s.sources.len() > 11 {
                s.sources.pop_front();
            }
        }
        self.update_gauges();
        self.prometheus.run_upkeep();
    }

    /// What keeps `/readyz` from answering ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let src = &self.inputs.source;
        let stats = &self.inputs.stats;
        if !src.connected.load(Ordering::Relaxed) {
            out.push("not connected to the broker");
        } else if !src.subscribed.load(Ordering::Relaxed) {
            out.push("not subscribed");
        }
        if stats.unhealthy.load(Ordering::Relaxed) {
            out.push("write-ahead log failing");
        }
        if stats.wal_full.load(Ordering::Relaxed) {
            out.push("write-ahead log at its bound");
        }
        if stats.commit_failing.load(Ordering::Relaxed) {
            out.push("commits failing (disk or object store), retrying");
        }
        if disk_space(&self.inputs.data_dir).is_some_and(|(free, _)| free < LOW_DISK_BYTES) {
            out.push("data disk full");
        }
        out
    }

    fn silent_count(&self, a: &Activity, now: i64) -> usize {
        let limit = (self.inputs.silent_after_s * 1e6) as i64;
        a.sources
            .values()
            .filter(|s| now - s.last_seen_us > limit)
            .count()
    }

    /// Gauges and counters that are read from state rather than counted on the hot path.
    pub fn update_gauges(&self) {
        let src = &self.inputs.source;
        let a = self.activity();
        metrics::counter!("v2x_source_messages_received_total")
            .absolute(src.received.load(Ordering::Relaxed));
        metrics::counter!("v2x_source_messages_acked_total")
            .absolute(src.acked.load(Ordering::Relaxed));
        metrics::gauge!("v2x_ready").set(if self.not_ready().is_empty() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("v2x_wal_max_bytes").set(self.inputs.wal_max_bytes as f64);
        metrics::gauge!("v2x_wal_bytes").set(crate::wal::disk_bytes(&self.inputs.wal_dir) as f64);
        metrics::gauge!("v2x_sources_seen").set(a.sources.len() as f64);
        metrics::gauge!("v2x_sources_silent").set(self.silent_count(&a, now_us()) as f64);
        metrics::gauge!("v2x_uptime_seconds").set(self.started.elapsed().as_secs_f64());
        metrics::gauge!("v2x_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        if let Some((free, total)) = disk_space(&self.inputs.data_dir) {
            metrics::gauge!("v2x_disk_free_bytes").set(free as f64);
            metrics::gauge!("v2x_disk_total_bytes").set(total as f64);
        }
    }

    /// The `/api/status` document (its shape is documented in the README).
    pub fn status_json(&self) -> Value {
        let a = self.activity();
        let now = now_us();
        let src = &self.inputs.source;
        let stats = &self.inputs.stats;
        let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());

        let mut kinds: Vec<(usize, &String)> = self.inputs.kinds.iter().enumerate().collect();
        kinds.sort_by_key(|(_, name)| name.as_str());
        let kinds: Vec<Value> = kinds
            .into_iter()
            .map(|(k, name)| {
                let c = a.kinds.get(k).copied().unwrap_or_default();
                json!({
                    "kind": name,
                    "messages": c.messages,
                    "rows": c.rows,
                    "quarantined": c.quarantined,
                    "rate_10s": rate(&samples.per_second, k, 10),
                    "rate_1m": rate(&samples.per_second, k, 60),
                    "rate_15m": rate(&samples.per_second, k, 900),
                    "history": history(&samples.per_second, k),
                })
            })
            .collect();

        let limit = self.inputs.silent_after_s;
        // Counts at the oldest of the last ten samples; a source that was not there yet
        // started from zero.
        let (oldest_at, before): (Option<Instant>, HashMap<&str, u64>) = samples
            .sources
            .front()
            .map(|(at, old)| {
                let counts = old
                    .sources
                    .iter()
                    .map(|(id, s)| (&**id, s.messages + s.quarantined))
                    .collect();
                (Some(*at), counts)
            })
            .unwrap_or_default();
        let newest_at = samples.sources.back().map(|(at, _)| *at);
        let mut sources: Vec<(&Box<str>, _)> = a.sources.iter().collect();
        sources.sort_by(|x, y| x.0.cmp(y.0));
        let sources: Vec<Value> = sources
            .into_iter()
            .map(|(id, s)| {
                let total = s.messages + s.quarantined;
                let silent_for = (now - s.last_seen_us).max(0) as f64 / 1e6;
                let old = before.get(&**id).copied().unwrap_or(0);
                let rate_10s = match (oldest_at, newest_at) {
                    // A silent source sends nothing now, whatever the window still holds.
                    _ if silent_for > limit => 0.0,
                    (Some(at), Some(newest)) if newest > at => {
                        total.saturating_sub(old) as f64 / newest.duration_since(at).as_secs_f64()
                    }
                    _ => 0.0,
                };
                let kinds: Vec<&str> = (0..64)
                    .filter(|k| s.kinds & (1 << k) != 0)
                    .filter_map(|k| self.inputs.kinds.get(k).map(String::as_str))
                    .collect();
                json!({
                    "source_id": id,
                    "kinds": kinds,
                    "messages": s.messages,
                    "quarantined": s.quarantined,
                    "gaps": s.gaps,
                    "rate_10s": rate_10s,
                    "last_seen": rfc3339(s.last_seen_us),
                    "silent_for_s": silent_for,
                    "silent": silent_for > limit,
                    // Receive minus event time: delay plus the source's clock offset.
                    "delay_ms": (s.delay_samples > 0).then(|| s.delay_last_us as f64 / 1e3),
                    "delay_avg_ms": (s.delay_samples > 0).then(|| s.delay_avg_us as f64 / 1e3),
                })
            })
            .collect();
        drop(samples);

        let mut by_reason: Vec<Value> = crate::quarantine::Reason::ALL
            .iter()
            .map(|r| json!({"reason": r.as_str(), "count": a.by_reason.get(r).copied().unwrap_or(0)}))
            .collect();
        by_reason.sort_by(|x, y| y["count"].as_u64().cmp(&x["count"].as_u64()));
        let recent: Vec<Value> = a
            .recent
            .iter()
            .rev()
            .map(|q| {
                json!({
                    "at": rfc3339(q.recv_us),
                    "reason": q.reason.as_str(),
                    "topic": q.topic,
                    "source_id": q.source_id,
                    "detail": q.detail,
                    "payload_head": q.payload_head,
                })
            })
            .collect();
        let (free, total) = disk_space(&self.inputs.data_dir).unwrap_or((0, 0));
        let problems = self.not_ready();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "collector_id": self.inputs.collector_id,
            "started": rfc3339(self.started_us),
            "now": rfc3339(now),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "silent_after_s": limit,
            "ready": problems.is_empty(),
            "not_ready": problems,
            "health": {
                "connected": src.connected.load(Ordering::Relaxed),
                "subscribed": src.subscribed.load(Ordering::Relaxed),
                "wal_ok": !stats.unhealthy.load(Ordering::Relaxed),
                "wal_full": stats.wal_full.load(Ordering::Relaxed),
                "disk_full": total > 0 && free < LOW_DISK_BYTES,
            },
            "totals": {
                "received": load(&src.received),
                "acked": load(&src.acked),
                "decoded": load(&stats.decoded_messages),
                "rows": load(&stats.rows),
                "quarantined": load(&stats.quarantined),
                "dedup_hits": load(&stats.dedup_hits),
                "gap_messages": load(&stats.gap_messages),
                "files_committed": load(&stats.files_committed),
                "rows_committed": load(&stats.rows_committed),
            },
            "history_step_s": HISTORY_STEP_S,
            "kinds": kinds,
            "sources": sources,
            "untracked_source_messages": a.untracked_source_messages,
            "quarantine": {
                "total": a.by_reason.values().sum::<u64>(),
                "by_reason": by_reason,
                "recent": recent,
            },
            "wal": {
                "bytes": crate::wal::disk_bytes(&self.inputs.wal_dir),
                "max_bytes": self.inputs.wal_max_bytes,
            },
            "disk": {
                "data_dir": self.inputs.data_dir.display().to_string(),
                "free_bytes": free,
                "total_bytes": total,
            },
        })
    }
}

/// Messages/s per [`HISTORY_STEP_S`] over the last 15 minutes, oldest first.
fn history(samples: &VecDeque<Sample>, k: usize) -> Vec<f64> {
    let n = samples.len();
    let mut out = Vec::new();
    let mut end = n.saturating_sub(1);
    while end >= HISTORY_STEP_S && out.len() < HISTORY_POINTS {
        let (new, old) = (&samples[end], &samples[end - HISTORY_STEP_S]);
        let dt = new.at.duration_since(old.at).as_secs_f64();
        let v = if dt > 0.0 {
            new.kinds[k].saturating_sub(old.kinds[k]) as f64 / dt
        } else {
            0.0
        };
        out.push((v * 100.0).round() / 100.0);
        end -= HISTORY_STEP_S;
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn samples(counts: &[u64]) -> VecDeque<Sample> {
        let t0 = Instant::now();
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| Sample {
                at: t0 + Duration::from_secs(i as u64),
                kinds: vec![*c],
            })
            .collect()
    }

    #[test]
    fn rates_and_history_from_per_second_samples() {
        // 10 messages a second for 20 s.
        let s = samples(&(0..=20).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(rate(&s, 0, 10), 10.0);
        // Not a minute of samples yet: the rate over what there is.
        assert_eq!(rate(&s, 0, 60), 10.0);
        assert_eq!(history(&s, 0), vec![10.0; 4]);
        assert_eq!(rate(&samples(&[]), 0, 10), 0.0);
        assert!(history(&samples(&[5]), 0).is_empty());
    }

    #[test]
    fn disk_space_of_this_directory() {
        let (free, total) = disk_space(std::path::Path::new(".")).unwrap();
        assert!(total > 0 && free <= total);
        assert!(disk_space(std::path::Path::new("/no/such/dir")).is_none());
    }
}
