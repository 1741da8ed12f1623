//! Activity per kind and per source, for `/api/status`, the dashboard and `top`.
//!
//! The decoder thread owns an [`Activity`] and updates it for every message (a hash lookup by
//! the source id, no allocation once a source is known). About once a second it publishes a
//! copy into a [`Published`] slot that the HTTP server reads; rates and histories are computed
//! on the server side from those copies.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::quarantine::Reason;

/// Sources followed at most; later ones are only counted (invented source ids cannot grow
/// memory without bound).
pub const MAX_SOURCES: usize = 20_000;
/// Quarantined examples kept for the dashboard.
pub const RECENT_QUARANTINED: usize = 20;
/// Bytes of a quarantined payload shown as an example.
const PAYLOAD_HEAD_BYTES: usize = 200;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub messages: u64,
    pub rows: u64,
    pub quarantined: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceEntry {
    /// Receive time of the newest message, epoch microseconds.
    pub last_seen_us: i64,
    pub messages: u64,
    pub quarantined: u64,
    /// Gap events (message-counter jumps).
    pub gaps: u64,
    /// Bit `i` set: the source sent kind `i`.
    pub kinds: u64,
    /// Receive time minus the newest event time of its latest message with rows (delay plus
    /// clock offset), microseconds.
    pub delay_last_us: i64,
    /// The same, smoothed over recent messages (exponential, weight 1/8).
    pub delay_avg_us: i64,
    /// Messages the delay was measured on.
    pub delay_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineExample {
    pub recv_us: i64,
    pub reason: Reason,
    pub topic: String,
    pub source_id: Option<String>,
    pub detail: String,
    /// The payload's first bytes, lossily as text.
    pub payload_head: String,
}

/// What the decoder has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    pub kinds: Vec<KindCounts>,
    pub sources: crate::FastMap<Box<str>, SourceEntry>,
    /// Messages from sources beyond [`MAX_SOURCES`].
    pub untracked_source_messages: u64,
    pub by_reason: HashMap<Reason, u64>,
    pub recent: VecDeque<QuarantineExample>,
}

impl Activity {
    pub fn new(kinds: usize) -> Activity {
        Activity {
            kinds: vec![KindCounts::default(); kinds],
            ..Activity::default()
        }
    }

    /// Applies `update` to a source's entry: one hash lookup for a known source (this runs
    /// for every message), an insert for a new one while there is room.
    fn source(&mut self, source_id: &str, update: impl FnOnce(&mut SourceEntry)) {
        if source_id.is_empty() {
            return;
        }
        if let Some(e) = self.sources.get_mut(source_id) {
            update(e);
        } else if self.sources.len() >= MAX_SOURCES {
            self.untracked_source_messages += 1;
        } else {
            update(self.sources.entry(source_id.into()).or_default());
        }
    }

    /// A message filed as `rows` rows of kind `kind`.
    /// A filed message; `event_us` is the newest event time of its rows (none for no rows).
    pub fn filed(
        &mut self,
        kind: usize,
        source_id: &str,
        rows: usize,
        event_us: Option<i64>,
        recv_us: i64,
    ) {
        if let Some(k) = self.kinds.get_mut(kind) {
            k.messages += 1;
            k.rows += rows as u64;
        }
        self.source(source_id, |s| {
            s.messages += 1;
            s.last_seen_us = s.last_seen_us.max(recv_us);
            if kind < 64 {
                s.kinds |= 1 << kind;
            }
            if let Some(event) = event_us {
                let delay = recv_us - event;
                s.delay_last_us = delay;
                s.delay_avg_us = if s.delay_samples == 0 {
                    delay
                } else {
                    s.delay_avg_us + (delay - s.delay_avg_us) / 8
                };
                s.delay_samples += 1;
            }
        });
    }

    /// A message-counter jump of a source.
    pub fn gap(&mut self, source_id: &str) {
        self.source(source_id, |s| s.gaps += 1);
    }

    /// A quarantined message; `kind` and `source_id` when routing got that far.
    pub fn quarantined(
        &mut self,
        kind: Option<usize>,
        source_id: Option<&str>,
        m: &crate::decode::Raw,
        reason: Reason,
        detail: &str,
    ) {
        let (recv_us, topic, payload) = (m.recv_us, m.topic, m.payload);
        *self.by_reason.entry(reason).or_default() += 1;
        if let Some(k) = kind.and_then(|k| self.kinds.get_mut(k)) {
            k.quarantined += 1;
        }
        self.source(source_id.unwrap_or_default(), |s| {
            s.quarantined += 1;
            s.last_seen_us = s.last_seen_us.max(recv_us);
            if let Some(k) = kind.filter(|k| *k < 64) {
                s.kinds |= 1 << k;
            }
        });
        if self.recent.len() >= RECENT_QUARANTINED {
            self.recent.pop_front();
        }
        let head = &payload[..payload.len().min(PAYLOAD_HEAD_BYTES)];
        self.recent.push_back(QuarantineExample {
            recv_us,
            reason,
            topic: topic.chars().take(256).collect(),
            source_id: source_id.filter(|s| !s.is_empty()).map(str::to_string),
            detail: detail.chars().take(300).collect(),
            payload_head: String::from_utf8_lossy(head).into_owned(),
        });
    }
}

/// The slot the decoder thread publishes into and the HTTP server reads.
#[derive(Debug, Clone, Default)]
pub struct Published {
    inner: Arc<Mutex<Option<Arc<Activity>>>>,
}

impl Published {
    pub fn set(&self, a: Activity) {
        let mut slot = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::new(a));
    }

    pub fn get(&self) -> Option<Arc<Activity>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Publishes at most once per `every` (the decoder thread calls it on each loop turn).
#[derive(Debug)]
pub struct Publisher {
    pub slot: Published,
    every: Duration,
    last: Option<Instant>,
}

impl Publisher {
    pub fn new(slot: Published, every: Duration) -> Publisher {
        Publisher {
            slot,
            every,
            last: None,
        }
    }

    pub fn maybe_publish(&mut self, a: &Activity) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        self.slot.set(a.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Raw;

    #[test]
    fn counts_per_kind_and_source_and_keeps_recent_examples() {
        let mut a = Activity::new(3);
        a.filed(0, "RSU1", 5, Some(4), 10);
        a.filed(2, "RSU1", 1, None, 30);
        a.filed(0, "car-1", 1, Some(20), 20);
        a.gap("car-1");
        let bad = Raw::new("V2X/RSU/RSU1/SPAT/UP", b"{oops", 40);
        a.quarantined(
            Some(1),
            Some("RSU1"),
            &bad,
            Reason::InvalidJson,
            "expected value",
        );
        let lost = Raw::new("x/y", b"", 50);
        a.quarantined(None, None, &lost, Reason::UnknownTopic, "no route");
        assert_eq!(
            a.kinds[0],
            KindCounts {
                messages: 2,
                rows: 6,
                quarantined: 0
            }
        );
        assert_eq!(a.kinds[1].quarantined, 1);
        let rsu = a.sources["RSU1"];
        assert_eq!((rsu.messages, rsu.quarantined, rsu.kinds), (2, 1, 0b111));
        assert_eq!(rsu.last_seen_us, 40);
        assert_eq!(a.sources["car-1"].gaps, 1);
        assert_eq!(a.by_reason[&Reason::InvalidJson], 1);
        assert_eq!(a.recent.len(), 2);
        assert_eq!(a.recent[0].payload_head, "{oops");
        assert_eq!(a.recent[1].source_id, None);
    }

    #[test]
    fn sources_are_bounded_and_examples_rotate() {
        let mut a = Activity::new(1);
        for i in 0..MAX_SOURCES + 5 {
            a.filed(0, &format!("s{i}"), 1, None, 1);
        }
        assert_eq!(a.sources.len(), MAX_SOURCES);
        assert_eq!(a.untracked_source_messages, 5);
        assert_eq!(a.kinds[0].messages, (MAX_SOURCES + 5) as u64);
        for i in 0..RECENT_QUARANTINED + 3 {
            let topic = format!("t{i}");
            let m = Raw::new(&topic, &[0xff; 500], 1);
            a.quarantined(None, None, &m, Reason::UnknownTopic, "");
        }
        assert_eq!(a.recent.len(), RECENT_QUARANTINED);
        assert_eq!(a.recent[0].topic, "t3");
        assert_eq!(a.recent[0].payload_head.chars().count(), 200);
    }
}
