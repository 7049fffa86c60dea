//! A streamed job's chunk, as published to its `reply_to` before the result
//! (`schemas/chunk.schema.json`; DESIGN.md "Streamed output").

use serde::{Deserialize, Serialize};

/// The header every chunk carries, with the value [`CHUNK_KIND`]: a listener tells a
/// chunk from the terminal result (which has no such header) without parsing the body.
pub const KIND_HEADER: &str = "Switchyard-Kind";
/// The value of [`KIND_HEADER`] on a chunk.
pub const CHUNK_KIND: &str = "chunk";
/// The header with the chunk's `seq` (decimal), so that a listener can order chunks
/// without parsing them.
pub const SEQ_HEADER: &str = "Switchyard-Seq";
/// The header with `<tenant>:<id>` of the job (what `Nats-Msg-Id` carries on submit).
pub const JOB_HEADER: &str = "Switchyard-Job";

/// `seq` of the first chunk of delivery `n` (1-based) is `(n − 1) × DELIVERY_STRIDE`: so
/// `seq` keeps increasing when the job is redelivered (after a worker died, or a retry).
pub const DELIVERY_STRIDE: u64 = 1 << 32;

/// One chunk: either a `delta` (text to append) or a `reset` (discard every delta
/// received so far for this job; `reason` says why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub id: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
