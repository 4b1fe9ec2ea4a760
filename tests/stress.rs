//! A seeded, bounded stress test: spawns, cancels, retries, kills and restarts interleaved at
//! random over one database, then the invariants every run must keep.
//!
//! The random phase (at most 300 operations, 15 s) keeps one or two runtimes alive: it spawns
//! journaled, flaky (retried) and sleeping jobs through them (sometimes through a watcher that
//! runs nothing, or a runtime that is shutting down), cancels earlier jobs through any of them,
//! kills runtimes, shuts them down gracefully in the background and opens new ones. Then one
//! fresh runtime drains every job and the checks run: see the numbered comments in the test.
//!
//! A failing run prints its seed; rerun it with `LLMJOBS_STRESS_SEED=<seed> cargo test
//! --all-features --test stress -- --nocapture`. `LLMJOBS_STRESS_TRACE=1` also prints every
//! operation as it happens. The operations and every job's arguments follow from the seed; only
//! the timing of the runtimes' own work varies from run to run.
//!
//! A "kill" drops every clone of a `Jobs` without `shutdown`, which is how the library models a
//! crash: the dead runtime's jobs stay `running` under it, its owner lock is released, and the
//! next runtime on the file resumes them at once. The test therefore keeps job ids, never
//! handles (a handle holds a clone of its runtime).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmjobs::{
    Backoff, CancelOutcome, JobCall, JobContext, JobError, JobFilter, JobId, JobState, JobStatus,
    Jobs, llm_job,
};
use llmjobs_testkit::{TempDb, append_line, read_lines};

/// At most this many operations in the random phase.
const MAX_OPS: usize = 300;
/// The random phase stops after this long even if operations are left.
const STRESS_BUDGET: Duration = Duration::from_secs(15);
/// How long the final runtime gets to bring every job to a terminal state.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// The final runtime's concurrency: it must still run this many jobs at once.
const FINAL_CONCURRENCY: u32 = 4;
/// How long each gate job waits for the others before giving up.
const GATE_PATIENCE: Duration = Duration::from_secs(5);
/// Any single spawn, cancel, status or list call taking longer than this is a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A graceful shutdown taking longer than this (over its grace period) is a hang.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A journaled job of `work_ms.len()` steps. Each step logs `run {id} {seq}` when its work
/// starts; `committed {id} {seq}` is logged once `ctx.step` has returned, so the step's output
/// is in the journal by then and no later attempt may run it again.
#[llm_job]
async fn stepped(
    ctx: JobContext,
    log: String,
    work_ms: Vec<u64>,
    gap_ms: Vec<u64>,
) -> Result<u32, JobError> {
    let (id, log) = (ctx.id(), Path::new(&log));
    append_line(log, &format!("start {id} {}", ctx.attempt()));
    let mut total = 0;
    for (seq, (&work, &gap)) in work_ms.iter().zip(&gap_ms).enumerate() {
        let value: u32 = ctx
            .step("work", async {
                append_line(log, &format!("run {id} {seq}"));
                tokio::time::sleep(ms(work)).await;
                Ok::<_, JobError>(seq as u32 + 1)
            })
            .await?;
        append_line(log, &format!("committed {id} {seq}"));
        total += value;
        tokio::time::sleep(ms(gap)).await;
    }
    append_line(log, &format!("end {id}"));
    Ok(total)
}

/// Fails with a retryable error on its first `fail_first` attempts (at most 3, its retries),
/// then succeeds.
#[llm_job(retries = 3)]
async fn flaky(
    ctx: JobContext,
    log: String,
    fail_first: u32,
    work_ms: u64,
) -> Result<u32, JobError> {
    let (id, attempt, log) = (ctx.id(), ctx.attempt(), Path::new(&log));
    append_line(log, &format!("start {id} {attempt}"));
    tokio::time::sleep(ms(work_ms)).await;
    if attempt <= fail_first {
        append_line(log, &format!("fail {id} {attempt}"));
        return Err(JobError::msg(format!(
            "planned failure {attempt} of {fail_first}"
        )));
    }
    append_line(log, &format!("end {id}"));
    Ok(attempt)
}

/// Sleeps, then succeeds.
#[llm_job]
async fn sleeper(ctx: JobContext, log: String, sleep_ms: u64) -> Result<u64, JobError> {
    let (id, log) = (ctx.id(), Path::new(&log));
    append_line(log, &format!("start {id} {}", ctx.attempt()));
    tokio::time::sleep(ms(sleep_ms)).await;
    append_line(log, &format!("end {id}"));
    Ok(sleep_ms)
}

static GATE_STARTED: AtomicU32 = AtomicU32::new(0);

/// Succeeds once `of` gate jobs have started, all running at once; fails (permanently) if they
/// have not within `patience_ms`.
#[llm_job]
async fn gate(of: u32, patience_ms: u64) -> Result<u32, JobError> {
    GATE_STARTED.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + ms(patience_ms);
    loop {
        let started = GATE_STARTED.load(Ordering::SeqCst);
        if started >= of {
            return Ok(started);
        }
        if Instant::now() >= deadline {
            return Err(JobError::permanent(JobError::msg(format!(
                "only {started} of {of} gate jobs ran at once"
            ))));
        }
        tokio::time::sleep(ms(5)).await;
    }
}

/// splitmix64: small, seedable and plenty for picking operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// What a spawned job was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Stepped { work_ms: Vec<u64>, gap_ms: Vec<u64> },
    Flaky { fail_first: u32, work_ms: u64 },
    Sleeper { sleep_ms: u64 },
}

struct Spawned {
    id: JobId,
    plan: Plan,
    via: String,
    /// Kills and graceful shutdowns begun before the spawn returned.
    stops_before: u32,
}

struct CancelRecord {
    id: JobId,
    via: String,
    /// When the cancel returned, since the test began.
    returned_at: Duration,
    outcome: CancelOutcome,
    /// Lines in the log when the cancel had returned.
    log_len: usize,
    /// The job's status read just after the cancel returned.
    seen: Option<JobStatus>,
}

struct Runtime {
    label: String,
    jobs: Jobs,
}

/// A runtime shutting down gracefully in the background; still usable (and expected to refuse
/// or cope) until its shutdown returns.
struct Stopping {
    label: String,
    jobs: Jobs,
    task: tokio::task::JoinHandle<bool>,
}

#[derive(Default, Debug)]
struct Counts {
    ops: usize,
    spawns: usize,
    cancels: usize,
    kills: usize,
    shutdowns: usize,
    restarts: usize,
    sleeps: usize,
}

struct Stress {
    seed: u64,
    rng: Rng,
    db: TempDb,
    log: PathBuf,
    began: Instant,
    trace: bool,
    watcher: Jobs,
    live: Vec<Runtime>,
    stopping: Vec<Stopping>,
    opened: u32,
    /// Every runtime's owner name (as in job statuses) and its label here.
    owners: HashMap<String, String>,
    /// Kills and graceful shutdowns begun so far.
    stops: u32,
    spawned: Vec<Spawned>,
    cancels: Vec<CancelRecord>,
    spawn_errors: Vec<String>,
    cancel_errors: Vec<String>,
    hangs: Vec<String>,
    counts: Counts,
}

impl Stress {
    fn say(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>8.3?}] {}", self.began.elapsed(), what());
        }
    }

    async fn open_runtime(&mut self, concurrency: u32, grace: Duration) -> Runtime {
        self.opened += 1;
        let label = format!("rt{}", self.opened);
        let jobs = Jobs::builder()
            .url(self.db.url())
            .concurrency(concurrency)
            .backoff(Backoff {
                base: ms(20),
                factor: 2.0,
                cap: ms(200),
            })
            .poll_interval(ms(20))
            .shutdown_grace(grace)
            .open()
            .await
            .unwrap_or_else(|e| panic!("seed {}: opening runtime {label}: {e}", self.seed));
        self.say(|| format!("open {label} (concurrency {concurrency}, grace {grace:?})"));
        self.owners.insert(jobs.owner().to_string(), label.clone());
        Runtime { label, jobs }
    }

    async fn open_random_runtime(&mut self) -> Runtime {
        let concurrency = 1 + self.rng.below(3) as u32;
        let grace = ms(self.rng.below(300));
        self.open_runtime(concurrency, grace).await
    }

    /// A runtime to call through: a live one, a stopping one (if asked and there is one), or the
    /// watcher (if asked).
    fn route(&self, pick: u64, through_stopping: bool, through_watcher: bool) -> (String, Jobs) {
        if through_watcher {
            return ("watcher".into(), self.watcher.clone());
        }
        if through_stopping && !self.stopping.is_empty() {
            let s = &self.stopping[(pick % self.stopping.len() as u64) as usize];
            return (format!("{} (stopping)", s.label), s.jobs.clone());
        }
        let rt = &self.live[(pick % self.live.len() as u64) as usize];
        (rt.label.clone(), rt.jobs.clone())
    }

    /// Forgets stopping runtimes whose shutdown has returned, noting any that hung.
    async fn reap_stopped(&mut self) {
        let mut i = 0;
        while i < self.stopping.len() {
            if self.stopping[i].task.is_finished() {
                let s = self.stopping.swap_remove(i);
                self.finish_stopping(s).await;
            } else {
                i += 1;
            }
        }
    }

    async fn finish_stopping(&mut self, s: Stopping) {
        let in_time = s.task.await.unwrap_or(false);
        if !in_time {
            self.hangs.push(format!(
                "graceful shutdown of {} took over {SHUTDOWN_TIMEOUT:?} past its grace",
                s.label
            ));
        }
        self.say(|| format!("{} shut down", s.label));
    }

    fn begin_shutdown(&mut self, rt: Runtime) {
        let jobs = rt.jobs.clone();
        let task = tokio::spawn(async move {
            tokio::time::timeout(SHUTDOWN_TIMEOUT + ms(300), jobs.shutdown())
                .await
                .is_ok()
        });
        self.stopping.push(Stopping {
            label: rt.label,
            jobs: rt.jobs,
            task,
        });
    }

    async fn op_spawn(&mut self) {
        let plan = match self.rng.below(3) {
            0 => {
                let steps = 2 + self.rng.below(2);
                Plan::Stepped {
                    work_ms: (0..steps).map(|_| self.rng.below(30)).collect(),
                    gap_ms: (0..steps).map(|_| self.rng.below(30)).collect(),
                }
            }
            1 => Plan::Flaky {
                fail_first: self.rng.below(4) as u32,
                work_ms: self.rng.below(30),
            },
            _ => Plan::Sleeper {
                sleep_ms: self.rng.below(201),
            },
        };
        let pick = self.rng.next();
        let through_stopping = self.rng.percent(10);
        // Mostly through a runtime that can run it at once; sometimes through the watcher, so
        // that a worker has to claim it.
        let through_watcher = self.rng.percent(15);
        let (via, jobs) = self.route(pick, through_stopping, through_watcher);
        let log = self.log.display().to_string();
        let result = match plan.clone() {
            Plan::Stepped { work_ms, gap_ms } => {
                spawn_id(&jobs, stepped(log, work_ms, gap_ms)).await
            }
            Plan::Flaky {
                fail_first,
                work_ms,
            } => spawn_id(&jobs, flaky(log, fail_first, work_ms)).await,
            Plan::Sleeper { sleep_ms } => spawn_id(&jobs, sleeper(log, sleep_ms)).await,
        };
        drop(jobs);
        self.counts.spawns += 1;
        match result {
            Ok(id) => {
                self.say(|| format!("spawn {id} {plan:?} via {via}"));
                self.spawned.push(Spawned {
                    id,
                    plan,
                    via,
                    stops_before: self.stops,
                });
            }
            Err(SpawnError::Failed(e)) => {
                self.say(|| format!("spawn {plan:?} via {via} failed: {e}"));
                self.spawn_errors.push(format!("via {via}: {e}"));
            }
            Err(SpawnError::Hung) => {
                self.hangs.push(format!("spawn via {via} hung"));
            }
        }
    }

    async fn op_cancel(&mut self) {
        let target = self.rng.next();
        let recent = self.rng.percent(70);
        let through_watcher = self.rng.percent(35);
        let pick = self.rng.next();
        let through_stopping = self.rng.percent(10);
        if self.spawned.is_empty() {
            return;
        }
        let n = self.spawned.len() as u64;
        // Mostly one of the last few jobs, which are likely pending or running.
        let index = if recent {
            n - 1 - target % n.min(8)
        } else {
            target % n
        } as usize;
        let id = self.spawned[index].id;
        let (via, jobs) = self.route(pick, through_stopping, through_watcher);
        let result = tokio::time::timeout(CALL_TIMEOUT, jobs.cancel(id)).await;
        drop(jobs);
        self.counts.cancels += 1;
        match result {
            Ok(Ok(outcome)) => {
                let log_len = read_lines(&self.log).len();
                let seen = tokio::time::timeout(CALL_TIMEOUT, self.watcher.status(id))
                    .await
                    .ok()
                    .and_then(Result::ok);
                self.say(|| format!("cancel {id} via {via}: {outcome:?}"));
                self.cancels.push(CancelRecord {
                    id,
                    via,
                    returned_at: self.began.elapsed(),
                    outcome,
                    log_len,
                    seen,
                });
            }
            Ok(Err(e)) => {
                self.say(|| format!("cancel {id} via {via} failed: {e}"));
                self.cancel_errors.push(format!("{id} via {via}: {e}"));
            }
            Err(_) => self.hangs.push(format!("cancel of {id} via {via} hung")),
        }
    }

    /// Kills (`graceful == false`) or gracefully stops a random live runtime; opens a new one at
    /// once if none is left.
    async fn op_stop(&mut self, graceful: bool) {
        let index = self.rng.below(self.live.len() as u64) as usize;
        let rt = self.live.swap_remove(index);
        self.stops += 1;
        if graceful {
            self.counts.shutdowns += 1;
            self.say(|| format!("shutdown {} (in the background)", rt.label));
            self.begin_shutdown(rt);
        } else {
            self.counts.kills += 1;
            self.say(|| format!("kill {}", rt.label));
            drop(rt);
        }
        if self.live.is_empty() {
            let rt = self.open_random_runtime().await;
            self.counts.restarts += 1;
            self.live.push(rt);
        }
    }

    async fn run_operations(&mut self) {
        for _ in 0..MAX_OPS {
            if self.began.elapsed() >= STRESS_BUDGET {
                break;
            }
            self.reap_stopped().await;
            self.counts.ops += 1;
            match self.rng.below(100) {
                0..50 => self.op_spawn().await,
                50..70 => self.op_cancel().await,
                70..76 => self.op_stop(false).await,
                76..81 => self.op_stop(true).await,
                81..89 if self.live.len() < 2 => {
                    let rt = self.open_random_runtime().await;
                    self.counts.restarts += 1;
                    self.live.push(rt);
                }
                _ => {
                    self.counts.sleeps += 1;
                    tokio::time::sleep(ms(self.rng.below(51))).await;
                }
            }
            tokio::time::sleep(ms(self.rng.below(51))).await;
        }
        // Stop every runtime of the random phase, some by a kill, some gracefully.
        while let Some(rt) = self.live.pop() {
            self.stops += 1;
            if self.rng.percent(50) {
                self.say(|| format!("kill {} (end of the random phase)", rt.label));
                drop(rt);
            } else {
                self.say(|| format!("shutdown {} (end of the random phase)", rt.label));
                self.begin_shutdown(rt);
            }
        }
        while let Some(s) = self.stopping.pop() {
            self.finish_stopping(s).await;
        }
    }
}

enum SpawnError {
    Failed(String),
    Hung,
}

async fn spawn_id<T>(jobs: &Jobs, call: JobCall<T>) -> Result<JobId, SpawnError> {
    match tokio::time::timeout(CALL_TIMEOUT, jobs.spawn(call)).await {
        Ok(Ok(handle)) => Ok(handle.id()),
        Ok(Err(e)) => Err(SpawnError::Failed(e.to_string())),
        Err(_) => Err(SpawnError::Hung),
    }
}

fn seed() -> u64 {
    match std::env::var("LLMJOBS_STRESS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("LLMJOBS_STRESS_SEED={text:?} is not a u64: {e}")),
        Err(_) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("the clock is after 1970");
            now.as_secs() ^ u64::from(now.subsec_nanos()).rotate_left(32)
        }
    }
}

/// At most the first ten, one a line.
fn examples(violations: &[String]) -> String {
    let mut out: Vec<&str> = violations.iter().take(10).map(String::as_str).collect();
    let more = format!("... and {} more", violations.len().saturating_sub(10));
    if violations.len() > 10 {
        out.push(&more);
    }
    format!("\n  {}", out.join("\n  "))
}

fn describe(status: &JobStatus, owners: &HashMap<String, String>) -> String {
    let owner = status
        .owner
        .as_deref()
        .map(|o| owners.get(o).map_or(o, String::as_str));
    format!(
        "{} {} (attempts {}/{}, owner {}, cancel_requested {}, error {:?})",
        status.name,
        status.state,
        status.attempts,
        status.max_attempts,
        owner.unwrap_or("none"),
        status.cancel_requested,
        status.error
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spawns_cancels_retries_kills_and_restarts_keep_every_invariant() {
    let seed = seed();
    eprintln!("stress seed {seed}: rerun with LLMJOBS_STRESS_SEED={seed}");
    let db = TempDb::new();
    let log = db.file("stress.log");
    let watcher = db.watcher().await;
    let mut stress = Stress {
        seed,
        rng: Rng(seed),
        db,
        log,
        began: Instant::now(),
        trace: std::env::var_os("LLMJOBS_STRESS_TRACE").is_some(),
        watcher,
        live: Vec::new(),
        stopping: Vec::new(),
        opened: 0,
        owners: HashMap::new(),
        stops: 0,
        spawned: Vec::new(),
        cancels: Vec::new(),
        spawn_errors: Vec::new(),
        cancel_errors: Vec::new(),
        hangs: Vec::new(),
        counts: Counts::default(),
    };
    let first = stress.open_random_runtime().await;
    stress.live.push(first);

    // The random phase.
    stress.run_operations().await;
    let random_phase = stress.began.elapsed();

    // One fresh runtime brings every job to an end.
    let last = stress.open_runtime(FINAL_CONCURRENCY, ms(200)).await;
    let jobs = last.jobs;
    let drain_began = Instant::now();
    let rows = loop {
        let rows = tokio::time::timeout(CALL_TIMEOUT, jobs.list(JobFilter::new().limit(100_000)))
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: listing the jobs hung"))
            .unwrap_or_else(|e| panic!("seed {seed}: listing the jobs: {e}"));
        if rows.iter().all(|s| s.state.is_terminal()) || drain_began.elapsed() >= DRAIN_TIMEOUT {
            break rows;
        }
        tokio::time::sleep(ms(50)).await;
    };
    let drained_in = drain_began.elapsed();
    let all_terminal = rows.iter().all(|s| s.state.is_terminal());
    let by_id: HashMap<JobId, &JobStatus> = rows.iter().map(|s| (s.id, s)).collect();
    let plans: HashMap<JobId, &Spawned> = stress.spawned.iter().map(|s| (s.id, s)).collect();

    // Invariant 4 first, while the final runtime has nothing else to run: it can still run
    // FINAL_CONCURRENCY jobs at once, so no slot leaked.
    let mut slot_violations = Vec::new();
    let gate_began = Instant::now();
    if all_terminal {
        GATE_STARTED.store(0, Ordering::SeqCst);
        let mut handles = Vec::new();
        for _ in 0..FINAL_CONCURRENCY {
            let call = gate(FINAL_CONCURRENCY, GATE_PATIENCE.as_millis() as u64);
            match tokio::time::timeout(CALL_TIMEOUT, jobs.spawn(call)).await {
                Ok(Ok(handle)) => handles.push(handle),
                Ok(Err(e)) => slot_violations.push(format!("spawning a gate job: {e}")),
                Err(_) => slot_violations.push("spawning a gate job hung".into()),
            }
        }
        for handle in handles {
            let id = handle.id();
            match tokio::time::timeout(GATE_PATIENCE + ms(2000), handle.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => slot_violations.push(format!("gate job {id}: {e}")),
                Err(_) => slot_violations.push(format!(
                    "gate job {id} did not finish within {:?}",
                    GATE_PATIENCE + ms(2000)
                )),
            }
        }
    } else {
        slot_violations.push("not checked: some jobs never reached a terminal state".into());
    }
    let gate_took = gate_began.elapsed();
    let lines = read_lines(&stress.log);

    // 1. Every job, spawned here or found in the database, exists and is terminal.
    let mut not_terminal = Vec::new();
    for s in &stress.spawned {
        if !by_id.contains_key(&s.id) {
            not_terminal.push(format!(
                "job {} ({:?}, spawned via {}) is missing from the database",
                s.id, s.plan, s.via
            ));
        }
    }
    for status in rows.iter().filter(|s| !s.state.is_terminal()) {
        let plan = plans.get(&status.id).map(|s| format!("{:?}", s.plan));
        not_terminal.push(format!(
            "job {} ({}) is {} after {drained_in:?}: {}",
            status.id,
            plan.unwrap_or_else(|| "not tracked".into()),
            status.state,
            describe(status, &stress.owners)
        ));
    }

    // 2. A cancel that returned Cancelled or Requested is never lost: the job ends cancelled.
    //    One that said AlreadyFinished(state) saw a final state: the job still has it.
    //    A job cancelled while pending never starts another attempt afterwards.
    let mut starts: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["start", id, _attempt] = parts.as_slice() {
            starts.entry((*id).to_string()).or_default().push(i);
        }
    }
    let mut lost_cancels = Vec::new();
    let mut changed_finals = Vec::new();
    let mut started_after_cancel = Vec::new();
    for c in &stress.cancels {
        let Some(status) = by_id.get(&c.id) else {
            continue;
        };
        let seen = c.seen.as_ref().map_or_else(
            || "unknown".to_string(),
            |seen| describe(seen, &stress.owners),
        );
        let what = format!(
            "job {} ({:?}): cancel via {} returned {:?} at {:?} (just after: {seen})",
            c.id,
            plans.get(&c.id).map(|s| &s.plan),
            c.via,
            c.outcome,
            c.returned_at
        );
        match c.outcome {
            CancelOutcome::Cancelled | CancelOutcome::Requested
                if status.state != JobState::Cancelled =>
            {
                lost_cancels.push(format!(
                    "{what}, yet it ended {}",
                    describe(status, &stress.owners)
                ));
            }
            CancelOutcome::AlreadyFinished(state) if status.state != state => {
                changed_finals.push(format!(
                    "{what}, yet it ended {}",
                    describe(status, &stress.owners)
                ));
            }
            _ => {}
        }
        if c.outcome == CancelOutcome::Cancelled {
            let later = starts
                .get(&c.id.to_string())
                .map(|at| at.iter().filter(|&&i| i >= c.log_len).count())
                .unwrap_or(0);
            if later > 0 {
                started_after_cancel.push(format!(
                    "{what}, yet {later} attempt(s) started after it; it ended {}",
                    describe(status, &stress.owners)
                ));
            }
        }
    }

    // 3. No committed step ran again.
    let mut committed: HashSet<(&str, &str)> = HashSet::new();
    let mut reruns = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["committed", id, seq] => {
                committed.insert((*id, *seq));
            }
            ["run", id, seq] if committed.contains(&(*id, *seq)) => {
                reruns.push(format!(
                    "log line {}: `{line}` after the step was committed",
                    i + 1
                ));
            }
            _ => {}
        }
    }

    // 5. A completed flaky job made its K failing attempts and one more: K+1 attempts, plus at
    //    most one per kill or shutdown that could have cut an attempt short.
    let mut wrong_attempts = Vec::new();
    for s in &stress.spawned {
        let (Plan::Flaky { fail_first, .. }, Some(status)) = (&s.plan, by_id.get(&s.id)) else {
            continue;
        };
        if status.state != JobState::Completed {
            continue;
        }
        let interruptions = stress.stops - s.stops_before;
        let least = fail_first + 1;
        let most = (fail_first + 1).min(status.max_attempts) + interruptions;
        if status.attempts < least || status.attempts > most {
            wrong_attempts.push(format!(
                "flaky job {} (fail_first {fail_first}, {interruptions} kills/shutdowns in its \
                 life) completed after {} attempts, expected {least}..={most} (max_attempts {})",
                s.id, status.attempts, status.max_attempts
            ));
        }
    }

    // 6. No body here fails for good (a flaky one fails at most 3 times and has 3 retries), so a
    //    job may end `failed` only because kills or shutdowns cut its attempts short (a guard
    //    against jobs that crash their workers may fail such a job): it saw at least one stop,
    //    and at least one per attempt that did not fail on purpose.
    // 7. A completed job's body ran to its end.
    let ended: HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("end "))
        .collect();
    let mut failed = Vec::new();
    let mut completed_unended = Vec::new();
    for status in &rows {
        let plan = plans.get(&status.id).map(|s| format!("{:?}", s.plan));
        let plan = plan.unwrap_or_else(|| "not tracked".into());
        if status.state == JobState::Failed {
            let job = format!(
                "job {} ({plan}): {}",
                status.id,
                describe(status, &stress.owners)
            );
            let error = status.error.as_deref().unwrap_or("");
            match plans.get(&status.id) {
                None => failed.push(format!("{job}: a job this test did not spawn")),
                Some(_) if error.starts_with("planned failure") => {
                    failed.push(format!("{job}: failed for good with retries left"))
                }
                Some(s) => {
                    let interruptions = stress.stops - s.stops_before;
                    let on_purpose = match s.plan {
                        Plan::Flaky { fail_first, .. } => fail_first.min(status.attempts),
                        _ => 0,
                    };
                    if interruptions == 0 || status.attempts - on_purpose > interruptions {
                        failed.push(format!(
                            "{job}: only {interruptions} kills/shutdowns in its life could have \
                             cut its {} attempts not failing on purpose short",
                            status.attempts - on_purpose
                        ));
                    }
                }
            }
        }
        if status.state == JobState::Completed && !ended.contains(status.id.to_string().as_str()) {
            completed_unended.push(format!(
                "job {} ({plan}) completed but its body never logged `end`",
                status.id
            ));
        }
    }

    let mut finals: HashMap<JobState, usize> = HashMap::new();
    for status in &rows {
        *finals.entry(status.state).or_default() += 1;
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for c in &stress.cancels {
        *outcomes.entry(format!("{:?}", c.outcome)).or_default() += 1;
    }
    eprintln!(
        "stress seed {seed}: {:?} in {random_phase:?}; {} jobs spawned ({} spawn errors), {} \
         cancels returned {outcomes:?} ({} cancel errors); drained in {drained_in:?} to \
         {finals:?}; gate check {gate_took:?}; {} log lines",
        stress.counts,
        stress.spawned.len(),
        stress.spawn_errors.len(),
        stress.cancels.len(),
        stress.cancel_errors.len(),
        lines.len()
    );
    // How much the run exercised: jobs started more than once, steps cut short before their
    // commit (run again, legitimately), steps replayed from the journal.
    let mut starts_per_job: HashMap<&str, usize> = HashMap::new();
    let mut runs: HashMap<(&str, &str), usize> = HashMap::new();
    let mut commits: HashMap<(&str, &str), usize> = HashMap::new();
    for line in &lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["start", id, _] => *starts_per_job.entry(id).or_default() += 1,
            ["run", id, seq] => *runs.entry((id, seq)).or_default() += 1,
            ["committed", id, seq] => *commits.entry((id, seq)).or_default() += 1,
            _ => {}
        }
    }
    let restarted = starts_per_job.values().filter(|&&n| n > 1).count();
    let cut_short: usize = runs.values().map(|n| n - 1).sum();
    let replayed: usize = commits
        .iter()
        .map(|(key, n)| n.saturating_sub(runs.get(key).copied().unwrap_or(0).min(1)))
        .sum();
    eprintln!(
        "stress seed {seed}: {restarted} jobs started more than once, {cut_short} step runs \
         cut short before their commit, {replayed} steps replayed from the journal"
    );
    if !stress.spawn_errors.is_empty() {
        eprintln!("spawn errors:{}", examples(&stress.spawn_errors));
    }
    if !stress.cancel_errors.is_empty() {
        eprintln!("cancel errors:{}", examples(&stress.cancel_errors));
    }
    let checks: [(&str, &Vec<String>); 10] = [
        ("invariant 1: every job is terminal", &not_terminal),
        (
            "invariant 2: a cancel that returned Cancelled or Requested is never lost",
            &lost_cancels,
        ),
        (
            "invariant 2b: a job cancelled while pending never starts again",
            &started_after_cancel,
        ),
        (
            "invariant 2c: a job that was already finished keeps its state",
            &changed_finals,
        ),
        ("invariant 3: no committed step runs again", &reruns),
        ("invariant 4: no concurrency slot leaks", &slot_violations),
        (
            "invariant 5: a completed flaky job made K+1 attempts (more only if interrupted)",
            &wrong_attempts,
        ),
        (
            "invariant 6: a job fails only when kills or shutdowns cut its attempts short",
            &failed,
        ),
        (
            "invariant 7: a completed job's body ran to its end",
            &completed_unended,
        ),
        (
            "invariant 8: no spawn, cancel or shutdown hangs",
            &stress.hangs,
        ),
    ];
    for (name, violations) in &checks {
        if !violations.is_empty() {
            eprintln!(
                "seed {seed}: {name}: broken {} times:{}",
                violations.len(),
                examples(violations)
            );
        }
    }

    let final_shutdown = tokio::time::timeout(SHUTDOWN_TIMEOUT, jobs.shutdown()).await;
    let watcher_shutdown = tokio::time::timeout(SHUTDOWN_TIMEOUT, stress.watcher.shutdown()).await;

    let miscounted = counters_against_rows(&stress.db);
    assert!(
        miscounted.is_empty(),
        "seed {seed}: invariant 9: the counters (read by counts and limits) equal the rows \
         counted, through kills and restarts: {miscounted:?}"
    );
    for (name, violations) in &checks {
        assert!(
            violations.is_empty(),
            "seed {seed}: {name}: broken {} times (rerun with LLMJOBS_STRESS_SEED={seed}):{}",
            violations.len(),
            examples(violations)
        );
    }
    assert!(
        final_shutdown.is_ok() && watcher_shutdown.is_ok(),
        "seed {seed}: the final runtime or the watcher did not shut down within \
         {SHUTDOWN_TIMEOUT:?}"
    );
}

/// Where the maintained counters differ from counting the rows: (what, counter, rows).
fn counters_against_rows(db: &TempDb) -> Vec<(String, i64, i64)> {
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let pairs = |sql: &str| -> std::collections::BTreeMap<String, i64> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .filter(|(_, n)| *n != 0)
            .collect()
    };
    let counters = [
        pairs("SELECT name || '/' || status, n FROM llmjobs_counts"),
        pairs("SELECT 'key ' || concurrency_key, n FROM llmjobs_running_keys"),
    ];
    let rows = [
        pairs("SELECT name || '/' || status, count(*) FROM llmjobs_jobs GROUP BY name, status"),
        pairs(
            "SELECT 'key ' || concurrency_key, count(*) FROM llmjobs_jobs \
             WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key",
        ),
    ];
    let mut differences = Vec::new();
    for (counted, kept) in rows.iter().zip(&counters) {
        for what in counted.keys().chain(kept.keys()) {
            let (a, b) = (
                kept.get(what).copied().unwrap_or(0),
                counted.get(what).copied().unwrap_or(0),
            );
            if a != b && !differences.iter().any(|(w, _, _)| w == what) {
                differences.push((what.clone(), a, b));
            }
        }
    }
    differences
}
