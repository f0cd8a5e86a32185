//! The auth service's Redis data. Every multi-key change is one Lua script (atomic). The
//! scripts address keys they derive themselves, so this schema targets one Redis (or a
//! primary with replicas), not Redis Cluster.
//!
//! | key | type | content |
//! |---|---|---|
//! | `auth:user:{id}` | hash | `email`, `display_name`, `role`, `password_hash`, `created_ms`, `session_gen` (bumped when all sessions end), `not_before` (seconds: access tokens issued before are revoked) |
//! | `auth:email:{email}` | string | user id of the normalised email (uniqueness index) |
//! | `auth:users` | sorted set | every user id, score 0; ULIDs sort by creation (ListUsers) |
//! | `auth:refresh:{sha256(token)}` | hash | `family`, `user`, `expires_ms`, `used` (0/1), `used_ms` (first use, for the reuse grace window); expires with the token |
//! | `auth:family:{id}` | hash | `user`, `revoked` (0/1), `gen` (the user's `session_gen` at login: a family of an older generation is revoked), `expires_ms` (absolute end of the session); expires then |
//! | `auth:deny:{jti}` | string | present while a logged-out access token would still be valid |
//! | `auth:nbf:{user id}` | string | the user's `not_before` for verifiers (`storemesh_runtime::auth::NOT_BEFORE_PREFIX`); expires an access-token lifetime after it was set |
//! | `auth:known:{user id}` | sorted set | truncated SHA-256 of client addresses that logged in to the account, score = last success (ms); capped, expires when unused |
//! | `auth:svc:{client_id}` | hash | `secret_hash`, `scopes` (space-separated) |
//! | `auth:rl:{bucket}:{hash}:` | string | fixed-window attempt counter (see `ratelimit`) |
//!
//! Raw tokens, passwords and secrets are never stored: only Argon2id or SHA-256 hashes.

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use storemesh_runtime::{ServiceError, ServiceResult};
use storemesh_tokens::Role;

const USER: &str = "auth:user:";
const EMAIL: &str = "auth:email:";
const USERS: &str = "auth:users";
const REFRESH: &str = "auth:refresh:";
const FAMILY: &str = "auth:family:";
const SERVICE_ACCOUNT: &str = "auth:svc:";
const KNOWN: &str = "auth:known:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_ms: i64,
    /// Bumped whenever all of the user's sessions end; refresh families of an older
    /// generation are revoked.
    pub session_gen: u64,
    /// Seconds since the epoch: access tokens issued before are revoked. New tokens are issued
    /// with `iat` at least this.
    pub not_before: u64,
}

impl UserRecord {
    fn from_hash(id: &str, mut fields: HashMap<String, String>) -> ServiceResult<Option<Self>> {
        if fields.is_empty() {
            return Ok(None);
        }
        let mut take = |name: &str| {
            fields
                .remove(name)
                .ok_or_else(|| ServiceError::internal(format!("user {id} lacks field {name}")))
        };
        let role_name = take("role")?;
        Ok(Some(Self {
            id: id.to_owned(),
            email: take("email")?,
            display_name: take("display_name")?,
            role: Role::parse(&role_name)
                .ok_or_else(|| ServiceError::internal(format!("user {id} has role {role_name}")))?,
            password_hash: take("password_hash")?,
            created_ms: take("created_ms")?
                .parse()
                .map_err(|_| ServiceError::internal(format!("user {id} has a bad created_ms")))?,
            // Absent on accounts created before sessions could be ended: nothing ended yet.
            session_gen: number_field(&mut fields, "session_gen", id)?,
            not_before: number_field(&mut fields, "not_before", id)?,
        }))
    }
}

fn number_field(fields: &mut HashMap<String, String>, name: &str, id: &str) -> ServiceResult<u64> {
    fields.remove(name).map_or(Ok(0), |value| {
        value
            .parse()
            .map_err(|_| ServiceError::internal(format!("user {id} has a bad {name}")))
    })
}

/// What ending all of a user's sessions should also change, in the same atomic step.
#[derive(Debug, Default)]
pub struct SessionsEnd<'a> {
    pub role: Option<Role>,
    /// The new password hash, set only if the stored one is still `expected_hash`.
    pub password: Option<(&'a str, &'a str)>,
}

/// What ending all sessions did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Done; the user's new session generation and not-before time.
    Ended {
        session_gen: u64,
        not_before: u64,
    },
    NoSuchUser,
    /// The password changed since it was verified (a concurrent ChangePassword).
    PasswordChanged,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// A new token stored, expiring at `expires_ms` (capped by the family's absolute end).
    Rotated {
        user: String,
        expires_ms: i64,
    },
    Unknown,
    Expired,
    Revoked,
    /// The token was used before: its family is revoked now.
    Reused {
        user: String,
    },
}

#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
}

const CREATE_USER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'email', ARGV[2], 'display_name', ARGV[3], 'role', ARGV[4],
  'password_hash', ARGV[5], 'created_ms', ARGV[6])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
";

// KEYS: user, family, first token. ARGV: family id, user id, token expiry (ms), family's
// absolute end (ms), the session generation read with the verified password hash. Refuses (0)
// when the generation moved on meanwhile: a password change or role change ended the sessions
// after this login checked the password.
const START_FAMILY: &str = r"
local gen = redis.call('HGET', KEYS[1], 'session_gen') or '0'
if gen ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[2], 'user', ARGV[2], 'revoked', '0', 'gen', gen, 'expires_ms', ARGV[4])
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], 'family', ARGV[1], 'user', ARGV[2], 'expires_ms', ARGV[3], 'used', '0')
redis.call('PEXPIREAT', KEYS[3], ARGV[3])
return 1
";

// KEYS: old token, new token. ARGV: now (ms), new token's expiry (ms), sliding family TTL (ms,
// families from before absolute lifetimes only), family prefix, user prefix, reuse grace (ms).
// A used token presented again within the grace window of its first use gets a sibling (a
// client's retry, two tabs); later, reuse revokes the family.
const ROTATE: &str = r"
local family, user, expires, used, used_ms = unpack(redis.call('HMGET', KEYS[1], 'family', 'user', 'expires_ms', 'used', 'used_ms'))
if not family then return {'unknown'} end
local family_key = ARGV[4] .. family
local revoked, gen, family_end = unpack(redis.call('HMGET', family_key, 'revoked', 'gen', 'expires_ms'))
if revoked ~= '0' then return {'revoked'} end
local current_gen = redis.call('HGET', ARGV[5] .. user, 'session_gen') or '0'
if (gen or '0') ~= current_gen then return {'revoked'} end
local now = tonumber(ARGV[1])
if family_end and tonumber(family_end) <= now then return {'expired'} end
if used == '1' then
  if not used_ms or now - tonumber(used_ms) > tonumber(ARGV[6]) then
    redis.call('HSET', family_key, 'revoked', '1')
    return {'reused', user}
  end
else
  if tonumber(expires) <= now then return {'expired'} end
  redis.call('HSET', KEYS[1], 'used', '1', 'used_ms', ARGV[1])
end
local new_expires = tonumber(ARGV[2])
if family_end then
  new_expires = math.min(new_expires, tonumber(family_end))
else
  redis.call('PEXPIRE', family_key, ARGV[3])
end
redis.call('HSET', KEYS[2], 'family', family, 'user', user, 'expires_ms', new_expires, 'used', '0')
redis.call('PEXPIREAT', KEYS[2], new_expires)
return {'rotated', user, tostring(new_expires)}
";

// KEYS: user, its not-before key. ARGV: not-before (s), the not-before key's TTL (ms), new role
// or '', new password hash or '', the password hash it replaces or ''. Returns {1, gen, nbf},
// {0} (no such user) or {-1} (the password changed meanwhile).
const END_SESSIONS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'password_hash') ~= ARGV[5] then return {-1} end
local nbf = math.max(tonumber(redis.call('HGET', KEYS[1], 'not_before') or '0'), tonumber(ARGV[1]))
local gen = redis.call('HINCRBY', KEYS[1], 'session_gen', 1)
redis.call('HSET', KEYS[1], 'not_before', nbf)
redis.call('SET', KEYS[2], nbf, 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'role', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'password_hash', ARGV[4]) end
return {1, gen, nbf}
";

// KEYS: the account's known addresses. ARGV: member, now (ms), cap, TTL (ms).
const REMEMBER_ADDRESS: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

impl Store {
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis }
    }

    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Creates the user unless the email is taken (`false`).
    pub async fn create_user(&self, user: &UserRecord) -> ServiceResult<bool> {
        let created: i64 = redis::Script::new(CREATE_USER)
            .key(format!("{EMAIL}{}", user.email))
            .key(format!("{USER}{}", user.id))
            .key(USERS)
            .arg(&user.id)
            .arg(&user.email)
            .arg(&user.display_name)
            .arg(user.role.as_str())
            .arg(&user.password_hash)
            .arg(user.created_ms)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(created == 1)
    }

    pub async fn user(&self, id: &str) -> ServiceResult<Option<UserRecord>> {
        let fields: HashMap<String, String> =
            self.connection().hgetall(format!("{USER}{id}")).await?;
        UserRecord::from_hash(id, fields)
    }

    pub async fn user_by_email(&self, email: &str) -> ServiceResult<Option<UserRecord>> {
        let id: Option<String> = self.connection().get(format!("{EMAIL}{email}")).await?;
        match id {
            Some(id) => self.user(&id).await,
            None => Ok(None),
        }
    }

    /// Users in id (= creation) order after `after`; `limit + 1` are read to tell if more exist.
    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<(Vec<UserRecord>, bool)> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(USERS)
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut self.connection())
            .await?;
        let more = ids.len() > limit;
        let mut pipe = redis::pipe();
        for id in ids.iter().take(limit) {
            pipe.hgetall(format!("{USER}{id}"));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.connection()).await?;
        let mut users = Vec::with_capacity(hashes.len());
        for (id, fields) in ids.iter().zip(hashes) {
            if let Some(user) = UserRecord::from_hash(id, fields)? {
                users.push(user);
            }
        }
        Ok((users, more))
    }

    /// Starts a refresh-token family with its first token, unless the user's sessions were
    /// ended since `session_gen` was read (`false`).
    pub async fn start_family(
        &self,
        family: &str,
        user: &str,
        session_gen: u64,
        token_hash: &str,
        expires_ms: i64,
        family_end_ms: i64,
    ) -> ServiceResult<bool> {
        let started: i64 = redis::Script::new(START_FAMILY)
            .key(format!("{USER}{user}"))
            .key(format!("{FAMILY}{family}"))
            .key(format!("{REFRESH}{token_hash}"))
            .arg(family)
            .arg(user)
            .arg(expires_ms)
            .arg(family_end_ms)
            .arg(session_gen)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(started == 1)
    }

    /// Ends every session of a user at once: their refresh families (by generation) and the
    /// access tokens issued before `not_before` (seconds); with a role or password change in
    /// the same step.
    pub async fn end_sessions(
        &self,
        user: &str,
        not_before: u64,
        not_before_ttl: std::time::Duration,
        change: SessionsEnd<'_>,
    ) -> ServiceResult<Ended> {
        let (new_hash, expected) = change.password.unwrap_or(("", ""));
        let reply: Vec<i64> = redis::Script::new(END_SESSIONS)
            .key(format!("{USER}{user}"))
            .key(format!(
                "{}{user}",
                storemesh_runtime::auth::NOT_BEFORE_PREFIX
            ))
            .arg(not_before)
            .arg(u64::try_from(not_before_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(change.role.map_or("", Role::as_str))
            .arg(new_hash)
            .arg(expected)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(match reply.as_slice() {
            [1, session_gen, not_before] => Ended::Ended {
                session_gen: u64::try_from(*session_gen).unwrap_or_default(),
                not_before: u64::try_from(*not_before).unwrap_or_default(),
            },
            [-1] => Ended::PasswordChanged,
            _ => Ended::NoSuchUser,
        })
    }

    /// Whether `address_key` logged in to the account within `ttl`.
    pub async fn is_known_address(
        &self,
        user: &str,
        address_key: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> ServiceResult<bool> {
        let score: Option<i64> = self
            .connection()
            .zscore(format!("{KNOWN}{user}"), address_key)
            .await?;
        Ok(score.is_some_and(|last| now_ms - last < ttl_ms))
    }

    /// Remembers that `address_key` logged in to the account (the most recent `cap` are kept).
    pub async fn remember_address(
        &self,
        user: &str,
        address_key: &str,
        now_ms: i64,
        cap: u64,
        ttl_ms: i64,
    ) -> ServiceResult<()> {
        let _: i64 = redis::Script::new(REMEMBER_ADDRESS)
            .key(format!("{KNOWN}{user}"))
            .arg(address_key)
            .arg(now_ms)
            .arg(cap)
            .arg(ttl_ms)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Uses a refresh token once: marks it used and stores its successor, atomically.
    pub async fn rotate(
        &self,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
        new_expires_ms: i64,
        ttl_ms: i64,
        reuse_grace_ms: i64,
    ) -> ServiceResult<Rotation> {
        let reply: Vec<String> = redis::Script::new(ROTATE)
            .key(format!("{REFRESH}{old_hash}"))
            .key(format!("{REFRESH}{new_hash}"))
            .arg(now_ms)
            .arg(new_expires_ms)
            .arg(ttl_ms)
            .arg(FAMILY)
            .arg(USER)
            .arg(reuse_grace_ms)
            .invoke_async(&mut self.connection())
            .await?;
        let user = reply.get(1).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("rotated") => Rotation::Rotated {
                user,
                expires_ms: reply
                    .get(2)
                    .and_then(|expires| expires.parse().ok())
                    .unwrap_or(new_expires_ms),
            },
            Some("reused") => Rotation::Reused { user },
            Some("expired") => Rotation::Expired,
            Some("revoked") => Rotation::Revoked,
            _ => Rotation::Unknown,
        })
    }

    /// `(family, user)` of a refresh token, used or not.
    pub async fn refresh_token_owner(
        &self,
        token_hash: &str,
    ) -> ServiceResult<Option<(String, String)>> {
        let (family, user): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{REFRESH}{token_hash}"))
            .arg("family")
            .arg("user")
            .query_async(&mut self.connection())
            .await?;
        Ok(family.zip(user))
    }

    pub async fn revoke_family(&self, family: &str) -> ServiceResult<()> {
        let family_key = format!("{FAMILY}{family}");
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(&family_key)
            .arg("revoked")
            .arg("1")
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Denylists an access token id for `ttl_secs`.
    pub async fn deny_access_token(&self, jti: &str, ttl_secs: u64) -> ServiceResult<()> {
        let key = format!("{}{jti}", storemesh_runtime::auth::DENYLIST_PREFIX);
        let _: () = self.connection().set_ex(key, "1", ttl_secs.max(1)).await?;
        Ok(())
    }

    pub async fn put_service_account(
        &self,
        client_id: &str,
        secret_hash: &str,
        scopes: &[String],
    ) -> ServiceResult<()> {
        let _: () = self
            .connection()
            .hset_multiple(
                format!("{SERVICE_ACCOUNT}{client_id}"),
                &[("secret_hash", secret_hash), ("scopes", &scopes.join(" "))],
            )
            .await?;
        Ok(())
    }

    /// `(secret_hash, scopes)` of a service account.
    pub async fn service_account(
        &self,
        client_id: &str,
    ) -> ServiceResult<Option<(String, Vec<String>)>> {
        let (hash, scopes): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{SERVICE_ACCOUNT}{client_id}"))
            .arg("secret_hash")
            .arg("scopes")
            .query_async(&mut self.connection())
            .await?;
        Ok(hash.map(|hash| {
            let scopes = scopes
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            (hash, scopes)
        }))
    }
}
