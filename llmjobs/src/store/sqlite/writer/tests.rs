//! The writer's own tests: batches, fencing, limits and counters on an in-memory database.

use super::*;
use crate::store::{LocalClaim, NameQuota};

fn connection() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    super::super::migrate::run(&conn).unwrap();
    conn
}

fn running_job(owner: &str) -> NewJob {
    NewJob {
        id: JobId::new(),
        name: "job".into(),
        args: "{}".into(),
        priority: 0,
        concurrency_key: None,
        key_limit: None,
        max_attempts: 1,
        run_at: 0,
        created_at: 0,
        idempotency_key: None,
        idempotency_window: None,
        budget: None,
        claimed_by: Some(LocalClaim {
            owner: owner.into(),
            lease_until: i64::MAX,
            name_limit: None,
            key_limit: None,
            global_limit: None,
        }),
    }
}

fn insert(conn: &Connection, jobs: &[NewJob]) {
    let inserts: Vec<WriteOp> = jobs.iter().cloned().map(WriteOp::Enqueue).collect();
    transaction(conn, &inserts.iter().collect::<Vec<_>>()).unwrap();
}

fn finish(job: &NewJob, owner: &str, attempt: u32, finish: Finish) -> WriteOp {
    WriteOp::Finish {
        id: job.id,
        owner: owner.into(),
        attempt,
        finish,
        progress: None,
    }
}

fn complete(job: &NewJob, owner: &str, result: &str) -> WriteOp {
    let result = result.into();
    finish(job, owner, 1, Finish::Completed { result })
}

fn state(conn: &Connection, job: &NewJob) -> (String, u32, Option<String>) {
    conn.query_row(
        "SELECT status, attempts, error FROM llmjobs_jobs WHERE id = ?",
        [job.id.to_string()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// The counters say what counting the rows says.
fn assert_counters_match_rows(conn: &Connection) {
    let rows = |sql: &str| -> Vec<(String, String, i64)> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|row| row.unwrap())
            .collect()
    };
    assert_eq!(
        rows("SELECT name, status, n FROM llmjobs_counts WHERE n <> 0 ORDER BY name, status"),
        rows(
            "SELECT name, status, count(*) FROM llmjobs_jobs GROUP BY name, status \
             ORDER BY name, status"
        ),
        "jobs per name and state"
    );
    assert_eq!(
        rows(
            "SELECT concurrency_key, 'running', n FROM llmjobs_running_keys WHERE n <> 0 \
             ORDER BY concurrency_key"
        ),
        rows(
            "SELECT concurrency_key, 'running', count(*) FROM llmjobs_jobs \
             WHERE status = 'running' AND concurrency_key IS NOT NULL \
             GROUP BY concurrency_key ORDER BY concurrency_key"
        ),
        "running jobs per key"
    );
}

fn finished(reply: &Reply) -> Option<JobState> {
    match reply {
        Reply::Finished(state) => *state,
        other => panic!("not a finish reply: {other:?}"),
    }
}

/// Sends `ops` through `commit_batch` as one batch; the replies and the transaction count.
fn commit(conn: &Connection, ops: Vec<WriteOp>) -> (Vec<Result<Reply>>, usize) {
    let mut receivers = Vec::new();
    let mut batch = Vec::new();
    for op in ops {
        let (reply, rx) = oneshot::channel();
        batch.push(Request { op, reply });
        receivers.push(rx);
    }
    let transactions = commit_batch(conn, &mut batch);
    let replies = receivers
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("every request answered"))
        .collect();
    (replies, transactions)
}

#[test]
fn completions_batched_together_change_only_their_owners_running_rows() {
    let conn = connection();
    let jobs: Vec<NewJob> = (0..5).map(|_| running_job("me")).collect();
    insert(&conn, &jobs);

    let ops = [
        complete(&jobs[0], "me", "0"),
        complete(&jobs[1], "someone else", "1"),
        complete(&jobs[2], "me", "2"),
        complete(&jobs[3], "me", "3"),
        complete(&jobs[0], "me", "again"),
    ];
    let replies = transaction(&conn, &ops.iter().collect::<Vec<_>>()).unwrap();
    let changed: Vec<bool> = replies.iter().map(|r| finished(r).is_some()).collect();
    // The second completion of job 0 finds it completed already: the first one wins.
    assert_eq!(changed, [true, false, true, true, false]);

    let rows: Vec<(String, String, Option<String>)> = conn
        .prepare("SELECT id, status, result FROM llmjobs_jobs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for (id, status, result) in rows {
        let index = jobs.iter().position(|j| j.id.to_string() == id).unwrap();
        match index {
            0 | 2 | 3 => {
                assert_eq!(status, "completed");
                assert_eq!(result.as_deref(), Some(index.to_string().as_str()));
            }
            _ => assert_eq!((status.as_str(), result), ("running", None)),
        }
    }

    // A terminal row is final: a late completion changes nothing.
    let late = [
        complete(&jobs[2], "me", "late"),
        complete(&jobs[4], "me", "4"),
    ];
    let replies = transaction(&conn, &late.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(finished(&replies[0]), None);
    assert_eq!(finished(&replies[1]), Some(JobState::Completed));
}

#[test]
fn local_claims_in_one_batch_take_only_the_room_their_limits_leave() {
    let conn = connection();
    insert(&conn, &[running_job("other")]);
    let limited = |global: Option<u32>, name: Option<u32>| {
        let mut job = running_job("me");
        if let Some(claim) = &mut job.claimed_by {
            claim.global_limit = global;
            claim.name_limit = name;
        }
        WriteOp::Enqueue(job)
    };
    // Global limit 3, one job already running: two more fit, in arrival order, counting
    // an unlimited claim of the same batch; then the rest wait, pending.
    let ops = vec![
        limited(Some(3), None),
        WriteOp::Enqueue(running_job("me")),
        limited(Some(3), None),
        limited(Some(5), None),
    ];
    let (replies, _) = commit(&conn, ops);
    let running: Vec<bool> = replies
        .into_iter()
        .map(|r| matches!(r, Ok(Reply::Enqueued(Enqueued::Inserted { running: true }))))
        .collect();
    // The last one had room under its own limit (5), but a job queued before it waits.
    assert_eq!(running, [true, true, false, false]);
    let counted: i64 = conn
        .query_row(
            "SELECT sum(n) FROM llmjobs_counts WHERE status = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted, 3);
}

#[test]
fn an_outcome_of_an_older_attempt_changes_nothing() {
    let conn = connection();
    let job = running_job("me");
    insert(&conn, std::slice::from_ref(&job));
    conn.execute("UPDATE llmjobs_jobs SET attempts = 2", [])
        .unwrap();
    let replies = transaction(&conn, &[&complete(&job, "me", "stale")]).unwrap();
    assert_eq!(finished(&replies[0]), None, "attempt 1 is over");
    let step = WriteOp::AppendStep {
        id: job.id,
        owner: "me".into(),
        attempt: 1,
        step: StepRecord {
            seq: 0,
            name: "llm".into(),
            output: "stale".into(),
        },
    };
    let replies = transaction(&conn, &[&step]).unwrap();
    assert!(matches!(replies[0], Reply::Changed(false)));
    assert_eq!(state(&conn, &job).0, "running");
}

#[test]
fn a_requested_cancel_wins_over_any_outcome() {
    let conn = connection();
    let jobs: Vec<NewJob> = (0..3).map(|_| running_job("me")).collect();
    insert(&conn, &jobs);
    conn.execute("UPDATE llmjobs_jobs SET cancel_requested = 1", [])
        .unwrap();
    let outcomes = [
        complete(&jobs[0], "me", "done"),
        finish(
            &jobs[1],
            "me",
            1,
            Finish::Retry {
                error: "503".into(),
                run_at: 0,
            },
        ),
        finish(
            &jobs[2],
            "me",
            1,
            Finish::Failed {
                error: "400".into(),
                needs_review: false,
            },
        ),
    ];
    let replies = transaction(&conn, &outcomes.iter().collect::<Vec<_>>()).unwrap();
    for (job, reply) in jobs.iter().zip(&replies) {
        assert_eq!(finished(reply), Some(JobState::Cancelled));
        assert_eq!(state(&conn, job).0, "cancelled");
    }
}

#[test]
fn a_dead_owners_last_attempt_fails_and_a_departing_owners_is_given_back() {
    let conn = connection();
    let jobs: Vec<NewJob> = (0..4).map(|_| running_job("gone")).collect();
    insert(&conn, &jobs);
    let set = |job: &NewJob, sql: &str| {
        conn.execute(
            &format!("UPDATE llmjobs_jobs SET {sql} WHERE id = ?"),
            [job.id.to_string()],
        )
        .unwrap();
    };
    // jobs[0]: attempt 1 of 1, a retry-less job: it may still be interrupted twice more.
    set(&jobs[1], "attempts = 3");
    set(&jobs[2], "attempts = 3, max_attempts = 5");
    set(&jobs[3], "cancel_requested = 1");
    let mut tally = Tally::default();
    release::release_owner(&conn, "gone", Release::Dead, 1, &mut tally).unwrap();
    tally.flush(&conn).unwrap();
    assert_counters_match_rows(&conn);
    assert_eq!(state(&conn, &jobs[0]).0, "pending");
    let (status, _, error) = state(&conn, &jobs[1]);
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("attempt 3 of 3 was interrupted"));
    assert_eq!(state(&conn, &jobs[2]).0, "pending");
    assert_eq!(state(&conn, &jobs[3]).0, "cancelled");

    let departing = running_job("leaving");
    insert(&conn, std::slice::from_ref(&departing));
    release::release_owner(&conn, "leaving", Release::HandBack, 1, &mut tally).unwrap();
    tally.flush(&conn).unwrap();
    assert_counters_match_rows(&conn);
    let (status, attempts, _) = state(&conn, &departing);
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 0),
        "the attempt is given back"
    );
}

/// Every write that changes a job's state, in one batch and alone, keeps the counters equal
/// to what counting the rows gives (they are kept by the writer, not by triggers).
#[test]
fn the_counters_follow_every_change_of_state() {
    let conn = connection();
    let run = |ops: Vec<WriteOp>| {
        for (reply, _) in commit(&conn, ops).0.into_iter().zip(0..) {
            reply.unwrap();
        }
        assert_counters_match_rows(&conn);
    };
    let named = |name: &str, key: Option<&str>, owner: Option<&str>| {
        let mut job = running_job(owner.unwrap_or("nobody"));
        job.name = name.into();
        job.concurrency_key = key.map(Into::into);
        job.max_attempts = 5;
        if owner.is_none() {
            job.claimed_by = None;
        }
        job
    };
    // Inserted running (local hand-off) and pending, with and without keys.
    let running: Vec<NewJob> = (0..6)
        .map(|i| named(["a", "b"][i % 2], [Some("k"), None][i % 2], Some("me")))
        .collect();
    let pending: Vec<NewJob> = (0..6)
        .map(|i| named(["a", "c"][i % 2], [Some("k"), Some("j")][i % 2], None))
        .collect();
    run(running
        .iter()
        .chain(&pending)
        .cloned()
        .map(WriteOp::Enqueue)
        .collect());
    // Claimed, by two claims in one batch, under limits.
    let claim = |slots| {
        WriteOp::Claim(ClaimRequest {
            owner: "me".into(),
            now: 1,
            lease_until: i64::MAX,
            slots,
            names: vec![
                NameQuota {
                    name: "a",
                    limit: Some(5),
                },
                NameQuota {
                    name: "c",
                    limit: None,
                },
            ]
            .into(),
            global_limit: Some(100),
        })
    };
    run(vec![claim(1), claim(1)]);
    // Every outcome, a cancel of a pending and of a running job, and a completion whose
    // cancel was requested first.
    run(vec![
        WriteOp::Cancel { id: pending[5].id },
        WriteOp::Cancel { id: running[5].id },
    ]);
    run(vec![
        complete(&running[0], "me", "1"),
        complete(&running[5], "me", "1"),
        finish(
            &running[1],
            "me",
            1,
            Finish::Failed {
                error: "no".into(),
                needs_review: true,
            },
        ),
        finish(
            &running[2],
            "me",
            1,
            Finish::Retry {
                error: "again".into(),
                run_at: 0,
            },
        ),
        finish(&running[3], "me", 1, Finish::Cancelled),
    ]);
    // Retried by hand, from failed and from cancelled.
    run(vec![
        WriteOp::Retry {
            id: running[1].id,
            clear_journal: false,
        },
        WriteOp::Retry {
            id: running[3].id,
            clear_journal: true,
        },
    ]);
    // A corrupt row and one whose crashes used up its attempts fail at the next claim.
    conn.execute(
        "UPDATE llmjobs_jobs SET max_attempts = 'many' WHERE id = ?",
        [pending[4].id.to_string()],
    )
    .unwrap();
    conn.execute(
        "UPDATE llmjobs_jobs SET attempts = 9 WHERE id = ?",
        [pending[3].id.to_string()],
    )
    .unwrap();
    run(vec![claim(10)]);
    let failed: i64 = conn
        .query_row(
            "SELECT count(*) FROM llmjobs_jobs WHERE status = 'failed' AND id IN (?, ?)",
            [pending[3].id.to_string(), pending[4].id.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        failed, 2,
        "the claim failed the corrupt and the exhausted job"
    );
    // Released: handed back, dead, and past their lease.
    run(vec![WriteOp::ReleaseOwner {
        owner: "me".into(),
        why: Release::HandBack,
    }]);
    run(vec![claim(3)]);
    run(vec![WriteOp::ReleaseOwner {
        owner: "me".into(),
        why: Release::Dead,
    }]);
    run(vec![claim(10)]);
    conn.execute("UPDATE llmjobs_jobs SET lease_until = 0", [])
        .unwrap();
    run(vec![WriteOp::ReleaseExpired {
        owners: vec!["me".into()],
        now: 10,
    }]);
    // Pruned: every finished job.
    run(vec![WriteOp::Prune {
        before: i64::MAX,
        limit: 3,
    }]);
    run(vec![WriteOp::Prune {
        before: i64::MAX,
        limit: 100,
    }]);
    let left: i64 = conn
        .query_row("SELECT count(*) FROM llmjobs_jobs", [], |r| r.get(0))
        .unwrap();
    assert!(left > 0, "some jobs are still unfinished");
}

#[test]
fn expired_leases_are_released_only_for_the_owners_named() {
    let conn = connection();
    let (mine, theirs) = (running_job("me"), running_job("them"));
    insert(&conn, &[mine.clone(), theirs.clone()]);
    conn.execute("UPDATE llmjobs_jobs SET lease_until = 0", [])
        .unwrap();
    let mut tally = Tally::default();
    let released = release::release_expired(&conn, &["them".to_string()], 10, &mut tally).unwrap();
    tally.flush(&conn).unwrap();
    assert_eq!(released, 1);
    assert_counters_match_rows(&conn);
    assert_eq!(state(&conn, &mine).0, "running");
    assert_eq!(state(&conn, &theirs).0, "pending");
}

/// Log lines written by a test's subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

#[test]
fn a_full_disk_fails_the_whole_batch_in_one_transaction() {
    let conn = connection();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        .unwrap();
    let big = |n: usize| {
        let mut job = running_job("me");
        job.args = format!("{{\"pad\": \"{}\"}}", "x".repeat(n));
        WriteOp::Enqueue(job)
    };
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let (replies, transactions) = tracing::subscriber::with_default(subscriber, || {
        commit(&conn, (0..20).map(|_| big(100_000)).collect())
    });
    assert_eq!(transactions, 1, "no replay one by one");
    let logged = logs.text();
    assert!(
        !logged.contains("rolling back"),
        "SQLite rolled the transaction back itself; no second rollback: {logged}"
    );
    for reply in replies {
        let message = reply.unwrap_err().to_string();
        assert!(message.contains("full"), "{message}");
    }
    // The connection is usable again, with no transaction left open.
    assert!(conn.is_autocommit());
    conn.query_row("PRAGMA max_page_count = 100000", [], |_| Ok(()))
        .unwrap();
    let (replies, _) = commit(&conn, vec![big(10)]);
    assert!(replies[0].is_ok());
}

#[test]
fn a_bad_write_is_replayed_alone_and_the_others_commit() {
    let conn = connection();
    let first = running_job("me");
    insert(&conn, std::slice::from_ref(&first));
    let fresh = running_job("me");
    // The same id again breaks the primary key: that write alone fails.
    let ops = vec![
        WriteOp::Enqueue(fresh.clone()),
        WriteOp::Enqueue(first.clone()),
        complete(&first, "me", "done"),
    ];
    let (replies, transactions) = commit(&conn, ops);
    assert_eq!(transactions, 4, "the batch, then each write alone");
    assert!(replies[0].is_ok());
    assert!(replies[1].is_err());
    assert!(matches!(
        replies[2],
        Ok(Reply::Finished(Some(JobState::Completed)))
    ));
    assert_eq!(state(&conn, &fresh).0, "running");
}
