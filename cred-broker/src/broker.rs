//! The broker: registry + credential cache + metrics, and the decision for one credentials
//! request (which status, which body, which audit line).

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use crate::cache::{CachePolicy, CacheStatus, CredentialCache};
use crate::metrics::{Metrics, Outcome, NO_TENANT};
use crate::registry::{
    AuthError, MintedToken, RegisterOutcome, Registry, RegistryError, TenantInfo, TenantSpec,
};
use crate::sts::{rfc3339, CredentialSource, Credentials};

/// Body of a 200 answer: the shape the EKS Pod Identity agent returns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CredentialsBody {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token.
    pub token: String,
    /// RFC 3339 UTC expiry.
    pub expiration: String,
    /// Account of the role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// The 200 answer's body for `c`: rendered once per cached credential, not per request.
/// `account_fallback` (the role ARN's account) is used when STS did not name the account.
pub fn credentials_body(c: &Credentials, account_fallback: Option<&str>) -> Bytes {
    let body = CredentialsBody {
        access_key_id: c.access_key_id.clone(),
        secret_access_key: c.secret_access_key.clone(),
        token: c.session_token.clone(),
        expiration: rfc3339(c.expiration),
        account_id: c
            .account_id
            .clone()
            .or_else(|| account_fallback.map(str::to_owned)),
    };
    // Strings and a string option: serializing cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

/// The answer to one credentials request, before it is put on the wire.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body (a cached credential's is shared, not copied).
    pub body: Bytes,
    /// How the request ended (metric label, audit field).
    pub outcome: Outcome,
}

/// Everything the audit line of one request says; never a token or a secret.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Tenant whose token was presented, `-` when none matched.
    pub tenant: String,
    /// Public id of the token, `-` when none matched.
    pub token_id: String,
    /// Peer address.
    pub source: IpAddr,
    /// Outcome.
    pub outcome: Outcome,
    /// HTTP status.
    pub status: u16,
    /// Cache hit/miss, `-` when no credentials were looked up.
    pub cache: &'static str,
    /// Latency of the STS call the request waited for, if any.
    pub sts_latency: Option<Duration>,
}

impl AuditRecord {
    /// Writes the audit line (tracing target `audit`).
    pub fn emit(&self) {
        // Strings are recorded as strings, not through Display: the JSON formatter writes
        // them directly (this line is most of the broker's CPU on a cached request).
        let sts_ms = self
            .sts_latency
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0));
        tracing::info!(
            target: "audit",
            tenant = self.tenant.as_str(),
            token_id = self.token_id.as_str(),
            source = %self.source,
            outcome = self.outcome.as_str(),
            status = self.status,
            cache = self.cache,
            sts_latency_ms = sts_ms.as_deref().unwrap_or("-"),
            "credentials request"
        );
    }
}

/// The broker's shared state; cheap to clone through an `Arc`.
pub struct Broker {
    registry: RwLock<Registry>,
    cache: CredentialCache,
    metrics: Arc<Metrics>,
    gate: Arc<crate::limits::Gate>,
}

fn error_answer(status: u16, code: &'static str, message: String, outcome: Outcome) -> Answer {
    let body = serde_json::to_string(&ErrorBody { code, message })
        .unwrap_or_else(|_| format!("{{\"code\":\"{code}\",\"message\":\"\"}}"));
    Answer {
        status,
        body: Bytes::from(body),
        outcome,
    }
}

impl Broker {
    /// A broker with no tenants that fetches credentials from `source`.
    pub fn new(source: Arc<dyn CredentialSource>, policy: CachePolicy) -> Self {
        let metrics = Arc::new(Metrics::new());
        Self {
            registry: RwLock::new(Registry::new()),
            cache: CredentialCache::new(source, policy, metrics.clone()),
            metrics,
            gate: Arc::new(crate::limits::Gate::new(crate::limits::Limits::default())),
        }
    }

    /// The same broker with `limits` on connections and requests instead of the defaults.
    pub fn with_limits(mut self, limits: crate::limits::Limits) -> Self {
        self.gate = Arc::new(crate::limits::Gate::new(limits));
        self
    }

    /// Each tenant's share of the broker: what admits connections and requests.
    pub fn gate(&self) -> &Arc<crate::limits::Gate> {
        &self.gate
    }

    /// The broker's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Prometheus text of every metric.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.cache.gauges())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers or updates a tenant; a changed role or external id drops cached credentials.
    pub fn register(&self, spec: TenantSpec) -> Result<RegisterOutcome, RegistryError> {
        let name = spec.name.to_string();
        let outcome = self.write().register(spec)?;
        if outcome == RegisterOutcome::RoleChanged {
            self.cache.invalidate(&name);
        }
        Ok(outcome)
    }

    /// Removes a tenant, its tokens and its cached credentials.
    pub fn deregister(&self, name: &str) -> Result<(), RegistryError> {
        self.write().deregister(name)?;
        self.cache.remove(name);
        Ok(())
    }

    /// Mints a token for a tenant (see [`Registry::mint`]).
    pub fn mint(
        &self,
        name: &str,
        ttl: Duration,
        retire_others_after: Option<Duration>,
    ) -> Result<MintedToken, RegistryError> {
        self.write()
            .mint(name, ttl, retire_others_after, SystemTime::now())
    }

    /// Revokes one token.
    pub fn revoke(&self, name: &str, token_id: &str) -> Result<(), RegistryError> {
        self.write().revoke(name, token_id)
    }

    /// Revokes every token of a tenant.
    pub fn revoke_all(&self, name: &str) -> Result<usize, RegistryError> {
        self.write().revoke_all(name)
    }

    /// Every tenant and its tokens' public facts.
    pub fn list(&self) -> Vec<TenantInfo> {
        self.read().list(SystemTime::now())
    }

    /// Starts background refreshes for tenants whose credentials are inside the refresh window.
    pub fn refresh_due(&self) -> usize {
        let tenants: Vec<_> = {
            let r = self.read();
            r.names().iter().filter_map(|n| r.tenant(n)).collect()
        };
        self.cache.refresh_due(&tenants)
    }

    /// Answers `GET /v1/credentials` for a request from `peer` carrying `authorization`,
    /// counts it and writes its audit line.
    pub async fn credentials(&self, authorization: Option<&str>, peer: IpAddr) -> Answer {
        let (answer, audit) = self.decide(authorization, peer).await;
        self.metrics.request(&audit.tenant, answer.outcome);
        audit.emit();
        answer
    }

    async fn decide(&self, authorization: Option<&str>, peer: IpAddr) -> (Answer, AuditRecord) {
        let mut audit = AuditRecord {
            tenant: NO_TENANT.to_owned(),
            token_id: NO_TENANT.to_owned(),
            source: peer,
            outcome: Outcome::Ok,
            status: 200,
            cache: "-",
            sts_latency: None,
        };
        let finish = |mut audit: AuditRecord, answer: Answer| {
            audit.outcome = answer.outcome;
            audit.status = answer.status;
            (answer, audit)
        };
        let token = match authorization.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => {
                return finish(
                    audit,
                    error_answer(
                        400,
                        "MissingAuthorization",
                        "the Authorization header with the tenant's broker token is missing; \
                         set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to the token file"
                            .to_owned(),
                        Outcome::MissingHeader,
                    ),
                )
            }
        };
        let auth = self.read().authenticate(token, peer, SystemTime::now());
        let who = match auth {
            Ok(a) => a,
            Err(AuthError::UnknownToken) => {
                return finish(
                    audit,
                    error_answer(
                        401,
                        "InvalidToken",
                        "the broker token is unknown or revoked".to_owned(),
                        Outcome::UnknownToken,
                    ),
                )
            }
            Err(AuthError::Expired { tenant, token_id }) => {
                audit.tenant = tenant;
                audit.token_id = token_id;
                return finish(
                    audit,
                    error_answer(
                        401,
                        "ExpiredToken",
                        "the broker token has expired; the host rotates the token file, so re-read it"
                            .to_owned(),
                        Outcome::ExpiredToken,
                    ),
                );
            }
            Err(AuthError::WrongSource {
                tenant,
                token_id,
                allowed,
            }) => {
                audit.tenant = tenant;
                audit.token_id = token_id;
                return finish(
                    audit,
                    error_answer(
                        403,
                        "ForbiddenSource",
                        format!(
                            "this token may only be used from {allowed}; the request came from {peer}"
                        ),
                        Outcome::WrongSource,
                    ),
                );
            }
        };
        audit.tenant = who.tenant.name.to_string();
        audit.token_id = who.token_id.clone();
        if !self.gate.request(&audit.tenant) {
            let per_second = self.gate.limits().requests_per_second;
            if let Some(n) = self.gate.log_refusal(&audit.tenant) {
                tracing::warn!(target: "limit", limit = "requests_per_second_per_tenant", max = per_second,
                    tenant = %audit.tenant, refused = n, "limit hit: tenant credentials request refused");
            }
            return finish(
                audit,
                error_answer(
                    429,
                    "TooManyRequests",
                    format!(
                        "this tenant asked for credentials more than {per_second} times in a second; \
                         the SDK's cached credentials stay valid, retry shortly"
                    ),
                    Outcome::RateLimited,
                ),
            );
        }
        match self.cache.get(who.tenant.clone()).await {
            Ok(served) => {
                audit.cache = served.cache.as_str();
                self.metrics.served(&audit.tenant, audit.cache);
                audit.sts_latency = served.sts_latency;
                finish(
                    audit,
                    Answer {
                        status: 200,
                        body: served.body,
                        outcome: Outcome::Ok,
                    },
                )
            }
            Err(unavailable) => {
                audit.cache = CacheStatus::Miss.as_str();
                audit.sts_latency = unavailable.sts_latency;
                finish(
                    audit,
                    error_answer(
                        503,
                        "CredentialsUnavailable",
                        format!(
                            "no credentials for tenant {} can be served: STS is failing and no cached \
                             credentials with enough lifetime remain ({}); retry shortly",
                            who.tenant.name, unavailable.error
                        ),
                        Outcome::StsUnavailable,
                    ),
                )
            }
        }
    }
}
