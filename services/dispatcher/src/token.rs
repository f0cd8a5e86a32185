//! The dispatcher's service token: issued by `AuthService.IssueServiceToken`, cached, and
//! renewed before it expires (or at once after a call was refused as unauthenticated).

use std::time::Duration;

use storemesh_proto::auth::v1::IssueServiceTokenRequest;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

pub struct ServiceTokens {
    auth: AuthServiceClient<Channel>,
    client_id: String,
    client_secret: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl ServiceTokens {
    pub fn new(
        auth_endpoint: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(auth_endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            auth: AuthServiceClient::new(channel),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            cached: Mutex::new(None),
        })
    }

    /// A valid token; one caller renews it while the others wait for the result.
    pub async fn get(&self) -> Result<String, tonic::Status> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let issued = self
            .auth
            .clone()
            .issue_service_token(IssueServiceTokenRequest {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
                // Empty: every scope granted to the account.
                requested_scopes: Vec::new(),
            })
            .await?
            .into_inner();
        let now = storemesh_runtime::time::since_epoch().as_secs();
        let expires = issued
            .expire_time
            .and_then(|time| u64::try_from(time.seconds).ok())
            .unwrap_or(now + 60);
        let lifetime = expires.saturating_sub(now);
        // Renew when 80 % of the lifetime has passed (at least 5 s early), so a call never
        // leaves with a token that expires on the way.
        let renew_in = Duration::from_secs(lifetime.saturating_sub((lifetime / 5).max(5)));
        *cached = Some((issued.access_token.clone(), Instant::now() + renew_in));
        tracing::debug!(client_id = %self.client_id, lifetime, "service token issued");
        Ok(issued.access_token)
    }

    /// Forgets the cached token (after an `UNAUTHENTICATED` answer: revoked or key rotated).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
