//! The auth service's Redis data. Every multi-key change is one Lua script (atomic). The
//! scripts address keys they derive themselves, so this schema targets one Redis (or a
//! primary with replicas), not Redis Cluster.
//!
//! | key | type | content |
//! |---|---|---|
//! | `auth:user:{id}` | hash | `email`, `display_name`, `role`, `password_hash`, `created_ms` |
//! | `auth:email:{email}` | string | user id of the normalised email (uniqueness index) |
//! | `auth:users` | sorted set | every user id, score 0; ULIDs sort by creation (ListUsers) |
//! | `auth:refresh:{sha256(token)}` | hash | `family`, `user`, `expires_ms`, `used` (0/1); expires with the token |
//! | `auth:family:{id}` | hash | `user`, `revoked` (0/1); expires a refresh lifetime after its last use |
//! | `auth:deny:{jti}` | string | present while a logged-out access token would still be valid |
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_ms: i64,
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
        }))
    }
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    Rotated {
        user: String,
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

const SET_ROLE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'role', ARGV[1])
return 1
";

const ROTATE: &str = r"
local family, user, expires, used = unpack(redis.call('HMGET', KEYS[1], 'family', 'user', 'expires_ms', 'used'))
if not family then return {'unknown'} end
local family_key = ARGV[4] .. family
if redis.call('HGET', family_key, 'revoked') ~= '0' then return {'revoked'} end
if used == '1' then
  redis.call('HSET', family_key, 'revoked', '1')
  return {'reused', user}
end
if tonumber(expires) <= tonumber(ARGV[1]) then return {'expired'} end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[2], 'family', family, 'user', user, 'expires_ms', ARGV[2], 'used', '0')
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
redis.call('PEXPIRE', family_key, ARGV[3])
return {'rotated', user}
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

    /// `false` when no such user exists.
    pub async fn set_role(&self, id: &str, role: Role) -> ServiceResult<bool> {
        let changed: i64 = redis::Script::new(SET_ROLE)
            .key(format!("{USER}{id}"))
            .arg(role.as_str())
            .invoke_async(&mut self.connection())
            .await?;
        Ok(changed == 1)
    }

    pub async fn set_password_hash(&self, id: &str, hash: &str) -> ServiceResult<()> {
        let _: i64 = self
            .connection()
            .hset(format!("{USER}{id}"), "password_hash", hash)
            .await?;
        Ok(())
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

    /// Starts a refresh-token family with its first token.
    pub async fn start_family(
        &self,
        family: &str,
        user: &str,
        token_hash: &str,
        expires_ms: i64,
        ttl_ms: i64,
    ) -> ServiceResult<()> {
        let token_key = format!("{REFRESH}{token_hash}");
        let family_key = format!("{FAMILY}{family}");
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(&family_key, &[("user", user), ("revoked", "0")])
            .ignore()
            .pexpire(&family_key, ttl_ms)
            .ignore()
            .hset_multiple(
                &token_key,
                &[
                    ("family", family),
                    ("user", user),
                    ("expires_ms", &expires_ms.to_string()),
                    ("used", "0"),
                ],
            )
            .ignore()
            .pexpire_at(&token_key, expires_ms)
            .ignore()
            .query_async(&mut self.connection())
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
    ) -> ServiceResult<Rotation> {
        let reply: Vec<String> = redis::Script::new(ROTATE)
            .key(format!("{REFRESH}{old_hash}"))
            .key(format!("{REFRESH}{new_hash}"))
            .arg(now_ms)
            .arg(new_expires_ms)
            .arg(ttl_ms)
            .arg(FAMILY)
            .invoke_async(&mut self.connection())
            .await?;
        let user = reply.get(1).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("rotated") => Rotation::Rotated { user },
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
