//! The api's configuration: command-line flags with environment fallbacks,
//! validated at start-up so that a bad value fails before anything runs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use schema::nats::{InvalidPrefix, Names};
use schema::sealing::SecretKey;

/// Every variable the api reads. `value_name` is the variable's name so that
/// clap's errors name the variable an operator actually sets.
#[derive(Debug, Clone, Parser)]
#[command(name = "jeanus-api", version, about = "The Jeanus REST API")]
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

    /// Redis URL: the rate limiter's store, shared by every api instance.
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Address the HTTP server listens on.
    #[arg(
        long = "addr",
        env = "JEANUS_API_ADDR",
        value_name = "JEANUS_API_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,

    /// The operator's token for /admin/v1; unset or empty, the operator API
    /// answers 404.
    // The qualified `Option` stops clap from treating it as an optional flag,
    // so that the parser sees (and maps) an empty value too.
    #[arg(
        long,
        env = "JEANUS_ADMIN_TOKEN",
        value_name = "JEANUS_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = parse_secret
    )]
    pub admin_token: ::std::option::Option<Secret>,

    /// Prefix of every NATS subject and stream, and of the rate limiter's
    /// Redis keys, so that deployments and tests can share one NATS server
    /// and one Redis ([a-z0-9_-]+; empty means the default).
    #[arg(
        long = "nats-prefix",
        env = "JEANUS_NATS_PREFIX",
        value_name = "JEANUS_NATS_PREFIX",
        default_value = Names::DEFAULT_PREFIX,
        value_parser = parse_prefix
    )]
    pub nats_prefix: Names,

    /// Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is
    /// believed; from anyone else the socket's address is the client's.
    // One value holding the whole list (a qualified `Vec` is not repeated by
    // clap), so that an empty variable is an empty list.
    #[arg(
        long,
        env = "JEANUS_TRUSTED_PROXIES",
        value_name = "JEANUS_TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true,
        value_parser = parse_cidrs
    )]
    pub trusted_proxies: ::std::vec::Vec<IpNet>,

    /// The rate limit's window in seconds (decimals allowed). Keys' limits
    /// are per minute: change it only to test the limiter quickly.
    #[arg(
        long = "rate-limit-window",
        env = "JEANUS_RATE_LIMIT_WINDOW",
        value_name = "JEANUS_RATE_LIMIT_WINDOW",
        default_value = "60",
        hide = true,
        value_parser = parse_window
    )]
    pub rate_limit_window: Duration,

    /// How long a read (a list, a GET by id) waits for the projector to
    /// reach its tenant's last event before it reads the read models as
    /// they are, in seconds (decimals allowed). See `crate::consistency`.
    #[arg(
        long = "read-catch-up-timeout",
        env = "JEANUS_READ_CATCH_UP_TIMEOUT",
        value_name = "JEANUS_READ_CATCH_UP_TIMEOUT",
        default_value = "2",
        value_parser = parse_catch_up
    )]
    pub read_catch_up_timeout: Duration,

    /// Standard base64 of 32 random bytes: the key that seals webhook
    /// signing secrets at rest (`schema::sealing`). The dispatcher must be
    /// given the same key. Generate one with `openssl rand -base64 32`.
    /// Required to serve (see [`Config::sealing_key`]); `migrate` and the
    /// `admin` commands do without.
    // Qualified (with an empty default) as `admin_token` is: empty is unset.
    #[arg(
        long = "secret-key",
        env = schema::sealing::SECRET_KEY_VAR,
        value_name = schema::sealing::SECRET_KEY_VAR,
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = parse_secret_key
    )]
    pub secret_key: ::std::option::Option<SecretKey>,

    /// Accept webhook URLs whose host resolves to a private, loopback,
    /// link-local or otherwise non-global address. Off in production (it
    /// would let a tenant probe our network); `scripts/dev` and the tests
    /// turn it on to reach receivers on 127.0.0.1.
    #[arg(
        long = "webhook-allow-private",
        env = "JEANUS_WEBHOOK_ALLOW_PRIVATE",
        value_name = "JEANUS_WEBHOOK_ALLOW_PRIVATE",
        default_value = "false",
        action = clap::ArgAction::Set,
        value_parser = parse_bool
    )]
    pub webhook_allow_private: bool,
}

impl Config {
    /// From the environment alone (no command line), with the error as one
    /// line naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::try_parse_from(["jeanus-api"]).map_err(|e| one_line(&e))
    }

    /// A configuration for tests: listens on an ephemeral port, no operator
    /// token, no trusted proxies, a fresh random secret key (give the same
    /// one to the dispatcher), and webhook receivers on loopback allowed.
    pub fn for_test(
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
        prefix: &str,
    ) -> Result<Self, InvalidPrefix> {
        Ok(Self {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            redis_url: redis_url_from_env(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            nats_prefix: Names::new(prefix)?,
            trusted_proxies: Vec::new(),
            rate_limit_window: DEFAULT_RATE_LIMIT_WINDOW,
            read_catch_up_timeout: crate::consistency::READ_CATCH_UP_TIMEOUT,
            secret_key: Some(SecretKey::generate()),
            webhook_allow_private: true,
        })
    }

    /// The key that seals webhook secrets; serving without one fails at
    /// start-up with this error, naming the variable.
    pub fn sealing_key(&self) -> anyhow::Result<&SecretKey> {
        self.secret_key.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not set (standard base64 of 32 random bytes: `openssl rand -base64 32`)",
                schema::sealing::SECRET_KEY_VAR
            )
        })
    }
}

/// A secret from the environment. `Debug` and `Display` print `[redacted]`,
/// so a config dumped to a log never leaks it; use [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

// An empty optional variable counts as unset, as in most shells' scripts
// (`JEANUS_ADMIN_TOKEN=${TOKEN:-}`): never as an empty token.

fn parse_secret(value: &str) -> Result<Option<Secret>, std::convert::Infallible> {
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

fn parse_prefix(value: &str) -> Result<Names, String> {
    let value = if value.is_empty() {
        Names::DEFAULT_PREFIX
    } else {
        value
    };
    // clap's message names the variable; only the rule is added here.
    Names::new(value).map_err(|_| "use 1 to 64 of a-z, 0-9, _ and -".to_owned())
}

/// `JEANUS_SECRET_KEY`: clap's message names the variable; the reason is
/// added. Empty is unset.
fn parse_secret_key(value: &str) -> Result<Option<SecretKey>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    SecretKey::from_base64(value)
        .map(Some)
        .map_err(|e| format!("{e} (generate one with `openssl rand -base64 32`)"))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`); empty is false.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" | "off" => Ok(false),
        "true" | "1" | "yes" | "on" => Ok(true),
        _ => Err("use true or false".to_owned()),
    }
}

/// Where the api looks for Redis unless `REDIS_URL` says otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `REDIS_URL` from the environment, else [`DEFAULT_REDIS_URL`]: what the
/// api would use, for tests and benchmarks that configure it in code.
pub fn redis_url_from_env() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// The rate limit's window unless `JEANUS_RATE_LIMIT_WINDOW` says otherwise.
pub const DEFAULT_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Seconds, `60` or `0.5`: from 10 ms to one day.
fn parse_window(value: &str) -> Result<Duration, String> {
    parse_seconds(value, DEFAULT_RATE_LIMIT_WINDOW, 0.01..=86_400.0, "60")
}

/// Seconds, `2` or `0.5`: from 10 ms to one minute.
fn parse_catch_up(value: &str) -> Result<Duration, String> {
    let default = crate::consistency::READ_CATCH_UP_TIMEOUT;
    parse_seconds(value, default, 0.01..=60.0, "2")
}

/// A number of seconds within `range`; empty is `default`.
fn parse_seconds(
    value: &str,
    default: Duration,
    range: std::ops::RangeInclusive<f64>,
    example: &str,
) -> Result<Duration, String> {
    let hint = || {
        format!(
            "use a number of seconds from {} to {}, e.g. {example}",
            range.start(),
            range.end()
        )
    };
    if value.trim().is_empty() {
        return Ok(default);
    }
    let seconds: f64 = value.trim().parse().map_err(|_| hint())?;
    if !range.contains(&seconds) {
        return Err(hint());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Comma-separated CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses
/// (`192.0.2.7`); empty for none.
fn parse_cidrs(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            IpNet::from_str(item)
                .or_else(|_| IpAddr::from_str(item).map(IpNet::from))
                .map_err(|_| format!("{item:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
        })
        .collect()
}

/// Reduces a clap error to one line for `error: …` on stderr, naming the
/// variable (clap's own rendering spans several lines and suggests flags).
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

    const DB: [&str; 3] = ["jeanus-api", "--database-url", "postgres://h/db"];
    const KEY: &str = "--secret-key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(DB.iter().chain(extra))
    }

    #[test]
    fn a_bad_secret_key_names_the_variable() {
        for bad in ["c2hvcnQ=", "not base64!"] {
            let arg = format!("--secret-key={bad}");
            let e = parse(&[&arg]).expect_err("refused");
            let line = one_line(&e);
            assert!(line.contains("JEANUS_SECRET_KEY"), "{line}");
        }
        let c = parse(&[KEY]).expect("valid");
        assert!(c.sealing_key().is_ok());
        assert!(!c.webhook_allow_private);
        assert!(!format!("{c:?}").contains("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="));
        if std::env::var_os("JEANUS_SECRET_KEY").is_none() {
            let e = parse(&[])
                .expect("valid")
                .sealing_key()
                .map(|_| ())
                .expect_err("unset");
            assert!(
                e.to_string().starts_with("JEANUS_SECRET_KEY is not set"),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).expect("valid");
        // Read the declared default, not `c.nats_url`: scripts/test sets NATS_URL.
        let nats_default = <Config as clap::CommandFactory>::command()
            .get_arguments()
            .find(|a| a.get_id() == "nats_url")
            .map(|a| a.get_default_values().to_vec());
        assert_eq!(nats_default, Some(vec!["nats://127.0.0.1:4222".into()]));
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.nats_prefix.stream_name(), "JEANUS_EVENTS");
        assert!(c.admin_token.is_none());
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn a_bad_prefix_names_the_variable() {
        let e = parse(&["--nats-prefix", "Bad.Prefix"]).expect_err("refused");
        let line = one_line(&e);
        assert!(line.contains("JEANUS_NATS_PREFIX"), "{line}");
        assert!(line.contains("Bad.Prefix"), "{line}");
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let c = parse(&["--trusted-proxies", "10.0.0.0/8, 192.0.2.7,fd00::/8"]).expect("valid");
        let shown: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    }

    #[test]
    fn a_bad_cidr_names_the_variable() {
        let e = parse(&["--trusted-proxies", "10.0.0.0/8,10.0.0.0/99"]).expect_err("refused");
        let line = one_line(&e);
        assert!(line.contains("JEANUS_TRUSTED_PROXIES"), "{line}");
        assert!(line.contains("10.0.0.0/99"), "{line}");
    }

    #[test]
    fn a_missing_database_url_names_the_variable() {
        // Where the environment sets DATABASE_URL, clap rightly falls back to it.
        let e = Config::try_parse_from(["jeanus-api"]);
        if std::env::var_os("DATABASE_URL").is_none() {
            let line = one_line(&e.expect_err("refused"));
            assert_eq!(line, "DATABASE_URL is not set");
        }
    }

    #[test]
    fn empty_optional_variables_count_as_unset() {
        let c = parse(&["--admin-token=", "--trusted-proxies=", "--nats-prefix="]).expect("valid");
        assert!(c.admin_token.is_none());
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.nats_prefix.prefix(), "jeanus");
    }

    #[test]
    fn the_read_catch_up_timeout_is_seconds_up_to_a_minute() {
        assert_eq!(
            parse(&[]).expect("valid").read_catch_up_timeout,
            Duration::from_secs(2)
        );
        let c = parse(&["--read-catch-up-timeout=0.25"]).expect("valid");
        assert_eq!(c.read_catch_up_timeout, Duration::from_millis(250));
        for bad in ["0", "61", "soon", "-1"] {
            let arg = format!("--read-catch-up-timeout={bad}");
            let e = parse(&[&arg]).expect_err("refused");
            assert!(one_line(&e).contains("JEANUS_READ_CATCH_UP_TIMEOUT"), "{e}");
        }
    }

    #[test]
    fn the_rate_limit_window_is_seconds() {
        assert_eq!(
            parse(&[]).expect("valid").rate_limit_window,
            Duration::from_secs(60)
        );
        let c = parse(&["--rate-limit-window", "1.5"]).expect("valid");
        assert_eq!(c.rate_limit_window, Duration::from_millis(1500));
        let c = parse(&["--rate-limit-window="]).expect("valid");
        assert_eq!(c.rate_limit_window, Duration::from_secs(60));
        for bad in ["0", "-1", "soon", "100000"] {
            let arg = format!("--rate-limit-window={bad}");
            let e = parse(&[&arg]).expect_err("refused");
            assert!(one_line(&e).contains("JEANUS_RATE_LIMIT_WINDOW"), "{bad}");
        }
    }

    #[test]
    fn the_admin_token_is_never_printed() {
        let c = parse(&["--admin-token", "hunter2-hunter2"]).expect("valid");
        assert_eq!(
            c.admin_token.as_ref().map(Secret::expose),
            Some("hunter2-hunter2")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
