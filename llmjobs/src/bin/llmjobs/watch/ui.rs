//! Drawing the live view: a pure function of the snapshot and the view, so that tests render it
//! into a fixed-size buffer.

use std::time::SystemTime;

use llmjobs::{JobCounts, JobState, JobStatus};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, HighlightSpacing, Paragraph, Row, Table, TableState};

use super::model::{Pending, Snapshot, View};
use crate::output::{ProgressFigures, between, count, dollars, duration, short};

/// Rows of the failures panel, borders included.
const FAILURES_HEIGHT: u16 = 5;

pub(crate) fn draw(frame: &mut Frame<'_>, snapshot: &Snapshot, view: &View) {
    if let Some((record, steps)) = &snapshot.detail {
        // An opened job has the screen to itself, between the title and the footer.
        let [title, middle, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        draw_title(frame, title, snapshot, view);
        let width = usize::from(middle.width.saturating_sub(2));
        let text = crate::show::render(record, steps, snapshot.at, width, false);
        let lines: Vec<Line<'_>> = text.lines().map(|l| Line::raw(l.to_string())).collect();
        let block = Block::default()
            .borders(Borders::ALL)
            .title(" job (esc: back, ↑↓ scroll, c cancel, r retry) ");
        frame.render_widget(
            Paragraph::new(lines).block(block).scroll((view.scroll, 0)),
            middle,
        );
        draw_footer(frame, footer, view);
        return;
    }
    let names = snapshot.by_name.len().clamp(1, 6) as u16;
    let [title, counts, middle, failures, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(names + 3),
        Constraint::Min(4),
        Constraint::Length(FAILURES_HEIGHT),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_title(frame, title, snapshot, view);
    draw_counts(frame, counts, snapshot);
    draw_jobs(frame, middle, snapshot, view);
    draw_failures(frame, failures, snapshot);
    draw_footer(frame, footer, view);
}

fn draw_title(frame: &mut Frame<'_>, area: Rect, snapshot: &Snapshot, view: &View) {
    let clock = chrono::DateTime::<chrono::Utc>::from(snapshot.at).format("%H:%M:%S UTC");
    let room = usize::from(area.width).saturating_sub(30);
    let line = Line::from(vec![
        Span::styled("llmjobs watch ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(short(&view.url, room)),
        Span::raw(format!("  {clock}")),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_counts(frame: &mut Frame<'_>, area: Rect, snapshot: &Snapshot) {
    let header = Row::new(["NAME", "PEND", "RUN", "DONE", "FAILED", "CANCEL"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let cells = |name: &str, c: &JobCounts| {
        Row::new(vec![
            short(name, 30),
            count(c.pending),
            count(c.running),
            count(c.completed),
            count(c.failed),
            count(c.cancelled),
        ])
    };
    let mut rows: Vec<Row<'_>> = Vec::new();
    let shown = usize::from(area.height.saturating_sub(3));
    let mut total = JobCounts::default();
    for c in snapshot.by_name.values() {
        total.pending += c.pending;
        total.running += c.running;
        total.completed += c.completed;
        total.failed += c.failed;
        total.cancelled += c.cancelled;
    }
    if snapshot.by_name.len() > shown {
        // Too many names for the panel: the busiest, then the rest summed.
        rows.extend(
            busiest(snapshot)
                .take(shown.saturating_sub(1))
                .map(|(name, c)| cells(name, c)),
        );
        rows.push(cells("(all)", &total));
    } else {
        rows.extend(snapshot.by_name.iter().map(|(name, c)| cells(name, c)));
    }
    let widths = [
        Constraint::Min(12),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let title = format!(
        " jobs: {} pending, {} running, {} failed ",
        count(total.pending),
        count(total.running),
        count(total.failed)
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(table, area);
}

/// Names by unfinished jobs, then by total.
fn busiest(snapshot: &Snapshot) -> impl Iterator<Item = (&String, &JobCounts)> {
    let mut names: Vec<(&String, &JobCounts)> = snapshot.by_name.iter().collect();
    names.sort_by_key(|(_, c)| std::cmp::Reverse((c.unfinished(), c.total())));
    names.into_iter()
}

/// The end of a job's id: ids start with their creation time, so jobs spawned together share
/// their first characters but not their last.
fn id_tail(job: &JobStatus) -> String {
    let id = job.id.to_string();
    format!("…{}", &id[id.len() - 7..])
}

/// `[████░░░░░░]` for a fraction, ten cells wide.
fn bar(fraction: Option<f64>) -> String {
    match fraction {
        Some(f) => {
            let filled = (f.clamp(0.0, 1.0) * 10.0).round() as usize;
            format!(
                "{}{} {:>3.0}%",
                "█".repeat(filled),
                "░".repeat(10 - filled),
                f * 100.0
            )
        }
        None => " ".repeat(15),
    }
}

/// The elapsed time a row shows: running for, waited for, or ran for.
fn elapsed(job: &JobStatus, now: SystemTime) -> String {
    let d = match job.state {
        JobState::Running => between(job.started_at, Some(now)),
        JobState::Pending => between(Some(job.created_at), Some(now)),
        _ => between(job.started_at, job.completed_at),
    };
    d.map(duration).unwrap_or_default()
}

fn draw_jobs(frame: &mut Frame<'_>, area: Rect, snapshot: &Snapshot, view: &View) {
    let header = Row::new(["ID", "NAME", "PROGRESS", "STAGE", "TIME", "TOKENS", "COST"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = snapshot.jobs.iter().map(|job| {
        let p = ProgressFigures::of(job);
        let stage = match (&job.error, job.state) {
            (Some(error), _) => error.clone(),
            (None, JobState::Running | JobState::Pending) => p.doing().unwrap_or_default(),
            (None, state) => state.to_string(),
        };
        Row::new(vec![
            id_tail(job),
            short(&job.name, 16),
            bar(p.fraction),
            stage,
            elapsed(job, snapshot.at),
            p.tokens().map(count).unwrap_or_default(),
            p.cost_usd.map(dollars).unwrap_or_default(),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Length(15),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    let title = format!(
        " {} ({}) ",
        view.filter_label(),
        if snapshot.jobs.len() >= 200 {
            "200+".to_string()
        } else {
            snapshot.jobs.len().to_string()
        }
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(Some(view.selected));
    frame.render_stateful_widget(table, area, &mut state);
    if snapshot.jobs.is_empty() {
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1,
        };
        frame.render_widget(Paragraph::new("no jobs here; s: another state"), inner);
    }
}

fn draw_failures(frame: &mut Frame<'_>, area: Rect, snapshot: &Snapshot) {
    let rows = snapshot.failures.iter().map(|job| {
        let when = job
            .completed_at
            .map(|t| crate::output::ago(t, snapshot.at))
            .unwrap_or_default();
        Row::new(vec![
            id_tail(job),
            job.name.clone(),
            when,
            job.error.clone().unwrap_or_default(),
        ])
        .style(Style::new().fg(Color::Red))
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Length(12),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" newest failures "),
    );
    frame.render_widget(table, area);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, view: &View) {
    let text = if let Some(typed) = &view.typing {
        format!("name filter: {typed}_  (enter: apply, empty: all names, esc: back)")
    } else if let Some(pending) = view.confirm {
        match pending {
            Pending::Cancel(id) => format!("cancel job {id}? y/n"),
            Pending::Retry(id) => format!("retry job {id}? y/n"),
        }
    } else if let Some(message) = &view.message {
        message.clone()
    } else {
        "q quit  ↑↓ select  enter open  s state  / name  c cancel  r retry".to_string()
    };
    frame.render_widget(
        Paragraph::new(short(&text, usize::from(area.width))).style(Style::new().fg(Color::Cyan)),
        area,
    );
}
