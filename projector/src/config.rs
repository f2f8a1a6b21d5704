//! The projector's configuration: command-line flags with environment
//! fallbacks, validated at start-up.

use std::str::FromStr;

use clap::Parser;
use schema::nats::{InvalidPrefix, Names};
use uuid::Uuid;

use crate::verify::{self, Checkpoint};

use crate::projections::Projection;

/// Every variable the projector reads; `value_name` is the variable's name so
/// that clap's errors name what an operator actually sets.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "jeanus-projector",
    version,
    about = "Builds the Jeanus read models from the event stream"
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

    /// When the running projector re-verifies the event log's hash chain
    /// (a cron expression with seconds: sec min hour day month weekday, UTC).
    #[arg(
        long = "verify-schedule",
        env = "JEANUS_VERIFY_SCHEDULE",
        value_name = "JEANUS_VERIFY_SCHEDULE",
        default_value = verify::DEFAULT_SCHEDULE,
        value_parser = parse_schedule
    )]
    pub verify_schedule: cron::Schedule,

    /// What to do; without one, follow the event stream (the service).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The projector's one-off commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Rebuild read models from the event log in PostgreSQL into fresh
    /// tables, then swap them in atomically while the api keeps serving the
    /// old ones; a running projector carries on from the swap.
    Rebuild(RebuildArgs),
    /// Re-walk the event log's hash chain; exit 1 naming the first bad
    /// position if an event was altered, removed or reordered.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    /// Rebuild only this read model (tenants, api_keys, customers, products,
    /// leads, orders, webhook_endpoints); every one when absent.
    #[arg(long, value_name = "NAME", value_parser = parse_projection)]
    pub projection: Option<Projection>,

    /// Events read from the log per page (and applied per transaction).
    #[arg(long, value_name = "EVENTS", default_value_t = crate::rebuild::DEFAULT_PAGE_SIZE,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub page_size: i64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Only this tenant's chain (default: every tenant's).
    #[arg(long, value_name = "TENANT_ID")]
    pub tenant: Option<Uuid>,
    /// POSITION:HASH, as `GET /api/v1/events/head` gave it: the stored chain
    /// must hold this hash at this position; verification continues from there.
    #[arg(long, value_name = "POSITION:HASH")]
    pub from_checkpoint: Option<Checkpoint>,
}

impl Config {
    /// From the environment alone (no command line), with the error as one
    /// line naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::try_parse_from(["jeanus-projector"]).map_err(|e| one_line(&e))
    }

    pub fn for_test(
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
        prefix: &str,
    ) -> Result<Self, InvalidPrefix> {
        Ok(Self {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            nats_prefix: Names::new(prefix)?,
            verify_schedule: default_schedule(),
            command: None,
        })
    }
}

fn parse_prefix(value: &str) -> Result<Names, String> {
    let value = if value.is_empty() {
        Names::DEFAULT_PREFIX
    } else {
        value
    };
    Names::new(value).map_err(|_| "use 1 to 64 of a-z, 0-9, _ and -".to_owned())
}

fn parse_projection(value: &str) -> Result<Projection, String> {
    Projection::from_name(value).map_err(|e| e.to_string())
}

fn parse_schedule(value: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(value).map_err(|e| {
        format!("not a cron expression with seconds (sec min hour day month weekday): {e}")
    })
}

/// The schedule [`verify::DEFAULT_SCHEDULE`] names.
pub fn default_schedule() -> cron::Schedule {
    // A constant that the tests parse: it cannot fail.
    cron::Schedule::from_str(verify::DEFAULT_SCHEDULE)
        .unwrap_or_else(|e| unreachable!("the default verify schedule is invalid: {e}"))
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

    #[test]
    fn a_bad_prefix_names_the_variable() {
        let e = Config::try_parse_from([
            "jeanus-projector",
            "--database-url=postgres://h/db",
            "--nats-prefix=a.b",
        ])
        .expect_err("refused");
        let line = one_line(&e);
        assert!(line.contains("JEANUS_NATS_PREFIX"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn rebuild_takes_one_projection_by_name() {
        let c = Config::try_parse_from([
            "jeanus-projector",
            "--database-url=postgres://h/db",
            "rebuild",
            "--projection=leads",
        ])
        .expect("valid");
        match c.command {
            Some(Command::Rebuild(args)) => {
                assert_eq!(args.projection, Some(Projection::Leads));
                assert_eq!(args.page_size, crate::rebuild::DEFAULT_PAGE_SIZE);
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = Config::try_parse_from([
            "jeanus-projector",
            "--database-url=postgres://h/db",
            "rebuild",
            "--projection=lead",
        ])
        .expect_err("refused");
        let line = one_line(&e);
        assert!(line.contains("unknown projection \"lead\""), "{line}");
        assert!(line.contains("webhook_endpoints"), "{line}");
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = Config::try_parse_from(["jeanus-projector", "--database-url=postgres://h/db"])
            .expect("valid");
        // Read the declared default, not `c.nats_url`: scripts/test sets NATS_URL.
        let nats_default = <Config as clap::CommandFactory>::command()
            .get_arguments()
            .find(|a| a.get_id() == "nats_url")
            .map(|a| a.get_default_values().to_vec());
        assert_eq!(nats_default, Some(vec!["nats://127.0.0.1:4222".into()]));
        assert_eq!(c.nats_prefix.prefix(), "jeanus");
        assert!(c.command.is_none());
        let schedule_default = <Config as clap::CommandFactory>::command()
            .get_arguments()
            .find(|a| a.get_id() == "verify_schedule")
            .map(|a| a.get_default_values().to_vec());
        assert_eq!(schedule_default, Some(vec!["0 0 3 * * *".into()]));
    }

    #[test]
    fn verify_takes_a_tenant_and_a_checkpoint() {
        let tenant = Uuid::now_v7();
        let hash = "0f".repeat(32);
        let c = Config::try_parse_from([
            "jeanus-projector",
            "--database-url=postgres://h/db",
            "verify",
            &format!("--tenant={tenant}"),
            &format!("--from-checkpoint=12:{hash}"),
        ])
        .expect("valid");
        let Some(Command::Verify(args)) = c.command else {
            panic!("not verify: {:?}", c.command);
        };
        assert_eq!(args.tenant, Some(tenant));
        assert_eq!(args.from_checkpoint.map(|c| c.position), Some(12));

        let e = Config::try_parse_from([
            "jeanus-projector",
            "--database-url=postgres://h/db",
            "verify",
            "--from-checkpoint=12",
        ])
        .expect_err("refused");
        assert!(one_line(&e).contains("POSITION:HASH"), "{}", one_line(&e));
    }

    #[test]
    fn a_bad_verify_schedule_names_the_variable() {
        let e = Config::try_parse_from([
            "jeanus-projector",
            "--database-url=postgres://h/db",
            "--verify-schedule=nightly",
        ])
        .expect_err("refused");
        assert!(
            one_line(&e).contains("JEANUS_VERIFY_SCHEDULE"),
            "{}",
            one_line(&e)
        );
    }
}
