//! `llmjobs watch`: a live full-screen view of the jobs, refreshed in place.
//!
//! The database is read through [`llmjobs::Inspector`] (read-only); cancelling or retrying from
//! the view opens a runtime that runs no jobs, the first time it is asked to.

use std::time::{Duration, Instant};

use llmjobs::{CancelOutcome, Inspector, JobId, Jobs};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::args::WatchArgs;
use crate::{Failure, Outcome};

mod model;
#[cfg(test)]
mod tests;
mod ui;

use model::{Pending, Snapshot, View};

/// What a key asks the loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// Read the database again now (a filter or the opened job changed).
    Refresh,
    Cancel(JobId),
    Retry(JobId),
    Quit,
}

pub(crate) fn run(url: &str, args: WatchArgs, rt: &tokio::runtime::Runtime) -> Outcome {
    let db = rt.block_on(Inspector::open(url))?;
    let mut view = View::new(url, args.name);
    let mut snapshot = rt.block_on(Snapshot::load(&db, &view))?;
    let interval = Duration::from_millis(args.interval.max(100));
    let mut terminal = ratatui::try_init()?;
    let mut writer: Option<Jobs> = None;
    let result = (|| -> Outcome {
        let mut read_at = Instant::now();
        loop {
            view.clamp(&snapshot);
            terminal.draw(|frame| ui::draw(frame, &snapshot, &view))?;
            let wait = interval.saturating_sub(read_at.elapsed());
            let mut action = Action::Nothing;
            if event::poll(wait)?
                && let Event::Key(key) = event::read()?
                && key.kind != KeyEventKind::Release
            {
                action = on_key(&mut view, &snapshot, key);
            }
            match action {
                Action::Quit => return Ok(()),
                Action::Cancel(id) => {
                    view.message = Some(rt.block_on(cancel(&mut writer, url, id)));
                }
                Action::Retry(id) => {
                    view.message = Some(rt.block_on(retry(&mut writer, url, id)));
                }
                Action::Nothing if read_at.elapsed() < interval => continue,
                Action::Nothing | Action::Refresh => {}
            }
            // A failed read keeps the last snapshot on screen and says why.
            match rt.block_on(Snapshot::load(&db, &view)) {
                Ok(fresh) => snapshot = fresh,
                Err(e) => view.message = Some(format!("cannot read the database: {e}")),
            }
            read_at = Instant::now();
        }
    })();
    let restored = ratatui::try_restore();
    if let Some(jobs) = writer {
        rt.block_on(jobs.shutdown());
    }
    result?;
    restored.map_err(Failure::from)
}

/// Applies a key to the view.
pub(crate) fn on_key(view: &mut View, snapshot: &Snapshot, key: KeyEvent) -> Action {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if let Some(typed) = &mut view.typing {
        match key.code {
            KeyCode::Enter => {
                let name = typed.trim().to_string();
                view.name = (!name.is_empty()).then_some(name);
                view.typing = None;
                view.selected = 0;
                return Action::Refresh;
            }
            KeyCode::Esc => view.typing = None,
            KeyCode::Backspace => {
                typed.pop();
            }
            KeyCode::Char(c) => typed.push(c),
            _ => {}
        }
        return Action::Nothing;
    }
    if let Some(pending) = view.confirm.take() {
        return match key.code {
            KeyCode::Char('y' | 'Y') => match pending {
                Pending::Cancel(id) => Action::Cancel(id),
                Pending::Retry(id) => Action::Retry(id),
            },
            _ => {
                view.message = Some("nothing done".into());
                Action::Nothing
            }
        };
    }
    view.message = None;
    let opened = view.open;
    let target = opened.or_else(|| view.selected_job(snapshot).map(|job| job.id));
    match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Esc if opened.is_some() => {
            view.open = None;
            Action::Refresh
        }
        KeyCode::Esc => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') if opened.is_some() => {
            view.scroll = view.scroll.saturating_sub(1);
            Action::Nothing
        }
        KeyCode::Down | KeyCode::Char('j') if opened.is_some() => {
            view.scroll = view.scroll.saturating_add(1);
            Action::Nothing
        }
        KeyCode::Up | KeyCode::Char('k') => {
            view.selected = view.selected.saturating_sub(1);
            Action::Nothing
        }
        KeyCode::Down | KeyCode::Char('j') => {
            view.selected = (view.selected + 1).min(snapshot.jobs.len().saturating_sub(1));
            Action::Nothing
        }
        KeyCode::Enter if opened.is_some() => {
            view.open = None;
            Action::Refresh
        }
        KeyCode::Enter => match target {
            Some(id) => {
                view.open = Some(id);
                view.scroll = 0;
                Action::Refresh
            }
            None => Action::Nothing,
        },
        KeyCode::Char('s') => {
            view.cycle_state();
            Action::Refresh
        }
        KeyCode::Char('/') => {
            view.typing = Some(view.name.clone().unwrap_or_default());
            Action::Nothing
        }
        KeyCode::Char('c') => {
            view.confirm = target.map(Pending::Cancel);
            Action::Nothing
        }
        KeyCode::Char('r') => {
            view.confirm = target.map(Pending::Retry);
            Action::Nothing
        }
        _ => Action::Nothing,
    }
}

/// The runtime that changes jobs, opened the first time one is changed.
async fn writer<'a>(writer: &'a mut Option<Jobs>, url: &str) -> Result<&'a Jobs, String> {
    if writer.is_none() {
        let jobs = crate::change::open_for_changes(url)
            .await
            .map_err(|f| f.message.unwrap_or_default())?;
        *writer = Some(jobs);
    }
    Ok(writer.as_ref().expect("opened above"))
}

async fn cancel(slot: &mut Option<Jobs>, url: &str, id: JobId) -> String {
    let jobs = match writer(slot, url).await {
        Ok(jobs) => jobs,
        Err(e) => return e,
    };
    match jobs.cancel(id).await {
        Ok(CancelOutcome::Cancelled) => format!("{id}: cancelled"),
        Ok(CancelOutcome::Requested) => format!("{id}: cancel requested"),
        Ok(CancelOutcome::AlreadyFinished(state)) => format!("{id}: already {state}"),
        Ok(_) => format!("{id}: done"),
        Err(e) => e.to_string(),
    }
}

async fn retry(slot: &mut Option<Jobs>, url: &str, id: JobId) -> String {
    let jobs = match writer(slot, url).await {
        Ok(jobs) => jobs,
        Err(e) => return e,
    };
    match jobs.retry(id).await {
        Ok(()) => format!("{id}: pending again"),
        Err(e) => e.to_string(),
    }
}
