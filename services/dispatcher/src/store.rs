//! The dispatcher's state in Redis.
//!
//! | key (defaults) | type | content |
//! | --- | --- | --- |
//! | `storage:events` | stream | the storage events (written by storage; read through the consumer group `dispatcher`) |
//! | `dispatcher:retries` | sorted set | scheduled retries: member = a JSON [`RetryTask`] (event included), score = due time (ms) |
//! | `dispatcher:dlq` | stream | dead letters, fields of [`DeadLetter`]; trimmed to about `dlq_max_entries` on every append (`MAXLEN ~`) |
//! | `dispatcher:schedule:{name}:fired` | string | the last firing time (ms) a scheduler instance claimed |
//! | `dispatcher:lock:{name}` | string, expiring | the run lock of a scheduled job (random token) |
//! | `dispatcher:reconciler:{image_id}` | hash, 7 days TTL | `count` and `last_ms` of the reconciler's re-emissions |
//!
//! # At least once
//!
//! A stream entry is acknowledged (`XACK`) only in the same `MULTI` that records what
//! happens next for each of its targets: nothing (delivered), a retry in the sorted set, or a
//! dead letter. A crash before that leaves the entry pending; it is taken over with
//! `XAUTOCLAIM` after `claim_idle_ms` and delivered again. A due retry is taken by pushing its
//! score forward by `claim_idle_ms` (a lease, [`CLAIM_DUE`]); its follow-up replaces it only
//! if it is still there ([`FINISH`]), so a retry taken over after a crash is finished once.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use prost::Message;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use storemesh_proto::events::v1::Event;

use crate::retry::DeadReason;

/// Takes up to `ARGV[2]` retries due at `ARGV[1]` (ms) and leases them until `ARGV[3]`.
pub const CLAIM_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], member)
end
return due
";

/// Finishes a retry `ARGV[1]` if it is still scheduled: `ARGV[2]` is `done`, `retry` (replace
/// it with `ARGV[4]` due at `ARGV[5]`) or `dead` (append the fields `ARGV[6..]` to the
/// dead-letter stream `KEYS[2]`, trimmed to about `ARGV[3]` entries). Returns 0 when another
/// instance finished it first.
pub const FINISH: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
elseif ARGV[2] == 'dead' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 6))
end
return 1
";

/// Moves dead letter `ARGV[1]` out of `KEYS[1]` into the retries `KEYS[2]` as `ARGV[3]` due at
/// `ARGV[2]`. Returns 0 when there is no such dead letter.
pub const REPLAY: &str = r"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
";

/// Claims firing `ARGV[1]` (ms) of a schedule unless an instance already did.
pub const CLAIM_FIRING: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Deletes the consumers of group `ARGV[1]` on stream `KEYS[1]` other than `ARGV[2]` that
/// have nothing pending and have been idle for `ARGV[3]` ms. Returns how many.
pub const FORGET_CONSUMERS: &str = r"
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] ~= ARGV[2] and fields['pending'] == 0
      and fields['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
";

/// Releases a lock if it still holds this instance's token.
pub const RELEASE_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A scheduled retry (or replay) of one event for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryTask {
    pub target: String,
    /// The rule that routed the event (informational).
    pub rule: String,
    /// The attempt number this task makes.
    pub attempt: u32,
    pub first_attempt_ms: i64,
    pub last_error: String,
    /// Replayed from the dead-letter stream by an operator: the age limit does not apply.
    pub replay: bool,
    /// The protobuf-encoded `Event`, base64.
    pub event: String,
}

impl RetryTask {
    pub fn member(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(member: &str) -> Option<Self> {
        serde_json::from_str(member).ok()
    }

    pub fn encoded_event(&self) -> Option<Vec<u8>> {
        STANDARD.decode(&self.event).ok()
    }

    pub fn encode_event(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }
}

/// One entry of the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The DLQ stream entry id (empty before it is written).
    pub id: String,
    /// The protobuf-encoded `Event` (may be empty or garbage for `undecodable`).
    #[serde(skip)]
    pub event: Vec<u8>,
    pub event_id: String,
    pub event_type: String,
    pub key: String,
    pub target: String,
    pub rule: String,
    pub reason: String,
    pub attempts: u32,
    pub last_error: String,
    pub first_attempt_ms: i64,
    pub failed_ms: i64,
    /// The storage stream entry the event came from, when it came from there.
    pub source_entry: String,
}

impl DeadLetter {
    /// Stream fields, in the order they are written.
    pub fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("event", self.event.clone()),
            ("id", self.event_id.clone().into_bytes()),
            ("type", self.event_type.clone().into_bytes()),
            ("key", self.key.clone().into_bytes()),
            ("target", self.target.clone().into_bytes()),
            ("rule", self.rule.clone().into_bytes()),
            ("reason", self.reason.clone().into_bytes()),
            ("attempts", self.attempts.to_string().into_bytes()),
            ("last_error", self.last_error.clone().into_bytes()),
            (
                "first_attempt_ms",
                self.first_attempt_ms.to_string().into_bytes(),
            ),
            ("failed_ms", self.failed_ms.to_string().into_bytes()),
            ("source_entry", self.source_entry.clone().into_bytes()),
        ]
    }

    /// Flattened `field, value, ...` for `XADD` inside a script.
    pub fn flat_fields(&self) -> Vec<Vec<u8>> {
        self.fields()
            .into_iter()
            .flat_map(|(name, value)| [name.as_bytes().to_vec(), value])
            .collect()
    }

    pub fn from_entry(id: &str, fields: &HashMap<String, redis::Value>) -> Self {
        let bytes = |name: &str| -> Vec<u8> {
            fields
                .get(name)
                .and_then(|value| redis::from_redis_value::<Vec<u8>>(value.clone()).ok())
                .unwrap_or_default()
        };
        let text = |name: &str| String::from_utf8_lossy(&bytes(name)).into_owned();
        Self {
            id: id.to_owned(),
            event: bytes("event"),
            event_id: text("id"),
            event_type: text("type"),
            key: text("key"),
            target: text("target"),
            rule: text("rule"),
            reason: text("reason"),
            attempts: text("attempts").parse().unwrap_or_default(),
            last_error: text("last_error"),
            first_attempt_ms: text("first_attempt_ms").parse().unwrap_or_default(),
            failed_ms: text("failed_ms").parse().unwrap_or_default(),
            source_entry: text("source_entry"),
        }
    }

    pub fn decoded_event(&self) -> Option<Event> {
        Event::decode(self.event.as_slice()).ok()
    }

    pub fn for_event(
        event: &Event,
        encoded: &[u8],
        target: &str,
        rule: &str,
        reason: DeadReason,
    ) -> Self {
        Self {
            id: String::new(),
            event: encoded.to_vec(),
            event_id: event.id.clone(),
            event_type: event.r#type().as_str_name().to_owned(),
            key: event.subject.clone(),
            target: target.to_owned(),
            rule: rule.to_owned(),
            reason: reason.as_str().to_owned(),
            attempts: 0,
            last_error: String::new(),
            first_attempt_ms: 0,
            failed_ms: storemesh_runtime::time::now_ms(),
            source_entry: String::new(),
        }
    }
}

/// `<ms>-<seq>` (or `<ms>`), as Redis writes stream entry ids.
fn is_stream_id(id: &str) -> bool {
    let digits = |part: &str| {
        !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit())
    };
    match id.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => digits(id),
    }
}

/// Dead-letter stream operations shared by the dispatcher and the CLI.
#[derive(Clone)]
pub struct DeadLetters {
    redis: ConnectionManager,
    dlq: String,
    retries: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no dead letter with id {0}")]
    NotFound(String),
    #[error("dead letter {0} has no deliverable event (reason {1}); it can only be purged")]
    NotReplayable(String, String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl DeadLetters {
    pub fn new(redis: ConnectionManager, dlq: &str, retries: &str) -> Self {
        Self {
            redis,
            dlq: dlq.to_owned(),
            retries: retries.to_owned(),
        }
    }

    /// Oldest first, at most `limit`, after `after` (exclusive) when given.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.dlq)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(reply
            .ids
            .iter()
            .map(|entry| DeadLetter::from_entry(&entry.id, &entry.map))
            .collect())
    }

    pub async fn get(&self, id: &str) -> Result<DeadLetter, DlqError> {
        if !is_stream_id(id) {
            return Err(DlqError::NotFound(id.to_owned()));
        }
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.dlq)
            .arg(id)
            .arg(id)
            .query_async(&mut self.redis.clone())
            .await?;
        reply
            .ids
            .first()
            .map(|entry| DeadLetter::from_entry(&entry.id, &entry.map))
            .ok_or_else(|| DlqError::NotFound(id.to_owned()))
    }

    /// Moves the dead letter back to delivery: a retry due now, attempt 1, exempt from the age
    /// limit, for the same target. Returns it.
    pub async fn replay(&self, id: &str) -> Result<DeadLetter, DlqError> {
        let letter = self.get(id).await?;
        if letter.decoded_event().is_none() || letter.target.is_empty() {
            return Err(DlqError::NotReplayable(
                letter.id.clone(),
                letter.reason.clone(),
            ));
        }
        let now = storemesh_runtime::time::now_ms();
        let task = RetryTask {
            target: letter.target.clone(),
            rule: letter.rule.clone(),
            attempt: 1,
            first_attempt_ms: now,
            last_error: String::new(),
            replay: true,
            event: RetryTask::encode_event(&letter.event),
        };
        let moved: i64 = redis::Script::new(REPLAY)
            .key(&self.dlq)
            .key(&self.retries)
            .arg(&letter.id)
            .arg(now)
            .arg(task.member())
            .invoke_async(&mut self.redis.clone())
            .await?;
        if moved == 0 {
            return Err(DlqError::NotFound(id.to_owned()));
        }
        Ok(letter)
    }

    /// Deletes the given dead letters, or all of them when `ids` is empty. Returns how many.
    pub async fn purge(&self, ids: &[String]) -> Result<u64, DlqError> {
        let mut redis = self.redis.clone();
        if ids.is_empty() {
            let (length, _): (u64, i64) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&self.dlq)
                .cmd("XTRIM")
                .arg(&self.dlq)
                .arg("MAXLEN")
                .arg(0)
                .query_async(&mut redis)
                .await?;
            return Ok(length);
        }
        let deleted: u64 = redis::cmd("XDEL")
            .arg(&self.dlq)
            .arg(ids)
            .query_async(&mut redis)
            .await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_tasks_round_trip() {
        let task = RetryTask {
            target: "thumbnail".into(),
            rule: "originals".into(),
            attempt: 2,
            first_attempt_ms: 5,
            last_error: "HTTP 503".into(),
            replay: false,
            event: RetryTask::encode_event(b"\x00\x01binary"),
        };
        let parsed = RetryTask::parse(&task.member()).unwrap();
        assert_eq!(parsed, task);
        assert_eq!(parsed.encoded_event().unwrap(), b"\x00\x01binary");
        assert!(RetryTask::parse("not json").is_none());
    }
}
