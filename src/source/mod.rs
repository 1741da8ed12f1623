//! Source: MQTT in. A message leaves here with an [`AckToken`]; the broker gets its PUBACK
//! only when the pipeline hands the token back through [`AckSender`].
//!
//! Today the pipeline releases a token once the message's rows are handed to the writer. The
//! write-ahead log will move that point to after its fsync; nothing here changes for that.

pub mod embedded;
pub mod mqtt;
pub mod tls;

use bytes::Bytes;

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// Receive time, microseconds since the epoch (UTC).
    pub recv_us: i64,
    /// The broker marked it as a redelivery (MQTT DUP flag).
    pub dup: bool,
    pub ack: AckToken,
}

/// What it takes to acknowledge one message: the connection it arrived on (a packet id is
/// only meaningful on that connection), its packet id and QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub epoch: u64,
    pub pkid: u16,
    pub qos: u8,
}

/// Hands tokens back to the source, in arrival order.
pub type AckSender = tokio::sync::mpsc::UnboundedSender<Vec<AckToken>>;

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
