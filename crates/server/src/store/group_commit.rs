//! Group commit for publishing, shared by both backends: publishes queue up, one task
//! takes whatever has queued (at most [`MAX_BATCH`]) and hands it to the backend to
//! commit in one transaction, then answers each caller. Under load this turns hundreds
//! of small transactions into a few large ones; alone, a publish still commits at once.
//! If a batch fails, each publish is retried on its own so one cannot fail the others.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{PublishEvent, Published, StoreError, StoreResult};

/// Most publishes committed together.
pub(crate) const MAX_BATCH: usize = 256;

/// A publish waiting for the group commit.
pub(crate) struct PublishJob {
    pub project_id: Uuid,
    pub event_type: String,
    pub data: String,
    pub idempotency_key: Option<String>,
    pub idempotency_since: DateTime<Utc>,
    reply: oneshot::Sender<StoreResult<Published>>,
}

impl PublishJob {
    pub fn event(&self) -> PublishEvent<'_> {
        PublishEvent {
            project_id: self.project_id,
            event_type: &self.event_type,
            data: &self.data,
            idempotency_key: self.idempotency_key.as_deref(),
            idempotency_since: self.idempotency_since,
        }
    }
}

/// What a backend provides to the group commit.
#[async_trait]
pub(crate) trait Committer: Send + Sync + 'static {
    /// Commits every job in one transaction; one result per job, in order.
    async fn commit_batch(&self, jobs: &[PublishJob]) -> StoreResult<Vec<Published>>;
    /// Commits one job on its own (the fallback after a failed batch).
    async fn commit_one(&self, job: &PublishJob) -> StoreResult<Published>;
}

/// The queue callers publish through.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit(mpsc::Sender<PublishJob>);

impl GroupCommit {
    /// Starts the committing task on `committer`; it ends when the last clone of the
    /// returned queue is dropped.
    pub fn spawn(committer: impl Committer) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(commit_loop(committer, queue));
        Self(jobs)
    }

    /// Queues `event` and waits until it is committed.
    pub async fn publish(&self, event: PublishEvent<'_>) -> StoreResult<Published> {
        let (reply, answer) = oneshot::channel();
        let job = PublishJob {
            project_id: event.project_id,
            event_type: event.event_type.to_owned(),
            data: event.data.to_owned(),
            idempotency_key: event.idempotency_key.map(str::to_owned),
            idempotency_since: event.idempotency_since,
            reply,
        };
        let closed = || StoreError::Database(sqlx::Error::PoolClosed);
        self.0.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn commit_loop(committer: impl Committer, mut queue: mpsc::Receiver<PublishJob>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A commit that takes no time to begin (SQLite's direct writes) would go with
        // the first publish alone under load: first the tasks that are ready run,
        // and what they queue goes in the same commit.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match committer.commit_batch(&batch).await {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), "group commit failed; publishing one by one");
                for job in batch.drain(..) {
                    let result = committer.commit_one(&job).await;
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Commits nothing; notes the size of each batch.
    struct Counting(Arc<Mutex<Vec<usize>>>);

    fn published() -> Published {
        Published {
            event_id: Uuid::now_v7(),
            deliveries: 0,
            created_at: Utc::now(),
            duplicate: false,
        }
    }

    #[async_trait]
    impl Committer for Counting {
        async fn commit_batch(&self, jobs: &[PublishJob]) -> StoreResult<Vec<Published>> {
            self.0.lock().unwrap().push(jobs.len());
            Ok(jobs.iter().map(|_| published()).collect())
        }

        async fn commit_one(&self, _job: &PublishJob) -> StoreResult<Published> {
            Ok(published())
        }
    }

    /// One runtime thread, where a task woken by the running one runs next: without a
    /// turn for the others first, the commit would wake at the first publish and take
    /// it alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn publishes_ready_at_once_go_in_one_commit() {
        const PUBLISHES: usize = 8;
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let queue = GroupCommit::spawn(Counting(sizes.clone()));
        // Spawned from a task on the runtime's thread: they wait in its queue, in
        // order, until this task yields.
        tokio::spawn(async move {
            let publishes: Vec<_> = (0..PUBLISHES)
                .map(|_| {
                    let queue = queue.clone();
                    tokio::spawn(async move {
                        queue
                            .publish(PublishEvent {
                                project_id: Uuid::now_v7(),
                                event_type: "batch.test",
                                data: "{}",
                                idempotency_key: None,
                                idempotency_since: Utc::now(),
                            })
                            .await
                    })
                })
                .collect();
            for publish in publishes {
                publish.await.unwrap().unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![PUBLISHES]);
    }
}
