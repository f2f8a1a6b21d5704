//! The api's configuration: command-line flags with environment fallbacks,
//! validated at start-up so that a bad value fails before anything runs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use clap::Parser;
use ipnet::IpNet;
use schema::nats::{InvalidPrefix, Names};

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

    /// Prefix of every NATS subject and stream, so that deployments and tests
    /// can share one NATS server ([a-z0-9_-]+; empty means the default).
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
}

impl Config {
    /// From the environment alone (no command line), with the error as one
    /// line naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::try_parse_from(["jeanus-api"]).map_err(|e| one_line(&e))
    }

    /// A configuration for tests: listens on an ephemeral port, no operator
    /// token, no trusted proxies.
    pub fn for_test(
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
        prefix: &str,
    ) -> Result<Self, InvalidPrefix> {
        Ok(Self {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            nats_prefix: Names::new(prefix)?,
            trusted_proxies: Vec::new(),
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

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(DB.iter().chain(extra))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).expect("valid");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
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
