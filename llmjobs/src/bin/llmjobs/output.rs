//! Formatting shared by the commands: times, durations, truncation, progress figures.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use llmjobs::JobStatus;
use serde_json::Value;

/// What a truncated value says about itself.
pub(crate) const FULL_HINT: &str = "… (truncated; --full shows all)";

/// `text` on one line, cut to `max` characters with an ellipsis; `None` if it fit.
pub(crate) fn clip(text: &str, max: usize) -> (String, bool) {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return (one_line, false);
    }
    let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    (format!("{cut}…"), true)
}

/// `text` cut to `max` characters with an ellipsis (one line).
pub(crate) fn short(text: &str, max: usize) -> String {
    clip(text, max).0
}

/// A value for a text view: whole with `full`, else its compact JSON cut at `max` characters
/// followed by the hint to `--full`.
pub(crate) fn value_text(value: &Value, full: bool, max: usize) -> String {
    if full {
        return match value {
            Value::String(s) => s.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
    }
    let compact = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (text, cut) = clip(&compact, max);
    if cut {
        format!("{}{FULL_HINT}", text.trim_end_matches('…'))
    } else {
        text
    }
}

/// A time as `2026-12-01 13:45:02 UTC`.
pub(crate) fn time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// A time as RFC 3339, for JSON.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A duration as people read it: `850ms`, `12.4s`, `3m05s`, `2h10m`, `3d04h`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// How long ago `t` was, or `-` for a time in the future.
pub(crate) fn ago(t: SystemTime, now: SystemTime) -> String {
    match now.duration_since(t) {
        Ok(d) => format!("{} ago", duration(d)),
        Err(e) => format!("in {}", duration(e.duration())),
    }
}

/// `later - earlier`, if both are known and in order.
pub(crate) fn between(earlier: Option<SystemTime>, later: Option<SystemTime>) -> Option<Duration> {
    later?.duration_since(earlier?).ok()
}

/// The figures of a job's latest progress report.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProgressFigures {
    pub(crate) fraction: Option<f64>,
    pub(crate) stage: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cost_usd: Option<f64>,
}

impl ProgressFigures {
    pub(crate) fn of(status: &JobStatus) -> ProgressFigures {
        let Some(p) = &status.progress else {
            return ProgressFigures::default();
        };
        let text = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_string);
        ProgressFigures {
            fraction: p.get("fraction").and_then(Value::as_f64),
            stage: text("stage"),
            message: text("message"),
            input_tokens: p.get("input_tokens").and_then(Value::as_u64),
            output_tokens: p.get("output_tokens").and_then(Value::as_u64),
            cost_usd: p.get("cost_usd").and_then(Value::as_f64),
        }
    }

    /// Tokens in and out, if the job reported any.
    pub(crate) fn tokens(&self) -> Option<u64> {
        match (self.input_tokens, self.output_tokens) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0) + o.unwrap_or(0)),
        }
    }

    /// The stage and the message, as far as the job reported them.
    pub(crate) fn doing(&self) -> Option<String> {
        match (&self.stage, &self.message) {
            (Some(stage), Some(message)) => Some(format!("{stage}: {message}")),
            (Some(text), None) | (None, Some(text)) => Some(text.clone()),
            (None, None) => None,
        }
    }
}

/// A cost in dollars: `$0.0123`.
pub(crate) fn dollars(cost: f64) -> String {
    if cost < 1.0 {
        format!("${cost:.4}")
    } else {
        format!("${cost:.2}")
    }
}

/// A count with thousands separators: `12,345`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes the command's output to stdout. When the reader has gone (a pipe to `head`), the
/// program ends at once with success: it has printed all anyone reads.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("llmjobs: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// The width text output fits: the terminal's, `COLUMNS`, or 120 when printing to a pipe.
pub(crate) fn width() -> usize {
    use std::io::IsTerminal;
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return columns;
    }
    if std::io::stdout().is_terminal()
        && let Ok((columns, _)) = ratatui::crossterm::terminal::size()
    {
        return usize::from(columns);
    }
    120
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_with_a_hint_to_full() {
        let long = Value::String("x".repeat(500));
        let text = value_text(&long, false, 40);
        assert!(text.ends_with(FULL_HINT), "{text}");
        assert!(text.chars().count() < 40 + FULL_HINT.chars().count());
        assert_eq!(value_text(&long, true, 40).len(), 500);
        assert_eq!(value_text(&Value::from(5), false, 40), "5");
    }

    #[test]
    fn durations_and_counts_read_easily() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(7 * 3600 + 60)), "7h01m");
        assert_eq!(duration(Duration::from_secs(15 * 60)), "15m");
        assert_eq!(duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
    }
}
