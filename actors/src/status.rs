//! A shared board of component statuses: the supervisor writes it, the health service reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use steward_subjects::api::health::ComponentStatus;

/// Component statuses of one process, keyed by component name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<BTreeMap<String, ComponentStatus>>>,
}

impl StatusBoard {
    /// An empty board.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the status of a component.
    pub fn set(&self, status: ComponentStatus) {
        let mut map = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(status.name.clone(), status);
    }

    /// Every component's status, in name order.
    #[must_use]
    pub fn snapshot(&self) -> Vec<ComponentStatus> {
        let map = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.values().cloned().collect()
    }

    /// One component's status.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<ComponentStatus> {
        let map = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(name).cloned()
    }
}
