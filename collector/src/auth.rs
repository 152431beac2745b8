//! API tokens: who may write, as which tenant, how fast. With no token configured the collector is
//! open (the laptop default, on loopback); with any, every request must present one.
//!
//! A token is presented as `Authorization: Token <t>` (InfluxDB, Telegraf) or `Bearer <t>`
//! (Prometheus, OTLP exporters), in the HTTP header or the gRPC metadata. Tokens are compared as
//! SHA-256 digests in constant time against every configured token, so neither a token's length nor
//! how much of it matched shows in the time an answer takes.

use std::collections::HashSet;
use std::hash::{BuildHasher as _, RandomState};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use governor::clock::{Clock as _, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq as _;

use proto::v1::Point;

use crate::config::TokenSettings;
use crate::validate::Violation;
use crate::error::{Error, Result};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The tag that names a point's tenant; set by the collector from the token, never by a client.
pub const TENANT_TAG: &str = "tenant";

#[derive(Debug, Clone, Default)]
pub(crate) struct Auth {
    tokens: Arc<Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// Who a request comes from: a tenant, its rate limit and its series budget, or anyone when no token
/// is configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) tenant: Option<Arc<str>>,
    limiter: Option<Arc<Limiter>>,
    series: Option<Arc<SeriesBudget>>,
}

/// The series a tenant has written through this collector, up to its limit. Kept in memory per
/// collector instance: a cardinality guard against a runaway client, not an exact count across a
/// fleet of collectors or restarts.
#[derive(Debug)]
struct SeriesBudget {
    limit: usize,
    seen: Mutex<HashSet<u64>>,
    hasher: RandomState,
}

/// Series a batch added to its tenant's budget, handed back if the batch is not written after all.
#[derive(Debug, Default)]
pub(crate) struct Reserved {
    budget: Option<Arc<SeriesBudget>>,
    added: Vec<u64>,
}

impl Reserved {
    /// Returns the series to the budget: the batch they came with was not written.
    pub(crate) fn release(self) {
        if let Some(budget) = self.budget {
            let mut seen = budget.seen.lock().unwrap_or_else(PoisonError::into_inner);
            for h in self.added {
                seen.remove(&h);
            }
        }
    }
}

impl Auth {
    pub(crate) fn new(tokens: &[TokenSettings]) -> Self {
        let entries = tokens
            .iter()
            .map(|t| Entry {
                digest: sha256(&t.token),
                caller: Caller {
                    tenant: Some(Arc::from(t.tenant.as_str())),
                    limiter: t.points_per_second.and_then(NonZeroU32::new).map(|rate| {
                        let burst = t.burst_points.and_then(NonZeroU32::new).unwrap_or(rate);
                        Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
                    }),
                    series: t.max_series.map(|limit| {
                        Arc::new(SeriesBudget { limit, seen: Mutex::new(HashSet::new()), hasher: RandomState::new() })
                    }),
                },
            })
            .collect();
        Self { tokens: Arc::new(entries) }
    }

    /// The caller presenting `authorization` (the header's or the metadata's value, if any).
    pub(crate) fn check(&self, authorization: Option<&str>) -> Result<Caller> {
        if self.tokens.is_empty() {
            return Ok(Caller::default());
        }
        let presented = authorization
            .and_then(|value| value.strip_prefix("Token ").or_else(|| value.strip_prefix("Bearer ")))
            .map(str::trim)
            .ok_or_else(|| Error::Unauthenticated("an API token is required: send `Authorization: Token <token>` or `Bearer <token>`".into()))?;
        let wanted = sha256(presented);
        // Every entry is compared, whichever matches: the time does not depend on which one did.
        let mut found = None;
        for entry in self.tokens.iter() {
            if bool::from(entry.digest.ct_eq(&wanted)) {
                found = Some(entry);
            }
        }
        found.map(|e| e.caller.clone()).ok_or_else(|| Error::Unauthenticated("the API token is not valid".into()))
    }
}

impl Caller {
    /// Admits the series of `points` into the tenant's budget; a point whose series would pass the limit
    /// is a violation. The series added come back as `Reserved`, to release if the batch is not written.
    pub(crate) fn admit_series(&self, points: &[Point]) -> (Reserved, Vec<Violation>) {
        let Some(budget) = &self.series else { return (Reserved::default(), Vec::new()) };
        let mut seen = budget.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reserved = Reserved { budget: Some(Arc::clone(budget)), added: Vec::new() };
        let mut violations = Vec::new();
        for (index, point) in points.iter().enumerate() {
            let key = point.series_key();
            let h = budget.hasher.hash_one(&key);
            if seen.contains(&h) {
                continue;
            }
            if seen.len() < budget.limit {
                seen.insert(h);
                reserved.added.push(h);
            } else {
                violations.push(Violation {
                    index: Some(index),
                    line: None,
                    field: String::new(),
                    reason: format!(
                        "{key} would be a new series of tenant {:?}, which has its limit of {} series",
                        self.tenant.as_deref().unwrap_or_default(),
                        budget.limit
                    ),
                });
            }
        }
        (reserved, violations)
    }

    /// Takes `points` from the caller's rate; refuses the whole request when they do not fit now.
    pub(crate) fn take(&self, points: usize) -> Result<()> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let tenant = self.tenant.as_deref().unwrap_or_default().to_owned();
        let Some(n) = u32::try_from(points).ok().and_then(NonZeroU32::new) else { return Ok(()) };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(Error::RateLimited { tenant, points, retry_after: wait.max(Duration::from_secs(1)) })
            }
            // More points than the burst allows at all: the request must be split.
            Err(_) => Err(Error::OverBurst { tenant, points }),
        }
    }
}

fn sha256(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(token: &str, tenant: &str, rate: Option<u32>) -> TokenSettings {
        TokenSettings { token: token.into(), tenant: tenant.into(), points_per_second: rate, burst_points: None, max_series: None }
    }

    #[test]
    fn open_without_tokens_closed_with_them() {
        assert!(Auth::new(&[]).check(None).unwrap().tenant.is_none());
        let auth = Auth::new(&[token("s3cret-a", "a", None), token("s3cret-b", "b", None)]);
        assert_eq!(auth.check(Some("Token s3cret-a")).unwrap().tenant.as_deref(), Some("a"));
        assert_eq!(auth.check(Some("Bearer s3cret-b")).unwrap().tenant.as_deref(), Some("b"));
        for bad in [None, Some("s3cret-a"), Some("Token s3cret-"), Some("Token s3cret-a2"), Some("Basic czNjcmV0LWE="), Some("Token ")] {
            assert!(matches!(auth.check(bad), Err(Error::Unauthenticated(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_rate_limit_refuses_past_the_burst_and_says_when_to_retry() {
        let auth = Auth::new(&[TokenSettings { token: "t".into(), tenant: "a".into(), points_per_second: Some(10), burst_points: Some(20), max_series: None }]);
        let caller = auth.check(Some("Token t")).unwrap();
        caller.take(15).unwrap();
        match caller.take(10) {
            Err(Error::RateLimited { tenant, points: 10, retry_after }) => {
                assert_eq!(tenant, "a");
                assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(matches!(caller.take(21), Err(Error::OverBurst { points: 21, .. })), "more than the burst never fits");
    }

    #[test]
    fn a_series_budget_admits_known_series_and_refuses_new_ones_past_the_limit() {
        let auth = Auth::new(&[TokenSettings { token: "t".into(), tenant: "a".into(), points_per_second: None, burst_points: None, max_series: Some(2) }]);
        let caller = auth.check(Some("Token t")).unwrap();
        let p = |m: &str| Point { metric: m.into(), ..Point::default() };
        let (first, refused) = caller.admit_series(&[p("x"), p("x"), p("y")]);
        assert!(refused.is_empty());
        let (_, refused) = caller.admit_series(&[p("y"), p("z"), p("x")]);
        let indices: Vec<Option<usize>> = refused.iter().map(|v| v.index).collect();
        assert_eq!(indices, vec![Some(1)], "only z is new, and past the limit");
        assert!(refused[0].reason.starts_with("z{} would be a new series of tenant \"a\""), "{}", refused[0].reason);
        first.release();
        let (_, refused) = caller.admit_series(&[p("z")]);
        assert!(refused.is_empty(), "released series make room again");
    }
}
