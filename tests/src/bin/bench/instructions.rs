//! What a call costs the database, in instructions: a measure that a shared
//! machine's changing clock and neighbours do not move, for differences
//! smaller than what those move timed figures by from run to run.
//!
//! A private PostgreSQL cluster (its own directory, a Unix socket there, no
//! TCP) gets the migrations ([`Cluster::migrated`]). For each variant to
//! measure ([`Cluster::per_call`]), a fresh copy of it runs the variant's
//! set-up on a server (a function swapped in, warm-up calls), then [`FEW`]
//! and, on another fresh copy, more calls in single-user mode (`postgres
//! --single`, one backend, each line its own transaction) under `valgrind
//! --tool=callgrind`. The difference of the two runs' instructions over the
//! difference in calls is one call's: start-up and shutdown cancel out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};
use uuid::Uuid;

/// Calls of the shorter run.
pub const FEW: usize = 10;
const DATABASE: &str = "measured";
/// The socket's port number: only names the socket file in the cluster's
/// own directory, so it cannot clash with another server.
const PORT: u16 = 5432;

/// The options of a scenario that counts instructions.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Do not count instructions (which needs valgrind and PostgreSQL's
    /// server programs on this machine).
    #[arg(long)]
    pub skip_instructions: bool,
    /// PostgreSQL's server programs (initdb, pg_ctl, postgres), for the
    /// instruction counts: by default the newest /usr/lib/postgresql/*/bin.
    #[arg(long, env = "JEANUS_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            skip_instructions: false,
            pg_bin: std::env::var_os("JEANUS_PG_BIN").map(PathBuf::from),
        }
    }
}

impl Options {
    /// A migrated cluster to count on, unless `--skip-instructions`.
    pub async fn cluster(&self) -> anyhow::Result<Option<Cluster>> {
        if self.skip_instructions {
            return Ok(None);
        }
        let pg_bin = match &self.pg_bin {
            Some(dir) => dir.clone(),
            None => newest_pg_bin()?,
        };
        Ok(Some(Cluster::migrated(&pg_bin).await?))
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `postgres`.
fn newest_pg_bin() -> anyhow::Result<PathBuf> {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: pass --pg-bin or set JEANUS_PG_BIN")?;
    versions
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server under /usr/lib/postgresql: pass --pg-bin")
}

/// The PostgreSQL server's programs, and who runs them: PostgreSQL refuses
/// to run as root, so as root they run as `postgres` (through `runuser`).
struct Server {
    bin: PathBuf,
    owner: Option<String>,
}

impl Server {
    /// `program` (one of the server's, or another such as `valgrind`) as
    /// the server's owner.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.owner {
            Some(owner) => {
                let mut command = Command::new("runuser");
                command.args(["-u", owner, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn program(&self, name: &str) -> Command {
        self.command(self.bin.join(name))
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
        let mut command = self.program("pg_ctl");
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
        let mut command = self.program("pg_ctl");
        command
            .arg("-D")
            .arg(data)
            .args(["-w", "-m", "fast", "stop"]);
        self.run(command, "pg_ctl stop")
    }
}

/// A private cluster with the migrations applied (`base`), copied afresh
/// (`data`) for each run; its directory is removed (its server stopped
/// first) when dropped.
pub struct Cluster {
    server: Server,
    dir: PathBuf,
}

impl Cluster {
    /// A new cluster of the server programs in `pg_bin`, migrated, with
    /// `events.hash` nullable (so that a function without the chain can be
    /// swapped in).
    pub async fn migrated(pg_bin: &Path) -> anyhow::Result<Self> {
        let server = Server {
            bin: pg_bin.to_owned(),
            owner: nix::unistd::geteuid()
                .is_root()
                .then(|| "postgres".to_owned()),
        };
        let dir = std::env::temp_dir().join(format!("jeanus-instructions-{}", Uuid::now_v7()));
        std::fs::create_dir(&dir).context("could not create the cluster's directory")?;
        let cluster = Self { server, dir };
        if let Some(owner) = &cluster.server.owner {
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

        let mut initdb = cluster.server.program("initdb");
        initdb
            .arg("-D")
            .arg(cluster.base())
            .args(["-U", "postgres", "-A", "trust", "--no-sync"]);
        cluster.server.run(initdb, "initdb")?;
        cluster.server.start(&cluster.base(), &cluster.dir)?;
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
        cluster.server.stop(&cluster.base())?;
        Ok(cluster)
    }

    /// Instructions per call: on fresh copies of the cluster, `setup` (SQL
    /// run on a server first), then `calls(first, n)` (the text of calls
    /// `first..first + n`, one a line; `first` is the number of calls
    /// `setup` made) for [`FEW`] and for `FEW + measured` calls, each run's
    /// output checked by `check(output, n)`.
    pub async fn per_call(
        &self,
        setup: &str,
        calls_before: usize,
        measured: usize,
        calls: impl Fn(usize, usize) -> anyhow::Result<String>,
        check: impl Fn(&str, usize) -> anyhow::Result<()>,
    ) -> anyhow::Result<f64> {
        let mut totals = [0_u64; 2];
        for (total, n) in totals.iter_mut().zip([FEW, FEW + measured]) {
            self.restore()?;
            self.server.start(&self.data(), &self.dir)?;
            let mut db = self.options(DATABASE).connect().await?;
            sqlx::raw_sql(setup).execute(&mut db).await?;
            db.close().await?;
            self.server.stop(&self.data())?;
            let output = self.callgrind(&calls(calls_before, n)?, n)?;
            check(&output.stdout, n)?;
            *total = output.instructions;
        }
        Ok((totals[1] as f64 - totals[0] as f64) / measured as f64)
    }

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

    /// A single-user backend on `data` running `calls` (`n` of them) under
    /// callgrind.
    fn callgrind(&self, calls: &str, n: usize) -> anyhow::Result<Run> {
        use std::io::Write as _;
        let out = self.dir.join(format!("callgrind.{n}"));
        let mut command = self.server.command("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(self.server.bin.join("postgres"))
            .arg("--single")
            .arg("-D")
            .arg(self.data())
            .arg(DATABASE)
            .current_dir(&self.dir)
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
            .map_err(|_| anyhow::anyhow!("the writer of the calls panicked"))??;
        ensure!(
            output.status.success(),
            "valgrind postgres --single failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let profile = std::fs::read_to_string(&out).context("no callgrind output")?;
        let Some(total) = profile
            .lines()
            .find_map(|line| line.strip_prefix("summary: "))
        else {
            bail!("callgrind's output has no summary line");
        };
        Ok(Run {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            instructions: total
                .trim()
                .parse()
                .context("callgrind's summary is not a count")?,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stopped already unless something failed half-way.
        let _ = self.server.stop(&self.data());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a single-user backend printed, and the instructions it ran.
struct Run {
    stdout: String,
    instructions: u64,
}

/// How many times `output` (a single-user backend's) shows `column` with
/// `value`, i.e. how many calls answered it.
pub fn answered(output: &str, column: &str, value: impl std::fmt::Display) -> usize {
    output.matches(&format!("{column} = \"{value}\"")).count()
}

/// The first error a single-user backend printed, if any.
pub fn first_error(output: &str) -> &str {
    output
        .lines()
        .find(|line| line.contains("ERROR"))
        .unwrap_or("")
}
