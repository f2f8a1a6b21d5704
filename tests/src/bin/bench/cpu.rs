//! CPU time spent on a measurement, from `/proc` (Linux; zero elsewhere):
//! this process's, and PostgreSQL's for the scratch database. Unlike a
//! rate, CPU time does not count the time a task waits for a core another
//! program holds, so on a shared machine it moves far less from run to run.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

use jeanus_tests::process::cpu_time;

use crate::harness::Window;

/// CPU time used, by whom.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// This process: the clients, and whatever it hosts (the api, the store).
    pub here: Duration,
    /// The PostgreSQL processes serving the scratch database, and the
    /// server's background processes (WAL writer, checkpointer, …).
    pub postgres: Duration,
    /// The one other process asked for (the Redis server), if it is one of
    /// this machine's.
    pub redis: Option<Duration>,
}

impl Cpu {
    pub fn total(&self) -> Duration {
        self.here + self.postgres
    }

    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            here: self.here.saturating_sub(before.here),
            postgres: self.postgres.saturating_sub(before.postgres),
            redis: self
                .redis
                .zip(before.redis)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }

    pub fn add(&mut self, other: &Cpu) {
        self.here += other.here;
        self.postgres += other.postgres;
        self.redis = match (self.redis, other.redis) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// The CPU time used so far; `stats` is a pool on the scratch database,
/// whose own backend is left out; `redis`, the Redis server's process id.
pub async fn now(stats: &PgPool, redis: Option<u32>) -> anyhow::Result<Cpu> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity \
         where (datname = current_database() or datname is null) \
           and pid <> pg_backend_pid()",
    )
    .fetch_all(stats)
    .await
    .context("failed to list PostgreSQL's processes")?;
    Ok(Cpu {
        here: cpu_time("self").unwrap_or_default(),
        postgres: pids
            .iter()
            .filter_map(|pid| cpu_time(&pid.to_string()))
            .sum(),
        redis: redis.and_then(|pid| cpu_time(&pid.to_string())),
    })
}

/// Runs `work`, which measures over `window` (as [`crate::harness::run`]
/// does), and the CPU time used inside the window's measured span.
pub async fn during<T>(
    stats: &PgPool,
    redis: Option<u32>,
    window: Window,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Cpu)> {
    let sampled = async {
        tokio::time::sleep(window.warmup).await;
        let before = now(stats, redis).await?;
        tokio::time::sleep(window.measure).await;
        anyhow::Ok(now(stats, redis).await?.since(&before))
    };
    let (done, cpu) = tokio::join!(work, sampled);
    Ok((done?, cpu?))
}

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`: in
/// nanoseconds, unlike `/proc`'s ticks).
pub fn this_thread() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}
