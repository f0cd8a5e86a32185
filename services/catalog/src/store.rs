//! Catalog state in Redis.
//!
//! # Key schema
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `catalog:product:{id}` | hash | `seller_id`, `title`, `description`, `amount_minor`, `currency_code`, `tags` (space-separated), `primary_image_id`, `visibility` (`draft` or `published`; missing = `draft`), `etag`, `version`, `create_ms`, `update_ms` |
//! | `catalog:product:{id}:images` | sorted set | the product's images, member `{create_ms:016}:{image_id}` |
//! | `catalog:product:{id}:changes` | string | change counter of the product and its images (see [`crate::watch`]) |
//! | `catalog:image:{id}` | hash | `product_id`, `storage_key`, `content_type`, `size_bytes`, `sha256` (missing = empty), `width`, `height`, `state`, `failure_reason`, `variants` (JSON list; each variant's `sha256` omitted when empty), `rev`, `create_ms`, `update_ms` |
//! | `catalog:image:{id}:events` | set | event ids `RecordVariant` has applied to the image |
//! | `catalog:images:{state}` | sorted set | images in `state` (`processing`, `ready`, `failed`), member `{update_ms:016}:{image_id}`, for `ListImages` |
//! | `catalog:products` | sorted set | every product, member `{create_ms:016}:{product_id}` |
//! | `catalog:seller:{seller_id}:products` | sorted set | the seller's products, same members |
//! | `catalog:tag:{tag}:products` | sorted set | products with the tag, same members |
//! | `catalog:seller:{seller_id}:tag:{tag}:products` | sorted set | both filters at once, so no listing ever scans |
//! | `catalog:published:products`, `catalog:published:seller:{seller_id}:products`, `catalog:published:tag:{tag}:products`, `catalog:published:seller:{seller_id}:tag:{tag}:products` | sorted sets | the same four indexes restricted to published products: anonymous listings read only these, so they never see (or step over) a draft |
//! | `catalog:request:{subject}:{request_id}` | string, 24 h TTL | product created by that `CreateProduct` request id |
//! | `catalog:cleanup` | stream | storage keys to delete (the clean-up outbox, see [`crate::cleanup`]) |
//! | `catalog:watch:{product_id}` | pub/sub channel | `{change_number}:{encoded WatchProductResponse}` |
//!
//! All sorted sets use score 0 and lexicographic order, which is the listing order (create
//! time, then id; see [`crate::paging`]; the per-state image sets order by update time). Every
//! commit that changes an image's state or update time moves its member between the per-state
//! sets in the same script, so `ListImages` never sees an image in a state it has left.
//! Likewise every commit that creates, deletes, retags, publishes or unpublishes a product
//! moves its member in and out of exactly the indexes of its new state
//! ([`keys::listing_indexes`]). Drafts have no index of their own (products stored before
//! visibility existed are drafts without ever being written again): a signed-in listing of
//! drafts walks the unfiltered index inside [`LIST_DRAFTS`], skipping published members, and
//! examines a bounded number of members per page.
//!
//! # Writes
//!
//! Every change goes through one Lua script, [`COMMIT`]: the handler reads what it needs,
//! computes the new records in Rust, and the script first checks guards (a record's `version`
//! or `rev` is still the one read, a key is absent, the image count is below the limit, an
//! event id is new) and only then applies every write, publishes the change and appends
//! clean-up entries, all atomically. A failed guard changes nothing; the handler re-reads and
//! either retries or reports `ABORTED` / the precise error. Request paths never use `KEYS` or
//! `SCAN`.

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use storemesh_runtime::{ServiceError, ServiceResult};

use crate::model::{ImageRecord, ProductRecord};

pub mod keys {
    pub const PRODUCTS: &str = "catalog:products";
    pub const CLEANUP_STREAM: &str = "catalog:cleanup";
    pub const WATCH_PATTERN: &str = "catalog:watch:*";
    pub const WATCH_PREFIX: &str = "catalog:watch:";
    pub const IMAGE_PREFIX: &str = "catalog:image:";

    pub fn product(id: &str) -> String {
        format!("catalog:product:{id}")
    }

    pub fn product_images(id: &str) -> String {
        format!("catalog:product:{id}:images")
    }

    pub fn product_changes(id: &str) -> String {
        format!("catalog:product:{id}:changes")
    }

    pub fn image(id: &str) -> String {
        format!("{IMAGE_PREFIX}{id}")
    }

    /// Images in `state` (an `ImageState::as_str`), ordered by update time.
    pub fn images_in_state(state: &str) -> String {
        format!("catalog:images:{state}")
    }

    pub fn image_events(id: &str) -> String {
        format!("catalog:image:{id}:events")
    }

    pub fn seller_products(seller_id: &str) -> String {
        format!("catalog:seller:{seller_id}:products")
    }

    pub fn tag_products(tag: &str) -> String {
        format!("catalog:tag:{tag}:products")
    }

    pub fn seller_tag_products(seller_id: &str, tag: &str) -> String {
        format!("catalog:seller:{seller_id}:tag:{tag}:products")
    }

    pub fn request(subject: &str, request_id: &str) -> String {
        format!("catalog:request:{subject}:{request_id}")
    }

    /// `index` (one of the four product listing indexes) restricted to published products.
    pub fn published(index: &str) -> String {
        let rest = index.strip_prefix("catalog:").unwrap_or(index);
        format!("catalog:published:{rest}")
    }

    /// Every index `product` is listed in, given its tags and visibility.
    pub fn listing_indexes(product: &crate::model::ProductRecord) -> Vec<String> {
        let all = product_indexes(&product.seller_id, &product.tags);
        if product.is_published() {
            let published: Vec<String> = all.iter().map(|index| published(index)).collect();
            all.into_iter().chain(published).collect()
        } else {
            all
        }
    }

    pub fn watch_channel(product_id: &str) -> String {
        format!("{WATCH_PREFIX}{product_id}")
    }

    /// The listing index for the given filters (empty = no filter).
    pub fn product_index(seller_id: &str, tag: &str) -> String {
        match (seller_id.is_empty(), tag.is_empty()) {
            (true, true) => PRODUCTS.to_owned(),
            (false, true) => seller_products(seller_id),
            (true, false) => tag_products(tag),
            (false, false) => seller_tag_products(seller_id, tag),
        }
    }

    /// Every index a product with these tags is listed in.
    pub fn product_indexes(seller_id: &str, tags: &[String]) -> Vec<String> {
        let mut indexes = vec![PRODUCTS.to_owned(), seller_products(seller_id)];
        for tag in tags {
            indexes.push(tag_products(tag));
            indexes.push(seller_tag_products(seller_id, tag));
        }
        indexes
    }
}

/// The guarded multi-key write; see the module docs. `ARGV` holds guards, then the marker
/// `do`, then writes. Keys are referenced by their index in `KEYS`. A failed guard returns
/// `{'refused', tag}`; success returns `{'ok'}`.
pub const COMMIT: &str = r"
local i, n = 1, #ARGV
local function key(index) return KEYS[tonumber(index)] end
while i <= n do
  local op = ARGV[i]
  if op == 'do' then i = i + 1; break end
  local tag = ARGV[i + 1]
  if op == 'field' then
    local value = redis.call('HGET', key(ARGV[i + 2]), ARGV[i + 3])
    if (value or '') ~= ARGV[i + 4] then return {'refused', tag} end
    i = i + 5
  elseif op == 'counter' then
    local value = redis.call('GET', key(ARGV[i + 2])) or '0'
    if value ~= ARGV[i + 3] then return {'refused', tag} end
    i = i + 4
  elseif op == 'absent' then
    if redis.call('EXISTS', key(ARGV[i + 2])) == 1 then return {'refused', tag} end
    i = i + 3
  elseif op == 'present' then
    if redis.call('EXISTS', key(ARGV[i + 2])) == 0 then return {'refused', tag} end
    i = i + 3
  elseif op == 'card_below' then
    if redis.call('ZCARD', key(ARGV[i + 2])) >= tonumber(ARGV[i + 3]) then return {'refused', tag} end
    i = i + 4
  elseif op == 'not_member' then
    if redis.call('SISMEMBER', key(ARGV[i + 2]), ARGV[i + 3]) == 1 then return {'refused', tag} end
    i = i + 4
  else
    return redis.error_reply('unknown guard ' .. op)
  end
end
while i <= n do
  local op = ARGV[i]
  if op == 'hash' then
    local k, count = key(ARGV[i + 1]), tonumber(ARGV[i + 2])
    redis.call('DEL', k)
    redis.call('HSET', k, unpack(ARGV, i + 3, i + 2 + 2 * count))
    i = i + 3 + 2 * count
  elseif op == 'del' then
    redis.call('DEL', key(ARGV[i + 1]))
    i = i + 2
  elseif op == 'zadd' then
    redis.call('ZADD', key(ARGV[i + 1]), 0, ARGV[i + 2])
    i = i + 3
  elseif op == 'zrem' then
    redis.call('ZREM', key(ARGV[i + 1]), ARGV[i + 2])
    i = i + 3
  elseif op == 'sadd' then
    redis.call('SADD', key(ARGV[i + 1]), ARGV[i + 2])
    i = i + 3
  elseif op == 'setex' then
    redis.call('SET', key(ARGV[i + 1]), ARGV[i + 3], 'EX', ARGV[i + 2])
    i = i + 4
  elseif op == 'xadd' then
    local count = tonumber(ARGV[i + 2])
    redis.call('XADD', key(ARGV[i + 1]), '*', unpack(ARGV, i + 3, i + 2 + 2 * count))
    i = i + 3 + 2 * count
  elseif op == 'publish' then
    local change = redis.call('INCR', key(ARGV[i + 1]))
    redis.call('PUBLISH', ARGV[i + 2], change .. ':' .. ARGV[i + 3])
    i = i + 4
  else
    return redis.error_reply('unknown write ' .. op)
  end
end
return {'ok'}
";

/// Reads a product, its change counter and (with `ARGV[2] == '1'`) its images in one atomic
/// step, so a watcher's snapshot and its first live change line up exactly.
pub const SNAPSHOT: &str = r"
local product = redis.call('HGETALL', KEYS[1])
if #product == 0 then return {} end
local out = {redis.call('GET', KEYS[3]) or '0', product}
if ARGV[2] == '1' then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local id = string.match(member, ':(.*)$')
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
  end
end
return out
";

/// Up to `ARGV[2]` members of the index `KEYS[1]` after `ARGV[1]` (`-` or `(member`) that are
/// not in `KEYS[2]` (the published products), examining at most `ARGV[3]` members. Returns
/// `{last examined member or '', '1' if the index ended else '0', members...}`.
pub const LIST_DRAFTS: &str = r"
local start, want, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, last = {}, ''
while #out < want do
  if budget <= 0 then return {last, '0', unpack(out)} end
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, math.min(budget, 256))
  if #batch == 0 then return {last, '1', unpack(out)} end
  for _, member in ipairs(batch) do
    budget = budget - 1
    last = member
    if not redis.call('ZSCORE', KEYS[2], member) then
      out[#out + 1] = member
      if #out == want then break end
    end
  end
  start = '(' .. last
end
return {last, '0', unpack(out)}
";

/// Members a drafts listing examines per page at most (besides the page itself), so a catalog
/// of mostly published products cannot make one call walk all of it.
pub const MAX_DRAFT_SCAN: usize = 2_000;

/// Builder of one [`COMMIT`] call.
#[derive(Debug, Default)]
pub struct Commit {
    keys: Vec<String>,
    guards: Vec<Vec<u8>>,
    writes: Vec<Vec<u8>>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// The guard with this tag did not hold; nothing was written.
    Refused(String),
}

fn arg(value: impl Into<Vec<u8>>) -> Vec<u8> {
    value.into()
}

impl Commit {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, key: String) -> Vec<u8> {
        let index = match self.keys.iter().position(|existing| *existing == key) {
            Some(index) => index,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        };
        arg((index + 1).to_string())
    }

    fn guard(&mut self, op: &str, tag: &str, key: String, rest: &[&str]) {
        let key = self.key(key);
        self.guards.extend([arg(op), arg(tag), key]);
        self.guards.extend(rest.iter().map(|value| arg(*value)));
    }

    /// Hash field `field` of `key` equals `expected` (`""` = field or key missing).
    pub fn expect_field(&mut self, tag: &str, key: String, field: &str, expected: &str) {
        self.guard("field", tag, key, &[field, expected]);
    }

    /// The counter at `key` (missing = 0) equals `expected`.
    pub fn expect_counter(&mut self, tag: &str, key: String, expected: u64) {
        self.guard("counter", tag, key, &[&expected.to_string()]);
    }

    pub fn expect_absent(&mut self, tag: &str, key: String) {
        self.guard("absent", tag, key, &[]);
    }

    pub fn expect_present(&mut self, tag: &str, key: String) {
        self.guard("present", tag, key, &[]);
    }

    /// The sorted set at `key` has fewer than `limit` members.
    pub fn expect_fewer_than(&mut self, tag: &str, key: String, limit: usize) {
        self.guard("card_below", tag, key, &[&limit.to_string()]);
    }

    pub fn expect_not_member(&mut self, tag: &str, key: String, member: &str) {
        self.guard("not_member", tag, key, &[member]);
    }

    /// Replaces the hash at `key` with `fields`.
    pub fn put_hash(&mut self, key: String, fields: Vec<(&'static str, String)>) {
        let key = self.key(key);
        self.writes
            .extend([arg("hash"), key, arg(fields.len().to_string())]);
        for (name, value) in fields {
            self.writes.extend([arg(name), arg(value)]);
        }
    }

    pub fn delete(&mut self, key: String) {
        let key = self.key(key);
        self.writes.extend([arg("del"), key]);
    }

    /// Moves a product's listing member from the indexes of `old` to those of `new` (either
    /// absent: create, delete), touching only the indexes that differ.
    pub fn relist(
        &mut self,
        old: Option<&crate::model::ProductRecord>,
        new: Option<&crate::model::ProductRecord>,
    ) {
        let Some(product) = new.or(old) else {
            return;
        };
        let member = crate::paging::member(product.create_ms, &product.id);
        let before = old.map(keys::listing_indexes).unwrap_or_default();
        let after = new.map(keys::listing_indexes).unwrap_or_default();
        for index in before.iter().filter(|index| !after.contains(index)) {
            self.index_remove(index.clone(), &member);
        }
        for index in after.iter().filter(|index| !before.contains(index)) {
            self.index_add(index.clone(), &member);
        }
    }

    pub fn index_add(&mut self, key: String, member: &str) {
        let key = self.key(key);
        self.writes.extend([arg("zadd"), key, arg(member)]);
    }

    pub fn index_remove(&mut self, key: String, member: &str) {
        let key = self.key(key);
        self.writes.extend([arg("zrem"), key, arg(member)]);
    }

    pub fn set_add(&mut self, key: String, member: &str) {
        let key = self.key(key);
        self.writes.extend([arg("sadd"), key, arg(member)]);
    }

    pub fn set_with_ttl(&mut self, key: String, ttl_secs: u64, value: &str) {
        let key = self.key(key);
        self.writes
            .extend([arg("setex"), key, arg(ttl_secs.to_string()), arg(value)]);
    }

    /// Appends an entry to the stream at `key`.
    pub fn stream_add(&mut self, key: String, fields: &[(&str, &str)]) {
        let key = self.key(key);
        self.writes
            .extend([arg("xadd"), key, arg(fields.len().to_string())]);
        for (name, value) in fields {
            self.writes.extend([arg(*name), arg(*value)]);
        }
    }

    /// Numbers the change with the product's change counter and publishes it to the product's
    /// watchers. `payload` is an encoded `WatchProductResponse` without `sequence`.
    pub fn publish(&mut self, product_id: &str, payload: Vec<u8>) {
        let counter = self.key(keys::product_changes(product_id));
        self.writes.extend([
            arg("publish"),
            counter,
            arg(keys::watch_channel(product_id)),
            payload,
        ]);
    }
}

/// What [`Store::snapshot`] read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The product's change counter when read.
    pub changes: u64,
    pub product: ProductRecord,
    /// Oldest first; empty unless requested.
    pub images: Vec<ImageRecord>,
}

#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
    commit: redis::Script,
    snapshot: redis::Script,
    list_drafts: redis::Script,
}

fn fields_of(value: redis::Value) -> ServiceResult<HashMap<String, String>> {
    redis::from_redis_value(value)
        .map_err(|error| ServiceError::internal(format!("unexpected reply from redis: {error}")))
}

impl Store {
    pub fn new(redis: ConnectionManager) -> Self {
        Self {
            redis,
            commit: redis::Script::new(COMMIT),
            snapshot: redis::Script::new(SNAPSHOT),
            list_drafts: redis::Script::new(LIST_DRAFTS),
        }
    }

    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub async fn commit(&self, commit: Commit) -> ServiceResult<Outcome> {
        let mut invocation = self.commit.prepare_invoke();
        for key in &commit.keys {
            invocation.key(key);
        }
        for value in commit.guards {
            invocation.arg(value);
        }
        invocation.arg("do");
        for value in commit.writes {
            invocation.arg(value);
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.connection()).await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(Outcome::Committed),
            Some("refused") => Ok(Outcome::Refused(reply.get(1).cloned().unwrap_or_default())),
            _ => Err(ServiceError::internal(format!(
                "unexpected commit reply {reply:?}"
            ))),
        }
    }

    pub async fn product(&self, id: &str) -> ServiceResult<Option<ProductRecord>> {
        let fields: HashMap<String, String> = self.connection().hgetall(keys::product(id)).await?;
        ProductRecord::from_fields(id, fields)
    }

    pub async fn image(&self, id: &str) -> ServiceResult<Option<ImageRecord>> {
        let fields: HashMap<String, String> = self.connection().hgetall(keys::image(id)).await?;
        ImageRecord::from_fields(id, fields)
    }

    /// The image and whether `event_id` was already applied to it.
    pub async fn image_and_event(
        &self,
        id: &str,
        event_id: &str,
    ) -> ServiceResult<(Option<ImageRecord>, bool)> {
        let (fields, seen): (HashMap<String, String>, bool) = redis::pipe()
            .hgetall(keys::image(id))
            .sismember(keys::image_events(id), event_id)
            .query_async(&mut self.connection())
            .await?;
        Ok((ImageRecord::from_fields(id, fields)?, seen))
    }

    /// The product and the image, read together.
    pub async fn product_and_image(
        &self,
        product_id: &str,
        image_id: &str,
    ) -> ServiceResult<(Option<ProductRecord>, Option<ImageRecord>)> {
        let (product, image): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
            .hgetall(keys::product(product_id))
            .hgetall(keys::image(image_id))
            .query_async(&mut self.connection())
            .await?;
        Ok((
            ProductRecord::from_fields(product_id, product)?,
            ImageRecord::from_fields(image_id, image)?,
        ))
    }

    pub async fn requested_product(
        &self,
        subject: &str,
        request_id: &str,
    ) -> ServiceResult<Option<String>> {
        Ok(self
            .connection()
            .get(keys::request(subject, request_id))
            .await?)
    }

    /// Up to `limit` members of the index after `after`, and whether more follow.
    pub async fn range(
        &self,
        index: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<(Vec<String>, bool)> {
        let start = after.map_or_else(|| "-".to_owned(), |member| format!("({member}"));
        let mut members: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(index)
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut self.connection())
            .await?;
        let more = members.len() > limit;
        members.truncate(limit);
        Ok((members, more))
    }

    /// Up to `limit` members of the product listing `index` after `after` whose products are not
    /// published, and where the next page starts (`None`: this is the last page). The page
    /// may be short, even empty, when many published products lie in between.
    pub async fn range_drafts(
        &self,
        index: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<(Vec<String>, Option<String>)> {
        let start = after.map_or_else(|| "-".to_owned(), |member| format!("({member}"));
        let reply: Vec<String> = self
            .list_drafts
            .key(index)
            .key(keys::published(keys::PRODUCTS))
            .arg(start)
            .arg(limit + 1)
            .arg(limit + 1 + MAX_DRAFT_SCAN)
            .invoke_async(&mut self.connection())
            .await?;
        let mut reply = reply.into_iter();
        let (Some(last_examined), Some(ended)) = (reply.next(), reply.next()) else {
            return Err(ServiceError::internal("unexpected drafts listing reply"));
        };
        let mut members: Vec<String> = reply.collect();
        let next = if members.len() > limit {
            members.truncate(limit);
            members.last().cloned()
        } else if ended == "1" || last_examined.is_empty() {
            None
        } else {
            // Out of budget: continue after the last member looked at.
            Some(last_examined)
        };
        Ok((members, next))
    }

    /// Up to `limit` members of the index after `after` and strictly before `before`, and
    /// whether more follow.
    pub async fn range_before(
        &self,
        index: &str,
        after: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> ServiceResult<(Vec<String>, bool)> {
        let start = after.map_or_else(|| "-".to_owned(), |member| format!("({member}"));
        let end = before.map_or_else(|| "+".to_owned(), |member| format!("({member}"));
        let mut members: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(index)
            .arg(start)
            .arg(end)
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut self.connection())
            .await?;
        let more = members.len() > limit;
        members.truncate(limit);
        Ok((members, more))
    }

    /// The images with these ids (missing ones skipped), in the given order.
    pub async fn images(&self, ids: &[&str]) -> ServiceResult<Vec<ImageRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(keys::image(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.connection()).await?;
        let mut images = Vec::with_capacity(hashes.len());
        for (id, fields) in ids.iter().zip(hashes) {
            images.extend(ImageRecord::from_fields(id, fields)?);
        }
        Ok(images)
    }

    pub async fn products(&self, ids: &[&str]) -> ServiceResult<Vec<ProductRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new()); // an empty pipeline has no reply to parse
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(keys::product(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.connection()).await?;
        let mut products = Vec::with_capacity(hashes.len());
        // A product deleted between the index read and now is skipped.
        for (id, fields) in ids.iter().zip(hashes) {
            products.extend(ProductRecord::from_fields(id, fields)?);
        }
        Ok(products)
    }

    /// Whether the product exists, and the images with these ids (missing ones skipped).
    pub async fn product_exists_and_images(
        &self,
        product_id: &str,
        ids: &[&str],
    ) -> ServiceResult<(bool, Vec<ImageRecord>)> {
        let mut pipe = redis::pipe();
        pipe.exists(keys::product(product_id));
        for id in ids {
            pipe.hgetall(keys::image(id));
        }
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut self.connection()).await?;
        if replies.is_empty() {
            return Err(ServiceError::internal("empty pipeline reply"));
        }
        let exists: bool = redis::from_redis_value(replies.remove(0))
            .map_err(|error| ServiceError::internal(error.to_string()))?;
        let mut images = Vec::with_capacity(ids.len());
        for (id, value) in ids.iter().zip(replies) {
            images.extend(ImageRecord::from_fields(id, fields_of(value)?)?);
        }
        Ok((exists, images))
    }

    /// The product with its change counter and, with `with_images`, its images, atomically.
    pub async fn snapshot(
        &self,
        product_id: &str,
        with_images: bool,
    ) -> ServiceResult<Option<Snapshot>> {
        let reply: Vec<redis::Value> = self
            .snapshot
            .key(keys::product(product_id))
            .key(keys::product_images(product_id))
            .key(keys::product_changes(product_id))
            .arg(keys::IMAGE_PREFIX)
            .arg(if with_images { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await?;
        let mut values = reply.into_iter();
        let (Some(changes), Some(product)) = (values.next(), values.next()) else {
            return Ok(None);
        };
        let changes: String = redis::from_redis_value(changes)
            .map_err(|error| ServiceError::internal(error.to_string()))?;
        let changes = changes
            .parse()
            .map_err(|_| ServiceError::internal("bad product change counter"))?;
        let Some(product) = ProductRecord::from_fields(product_id, fields_of(product)?)? else {
            return Ok(None);
        };
        let mut images = Vec::new();
        while let (Some(id), Some(fields)) = (values.next(), values.next()) {
            let id: String = redis::from_redis_value(id)
                .map_err(|error| ServiceError::internal(error.to_string()))?;
            images.extend(ImageRecord::from_fields(&id, fields_of(fields)?)?);
        }
        Ok(Some(Snapshot {
            changes,
            product,
            images,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_references_each_key_once() {
        let mut commit = Commit::new();
        commit.expect_field("product", keys::product("p"), "version", "3");
        commit.put_hash(keys::product("p"), vec![("title", "x".into())]);
        commit.index_add(keys::PRODUCTS.to_owned(), "m");
        assert_eq!(commit.keys, [keys::product("p"), keys::PRODUCTS.to_owned()]);
        assert_eq!(commit.guards.len(), 5);
        assert_eq!(commit.writes[0], b"hash");
        assert_eq!(commit.writes[1], b"1", "first key");
        assert_eq!(commit.writes[2], b"1", "one field");
    }

    #[test]
    fn index_keys_follow_the_filters() {
        assert_eq!(keys::product_index("", ""), "catalog:products");
        assert_eq!(keys::product_index("s", ""), "catalog:seller:s:products");
        assert_eq!(keys::product_index("", "red"), "catalog:tag:red:products");
        assert_eq!(
            keys::product_index("s", "red"),
            "catalog:seller:s:tag:red:products"
        );
        let tags = vec!["red".to_owned()];
        assert_eq!(keys::product_indexes("s", &tags).len(), 4);
        assert_eq!(
            keys::published(&keys::product_index("s", "red")),
            "catalog:published:seller:s:tag:red:products"
        );
        assert_eq!(
            keys::published(keys::PRODUCTS),
            "catalog:published:products"
        );
    }
}
