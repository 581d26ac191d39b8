//! The root supervisor: starts a process's components as linked children, restarts a failed
//! child with exponential back-off, counts restarts, and stops everything in reverse start
//! order on shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use steward_subjects::api::health::{ComponentState, ComponentStatus};
use tracing::{error, info, warn};

use crate::status::StatusBoard;
use crate::ActorsError;

/// Spawns one child linked to the supervisor cell it is given.
pub type SpawnFn = Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// How to start (and restart) one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// Component name, unique within the process.
    pub name: String,
    /// Starts a fresh copy of the child.
    pub spawn: SpawnFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A child of actor type `A`; `make` builds a fresh handler and arguments for every (re)start.
    pub fn new<A, F>(name: impl Into<String>, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let name = name.into();
        let make = Arc::new(make);
        ChildSpec {
            name,
            spawn: Arc::new(move |sup: ActorCell| {
                let make = make.clone();
                Box::pin(async move {
                    let (handler, args) = make();
                    // Unnamed: ractor's registry is process-global, and tests run several
                    // processes' supervisors in one test binary. Children are found by name
                    // through the supervisor instead.
                    let (actor, _join) = Actor::spawn_linked(None, handler, args, sup).await?;
                    Ok(actor.get_cell())
                })
            }),
        }
    }
}

/// When and how often a failed child is restarted.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
    /// Restarts allowed within `window` before the child is given up as failed.
    pub max_restarts: usize,
    /// The window `max_restarts` counts over.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_restarts: 10,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    fn backoff(&self, recent: usize) -> Duration {
        let exp = u32::try_from(recent.saturating_sub(1).min(16)).unwrap_or(16);
        self.initial_backoff.saturating_mul(1u32 << exp).min(self.max_backoff)
    }
}

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// Restart child `index` (sent to itself after the back-off).
    Restart(usize),
    /// Report every child's status.
    Status(RpcReplyPort<Vec<ComponentStatus>>),
    /// The running actor of the named child, if it is running.
    Child(String, RpcReplyPort<Option<ActorCell>>),
    /// Stop every child in reverse start order, waiting up to the given time for each.
    Shutdown(Duration, RpcReplyPort<()>),
}

/// Arguments of the supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorArgs {
    /// Children, started in order.
    pub children: Vec<ChildSpec>,
    /// Restart policy applied to each child.
    pub policy: RestartPolicy,
    /// Where every child's status is published for the health service.
    pub board: StatusBoard,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    status: ComponentStatus,
    recent: VecDeque<Instant>,
}

/// State of the supervisor.
pub struct SupervisorState {
    children: Vec<Child>,
    policy: RestartPolicy,
    board: StatusBoard,
    stopping: bool,
}

/// The root supervisor actor.
#[derive(Debug, Default)]
pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut children = Vec::with_capacity(args.children.len());
        for spec in args.children {
            let cell = (spec.spawn)(myself.get_cell())
                .await
                .map_err(|e| ActorProcessingErr::from(format!("cannot start component {}: {e}", spec.name)))?;
            info!(component = %spec.name, "component started");
            let status = ComponentStatus {
                name: spec.name.clone(),
                state: ComponentState::Running,
                restarts: 0,
                last_error: None,
            };
            args.board.set(status.clone());
            children.push(Child { spec, cell: Some(cell), status, recent: VecDeque::new() });
        }
        Ok(SupervisorState { children, policy: args.policy, board: args.board, stopping: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(index) => restart(&myself, state, index).await,
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(state.children.iter().map(|c| c.status.clone()).collect());
            }
            SupervisorMsg::Child(name, reply) => {
                let _ = reply.send(state.children.iter().find(|c| c.spec.name == name).and_then(|c| c.cell.clone()));
            }
            SupervisorMsg::Shutdown(per_child, reply) => {
                state.stopping = true;
                for child in state.children.iter_mut().rev() {
                    if let Some(cell) = child.cell.take() {
                        info!(component = %child.spec.name, "stopping component");
                        if let Err(e) = cell.stop_and_wait(Some("shutdown".into()), Some(per_child)).await {
                            warn!(component = %child.spec.name, error = %e, "component did not stop in time, killing it");
                            cell.kill();
                        }
                    }
                    child.status.state = ComponentState::Stopped;
                    state.board.set(child.status.clone());
                }
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_else(|| "no reason".into())))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let Some(index) =
            state.children.iter().position(|c| c.cell.as_ref().map(|x| x.get_id()) == Some(cell.get_id()))
        else {
            return Ok(());
        };
        let policy = state.policy;
        let child = &mut state.children[index];
        child.cell = None;
        child.status.last_error = Some(reason.clone());
        let now = Instant::now();
        while child.recent.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            child.recent.pop_front();
        }
        if child.recent.len() >= policy.max_restarts {
            child.status.state = ComponentState::Failed;
            state.board.set(child.status.clone());
            error!(component = %child.spec.name, reason = %reason, restarts = child.status.restarts, "component failed too often, giving up");
            return Ok(());
        }
        child.recent.push_back(now);
        child.status.state = ComponentState::Restarting;
        state.board.set(child.status.clone());
        let delay = policy.backoff(child.recent.len());
        warn!(component = %child.spec.name, reason = %reason, delay_ms = delay.as_millis() as u64, "component ended, restarting");
        myself.send_after(delay, move || SupervisorMsg::Restart(index));
        Ok(())
    }
}

async fn restart(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, index: usize) {
    if state.stopping {
        return;
    }
    let policy = state.policy;
    let Some(child) = state.children.get_mut(index) else { return };
    if child.cell.is_some() {
        return;
    }
    match (child.spec.spawn)(myself.get_cell()).await {
        Ok(cell) => {
            child.cell = Some(cell);
            child.status.restarts += 1;
            child.status.state = ComponentState::Running;
            state.board.set(child.status.clone());
            info!(component = %child.spec.name, restarts = child.status.restarts, "component restarted");
        }
        Err(e) => {
            child.status.restarts += 1;
            child.status.last_error = Some(format!("restart failed: {e}"));
            child.recent.push_back(Instant::now());
            state.board.set(child.status.clone());
            if child.recent.len() > policy.max_restarts {
                child.status.state = ComponentState::Failed;
                state.board.set(child.status.clone());
                error!(component = %child.spec.name, error = %e, "component cannot be restarted, giving up");
                return;
            }
            let delay = policy.backoff(child.recent.len());
            warn!(component = %child.spec.name, error = %e, delay_ms = delay.as_millis() as u64, "component restart failed, retrying");
            myself.send_after(delay, move || SupervisorMsg::Restart(index));
        }
    }
}

/// Typed handle in front of the supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
}

impl SupervisorHandle {
    /// Starts a supervisor with `args`; every child is started before this returns.
    ///
    /// # Errors
    /// [`ActorsError::Spawn`] when a child cannot be started.
    pub async fn start(args: SupervisorArgs) -> Result<(Self, tokio::task::JoinHandle<()>), ActorsError> {
        let (actor, join) =
            Actor::spawn(None, Supervisor, args).await.map_err(|e| ActorsError::Spawn(e.to_string()))?;
        Ok((SupervisorHandle { actor }, join))
    }

    /// Wraps an existing supervisor reference.
    #[must_use]
    pub fn from_ref(actor: ActorRef<SupervisorMsg>) -> Self {
        SupervisorHandle { actor }
    }

    /// Every child's status.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the supervisor is gone or does not answer in time.
    pub async fn status(&self) -> Result<Vec<ComponentStatus>, ActorsError> {
        crate::call(&self.actor, SupervisorMsg::Status, Duration::from_secs(2)).await
    }

    /// The running actor of the child named `name` (`None` while it restarts or after it failed).
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the supervisor is gone.
    pub async fn child(&self, name: &str) -> Result<Option<ActorCell>, ActorsError> {
        let name = name.to_owned();
        crate::call(&self.actor, move |r| SupervisorMsg::Child(name, r), Duration::from_secs(2)).await
    }

    /// Stops every child (reverse start order, `per_child` each) and then the supervisor.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the supervisor is already gone.
    pub async fn shutdown(&self, per_child: Duration) -> Result<(), ActorsError> {
        let total = per_child.saturating_mul(64).max(Duration::from_secs(5));
        crate::call(&self.actor, |r| SupervisorMsg::Shutdown(per_child, r), total).await
    }

    /// The underlying actor cell (to link further children).
    #[must_use]
    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }
}
