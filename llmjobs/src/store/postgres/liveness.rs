//! Owner liveness by session advisory locks.
//!
//! Each worker takes the advisory lock of its owner id on a connection of its own and keeps
//! that connection open for as long as it lives. PostgreSQL releases a session's locks when the
//! session ends, however the worker died (SIGKILL, a lost machine, a cut network once the
//! server notices), so a worker that can take another owner's lock knows at once that the
//! owner is gone, on any machine.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use super::locks;
use crate::{Error, Result};

/// This worker's liveness lock: the owner it is for, and the connection that holds it.
pub(super) struct OwnerHold {
    options: PgConnectOptions,
    held: Mutex<Hold>,
}

#[derive(Default)]
struct Hold {
    conn: Option<(String, PgConnection)>,
    /// No new connection is tried before this (back-off after failures).
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The longest wait between two tries to take the lock again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long one try to connect and take the lock may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl OwnerHold {
    pub(super) fn new(options: PgConnectOptions) -> Self {
        OwnerHold {
            options,
            held: Mutex::new(Hold::default()),
        }
    }

    /// Makes sure the lock of `owner` is held: checks that its connection still lives, and
    /// takes it (again) on a new connection if not, with back-off after failures. `Ok(false)`
    /// when a lock held before had been lost and is held again now; an error while it is not.
    pub(super) async fn hold(&self, owner: &str) -> Result<bool> {
        let mut held = self.held.lock().await;
        let mut lost = false;
        if let Some((holder, conn)) = held.conn.as_mut()
            && holder == owner
        {
            match conn.ping().await {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        %owner,
                        "the connection holding this worker's liveness lock was lost"
                    );
                    lost = true;
                }
            }
        }
        if let Some((_, conn)) = held.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        }
        if held.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(Error::Database(
                format!("the liveness lock of worker `{owner}` is not held; reconnecting").into(),
            ));
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.take(owner)).await {
            Ok(Ok(conn)) => {
                if held.retry_at.is_some() {
                    tracing::info!(%owner, "this worker's liveness lock is held again");
                }
                held.conn = Some((owner.to_string(), conn));
                held.retry_at = None;
                held.backoff = Duration::ZERO;
                Ok(!lost)
            }
            Ok(Err(e)) => Err(held.failed(e)),
            Err(_) => Err(held.failed(Error::Database(
                format!("taking the liveness lock took more than {CONNECT_TIMEOUT:?}").into(),
            ))),
        }
    }

    async fn take(&self, owner: &str) -> Result<PgConnection> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let (taken,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(locks::owner(owner))
            .fetch_one(&mut conn)
            .await?;
        if !taken {
            return Err(Error::Database(
                format!("the liveness lock of worker `{owner}` is held by another session").into(),
            ));
        }
        Ok(conn)
    }

    /// Lets the lock go (the worker stops).
    pub(super) async fn release(&self) {
        if let Some((_, conn)) = self.held.lock().await.conn.take() {
            let _ = conn.close().await;
        }
    }
}

impl Hold {
    /// Schedules the next try after a failed one.
    fn failed(&mut self, e: Error) -> Error {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + self.backoff);
        e
    }
}

/// Whether `owner` is alive: its session holds its lock. Takes the lock and lets it go at once
/// when it is free, on one pooled connection.
pub(super) async fn is_alive(pool: &PgPool, owner: &str) -> Result<bool> {
    let (was_free,): (bool,) = sqlx::query_as(
        "SELECT CASE WHEN pg_try_advisory_lock($1) THEN pg_advisory_unlock($1) ELSE false END",
    )
    .bind(locks::owner(owner))
    .fetch_one(pool)
    .await?;
    Ok(!was_free)
}
