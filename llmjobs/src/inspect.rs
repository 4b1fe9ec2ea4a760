//! Reading a job database without running it: for dashboards, the `llmjobs` command and
//! anything else that only looks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::status::{JobCounts, JobFilter, JobStatus, from_ms};
use crate::store::JobRow;
use crate::{Error, JobId, Result};

/// A read-only view of a job database: statuses, listings, counts, a job's arguments, result and
/// step journal, and the schema version.
///
/// Unlike [`Jobs`](crate::Jobs), opening an `Inspector` starts no runtime, migrates nothing,
/// recovers no job and takes no lock: on SQLite it reads through read-only connections (which
/// never block the application's writers, nor create the file), on PostgreSQL through plain
/// reads. It refuses a database whose schema is not the one this build reads (see
/// [`Inspector::schema_of`] to ask which it is without opening).
///
/// ```no_run
/// # async fn demo() -> llmjobs::Result<()> {
/// use llmjobs::{Inspector, JobFilter, JobState};
/// let db = Inspector::open("sqlite://jobs.db").await?;
/// for job in db.list(JobFilter::new().state(JobState::Failed)).await? {
///     let steps = db.steps(job.id).await?;
///     println!("{} {} {:?} ({} steps)", job.id, job.name, job.error, steps.len());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Inspector {
    reader: Arc<dyn Reader>,
    schema: SchemaInfo,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Where a database's schema stands, next to what this build of llmjobs reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SchemaInfo {
    /// `"sqlite"` or `"postgres"`.
    pub backend: &'static str,
    /// The newest migration applied to the database; `None` when it has no llmjobs tables.
    pub version: Option<i64>,
    /// The newest migration this build knows.
    pub supported: i64,
    /// What that means for this build.
    pub compatibility: Compatibility,
}

/// Whether this build of llmjobs can use a database, by its schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Compatibility {
    /// The schema is the one this build uses.
    Current,
    /// An older schema: opening it with [`Jobs`](crate::Jobs) of this build migrates it.
    Older,
    /// Migrated by a newer llmjobs: this build must not use it.
    Newer,
    /// No llmjobs tables (a new or foreign database): opening it with `Jobs` creates them.
    Uninitialized,
    /// A migration failed part-way earlier: restore the database from a backup.
    Failed,
}

impl SchemaInfo {
    fn new(backend: &'static str, version: Option<i64>, failed: bool, supported: i64) -> Self {
        let compatibility = match version {
            _ if failed => Compatibility::Failed,
            None => Compatibility::Uninitialized,
            Some(v) if v > supported => Compatibility::Newer,
            Some(v) if v < supported => Compatibility::Older,
            Some(_) => Compatibility::Current,
        };
        SchemaInfo {
            backend,
            version,
            supported,
            compatibility,
        }
    }

    /// Whether this build can read and write the database as it is.
    pub fn is_usable(&self) -> bool {
        self.compatibility == Compatibility::Current
    }

    /// Why the database cannot be read as it is, if it cannot.
    fn refusal(&self, url: &str) -> Option<Error> {
        let version = self.version.unwrap_or(0);
        let supported = self.supported;
        let reason = match self.compatibility {
            Compatibility::Current => return None,
            Compatibility::Newer => format!(
                "the database was migrated to version {version} by a newer llmjobs; this build \
                 knows versions up to {supported}: use a newer llmjobs"
            ),
            Compatibility::Older => format!(
                "the database is at schema version {version}; this build reads version \
                 {supported}: open it once with this version of llmjobs (or run `llmjobs \
                 migrate`) to upgrade it"
            ),
            Compatibility::Failed => {
                "a migration failed part-way earlier; restore the database from a backup".into()
            }
            Compatibility::Uninitialized => {
                return Some(Error::Open {
                    url: url.to_string(),
                    source: "it is not an llmjobs database (it has no llmjobs tables)".into(),
                });
            }
        };
        Some(Error::Migrate(reason))
    }
}

/// A job with what [`JobStatus`] leaves out: its arguments and its result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// The job's status.
    #[serde(flatten)]
    pub status: JobStatus,
    /// The call's arguments, as stored (JSON; a string if what is stored is not JSON).
    pub args: serde_json::Value,
    /// The output of a completed job, as stored.
    pub result: Option<serde_json::Value>,
}

/// One entry of a job's step journal (see [`JobContext::step`](crate::JobContext::step)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StepInfo {
    /// Its place in the journal: 0 for the job's first step.
    pub position: u32,
    /// The name the job gave it.
    pub name: String,
    /// The size of its stored output, in bytes.
    pub size: u64,
    /// When its output was journaled.
    pub recorded_at: SystemTime,
}

/// A job row with its arguments, as a reader reads it.
pub(crate) struct RowWithArgs {
    pub(crate) row: JobRow,
    pub(crate) args: String,
}

/// A journal entry, as a reader reads it.
pub(crate) struct StepRow {
    pub(crate) seq: u32,
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) created_at: i64,
}

/// The applied migrations, as a reader reads them.
pub(crate) struct SchemaRow {
    /// The newest applied; `None`: no migration table.
    pub(crate) version: Option<i64>,
    /// Whether one of them failed part-way.
    pub(crate) failed: bool,
}

/// The reads a backend serves without a runtime.
#[async_trait::async_trait]
pub(crate) trait Reader: Send + Sync + 'static {
    fn backend(&self) -> &'static str;
    /// The newest migration this build knows for the backend.
    fn supported(&self) -> i64;
    async fn schema(&self) -> Result<SchemaRow>;
    async fn get(&self, id: JobId) -> Result<Option<RowWithArgs>>;
    async fn list(&self, filter: JobFilter) -> Result<Vec<RowWithArgs>>;
    async fn counts(&self) -> Result<Vec<(String, String, u64)>>;
    async fn steps(&self, id: JobId) -> Result<Vec<StepRow>>;
    /// How many jobs `prune(before)` would delete.
    async fn prunable(&self, before: i64) -> Result<u64>;
    /// Jobs that ended at or after `since`, the latest first, at most `limit`.
    async fn finished_since(&self, since: i64, limit: u32) -> Result<Vec<RowWithArgs>>;
    /// The usage ledger's sums.
    async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>>;
}

impl Inspector {
    /// Opens the database at `url` for reading. Fails when it does not exist (nothing is
    /// created), is not an llmjobs database, or has a schema this build does not read (a
    /// newer llmjobs migrated it, or it awaits a migration).
    pub async fn open(url: &str) -> Result<Inspector> {
        let reader = open_reader(url).await?;
        let schema = read_schema(&*reader).await?;
        if let Some(refusal) = schema.refusal(url) {
            return Err(refusal);
        }
        Ok(Inspector { reader, schema })
    }

    /// The schema of the database at `url`, and whether this build can use it, without
    /// refusing any: for `llmjobs schema` and deploy checks.
    pub async fn schema_of(url: &str) -> Result<SchemaInfo> {
        let reader = open_reader(url).await?;
        read_schema(&*reader).await
    }

    /// The database's schema (always [`Compatibility::Current`] for an open inspector).
    pub fn schema(&self) -> &SchemaInfo {
        &self.schema
    }

    /// One job's status; [`Error::NotFound`] if there is no such job.
    pub async fn status(&self, id: JobId) -> Result<JobStatus> {
        Ok(self.job(id).await?.status)
    }

    /// One job with its arguments and result; [`Error::NotFound`] if there is no such job.
    pub async fn job(&self, id: JobId) -> Result<JobRecord> {
        match self.reader.get(id).await? {
            Some(row) => record(row),
            None => Err(Error::NotFound(id)),
        }
    }

    /// Jobs as `filter` selects them, newest first (see [`Jobs::list`](crate::Jobs::list)).
    pub async fn list(&self, filter: impl Into<JobFilter>) -> Result<Vec<JobStatus>> {
        Ok(self
            .records(filter)
            .await?
            .into_iter()
            .map(|r| r.status)
            .collect())
    }

    /// As [`Inspector::list`], with each job's arguments and result.
    pub async fn records(&self, filter: impl Into<JobFilter>) -> Result<Vec<JobRecord>> {
        let rows = self.reader.list(filter.into()).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| match record(row) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!(error = %e, "listing skips a row that is not a job");
                    None
                }
            })
            .collect())
    }

    /// How many jobs are in each state.
    pub async fn counts(&self) -> Result<JobCounts> {
        Ok(JobCounts::sum(self.counts_by_name().await?.values()))
    }

    /// How many jobs of each name are in each state.
    pub async fn counts_by_name(&self) -> Result<BTreeMap<String, JobCounts>> {
        JobCounts::by_name(self.reader.counts().await?)
    }

    /// How many jobs [`Jobs::prune`](crate::Jobs::prune) with `older_than` would delete now:
    /// finished jobs that ended `older_than` ago or earlier.
    pub async fn count_prunable(&self, older_than: std::time::Duration) -> Result<u64> {
        let before =
            crate::status::now_ms() - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        self.reader.prunable(before).await
    }

    /// Jobs that ended (completed, failed or cancelled) at or after `since`, the most recently
    /// ended first, at most `limit`: what throughput and latency figures are made of. Walks the
    /// index of finished jobs: costs what it returns.
    pub async fn finished_since(&self, since: SystemTime, limit: u32) -> Result<Vec<JobRecord>> {
        let rows = self
            .reader
            .finished_since(crate::status::to_ms(since), limit)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| record(row).ok())
            .collect())
    }

    /// The usage ledger's sums, as [`Jobs::usage`](crate::Jobs::usage) reads them; none from
    /// a database that predates the ledger.
    pub async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>> {
        self.reader.usage(filter).await
    }

    /// A job's step journal, in call order: what a resumed attempt replays instead of running.
    /// Empty for a job without journaled steps, or with no such id.
    pub async fn steps(&self, id: JobId) -> Result<Vec<StepInfo>> {
        Ok(self
            .reader
            .steps(id)
            .await?
            .into_iter()
            .map(|s| StepInfo {
                position: s.seq,
                name: s.name,
                size: s.size,
                recorded_at: from_ms(s.created_at),
            })
            .collect())
    }
}

async fn read_schema(reader: &dyn Reader) -> Result<SchemaInfo> {
    let row = reader.schema().await?;
    Ok(SchemaInfo::new(
        reader.backend(),
        row.version,
        row.failed,
        reader.supported(),
    ))
}

fn record(row: RowWithArgs) -> Result<JobRecord> {
    let json =
        |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    let status = row.row.to_status()?;
    Ok(JobRecord {
        status,
        args: json(row.args),
        result: row.row.result.map(json),
    })
}

async fn open_reader(url: &str) -> Result<Arc<dyn Reader>> {
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") || !url.contains("://") {
        let target = crate::store::sqlite::SqliteTarget::parse(url)?;
        return Ok(Arc::new(
            crate::store::sqlite::SqliteReader::open(url, target).await?,
        ));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            let target = crate::store::postgres::PgTarget::parse(url)?;
            return Ok(Arc::new(
                crate::store::postgres::PgReader::open(url, &target).await?,
            ));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: "PostgreSQL support is not compiled in; enable llmjobs' `postgres` feature"
                .into(),
        });
    }
    Err(Error::InvalidUrl {
        url: url.to_string(),
        reason: "unsupported scheme; expected sqlite:// or postgres://".into(),
    })
}
