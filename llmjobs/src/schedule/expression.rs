//! Cron expressions read in a time zone: parsing, with errors that say what to write, and the
//! ticks that fall between two instants. Instants are Unix milliseconds, as in the database.

use std::str::FromStr;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;

/// A cron expression (with seconds) and the time zone its fields are read in.
#[derive(Debug, Clone)]
pub(crate) struct Cron {
    schedule: cron::Schedule,
    timezone: Tz,
}

impl Cron {
    /// Parses `expression` in `timezone`; the error says what is wrong and what to write.
    pub(crate) fn parse(expression: &str, timezone: &str) -> Result<Cron, String> {
        Ok(Cron {
            schedule: parse_expression(expression)?,
            timezone: parse_timezone(timezone)?,
        })
    }

    /// The first tick after `after`.
    pub(crate) fn next_after(&self, after: i64) -> Option<i64> {
        self.schedule
            .after(&self.at(after)?)
            .next()
            .map(|t| t.timestamp_millis())
    }

    /// The ticks in `(after, until]`, oldest first, at most `limit` of them.
    pub(crate) fn between(&self, after: i64, until: i64, limit: usize) -> Vec<i64> {
        let Some(start) = self.at(after) else {
            return Vec::new();
        };
        self.schedule
            .after(&start)
            .map(|t| t.timestamp_millis())
            .take_while(|&t| t <= until)
            .take(limit)
            .collect()
    }

    /// The latest ticks in `(after, until]`, at most `limit` of them, oldest first. Walks back
    /// from `until`, so a long stretch costs only the ticks it returns.
    pub(crate) fn latest(&self, after: i64, until: i64, limit: usize) -> Vec<i64> {
        // The iterator walks back from strictly before its start: start just past `until`.
        let Some(start) = self.at(until.saturating_add(1)) else {
            return Vec::new();
        };
        let mut ticks: Vec<i64> = self
            .schedule
            .after(&start)
            .rev()
            .map(|t| t.timestamp_millis())
            .take_while(|&t| t > after)
            .take(limit)
            .collect();
        ticks.reverse();
        ticks
    }

    fn at(&self, ms: i64) -> Option<DateTime<Tz>> {
        self.timezone.timestamp_millis_opt(ms).single()
    }
}

/// Parses a cron expression with seconds: `sec min hour day-of-month month day-of-week [year]`,
/// or a shorthand such as `@daily`.
pub(crate) fn parse_expression(expression: &str) -> Result<cron::Schedule, String> {
    let fields = expression.split_whitespace().count();
    if !expression.trim_start().starts_with('@') && !(6..=7).contains(&fields) {
        let hint = if fields == 5 {
            "; llmjobs reads seconds first, so a 5-field crontab line needs a leading `0`"
        } else {
            ""
        };
        return Err(format!(
            "cron expression {expression:?} has {fields} fields; write 6 or 7: second, minute, \
             hour, day of month, month, day of week and an optional year, as in \
             \"0 */5 * * * *\"{hint}"
        ));
    }
    cron::Schedule::from_str(expression)
        .map_err(|e| describe_parse_error(expression, &e.to_string()))
}

/// The cron crate's message shows the expression, a caret under the fault and, sometimes, a
/// sentence: keep the sentence and say where the caret was.
fn describe_parse_error(expression: &str, message: &str) -> String {
    let lines: Vec<&str> = message.lines().collect();
    let column = lines
        .get(1)
        .and_then(|caret| caret.find('^'))
        .map(|c| c + 1);
    let reason = lines
        .get(2..)
        .map(|rest| rest.join(" ").trim().to_string())
        .filter(|reason| !reason.is_empty());
    let at = column
        .map(|c| format!(" at column {c}"))
        .unwrap_or_default();
    match reason {
        Some(reason) => format!("invalid cron expression {expression:?}{at}: {reason}"),
        None => format!("invalid cron expression {expression:?}: unexpected text{at}"),
    }
}

/// Parses an IANA time zone name (`"Europe/Paris"`, `"UTC"`).
pub(crate) fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "unknown time zone {name:?}: use an IANA name such as \"Europe/Paris\", \
             \"America/New_York\" or \"UTC\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;

    fn every_second() -> Cron {
        Cron::parse("* * * * * *", "UTC").unwrap()
    }

    #[test]
    fn the_next_tick_is_strictly_after() {
        let cron = every_second();
        assert_eq!(cron.next_after(10 * SECOND), Some(11 * SECOND));
        assert_eq!(cron.next_after(10 * SECOND + 500), Some(11 * SECOND));
    }

    #[test]
    fn ticks_between_exclude_the_start_and_include_the_end() {
        let cron = every_second();
        assert_eq!(
            cron.between(10 * SECOND, 13 * SECOND, 100),
            [11 * SECOND, 12 * SECOND, 13 * SECOND]
        );
        assert_eq!(cron.between(10 * SECOND, 13 * SECOND, 2).len(), 2);
        assert!(cron.between(10 * SECOND, 10 * SECOND + 999, 100).is_empty());
    }

    #[test]
    fn the_latest_ticks_are_the_last_ones_before_the_end() {
        let cron = every_second();
        assert_eq!(
            cron.latest(10 * SECOND, 20 * SECOND + 500, 2),
            [19 * SECOND, 20 * SECOND]
        );
        assert_eq!(
            cron.latest(17 * SECOND, 20 * SECOND, 10),
            [18 * SECOND, 19 * SECOND, 20 * SECOND]
        );
        assert!(cron.latest(20 * SECOND, 20 * SECOND + 999, 10).is_empty());
    }

    #[test]
    fn fields_are_read_in_the_time_zone() {
        // 09:00 in Paris is 08:00 UTC in winter (2026-01-15).
        let cron = Cron::parse("0 0 9 * * *", "Europe/Paris").unwrap();
        let midnight_utc = 1_768_435_200 * SECOND;
        assert_eq!(
            cron.next_after(midnight_utc),
            Some(midnight_utc + 8 * 3600 * SECOND)
        );
    }

    #[test]
    fn a_crontab_line_without_seconds_is_explained() {
        let message = parse_expression("*/5 * * * *").unwrap_err();
        assert!(message.contains("has 5 fields"), "{message}");
        assert!(message.contains("leading `0`"), "{message}");
    }

    #[test]
    fn a_bad_field_names_the_expression_and_the_fault() {
        let message = parse_expression("0 61 * * * *").unwrap_err();
        assert!(message.contains("\"0 61 * * * *\""), "{message}");
        assert!(message.contains("Minutes"), "{message}");
        assert!(message.contains("column 3"), "{message}");
    }

    #[test]
    fn shorthands_are_accepted() {
        assert!(parse_expression("@daily").is_ok());
    }

    #[test]
    fn an_unknown_time_zone_is_named() {
        let message = parse_timezone("Europe/Pariss").unwrap_err();
        assert!(message.contains("\"Europe/Pariss\""), "{message}");
        assert!(parse_timezone("UTC").is_ok());
    }
}
