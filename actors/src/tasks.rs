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

impl<M: ractor::Message> Drop for TaskSet<M> {
    fn drop(&mut self) {
        self.abort_all();
    }
}
