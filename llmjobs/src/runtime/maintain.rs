//! The maintenance loop: lease renewal, cancellations requested elsewhere, and the recovery of
//! dead owners' jobs.

use std::sync::Weak;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::Result;
use crate::owner::{self, Liveness};
use crate::status::now_ms;
use crate::store::Release;

/// Every `period`, the runtime while it lives: `None` once it stopped or was dropped. A tick
/// missed while the caller worked is not made up.
struct Ticks {
    shared: Weak<Shared>,
    stopped: CancellationToken,
    interval: tokio::time::Interval,
}

impl Ticks {
    fn new(shared: Weak<Shared>, stopped: CancellationToken, period: Duration) -> Ticks {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks {
            shared,
            stopped,
            interval,
        }
    }

    async fn next(&mut self) -> Option<std::sync::Arc<Shared>> {
        tokio::select! {
            _ = self.interval.tick() => self.shared.upgrade(),
            _ = self.stopped.cancelled() => None,
        }
    }
}

/// Renews leases, stops jobs whose cancellation was requested from another process, and hands
/// back the jobs of dead owners.
pub(super) async fn maintain(shared: Weak<Shared>, stopped: CancellationToken) {
    let mut ticks = Ticks::new(shared, stopped, Duration::from_millis(250));
    let mut last_heartbeat = tokio::time::Instant::now();
    let mut last_owner_scan: Option<tokio::time::Instant> = None;
    let mut last_cancel_read = tokio::time::Instant::now();
    while let Some(shared) = ticks.next().await {
        if let Some(cause) = shared.store.failure() {
            shared.give_up(&cause);
            return;
        }
        let now = tokio::time::Instant::now();
        if shared.running_count() > 0 {
            if now - last_heartbeat >= shared.settings.lease / 3 {
                last_heartbeat = now;
                let lease_until = now_ms() + shared.settings.lease.as_millis() as i64;
                if let Err(e) = shared
                    .store
                    .heartbeat(shared.owner.clone(), lease_until)
                    .await
                {
                    tracing::warn!(error = %e, "renewing leases failed");
                }
            }
            // A store that sends hints (PostgreSQL's NOTIFY) brings cancel requests from other
            // processes at once (see `hints.rs`); reading them at the poll interval, as idle
            // workers look for jobs, is then only the safety net for a lost hint. Otherwise
            // they are read on every tick.
            if !shared.is_hinted() || now - last_cancel_read >= shared.settings.poll_interval {
                last_cancel_read = now;
                shared.read_cancel_requests().await;
            }
        }
        if last_owner_scan.is_none_or(|t| now - t >= Duration::from_secs(1))
            && !shared.is_stopping()
        {
            last_owner_scan = Some(now);
            if let Err(e) = recover_orphans(&shared).await {
                tracing::warn!(error = %e, "looking for orphaned jobs failed");
            }
        }
    }
}

impl Shared {
    /// Stops the jobs of this worker whose cancellation was requested (from another process).
    pub(super) async fn read_cancel_requests(&self) {
        match self.store.cancel_requests(self.owner.clone()).await {
            Ok(ids) => {
                for id in ids {
                    self.cancel_local(id);
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading cancel requests failed"),
        }
    }
}

/// How often automatic retention looks for finished jobs to prune, at most.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Prunes finished jobs older than `retention`, at start and then every minute (or every
/// tenth of the retention, if that is shorter). Runs beside the maintenance loop, so a long
/// prune never delays lease renewals; the prune itself deletes in short chunks.
pub(super) async fn retain(shared: Weak<Shared>, stopped: CancellationToken, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_millis(100), RETENTION_EVERY);
    let mut ticks = Ticks::new(shared, stopped, every);
    while let Some(shared) = ticks.next().await {
        let before = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match shared.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, ?retention, "pruned finished jobs"),
            Err(crate::Error::Shutdown) => return,
            Err(e) => {
                tracing::warn!(error = %e, "pruning finished jobs failed; trying again later")
            }
        }
    }
}

/// Hands back the running jobs of owners that are dead: at once for owners on this machine
/// (their lock is free), after their lease for the others. A live owner's jobs are never
/// touched, nor this worker's own.
pub(crate) async fn recover_orphans(shared: &Shared) -> Result<u64> {
    // This worker's own liveness lock, where the store keeps one: held before it runs anything,
    // and taken again if its connection was lost. Without it, this worker cannot prove that
    // the jobs it runs are still its own (another may have found the lock free and taken
    // them): it stops them.
    match shared.store.hold_owner(&shared.owner).await {
        Ok(true) => {}
        Ok(false) => shared.stop_unproven_jobs(),
        Err(e) => {
            shared.stop_unproven_jobs();
            return Err(e);
        }
    }
    let owners = shared.store.running_owners(shared.owner.clone()).await?;
    let mut recovered = 0;
    let mut judged_by_lease = Vec::new();
    for owner in owners {
        // A store that can tell liveness itself (PostgreSQL's advisory locks) is asked first.
        if let Some(alive) = shared.store.owner_liveness(&owner).await? {
            if !alive {
                let n = shared
                    .store
                    .release_owner(owner.clone(), Release::Dead)
                    .await?;
                if n > 0 {
                    tracing::info!(%owner, jobs = n, "resuming the jobs of a dead worker");
                }
                recovered += n;
            }
            continue;
        }
        let liveness = match &shared.db_path {
            Some(path) => owner::probe(path, &owner),
            None => Liveness::Unknown,
        };
        match liveness {
            Liveness::Alive => {}
            Liveness::Dead(lock) => {
                let n = shared
                    .store
                    .release_owner(owner.clone(), Release::Dead)
                    .await?;
                lock.forget();
                if n > 0 {
                    tracing::info!(%owner, jobs = n, "resuming the jobs of a dead worker");
                }
                recovered += n;
            }
            Liveness::Unknown => judged_by_lease.push(owner),
        }
    }
    if !judged_by_lease.is_empty() {
        let n = shared
            .store
            .release_expired(judged_by_lease, now_ms())
            .await?;
        if n > 0 {
            tracing::info!(jobs = n, "resuming jobs whose worker's lease expired");
        }
        recovered += n;
    }
    if recovered > 0 {
        shared.wake_dispatcher();
    }
    Ok(recovered)
}
