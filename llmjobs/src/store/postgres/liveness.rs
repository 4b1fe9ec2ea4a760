//! Owner liveness by session advisory locks.
//!
//! Each worker takes the advisory lock of its owner id on a connection of its own and keeps
//! that connection open for as long as it lives. PostgreSQL releases a session's locks when the
//! session ends, however the worker died (SIGKILL, a lost machine, a cut network once the
//! server notices), so a worker that can take another owner's lock knows at once that the
//! owner is gone, on any machine.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use super::locks;
use crate::{Error, Result};

/// This worker's liveness lock: the owner it is for, and the connection that holds it.
pub(super) struct OwnerHold {
    options: PgConnectOptions,
    held: Mutex<Option<(String, PgConnection)>>,
}

impl OwnerHold {
    pub(super) fn new(options: PgConnectOptions) -> Self {
        OwnerHold {
            options,
            held: Mutex::new(None),
        }
    }

    /// Makes sure the lock of `owner` is held: checks that its connection still lives, and
    /// takes it (again) on a new connection if not.
    pub(super) async fn hold(&self, owner: &str) -> Result<()> {
        let mut held = self.held.lock().await;
        if let Some((holder, conn)) = held.as_mut()
            && holder == owner
        {
            match conn.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        %owner,
                        "the connection holding this worker's liveness lock was lost; taking \
                         the lock again"
                    );
                }
            }
        }
        if let Some((_, conn)) = held.take() {
            let _ = conn.close().await;
        }
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
        *held = Some((owner.to_string(), conn));
        Ok(())
    }

    /// Lets the lock go (the worker stops).
    pub(super) async fn release(&self) {
        if let Some((_, conn)) = self.held.lock().await.take() {
            let _ = conn.close().await;
        }
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
