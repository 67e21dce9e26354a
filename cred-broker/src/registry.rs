//! Tenant registry: each tenant's role, external id and allowed source network, and the
//! hashes of the bearer tokens hostd minted for it (with TTLs, revocation and rotation overlap).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use m8trx_spec::CustomerName;
use serde::{Deserialize, Serialize};

use crate::token::{new_token_id, RandomError, Token, TokenHash};

/// Longest token lifetime the registry accepts; hostd rotates far more often than this.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Live tokens one tenant may hold at once (current + rotation overlap, with room to spare).
pub const MAX_TOKENS_PER_TENANT: usize = 16;
/// Expired tokens are remembered this long so a late request is told "expired", not "unknown".
const EXPIRED_TOKEN_MEMORY: Duration = Duration::from_secs(3600);

/// What hostd registers for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpec {
    /// Customer name; RoleSessionName and the `Customer` session tag derive from it.
    pub name: CustomerName,
    /// The customer's own IAM role the broker assumes.
    pub role_arn: String,
    /// ExternalId the customer's role trust policy requires.
    pub external_id: String,
    /// Only requests from this network (the tenant's bridge subnet) may use the tenant's tokens.
    pub allowed_cidr: IpNet,
}

impl TenantSpec {
    /// Checks the role ARN and external id against what STS accepts, before any STS call.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let parts: Vec<&str> = self.role_arn.splitn(6, ':').collect();
        let ok_arn = parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "iam"
            && parts[4].len() == 12
            && parts[4].bytes().all(|b| b.is_ascii_digit())
            && parts[5].starts_with("role/")
            && parts[5].len() > "role/".len();
        if !ok_arn {
            return Err(RegistryError::Invalid(format!(
                "role_arn {:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)",
                self.role_arn
            )));
        }
        let len = self.external_id.chars().count();
        let ok_ext = (2..=1224).contains(&len)
            && self
                .external_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
        if !ok_ext {
            return Err(RegistryError::Invalid(format!(
                "external_id must be 2 to 1224 characters of [A-Za-z0-9_+=,.@:/-], got {len} characters"
            )));
        }
        Ok(())
    }

    /// The account the role lives in, for the `AccountId` field of the credentials response.
    pub fn account_id(&self) -> Option<&str> {
        self.role_arn.split(':').nth(4).filter(|a| !a.is_empty())
    }
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no tenant named {0:?} is registered")]
    UnknownTenant(String),
    #[error("tenant {tenant:?} has no token with id {id:?}")]
    UnknownToken { tenant: String, id: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("tenant {0:?} already holds {MAX_TOKENS_PER_TENANT} live tokens; revoke some first")]
    TooManyTokens(String),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No tenant holds a token with this hash (never minted, revoked, or long expired).
    UnknownToken,
    /// The token was valid for `tenant` but its TTL has passed.
    Expired { tenant: String, token_id: String },
    /// A valid token presented from outside the tenant's allowed network.
    WrongSource {
        tenant: String,
        token_id: String,
        allowed: IpNet,
    },
}

/// A request the registry accepted: whose token it was.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The tenant the token belongs to.
    pub tenant: Arc<TenantSpec>,
    /// Public id of the token used (for the audit line).
    pub token_id: String,
}

/// A newly minted token: the secret is in here once and nowhere else.
#[derive(Debug)]
pub struct MintedToken {
    /// Public id, for listing and revoking.
    pub id: String,
    /// The secret, to be written to the tenant's token file.
    pub token: Token,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

/// Public facts about one stored token (no secret, no hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// Unix seconds when it was minted.
    pub created_at: u64,
    /// Unix seconds when it stops being accepted.
    pub expires_at: u64,
    /// Whether its TTL has passed.
    pub expired: bool,
}

/// Public facts about one tenant, for the admin list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantInfo {
    /// What was registered.
    #[serde(flatten)]
    pub spec: TenantSpec,
    /// Its tokens, oldest first.
    pub tokens: Vec<TokenInfo>,
}

/// What registering changed, so the caller knows whether cached credentials are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// A new tenant.
    Created,
    /// Same name, and role or external id changed: cached credentials must go.
    RoleChanged,
    /// Same name and role (the CIDR may have changed): cached credentials stay valid.
    Updated,
}

struct StoredToken {
    id: String,
    hash: TokenHash,
    created_at: SystemTime,
    expires_at: SystemTime,
}

struct TenantEntry {
    spec: Arc<TenantSpec>,
    tokens: Vec<StoredToken>,
}

/// All tenants and their token hashes. Not synchronised: the broker wraps it in a lock.
#[derive(Default)]
pub struct Registry {
    tenants: BTreeMap<CustomerName, TenantEntry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tenant or updates its role, external id and CIDR; existing tokens stay valid.
    pub fn register(&mut self, spec: TenantSpec) -> Result<RegisterOutcome, RegistryError> {
        spec.validate()?;
        let name = spec.name.clone();
        match self.tenants.get_mut(&name) {
            Some(entry) => {
                let role_changed = entry.spec.role_arn != spec.role_arn
                    || entry.spec.external_id != spec.external_id;
                entry.spec = Arc::new(spec);
                Ok(if role_changed {
                    RegisterOutcome::RoleChanged
                } else {
                    RegisterOutcome::Updated
                })
            }
            None => {
                self.tenants.insert(
                    name,
                    TenantEntry {
                        spec: Arc::new(spec),
                        tokens: Vec::new(),
                    },
                );
                Ok(RegisterOutcome::Created)
            }
        }
    }

    /// Removes a tenant and every token it had.
    pub fn deregister(&mut self, name: &str) -> Result<(), RegistryError> {
        let key = parse_name(name)?;
        self.tenants
            .remove(&key)
            .map(|_| ())
            .ok_or_else(|| RegistryError::UnknownTenant(name.to_owned()))
    }

    /// The registered spec of one tenant.
    pub fn tenant(&self, name: &str) -> Option<Arc<TenantSpec>> {
        let key = CustomerName::parse(name).ok()?;
        self.tenants.get(&key).map(|e| e.spec.clone())
    }

    /// Mints a token valid for `ttl`. With `retire_others_after`, every other live token of
    /// the tenant is cut to expire that long from now: the rotation overlap during which the
    /// old token file may still be read by a client mid-request.
    pub fn mint(
        &mut self,
        name: &str,
        ttl: Duration,
        retire_others_after: Option<Duration>,
        now: SystemTime,
    ) -> Result<MintedToken, RegistryError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(RegistryError::Invalid(format!(
                "ttl must be between 1 s and {} s, got {} s",
                MAX_TOKEN_TTL.as_secs(),
                ttl.as_secs()
            )));
        }
        let key = parse_name(name)?;
        let entry = self
            .tenants
            .get_mut(&key)
            .ok_or_else(|| RegistryError::UnknownTenant(name.to_owned()))?;
        entry
            .tokens
            .retain(|t| t.expires_at + EXPIRED_TOKEN_MEMORY > now);
        let live = entry.tokens.iter().filter(|t| t.expires_at > now).count();
        if live >= MAX_TOKENS_PER_TENANT && retire_others_after.is_none() {
            return Err(RegistryError::TooManyTokens(name.to_owned()));
        }
        if let Some(overlap) = retire_others_after {
            let cut = now + overlap;
            for t in entry.tokens.iter_mut() {
                if t.expires_at > cut {
                    t.expires_at = cut;
                }
            }
        }
        let token = Token::generate()?;
        let id = new_token_id()?;
        let expires_at = now + ttl;
        entry.tokens.push(StoredToken {
            id: id.clone(),
            hash: token.hash(),
            created_at: now,
            expires_at,
        });
        Ok(MintedToken {
            id,
            token,
            expires_at,
        })
    }

    /// Revokes one token at once.
    pub fn revoke(&mut self, name: &str, token_id: &str) -> Result<(), RegistryError> {
        let key = parse_name(name)?;
        let entry = self
            .tenants
            .get_mut(&key)
            .ok_or_else(|| RegistryError::UnknownTenant(name.to_owned()))?;
        let before = entry.tokens.len();
        entry.tokens.retain(|t| t.id != token_id);
        if entry.tokens.len() == before {
            return Err(RegistryError::UnknownToken {
                tenant: name.to_owned(),
                id: token_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Revokes every token of a tenant; returns how many there were.
    pub fn revoke_all(&mut self, name: &str) -> Result<usize, RegistryError> {
        let key = parse_name(name)?;
        let entry = self
            .tenants
            .get_mut(&key)
            .ok_or_else(|| RegistryError::UnknownTenant(name.to_owned()))?;
        let n = entry.tokens.len();
        entry.tokens.clear();
        Ok(n)
    }

    /// Finds whose token `presented` is, comparing its hash with every stored hash in constant
    /// time (no early exit), then checks expiry and the source address.
    pub fn authenticate(
        &self,
        presented: &str,
        peer: IpAddr,
        now: SystemTime,
    ) -> Result<Authenticated, AuthError> {
        let hash = TokenHash::of(presented);
        let mut found: Option<(&TenantEntry, &StoredToken)> = None;
        for entry in self.tenants.values() {
            for t in &entry.tokens {
                if t.hash.ct_eq(&hash) {
                    found = Some((entry, t));
                }
            }
        }
        let (entry, token) = found.ok_or(AuthError::UnknownToken)?;
        let tenant = entry.spec.name.to_string();
        if token.expires_at <= now {
            return Err(AuthError::Expired {
                tenant,
                token_id: token.id.clone(),
            });
        }
        let peer = canonical(peer);
        if !entry.spec.allowed_cidr.contains(&peer) {
            return Err(AuthError::WrongSource {
                tenant,
                token_id: token.id.clone(),
                allowed: entry.spec.allowed_cidr,
            });
        }
        Ok(Authenticated {
            tenant: entry.spec.clone(),
            token_id: token.id.clone(),
        })
    }

    /// Every tenant with its tokens' public facts.
    pub fn list(&self, now: SystemTime) -> Vec<TenantInfo> {
        self.tenants
            .values()
            .map(|e| TenantInfo {
                spec: (*e.spec).clone(),
                tokens: e
                    .tokens
                    .iter()
                    .map(|t| TokenInfo {
                        id: t.id.clone(),
                        created_at: unix_secs(t.created_at),
                        expires_at: unix_secs(t.expires_at),
                        expired: t.expires_at <= now,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Names of all registered tenants.
    pub fn names(&self) -> Vec<String> {
        self.tenants.keys().map(|k| k.to_string()).collect()
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`; CIDRs are written as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn parse_name(name: &str) -> Result<CustomerName, RegistryError> {
    CustomerName::parse(name).map_err(|e| RegistryError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, cidr: &str) -> TenantSpec {
        TenantSpec {
            name: CustomerName::parse(name).unwrap(),
            role_arn: format!("arn:aws:iam::123456789012:role/m8trx-customer-{name}"),
            external_id: format!("ext-{name}"),
            allowed_cidr: cidr.parse().unwrap(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn token_authenticates_its_tenant_from_its_network_only() {
        let mut r = Registry::new();
        let now = SystemTime::now();
        r.register(spec("acme", "10.250.1.0/24")).unwrap();
        r.register(spec("beta", "10.250.2.0/24")).unwrap();
        let a = r.mint("acme", Duration::from_secs(60), None, now).unwrap();
        let b = r.mint("beta", Duration::from_secs(60), None, now).unwrap();

        let ok = r
            .authenticate(a.token.expose_secret(), ip("10.250.1.7"), now)
            .unwrap();
        assert_eq!(ok.tenant.name.as_str(), "acme");
        assert_eq!(ok.token_id, a.id);
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert!(r
            .authenticate(a.token.expose_secret(), ip("::ffff:10.250.1.7"), now)
            .is_ok());
        // beta's token from acme's bridge is a wrong source for beta, never acme's credentials.
        assert_eq!(
            r.authenticate(b.token.expose_secret(), ip("10.250.1.7"), now)
                .unwrap_err(),
            AuthError::WrongSource {
                tenant: "beta".into(),
                token_id: b.id.clone(),
                allowed: "10.250.2.0/24".parse().unwrap()
            }
        );
        assert_eq!(
            r.authenticate("m8tb_nope", ip("10.250.1.7"), now)
                .unwrap_err(),
            AuthError::UnknownToken
        );
        assert_eq!(
            r.authenticate("", ip("10.250.1.7"), now).unwrap_err(),
            AuthError::UnknownToken
        );
    }

    #[test]
    fn ttl_expiry_and_revocation() {
        let mut r = Registry::new();
        let now = SystemTime::now();
        r.register(spec("acme", "127.0.0.0/8")).unwrap();
        let t = r.mint("acme", Duration::from_secs(10), None, now).unwrap();
        let secret = t.token.expose_secret().to_owned();
        assert!(r
            .authenticate(&secret, ip("127.0.0.1"), now + Duration::from_secs(9))
            .is_ok());
        assert!(matches!(
            r.authenticate(&secret, ip("127.0.0.1"), now + Duration::from_secs(10)),
            Err(AuthError::Expired { .. })
        ));
        let t2 = r.mint("acme", Duration::from_secs(10), None, now).unwrap();
        r.revoke("acme", &t2.id).unwrap();
        assert_eq!(
            r.authenticate(t2.token.expose_secret(), ip("127.0.0.1"), now)
                .unwrap_err(),
            AuthError::UnknownToken
        );
        assert!(matches!(
            r.revoke("acme", &t2.id),
            Err(RegistryError::UnknownToken { .. })
        ));
        assert_eq!(r.revoke_all("acme").unwrap(), 1);
        assert!(r.authenticate(&secret, ip("127.0.0.1"), now).is_err());
    }

    #[test]
    fn rotation_keeps_the_old_token_for_the_overlap_only() {
        let mut r = Registry::new();
        let now = SystemTime::now();
        r.register(spec("acme", "127.0.0.0/8")).unwrap();
        let old = r
            .mint("acme", Duration::from_secs(3600), None, now)
            .unwrap();
        let new = r
            .mint(
                "acme",
                Duration::from_secs(3600),
                Some(Duration::from_secs(30)),
                now,
            )
            .unwrap();
        let at = |s| now + Duration::from_secs(s);
        assert!(r
            .authenticate(old.token.expose_secret(), ip("127.0.0.1"), at(29))
            .is_ok());
        assert!(r
            .authenticate(new.token.expose_secret(), ip("127.0.0.1"), at(29))
            .is_ok());
        assert!(matches!(
            r.authenticate(old.token.expose_secret(), ip("127.0.0.1"), at(31)),
            Err(AuthError::Expired { .. })
        ));
        assert!(r
            .authenticate(new.token.expose_secret(), ip("127.0.0.1"), at(3599))
            .is_ok());
    }

    #[test]
    fn refuses_bad_specs_ttls_and_unknown_tenants() {
        let mut r = Registry::new();
        let mut s = spec("acme", "127.0.0.0/8");
        s.role_arn = "arn:aws:iam::123:role/x".into();
        assert!(matches!(r.register(s), Err(RegistryError::Invalid(_))));
        let mut s = spec("acme", "127.0.0.0/8");
        s.external_id = "x".into();
        assert!(matches!(r.register(s), Err(RegistryError::Invalid(_))));
        assert!(matches!(
            r.mint("ghost", Duration::from_secs(1), None, SystemTime::now()),
            Err(RegistryError::UnknownTenant(_))
        ));
        r.register(spec("acme", "127.0.0.0/8")).unwrap();
        assert!(matches!(
            r.mint("acme", Duration::ZERO, None, SystemTime::now()),
            Err(RegistryError::Invalid(_))
        ));
        for _ in 0..MAX_TOKENS_PER_TENANT {
            r.mint("acme", Duration::from_secs(60), None, SystemTime::now())
                .unwrap();
        }
        assert!(matches!(
            r.mint("acme", Duration::from_secs(60), None, SystemTime::now()),
            Err(RegistryError::TooManyTokens(_))
        ));
    }

    #[test]
    fn re_registering_reports_role_changes_and_keeps_tokens() {
        let mut r = Registry::new();
        let now = SystemTime::now();
        assert_eq!(
            r.register(spec("acme", "127.0.0.0/8")).unwrap(),
            RegisterOutcome::Created
        );
        let t = r.mint("acme", Duration::from_secs(60), None, now).unwrap();
        assert_eq!(
            r.register(spec("acme", "127.0.0.0/16")).unwrap(),
            RegisterOutcome::Updated
        );
        let mut s = spec("acme", "127.0.0.0/16");
        s.role_arn = "arn:aws:iam::123456789012:role/other".into();
        assert_eq!(r.register(s).unwrap(), RegisterOutcome::RoleChanged);
        assert!(r
            .authenticate(t.token.expose_secret(), ip("127.0.0.1"), now)
            .is_ok());
        assert_eq!(r.tenant("acme").unwrap().account_id(), Some("123456789012"));
        let listed = r.list(now);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].tokens.len(), 1);
        let json = serde_json::to_string(&listed).unwrap();
        assert!(!json.contains(t.token.expose_secret()));
        r.deregister("acme").unwrap();
        assert!(r
            .authenticate(t.token.expose_secret(), ip("127.0.0.1"), now)
            .is_err());
    }
}
