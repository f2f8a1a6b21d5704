//! One measurement: N tasks repeat an operation through a warm-up and then a
//! timed window, and every operation started inside the window has its
//! latency recorded in an HdrHistogram.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

/// Highest latency the histograms track (longer ones are clamped): one hour.
const MAX_MICROS: u64 = 3_600_000_000;

#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Run, but do not count: pools, caches and the planner settle.
    pub warmup: Duration,
    /// Count operations started in this span after the warm-up.
    pub measure: Duration,
}

/// What one measurement saw.
pub struct Measured {
    pub operations: u64,
    pub window: Duration,
    /// Latency of each operation, in microseconds.
    pub latency: Histogram<u64>,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.window.as_secs_f64()
    }

    /// The latency at `quantile` (0.5 for p50), in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

/// Run `op` from `concurrency` tasks, each starting the next as soon as the
/// last finished (a closed loop, like callers waiting on their requests).
/// The first error stops the measurement and is returned.
pub async fn run<F, Fut>(concurrency: usize, window: Window, op: F) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let from = Instant::now() + window.warmup;
    let until = from + window.measure;

    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let op = op.clone();
        tasks.spawn(async move {
            let mut latency = histogram()?;
            let mut operations = 0u64;
            loop {
                let began = Instant::now();
                if began >= until {
                    break;
                }
                op().await?;
                if began >= from {
                    let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.saturating_record(micros.max(1));
                    operations += 1;
                }
            }
            anyhow::Ok((operations, latency))
        });
    }

    let mut measured = Measured {
        operations: 0,
        window: window.measure,
        latency: histogram()?,
    };
    // Dropping the set on an early return aborts the other tasks.
    while let Some(joined) = tasks.join_next().await {
        let (operations, latency) = joined.context("a benchmark task panicked")??;
        measured.operations += operations;
        measured
            .latency
            .add(&latency)
            .context("failed to merge latency histograms")?;
    }
    Ok(measured)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).context("failed to create a latency histogram")
}
