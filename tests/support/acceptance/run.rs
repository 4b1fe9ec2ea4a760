//! Running the cases as durable `llm_call` jobs and judging what came of each.

use std::fmt;
use std::time::Duration;

use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{ChatResponse, LlmClient, llm_call};
use llmjobs::{Error, JobHandle, Jobs, Outcome as Waited, Progress};
use serde::Deserialize;

use super::script::{requests_for, script_mock};
use super::{Case, Situation};

/// What came of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Completed with the first answer, on the first try.
    Completed,
    /// Completed after an HTTP retry or a feedback retry.
    Retried,
    /// No answer passed validation: failed, marked for human review.
    NeedsReview,
    /// Failed for another reason.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Completed => "completed",
            Outcome::Retried => "retried",
            Outcome::NeedsReview => "needs-review",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        })
    }
}

/// What came of one case, and how it differs from what was expected.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// What came of it.
    pub outcome: Outcome,
    /// How many answers the call produced, when known.
    pub answers: Option<u32>,
    /// The last escalation stage reached, when known.
    pub stage: Option<String>,
    /// Prompt tokens of every call it made.
    pub tokens_in: u64,
    /// Answer tokens of every call it made.
    pub tokens_out: u64,
    /// The job's error, if it failed.
    pub error: Option<String>,
    /// Whether the caller's wait ended with a handle (only for cases that wait).
    pub handle_at_wait: Option<bool>,
    /// How many of its requests reached the mock.
    pub requests: usize,
    /// How it differs from the expected outcome; empty when it is as expected.
    pub mismatches: Vec<String>,
}

impl CaseResult {
    /// Whether everything expected of the case came true.
    pub fn as_expected(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// One line: the case, expected and actual outcome, answers, stage, tokens, verdict.
    pub fn line(&self) -> String {
        let answers = self.answers.map_or("-".into(), |a| a.to_string());
        let mut line = format!(
            "{:<56} {:>12} {:>12} {:>7} {:<13} {:>6}  {}",
            self.case.id,
            self.case.expect.outcome.to_string(),
            self.outcome.to_string(),
            answers,
            self.stage.as_deref().unwrap_or("-"),
            self.tokens_in + self.tokens_out,
            if self.as_expected() {
                "ok"
            } else {
                "NOT AS EXPECTED"
            },
        );
        if self.handle_at_wait == Some(true) {
            line.push_str(" (handle at the wait)");
        }
        for mismatch in &self.mismatches {
            line.push_str(&format!("\n    {mismatch}"));
        }
        line
    }

    /// The header of [`CaseResult::line`]s.
    pub fn header() -> String {
        format!(
            "{:<56} {:>12} {:>12} {:>7} {:<13} {:>6}",
            "case", "expected", "actual", "answers", "stage", "tokens"
        )
    }
}

/// A run under way: every case spawned.
pub struct Run {
    cases: Vec<(Case, JobHandle<ChatResponse>, Option<bool>)>,
    /// How many calls went straight to the background.
    pub background: usize,
}

/// Scripts the mock for every case and spawns each as an `llm_call` job. A case that waits
/// (`slow`) is waited for here, up to its wait.
pub async fn run_cases(
    jobs: &Jobs,
    mock: &MockLlmServer,
    client: &LlmClient,
    cases: Vec<Case>,
) -> llmjobs::Result<Run> {
    for case in &cases {
        script_mock(mock, client, case);
    }
    let mut run = Run {
        cases: Vec::with_capacity(cases.len()),
        background: 0,
    };
    for case in cases {
        let call = llm_call(case.request.clone());
        if call.is_long_running() {
            run.background += 1;
        }
        let handle = jobs.spawn(call).await?;
        // A caller that waits only so long, right after spawning, as `run_with_timeout` does.
        let wait = case.situations.iter().find_map(|s| match s {
            Situation::Slow { wait_ms, .. } => Some(Duration::from_millis(*wait_ms)),
            _ => None,
        });
        let handle_at_wait = match wait {
            Some(wait) => Some(matches!(
                handle.clone().wait_timeout(wait).await?,
                Waited::Pending(_)
            )),
            None => None,
        };
        run.cases.push((case, handle, handle_at_wait));
    }
    Ok(run)
}

impl Run {
    /// Waits for every case and judges it.
    pub async fn finish(
        self,
        mock: &MockLlmServer,
        client: &LlmClient,
    ) -> llmjobs::Result<Vec<CaseResult>> {
        let mut results = Vec::with_capacity(self.cases.len());
        for (case, handle, handle_at_wait) in self.cases {
            let waited = handle.clone().wait().await;
            let status = handle.status().await?;
            let progress: Option<Progress> =
                status.progress.and_then(|p| serde_json::from_value(p).ok());
            let mut result = CaseResult {
                outcome: Outcome::Failed,
                answers: None,
                stage: progress.as_ref().and_then(|p| p.stage.clone()),
                tokens_in: progress.as_ref().and_then(|p| p.input_tokens).unwrap_or(0),
                tokens_out: progress.as_ref().and_then(|p| p.output_tokens).unwrap_or(0),
                error: None,
                handle_at_wait,
                requests: requests_for(mock, client, &case),
                mismatches: Vec::new(),
                case,
            };
            match waited {
                Ok(response) => {
                    result.outcome = if response.attempts > 1 || response.retries > 0 {
                        Outcome::Retried
                    } else {
                        Outcome::Completed
                    };
                    result.answers = Some(response.attempts);
                    result.stage = Some(response.stage.name().to_string());
                    result.tokens_in = response.total_usage.input_tokens;
                    result.tokens_out = response.total_usage.output_tokens;
                }
                Err(Error::NeedsReview { error, .. }) => {
                    result.outcome = Outcome::NeedsReview;
                    result.answers = progress
                        .as_ref()
                        .and_then(|p| p.message.as_deref())
                        .and_then(answers_in);
                    result.error = Some(error);
                }
                Err(Error::JobCancelled { .. }) => result.outcome = Outcome::Cancelled,
                Err(e) => result.error = Some(e.to_string()),
            }
            result.mismatches = mismatches(&result);
            results.push(result);
        }
        Ok(results)
    }
}

/// The answer count in a needs-review progress message ("… after 3 attempt(s): …").
fn answers_in(message: &str) -> Option<u32> {
    let rest = &message[message.find("after ")? + "after ".len()..];
    rest.split(' ').next()?.parse().ok()
}

fn mismatches(r: &CaseResult) -> Vec<String> {
    let e = &r.case.expect;
    let mut out = Vec::new();
    if r.outcome != e.outcome {
        out.push(format!(
            "expected {}, got {}{}",
            e.outcome,
            r.outcome,
            r.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    if let Some(answers) = e.answers
        && r.answers != Some(answers)
    {
        out.push(format!("expected {answers} answer(s), got {:?}", r.answers));
    }
    if let Some(stage) = &e.stage
        && r.stage.as_ref() != Some(stage)
    {
        out.push(format!("expected stage {stage}, got {:?}", r.stage));
    }
    if let Some(text) = &e.error
        && !r.error.as_deref().is_some_and(|error| error.contains(text))
    {
        out.push(format!(
            "expected an error containing {text:?}, got {:?}",
            r.error
        ));
    }
    if let Some(at_wait) = e.handle_at_wait
        && r.handle_at_wait != Some(at_wait)
    {
        out.push(format!(
            "expected the wait to end with {}, got {:?}",
            if at_wait { "a handle" } else { "the answer" },
            r.handle_at_wait
        ));
    }
    if let Some(requests) = e.requests
        && r.requests != requests
    {
        out.push(format!(
            "expected {requests} request(s) to the mock, got {}",
            r.requests
        ));
    }
    out
}

/// The final verdict: `N as expected, M not`.
pub fn verdict(results: &[CaseResult]) -> String {
    let ok = results.iter().filter(|r| r.as_expected()).count();
    format!("{ok} as expected, {} not", results.len() - ok)
}
