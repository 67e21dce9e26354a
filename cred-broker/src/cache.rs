//! Per-tenant credential cache: one STS call per refresh however many requests arrive,
//! background refresh before expiry, and cached credentials kept in service while STS fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use crate::metrics::{CacheGauge, Metrics};
use crate::registry::TenantSpec;
use crate::sts::{CredentialSource, Credentials, FetchError};

/// When to refresh and how long to keep serving.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Refresh in the background once less than this remains (default 15 min).
    pub refresh_before: Duration,
    /// Never hand out credentials with less than this left (default 5 min): past it, a
    /// failing STS means 503.
    pub min_remaining: Duration,
    /// After a failed STS call, requests without usable credentials get the same error for
    /// this long instead of a new call, and background refreshes wait as long.
    pub retry_after_failure: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            refresh_before: Duration::from_secs(15 * 60),
            min_remaining: Duration::from_secs(5 * 60),
            retry_after_failure: Duration::from_secs(1),
        }
    }
}

/// Whether a request was served from the cache or had to wait for STS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache with no wait.
    Hit,
    /// Waited for an STS call (its own or a coalesced one).
    Miss,
}

impl CacheStatus {
    /// Audit-line value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
        }
    }
}

/// Credentials handed to one request, with how they were obtained.
#[derive(Debug, Clone)]
pub struct Served {
    /// The credentials.
    pub credentials: Arc<Credentials>,
    /// The 200 answer's body for them, rendered once when they were cached.
    pub body: Bytes,
    /// Hit or miss.
    pub cache: CacheStatus,
    /// Latency of the STS call this request waited for (misses only).
    pub sts_latency: Option<Duration>,
}

/// A failed fetch as one request sees it.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// What STS said.
    pub error: FetchError,
    /// Latency of the failed STS call this request waited for, if it waited for one.
    pub sts_latency: Option<Duration>,
}

type FetchResult = Result<(Arc<Credentials>, Bytes, Duration), (FetchError, Duration)>;
type SharedFetch = Shared<BoxFuture<'static, FetchResult>>;

#[derive(Default)]
struct SlotState {
    credentials: Option<Arc<Credentials>>,
    /// The answer body of `credentials`, rendered once: a hit only clones a reference.
    body: Bytes,
    inflight: Option<SharedFetch>,
    last_error: Option<(Instant, FetchError)>,
    /// Bumped when the tenant's role changes, so an in-flight call for the old role is discarded.
    generation: u64,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

/// The cache of every tenant.
pub struct CredentialCache {
    source: Arc<dyn CredentialSource>,
    policy: CachePolicy,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl CredentialCache {
    /// A cache over `source`.
    pub fn new(
        source: Arc<dyn CredentialSource>,
        policy: CachePolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            policy,
            metrics,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, tenant: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(tenant) {
            return s.clone();
        }
        let s = Arc::new(Slot::default());
        slots.insert(tenant.to_owned(), s.clone());
        s
    }

    /// Credentials for `tenant`: cached when more than `min_remaining` is left (starting a
    /// background refresh inside `refresh_before`), otherwise from the one STS call in flight.
    pub async fn get(&self, tenant: Arc<TenantSpec>) -> Result<Served, Unavailable> {
        let slot = self.slot(tenant.name.as_str());
        let fetch = {
            let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = SystemTime::now();
            if let Some(c) = st.credentials.clone() {
                let remaining = c.remaining(now);
                if remaining > self.policy.min_remaining {
                    if remaining <= self.policy.refresh_before
                        && st.inflight.is_none()
                        && !self.failed_recently(&st)
                    {
                        // Background refresh: spawned, nobody waits for it.
                        drop(self.start_fetch(&slot, &mut st, tenant));
                    }
                    return Ok(Served {
                        credentials: c,
                        body: st.body.clone(),
                        cache: CacheStatus::Hit,
                        sts_latency: None,
                    });
                }
            }
            match &st.inflight {
                Some(f) => f.clone(),
                None => {
                    if let Some((_, e)) =
                        st.last_error.as_ref().filter(|_| self.failed_recently(&st))
                    {
                        return Err(Unavailable {
                            error: e.clone(),
                            sts_latency: None,
                        });
                    }
                    self.start_fetch(&slot, &mut st, tenant)
                }
            }
        };
        match fetch.await {
            Ok((credentials, body, latency)) => Ok(Served {
                credentials,
                body,
                cache: CacheStatus::Miss,
                sts_latency: Some(latency),
            }),
            Err((error, latency)) => Err(Unavailable {
                error,
                sts_latency: Some(latency),
            }),
        }
    }

    fn failed_recently(&self, st: &SlotState) -> bool {
        st.last_error
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.policy.retry_after_failure)
    }

    /// Spawns the STS call (so it completes even if every waiter goes away) and records it
    /// as the slot's one in-flight fetch. Must be called with the slot locked.
    fn start_fetch(
        &self,
        slot: &Arc<Slot>,
        st: &mut SlotState,
        tenant: Arc<TenantSpec>,
    ) -> SharedFetch {
        let source = self.source.clone();
        let metrics = self.metrics.clone();
        let slot = slot.clone();
        let generation = st.generation;
        let name = tenant.name.to_string();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = source.fetch(tenant.clone()).await;
            let latency = started.elapsed();
            metrics.sts_call(&name, result.is_ok(), latency);
            let result = result.map(|c| {
                let body = crate::broker::credentials_body(&c, tenant.account_id());
                (Arc::new(c), body)
            });
            let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let out = match result {
                Ok((c, body)) => {
                    if st.generation == generation {
                        st.credentials = Some(c.clone());
                        st.body = body.clone();
                        st.last_error = None;
                    }
                    Ok((c, body, latency))
                }
                Err(e) => {
                    tracing::warn!(tenant = %name, error = %e, latency_ms = latency.as_millis() as u64, "STS AssumeRole failed");
                    if st.generation == generation {
                        st.last_error = Some((Instant::now(), e.clone()));
                    }
                    Err((e, latency))
                }
            };
            if st.generation == generation {
                st.inflight = None;
            }
            out
        });
        let fetch = async move {
            task.await.unwrap_or_else(|e| {
                Err((
                    FetchError(format!("credential fetch task failed: {e}")),
                    Duration::ZERO,
                ))
            })
        }
        .boxed()
        .shared();
        st.inflight = Some(fetch.clone());
        fetch
    }

    /// Forgets a tenant's credentials (its role changed or it was removed).
    pub fn invalidate(&self, tenant: &str) {
        let slot = self.slot(tenant);
        let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        st.generation += 1;
        st.credentials = None;
        st.body = Bytes::new();
        st.inflight = None;
        st.last_error = None;
    }

    /// Drops a tenant's slot entirely.
    pub fn remove(&self, tenant: &str) {
        self.invalidate(tenant);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(tenant);
    }

    /// Starts background refreshes for every tenant in `tenants` whose credentials are inside
    /// the refresh window; called periodically so idle-but-registered tenants stay warm.
    pub fn refresh_due(&self, tenants: &[Arc<TenantSpec>]) -> usize {
        let now = SystemTime::now();
        let mut started = 0;
        for t in tenants {
            let slot = {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                match slots.get(t.name.as_str()) {
                    Some(s) => s.clone(),
                    None => continue,
                }
            };
            let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let due = st
                .credentials
                .as_ref()
                .is_some_and(|c| c.remaining(now) <= self.policy.refresh_before);
            if due && st.inflight.is_none() && !self.failed_recently(&st) {
                drop(self.start_fetch(&slot, &mut st, t.clone()));
                started += 1;
            }
        }
        started
    }

    /// Age and remaining lifetime of every cached credential, for the metrics.
    pub fn gauges(&self) -> Vec<CacheGauge> {
        let now = SystemTime::now();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<CacheGauge> = slots
            .iter()
            .filter_map(|(name, slot)| {
                let st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                st.credentials.as_ref().map(|c| CacheGauge {
                    tenant: name.clone(),
                    age: now.duration_since(c.issued_at).unwrap_or(Duration::ZERO),
                    remaining: c.remaining(now),
                })
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use m8trx_spec::CustomerName;

    /// A counting in-process source for the cache's own logic; the real STS path is tested
    /// against moto in tests/.
    struct Counting {
        calls: AtomicUsize,
        fail: AtomicBool,
        lifetime: Mutex<Duration>,
        delay: Duration,
    }

    impl CredentialSource for Counting {
        fn fetch(
            &self,
            _t: Arc<TenantSpec>,
        ) -> BoxFuture<'static, Result<Credentials, FetchError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail.load(Ordering::SeqCst);
            let lifetime = *self.lifetime.lock().unwrap();
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                if fail {
                    return Err(FetchError("sts down".into()));
                }
                let now = SystemTime::now();
                Ok(Credentials {
                    access_key_id: format!("ASIA{n}"),
                    secret_access_key: "s".into(),
                    session_token: "t".into(),
                    expiration: now + lifetime,
                    account_id: None,
                    issued_at: now,
                })
            }
            .boxed()
        }
    }

    fn tenant() -> Arc<TenantSpec> {
        Arc::new(TenantSpec {
            name: CustomerName::parse("acme").unwrap(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            external_id: "ext-1".into(),
            allowed_cidr: "127.0.0.0/8".parse().unwrap(),
        })
    }

    fn setup(lifetime: Duration, policy: CachePolicy) -> (Arc<Counting>, Arc<CredentialCache>) {
        let src = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            lifetime: Mutex::new(lifetime),
            delay: Duration::from_millis(50),
        });
        let cache = Arc::new(CredentialCache::new(
            src.clone(),
            policy,
            Arc::new(Metrics::new()),
        ));
        (src, cache)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_coalesce_into_one_fetch() {
        let (src, cache) = setup(Duration::from_secs(3600), CachePolicy::default());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let c = cache.clone();
            tasks.push(tokio::spawn(async move { c.get(tenant()).await }));
        }
        let mut keys = std::collections::HashSet::new();
        for t in tasks {
            let served = t.await.unwrap().unwrap();
            assert_eq!(served.cache, CacheStatus::Miss);
            keys.insert(served.credentials.access_key_id.clone());
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        assert_eq!(keys.len(), 1);
        let again = cache.get(tenant()).await.unwrap();
        assert_eq!(again.cache, CacheStatus::Hit);
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refreshes_in_background_inside_the_window() {
        let policy = CachePolicy {
            refresh_before: Duration::from_secs(1000),
            min_remaining: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(1),
        };
        // 900 s lifetime: always inside the 1000 s refresh window, well above the 300 s floor.
        let (src, cache) = setup(Duration::from_secs(900), policy);
        assert_eq!(cache.get(tenant()).await.unwrap().cache, CacheStatus::Miss);
        let hit = cache.get(tenant()).await.unwrap();
        assert_eq!(
            hit.cache,
            CacheStatus::Hit,
            "served from cache while refreshing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            src.calls.load(Ordering::SeqCst),
            2,
            "one background refresh"
        );
        let after = cache.get(tenant()).await.unwrap();
        assert_eq!(
            after.credentials.access_key_id, "ASIA1",
            "refreshed credentials served"
        );
        // The answer body rendered at refresh time is the new credentials', not the old.
        let body: serde_json::Value = serde_json::from_slice(&after.body).unwrap();
        assert_eq!(body["AccessKeyId"], "ASIA1");
        assert_eq!(body["Token"], "t");
    }

    #[tokio::test]
    async fn serves_cached_while_sts_fails_then_refuses_near_expiry() {
        let policy = CachePolicy {
            refresh_before: Duration::from_secs(3600),
            min_remaining: Duration::from_millis(2300),
            retry_after_failure: Duration::from_millis(100),
        };
        let (src, cache) = setup(Duration::from_millis(2600), policy);
        cache.get(tenant()).await.unwrap();
        src.fail.store(true, Ordering::SeqCst);
        let hit = cache.get(tenant()).await.unwrap();
        assert_eq!(hit.credentials.access_key_id, "ASIA0");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Less than min_remaining left: the failing STS is now the answer.
        let err = cache.get(tenant()).await.unwrap_err();
        assert_eq!(err.error.0, "sts down");
        // Once STS is back, the next request (after the retry pause) gets fresh credentials.
        src.fail.store(false, Ordering::SeqCst);
        *src.lifetime.lock().unwrap() = Duration::from_secs(3600);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let fresh = cache.get(tenant()).await.unwrap();
        assert_eq!(fresh.cache, CacheStatus::Miss);
        assert!(fresh.credentials.remaining(SystemTime::now()) > Duration::from_secs(3000));
    }

    #[tokio::test]
    async fn failures_are_not_retried_per_request() {
        let policy = CachePolicy {
            retry_after_failure: Duration::from_secs(60),
            ..CachePolicy::default()
        };
        let (src, cache) = setup(Duration::from_secs(3600), policy);
        src.fail.store(true, Ordering::SeqCst);
        for _ in 0..20 {
            assert!(cache.get(tenant()).await.is_err());
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        cache.invalidate("acme");
        src.fail.store(false, Ordering::SeqCst);
        assert!(cache.get(tenant()).await.is_ok());
        assert_eq!(cache.gauges().len(), 1);
    }
}
