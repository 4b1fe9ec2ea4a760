//! The live view rendered into an 80×24 buffer (ratatui's test backend) from a real database,
//! and the keys applied to it.

use std::time::Duration;

use llmjobs::{JobContext, JobError, JobState, Jobs, Progress, llm_job};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{Pending, Snapshot, View};
use super::{Action, on_key, ui};

/// Reports progress with usage, then runs until cancelled.
#[llm_job]
async fn watch_crunch(ctx: JobContext, text: String) -> Result<(), JobError> {
    ctx.report(
        Progress::stage("crunching")
            .with_fraction(0.5)
            .with_tokens(1200, 34)
            .with_cost(Some(0.0123)),
    );
    let _ = text;
    ctx.cancelled().await;
    Ok(())
}

/// Fails at once.
#[llm_job]
async fn watch_broken() -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg("the model said no")))
}

/// A database with a failed job and a running one that has reported progress: the runtime that
/// runs them, the database's URL, and the running job's id.
async fn busy_database(dir: &tempfile::TempDir) -> (Jobs, String, llmjobs::JobId) {
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let jobs = Jobs::builder()
        .url(&url)
        .shutdown_grace(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    let broken = jobs.spawn(watch_broken()).await.unwrap();
    assert!(broken.wait().await.is_err());
    let running = jobs.spawn(watch_crunch("some text".into())).await.unwrap();
    // The progress reaches the row within a quarter of a second; wait for it, however long.
    while jobs.status(running.id()).await.unwrap().progress.is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (jobs, url, running.id())
}

/// The screen as text, one string per row.
fn render(snapshot: &Snapshot, view: &View) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal
        .draw(|frame| ui::draw(frame, snapshot, view))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect()
        })
        .collect()
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn screen_has(screen: &[String], text: &str) -> bool {
    screen.iter().any(|row| row.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_shows_counts_running_jobs_with_progress_and_failures_in_80x24() {
    let dir = tempfile::tempdir().unwrap();
    let (jobs, url, running) = busy_database(&dir).await;
    let db = llmjobs::Inspector::open(&url).await.unwrap();
    let view = View::new(&url, None);
    let snapshot = Snapshot::load(&db, &view).await.unwrap();
    let screen = render(&snapshot, &view);
    let all = screen.join("\n");
    assert_eq!(screen.len(), 24);
    assert!(screen_has(&screen, "llmjobs watch"), "{all}");
    assert!(
        screen_has(&screen, "jobs: 0 pending, 1 running, 1 failed"),
        "{all}"
    );
    // The counts by name.
    assert!(screen_has(&screen, "watch_broken"), "{all}");
    // The running job: its id, progress bar, stage, tokens and cost.
    let row = screen
        .iter()
        .find(|row| row.contains(&running.to_string()[29..]))
        .unwrap_or_else(|| panic!("no row for the running job:\n{all}"));
    for part in [
        "watch_crunch",
        "█████░░░░░  50%",
        "crunching",
        "1,234",
        "$0.0123",
    ] {
        assert!(row.contains(part), "{part} missing from {row:?}\n{all}");
    }
    // The failure, with its error.
    assert!(screen_has(&screen, "the model said no"), "{all}");
    assert!(screen_has(&screen, "q quit"), "{all}");
    jobs.cancel(running).await.unwrap();
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_filter_open_a_job_and_confirm_cancel_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (jobs, url, running) = busy_database(&dir).await;
    let db = llmjobs::Inspector::open(&url).await.unwrap();
    let mut view = View::new(&url, None);
    let mut snapshot = Snapshot::load(&db, &view).await.unwrap();
    assert_eq!(snapshot.jobs.len(), 1);

    // Cancel asks first; anything but `y` does nothing.
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Char('c'))),
        Action::Nothing
    );
    assert_eq!(view.confirm, Some(Pending::Cancel(running)));
    assert!(render(&snapshot, &view).join("\n").contains("y/n"));
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Char('n'))),
        Action::Nothing
    );
    assert_eq!(view.confirm, None);
    on_key(&mut view, &snapshot, key(KeyCode::Char('c')));
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Char('y'))),
        Action::Cancel(running)
    );

    // Enter opens the selected job in full; Esc goes back.
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Enter)),
        Action::Refresh
    );
    assert_eq!(view.open, Some(running));
    snapshot = Snapshot::load(&db, &view).await.unwrap();
    let screen = render(&snapshot, &view).join("\n");
    assert!(screen.contains("arguments"), "{screen}");
    assert!(screen.contains("some text"), "{screen}");
    assert!(screen.contains("[crunching]"), "{screen}");
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Esc)),
        Action::Refresh
    );
    assert_eq!(view.open, None);

    // `s` moves the list to the next state; `/` types a name filter.
    on_key(&mut view, &snapshot, key(KeyCode::Char('s')));
    assert_eq!(view.state, Some(JobState::Pending));
    on_key(&mut view, &snapshot, key(KeyCode::Char('s')));
    assert_eq!(view.state, Some(JobState::Failed));
    on_key(&mut view, &snapshot, key(KeyCode::Char('/')));
    for c in "watch_broken".chars() {
        on_key(&mut view, &snapshot, key(KeyCode::Char(c)));
    }
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Enter)),
        Action::Refresh
    );
    assert_eq!(view.name.as_deref(), Some("watch_broken"));
    snapshot = Snapshot::load(&db, &view).await.unwrap();
    assert_eq!(snapshot.jobs.len(), 1);
    assert_eq!(snapshot.jobs[0].name, "watch_broken");
    let screen = render(&snapshot, &view).join("\n");
    assert!(screen.contains("failed, name watch_broken (1)"), "{screen}");
    assert!(!screen.contains("watch_crunch"), "{screen}");
    on_key(&mut view, &snapshot, key(KeyCode::Char('r')));
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Char('y'))),
        Action::Retry(snapshot.jobs[0].id)
    );
    assert_eq!(
        on_key(&mut view, &snapshot, key(KeyCode::Char('q'))),
        Action::Quit
    );

    jobs.cancel(running).await.unwrap();
    jobs.shutdown().await;
}
