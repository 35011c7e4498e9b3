//! The tasks a running server owns. Every long-lived loop (housekeeping,
//! the client-address publisher, the space monitor, MQTT bridges, the
//! ingest driver, command retries, ownership upkeep) and every task spawned
//! for a request (a watcher) is spawned here, and [`Tasks::stop`] ends all
//! of them on shutdown, before Raft and RocksDB close.
//!
//! Two kinds: [`Tasks::spawn`] takes a task with nothing to finish, which
//! is dropped at its next await once the server stops; [`Tasks::spawn_graceful`]
//! hands the task the stop token, and the task ends itself (a bridge says
//! goodbye to its broker, a watcher tells its client why its stream ends).
//! Either way a task still running when the grace runs out is aborted, so
//! stopping is bounded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// What runs, by task id, with the name each was spawned under.
struct Running {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Running {
    /// Forgets a task that ended; a panic is logged (the rest go on).
    fn ended(&mut self, result: Result<(Id, ()), JoinError>) {
        let id = match &result {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let name = self.names.remove(&id).unwrap_or("unnamed");
        if let Err(e) = result {
            if e.is_panic() {
                tracing::error!(task = name, "task panicked: {e}");
            }
        }
    }
}

/// The tasks a server owns and the token that tells them to stop.
pub struct Tasks {
    stop: CancellationToken,
    /// `None` once stopping began: nothing new is spawned after that.
    running: Mutex<Option<Running>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            stop: CancellationToken::new(),
            running: Mutex::new(Some(Running {
                set: JoinSet::new(),
                names: HashMap::new(),
            })),
        }
    }
}

impl Tasks {
    /// Cancelled when the server begins to stop.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Begins stopping without waiting: every task's stop token fires.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Spawns `task`, which is dropped at its next await once the server
    /// stops. False (and `task` dropped unstarted) once stopping began.
    pub fn spawn(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        let stop = self.stop.clone();
        self.spawn_graceful(name, move |_| async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        })
    }

    /// Spawns the task `start` makes from the stop token; the task must end
    /// by itself soon after the token fires (it is aborted after the grace
    /// [`Tasks::stop`] is given). False (and nothing started) once stopping
    /// began.
    pub fn spawn_graceful<F>(
        &self,
        name: &'static str,
        start: impl FnOnce(CancellationToken) -> F,
    ) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(running) = running.as_mut() else {
            return false;
        };
        if self.stop.is_cancelled() {
            return false;
        }
        // Reap what has ended, so that the set holds only running tasks
        // (per-request tasks come and go all day).
        while let Some(result) = running.set.try_join_next_with_id() {
            running.ended(result);
        }
        let handle = running.set.spawn(start(self.stop.clone()));
        running.names.insert(handle.id(), name);
        true
    }

    /// How many tasks run now.
    pub fn len(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |r| r.set.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells every task to stop and waits up to `grace` for them to end;
    /// those still running then are aborted (and named in the log). When
    /// this returns no task runs, and none can be spawned.
    pub async fn stop(&self, grace: Duration) {
        self.stop.cancel();
        let taken = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut running) = taken else {
            return;
        };
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, running.set.join_next_with_id()).await {
                Ok(Some(result)) => running.ended(result),
                Ok(None) => return,
                Err(_elapsed) => break,
            }
        }
        let mut late: Vec<&str> = running.names.values().copied().collect();
        late.sort_unstable();
        tracing::warn!(
            tasks = ?late,
            grace_ms = grace.as_millis() as u64,
            "tasks did not stop within the grace; aborting them"
        );
        running.set.abort_all();
        while let Some(result) = running.set.join_next_with_id().await {
            running.ended(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn stop_ends_plain_tasks_at_once_and_waits_for_graceful_ones() {
        let tasks = Tasks::default();
        assert!(tasks.spawn("forever", std::future::pending()));
        let said_goodbye = Arc::new(AtomicBool::new(false));
        let flag = said_goodbye.clone();
        assert!(tasks.spawn_graceful("polite", move |stop| async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, Ordering::SeqCst);
        }));
        assert_eq!(tasks.len(), 2);
        let start = tokio::time::Instant::now();
        tasks.stop(Duration::from_secs(5)).await;
        assert!(said_goodbye.load(Ordering::SeqCst));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(tasks.is_empty());
        assert!(
            !tasks.spawn("too late", async {}),
            "nothing starts after stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_its_stop_token_is_aborted_after_the_grace() {
        let tasks = Tasks::default();
        let dropped = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = SetOnDrop(dropped.clone());
        tasks.spawn_graceful("stubborn", move |_stop| async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let start = tokio::time::Instant::now();
        tasks.stop(Duration::from_secs(1)).await;
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert!(dropped.load(Ordering::SeqCst), "the task was aborted");
    }

    #[tokio::test]
    async fn ended_tasks_are_reaped_as_new_ones_start() {
        let tasks = Tasks::default();
        for _ in 0..100 {
            tasks.spawn("short", async {});
            tokio::task::yield_now().await;
        }
        assert!(tasks.len() < 100, "{} tasks held", tasks.len());
        tasks.stop(Duration::from_secs(1)).await;
    }
}
