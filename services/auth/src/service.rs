//! `storemesh.auth.v1.AuthService`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use storemesh_proto::auth::v1 as pb;
use storemesh_runtime::auth::{Authorize, TokensConfig, caller};
use storemesh_runtime::error::Violations;
use storemesh_runtime::server::ClientAddr;
use storemesh_runtime::time;
use storemesh_runtime::{ServiceError, ServiceResult};
use storemesh_tokens::{Claims, Identity, Role, scopes};
use tonic::{Request, Response, Status};

use crate::config::AuthConfig;
use crate::keys::Keyring;
use crate::passwords::{PasswordHasher, VerifiedSecrets};
use crate::ratelimit::{self, hex};
use crate::store::{Ended, Rotation, SessionsEnd, Store, UserRecord};
use crate::validate;

const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 500;
const INVALID_LOGIN: &str = "invalid email or password";
const INVALID_CLIENT: &str = "invalid client credentials";
const INVALID_PASSWORD: &str = "invalid password";

pub struct AuthApi {
    pub(crate) store: Store,
    pub(crate) hasher: PasswordHasher,
    pub(crate) verified_secrets: Arc<VerifiedSecrets>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) config: Arc<AuthConfig>,
    pub(crate) tokens: TokensConfig,
}

pub fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Customer => pb::Role::Customer,
        Role::Seller => pb::Role::Seller,
        Role::Admin => pb::Role::Admin,
        Role::Service => pb::Role::Service,
    }
}

fn user_to_proto(user: &UserRecord) -> pb::User {
    pb::User {
        id: user.id.clone(),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        role: role_to_proto(user.role).into(),
        create_time: Some(time::timestamp_from_ms(user.created_ms)),
    }
}

/// A new opaque refresh token (256 random bits) and the hash it is stored under.
fn new_refresh_token() -> (String, String) {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = refresh_hash(&token);
    (token, hash)
}

fn refresh_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn check_refresh_token(token: &str) -> ServiceResult<()> {
    if token.is_empty() {
        return Err(ServiceError::invalid("refresh_token", "must not be empty"));
    }
    if token.chars().count() > validate::MAX_REFRESH_TOKEN_CHARS {
        return Err(ServiceError::invalid(
            "refresh_token",
            "must be at most 512 characters",
        ));
    }
    Ok(())
}

/// The caller's address as the per-address limits count it: the [`ClientAddr`] the server
/// layer resolved (the TCP peer, or the forwarded client when the peer is one of
/// `server.trusted_proxies`; IPv6 by its /64), else the TCP peer. A client's own
/// `x-forwarded-for` is never believed here, so it cannot pick its bucket.
fn client_address<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<ClientAddr>()
        .copied()
        .or_else(|| request.remote_addr().map(|addr| ClientAddr(addr.ip())))
        .map(|client| client.limit_key().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A user's caller identity, or `PERMISSION_DENIED` for service accounts (they have no
/// password and no sessions).
fn user_caller<T>(request: &Request<T>) -> ServiceResult<Identity> {
    let identity = caller(request)?;
    if identity.is_service() {
        return Err(ServiceError::PermissionDenied(
            "requires a user account, not a service account".into(),
        ));
    }
    Ok(identity.clone())
}

impl AuthApi {
    fn window(&self) -> Duration {
        Duration::from_secs(self.config.rate_limit.window_secs)
    }

    async fn limit(&self, bucket: &str, subject: &str, limit: u64) -> ServiceResult<()> {
        ratelimit::hit(
            &self.store.connection(),
            bucket,
            subject,
            limit,
            self.window(),
        )
        .await
    }

    /// Signs an access token; returns it with its expiry (seconds since the epoch). `iat` is
    /// at least `not_before`: the user's sessions may have ended within this very second, and
    /// verifiers refuse tokens issued before that time.
    fn sign(
        &self,
        subject: &str,
        role: Role,
        scope: String,
        ttl_secs: u64,
        not_before: u64,
    ) -> ServiceResult<(String, u64)> {
        let issued = time::since_epoch().as_secs().max(not_before);
        let expires = issued + ttl_secs;
        let claims = Claims {
            iss: self.tokens.issuer.clone(),
            aud: self.tokens.audience.clone(),
            sub: subject.to_owned(),
            role,
            scope,
            iat: issued,
            exp: expires,
            jti: ulid::Ulid::new().to_string(),
        };
        let token = self
            .keyring
            .current
            .sign(&claims)
            .map_err(ServiceError::internal)?;
        Ok((token, expires))
    }

    fn token_pair(
        &self,
        user: &UserRecord,
        refresh_token: String,
        refresh_expires_ms: i64,
    ) -> ServiceResult<pb::TokenPair> {
        let (access_token, access_expires) = self.sign(
            &user.id,
            user.role,
            String::new(),
            self.config.access_token_ttl_secs,
            user.not_before,
        )?;
        Ok(pb::TokenPair {
            access_token,
            access_token_expire_time: Some(time::timestamp_from_secs(access_expires)),
            refresh_token,
            refresh_token_expire_time: Some(time::timestamp_from_ms(refresh_expires_ms)),
            token_type: "Bearer".into(),
        })
    }

    fn refresh_ttl_ms(&self) -> i64 {
        time::duration_ms(Duration::from_secs(self.config.refresh_token_ttl_secs))
    }

    /// Starts a new session (refresh family) for `user` and signs its first pair. `None` when
    /// the user's sessions were ended since `user` was read (the caller answers as for a
    /// wrong password: what was verified is no longer current).
    async fn new_session(&self, user: &UserRecord) -> ServiceResult<Option<pb::TokenPair>> {
        let (refresh_token, refresh_hash) = new_refresh_token();
        let now_ms = time::now_ms();
        let session_end = now_ms.saturating_add(time::duration_ms(Duration::from_secs(
            self.config.refresh_session_max_lifetime_secs,
        )));
        let refresh_expires = now_ms
            .saturating_add(self.refresh_ttl_ms())
            .min(session_end);
        let family = ulid::Ulid::new().to_string();
        if !self
            .store
            .start_family(
                &family,
                &user.id,
                user.session_gen,
                &refresh_hash,
                refresh_expires,
                session_end,
            )
            .await?
        {
            return Ok(None);
        }
        self.token_pair(user, refresh_token, refresh_expires)
            .map(Some)
    }

    /// Ends every session of `user` (refresh families and access tokens issued until now),
    /// together with `change`; returns the user's new generation and not-before time.
    async fn end_sessions(&self, user: &str, change: SessionsEnd<'_>) -> ServiceResult<Ended> {
        let now = time::since_epoch().as_secs();
        // Strictly after every token issued so far (`iat` has whole seconds).
        let not_before = now + 1;
        // Verifiers need the mark only while a token issued before it could still be valid.
        let keep = Duration::from_secs(
            not_before - now + self.config.access_token_ttl_secs + self.tokens.leeway_secs + 1,
        );
        let ended = self
            .store
            .end_sessions(user, not_before, keep, change)
            .await?;
        if let Ended::Ended { .. } = ended {
            tracing::info!(%user, "all sessions of the user ended");
        }
        Ok(ended)
    }

    /// The key an address is remembered under for an account (no address is stored in clear).
    fn address_key(address: &str) -> String {
        hex(&Sha256::digest(address.as_bytes())[..12])
    }
    /// Creates the configured admin, or makes the existing account admin with the configured
    /// password. Idempotent across restarts.
    pub async fn bootstrap_admin(&self) -> ServiceResult<()> {
        if self.config.admin_email.is_empty() {
            return Ok(());
        }
        let email = validate::normalize_email(&self.config.admin_email);
        if let Some(problem) = validate::email_problem(&email) {
            return Err(ServiceError::invalid("auth.admin_email", problem));
        }
        let password = self.config.admin_password.expose().clone();
        match self.store.user_by_email(&email).await? {
            Some(user) => {
                let promote = user.role != Role::Admin;
                let current = self
                    .hasher
                    .verify(password.clone(), Some(user.password_hash.clone()))
                    .await?;
                let new_hash = if current {
                    None
                } else {
                    Some(self.hasher.hash(password).await?)
                };
                // A promotion or a password reset ends the account's sessions, as SetRole and
                // ChangePassword do: whoever held them may be who the reset is meant to stop.
                if promote || new_hash.is_some() {
                    let change = SessionsEnd {
                        role: promote.then_some(Role::Admin),
                        password: new_hash
                            .as_deref()
                            .map(|hash| (hash, user.password_hash.as_str())),
                    };
                    match self.end_sessions(&user.id, change).await? {
                        Ended::Ended { .. } => {
                            tracing::info!(user = %user.id, promote, reset = new_hash.is_some(), "admin account updated");
                        }
                        Ended::NoSuchUser | Ended::PasswordChanged => {
                            return Err(ServiceError::Aborted(
                                "the admin account changed during bootstrap; restart".into(),
                            ));
                        }
                    }
                }
            }
            None => {
                let user = UserRecord {
                    id: ulid::Ulid::new().to_string(),
                    email: email.clone(),
                    display_name: self.config.admin_display_name.clone(),
                    role: Role::Admin,
                    password_hash: self.hasher.hash(password).await?,
                    created_ms: time::now_ms(),
                    session_gen: 0,
                    not_before: 0,
                };
                self.store.create_user(&user).await?;
                tracing::info!(user = %user.id, "admin account created");
            }
        }
        Ok(())
    }

    /// Stores the configured service accounts (secrets hashed).
    pub async fn bootstrap_service_accounts(&self) -> ServiceResult<()> {
        for account in &self.config.service_accounts {
            let hash = self
                .hasher
                .hash(account.client_secret.expose().clone())
                .await?;
            self.store
                .put_service_account(&account.client_id, &hash, &account.scopes)
                .await?;
            tracing::info!(client_id = %account.client_id, scopes = ?account.scopes, "service account ready");
        }
        Ok(())
    }

    fn page_size(requested: i32) -> ServiceResult<usize> {
        match usize::try_from(requested) {
            Err(_) => Err(ServiceError::invalid("page_size", "must not be negative")),
            Ok(0) => Ok(DEFAULT_PAGE_SIZE),
            Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
        }
    }
}

fn principal(identity: &Identity, user: Option<&UserRecord>) -> pb::Principal {
    pb::Principal {
        subject: identity.subject.clone(),
        kind: if identity.is_service() {
            pb::PrincipalKind::Service
        } else {
            pb::PrincipalKind::User
        }
        .into(),
        role: role_to_proto(identity.role).into(),
        scopes: identity.scopes.iter().cloned().collect(),
        email: user.map(|u| u.email.clone()).unwrap_or_default(),
        display_name: user.map(|u| u.display_name.clone()).unwrap_or_default(),
        expire_time: Some(time::timestamp_from_secs(identity.expires_at)),
    }
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let address = client_address(&request);
        self.limit(
            "register-addr",
            &address,
            self.config.rate_limit.register_per_address,
        )
        .await?;
        let request = request.into_inner();
        let email = validate::normalize_email(&request.email);
        let mut violations = Violations::new();
        if let Some(problem) = validate::email_problem(&email) {
            violations.add("email", problem);
        }
        if let Err(problem) = validate::password_problem(&request.password) {
            violations.add("password", problem);
        }
        let display_name = match validate::display_name(&request.display_name) {
            Ok(name) => name,
            Err(problem) => {
                violations.add("display_name", problem);
                String::new()
            }
        };
        let role = match pb::Role::try_from(request.role) {
            Ok(pb::Role::Unspecified | pb::Role::Customer) => Role::Customer,
            Ok(pb::Role::Seller) => Role::Seller,
            _ => {
                violations.add("role", "must be ROLE_CUSTOMER or ROLE_SELLER");
                Role::Customer
            }
        };
        violations.into_result()?;
        self.limit(
            "register-email",
            &email,
            self.config.rate_limit.register_per_account,
        )
        .await?;

        let user = UserRecord {
            id: ulid::Ulid::new().to_string(),
            email,
            display_name,
            role,
            password_hash: self.hasher.hash(request.password).await?,
            created_ms: time::now_ms(),
            session_gen: 0,
            not_before: 0,
        };
        if !self.store.create_user(&user).await? {
            return Err(ServiceError::AlreadyExists("an account with this email".into()).into());
        }
        tracing::info!(user = %user.id, role = role.as_str(), "account registered");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_proto(&user)),
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let address = client_address(&request);
        let request = request.into_inner();
        let email = validate::normalize_email(&request.email);
        let mut violations = Violations::new();
        if email.is_empty() {
            violations.add("email", "must not be empty");
        } else if email.chars().count() > validate::MAX_EMAIL_CHARS {
            violations.add("email", "must be at most 254 characters");
        }
        if request.password.is_empty() {
            violations.add("password", "must not be empty");
        } else if request.password.chars().count() > validate::MAX_PASSWORD_CHARS {
            violations.add("password", "must be at most 128 characters");
        }
        violations.into_result()?;
        let limits = self.config.rate_limit;
        self.limit("login-addr", &address, limits.login_per_address)
            .await?;

        // The per-account limit must not become a way to lock the owner out: attempts from
        // an address that logged in to this account before count only per (account,
        // address); the account-wide bucket counts addresses that never succeeded. An
        // attacker guessing from elsewhere exhausts that bucket and their own pair, never the
        // owner's pair. (Counted before the check, so concurrent guesses cannot overshoot.)
        let user = self.store.user_by_email(&email).await?;
        let address_key = Self::address_key(&address);
        let now_ms = time::now_ms();
        let known_ttl_ms = time::duration_ms(Duration::from_secs(limits.known_address_ttl_secs));
        let known = match &user {
            Some(user) => {
                self.store
                    .is_known_address(&user.id, &address_key, now_ms, known_ttl_ms)
                    .await?
            }
            None => false,
        };
        self.limit(
            "login-email-addr",
            &format!("{email}\n{address}"),
            limits.login_per_account_address,
        )
        .await?;
        if !known {
            self.limit("login-email", &email, limits.login_per_account)
                .await?;
        }

        let verified = self
            .hasher
            .verify(
                request.password,
                user.as_ref().map(|u| u.password_hash.clone()),
            )
            .await?;
        let Some(user) = user.filter(|_| verified) else {
            tracing::info!(known_address = known, "login failed");
            return Err(ServiceError::Unauthenticated(INVALID_LOGIN.into()).into());
        };
        let Some(tokens) = self.new_session(&user).await? else {
            // The password (or role) changed while this one was being checked.
            return Err(ServiceError::Unauthenticated(INVALID_LOGIN.into()).into());
        };
        self.store
            .remember_address(
                &user.id,
                &address_key,
                now_ms,
                limits.known_addresses_per_account,
                known_ttl_ms,
            )
            .await?;
        tracing::info!(user = %user.id, known_address = known, "logged in");
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(tokens),
            user: Some(user_to_proto(&user)),
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let address = client_address(&request);
        let request = request.into_inner();
        check_refresh_token(&request.refresh_token)?;
        self.limit(
            "refresh-addr",
            &address,
            self.config.rate_limit.refresh_per_address,
        )
        .await?;

        let (new_token, new_hash) = new_refresh_token();
        let now_ms = time::now_ms();
        let new_expires = now_ms + self.refresh_ttl_ms();
        let grace_ms = i64::try_from(self.config.refresh_reuse_grace_ms).unwrap_or(i64::MAX);
        let outcome = self
            .store
            .rotate(
                &refresh_hash(&request.refresh_token),
                &new_hash,
                now_ms,
                new_expires,
                self.refresh_ttl_ms(),
                grace_ms,
            )
            .await?;
        let (user_id, new_expires) = match outcome {
            Rotation::Rotated { user, expires_ms } => (user, expires_ms),
            Rotation::Reused { user } => {
                tracing::warn!(%user, "refresh token reuse detected; token family revoked");
                return Err(ServiceError::Unauthenticated(
                    "refresh token was already used; the session is revoked, log in again".into(),
                )
                .into());
            }
            Rotation::Unknown | Rotation::Expired | Rotation::Revoked => {
                return Err(ServiceError::Unauthenticated(
                    "refresh token is invalid, expired or revoked".into(),
                )
                .into());
            }
        };
        let Some(user) = self.store.user(&user_id).await? else {
            return Err(ServiceError::Unauthenticated("account no longer exists".into()).into());
        };
        let tokens = self.token_pair(&user, new_token, new_expires)?;
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(tokens),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let identity = request.extensions().get::<Identity>().cloned();
        let request = request.into_inner();
        check_refresh_token(&request.refresh_token)?;
        let owner = self
            .store
            .refresh_token_owner(&refresh_hash(&request.refresh_token))
            .await?;
        if let (Some(identity), Some((_, user))) = (&identity, &owner)
            && identity.subject != *user
        {
            return Err(ServiceError::PermissionDenied(
                "the access token and the refresh token belong to different accounts".into(),
            )
            .into());
        }
        if let Some((family, user)) = &owner {
            self.store.revoke_family(family).await?;
            tracing::info!(%user, "logged out; refresh family revoked");
        }
        if let Some(identity) = identity {
            let remaining = identity
                .expires_at
                .saturating_sub(time::since_epoch().as_secs())
                .saturating_add(self.tokens.leeway_secs);
            self.store
                .deny_access_token(&identity.token_id, remaining)
                .await?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let identity = caller(&request)?;
        let user = if identity.is_service() {
            None
        } else {
            self.store.user(&identity.subject).await?
        };
        Ok(Response::new(pb::WhoAmIResponse {
            principal: Some(principal(identity, user.as_ref())),
        }))
    }

    async fn get_public_keys(
        &self,
        _request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        let public = self.keyring.public_keys();
        let not_after: Vec<Option<u64>> = std::iter::once(None)
            .chain(self.keyring.previous.iter().map(|key| Some(key.not_after)))
            .collect();
        let keys = public
            .iter()
            .zip(not_after)
            .map(|(key, not_after)| pb::PublicKey {
                kid: key.kid.clone(),
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                alg: "EdDSA".into(),
                x: key.x.clone(),
                r#use: "sig".into(),
                not_after: not_after.map(time::timestamp_from_secs),
            })
            .collect();
        Ok(Response::new(pb::GetPublicKeysResponse {
            jwks_json: storemesh_tokens::jwks_json(&public),
            keys,
        }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        let address = client_address(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        if let Some(problem) = validate::client_id_problem(&request.client_id) {
            violations.add("client_id", problem);
        }
        if request.client_secret.is_empty()
            || request.client_secret.chars().count() > validate::MAX_CLIENT_SECRET_CHARS
        {
            violations.add("client_secret", "must be 1 to 256 characters");
        }
        for (index, scope) in request.requested_scopes.iter().enumerate() {
            let well_formed = !scope.is_empty()
                && scope.len() <= 64
                && scope
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-'));
            if !well_formed {
                violations.add(format!("requested_scopes[{index}]"), "is not a valid scope");
            }
        }
        violations.into_result()?;
        self.limit(
            "token-addr",
            &address,
            self.config.rate_limit.service_token_per_client,
        )
        .await?;
        self.limit(
            "token-client",
            &request.client_id,
            self.config.rate_limit.service_token_per_client,
        )
        .await?;

        let account = self.store.service_account(&request.client_id).await?;
        let remembered = account.as_ref().is_some_and(|(hash, _)| {
            self.verified_secrets
                .contains(&request.client_id, hash, &request.client_secret)
        });
        let verified = remembered
            || self
                .hasher
                .verify(
                    request.client_secret.clone(),
                    account.as_ref().map(|(hash, _)| hash.clone()),
                )
                .await?;
        if verified
            && !remembered
            && let Some((hash, _)) = &account
        {
            self.verified_secrets
                .insert(&request.client_id, hash, &request.client_secret);
        }
        let Some((_, granted)) = account.filter(|_| verified) else {
            return Err(ServiceError::Unauthenticated(INVALID_CLIENT.into()).into());
        };
        let scopes: Vec<String> = if request.requested_scopes.is_empty() {
            granted
        } else {
            if let Some(missing) = request
                .requested_scopes
                .iter()
                .find(|scope| !granted.contains(scope))
            {
                return Err(ServiceError::PermissionDenied(format!(
                    "scope {missing} is not granted to this service account"
                ))
                .into());
            }
            request.requested_scopes
        };
        debug_assert!(scopes.iter().all(|s| scopes::is_known(s)));
        let (access_token, expires) = self.sign(
            &request.client_id,
            Role::Service,
            scopes.join(" "),
            self.config.service_token_ttl_secs,
            0,
        )?;
        tracing::info!(client_id = %request.client_id, "service token issued");
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token,
            expire_time: Some(time::timestamp_from_secs(expires)),
            scopes,
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let identity = user_caller(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.old_password.is_empty() {
            violations.add("old_password", "must not be empty");
        } else if request.old_password.chars().count() > validate::MAX_PASSWORD_CHARS {
            violations.add("old_password", "must be at most 128 characters");
        }
        if let Err(problem) = validate::password_problem(&request.new_password) {
            violations.add("new_password", problem);
        } else if request.new_password == request.old_password {
            violations.add("new_password", "must differ from old_password");
        }
        violations.into_result()?;
        // A stolen access token must not buy unlimited guesses at the password.
        self.limit(
            "change-password",
            &identity.subject,
            self.config.rate_limit.login_per_account,
        )
        .await?;
        let Some(user) = self.store.user(&identity.subject).await? else {
            return Err(ServiceError::Unauthenticated("account no longer exists".into()).into());
        };
        if !self
            .hasher
            .verify(request.old_password, Some(user.password_hash.clone()))
            .await?
        {
            tracing::info!(user = %user.id, "password change refused: wrong old password");
            return Err(ServiceError::Unauthenticated(INVALID_PASSWORD.into()).into());
        }
        let new_hash = self.hasher.hash(request.new_password).await?;
        let change = SessionsEnd {
            role: None,
            password: Some((new_hash.as_str(), user.password_hash.as_str())),
        };
        let (session_gen, not_before) = match self.end_sessions(&user.id, change).await? {
            Ended::Ended {
                session_gen,
                not_before,
            } => (session_gen, not_before),
            Ended::NoSuchUser => {
                return Err(
                    ServiceError::Unauthenticated("account no longer exists".into()).into(),
                );
            }
            Ended::PasswordChanged => {
                return Err(ServiceError::Aborted(
                    "the password was changed concurrently; sign in again".into(),
                )
                .into());
            }
        };
        let user = UserRecord {
            password_hash: new_hash,
            session_gen,
            not_before,
            ..user
        };
        let Some(tokens) = self.new_session(&user).await? else {
            return Err(ServiceError::Aborted(
                "the account's sessions were ended concurrently; sign in again".into(),
            )
            .into());
        };
        tracing::info!(user = %user.id, "password changed");
        Ok(Response::new(pb::ChangePasswordResponse {
            tokens: Some(tokens),
        }))
    }

    async fn logout_all(
        &self,
        request: Request<pb::LogoutAllRequest>,
    ) -> Result<Response<pb::LogoutAllResponse>, Status> {
        let identity = user_caller(&request)?;
        match self
            .end_sessions(&identity.subject, SessionsEnd::default())
            .await?
        {
            Ended::Ended { .. } => {}
            // A token of a deleted account: nothing left to end.
            Ended::NoSuchUser | Ended::PasswordChanged => {}
        }
        Ok(Response::new(pb::LogoutAllResponse {}))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::SetRoleResponse>, Status> {
        let identity = caller(&request)?.clone();
        identity.require_admin()?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.user_id.is_empty() || request.user_id.len() > 64 {
            violations.add("user_id", "must be 1 to 64 characters");
        }
        let role = match pb::Role::try_from(request.role) {
            Ok(pb::Role::Customer) => Role::Customer,
            Ok(pb::Role::Seller) => Role::Seller,
            Ok(pb::Role::Admin) => Role::Admin,
            _ => {
                violations.add("role", "must be ROLE_CUSTOMER, ROLE_SELLER or ROLE_ADMIN");
                Role::Customer
            }
        };
        violations.into_result()?;
        if request.user_id == identity.subject {
            return Err(ServiceError::FailedPrecondition(
                "admins cannot change their own role".into(),
            )
            .into());
        }
        // A role change ends the user's sessions: a demoted admin's tokens must not keep the
        // old role until they expire, and the next Login carries the new one.
        let change = SessionsEnd {
            role: Some(role),
            password: None,
        };
        if let Ended::NoSuchUser = self.end_sessions(&request.user_id, change).await? {
            return Err(ServiceError::NotFound(format!("user {}", request.user_id)).into());
        }
        let Some(user) = self.store.user(&request.user_id).await? else {
            return Err(ServiceError::NotFound(format!("user {}", request.user_id)).into());
        };
        tracing::info!(admin = %identity.subject, user = %user.id, role = role.as_str(), "role changed");
        Ok(Response::new(pb::SetRoleResponse {
            user: Some(user_to_proto(&user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        caller(&request)?.require_admin()?;
        let request = request.into_inner();
        let page_size = Self::page_size(request.page_size)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            let decoded = URL_SAFE_NO_PAD
                .decode(&request.page_token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|id| ulid::Ulid::from_string(id).is_ok());
            Some(decoded.ok_or_else(|| {
                ServiceError::invalid("page_token", "is not a token returned by ListUsers")
            })?)
        };
        let (users, more) = self.store.list_users(after.as_deref(), page_size).await?;
        let next_page_token = match (more, users.last()) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(&last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_proto).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod client_address_tests {
    use super::{ClientAddr, client_address};

    #[test]
    fn the_server_layers_client_address_is_used_and_x_forwarded_for_never() {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("x-forwarded-for", "6.6.6.6, 10.0.0.5".parse().unwrap());
        // No ClientAddr and no TCP peer (a unit test): the header is still not believed.
        assert_eq!(client_address(&request), "unknown");
        request
            .extensions_mut()
            .insert(ClientAddr("203.0.113.7".parse().unwrap()));
        assert_eq!(client_address(&request), "203.0.113.7");
        // IPv6 clients count by their /64.
        request
            .extensions_mut()
            .insert(ClientAddr("2001:db8:1:2:3:4:5:6".parse().unwrap()));
        assert_eq!(client_address(&request), "2001:db8:1:2::");
    }
}
