//! The worker catalog: the executors an agent can enable, by name, with the version it
//! reports (`command` and `playbook` are built in).

use std::collections::BTreeMap;

use steward_subjects::token::Name;
use steward_subjects::STEWARD_VERSION;

/// The executors an agent can enable, with the version it would report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCatalog {
    workers: BTreeMap<String, String>,
}

impl Default for WorkerCatalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl WorkerCatalog {
    /// The built-in catalog: `command` and `playbook` at the Steward version.
    #[must_use]
    pub fn builtin() -> Self {
        let mut c = WorkerCatalog { workers: BTreeMap::new() };
        for name in ["command", "playbook"] {
            c.workers.insert(name.to_owned(), STEWARD_VERSION.to_owned());
        }
        c
    }

    /// Registers (or re-versions) an executor by name.
    pub fn register(&mut self, name: &Name, version: &str) {
        self.workers.insert(name.to_string(), version.to_owned());
    }

    /// The version of a worker the catalog has.
    #[must_use]
    pub fn version(&self, name: &str) -> Option<&str> {
        self.workers.get(name).map(String::as_str)
    }

    /// Every worker and version.
    #[must_use]
    pub fn all(&self) -> &BTreeMap<String, String> {
        &self.workers
    }
}
