//! The retry layer: HTTP retries with back-off, validation with feedback, and the hook that lets
//! a job journal each attempt.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use super::escalation::Escalation;
use super::{ChatRequest, ChatResponse, LlmClient, LlmError, Stage, StreamEvent, Usage};

/// How HTTP tries are retried: exponential back-off with jitter, honouring the provider's
/// `Retry-After`. Defaults: 4 retries, 1 s base, ×2, 60 s cap.
///
/// Each delay is drawn uniformly from the upper half of the exponential step (`base × factorⁿ`,
/// capped), so concurrent callers spread out. When the provider says how long to wait
/// (`retry-after-ms`, `Retry-After`, `x-ratelimit-reset-*`), that is the delay (capped by
/// [`RetryPolicy::max_retry_after`]), plus a little jitter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first try (so `max_retries + 1` tries in all).
    pub max_retries: u32,
    /// The first back-off step.
    pub base_delay: Duration,
    /// The factor each step grows by.
    pub factor: f64,
    /// The longest back-off step.
    pub max_delay: Duration,
    /// The longest wait a provider's `Retry-After` may impose; longer requests are cut to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            base_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The default policy.
    pub fn new() -> Self {
        RetryPolicy::default()
    }

    /// A policy that never retries.
    pub fn no_retries() -> Self {
        RetryPolicy::default().max_retries(0)
    }

    /// Sets the number of retries after the first try.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the first back-off step.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Sets the factor each step grows by (at least 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// Sets the longest back-off step.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the longest wait a provider's `Retry-After` may impose.
    pub fn max_retry_after(mut self, delay: Duration) -> Self {
        self.max_retry_after = delay;
        self
    }

    /// This policy with a request's `retry_config` delays (seconds) applied.
    pub fn for_request(&self, req: &ChatRequest) -> RetryPolicy {
        let mut policy = self.clone();
        if let Some(config) = &req.retry_config {
            let seconds = |s: f64| Duration::try_from_secs_f64(s.max(0.0)).ok();
            if let Some(d) = config.initial_delay.and_then(seconds) {
                policy.base_delay = d;
            }
            if let Some(f) = config.backoff_factor {
                policy.factor = f.max(1.0);
            }
            if let Some(d) = config.max_delay.and_then(seconds) {
                policy.max_delay = d;
            }
        }
        policy
    }

    /// The exponential step before retry number `retry` (0-based), before jitter.
    fn step(&self, retry: u32) -> Duration {
        let exp = self.factor.powi(retry.min(64) as i32);
        let secs = (self.base_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    /// How long to wait before retry number `retry` (0-based) after `error`.
    pub fn delay(&self, retry: u32, error: &LlmError) -> Duration {
        if let Some(wait) = error.retry_after() {
            let jitter = self
                .base_delay
                .min(Duration::from_millis(250))
                .mul_f64(random_fraction() * 0.2);
            return wait.min(self.max_retry_after) + jitter;
        }
        let step = self.step(retry);
        step / 2 + step.mul_f64(random_fraction() / 2.0)
    }
}

/// A uniformly distributed number in `[0, 1)`, from the standard library's per-process random
/// hash keys (good enough for jitter; no extra dependency).
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A boxed, sendable future, as returned by [`AttemptRunner::run`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs each HTTP attempt of [`LlmClient::call_with`].
///
/// The default, [`DirectRunner`], just sends it. A job runtime can wrap each attempt as a
/// journaled step named [`AttemptInfo::step_name`], so that after a crash the answers already
/// paid for are replayed instead of bought again:
///
/// ```
/// use llmjobs::llm::{Attempt, AttemptRunner, BoxFuture, ChatResponse, LlmError};
///
/// struct Logged;
///
/// impl AttemptRunner for Logged {
///     fn run<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
///         Box::pin(async move {
///             let step = attempt.info().step_name();
///             let result = attempt.send().await;
///             println!("{step}: {}", if result.is_ok() { "ok" } else { "failed" });
///             result
///         })
///     }
/// }
/// ```
pub trait AttemptRunner: Send + Sync {
    /// Runs one attempt, normally by calling [`Attempt::send`] exactly once.
    fn run<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;
}

/// The [`AttemptRunner`] that sends every attempt as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectRunner;

impl AttemptRunner for DirectRunner {
    fn run<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(attempt.send())
    }
}

/// What an attempt is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttemptPurpose {
    /// Producing an answer.
    Answer,
    /// An agent validator checking an answer; `validator` is its index in
    /// [`ChatRequest::validators`].
    Check {
        /// The validator's index.
        validator: usize,
    },
}

/// Where an attempt sits in a [`LlmClient::call_with`] run. Deterministic for a given request,
/// so it can name a journaled step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AttemptInfo {
    /// What the attempt is for.
    pub purpose: AttemptPurpose,
    /// Which answer of the validation loop it belongs to (1-based).
    pub round: u32,
    /// Which HTTP try this is for that answer or check (1-based).
    pub try_number: u32,
    /// The escalation stage of the answer it belongs to.
    pub stage: Stage,
}

impl AttemptInfo {
    /// The attempt of a single call outside any loop.
    pub fn single() -> Self {
        AttemptInfo {
            purpose: AttemptPurpose::Answer,
            round: 1,
            try_number: 1,
            stage: Stage::Answer,
        }
    }

    /// A stable name for the attempt: `answer-1/try-1`, `check-2.1/try-3`, …
    pub fn step_name(&self) -> String {
        match self.purpose {
            AttemptPurpose::Answer => format!("answer-{}/try-{}", self.round, self.try_number),
            AttemptPurpose::Check { validator } => {
                format!("check-{}.{}/try-{}", self.round, validator, self.try_number)
            }
        }
    }
}

/// One HTTP attempt, handed to an [`AttemptRunner`].
pub struct Attempt<'a> {
    client: &'a LlmClient,
    request: &'a ChatRequest,
    info: AttemptInfo,
    on_event: Option<&'a mut (dyn FnMut(&StreamEvent) + Send)>,
}

impl std::fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("model", &self.request.model)
            .field("info", &self.info)
            .field("streaming", &self.on_event.is_some())
            .finish()
    }
}

impl<'a> Attempt<'a> {
    /// The request this attempt sends (including feedback messages from earlier rounds).
    pub fn request(&self) -> &ChatRequest {
        self.request
    }

    /// Where the attempt sits in the loop.
    pub fn info(&self) -> &AttemptInfo {
        &self.info
    }

    /// Sends the request: exactly one provider call, after waiting for the rate limits.
    pub async fn send(self) -> Result<ChatResponse, LlmError> {
        self.client
            .send_attempt(self.request, self.info.try_number, self.on_event)
            .await
    }
}

/// Reborrows an optional callback for a shorter lifetime (which `as_deref_mut` alone cannot do
/// for a trait object behind `&mut`).
pub(super) fn reborrow<'s>(
    on_event: &'s mut Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
) -> Option<&'s mut (dyn FnMut(&StreamEvent) + Send)> {
    match on_event {
        Some(f) => Some(&mut **f),
        None => None,
    }
}

/// Running totals of a call.
#[derive(Default)]
pub(super) struct Totals {
    usage: Usage,
    /// `None` once any call had no known price.
    cost: Option<f64>,
    calls: u32,
    /// HTTP tries that failed and were tried again.
    pub(super) retries: u32,
}

impl Totals {
    fn add(&mut self, r: &ChatResponse) {
        self.cost = match (self.calls, self.cost, r.cost) {
            (0, _, c) => c,
            (_, Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.usage += r.usage;
        self.calls += 1;
    }
}

impl LlmClient {
    /// Calls the model with HTTP retries and validation; see [`LlmClient::call_with`].
    pub async fn call(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.call_with(req, &DirectRunner, None).await
    }

    /// Like [`LlmClient::call`], streaming: `on_event` receives each delta of each answer.
    pub async fn call_stream<F>(
        &self,
        req: &ChatRequest,
        mut on_event: F,
    ) -> Result<ChatResponse, LlmError>
    where
        F: FnMut(&StreamEvent) + Send,
    {
        self.call_with(req, &DirectRunner, Some(&mut on_event))
            .await
    }

    /// Calls the model until an answer passes every validator, escalating as the original
    /// retry loop did.
    ///
    /// Each answer is produced with HTTP retries under the client's [`RetryPolicy`] (adjusted by
    /// the request's `retry_config`): retryable errors are retried with back-off, a 429 also
    /// pauses every other call to the same provider, and permanent errors return at once.
    /// Then the validators run ([`ChatRequest::validators`]): local ones first, agent checks
    /// only when those pass. A failed answer is sent back with feedback (the problems and the
    /// original user prompt) for the next answer. Past `max_attempts_before_tool_use` rejected
    /// answers, the next ones are [`Stage::ToolAssisted`]: they carry `debug_tool_mcp_config`
    /// as their `mcp_config`, and the feedback names `debug_tool_name`. After
    /// `retry_config.max_attempts` answers, or `max_attempts_before_human` if that is fewer,
    /// the result is [`LlmError::NeedsReview`] with the last answer. Every HTTP attempt goes
    /// through `runner`, with its stage in [`AttemptInfo::stage`].
    pub async fn call_with(
        &self,
        req: &ChatRequest,
        runner: &dyn AttemptRunner,
        mut on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let validators = req.validators();
        let plan = Escalation::of(req);
        let debug = req.retry_config.as_ref().is_some_and(|r| r.debug_mode);
        let mut totals = Totals::default();
        let mut current = req.clone();
        let mut round = 1;
        loop {
            let stage = plan.stage_of(round);
            let info = AttemptInfo {
                purpose: AttemptPurpose::Answer,
                round,
                try_number: 1,
                stage,
            };
            let sent = plan.request_for(&current, round);
            let mut answer = self
                .with_fallbacks(&sent, runner, info, reborrow(&mut on_event), &mut totals)
                .await?;
            let feedback = self
                .run_validators(req, &validators, &answer, runner, info, &mut totals)
                .await?;
            answer.attempts = round;
            answer.retries = totals.retries;
            answer.stage = stage;
            answer.total_usage = totals.usage;
            answer.total_cost = totals.cost;
            if debug {
                tracing::info!(model = %req.model, round, %stage, answer = %answer.text, ?feedback, "validated an answer");
            }
            if feedback.is_empty() {
                return Ok(answer);
            }
            tracing::debug!(model = %req.model, round, %stage, ?feedback, "answer failed validation");
            if round >= plan.rounds() {
                tracing::info!(model = %req.model, answers = round, "no answer passed validation; escalating to human review");
                return Err(LlmError::NeedsReview {
                    model: req.model.clone(),
                    attempts: round,
                    answer: Box::new(answer),
                    feedback,
                });
            }
            current = plan.after_rejection(&current, round, &answer.text, &feedback);
            round += 1;
        }
    }

    /// One answer (or agent check) with HTTP retries. With `patience`, a retryable error that
    /// asks for a longer wait (a 429's `Retry-After`, an open circuit) is returned at once, so
    /// the next fallback model can answer instead.
    pub(super) async fn with_retries(
        &self,
        req: &ChatRequest,
        runner: &dyn AttemptRunner,
        mut info: AttemptInfo,
        mut on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
        totals: &mut Totals,
        patience: Option<Duration>,
    ) -> Result<ChatResponse, LlmError> {
        let policy = self.retry_policy().for_request(req);
        loop {
            let attempt = Attempt {
                client: self,
                request: req,
                info,
                on_event: reborrow(&mut on_event),
            };
            match runner.run(attempt).await {
                Ok(response) => {
                    totals.add(&response);
                    return Ok(response);
                }
                Err(error)
                    if patience
                        .zip(error.retry_after())
                        .is_some_and(|(patience, wait)| wait > patience) =>
                {
                    return Err(error);
                }
                Err(error) if error.is_retryable() && info.try_number <= policy.max_retries => {
                    let delay = policy.delay(info.try_number - 1, &error);
                    tracing::warn!(
                        model = %req.model, step = %info.step_name(), ?delay, %error,
                        "LLM call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    info.try_number += 1;
                    totals.retries += 1;
                }
                Err(error) if error.is_retryable() && info.try_number > 1 => {
                    return Err(LlmError::RetriesExhausted {
                        tries: info.try_number,
                        last: Box::new(error),
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs the validators over `answer`; returns the feedback of those that failed.
    async fn run_validators(
        &self,
        req: &ChatRequest,
        validators: &[super::Validator],
        answer: &ChatResponse,
        runner: &dyn AttemptRunner,
        answer_info: AttemptInfo,
        totals: &mut Totals,
    ) -> Result<Vec<String>, LlmError> {
        let feedback: Vec<String> = validators
            .iter()
            .filter_map(|v| v.check_locally(&answer.text))
            .filter_map(Result::err)
            .collect();
        if !feedback.is_empty() {
            return Ok(feedback);
        }
        for (index, validator) in validators.iter().enumerate() {
            let Some(check) = validator.checker_request(req, &answer.text) else {
                continue;
            };
            let info = AttemptInfo {
                purpose: AttemptPurpose::Check { validator: index },
                try_number: 1,
                ..answer_info
            };
            let reply = self
                .with_retries(&check, runner, info, None, totals, None)
                .await?;
            if let Err(feedback) = validator.judge_checker_reply(&reply.text) {
                return Ok(vec![feedback]);
            }
        }
        Ok(Vec::new())
    }
}

/// How long a rate-limited provider asked us to wait: `retry-after-ms`, `Retry-After`
/// (seconds or an HTTP date), or the reset time of the exhausted `x-ratelimit-*` /
/// `anthropic-ratelimit-*` budget (the longest reset when none says it is exhausted).
pub(crate) fn retry_after_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).ok();
    }
    if let Some(value) = get("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            return Duration::try_from_secs_f64(secs.max(0.0)).ok();
        }
        if let Some(at) = parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    let budgets = [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        (
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
        (
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
        (
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ),
        (
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ),
    ];
    let reset = |name: &str| {
        let value = get(name)?;
        parse_go_duration(value).or_else(|| parse_rfc3339(value)?.duration_since(now).ok())
    };
    let exhausted = budgets
        .iter()
        .filter(|(remaining, _)| get(remaining) == Some("0"))
        .filter_map(|(_, r)| reset(r))
        .max();
    exhausted.or_else(|| budgets.iter().filter_map(|(_, r)| reset(r)).max())
}

/// Parses OpenAI's reset durations: `20ms`, `1s`, `6m0s`, `1h2m3.5s`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += number * unit;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn system_time(days: i64, secs_of_day: f64) -> Option<SystemTime> {
    let secs = days as f64 * 86_400.0 + secs_of_day;
    (secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// Parses an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (h, m, sec) = parse_hms(time)?;
    let days = days_from_civil(year.parse().ok()?, month, day.parse().ok()?);
    system_time(days, h * 3600.0 + m * 60.0 + sec)
}

fn parse_hms(s: &str) -> Option<(f64, f64, f64)> {
    let mut it = s.splitn(3, ':');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// Parses an RFC 3339 timestamp: `2024-06-01T12:00:30Z`, `2024-06-01T14:00:30.5+02:00`.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, da) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0.0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(at);
        let sign = if zone.starts_with('-') { -1.0 } else { 1.0 };
        let (zh, zm) = zone[1..].split_once(':')?;
        let offset: f64 = zh.parse::<f64>().ok()? * 3600.0 + zm.parse::<f64>().ok()? * 60.0;
        (clock, sign * offset)
    };
    let (h, m, sec) = parse_hms(clock)?;
    system_time(
        days_from_civil(y, mo, da),
        h * 3600.0 + m * 60.0 + sec - offset,
    )
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn http(status: u16, retry_after: Option<Duration>) -> LlmError {
        LlmError::Http {
            provider: "p".into(),
            model: "m".into(),
            status,
            message: String::new(),
            retry_after,
        }
    }

    #[test]
    fn retry_after_headers_in_every_form() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            retry_after_from_headers(&headers(&[("retry-after", "2")]), now),
            secs(2)
        );
        assert_eq!(
            retry_after_from_headers(&headers(&[("retry-after-ms", "1500")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after_from_headers(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
                now
            ),
            secs(10)
        );
        let openai = headers(&[
            ("x-ratelimit-remaining-requests", "5"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(retry_after_from_headers(&openai, now), secs(360));
        let anthropic = headers(&[(
            "anthropic-ratelimit-requests-reset",
            "1994-11-06T09:49:37+01:00",
        )]);
        assert_eq!(
            retry_after_from_headers(&anthropic, now),
            Some(Duration::ZERO)
        );
        let anthropic = headers(&[("anthropic-ratelimit-tokens-reset", "1994-11-06T08:50:07Z")]);
        assert_eq!(retry_after_from_headers(&anthropic, now), secs(30));
        assert_eq!(retry_after_from_headers(&HeaderMap::new(), now), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_respects_the_cap() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(300));
        let error = http(500, None);
        for retry in 0..6 {
            let step = Duration::from_millis((100u64 << retry).min(300));
            let d = policy.delay(retry, &error);
            assert!(d >= step / 2 && d <= step, "retry {retry}: {d:?}");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff_and_is_capped() {
        let policy = RetryPolicy::new().max_retry_after(Duration::from_secs(5));
        let d = policy.delay(0, &http(429, Some(Duration::from_secs(2))));
        assert!(
            d >= Duration::from_secs(2) && d < Duration::from_secs(3),
            "{d:?}"
        );
        let d = policy.delay(0, &http(429, Some(Duration::from_secs(3600))));
        assert!(
            d >= Duration::from_secs(5) && d < Duration::from_secs(6),
            "{d:?}"
        );
    }

    #[test]
    fn request_retry_config_overrides_the_delays() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "retry_config": {"initial_delay": 0.5, "max_attempts": 2}
        }))
        .unwrap();
        let policy = RetryPolicy::new().for_request(&req);
        assert_eq!(policy.base_delay, Duration::from_millis(500));
        assert_eq!(req.max_answer_attempts(), 2);
    }

    #[test]
    fn step_names_are_stable() {
        let info = AttemptInfo {
            purpose: AttemptPurpose::Check { validator: 1 },
            round: 2,
            try_number: 3,
            stage: Stage::Answer,
        };
        assert_eq!(info.step_name(), "check-2.1/try-3");
        assert_eq!(AttemptInfo::single().step_name(), "answer-1/try-1");
    }
}
