//! What one-event appends cost the database, in instructions: a measure
//! that a shared machine's changing clock and neighbours do not move, for
//! a difference (the chain's) smaller than what those move from run to run.
//!
//! A private PostgreSQL cluster (its own directory, a Unix socket there, no
//! TCP) gets the migrations; then, for each `jeanus_append` to compare, a
//! fresh copy of it runs [`FEW`] and then more calls of one batch in
//! single-user mode (`postgres --single`, one backend, each line its own
//! transaction) under `valgrind --tool=callgrind`. The difference of the
//! two runs' instructions over the difference in calls is one call's:
//! start-up and shutdown cancel out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};
use uuid::Uuid;

use crate::append::Shape;

/// Events the difference between the two runs covers, at least: calls
/// differ in which B-tree pages they split, so one call is not enough.
const EVENTS_MEASURED: usize = 200;
/// Calls the difference covers, at least.
const CALLS_MEASURED: usize = 20;
/// Calls of the shorter run.
const FEW: usize = 10;
/// Calls each copy runs on a server before it is measured, so that the log
/// is not empty.
const WARM_UP: usize = 20;
const DATABASE: &str = "appends";
/// The socket's port number: only names the socket file in the cluster's
/// own directory, so it cannot clash with another server.
const PORT: u16 = 5432;

/// A batch to measure: `appends` appends of `events` events each, each to
/// a new stream of one tenant.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Batch {
    pub appends: usize,
    pub events: usize,
}

impl Batch {
    fn events_per_call(&self) -> usize {
        self.appends * self.events
    }

    /// `n` calls of `jeanus_append` for batches of this shape, one a line,
    /// as the event store makes them: the batch as JSON text (the events of
    /// `append`'s scenario, each append to a new stream), the head the log
    /// will be at (the cluster's log holds `calls_before` such batches), the
    /// tenant's tip and a hash for each event: the writer's prediction
    /// holds, so a function that takes the writer's hashes takes them.
    /// Each answers how many appends it appended and how many of them with
    /// the writer's hashes.
    fn calls(&self, shape: &Shape, calls_before: usize, n: usize) -> anyhow::Result<String> {
        let mut sql = String::from(
            "prepare append(jsonb, bigint, uuid[], bytea[], bytea[]) as \
             select count(*) as appended, count(*) filter (where writer_chained) as chained \
             from jeanus_append($1, $2, $3, $4, $5);\n",
        );
        let tenant = shape.stream().tenant_id;
        for call in calls_before..calls_before + n {
            let batch: Vec<_> = (0..self.appends)
                .map(|_| {
                    let stream = shape.stream();
                    let events: Vec<_> = (0..self.events).map(|_| shape.event()).collect();
                    serde_json::json!({
                        "tenant_id": stream.tenant_id, "stream_type": stream.stream_type,
                        "stream_id": stream.stream_id, "expected": 0, "events": events,
                    })
                })
                .collect();
            let batch = serde_json::to_string(&batch)?.replace('\'', "''");
            sql.push_str(&format!(
                "execute append('{batch}', {head}, array['{tenant}'::uuid], \
                 array['\\x{genesis}'::bytea], array_fill('\\x{hash}'::bytea, array[{total}]));\n",
                head = call * self.events_per_call(),
                genesis = "00".repeat(32),
                hash = "ab".repeat(32),
                total = self.events_per_call(),
            ));
        }
        Ok(sql)
    }

    /// Calls of the longer run.
    fn many(&self) -> usize {
        FEW + CALLS_MEASURED.max(EVENTS_MEASURED.div_ceil(self.events_per_call()))
    }
}

/// The PostgreSQL server's programs, and who runs them: PostgreSQL refuses
/// to run as root, so as root they run as `postgres` (through `runuser`).
struct Server {
    bin: PathBuf,
    owner: Option<String>,
}

impl Server {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.owner {
            Some(owner) => {
                let mut command = Command::new("runuser");
                command.args(["-u", owner, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    fn run(&self, mut command: Command, what: &str) -> anyhow::Result<()> {
        let output = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not run {what}"))?;
        ensure!(
            output.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    fn start(&self, data: &Path, dir: &Path) -> anyhow::Result<()> {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(data)
            .arg("-o")
            .arg(format!(
                "-c listen_addresses='' -k {} -p {PORT} -c fsync=off",
                dir.display()
            ))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "start"]);
        self.run(command, "pg_ctl start")
    }

    fn stop(&self, data: &Path) -> anyhow::Result<()> {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(data)
            .args(["-w", "-m", "fast", "stop"]);
        self.run(command, "pg_ctl stop")
    }
}

/// The cluster's directory, removed (its server stopped first) when dropped.
struct Cluster<'a> {
    server: &'a Server,
    dir: PathBuf,
}

impl Cluster<'_> {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn base(&self) -> PathBuf {
        self.dir.join("base")
    }

    fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.dir)
            .port(PORT)
            .username("postgres")
            .database(database)
    }

    /// `data` replaced by a copy of `base`.
    fn restore(&self) -> anyhow::Result<()> {
        let data = self.data();
        if data.exists() {
            std::fs::remove_dir_all(&data).context("could not remove the data directory")?;
        }
        let status = Command::new("cp")
            .arg("-a")
            .arg(self.base())
            .arg(&data)
            .status()
            .context("could not run cp")?;
        ensure!(status.success(), "could not copy the cluster");
        Ok(())
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        // Stopped already unless something failed half-way.
        let _ = self.server.stop(&self.data());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Instructions per call of `batch` with each of `functions` (each a
/// `create or replace function jeanus_append …`, on the migrated schema
/// with `events.hash` nullable, and whether it takes the writer's hashes),
/// in the order given.
pub async fn per_call(
    pg_bin: &Path,
    batch: Batch,
    functions: &[(&str, bool)],
) -> anyhow::Result<Vec<f64>> {
    let root = nix::unistd::geteuid().is_root();
    let server = Server {
        bin: pg_bin.to_owned(),
        owner: root.then(|| "postgres".to_owned()),
    };
    let dir = std::env::temp_dir().join(format!("jeanus-instructions-{}", Uuid::now_v7()));
    std::fs::create_dir(&dir).context("could not create the cluster's directory")?;
    let cluster = Cluster {
        server: &server,
        dir,
    };
    if let Some(owner) = &server.owner {
        let status = Command::new("chown")
            .arg(owner)
            .arg(&cluster.dir)
            .status()
            .context("could not run chown")?;
        ensure!(
            status.success(),
            "could not give the cluster's directory to {owner}"
        );
    }

    let mut initdb = server.command("initdb");
    initdb
        .arg("-D")
        .arg(cluster.base())
        .args(["-U", "postgres", "-A", "trust", "--no-sync"]);
    server.run(initdb, "initdb")?;
    server.start(&cluster.base(), &cluster.dir)?;
    {
        let mut admin = cluster.options("postgres").connect().await?;
        sqlx::query(&format!("create database {DATABASE}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let mut db = cluster.options(DATABASE).connect().await?;
        schema::MIGRATOR.run(&mut db).await?;
        sqlx::query("alter table events alter column hash drop not null")
            .execute(&mut db)
            .await?;
        db.close().await?;
    }
    server.stop(&cluster.base())?;

    let shape = Shape::new();
    let warm_up = batch.calls(&shape, 0, WARM_UP)?;
    let many = batch.many();
    let mut figures = Vec::with_capacity(functions.len());
    for &(function, takes_hashes) in functions {
        let mut totals = [0_u64; 2];
        for (total, n) in totals.iter_mut().zip([FEW, many]) {
            cluster.restore()?;
            server.start(&cluster.data(), &cluster.dir)?;
            let mut db = cluster.options(DATABASE).connect().await?;
            sqlx::raw_sql(function).execute(&mut db).await?;
            sqlx::raw_sql(&warm_up).execute(&mut db).await?;
            db.close().await?;
            server.stop(&cluster.data())?;
            let calls = batch.calls(&shape, WARM_UP, n)?;
            let chained = if takes_hashes { batch.appends } else { 0 };
            *total = callgrind(&server, &cluster, &calls, n, batch.appends, chained)?;
        }
        figures.push((totals[1] as f64 - totals[0] as f64) / (many - FEW) as f64);
    }
    Ok(figures)
}

/// The instructions a single-user backend runs for `calls` (`n` calls, one
/// a line), checking that each appended its `appends` appends, `chained` of
/// them with the writer's hashes.
fn callgrind(
    server: &Server,
    cluster: &Cluster<'_>,
    calls: &str,
    n: usize,
    appends: usize,
    chained: usize,
) -> anyhow::Result<u64> {
    use std::io::Write as _;
    let out = cluster.dir.join(format!("callgrind.{n}"));
    let mut command = match &server.owner {
        Some(owner) => {
            let mut command = Command::new("runuser");
            command.args(["-u", owner, "--", "valgrind"]);
            command
        }
        None => Command::new("valgrind"),
    };
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(server.bin.join("postgres"))
        .arg("--single")
        .arg("-D")
        .arg(cluster.data())
        .arg(DATABASE)
        .current_dir(&cluster.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .context("could not run valgrind (scripts/bench installs it)")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let input = calls.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer of the appends panicked"))??;
    ensure!(
        output.status.success(),
        "valgrind postgres --single failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answered =
        |column: &str, value: usize| stdout.matches(&format!("{column} = \"{value}\"")).count();
    ensure!(
        answered("appended", appends) == n && answered("chained", chained) == n,
        "of {n} calls, {} appended {appends} appends and {} took the writer's hashes for \
         {chained}: {}",
        answered("appended", appends),
        answered("chained", chained),
        stdout
            .lines()
            .find(|line| line.contains("ERROR"))
            .unwrap_or("")
    );
    let profile = std::fs::read_to_string(&out).context("no callgrind output")?;
    let Some(total) = profile
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
    else {
        bail!("callgrind's output has no summary line");
    };
    total
        .trim()
        .parse()
        .context("callgrind's summary is not a count")
}
