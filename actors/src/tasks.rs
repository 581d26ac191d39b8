//! [`TaskSet`]: the background tokio tasks one actor owns.
//!
//! Several actors keep their NATS loops (endpoint servers, consumers, watches) on tokio tasks
//! beside the actor rather than in its mailbox, so a request is served without a hop through
//! the actor. Each such task must tell its actor when it ends (the actor then fails and its
//! supervisor restarts it with fresh subscriptions), and all of them must stop with the actor.
//! `TaskSet` is that shell, written once: `spawn` a named task, get the actor's "task ended"
//! message when it returns, abort everything on `stop` or drop.

use std::future::Future;
use std::time::Duration;

use ractor::ActorRef;
use tokio::task::JoinHandle;

/// The background tasks of one actor (see the module docs).
pub(crate) struct TaskSet<M: ractor::Message> {
    actor: ActorRef<M>,
    ended: Option<fn(&'static str) -> M>,
    handles: Vec<JoinHandle<()>>,
}

impl<M: ractor::Message> TaskSet<M> {
    /// An empty set whose tasks report their end to `actor` as `ended(name)`.
    pub(crate) fn new(actor: ActorRef<M>, ended: fn(&'static str) -> M) -> Self {
        TaskSet { actor, ended: Some(ended), handles: Vec::new() }
    }

    /// An empty set for an actor none of whose tasks reports its end (they stop with the actor
    /// or end normally): use [`TaskSet::spawn_detached`] and [`TaskSet::adopt`] on it.
    pub(crate) fn unreported(actor: ActorRef<M>) -> Self {
        TaskSet { actor, ended: None, handles: Vec::new() }
    }

    /// The actor these tasks belong to.
    pub(crate) fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// Runs `task`; when it returns, the actor is sent `ended(name)` (ignored if the actor is
    /// already gone). On an [`unreported`](TaskSet::unreported) set nothing is sent.
    pub(crate) fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        debug_assert!(self.ended.is_some(), "task {name} spawned on an unreported task set");
        let (actor, ended) = (self.actor.clone(), self.ended);
        self.adopt(tokio::spawn(async move {
            task.await;
            if let Some(ended) = ended {
                let _ = actor.cast(ended(name));
            }
        }));
    }

    /// Runs `task` without reporting its end (work whose end is normal, such as a one-off job).
    pub(crate) fn spawn_detached(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.adopt(tokio::spawn(task));
    }

    /// Keeps an already spawned task, to abort it with the others (and forgets tasks that
    /// have finished, so an actor spawning one per tick does not grow the set).
    pub(crate) fn adopt(&mut self, handle: JoinHandle<()>) {
        self.handles.retain(|h| !h.is_finished());
        self.handles.push(handle);
    }

    /// Waits up to `within` for every task to return, then aborts those still running (for
    /// tasks told to wind down, such as a leader giving its lock up).
    pub(crate) async fn wait(&mut self, within: Duration) {
        let handles: Vec<JoinHandle<()>> = self.handles.drain(..).collect();
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(within, futures::future::join_all(handles)).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
    }

    /// Aborts every task.
    pub(crate) fn abort_all(&mut self) {
        for h in self.handles.drain(..) {
            h.abort();
        }
    }

    /// Aborts every task, then stops the actor's micro service (unregistering its endpoints),
    /// logging a failure to stop cleanly; called from the actor's `post_stop`.
    pub(crate) async fn stop(&mut self, component: &str, service: Option<async_nats::service::Service>) {
        self.abort_all();
        if let Some(service) = service {
            if let Err(e) = service.stop().await {
                tracing::warn!(component, error = %e, "service did not stop cleanly");
            }
        }
    }
}

/// The error an actor returns when its task `name` ended ("`owner` `name` ended"), so its
/// supervisor restarts it.
pub(crate) fn ended(owner: &str, name: &str) -> ractor::ActorProcessingErr {
    ractor::ActorProcessingErr::from(format!("{owner} {name} ended"))
}

impl<M: ractor::Message> Drop for TaskSet<M> {
    fn drop(&mut self) {
        self.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::*;

    /// Forwards the names of ended tasks to a channel.
    struct Recorder;

    impl Actor for Recorder {
        type Msg = &'static str;
        type State = tokio::sync::mpsc::UnboundedSender<&'static str>;
        type Arguments = tokio::sync::mpsc::UnboundedSender<&'static str>;

        async fn pre_start(
            &self,
            _: ActorRef<Self::Msg>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            name: &'static str,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(name);
            Ok(())
        }
    }

    async fn recorder() -> (ActorRef<&'static str>, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(None, Recorder, tx).await.unwrap();
        (actor, rx)
    }

    /// A task that sets `done` only if it runs for `after`.
    fn sleeper(after: Duration, done: &Arc<AtomicBool>) -> impl Future<Output = ()> + Send + 'static {
        let done = done.clone();
        async move {
            tokio::time::sleep(after).await;
            done.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_named_task_reports_its_end_to_the_actor() {
        let (actor, mut rx) = recorder().await;
        let mut tasks = TaskSet::new(actor.clone(), |name| name);
        tasks.spawn("watch", async {});
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap(), Some("watch"));
        actor.stop(None);
    }

    #[tokio::test]
    async fn dropping_the_set_aborts_its_tasks() {
        // What a lease term relies on when loading fails early: its refresher goes with it.
        let (actor, _rx) = recorder().await;
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = TaskSet::unreported(actor.clone());
        tasks.spawn_detached(sleeper(Duration::from_millis(50), &done));
        drop(tasks);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!done.load(Ordering::SeqCst));
        actor.stop(None);
    }

    #[tokio::test]
    async fn wait_lets_quick_tasks_finish_and_aborts_slow_ones() {
        let (actor, _rx) = recorder().await;
        let (quick, slow) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let mut tasks = TaskSet::unreported(actor.clone());
        tasks.spawn_detached(sleeper(Duration::from_millis(10), &quick));
        tasks.spawn_detached(sleeper(Duration::from_millis(400), &slow));
        tasks.wait(Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(quick.load(Ordering::SeqCst));
        assert!(!slow.load(Ordering::SeqCst));
        actor.stop(None);
    }
}
