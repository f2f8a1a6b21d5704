//! The dispatcher's configuration: command-line flags with environment
//! fallbacks, validated at start-up.

use std::time::Duration;

use clap::{ArgAction, Parser};
use schema::nats::{InvalidPrefix, Names};
use schema::sealing::SecretKey;

/// The delays between webhook delivery attempts unless configured.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// Every variable the dispatcher reads; `value_name` is the variable's name
/// so that clap's errors name what an operator actually sets.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "jeanus-dispatcher",
    version,
    about = "Delivers Jeanus events to webhook endpoints, signed"
)]
pub struct Config {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/jeanus.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,

    /// NATS server URL (with JetStream enabled).
    #[arg(
        long,
        env = "NATS_URL",
        value_name = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// Prefix of every NATS subject and stream ([a-z0-9_-]+; empty means
    /// the default).
    #[arg(
        long = "nats-prefix",
        env = "JEANUS_NATS_PREFIX",
        value_name = "JEANUS_NATS_PREFIX",
        default_value = Names::DEFAULT_PREFIX,
        value_parser = parse_prefix
    )]
    pub nats_prefix: Names,

    /// Deliver webhooks to private, loopback and link-local addresses too.
    /// Off in production (it would let a tenant probe our network); tests
    /// turn it on to reach a receiver on 127.0.0.1.
    #[arg(
        long = "webhook-allow-private",
        env = "JEANUS_WEBHOOK_ALLOW_PRIVATE",
        value_name = "JEANUS_WEBHOOK_ALLOW_PRIVATE",
        default_value = "false",
        action = ArgAction::Set,
        value_parser = parse_bool
    )]
    pub webhook_allow_private: bool,

    /// Delays between delivery attempts, comma-separated (ms, s, m, h, d):
    /// one retry per entry, then the delivery is given up.
    // A qualified `Vec`: one value holding the whole list, not a repeated flag.
    #[arg(
        long = "webhook-retry-schedule",
        env = "JEANUS_WEBHOOK_RETRY_SCHEDULE",
        value_name = "JEANUS_WEBHOOK_RETRY_SCHEDULE",
        default_value = DEFAULT_RETRY_SCHEDULE,
        value_parser = parse_schedule
    )]
    pub webhook_retry_schedule: ::std::vec::Vec<Duration>,

    /// The key that opens the sealed webhook secrets (standard base64 of 32
    /// bytes); the api that sealed them must have the same one.
    #[arg(
        long = "secret-key",
        env = schema::sealing::SECRET_KEY_VAR,
        value_name = schema::sealing::SECRET_KEY_VAR,
        hide_env_values = true,
        value_parser = parse_secret_key
    )]
    pub secret_key: SecretKey,
}

impl Config {
    /// From the environment alone (no command line), with the error as one
    /// line naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::try_parse_from(["jeanus-dispatcher"]).map_err(|e| one_line(&e))
    }

    /// A configuration for tests: private addresses allowed (the receiver is
    /// on 127.0.0.1), the default retry schedule, a random secret key (give
    /// it the api's with [`Config::with_secret_key`]).
    pub fn for_test(
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
        prefix: &str,
    ) -> Result<Self, InvalidPrefix> {
        Ok(Self {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            nats_prefix: Names::new(prefix)?,
            webhook_allow_private: true,
            webhook_retry_schedule: default_retry_schedule(),
            secret_key: SecretKey::generate(),
        })
    }

    /// The same configuration with `key` (the api's, in tests).
    pub fn with_secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = key;
        self
    }
}

/// `JEANUS_SECRET_KEY`: clap's message names the variable; the reason is added.
fn parse_secret_key(value: &str) -> Result<SecretKey, String> {
    SecretKey::from_base64(value)
        .map_err(|e| format!("{e} (generate one with `openssl rand -base64 32`)"))
}

/// [`DEFAULT_RETRY_SCHEDULE`], parsed.
pub fn default_retry_schedule() -> Vec<Duration> {
    [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

fn parse_prefix(value: &str) -> Result<Names, String> {
    let value = if value.is_empty() {
        Names::DEFAULT_PREFIX
    } else {
        value
    };
    Names::new(value).map_err(|_| "use 1 to 64 of a-z, 0-9, _ and -".to_owned())
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`; empty is false.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("use true or false".to_owned()),
    }
}

/// `5s,5m,30m,2h` → the delays: at least one, each above zero.
pub fn parse_schedule(value: &str) -> Result<Vec<Duration>, String> {
    value
        .split(',')
        .map(str::trim)
        .map(|item| {
            parse_delay(item).ok_or_else(|| format!("{item:?} is not a delay like 30s, 5m or 2h"))
        })
        .collect()
}

fn parse_delay(item: &str) -> Option<Duration> {
    let split = item.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = item.split_at(split);
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(seconds).map(Duration::from_secs)
}

/// Reduces a clap error to one line for `error: …` on stderr, naming the
/// variable.
pub fn one_line(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};

    if error.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(args)) = error.get(ContextKind::InvalidArg) {
            let names: Vec<&str> = args.iter().map(|a| variable_of(a)).collect();
            return format!("{} is not set", names.join(", "));
        }
    }
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// `--database-url <DATABASE_URL>` → `DATABASE_URL`.
fn variable_of(arg: &str) -> &str {
    arg.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or(arg, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let base = [
            "jeanus-dispatcher",
            "--database-url=postgres://h/db",
            "--secret-key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ];
        Config::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn the_default_schedule_is_seven_retries_over_about_a_day() {
        let c = parse(&[]).expect("valid");
        assert_eq!(c.webhook_retry_schedule, default_retry_schedule());
        let hours: Vec<f64> = c
            .webhook_retry_schedule
            .iter()
            .map(|d| d.as_secs_f64() / 3600.0)
            .collect();
        assert_eq!(c.webhook_retry_schedule.len(), 7);
        assert_eq!(c.webhook_retry_schedule[0], Duration::from_secs(5));
        assert_eq!(c.webhook_retry_schedule[6], Duration::from_secs(10 * 3600));
        assert!(
            (hours.iter().sum::<f64>() - 27.585).abs() < 0.01,
            "{hours:?}"
        );
        assert!(!c.webhook_allow_private);
    }

    #[test]
    fn a_schedule_takes_every_unit() {
        assert_eq!(
            parse_schedule("250ms, 2s,1m,1h,1d"),
            Ok(vec![
                Duration::from_millis(250),
                Duration::from_secs(2),
                Duration::from_secs(60),
                Duration::from_secs(3600),
                Duration::from_secs(86_400),
            ])
        );
    }

    #[test]
    fn a_bad_schedule_names_the_variable_and_the_entry() {
        for bad in ["5s,5x", "5s,,5m", "0s", "s", "5", "-5s", ""] {
            let e = parse(&[&format!("--webhook-retry-schedule={bad}")]).expect_err(bad);
            let line = one_line(&e);
            assert!(line.contains("JEANUS_WEBHOOK_RETRY_SCHEDULE"), "{line}");
        }
        let line = one_line(&parse(&["--webhook-retry-schedule=5s,5x"]).expect_err("refused"));
        assert!(line.contains("\"5x\""), "{line}");
    }

    #[test]
    fn allow_private_reads_the_usual_spellings() {
        for (value, expected) in [("true", true), ("1", true), ("false", false), ("", false)] {
            let c = parse(&[&format!("--webhook-allow-private={value}")]).expect(value);
            assert_eq!(c.webhook_allow_private, expected, "{value}");
        }
        let line = one_line(&parse(&["--webhook-allow-private=maybe"]).expect_err("refused"));
        assert!(line.contains("JEANUS_WEBHOOK_ALLOW_PRIVATE"), "{line}");
    }

    #[test]
    fn a_missing_or_malformed_secret_key_names_the_variable() {
        let missing =
            Config::try_parse_from(["jeanus-dispatcher", "--database-url=postgres://h/db"])
                .expect_err("refused");
        assert!(
            one_line(&missing).contains("JEANUS_SECRET_KEY"),
            "{}",
            one_line(&missing)
        );
        let line = one_line(&parse(&["--secret-key=c2hvcnQ="]).expect_err("refused"));
        assert!(line.contains("JEANUS_SECRET_KEY"), "{line}");
    }

    #[test]
    fn a_bad_prefix_names_the_variable() {
        let line = one_line(&parse(&["--nats-prefix=UPPER"]).expect_err("refused"));
        assert!(line.contains("JEANUS_NATS_PREFIX"), "{line}");
    }
}
