//! The arguments of `#[llm_job(...)]`.

use std::time::Duration;

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Lit, LitBool, LitInt, LitStr, Path, Token};

/// Every argument the attribute accepts, as listed in error messages.
const VALID_ARGUMENTS: &str = "`name = \"...\"`, `max_concurrency = N`, `timeout = \"30s\"`, \
                               `retries = N`, `long_running`, `concurrency_key = PARAMETER`, \
                               `key_limit = N`, `priority = N`, `idempotency_key = PARAMETER`, \
                               `budget_usd = 0.5`, `budget_tokens = N`, \
                               `cron = \"0 */5 * * * *\"`, `cron_timezone = \"Europe/Paris\"` \
                               and `crate = \"path\"`";

/// The parsed arguments; `None` means "not given, use the runtime's default".
#[derive(Default)]
pub(crate) struct Args {
    /// The job's stable name (`name = "..."`).
    pub(crate) name: Option<LitStr>,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: Option<u32>,
    pub(crate) long_running: bool,
    /// The parameter whose value is the call's concurrency key (`concurrency_key = model`).
    pub(crate) concurrency_key: Option<syn::Ident>,
    /// At most this many jobs with one key run at once (`key_limit = 2`).
    pub(crate) key_limit: Option<(u32, LitInt)>,
    /// The priority of the job's calls (`priority = -1`).
    pub(crate) priority: Option<i32>,
    /// The parameter whose value is the call's idempotency key (`idempotency_key = order_id`).
    pub(crate) idempotency_key: Option<syn::Ident>,
    /// What each job may spend on LLM calls, in dollars (`budget_usd = 0.5`).
    pub(crate) budget_usd: Option<f64>,
    /// What each job may spend on LLM calls, in tokens (`budget_tokens = 100000`).
    pub(crate) budget_tokens: Option<u64>,
    /// The cron expression the job is spawned on (`cron = "0 */5 * * * *"`), checked.
    pub(crate) cron: Option<LitStr>,
    /// The IANA time zone the expression is read in (`cron_timezone = "Europe/Paris"`).
    pub(crate) cron_timezone: Option<LitStr>,
    /// The path of the `llmjobs` crate (`crate = "..."`).
    pub(crate) krate: Option<Path>,
    /// Names already given, to reject duplicates.
    seen: Vec<String>,
}

impl Args {
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Args> {
        let mut args = Args::default();
        syn::meta::parser(|meta| args.parse_one(meta)).parse2(tokens)?;
        if let (Some(timezone), None) = (&args.cron_timezone, &args.cron) {
            return Err(syn::Error::new(
                timezone.span(),
                "`cron_timezone` needs `cron = \"...\"`: the expression read in this time zone",
            ));
        }
        match (&args.concurrency_key, &args.key_limit) {
            (Some(key), None) => Err(syn::Error::new(
                key.span(),
                "`concurrency_key` needs `key_limit = N`: how many jobs with one key may run at once",
            )),
            (None, Some((_, lit))) => Err(syn::Error::new(
                lit.span(),
                "`key_limit` needs `concurrency_key = PARAMETER`: the parameter whose value is the key",
            )),
            _ => Ok(args),
        }
    }

    fn parse_one(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(key) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(unknown_argument(&meta));
        };
        if self.seen.contains(&key) {
            return Err(meta.error(format_args!(
                "duplicate argument `{key}`: each argument may be given once"
            )));
        }
        match key.as_str() {
            "name" => {
                let name = string_value(&meta, "name = \"summarize\"")?;
                if name.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        name.span(),
                        "a job's `name` cannot be empty: it is the name stored in the database",
                    ));
                }
                self.name = Some(name);
            }
            "max_concurrency" => {
                let (limit, lit) = whole_number(&meta, "max_concurrency = 4")?;
                if limit == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`max_concurrency` must be at least 1: a limit of 0 would never run the job",
                    ));
                }
                self.max_concurrency = Some(limit);
            }
            "timeout" => {
                let text = string_value(&meta, "timeout = \"30s\"")?;
                self.timeout = Some(parse_timeout(&text)?);
            }
            "retries" => self.retries = Some(whole_number(&meta, "retries = 3")?.0),
            "long_running" => {
                // A bare flag; `long_running = false` is accepted so it can be switched off
                // without deleting the argument.
                self.long_running = if meta.input.peek(Token![=]) {
                    meta.value()?
                        .parse::<LitBool>()
                        .map_err(|e| {
                            syn::Error::new(
                                e.span(),
                                "`long_running` is a flag: write `long_running` \
                                 (or `long_running = true` / `long_running = false`)",
                            )
                        })?
                        .value
                } else {
                    true
                };
            }
            "concurrency_key" => {
                let ident: syn::Ident = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`concurrency_key` names a parameter of the function, e.g. `concurrency_key = model`",
                    )
                })?;
                self.concurrency_key = Some(ident);
            }
            "key_limit" => {
                let (limit, lit) = whole_number(&meta, "key_limit = 2")?;
                if limit == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`key_limit` must be at least 1: a limit of 0 would never run the job",
                    ));
                }
                self.key_limit = Some((limit, lit));
            }
            "priority" => self.priority = Some(priority(&meta)?),
            "budget_usd" => self.budget_usd = Some(dollars(&meta)?),
            "budget_tokens" => {
                let (tokens, lit) = whole_number(&meta, "budget_tokens = 100000")?;
                if tokens == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`budget_tokens` must be at least 1: a budget of 0 would refuse every call",
                    ));
                }
                self.budget_tokens = Some(u64::from(tokens));
            }
            "idempotency_key" => {
                let ident: syn::Ident = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`idempotency_key` names a parameter of the function, e.g. `idempotency_key = order_id`",
                    )
                })?;
                self.idempotency_key = Some(ident);
            }
            "cron" => {
                let text = string_value(&meta, "cron = \"0 */5 * * * *\"")?;
                check_cron(&text)?;
                self.cron = Some(text);
            }
            "cron_timezone" => {
                let text = string_value(&meta, "cron_timezone = \"Europe/Paris\"")?;
                if text.value().parse::<chrono_tz::Tz>().is_err() {
                    return Err(syn::Error::new(
                        text.span(),
                        format_args!(
                            "unknown time zone {:?}: use an IANA name such as \"Europe/Paris\", \
                             \"America/New_York\" or \"UTC\"",
                            text.value()
                        ),
                    ));
                }
                self.cron_timezone = Some(text);
            }
            "crate" => {
                let path = string_value(&meta, "crate = \"::llmjobs\"")?;
                self.krate = Some(path.parse().map_err(|_| {
                    syn::Error::new(
                        path.span(),
                        "`crate` must be the path of the llmjobs crate, e.g. `crate = \"::llmjobs\"`",
                    )
                })?);
            }
            _ => return Err(unknown_argument(&meta)),
        }
        self.seen.push(key);
        Ok(())
    }
}

fn unknown_argument(meta: &ParseNestedMeta<'_>) -> syn::Error {
    let path = quote::ToTokens::to_token_stream(&meta.path)
        .to_string()
        .replace(' ', "");
    meta.error(format_args!(
        "unknown argument `{path}`; `#[llm_job]` accepts {VALID_ARGUMENTS}"
    ))
}

/// The string literal after `=`; `example` shows the argument written correctly.
fn string_value(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<LitStr> {
    match meta.value()?.parse::<Lit>() {
        Ok(Lit::Str(text)) => Ok(text),
        Ok(other) => Err(syn::Error::new(
            other.span(),
            format_args!("expected a string, as in `{example}`"),
        )),
        Err(e) => Err(syn::Error::new(
            e.span(),
            format_args!("expected a string, as in `{example}`"),
        )),
    }
}

/// The whole number after `=`, with its literal for error spans.
fn whole_number(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<(u32, LitInt)> {
    let expected = || {
        format!(
            "expected a whole number from 0 to {}, as in `{example}`",
            u32::MAX
        )
    };
    let lit = match meta.value()?.parse::<Lit>() {
        Ok(Lit::Int(lit)) => lit,
        Ok(other) => return Err(syn::Error::new(other.span(), expected())),
        Err(e) => return Err(syn::Error::new(e.span(), expected())),
    };
    let n = lit
        .base10_parse::<u32>()
        .map_err(|_| syn::Error::new(lit.span(), expected()))?;
    Ok((n, lit))
}

/// A positive amount of dollars after `=` (`0.5`, `2`).
fn dollars(meta: &ParseNestedMeta<'_>) -> syn::Result<f64> {
    let expected = "expected an amount of US dollars above zero, as in `budget_usd = 0.5`";
    let (value, span) = match meta.value()?.parse::<Lit>() {
        Ok(Lit::Float(lit)) => (lit.base10_parse::<f64>().ok(), lit.span()),
        Ok(Lit::Int(lit)) => (lit.base10_parse::<f64>().ok(), lit.span()),
        Ok(other) => (None, other.span()),
        Err(e) => (None, e.span()),
    };
    match value {
        Some(usd) if usd.is_finite() && usd > 0.0 => Ok(usd),
        _ => Err(syn::Error::new(span, expected)),
    }
}

/// A whole number after `=`, negative or not, that fits an `i32`.
fn priority(meta: &ParseNestedMeta<'_>) -> syn::Result<i32> {
    let expected = || {
        format!(
            "expected a whole number from {} to {}, as in `priority = 10` or `priority = -1`",
            i32::MIN,
            i32::MAX
        )
    };
    let input = meta.value()?;
    let minus: Option<Token![-]> = input.parse()?;
    let lit = match input.parse::<Lit>() {
        Ok(Lit::Int(lit)) => lit,
        Ok(other) => return Err(syn::Error::new(other.span(), expected())),
        Err(e) => return Err(syn::Error::new(e.span(), expected())),
    };
    let sign = if minus.is_some() { "-" } else { "" };
    format!("{sign}{}", lit.base10_digits())
        .parse()
        .map_err(|_| syn::Error::new_spanned(quote::quote!(#minus #lit), expected()))
}

/// Checks a cron expression with the parser the runtime uses, so that a typo fails the build
/// rather than the first start.
fn check_cron(text: &LitStr) -> syn::Result<()> {
    let expression = text.value();
    let fields = expression.split_whitespace().count();
    if !expression.trim_start().starts_with('@') && !(6..=7).contains(&fields) {
        let hint = if fields == 5 {
            "; llmjobs reads seconds first, so a 5-field crontab line needs a leading `0`"
        } else {
            ""
        };
        return Err(syn::Error::new(
            text.span(),
            format_args!(
                "cron expression {expression:?} has {fields} fields; write 6 or 7: second, \
                 minute, hour, day of month, month, day of week and an optional year, as in \
                 \"0 */5 * * * *\"{hint}"
            ),
        ));
    }
    match expression.parse::<cron::Schedule>() {
        Ok(_) => Ok(()),
        Err(e) => {
            // The parser's message shows the expression, a caret, and sometimes a sentence.
            let message = e.to_string();
            let lines: Vec<&str> = message.lines().collect();
            let at = (lines.get(1).and_then(|caret| caret.find('^')))
                .map(|c| format!(" at column {}", c + 1))
                .unwrap_or_default();
            let reason = lines.get(2..).map(|rest| rest.join(" ").trim().to_string());
            let reason = reason
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "unexpected text".into());
            Err(syn::Error::new(
                text.span(),
                format_args!("invalid cron expression {expression:?}{at}: {reason}"),
            ))
        }
    }
}

fn parse_timeout(text: &LitStr) -> syn::Result<Duration> {
    match parse_duration(&text.value()) {
        Some(timeout) if timeout.is_zero() => Err(syn::Error::new(
            text.span(),
            "`timeout` must be longer than zero: a zero timeout would fail every attempt",
        )),
        Some(timeout) => Ok(timeout),
        None => Err(syn::Error::new(
            text.span(),
            format_args!(
                "invalid timeout {:?}: write a whole number and a unit: \
                 `\"500ms\"`, `\"30s\"`, `\"2m\"` or `\"1h\"`",
                text.value()
            ),
        )),
    }
}

/// Parses `"500ms"`, `"30s"`, `"2m"` or `"1h"` (a whole number and a unit). Durations are
/// only ever written in `#[llm_job(timeout = ...)]`, so this is the one parser.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn parse(tokens: TokenStream) -> syn::Result<Args> {
        Args::parse(tokens)
    }

    fn error(tokens: TokenStream) -> String {
        match parse(tokens) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_arguments_leave_every_default() {
        let args = parse(quote!()).unwrap();
        assert!(args.name.is_none());
        assert_eq!(args.max_concurrency, None);
        assert_eq!(args.timeout, None);
        assert_eq!(args.retries, None);
        assert!(!args.long_running);
        assert!(args.krate.is_none());
    }

    #[test]
    fn every_argument_is_parsed() {
        let args = parse(quote!(
            name = "digest",
            max_concurrency = 4,
            timeout = "2m",
            retries = 0,
            long_running,
            crate = "::my::llmjobs",
        ))
        .unwrap();
        assert_eq!(args.name.unwrap().value(), "digest");
        assert_eq!(args.max_concurrency, Some(4));
        assert_eq!(args.timeout, Some(Duration::from_secs(120)));
        assert_eq!(args.retries, Some(0));
        assert!(args.long_running);
        let krate = args.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), ":: my :: llmjobs");
    }

    #[test]
    fn long_running_accepts_an_explicit_bool() {
        assert!(!parse(quote!(long_running = false)).unwrap().long_running);
        assert!(parse(quote!(long_running = true)).unwrap().long_running);
    }

    #[test]
    fn unknown_argument_names_every_valid_one() {
        let message = error(quote!(max_concurency = 4));
        assert!(
            message.contains("unknown argument `max_concurency`"),
            "{message}"
        );
        for valid in [
            "name",
            "max_concurrency",
            "timeout",
            "retries",
            "long_running",
            "concurrency_key",
            "key_limit",
            "priority",
            "idempotency_key",
            "budget_usd",
            "budget_tokens",
            "cron",
            "cron_timezone",
            "crate",
        ] {
            assert!(message.contains(&format!("`{valid}")), "{valid}: {message}");
        }
    }

    #[test]
    fn duplicate_argument_is_rejected() {
        let message = error(quote!(retries = 1, retries = 2));
        assert!(
            message.contains("duplicate argument `retries`"),
            "{message}"
        );
    }

    #[test]
    fn concurrency_key_and_key_limit_go_together() {
        let args = parse(quote!(concurrency_key = model, key_limit = 2)).unwrap();
        assert_eq!(args.concurrency_key.unwrap().to_string(), "model");
        assert_eq!(args.key_limit.unwrap().0, 2);
        assert!(error(quote!(concurrency_key = model)).contains("needs `key_limit"));
        assert!(error(quote!(key_limit = 2)).contains("needs `concurrency_key"));
        assert!(error(quote!(concurrency_key = model, key_limit = 0)).contains("at least 1"));
        assert!(
            error(quote!(concurrency_key = "model", key_limit = 1)).contains("names a parameter")
        );
    }

    #[test]
    fn zero_max_concurrency_is_rejected() {
        assert!(error(quote!(max_concurrency = 0)).contains("at least 1"));
    }

    #[test]
    fn numbers_must_be_whole_and_fit_u32() {
        for bad in [
            quote!(retries = "3"),
            quote!(retries = 1.5),
            quote!(retries = 4294967296),
            quote!(retries = -1),
        ] {
            assert!(error(bad).contains("expected a whole number"));
        }
    }

    #[test]
    fn timeout_accepts_each_unit() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
        ] {
            let args = parse(quote!(timeout = #text)).unwrap();
            assert_eq!(args.timeout, Some(expected), "{text}");
        }
    }

    #[test]
    fn malformed_timeouts_are_rejected() {
        // The same strings the runtime's parser rejects, plus zero.
        for bad in ["", "s", "10", "1.5s", "10 parsecs", "-1s", "0s"] {
            let message = error(quote!(timeout = #bad));
            assert!(message.contains("timeout"), "{bad}: {message}");
        }
        assert!(error(quote!(timeout = 30)).contains("expected a string"));
    }

    #[test]
    fn empty_name_is_rejected() {
        assert!(error(quote!(name = "")).contains("cannot be empty"));
    }

    #[test]
    fn priority_may_be_negative_and_must_fit_i32() {
        assert_eq!(parse(quote!(priority = 10)).unwrap().priority, Some(10));
        assert_eq!(parse(quote!(priority = -3)).unwrap().priority, Some(-3));
        assert_eq!(
            parse(quote!(priority = -2147483648)).unwrap().priority,
            Some(i32::MIN)
        );
        for bad in [
            quote!(priority = 2147483648),
            quote!(priority = "high"),
            quote!(priority = 1.5),
        ] {
            assert!(error(bad).contains("expected a whole number from -2147483648"));
        }
    }

    #[test]
    fn idempotency_key_names_a_parameter() {
        let args = parse(quote!(idempotency_key = order_id)).unwrap();
        assert_eq!(args.idempotency_key.unwrap().to_string(), "order_id");
        assert!(error(quote!(idempotency_key = "order_id")).contains("names a parameter"));
    }

    #[test]
    fn cron_expressions_are_checked() {
        let args = parse(quote!(
            cron = "0 */5 * * * *",
            cron_timezone = "Europe/Paris"
        ))
        .unwrap();
        assert_eq!(args.cron.unwrap().value(), "0 */5 * * * *");
        assert_eq!(args.cron_timezone.unwrap().value(), "Europe/Paris");
        assert!(parse(quote!(cron = "@daily")).is_ok());
        assert!(error(quote!(cron = "*/5 * * * *")).contains("leading `0`"));
        let message = error(quote!(cron = "0 61 * * * *"));
        assert!(message.contains("invalid cron expression"), "{message}");
        assert!(message.contains("Minutes"), "{message}");
    }

    #[test]
    fn cron_timezone_must_be_known_and_needs_cron() {
        assert!(
            error(quote!(cron = "* * * * * *", cron_timezone = "Mars/Olympus"))
                .contains("unknown time zone \"Mars/Olympus\"")
        );
        assert!(error(quote!(cron_timezone = "UTC")).contains("needs `cron"));
    }

    #[test]
    fn crate_must_be_a_path() {
        assert!(error(quote!(crate = "not a path")).contains("path of the llmjobs crate"));
    }

    #[test]
    fn budgets_take_positive_dollars_and_tokens() {
        let args = parse(quote!(budget_usd = 0.5, budget_tokens = 2000)).unwrap();
        assert_eq!(args.budget_usd, Some(0.5));
        assert_eq!(args.budget_tokens, Some(2000));
        assert_eq!(parse(quote!(budget_usd = 2)).unwrap().budget_usd, Some(2.0));
        assert!(error(quote!(budget_usd = 0)).contains("above zero"));
        assert!(error(quote!(budget_usd = "1")).contains("above zero"));
        assert!(error(quote!(budget_tokens = 0)).contains("at least 1"));
    }
}
