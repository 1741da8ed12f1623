//! v2x-collector: MQTT in, declared schemas, event-time partitioned Parquet out.
//!
//! The modules follow the pipeline: [`source`] (MQTT client, embedded broker) ->
//! [`route`] (topic templates) -> [`decode`] (declared [`schema`]s) -> [`sink`] (partitions,
//! Parquet). [`quarantine`] keeps what cannot be filed, [`message_index`] one row per filed message; [`pipeline`] wires the stages for
//! `run`; [`config`] is the one configuration tree.

pub mod config;
pub mod dataset;
pub mod decode;
pub mod failpoint;
pub mod heap;
pub mod http;
pub mod message_index;
pub mod pipeline;
pub mod quarantine;
pub mod route;
pub mod schema;
pub mod sim;
pub mod sink;
pub mod source;
pub mod status;
pub mod top;
pub mod wal;

/// The hash map for lookups made per message (SipHash costs more there than the rest of
/// routing). Randomly seeded, so keys from the network cannot be chosen to collide.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
