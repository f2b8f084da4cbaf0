//! Cross-replica invalidation: two teamgate processes share PostgreSQL and Redis. A member is
//! removed on replica A while replica B has them cached; B is polled until it denies. Then,
//! with other members, B is asked once with `at_least_as_fresh` set to A's token, which must
//! never allow.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use teamgate::proto::teamgate::v1 as pb;
use tonic::metadata::MetadataValue;

use crate::load::{ACTOR_HEADER, Conn, Summary, new_histogram};
use crate::scenarios::{PERMISSIONS, at_least_as_fresh, minimize_latency};
use crate::seed::Dataset;

#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    pub iterations: usize,
    /// Iterations in which B did not deny within the poll timeout.
    pub timed_out: usize,
    pub poll_timeout_ms: u64,
    /// From RemoveMember returning on A to B's first deny.
    pub after_return: Summary,
    /// From RemoveMember being sent to A to B's first deny.
    pub after_send: Summary,
    /// RemoveMember's own latency on A.
    pub remove: Summary,
    /// Allowed answers from B (minimize_latency) after the removal had returned on A, before
    /// B denied: the pub/sub window.
    pub stale_minimize_latency_answers: u64,
    /// Checks on B with at_least_as_fresh = A's consistency_token, right after each removal.
    pub fresh_checks: usize,
    /// Of those, how many allowed the removed member: must be zero.
    pub fresh_stale_answers: usize,
    pub fresh_check: Summary,
}

fn check(org: &str, user: &str, consistency: Option<pb::Consistency>) -> pb::CheckRequest {
    pb::CheckRequest {
        org_id: org.to_owned(),
        user_id: user.to_owned(),
        permission: PERMISSIONS[0].to_owned(),
        consistency,
    }
}

/// Asks B twice, so the member is cached there (in process and in Redis), and expects allow.
async fn cache_on(b: &mut Conn, org: &str, user: &str) -> anyhow::Result<()> {
    for _ in 0..2 {
        let allowed = b
            .authz
            .check(check(org, user, minimize_latency()))
            .await
            .context("Check on replica B")?
            .into_inner()
            .allowed;
        anyhow::ensure!(
            allowed,
            "replica B denied {user} in {org} before the removal"
        );
    }
    Ok(())
}

async fn remove(a: &mut Conn, org: &str, user: &str, owner: &str) -> anyhow::Result<String> {
    let mut req = tonic::Request::new(pb::RemoveMemberRequest {
        org_id: org.to_owned(),
        user_id: user.to_owned(),
    });
    req.metadata_mut()
        .insert(ACTOR_HEADER, MetadataValue::try_from(owner)?);
    Ok(a.team
        .remove_member(req)
        .await
        .context("RemoveMember on replica A")?
        .into_inner()
        .consistency_token)
}

fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

pub async fn run(
    a: &mut Conn,
    b: &mut Conn,
    ds: &Dataset,
    iterations: usize,
    poll_timeout: Duration,
) -> anyhow::Result<LagReport> {
    anyhow::ensure!(
        ds.extras.len() >= 2 * iterations,
        "the data set has {} extra members; the lag test needs {}",
        ds.extras.len(),
        2 * iterations
    );
    let mut after_return = new_histogram()?;
    let mut after_send = new_histogram()?;
    let mut remove_latency = new_histogram()?;
    let mut fresh_latency = new_histogram()?;
    let mut timed_out = 0;
    let mut stale_polls = 0u64;
    let started = Instant::now();
    for i in 0..iterations {
        let extra = ds.extras[2 * i];
        let (org, user, owner) = (
            ds.orgs[extra.org].to_string(),
            extra.user.to_string(),
            ds.owner(extra.org).to_string(),
        );
        cache_on(b, &org, &user).await?;
        let sent = Instant::now();
        remove(a, &org, &user, &owner).await?;
        let returned = Instant::now();
        record(&mut remove_latency, returned - sent);
        loop {
            let allowed = b
                .authz
                .check(check(&org, &user, minimize_latency()))
                .await
                .context("polling Check on replica B")?
                .into_inner()
                .allowed;
            let now = Instant::now();
            if !allowed {
                record(&mut after_return, now - returned);
                record(&mut after_send, now - sent);
                break;
            }
            stale_polls += 1;
            if now - returned > poll_timeout {
                timed_out += 1;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lag_time = started.elapsed();

    let mut fresh_stale = 0;
    let started = Instant::now();
    for i in 0..iterations {
        let extra = ds.extras[2 * i + 1];
        let (org, user, owner) = (
            ds.orgs[extra.org].to_string(),
            extra.user.to_string(),
            ds.owner(extra.org).to_string(),
        );
        cache_on(b, &org, &user).await?;
        let token = remove(a, &org, &user, &owner).await?;
        let sent = Instant::now();
        let allowed = b
            .authz
            .check(check(&org, &user, at_least_as_fresh(&token)))
            .await
            .context("Check with at_least_as_fresh on replica B")?
            .into_inner()
            .allowed;
        record(&mut fresh_latency, sent.elapsed());
        if allowed {
            fresh_stale += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fresh_time = started.elapsed();
    Ok(LagReport {
        iterations,
        timed_out,
        poll_timeout_ms: u64::try_from(poll_timeout.as_millis()).unwrap_or(u64::MAX),
        after_return: Summary::of(&after_return, 0, lag_time),
        after_send: Summary::of(&after_send, 0, lag_time),
        remove: Summary::of(&remove_latency, 0, lag_time),
        stale_minimize_latency_answers: stale_polls,
        fresh_checks: iterations,
        fresh_stale_answers: fresh_stale,
        fresh_check: Summary::of(&fresh_latency, 0, fresh_time),
    })
}
