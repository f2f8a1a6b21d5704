//! `jeanus-bench`: throughput and latency of Jeanus against the real
//! PostgreSQL, one subcommand per scenario;
//! with none, every scenario runs. `scripts/bench` is the way in.
//!
//! Each scenario module exposes `Args` (its clap arguments) and
//! `run(&Common, &Args) -> Section`; add one by adding a variant to
//! [`Scenario`] and a line to [`Scenario::all`].

// A crate root looks for its modules beside itself (src/bin/), so point at
// this binary's own directory.
/// mimalloc rather than glibc's malloc: see `mimalloc` in the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "bench/append.rs"]
mod append;
#[path = "bench/auth.rs"]
mod auth;
#[path = "bench/chain.rs"]
mod chain;
#[path = "bench/cpu.rs"]
mod cpu;
#[path = "bench/database.rs"]
mod database;
#[path = "bench/harness.rs"]
mod harness;
#[path = "bench/instructions.rs"]
mod instructions;
#[path = "bench/leads.rs"]
mod leads;
#[path = "bench/rebuild.rs"]
mod rebuild;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/webhooks.rs"]
mod webhooks;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use report::{Machine, Section};

#[derive(Debug, Parser)]
#[command(
    name = "jeanus-bench",
    about = "Measure Jeanus against real PostgreSQL and NATS"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

/// Settings every scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The PostgreSQL server to measure; each scenario creates (and drops)
    /// a scratch database `jeanus_bench_<random>` on it.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Length of each timed measurement, in seconds.
    #[arg(long, global = true, default_value_t = 5.0)]
    seconds: f64,
    /// Warm-up before each measurement (not counted), in seconds.
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup: f64,
    /// Print JSON instead of Markdown.
    #[arg(long, global = true)]
    json: bool,
}

impl Common {
    pub fn database_url(&self) -> anyhow::Result<&str> {
        self.database_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "DATABASE_URL is not set: point it at a PostgreSQL server \
                     (postgres://user@host:port/database) or pass --database-url"
                )
            })
    }

    pub fn window(&self) -> anyhow::Result<harness::Window> {
        let seconds = |name: &str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(anyhow::anyhow!(
                    "--{name} must be a number of seconds ≥ 0, not {value}"
                ))
            }
        };
        let measure = seconds("seconds", self.seconds)?;
        if measure.is_zero() {
            anyhow::bail!("--seconds must be more than 0");
        }
        Ok(harness::Window {
            warmup: seconds("warmup", self.warmup)?,
            measure,
        })
    }
}

#[derive(Debug, Clone, Subcommand)]
enum Scenario {
    /// Event-store appends (group commit) against plain autocommit INSERTs.
    Append(append::Args),
    /// Authenticated GET /api/v1/me (every layer) against GET /healthz.
    Auth(auth::Args),
    /// The hash chain: append cost with and without it; verify's rate over 1,000,000 events.
    Chain(chain::Args),
    /// 100,000 leads: list throughput against direct SQL, POST, projection lag.
    Leads(leads::Args),
    /// Webhooks: PATCH → receiver latency at 500/s, deliveries/s to 100 endpoints.
    Webhooks(webhooks::Args),
    /// 1,000,000 events: every read model rebuilt from the log, against a COPY of its rows.
    Rebuild(rebuild::Args),
}

impl Scenario {
    /// Every scenario with its default arguments, for a run without a subcommand.
    fn all() -> Vec<Scenario> {
        vec![
            Scenario::Append(append::Args::default()),
            Scenario::Auth(auth::Args::default()),
            Scenario::Chain(chain::Args::default()),
            Scenario::Leads(leads::Args::default()),
            Scenario::Webhooks(webhooks::Args::default()),
            Scenario::Rebuild(rebuild::Args::default()),
        ]
    }

    async fn run(&self, common: &Common) -> anyhow::Result<Section> {
        match self {
            Scenario::Append(args) => append::run(common, args).await,
            Scenario::Auth(args) => auth::run(common, args).await,
            Scenario::Chain(args) => chain::run(common, args).await,
            Scenario::Leads(args) => leads::run(common, args).await,
            Scenario::Webhooks(args) => webhooks::run(common, args).await,
            Scenario::Rebuild(args) => rebuild::run(common, args).await,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The services run in-process: their warnings and errors (RUST_LOG,
    // default `warn`) go to stderr with the progress lines.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jeanus-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let scenarios = match cli.scenario {
        Some(one) => vec![one],
        None => Scenario::all(),
    };
    let machine = Machine::describe(cli.common.database_url()?).await?;
    let mut sections = Vec::new();
    for scenario in &scenarios {
        sections.push(scenario.run(&cli.common).await?);
    }
    if cli.common.json {
        println!("{}", report::json(&machine, &sections)?);
    } else {
        print!("{}", report::markdown(&machine, &sections));
    }
    Ok(())
}
