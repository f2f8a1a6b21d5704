//! Group commit for any write: callers on many tasks submit one item each
//! and await its answer, while one task per process sends whatever has
//! queued up as one batch — one round trip and one commit for many callers.
//! The event store, the audit log and the rate limiter all write this way.

use std::future::Future;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// Appends queued before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

/// A handle to submit items to a batching task. Cheap to clone.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// The batching task has stopped (the runtime is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batch writer has stopped")]
pub struct Stopped;

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Start a task that calls `flush` with up to `max_items` queued items
    /// (fewer if the `weight` of the batch reaches `max_weight` first) and
    /// sends each caller its answer. `flush` must answer every item, in order.
    /// One batch is in flight at a time: while it is, the next one gathers.
    pub fn spawn<F, Fut>(
        max_items: usize,
        max_weight: usize,
        weight: fn(&T) -> usize,
        flush: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Self::spawn_pipelined(1, max_items, max_weight, weight, flush)
    }

    /// As [`Batcher::spawn`], with up to `in_flight` batches flushing at
    /// once: a batch gathers while earlier ones wait on their commits, so a
    /// caller waits for about one commit instead of one and a half. For
    /// writers whose batches are independent (the audit log, the rate
    /// limiter); `flush` must then cope with running concurrently.
    pub fn spawn_pipelined<F, Fut>(
        in_flight: usize,
        max_items: usize,
        max_weight: usize,
        weight: fn(&T) -> usize,
        flush: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::channel::<(T, oneshot::Sender<R>)>(QUEUE_DEPTH);
        let flush = Arc::new(flush);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                // Take a slot before gathering, so that while every slot is
                // busy the queue keeps filling the next batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut total = weight(&first.0);
                let mut batch = vec![first];
                while batch.len() < max_items && total < max_weight {
                    match rx.try_recv() {
                        Ok(next) => {
                            total += weight(&next.0);
                            batch.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
                let flush = flush.clone();
                tokio::spawn(async move {
                    let answers = flush(items).await;
                    debug_assert_eq!(answers.len(), replies.len(), "flush must answer every item");
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        // The caller may have given up (its request was cancelled).
                        let _ = reply.send(answer);
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Submit one item and wait for its answer.
    pub async fn submit(&self, item: T) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((item, reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn concurrent_submissions_share_batches_and_get_their_own_answers() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn(
            8,
            100,
            |_: &u32| 1,
            move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                async move {
                    // Hold the batch a moment so the next one gathers.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
                }
            },
        );
        let tasks: Vec<_> = (0..40u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.expect("task");
            assert_eq!(answer.expect("answered"), i * 2);
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
        assert!(sizes.len() < 40, "nothing was batched: {sizes:?}");
    }

    #[tokio::test]
    async fn a_batch_stops_growing_at_its_weight() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn(
            100,
            10,
            |w: &usize| *w,
            move |items: Vec<usize>| {
                seen.lock().expect("lock").push(items.iter().sum::<usize>());
                async move { vec![(); items.len()] }
            },
        );
        // Fill the queue before the task first runs.
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(4).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("answered");
        }
        // A batch closes once it weighs 10 or more: never more than 12 here.
        assert!(sizes.lock().expect("lock").iter().all(|&w| w <= 12));
    }

    #[tokio::test]
    async fn pipelined_batches_flush_concurrently_up_to_the_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let batcher = Batcher::spawn_pipelined(
            2,
            1,
            1,
            |_: &u32| 1,
            move |items: Vec<u32>| {
                let (r, p) = (r.clone(), p.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    items
                }
            },
        );
        let tasks: Vec<_> = (0..6u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.expect("task");
            assert_eq!(answer.expect("answered"), i);
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
