//! The embedded schema migrations, in llmjobs' own schema, and the table that records which ran.
//!
//! The rules are the SQLite backend's: each migration runs in the same transaction as its
//! record; a schema migrated by a newer build, a migration that failed part-way, or one whose
//! text changed since it ran is refused, changing nothing. Processes that migrate at once take
//! turns on a session advisory lock, so the second finds the first's migrations applied.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::locks;
use crate::{Error, Result};

/// A migration: its version, a description, and its SQL.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in version order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "create jobs",
        sql: include_str!("../../../migrations/postgres/0001_create_jobs.sql"),
    },
    Migration {
        version: 2,
        description: "schedules",
        sql: include_str!("../../../migrations/postgres/0002_schedules.sql"),
    },
    Migration {
        version: 3,
        description: "functions find their schema",
        sql: include_str!("../../../migrations/postgres/0003_functions_find_their_schema.sql"),
    },
    Migration {
        version: 4,
        description: "attempt errors",
        sql: include_str!("../../../migrations/postgres/0004_attempt_errors.sql"),
    },
    Migration {
        version: 5,
        description: "shared rate limits",
        sql: include_str!("../../../migrations/postgres/0005_shared_rate_limits.sql"),
    },
    Migration {
        version: 6,
        description: "usage ledger and completion cache",
        sql: include_str!(
            "../../../migrations/postgres/0006_usage_ledger_and_completion_cache.sql"
        ),
    },
    Migration {
        version: 7,
        description: "counters split into slots",
        sql: include_str!("../../../migrations/postgres/0007_counters_split_into_slots.sql"),
    },
    Migration {
        version: 8,
        description: "budget reservations",
        sql: include_str!("../../../migrations/postgres/0008_budget_reservations.sql"),
    },
];

/// The newest migration this build knows.
pub(super) fn newest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// FNV-1a, 64 bits: enough to notice that a migration's text changed after it ran.
fn checksum(sql: &str) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.to_be_bytes()
}

fn migrate_error(e: sqlx::Error) -> Error {
    Error::Migrate(e.to_string())
}

/// Creates `schema` if needed and applies every migration it lacks, on a connection of its own
/// that holds the migration lock meanwhile.
pub(super) async fn run(options: &PgConnectOptions, schema: &str) -> Result<()> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|e| Error::Open {
            url: format!("postgres (schema {schema})"),
            source: Box::new(e),
        })?;
    let lock = locks::key("llmjobs.migrate", "");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut conn)
        .await
        .map_err(migrate_error)?;
    let result = migrate(&mut conn, schema).await;
    // Closing the session releases the lock too; unlocking first lets the next process go on
    // without waiting for the connection to close.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *conn)
            .await
            .map_err(migrate_error)?;
    if !exists {
        // The name was checked when the URL was parsed: lowercase letters, digits and `_`.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut *conn)
            .await
            .map_err(migrate_error)?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS llmjobs_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
            success BOOLEAN NOT NULL,
            checksum BYTEA NOT NULL,
            execution_time BIGINT NOT NULL
        )",
    )
    .execute(&mut *conn)
    .await
    .map_err(migrate_error)?;
    let applied: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(
        "SELECT version, success, checksum FROM llmjobs_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(migrate_error)?;
    check(&applied)?;
    for migration in MIGRATIONS {
        if applied.iter().any(|(v, _, _)| *v == migration.version) {
            continue;
        }
        apply(conn, migration).await.map_err(|e| {
            Error::Migrate(format!(
                "migration {} ({}): {e}",
                migration.version, migration.description
            ))
        })?;
    }
    Ok(())
}

/// Refuses a schema this build must not touch.
fn check(applied: &[(i64, bool, Vec<u8>)]) -> Result<()> {
    let newest = MIGRATIONS.last().map_or(0, |m| m.version);
    for (version, success, recorded) in applied {
        if *version > newest {
            return Err(Error::Migrate(format!(
                "the database was migrated to version {version} by a newer llmjobs; this build \
                 knows versions up to {newest}"
            )));
        }
        if !success {
            return Err(Error::Migrate(format!(
                "migration {version} failed part-way earlier; restore the database from a backup"
            )));
        }
        if let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version)
            && recorded.as_slice() != checksum(m.sql)
        {
            return Err(Error::Migrate(format!(
                "migration {version} ({}) was changed after it was applied",
                m.description
            )));
        }
    }
    Ok(())
}

async fn apply(conn: &mut PgConnection, migration: &Migration) -> sqlx::Result<()> {
    let started = std::time::Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(migration.sql).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO llmjobs_migrations (version, description, success, checksum, \
         execution_time) VALUES ($1, $2, true, $3, $4)",
    )
    .bind(migration.version)
    .bind(migration.description)
    .bind(checksum(migration.sql).as_slice())
    .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
