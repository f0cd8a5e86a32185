//! The storage service's Redis data: object metadata, the key index, the event stream, upload
//! leases, idempotency records and garbage. Every change that touches several keys is one Lua
//! script (atomic). Scripts address keys they derive themselves, so this schema targets one
//! Redis (or a primary with replicas), not Redis Cluster.
//!
//! | key | type | content |
//! |---|---|---|
//! | `storage:obj:{key}` | hash | `info` (`storemesh.storage.v1.ObjectInfo`, protobuf), `blob` (backend path of its bytes), `size` (bytes), `seller` (who the bytes are charged to, if anyone) |
//! | `storage:index` | sorted set | every object key, score 0: lexicographic order = byte order (List) |
//! | `storage.events.stream` (default `storage:events`) | stream | one entry per committed change: `event`, `id`, `type`, `key` |
//! | `storage:uploads` | sorted set | blob of every upload in progress → its lease deadline (ms) |
//! | `storage:garbage` | sorted set | blob no version references any more → when it may be deleted (ms) |
//! | `storage:active:{subject}` | sorted set | blob of every upload of one identity in progress → its lease deadline (ms): the per-identity concurrency limit, entries past their deadline pruned when counted |
//! | `storage:usage` | hash | seller id → bytes stored under their products (current versions only) |
//! | `storage:product-seller` | hash | product id → the seller its bytes are charged to |
//! | `storage:idem:{sha256(subject, idempotency key)}` | hash | `state` (`pending`/`done`), `target`, `token` (while pending), `result` (ObjectInfo); expires with the upload lease while pending, 24 h after success |
//!
//! ## Commit protocol
//!
//! The commit point of an upload is the `COMMIT` script: in one step it points the key at the
//! new blob, indexes it, appends the `OBJECT_CREATED` event to the stream, moves the replaced
//! blob to garbage, ends the upload's lease and records the idempotency result. Delete is the
//! same for `OBJECT_DELETED`. So an event exists exactly when its change was committed, in
//! commit order per key: no separate publish step can fail in between, and a crash or Redis
//! outage leaves either both or neither.
//!
//! Before any byte goes to the backend, `BEGIN` registers the blob in `storage:uploads` with a
//! lease that the upload renews while it streams. An upload that fails removes its blob and
//! then the lease. If the process dies (or Redis is unreachable when it tries to clean up), the
//! lease runs out and the janitor moves the blob to garbage; `COMMIT` requires the lease entry,
//! so an upload whose lease was taken over can no longer commit (it answers `ABORTED`). The
//! janitor deletes garbage blobs after `gc_grace_ms` and forgets them only after the backend
//! delete succeeded, so no blob is lost track of.
//!
//! ## Per-identity uploads and per-seller usage
//!
//! `BEGIN` also adds the blob to `storage:active:{subject}` (scored by the same lease deadline,
//! renewed with it) unless the identity already has its maximum of unexpired entries;
//! `COMMIT` and `ABANDON` remove it, and an entry whose upload died ages out with its lease.
//! So the limit holds across instances and a crashed upload's slot comes back by itself.
//!
//! `COMMIT` charges the new version's size to its seller in `storage:usage` and takes the
//! replaced version's size off its seller (both read from the object hashes), and refuses
//! (committing nothing) when the seller's usage would go over the quota passed in; `DELETE`
//! takes the deleted version's size off. Usage therefore changes in the same script as the
//! object, and only for current versions (garbage awaiting deletion is not charged).
//! [`Store::recount_usage`] rebuilds `storage:usage` from the object hashes if it ever drifts
//! (manual edits, objects committed before accounting existed).

use std::time::Duration;

use prost::Message;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use storemesh_proto::storage::v1::ObjectInfo;
use storemesh_runtime::{ServiceError, ServiceResult};

use crate::config::EventsConfig;
use crate::events::Outgoing;
use crate::validate::hex;

const OBJECT: &str = "storage:obj:";
const INDEX: &str = "storage:index";
const UPLOADS: &str = "storage:uploads";
const GARBAGE: &str = "storage:garbage";
const IDEMPOTENCY: &str = "storage:idem:";
const ACTIVE: &str = "storage:active:";
const USAGE: &str = "storage:usage";
const PRODUCT_SELLER: &str = "storage:product-seller";
const RECOUNT_CURSOR: &str = "storage:usage:recount:cursor";
const RECOUNT_TOTALS: &str = "storage:usage:recount";
/// How long a recount may pause between two steps before it is considered abandoned.
const RECOUNT_TTL: Duration = Duration::from_secs(600);

/// How long a successful upload's idempotency key is remembered (the contract's 24 hours).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// An object's current version.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRecord {
    pub info: ObjectInfo,
    pub blob: String,
}

/// An upload's idempotency claim.
#[derive(Debug, Clone)]
pub struct Idempotency {
    redis_key: String,
    /// What the upload targets (`key:…` or `prefix:…`); a repeat must target the same.
    target: String,
    /// Identifies this upload's claim while it is pending.
    token: String,
}

impl Idempotency {
    pub fn new(subject: &str, idempotency_key: &str, target: String) -> Self {
        let mut hasher = Sha256::new();
        // Length-prefixed, so (subject, key) pairs cannot collide by concatenation.
        hasher.update((subject.len() as u64).to_be_bytes());
        hasher.update(subject.as_bytes());
        hasher.update(idempotency_key.as_bytes());
        Self {
            redis_key: format!("{IDEMPOTENCY}{}", hex(&hasher.finalize())),
            target,
            token: ulid::Ulid::new().to_string(),
        }
    }
}

/// What `BEGIN` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// The upload may proceed; its lease is registered.
    Started,
    /// The idempotency key already succeeded: this is its result.
    Done(ObjectInfo),
    /// The idempotency key was used with another target.
    Conflict,
    /// An upload with the idempotency key is in progress.
    Busy,
    /// The identity already has its maximum of uploads in progress.
    TooManyUploads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Committed,
    /// The upload's lease (or idempotency claim) was taken over; nothing was committed.
    LeaseLost,
    /// The seller's stored bytes would exceed the quota; nothing was committed.
    OverQuota,
}

/// Whom an upload's bytes are charged to, and the quota to hold them to.
#[derive(Debug, Clone, Default)]
pub struct Charge {
    /// The seller, when the key is under a product whose seller is known.
    pub seller: Option<String>,
    /// The product, whose seller is remembered for later uploads under it (variants).
    pub product_id: Option<String>,
    /// Refuse the commit when the seller's usage would exceed this.
    pub quota: Option<u64>,
}

/// The slot an upload holds among its identity's uploads in progress.
#[derive(Debug, Clone)]
pub struct Slot {
    redis_key: String,
    max: u32,
}

impl Slot {
    pub fn new(subject: &str, max: u32) -> Self {
        Self {
            redis_key: format!("{ACTIVE}{subject}"),
            max,
        }
    }
}

const BEGIN: &str = r"
if ARGV[3] == '1' then
  local state = redis.call('HGET', KEYS[2], 'state')
  if state then
    if redis.call('HGET', KEYS[2], 'target') ~= ARGV[4] then return {'conflict'} end
    if state == 'done' then return {'done', redis.call('HGET', KEYS[2], 'result')} end
    return {'busy'}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return {'limit'} end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], 'state', 'pending', 'target', ARGV[4], 'token', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {'started'}
";

const RENEW: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if ARGV[3] == '1' and redis.call('HGET', KEYS[2], 'token') ~= ARGV[4] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
if ARGV[3] == '1' then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return 1
";

const ABANDON: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == '1' and redis.call('HGET', KEYS[2], 'token') == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
";

/// Lua helpers shared by the scripts that change usage: byte-order `<=` (Lua's own string
/// comparison follows the server's collation locale), and "has the running recount already
/// walked past this key" (then a change must be applied to the recount's totals too).
macro_rules! usage_helpers {
    () => {
        r"
local function le(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local function scanned(cursor_key, key)
  local cursor = redis.call('GET', cursor_key)
  return cursor and le(key, cursor)
end
local function charge(hash, seller, delta)
  if seller and seller ~= '' and delta ~= 0 then redis.call('HINCRBY', hash, seller, delta) end
end
"
    };
}

const COMMIT: &str = concat!(
    usage_helpers!(),
    r"
if not redis.call('ZSCORE', KEYS[4], ARGV[2]) then return 0 end
if ARGV[9] == '1' and redis.call('HGET', KEYS[6], 'token') ~= ARGV[10] then return 0 end
local seller = ARGV[12]
local size = tonumber(ARGV[13])
local old = redis.call('HMGET', KEYS[1], 'blob', 'seller', 'size')
local old_seller = old[2]
local old_size = tonumber(old[3]) or 0
if seller ~= '' and ARGV[14] ~= '' then
  local used = tonumber(redis.call('HGET', KEYS[8], seller) or '0')
  if old_seller == seller then used = used - old_size end
  if used + size > tonumber(ARGV[14]) then return -1 end
end
local recounted = scanned(KEYS[10], ARGV[1])
if old[1] then redis.call('ZADD', KEYS[5], ARGV[8], old[1]) end
charge(KEYS[8], old_seller, -old_size)
if recounted then charge(KEYS[11], old_seller, -old_size) end
redis.call('HSET', KEYS[1], 'info', ARGV[3], 'blob', ARGV[2], 'size', ARGV[13])
if seller ~= '' then
  redis.call('HSET', KEYS[1], 'seller', seller)
  charge(KEYS[8], seller, size)
  if recounted then charge(KEYS[11], seller, size) end
  if ARGV[15] ~= '' then redis.call('HSETNX', KEYS[9], ARGV[15], seller) end
else
  redis.call('HDEL', KEYS[1], 'seller')
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[7], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*',
  'event', ARGV[4], 'id', ARGV[5], 'type', ARGV[6], 'key', ARGV[1])
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[6], 'state', 'done', 'result', ARGV[3])
  redis.call('HDEL', KEYS[6], 'token')
  redis.call('PEXPIRE', KEYS[6], ARGV[11])
end
return 1
"
);

const DELETE: &str = concat!(
    usage_helpers!(),
    r"
local old = redis.call('HMGET', KEYS[1], 'blob', 'seller', 'size')
local blob = old[1]
if not blob then return 0 end
local old_size = tonumber(old[3]) or 0
charge(KEYS[5], old[2], -old_size)
if scanned(KEYS[6], ARGV[1]) then charge(KEYS[7], old[2], -old_size) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[6], blob)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'event', ARGV[2], 'id', ARGV[3], 'type', ARGV[4], 'key', ARGV[1])
return 1
"
);

/// Starts a recount of `storage:usage` (see [`Store::recount_usage`]): empty totals, and a
/// cursor before every key. The cursor expires, so an abandoned recount stops by itself.
const RECOUNT_START: &str = r"
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], '', 'PX', ARGV[1])
return 1
";

/// One step of a recount: adds the next `ARGV[1]` objects after the cursor to the totals and
/// moves the cursor past them; after the last key, the totals replace `storage:usage`.
/// Returns how many objects were added, or -1 when the recount is not running any more.
const RECOUNT_STEP: &str = r"
local cursor = redis.call('GET', KEYS[1])
if not cursor then return -1 end
local start = '-'
if cursor ~= '' then start = '(' .. cursor end
local keys = redis.call('ZRANGE', KEYS[3], start, '+', 'BYLEX', 'LIMIT', 0, ARGV[1])
for _, key in ipairs(keys) do
  local fields = redis.call('HMGET', ARGV[3] .. key, 'seller', 'size')
  local size = tonumber(fields[2]) or 0
  if fields[1] and size ~= 0 then redis.call('HINCRBY', KEYS[2], fields[1], size) end
end
if #keys < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RENAME', KEYS[2], KEYS[4])
  else
    redis.call('DEL', KEYS[4])
  end
  return #keys
end
redis.call('SET', KEYS[1], keys[#keys], 'PX', ARGV[2])
return #keys
";

/// Uploads whose lease ran out: their blobs become garbage, due at once.
const EXPIRE_UPLOADS: &str = r"
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, blob in ipairs(due) do
  redis.call('ZREM', KEYS[1], blob)
  redis.call('ZADD', KEYS[2], ARGV[1], blob)
end
return #due
";

/// Due garbage, claimed by pushing its time to ARGV[2] (another janitor retries after that).
const CLAIM_GARBAGE: &str = r"
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, blob in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], blob)
end
return due
";

#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
    events: EventsConfig,
}

fn object_key(key: &str) -> String {
    format!("{OBJECT}{key}")
}

use storemesh_runtime::time::duration_ms as millis;
pub use storemesh_runtime::time::now_ms;

fn decode_info(bytes: &[u8]) -> ServiceResult<ObjectInfo> {
    ObjectInfo::decode(bytes).map_err(ServiceError::internal)
}

impl Store {
    pub fn new(redis: ConnectionManager, events: EventsConfig) -> Self {
        Self { redis, events }
    }

    fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Claims the idempotency key (if any), then a place among the identity's uploads in
    /// progress (`slot`), and registers the upload's lease on `blob`.
    pub async fn begin(
        &self,
        blob: &str,
        lease: Duration,
        idempotency: Option<&Idempotency>,
        slot: &Slot,
    ) -> ServiceResult<Begin> {
        let now = now_ms();
        let reply: Vec<Vec<u8>> = redis::Script::new(BEGIN)
            .key(UPLOADS)
            .key(idempotency.map_or(UPLOADS, |i| i.redis_key.as_str()))
            .key(&slot.redis_key)
            .arg(blob)
            .arg(now.saturating_add(millis(lease)))
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.target.as_str()))
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(millis(lease))
            .arg(slot.max)
            .arg(now)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(match reply.first().map(Vec::as_slice) {
            Some(b"started") => Begin::Started,
            Some(b"done") => Begin::Done(decode_info(
                reply.get(1).map(Vec::as_slice).unwrap_or_default(),
            )?),
            Some(b"conflict") => Begin::Conflict,
            Some(b"busy") => Begin::Busy,
            Some(b"limit") => Begin::TooManyUploads,
            _ => return Err(ServiceError::internal("unexpected BEGIN reply")),
        })
    }

    /// Extends the upload's lease; `false` when it was taken over.
    pub async fn renew(
        &self,
        blob: &str,
        lease: Duration,
        idempotency: Option<&Idempotency>,
        slot: &Slot,
    ) -> ServiceResult<bool> {
        let renewed: i64 = redis::Script::new(RENEW)
            .key(UPLOADS)
            .key(idempotency.map_or(UPLOADS, |i| i.redis_key.as_str()))
            .key(&slot.redis_key)
            .arg(blob)
            .arg(now_ms().saturating_add(millis(lease)))
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(millis(lease))
            .invoke_async(&mut self.connection())
            .await?;
        Ok(renewed == 1)
    }

    /// Ends a failed upload's lease and frees its idempotency key. Call it after the blob was
    /// removed from the backend.
    pub async fn abandon(
        &self,
        blob: &str,
        idempotency: Option<&Idempotency>,
        slot: &Slot,
    ) -> ServiceResult<()> {
        let _: i64 = redis::Script::new(ABANDON)
            .key(UPLOADS)
            .key(idempotency.map_or(UPLOADS, |i| i.redis_key.as_str()))
            .key(&slot.redis_key)
            .arg(blob)
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .invoke_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Makes `info` (stored in `blob`) the current version of its key and appends `event`,
    /// atomically; the replaced version's blob becomes garbage at `garbage_due_ms`. The bytes
    /// are charged per `charge` (nothing is committed when its quota would be exceeded).
    pub async fn commit(
        &self,
        record: &ObjectRecord,
        event: &Outgoing,
        garbage_due_ms: i64,
        idempotency: Option<&Idempotency>,
        slot: &Slot,
        charge: &Charge,
    ) -> ServiceResult<Commit> {
        let key = &record.info.key;
        let committed: i64 = redis::Script::new(COMMIT)
            .key(object_key(key))
            .key(INDEX)
            .key(&self.events.stream)
            .key(UPLOADS)
            .key(GARBAGE)
            .key(idempotency.map_or(UPLOADS, |i| i.redis_key.as_str()))
            .key(&slot.redis_key)
            .key(USAGE)
            .key(PRODUCT_SELLER)
            .key(RECOUNT_CURSOR)
            .key(RECOUNT_TOTALS)
            .arg(key)
            .arg(&record.blob)
            .arg(record.info.encode_to_vec())
            .arg(&event.encoded)
            .arg(&event.id)
            .arg(event.type_name)
            .arg(self.events.max_len)
            .arg(garbage_due_ms)
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(idempotency.map_or("", |i| i.token.as_str()))
            .arg(millis(IDEMPOTENCY_TTL))
            .arg(charge.seller.as_deref().unwrap_or_default())
            .arg(record.info.size_bytes)
            .arg(
                charge
                    .quota
                    .map(|quota| quota.to_string())
                    .unwrap_or_default(),
            )
            .arg(charge.product_id.as_deref().unwrap_or_default())
            .invoke_async(&mut self.connection())
            .await?;
        Ok(match committed {
            1 => Commit::Committed,
            -1 => Commit::OverQuota,
            _ => Commit::LeaseLost,
        })
    }

    /// Bytes charged to `seller`.
    pub async fn usage(&self, seller: &str) -> ServiceResult<u64> {
        let used: Option<i64> = redis::cmd("HGET")
            .arg(USAGE)
            .arg(seller)
            .query_async(&mut self.connection())
            .await?;
        Ok(used.map_or(0, |used| u64::try_from(used).unwrap_or(0)))
    }

    /// The size of `key`'s current version if it is charged to `seller` (what replacing it
    /// gives back).
    pub async fn charged_size(&self, key: &str, seller: &str) -> ServiceResult<u64> {
        let (owner, size): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(object_key(key))
            .arg("seller")
            .arg("size")
            .query_async(&mut self.connection())
            .await?;
        Ok(match (owner, size) {
            (Some(owner), Some(size)) if owner == seller => size,
            _ => 0,
        })
    }

    /// The seller a product's bytes were charged to before, if any.
    pub async fn product_seller(&self, product_id: &str) -> ServiceResult<Option<String>> {
        let seller: Option<String> = redis::cmd("HGET")
            .arg(PRODUCT_SELLER)
            .arg(product_id)
            .query_async(&mut self.connection())
            .await?;
        Ok(seller)
    }

    /// Rebuilds `storage:usage` from the object hashes, `batch` objects per step, while
    /// uploads and deletes go on: a change to a key the recount has already walked past is
    /// applied to the new totals as well (see `COMMIT`), one not yet reached is seen when the
    /// walk gets there. The totals replace the old ones in the step that ends the walk.
    /// Returns how many objects were counted.
    pub async fn recount_usage(&self, batch: usize) -> ServiceResult<u64> {
        let batch = batch.max(1);
        let _: i64 = redis::Script::new(RECOUNT_START)
            .key(RECOUNT_CURSOR)
            .key(RECOUNT_TOTALS)
            .arg(millis(RECOUNT_TTL))
            .invoke_async(&mut self.connection())
            .await?;
        let mut counted: u64 = 0;
        loop {
            let step: i64 = redis::Script::new(RECOUNT_STEP)
                .key(RECOUNT_CURSOR)
                .key(RECOUNT_TOTALS)
                .key(INDEX)
                .key(USAGE)
                .arg(batch)
                .arg(millis(RECOUNT_TTL))
                .arg(OBJECT)
                .invoke_async(&mut self.connection())
                .await?;
            let Ok(step) = u64::try_from(step) else {
                return Err(ServiceError::Aborted(
                    "the usage recount was abandoned (it paused too long); run it again".into(),
                ));
            };
            counted += step;
            if step < batch as u64 {
                tracing::info!(objects = counted, "stored bytes per seller recounted");
                return Ok(counted);
            }
        }
    }

    pub async fn get(&self, key: &str) -> ServiceResult<Option<ObjectRecord>> {
        let (info, blob): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(object_key(key))
            .arg("info")
            .arg("blob")
            .query_async(&mut self.connection())
            .await?;
        match (info, blob) {
            (Some(info), Some(blob)) => Ok(Some(ObjectRecord {
                info: decode_info(&info)?,
                blob,
            })),
            _ => Ok(None),
        }
    }

    /// Up to `limit` objects whose key starts with `prefix`, after `after` (exclusive), in byte
    /// order, and the key to continue after when more may follow.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<(Vec<ObjectInfo>, Option<String>)> {
        let start = match after {
            Some(key) => format!("({key}"),
            None if prefix.is_empty() => "-".to_owned(),
            None => format!("[{prefix}"),
        };
        let keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(INDEX)
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut self.connection())
            .await?;
        // Keys with the prefix are contiguous in byte order: stop at the first without it.
        let keys: Vec<String> = keys
            .into_iter()
            .take_while(|key| key.starts_with(prefix))
            .collect();
        let more = keys.len() > limit;
        let page = &keys[..keys.len().min(limit)];
        if page.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut pipe = redis::pipe();
        for key in page {
            pipe.hget(object_key(key), "info");
        }
        let infos: Vec<Option<Vec<u8>>> = pipe.query_async(&mut self.connection()).await?;
        let mut objects = Vec::with_capacity(infos.len());
        // A key deleted between the two reads is skipped ("may or may not appear").
        for info in infos.into_iter().flatten() {
            objects.push(decode_info(&info)?);
        }
        let next = more.then(|| page.last().cloned()).flatten();
        Ok((objects, next))
    }

    /// Deletes `key` and appends `event`, atomically; `false` (and no event) when there was no
    /// such object. The deleted version's blob becomes garbage at `garbage_due_ms`.
    pub async fn delete(
        &self,
        key: &str,
        event: &Outgoing,
        garbage_due_ms: i64,
    ) -> ServiceResult<bool> {
        let deleted: i64 = redis::Script::new(DELETE)
            .key(object_key(key))
            .key(INDEX)
            .key(&self.events.stream)
            .key(GARBAGE)
            .key(USAGE)
            .key(RECOUNT_CURSOR)
            .key(RECOUNT_TOTALS)
            .arg(key)
            .arg(&event.encoded)
            .arg(&event.id)
            .arg(event.type_name)
            .arg(self.events.max_len)
            .arg(garbage_due_ms)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(deleted == 1)
    }

    /// Turns up to `batch` uploads whose lease ran out into garbage; returns how many.
    pub async fn expire_uploads(&self, now_ms: i64, batch: usize) -> ServiceResult<usize> {
        let expired: usize = redis::Script::new(EXPIRE_UPLOADS)
            .key(UPLOADS)
            .key(GARBAGE)
            .arg(now_ms)
            .arg(batch)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(expired)
    }

    /// Claims up to `batch` due garbage blobs until `claim_until_ms`.
    pub async fn claim_garbage(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        batch: usize,
    ) -> ServiceResult<Vec<String>> {
        let due: Vec<String> = redis::Script::new(CLAIM_GARBAGE)
            .key(GARBAGE)
            .arg(now_ms)
            .arg(claim_until_ms)
            .arg(batch)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(due)
    }

    /// Forgets a garbage blob once the backend deleted it.
    pub async fn forget_garbage(&self, blob: &str) -> ServiceResult<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(GARBAGE)
            .arg(blob)
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Sizes of the bookkeeping sets (tests and diagnostics): uploads in progress, garbage.
    pub async fn pending_counts(&self) -> ServiceResult<(u64, u64)> {
        let (uploads, garbage): (u64, u64) = redis::pipe()
            .zcard(UPLOADS)
            .zcard(GARBAGE)
            .query_async(&mut self.connection())
            .await?;
        Ok((uploads, garbage))
    }
}
