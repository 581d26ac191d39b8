//! Host subjects: presence, registry events, the connector's API, durable commands and their
//! replies, plus the names and permission lists derived from them (command consumer, inbox
//! prefix, per-host authorization).
//!
//! | subject | who publishes | who subscribes |
//! |---|---|---|
//! | `steward.v1.<a>.host.heartbeat.<host>` | the host | every connector instance (plain subscription) |
//! | `steward.v1.<a>.host.event.<host>` | the connector | `STEWARD_HOST_EVENTS` stream |
//! | `steward.v1.<a>.host.command.<host>` | the connector (`send`), the dispatcher (`run`: work orders) | `STEWARD_HOST_COMMANDS` stream → the host's durable consumer |
//! | `steward.v1.<a>.host.reply.<host>` | the host | `STEWARD_HOST_COMMANDS` stream and the waiting caller |
//! | `steward.v1.<a>.host.{status,list,send,ensure_worker,outcome,stats}` | API callers | connector micro service (queue group) |
//! | `steward.v1.<a>.host.applied` | the enablement loop (request) | every connector instance (plain subscription) |

use super::{account_rest, noun, verb, AnyAccount, Subjects};
use crate::token::{AccountId, HostId, RuntimeId};

/// Verbs only the host noun uses (the shared ones live in [`super::verb`]).
pub mod host_verb {
    /// List hosts by selector and online state.
    pub const LIST: &str = "list";
    /// Send a durable command to a host.
    pub const SEND: &str = "send";
    /// Install a worker on a host and wait until the registry shows it.
    pub const ENSURE_WORKER: &str = "ensure_worker";
    /// Look up the recorded reply of a command.
    pub const OUTCOME: &str = "outcome";
    /// Connector counters.
    pub const STATS: &str = "stats";
    /// A host's reply to a command.
    pub const REPLY: &str = "reply";
    /// Record the configuration revision a host applied.
    pub const APPLIED: &str = "applied";
}

/// The JetStream stream host commands and replies live in (mirrors
/// [`crate::streams::HOST_COMMANDS_STREAM`]; repeated here so permission lists need no stream
/// lookup).
const COMMANDS_STREAM: &str = crate::streams::HOST_COMMANDS_STREAM;

/// Subjects a host may publish to and subscribe to; rendered into the server-side authorization
/// by `steward creds issue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPermissions {
    /// Subjects the host may publish to.
    pub publish: Vec<String>,
    /// Subjects the host may subscribe to.
    pub subscribe: Vec<String>,
}

impl Subjects {
    /// A host's heartbeat / presence announcement (the host publishes; every connector instance
    /// subscribes without a queue group).
    #[must_use]
    pub fn host_heartbeat(&self, host: &HostId) -> String {
        self.targeted(noun::HOST, verb::HEARTBEAT, host.as_str())
    }

    /// All hosts' heartbeats (the connector subscribes here).
    #[must_use]
    pub fn host_heartbeat_all(&self) -> String {
        self.targeted(noun::HOST, verb::HEARTBEAT, "*")
    }

    /// Commands for one host (durable: captured by the commands stream, read by the host's
    /// durable consumer).
    #[must_use]
    pub fn host_command(&self, host: &HostId) -> String {
        self.targeted(noun::HOST, verb::COMMAND, host.as_str())
    }

    /// Commands of every host of this account (a filter of the commands stream; simulated
    /// fleets read here).
    #[must_use]
    pub fn host_command_all(&self) -> String {
        self.targeted(noun::HOST, verb::COMMAND, "*")
    }

    /// A host's replies to its commands (captured by the commands stream, so a reply nobody
    /// waited for is recorded).
    #[must_use]
    pub fn host_reply(&self, host: &HostId) -> String {
        self.targeted(noun::HOST, host_verb::REPLY, host.as_str())
    }

    /// Host registry events (`online`, `offline`, `changed`) for one host.
    #[must_use]
    pub fn host_event(&self, host: &HostId) -> String {
        self.targeted(noun::HOST, verb::EVENT, host.as_str())
    }

    /// Host registry events of every host of this account.
    #[must_use]
    pub fn host_event_all(&self) -> String {
        self.targeted(noun::HOST, verb::EVENT, "*")
    }

    /// API: the registry record of one host (queue group: any connector answers).
    #[must_use]
    pub fn host_status(&self) -> String {
        self.base(noun::HOST, verb::STATUS)
    }

    /// API: hosts matching a label selector and online state (queue group).
    #[must_use]
    pub fn host_list(&self) -> String {
        self.base(noun::HOST, host_verb::LIST)
    }

    /// API: send a durable command to a host (queue group).
    #[must_use]
    pub fn host_send(&self) -> String {
        self.base(noun::HOST, host_verb::SEND)
    }

    /// API: install a worker and wait until the registry shows it (queue group).
    #[must_use]
    pub fn host_ensure_worker(&self) -> String {
        self.base(noun::HOST, host_verb::ENSURE_WORKER)
    }

    /// API: the recorded reply of one command (queue group).
    #[must_use]
    pub fn host_outcome(&self) -> String {
        self.base(noun::HOST, host_verb::OUTCOME)
    }

    /// API: connector counters (queue group; each answer covers the instance that answered).
    #[must_use]
    pub fn host_stats(&self) -> String {
        self.base(noun::HOST, host_verb::STATS)
    }

    /// Record a host's applied configuration revision. Not a queue-group endpoint: every
    /// connector instance subscribes (plain subscription) and applies it to the record it
    /// keeps, so no instance writes an older value back; the caller takes the first answer.
    #[must_use]
    pub fn host_applied(&self) -> String {
        self.base(noun::HOST, host_verb::APPLIED)
    }

    /// Inbox prefix a host's connection uses, so its permissions can allow replies to its own
    /// inboxes only: `_INBOX.<account>.<host>`.
    #[must_use]
    pub fn host_inbox_prefix(&self, host: &HostId) -> String {
        format!("_INBOX.{}.{host}", self.account())
    }

    /// Name of a host's durable consumer on the commands stream. The account length prefix
    /// keeps names unambiguous although tokens may contain `-`.
    #[must_use]
    pub fn host_command_consumer(&self, host: &HostId) -> String {
        format!("host-{}-{}-{host}", self.account().as_str().len(), self.account())
    }

    /// What a host's identity may publish and subscribe to: its own presence, replies and job
    /// event data (not `result.put`: results enter storage only through the hub's epoch check);
    /// its own command consumer on the commands stream (through any
    /// JetStream domain; work orders arrive there too); replies to its own inboxes; stop orders
    /// of its own runs; micro-service discovery and the account's
    /// health endpoints (the agent registers a health service); and the config manager's
    /// `config.playbook` request, to fetch the playbook a signed work order references (the
    /// reply comes to the host's own inbox; nothing else of the config API is allowed). Its
    /// runtime (whose runtime id is the host id) may call the lease endpoints
    /// (`jobspec.{lease,renew,mine,release}`) and `result.submit` as itself only (subjects ending
    /// in `.<host>.<host>`, from which the hub takes the caller's identity), and hears its own
    /// `jobspec.notice.<host>`, `jobspec.recheck.<host>` and the account's `jobspec.available`;
    /// not `jobspec.leases`
    /// and no object-store rights (outputs too large for a result are not uploaded).
    #[must_use]
    pub fn host_permissions(&self, host: &HostId) -> HostPermissions {
        let consumer = self.host_command_consumer(host);
        let filter = self.host_command(host);
        // The agent hands each verified work order to the host's run worker on `run.work.<host>`
        // (another process when the edge runs its worker apart); the worker checks the order's
        // signature again before anything runs.
        let mut publish =
            vec![self.host_heartbeat(host), self.host_reply(host), self.run_event(host), self.run_work(host)];
        publish.push(self.config_playbook());
        // Its runtime stores its own full outputs with a JetStream publish (a request whose
        // reply comes to its own inbox): this one subject, no JetStream API.
        publish.push(self.result_output(host));
        // Its runtime is named after the host; a host id is always a valid runtime id.
        let runtime = RuntimeId::parse(host.as_str()).ok();
        for endpoint in super::IdentityEndpoint::ALL {
            publish.extend(runtime.as_ref().map(|rt| self.identity_subject(endpoint, Some(host), rt)));
        }
        for api in ["$JS.API", "$JS.*.API"] {
            publish.push(format!("{api}.CONSUMER.CREATE.{COMMANDS_STREAM}.{consumer}.{filter}"));
            publish.push(format!("{api}.CONSUMER.INFO.{COMMANDS_STREAM}.{consumer}"));
            publish.push(format!("{api}.CONSUMER.MSG.NEXT.{COMMANDS_STREAM}.{consumer}"));
        }
        publish.push(format!("$JS.ACK.{COMMANDS_STREAM}.{consumer}.>"));
        publish.push(format!("$JS.ACK.*.*.{COMMANDS_STREAM}.{consumer}.>"));
        let mut subscribe = vec![
            format!("{}.>", self.host_inbox_prefix(host)),
            self.run_stop(host),
            self.run_work(host),
            "$SRV.>".to_owned(),
            self.health_status(),
            self.health_status_all(),
            self.jobspec_available(),
        ];
        subscribe.extend(runtime.as_ref().map(|rt| self.jobspec_notice(rt)));
        subscribe.extend(runtime.as_ref().map(|rt| self.jobspec_recheck(rt)));
        HostPermissions { publish, subscribe }
    }
}

impl Subjects {
    /// What a control-plane service identity of this account may publish and subscribe to:
    /// everything of the account, micro-service discovery, replies, the JetStream, KV and
    /// object-store APIs of its own NATS account.
    #[must_use]
    pub fn service_permissions(&self) -> HostPermissions {
        let publish = vec![
            self.all(),
            "$SRV.>".to_owned(),
            "_INBOX.>".to_owned(),
            "$JS.API.>".to_owned(),
            "$JS.ACK.>".to_owned(),
            "$JS.FC.>".to_owned(),
            "$KV.>".to_owned(),
            "$O.>".to_owned(),
        ];
        let subscribe = vec![self.all(), "$SRV.>".to_owned(), "_INBOX.>".to_owned()];
        HostPermissions { publish, subscribe }
    }
}

impl AnyAccount {
    /// Host registry events of every account (the host events stream's filter).
    #[must_use]
    pub fn host_events() -> String {
        Self::targeted(noun::HOST, verb::EVENT)
    }

    /// Host commands of every account (a filter of the commands stream).
    #[must_use]
    pub fn host_commands() -> String {
        Self::targeted(noun::HOST, verb::COMMAND)
    }

    /// Host replies of every account (a filter of the commands stream).
    #[must_use]
    pub fn host_replies() -> String {
        Self::targeted(noun::HOST, host_verb::REPLY)
    }
}

/// Key of a host in the host registry bucket: `<account>.<host>` (KV keys may contain `.`; both
/// parts are validated tokens, so the key splits back unambiguously).
#[must_use]
pub fn host_registry_key(account: &AccountId, host: &HostId) -> String {
    format!("{account}.{host}")
}

/// The host a key of the host registry bucket names, when it is a key of `account` (the
/// inverse of [`host_registry_key`]).
#[must_use]
pub fn parse_registry_key(account: &AccountId, key: &str) -> Option<HostId> {
    HostId::parse(account_rest(account, key)?).ok()
}

/// Key filter matching every host of `account` in the host registry bucket.
#[must_use]
pub fn host_registry_filter(account: &AccountId) -> String {
    format!("{account}.*")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s() -> Subjects {
        Subjects::new(AccountId::parse("acme").unwrap())
    }

    #[test]
    fn host_subjects() {
        let h = HostId::parse("web-01").unwrap();
        assert_eq!(s().host_reply(&h), "steward.v1.acme.host.reply.web-01");
        assert_eq!(s().host_list(), "steward.v1.acme.host.list");
        assert_eq!(s().host_applied(), "steward.v1.acme.host.applied");
        assert_eq!(s().host_inbox_prefix(&h), "_INBOX.acme.web-01");
        assert_eq!(AnyAccount::host_replies(), "steward.v1.*.host.reply.>");
        assert_eq!(AnyAccount::host_events(), "steward.v1.*.host.event.>");
        let a = AccountId::parse("acme").unwrap();
        assert_eq!(parse_registry_key(&a, &host_registry_key(&a, &h)), Some(h));
        assert_eq!(parse_registry_key(&a, "acme.bad host"), None);
        assert_eq!(parse_registry_key(&AccountId::parse("acme2").unwrap(), "acme.web-01"), None);
    }

    #[test]
    fn consumer_names_do_not_collide() {
        let a = Subjects::new(AccountId::parse("a-b").unwrap()).host_command_consumer(&HostId::parse("c").unwrap());
        let b = Subjects::new(AccountId::parse("a").unwrap()).host_command_consumer(&HostId::parse("b-c").unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn permissions_name_only_the_own_host() {
        let a = HostId::parse("a").unwrap();
        let p = s().host_permissions(&a);
        for subj in p.publish.iter().chain(&p.subscribe) {
            assert!(!subj.contains(".b."), "{subj}");
        }
        assert!(p.publish.contains(&"steward.v1.acme.host.heartbeat.a".to_owned()));
        assert!(!p.publish.iter().any(|s| s.contains(".result.put")), "results go through the hub's fence only");
        assert!(!p.subscribe.iter().any(|s| s.starts_with("steward.v1.acme.host.command")));
        // Stop orders of its own runs reach it; work orders come through its command consumer
        // and go from the agent to the run worker on its own `run.work.<host>` only.
        assert!(p.subscribe.contains(&"steward.v1.acme.run.stop.a".to_owned()));
        // Its runtime hears re-checks of its own specs (after a remediation), and publishes none.
        let recheck: Vec<&String> = p.subscribe.iter().chain(&p.publish).filter(|s| s.contains(".recheck")).collect();
        assert_eq!(recheck, vec!["steward.v1.acme.jobspec.recheck.a"]);
        let work: Vec<&String> = p.subscribe.iter().chain(&p.publish).filter(|s| s.contains(".run.work")).collect();
        assert_eq!(work, vec!["steward.v1.acme.run.work.a", "steward.v1.acme.run.work.a"]);
        // Of the config API only the playbook fetch.
        let config: Vec<&String> = p.publish.iter().filter(|s| s.starts_with("steward.v1.acme.config.")).collect();
        assert_eq!(config, vec!["steward.v1.acme.config.playbook"]);
        // Its runtime (named after the host) leases, renews, lists, releases and submits; it
        // hears its own notices and the broadcast, nobody else's, and cannot list all leases.
        // Each as itself only: exactly one subject per endpoint, ending in its own identity.
        for verb in
            ["jobspec.lease", "jobspec.renew", "jobspec.mine", "jobspec.release", "result.submit", "result.output"]
        {
            let own: Vec<&String> =
                p.publish.iter().filter(|s| s.starts_with(&format!("steward.v1.acme.{verb}"))).collect();
            let mine = if verb == "result.output" {
                format!("steward.v1.acme.{verb}.a")
            } else {
                format!("steward.v1.acme.{verb}.a.a")
            };
            assert_eq!(own, vec![&mine], "{verb}");
        }
        assert!(!p.subscribe.iter().any(|s| s.contains(".result.output")), "outputs are read through the hub only");
        assert!(!p.publish.iter().any(|s| s.contains("STEWARD_OUTPUTS")), "no JetStream API on the outputs stream");
        assert!(!p.publish.iter().any(|s| s.starts_with("steward.v1.acme.jobspec.leases")));
        let leasing = |s: &&String| s.contains(".jobspec.") || s.contains(".result.");
        assert!(
            !p.publish.iter().chain(&p.subscribe).filter(leasing).any(|s| s.contains('*') || s.contains('>')),
            "no wildcard on the lease and result subjects"
        );
        assert!(p.subscribe.contains(&"steward.v1.acme.jobspec.notice.a".to_owned()));
        assert!(p.subscribe.contains(&"steward.v1.acme.jobspec.available".to_owned()));
        assert!(!p.subscribe.iter().chain(&p.publish).any(|s| s.contains('*') && s.contains("jobspec")));
        assert!(!p.publish.iter().any(|s| s.starts_with("$O.") || s.contains("OBJ_")), "no object store");
    }
}
