//! Group commit for any write: callers on many tasks submit one item each
//! and await its answer, while one task per process sends whatever has
//! queued up as one batch — one round trip and one commit for many callers.
//! The event store, the audit log and the rate limiter all write this way.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

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
        mut flush: F,
    ) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (queue, mut rx) = mpsc::channel::<(T, oneshot::Sender<R>)>(QUEUE_DEPTH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
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
                let answers = flush(items).await;
                debug_assert_eq!(answers.len(), replies.len(), "flush must answer every item");
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The caller may have given up (its request was cancelled).
                    let _ = reply.send(answer);
                }
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
}
