//! Wake-ups between processes: `NOTIFY` at most once per commit (right after it, in a
//! statement of its own), `LISTEN` on a connection of its own.
//!
//! A notification is a hint, never the truth: a worker woken claims as it would at its poll,
//! and a waiter woken reads the row. A missed hint (the listening connection was lost) costs
//! latency, not correctness: the listener then says so ([`Hint::Missed`]), and a slow safety
//! poll remains in any case.
//!
//! One channel per schema, `llmjobs.<schema>`; the payload is, in this order, any of: `a` (due
//! jobs may be waiting); `c` followed by the ids of running jobs whose cancellation was
//! requested and `;` (or `c*;` for more than a payload holds); `e` followed by the ids of jobs
//! that ended, or `e*` when more ended than a payload holds (PostgreSQL caps payloads below
//! 8,000 bytes). A build that does not know a part takes the payload for a missed hint.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{Hint, HintSink};
use crate::{JobId, Result};

/// Ids past this many in one payload are sent as `c*;` or `e*` (about 7,400 bytes of ids).
const MAX_IDS: usize = 200;

/// The channel of llmjobs' tables in `schema`.
pub(super) fn channel(schema: &str) -> String {
    format!("llmjobs.{schema}")
}

/// What one commit tells the other processes.
#[derive(Debug, Default)]
pub(super) struct Notice {
    /// Due jobs were made pending.
    pub(super) available: bool,
    /// Running jobs whose owners are asked to stop them.
    pub(super) cancel_requested: Vec<JobId>,
    /// Jobs that ended.
    pub(super) ended: Vec<JobId>,
    /// Jobs ended that the notice does not name.
    pub(super) others_ended: bool,
}

impl Notice {
    /// Running jobs went back to the queue, some perhaps to an end (cancelled, or out of
    /// attempts): rare enough to let every waiter look.
    pub(super) fn released() -> Notice {
        Notice {
            available: true,
            others_ended: true,
            ..Notice::default()
        }
    }

    /// Adds what `other` tells to this notice: one `NOTIFY` then tells both.
    fn merge(&mut self, other: Notice) {
        self.available |= other.available;
        if self.cancel_requested.len() <= MAX_IDS {
            // Past what a payload holds it says `c*`: more ids need not be kept.
            self.cancel_requested.extend(other.cancel_requested);
            self.cancel_requested.truncate(MAX_IDS + 1);
        }
        self.others_ended |= other.others_ended;
        if self.others_ended || self.ended.len() + other.ended.len() > MAX_IDS {
            // The payload will say `e*`: the ids need not be kept.
            self.others_ended = true;
            self.ended.clear();
        } else {
            self.ended.extend(other.ended);
        }
    }

    fn is_empty(&self) -> bool {
        !self.available
            && self.cancel_requested.is_empty()
            && self.ended.is_empty()
            && !self.others_ended
    }

    pub(super) fn payload(&self) -> String {
        let mut payload = String::new();
        if self.available {
            payload.push('a');
        }
        let mut room = MAX_IDS;
        if self.cancel_requested.len() > room {
            payload.push_str("c*;");
        } else if !self.cancel_requested.is_empty() {
            payload.push('c');
            push_ids(&mut payload, &self.cancel_requested);
            payload.push(';');
            room -= self.cancel_requested.len();
        }
        if self.others_ended || self.ended.len() > room {
            payload.push_str("e*");
        } else if !self.ended.is_empty() {
            payload.push('e');
            push_ids(&mut payload, &self.ended);
        }
        payload
    }

    /// Sends the notice on `conn`, which must be outside any transaction: the statement is a
    /// transaction of its own, sent after the change it tells of has committed. Nothing when
    /// the notice is empty.
    ///
    /// Why not in the change's own transaction: PostgreSQL serialises the commits of all
    /// transactions that notify (one database-wide lock from just before the commit until
    /// after its WAL flush), so notifying batches from every connection and process would
    /// commit one at a time. This transaction writes no rows, and is a hint, so it commits
    /// without waiting for a flush (`synchronous_commit` off for it alone): the lock is held
    /// for microseconds.
    pub(super) async fn send(&self, conn: &mut PgConnection, channel: &str) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
            .bind(channel)
            .bind(self.payload())
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn push_ids(payload: &mut String, ids: &[JobId]) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(&id.to_string());
    }
}

/// Sends `notice` on a connection of `pool`, after the change it tells of committed. A hint:
/// a failure is only logged (the others poll).
pub(super) async fn tell(pool: &PgPool, notice: &Notice, channel: &str) {
    let sent = match pool.acquire().await {
        Ok(mut conn) => notice.send(&mut conn, channel).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not send a wake-up; the others poll");
    }
}

/// Sends the notices of a process's commits from a task of its own, merging the ones that
/// queue up while one is sent: the committer that made a commit goes on to its next batch
/// instead of spending a round trip on the notice, and a burst of commits costs one `NOTIFY`.
/// Each notice still goes out after the commit it tells of (it is queued once that committed).
pub(super) struct Notifier {
    queue: mpsc::UnboundedSender<Notice>,
}

impl Notifier {
    /// Starts the sending task; it ends once every clone of the notifier is dropped and what
    /// they queued is sent.
    pub(super) fn start(pool: PgPool, channel: String) -> Notifier {
        let (queue, mut receiver) = mpsc::unbounded_channel::<Notice>();
        tokio::spawn(async move {
            while let Some(mut notice) = receiver.recv().await {
                while let Ok(more) = receiver.try_recv() {
                    notice.merge(more);
                }
                tell(&pool, &notice, &channel).await;
            }
        });
        Notifier { queue }
    }

    /// Queues `notice` (nothing when it is empty) to be sent soon, merged with others.
    pub(super) fn send(&self, notice: Notice) {
        if !notice.is_empty() {
            // Fails only once the sending task is gone (the runtime is shutting down): a hint
            // then has no one to tell.
            let _ = self.queue.send(notice);
        }
    }
}

/// The hints a payload carries; a payload this build does not understand is a missed hint.
fn parse(payload: &str) -> Vec<Hint> {
    let mut hints = Vec::new();
    let mut rest = payload;
    if let Some(after) = rest.strip_prefix('a') {
        hints.push(Hint::Available);
        rest = after;
    }
    if let Some(after) = rest.strip_prefix('c') {
        let Some((ids, after)) = after.split_once(';') else {
            hints.push(Hint::Missed);
            return hints;
        };
        // `c*;`: more than a payload holds; every runtime with running jobs looks.
        match ids.split(',').map(str::parse).collect() {
            Ok(ids) => hints.push(Hint::CancelRequested(ids)),
            Err(_) => hints.push(Hint::Missed),
        }
        rest = after;
    }
    match rest.strip_prefix('e') {
        None if rest.is_empty() => {}
        Some("*") => hints.push(Hint::Missed),
        Some(ids) => match ids.split(',').map(str::parse).collect() {
            Ok(ids) => hints.push(Hint::Ended(ids)),
            Err(_) => hints.push(Hint::Missed),
        },
        None => hints.push(Hint::Missed),
    }
    hints
}

/// Listens on `channel` until `stop`, delivering hints to `sink`; reconnects with back-off when
/// the connection is lost, and says [`Hint::Missed`] once it is back.
pub(super) fn spawn_listener(
    options: PgConnectOptions,
    channel: String,
    sink: HintSink,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            () = listen(options, &channel, &sink) => {}
            () = stop.cancelled() => {}
        }
    });
}

async fn listen(options: PgConnectOptions, channel: &str, sink: &HintSink) {
    // A pool of one is how sqlx's listener reconnects.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut backoff = Duration::from_millis(100);
    let mut listener = loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => break listener,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot listen for job wake-ups; polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    // Whatever happened before the LISTEN took effect was not heard.
    sink(Hint::Missed);
    backoff = Duration::from_millis(100);
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                backoff = Duration::from_millis(100);
                for hint in parse(notification.payload()) {
                    sink(hint);
                }
            }
            Ok(None) => {
                tracing::info!("the connection listening for job wake-ups was lost; reconnected");
                sink(Hint::Missed);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "listening for job wake-ups failed; polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // The next call reconnects and listens again; what was sent meanwhile is lost.
                sink(Hint::Missed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_what_changed_and_reads_back() {
        let a: JobId = "01930000-0000-7000-8000-00000000a001".parse().unwrap();
        let b: JobId = "01930000-0000-7000-8000-00000000a002".parse().unwrap();
        let notice = Notice {
            available: true,
            ended: vec![a, b],
            ..Notice::default()
        };
        assert_eq!(
            parse(&notice.payload()),
            vec![Hint::Available, Hint::Ended(vec![a, b])]
        );
        let many = Notice {
            ended: vec![a; MAX_IDS + 1],
            ..Notice::default()
        };
        assert!(many.payload().len() < 8000);
        assert_eq!(parse(&many.payload()), vec![Hint::Missed]);
        let full = Notice {
            ended: vec![a; MAX_IDS],
            ..Notice::default()
        };
        assert!(full.payload().len() < 8000, "{}", full.payload().len());
        assert_eq!(parse("a"), vec![Hint::Available]);
        let asked = Notice {
            cancel_requested: vec![a],
            ended: vec![b],
            ..Notice::default()
        };
        assert_eq!(
            parse(&asked.payload()),
            vec![Hint::CancelRequested(vec![a]), Hint::Ended(vec![b])]
        );
        let only_asked = Notice {
            cancel_requested: vec![a, b],
            ..Notice::default()
        };
        assert_eq!(
            parse(&only_asked.payload()),
            vec![Hint::CancelRequested(vec![a, b])]
        );
        // Ids of both kinds share one payload's room.
        let crowded = Notice {
            cancel_requested: vec![a; MAX_IDS],
            ended: vec![b],
            ..Notice::default()
        };
        assert!(crowded.payload().len() < 8000);
        assert_eq!(
            parse(&crowded.payload()),
            vec![Hint::CancelRequested(vec![a; MAX_IDS]), Hint::Missed]
        );
        assert_eq!(parse("c*;"), vec![Hint::Missed]);
        assert_eq!(parse("c"), vec![Hint::Missed]);
        assert_eq!(parse("zz"), vec![Hint::Missed]);
    }

    #[test]
    fn merged_notices_tell_what_each_told() {
        let a: JobId = "01930000-0000-7000-8000-00000000a001".parse().unwrap();
        let b: JobId = "01930000-0000-7000-8000-00000000a002".parse().unwrap();
        let mut notice = Notice {
            ended: vec![a],
            ..Notice::default()
        };
        notice.merge(Notice {
            available: true,
            ended: vec![b],
            ..Notice::default()
        });
        assert_eq!(
            parse(&notice.payload()),
            vec![Hint::Available, Hint::Ended(vec![a, b])]
        );
        notice.merge(Notice {
            cancel_requested: vec![b],
            ..Notice::default()
        });
        assert_eq!(
            parse(&notice.payload()),
            vec![
                Hint::Available,
                Hint::CancelRequested(vec![b]),
                Hint::Ended(vec![a, b])
            ]
        );
        // Cancel requests past what a payload holds give way to `c*`.
        let mut cancels = Notice::default();
        for _ in 0..MAX_IDS + 5 {
            cancels.merge(Notice {
                cancel_requested: vec![a],
                ..Notice::default()
            });
        }
        assert_eq!(cancels.cancel_requested.len(), MAX_IDS + 1);
        assert_eq!(parse(&cancels.payload()), vec![Hint::Missed]);
        // Past what a payload holds, the ids give way to `e*`, and stay so.
        let mut many = Notice::default();
        for _ in 0..=MAX_IDS {
            many.merge(Notice {
                ended: vec![a],
                ..Notice::default()
            });
        }
        assert_eq!(parse(&many.payload()), vec![Hint::Missed]);
        many.merge(Notice {
            ended: vec![b],
            ..Notice::default()
        });
        assert_eq!(
            (parse(&many.payload()), many.ended.len()),
            (vec![Hint::Missed], 0)
        );
    }
}
