//! Group commit for any write: callers on many tasks submit one item each
//! and await its answer, while one task per process sends whatever has
//! queued up as one batch — one round trip and one commit for many callers.
//! The event store, the audit log and the rate limiter all write this way.
//!
//! A batch leaves as soon as the queue runs dry, unless the writer was
//! given a [`Linger`]: then it waits a little for the items its callers
//! have announced ([`Expected`]), so that one commit (one WAL flush, which
//! costs milliseconds on some disks) carries them too instead of the next.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// Appends queued before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

/// A handle to submit items to a batching task. Cheap to clone.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Queued<T, R>>,
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

/// How many items callers have announced and not yet submitted: work in
/// progress whose item will follow shortly. Cheap to clone; every clone
/// shares the count.
#[derive(Debug, Clone, Default)]
pub struct Expected(Arc<AtomicUsize>);

impl Expected {
    /// One more item is on its way, until the guard is dropped (by
    /// [`Batcher::submit_announced`], or when the caller gives up).
    pub fn announce(&self) -> Announced {
        self.0.fetch_add(1, Ordering::Relaxed);
        Announced(self.0.clone())
    }

    /// Items announced and not yet submitted.
    pub fn pending(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// An announced item, counted in its [`Expected`] until dropped.
#[derive(Debug)]
pub struct Announced(Arc<AtomicUsize>);

impl Drop for Announced {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a batch that has emptied the queue does before it leaves.
#[derive(Debug, Clone)]
pub enum Linger {
    /// Waits, for `at_most`, while `expected` items are still on their way:
    /// a bigger batch for the price of a short delay. With nothing
    /// announced, a batch leaves at once, so a lone caller never waits.
    ForAnnounced {
        expected: Expected,
        /// The longest wait (tokio's timer rounds it up to whole
        /// milliseconds).
        at_most: Duration,
    },
    /// Lets the runtime run its other ready tasks, up to `rounds` times,
    /// for as long as each round adds items: on a busy runtime the callers
    /// queued behind those tasks join the batch; on an idle one the first
    /// round adds nothing and costs microseconds.
    WhileGrowing { rounds: usize },
}

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
        Self::start(1, None, max_items, max_weight, weight, flush)
    }

    /// As [`Batcher::spawn`], with up to `in_flight` batches flushing at
    /// once: a batch gathers while earlier ones wait on their commits, so a
    /// caller waits for about one commit instead of one and a half. For
    /// writers whose batches are independent; `flush` must then cope with
    /// running concurrently.
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
        Self::start(in_flight, None, max_items, max_weight, weight, flush)
    }

    /// As [`Batcher::spawn`], each batch waiting as `linger` says for the
    /// items announced to it.
    pub fn spawn_lingering<F, Fut>(
        linger: Linger,
        max_items: usize,
        max_weight: usize,
        weight: fn(&T) -> usize,
        flush: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Self::start(1, Some(linger), max_items, max_weight, weight, flush)
    }

    fn start<F, Fut>(
        in_flight: usize,
        linger: Option<Linger>,
        max_items: usize,
        max_weight: usize,
        weight: fn(&T) -> usize,
        flush: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::channel::<Queued<T, R>>(QUEUE_DEPTH);
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
                let mut batch = Gathering::new(max_items, max_weight, weight);
                batch.add(first);
                batch.drain(&mut rx);
                match &linger {
                    None => {}
                    Some(Linger::ForAnnounced { expected, at_most }) => {
                        let deadline = Instant::now() + *at_most;
                        while !batch.full() && expected.pending() > 0 {
                            match tokio::time::timeout_at(deadline, rx.recv()).await {
                                Ok(Some(next)) => {
                                    batch.add(next);
                                    batch.drain(&mut rx);
                                }
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                    Some(Linger::WhileGrowing { rounds }) => {
                        for _ in 0..*rounds {
                            let before = batch.items.len();
                            tokio::task::yield_now().await;
                            batch.drain(&mut rx);
                            if batch.items.len() == before || batch.full() {
                                break;
                            }
                        }
                    }
                }
                let (items, replies) = (batch.items, batch.replies);
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
        self.send(item, None).await
    }

    /// Submit the item `announced` stood for and wait for its answer. The
    /// announcement ends when the batching task takes the item in (not
    /// before, or a batch could leave while counting on neither).
    pub async fn submit_announced(&self, item: T, announced: Announced) -> Result<R, Stopped> {
        self.send(item, Some(announced)).await
    }

    async fn send(&self, item: T, announced: Option<Announced>) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued {
                item,
                reply,
                announced,
            })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

/// An item in the queue, with where its answer goes.
struct Queued<T, R> {
    item: T,
    reply: oneshot::Sender<R>,
    /// Ended (dropped) as the batching task takes the item in.
    announced: Option<Announced>,
}

/// The batch being gathered.
struct Gathering<T, R> {
    items: Vec<T>,
    replies: Vec<oneshot::Sender<R>>,
    weight: usize,
    max_items: usize,
    max_weight: usize,
    weigh: fn(&T) -> usize,
}

impl<T, R> Gathering<T, R> {
    fn new(max_items: usize, max_weight: usize, weigh: fn(&T) -> usize) -> Self {
        Self {
            items: Vec::new(),
            replies: Vec::new(),
            weight: 0,
            max_items,
            max_weight,
            weigh,
        }
    }

    fn full(&self) -> bool {
        self.items.len() >= self.max_items || self.weight >= self.max_weight
    }

    fn add(&mut self, queued: Queued<T, R>) {
        let Queued {
            item,
            reply,
            announced,
        } = queued;
        drop(announced);
        self.weight += (self.weigh)(&item);
        self.items.push(item);
        self.replies.push(reply);
    }

    /// Takes in what is queued, until the batch is full.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Queued<T, R>>) {
        while !self.full() {
            match rx.try_recv() {
                Ok(next) => self.add(next),
                Err(_) => break,
            }
        }
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

    /// A writer that waits up to `at_most` for announced items, answering
    /// each item with itself; with the sizes of the batches it sent.
    fn lingering_for_announced(
        at_most: std::time::Duration,
    ) -> (Expected, Batcher<u32, u32>, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let expected = Expected::default();
        let linger = Linger::ForAnnounced {
            expected: expected.clone(),
            at_most,
        };
        let batcher = Batcher::spawn_lingering(
            linger,
            100,
            100,
            |_: &u32| 1,
            move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                async move { items }
            },
        );
        (expected, batcher, sizes)
    }

    #[tokio::test]
    async fn a_batch_waits_for_an_announced_item() {
        let (expected, batcher, sizes) = lingering_for_announced(std::time::Duration::from_secs(5));
        let late = expected.announce();
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !first.is_finished(),
            "the batch left without the announced item"
        );
        let second = batcher.submit_announced(2, late).await.expect("answered");
        assert_eq!(second, 2);
        assert_eq!(first.await.expect("task").expect("answered"), 1);
        assert_eq!(*sizes.lock().expect("lock"), vec![2]);
    }

    #[tokio::test]
    async fn a_lingering_batch_leaves_at_its_deadline_or_at_once_when_nothing_is_announced() {
        let (expected, batcher, _) = lingering_for_announced(std::time::Duration::from_millis(30));
        // Nothing announced: no wait (far below the 30 ms deadline).
        let began = std::time::Instant::now();
        batcher.submit(1).await.expect("answered");
        assert!(
            began.elapsed() < std::time::Duration::from_millis(25),
            "{:?}",
            began.elapsed()
        );
        // An announcement never kept: the batch leaves at the deadline.
        let forgotten = expected.announce();
        let began = std::time::Instant::now();
        batcher.submit(2).await.expect("answered");
        let waited = began.elapsed();
        assert!(waited >= std::time::Duration::from_millis(30), "{waited:?}");
        assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
        // A dropped announcement counts no more.
        drop(forgotten);
        assert_eq!(expected.pending(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_growing_over_runtime_rounds_still_answers_everyone() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn_lingering(
            Linger::WhileGrowing { rounds: 8 },
            16,
            100,
            |_: &u32| 1,
            move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                async move { items.into_iter().map(|i| i + 1).collect::<Vec<_>>() }
            },
        );
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.expect("task");
            assert_eq!(answer.expect("answered"), i + 1);
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&s| s <= 16), "{sizes:?}");
    }
}
