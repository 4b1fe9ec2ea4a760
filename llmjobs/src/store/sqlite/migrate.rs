//! The embedded schema migrations and the table that records which ran.
//!
//! The record lives in `llmjobs_migrations`, apart from the host application's own migration
//! tables, with the columns sqlx's migrator uses (databases created by earlier llmjobs builds,
//! which migrated through sqlx, are read as they are). Each migration runs in the same
//! transaction as its record, so a crash leaves either both or neither.

use rusqlite::{Connection, OptionalExtension};

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
        sql: include_str!("../../../migrations/sqlite/0001_create_jobs.sql"),
    },
    Migration {
        version: 2,
        description: "counters and read indexes",
        sql: include_str!("../../../migrations/sqlite/0002_counters_and_read_indexes.sql"),
    },
    Migration {
        version: 3,
        description: "idempotency and retry history",
        sql: include_str!("../../../migrations/sqlite/0003_idempotency_and_retry_history.sql"),
    },
    Migration {
        version: 4,
        description: "schedules",
        sql: include_str!("../../../migrations/sqlite/0004_schedules.sql"),
    },
    Migration {
        version: 5,
        description: "counters kept by the writer",
        sql: include_str!("../../../migrations/sqlite/0005_counters_kept_by_the_writer.sql"),
    },
    Migration {
        version: 6,
        description: "attempt errors",
        sql: include_str!("../../../migrations/sqlite/0006_attempt_errors.sql"),
    },
    Migration {
        version: 7,
        description: "shared rate limits",
        sql: include_str!("../../../migrations/sqlite/0007_shared_rate_limits.sql"),
    },
    Migration {
        version: 8,
        description: "usage ledger and completion cache",
        sql: include_str!("../../../migrations/sqlite/0008_usage_ledger_and_completion_cache.sql"),
    },
    Migration {
        version: 9,
        description: "budget reservations",
        sql: include_str!("../../../migrations/sqlite/0009_budget_reservations.sql"),
    },
    Migration {
        version: 10,
        description: "running jobs through the status index",
        sql: include_str!(
            "../../../migrations/sqlite/0010_running_jobs_through_the_status_index.sql"
        ),
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

/// Applies every migration the database lacks. Fails, changing nothing, when the database was
/// migrated by a newer llmjobs, when an earlier migration failed half-way, or when a migration
/// this build recorded has changed since.
pub(super) fn run(conn: &Connection) -> Result<()> {
    let migrate_error = |e: rusqlite::Error| Error::Migrate(e.to_string());
    // A new database gives the space of pruned jobs back to the file system, a chunk at a time
    // (`PRAGMA incremental_vacuum`). SQLite takes this setting only on an empty database, and
    // only once it is rebuilt, which costs nothing while it is empty.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(migrate_error)?;
    if tables == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM")
            .map_err(migrate_error)?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS llmjobs_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        )",
    )
    .map_err(migrate_error)?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.version);
    let applied: Vec<(i64, bool, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT version, success, checksum FROM llmjobs_migrations ORDER BY version")
            .map_err(migrate_error)?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .and_then(Iterator::collect)
            .map_err(migrate_error)?
    };
    for (version, success, recorded) in &applied {
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
        let ours = MIGRATIONS.iter().find(|m| m.version == *version);
        // An 8-byte checksum is ours; sqlx's (48 bytes) cannot be recomputed here.
        if let Some(m) = ours
            && recorded.len() == 8
            && recorded.as_slice() != checksum(m.sql)
        {
            return Err(Error::Migrate(format!(
                "migration {version} ({}) was changed after it was applied",
                m.description
            )));
        }
    }
    for migration in MIGRATIONS {
        if applied.iter().any(|(v, _, _)| *v == migration.version) {
            continue;
        }
        apply(conn, migration).map_err(|e| {
            Error::Migrate(format!(
                "migration {} ({}): {e}",
                migration.version, migration.description
            ))
        })?;
    }
    Ok(())
}

fn apply(conn: &Connection, migration: &Migration) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        // Another process may have applied it while this one waited for the write lock.
        let done: Option<i64> = conn
            .query_row(
                "SELECT version FROM llmjobs_migrations WHERE version = ?",
                [migration.version],
                |row| row.get(0),
            )
            .optional()?;
        if done.is_some() {
            return Ok(());
        }
        conn.execute_batch(migration.sql)?;
        conn.execute(
            "INSERT INTO llmjobs_migrations (version, description, success, checksum, \
             execution_time) VALUES (?, ?, 1, ?, ?)",
            rusqlite::params![
                migration.version,
                migration.description,
                checksum(migration.sql).as_slice(),
                i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX),
            ],
        )?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_database_gives_freed_space_back_incrementally() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("jobs.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        run(&conn).unwrap();
        let mode: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, 2, "incremental");
    }

    #[test]
    fn counters_start_from_the_rows_of_a_database_made_before_them() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE llmjobs_migrations (version BIGINT PRIMARY KEY, description TEXT \
             NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success \
             BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
        )
        .unwrap();
        apply(&conn, &MIGRATIONS[0]).unwrap();
        for (name, status, key) in [
            ("a", "completed", None),
            ("a", "completed", None),
            ("b", "running", Some("gpt")),
            ("b", "pending", Some("gpt")),
        ] {
            conn.execute(
                "INSERT INTO llmjobs_jobs (id, name, status, args, concurrency_key, run_at, \
                 created_at) VALUES (lower(hex(randomblob(16))), ?, ?, '{}', ?, 0, 0)",
                rusqlite::params![name, status, key],
            )
            .unwrap();
        }
        run(&conn).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT n FROM llmjobs_counts WHERE name = 'a' AND status = 'completed'"),
            2
        );
        assert_eq!(
            count("SELECT n FROM llmjobs_counts WHERE name = 'b' AND status = 'running'"),
            1
        );
        assert_eq!(
            count("SELECT n FROM llmjobs_running_keys WHERE concurrency_key = 'gpt'"),
            1
        );
        // The writer keeps them from then on (writer::tally); no trigger is left behind.
        assert_eq!(
            count("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"),
            0
        );
    }

    #[test]
    fn a_new_database_is_migrated_once_and_recorded() {
        let conn = Connection::open_in_memory().unwrap();
        run(&conn).unwrap();
        run(&conn).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM llmjobs_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, MIGRATIONS.len() as i64);
        let jobs: i64 = conn
            .query_row("SELECT count(*) FROM llmjobs_jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 0);
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        run(&conn).unwrap();
        conn.execute(
            "INSERT INTO llmjobs_migrations (version, description, success, checksum, \
             execution_time) VALUES (99, 'future', 1, x'00', 0)",
            [],
        )
        .unwrap();
        let err = run(&conn).unwrap_err().to_string();
        assert!(err.contains("version 99 by a newer llmjobs"), "{err}");
    }

    #[test]
    fn a_changed_migration_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        run(&conn).unwrap();
        conn.execute(
            "UPDATE llmjobs_migrations SET checksum = x'0000000000000000' WHERE version = 1",
            [],
        )
        .unwrap();
        let err = run(&conn).unwrap_err().to_string();
        assert!(err.contains("was changed after it was applied"), "{err}");
    }
}
