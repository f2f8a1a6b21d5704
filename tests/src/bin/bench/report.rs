//! What a run prints: the machine and server it ran on, then one section per
//! scenario, as Markdown (for BENCHMARKS.md) or JSON.

use anyhow::Context;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::database;

/// Server settings that change what a commit costs, shown with every run.
const SETTINGS: &[&str] = &[
    "max_connections",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "commit_siblings",
    "wal_level",
];

/// The machine the benchmark ran on, and its PostgreSQL.
#[derive(Debug)]
pub struct Machine {
    pub cores: usize,
    pub postgres_version: String,
    pub settings: Vec<(String, String)>,
}

impl Machine {
    pub async fn describe(database_url: &str) -> anyhow::Result<Self> {
        let options = database::connect_options(database_url)?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at DATABASE_URL={}",
                    schema::connect::redact_url(database_url, false)
                )
            })?;
        let postgres_version = database::show(&mut conn, "server_version").await?;
        let mut settings = Vec::new();
        for name in SETTINGS {
            settings.push((name.to_string(), database::show(&mut conn, name).await?));
        }
        let _ = conn.close().await;
        Ok(Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            postgres_version,
            settings,
        })
    }
}

/// One scenario's results.
pub struct Section {
    /// The subcommand's name (`append`).
    pub name: &'static str,
    /// Markdown, starting with a `##` heading.
    pub markdown: String,
    pub json: Value,
}

pub fn markdown(machine: &Machine, sections: &[Section]) -> String {
    let mut out = String::from("# jeanus-bench\n\n");
    out.push_str(&format!(
        "Machine: {} cores (`available_parallelism`), PostgreSQL {}.\n\n",
        machine.cores, machine.postgres_version
    ));
    out.push_str("| setting | value |\n|---|---|\n");
    for (name, value) in &machine.settings {
        out.push_str(&format!("| `{name}` | {value} |\n"));
    }
    for section in sections {
        out.push('\n');
        out.push_str(&section.markdown);
    }
    out
}

pub fn json(machine: &Machine, sections: &[Section]) -> anyhow::Result<String> {
    let scenarios: serde_json::Map<String, Value> = sections
        .iter()
        .map(|s| (s.name.to_owned(), s.json.clone()))
        .collect();
    let settings: serde_json::Map<String, Value> = machine
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let doc = serde_json::json!({
        "machine": {
            "cores": machine.cores,
            "postgres_version": machine.postgres_version,
            "settings": settings,
        },
        "scenarios": scenarios,
    });
    serde_json::to_string_pretty(&doc).context("failed to render the results as JSON")
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
