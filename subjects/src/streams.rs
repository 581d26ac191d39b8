//! The JetStream streams, KV buckets and object stores Steward uses, and an idempotent
//! [`ensure`] that creates or updates them.
//!
//! Replicas are chosen at start-up ([`Replicas::One`] on a single node, [`Replicas::Three`] on a
//! cluster). Names are fixed here and nowhere else.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};

use crate::api::result::MAX_STORED_OUTPUT;
use crate::subject::{AnyAccount, TelemetryLevel};

/// How many copies JetStream keeps of each stream and bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replicas {
    /// R1: a single node.
    #[default]
    One,
    /// R3: a three-node (or larger) cluster.
    Three,
}

impl Replicas {
    /// The replica count.
    #[must_use]
    pub fn count(self) -> usize {
        match self {
            Replicas::One => 1,
            Replicas::Three => 3,
        }
    }
}

/// Host registry events (`online`, `offline`, `changed`).
pub const HOST_EVENTS_STREAM: &str = "STEWARD_HOST_EVENTS";
/// Durable commands to hosts, delivered when a host comes back.
pub const HOST_COMMANDS_STREAM: &str = "STEWARD_HOST_COMMANDS";
/// Configuration change notices.
pub const CONFIG_EVENTS_STREAM: &str = "STEWARD_CONFIG_EVENTS";
/// Assessment results.
pub const RESULTS_STREAM: &str = "STEWARD_RESULTS";
/// Full outputs of results, one message each on `steward.v1.<account>.result.output.<host>`.
pub const OUTPUTS_STREAM: &str = "STEWARD_OUTPUTS";
/// Full outputs kept per host in [`OUTPUTS_STREAM`]: the oldest go first, so one host cannot
/// fill the disk (10,000 outputs of at most 1 MiB each).
pub const OUTPUTS_PER_HOST: i64 = 10_000;
/// Largest message of [`OUTPUTS_STREAM`] (headers included): a full output of
/// [`MAX_STORED_OUTPUT`] bytes and its headers.
pub const MAX_OUTPUT_MSG: i32 = MAX_STORED_OUTPUT as i32 + 4096;
/// Job event data of runs.
pub const RUN_EVENTS_STREAM: &str = "STEWARD_RUN_EVENTS";
/// The lease journal: group-committed lease changes of each account's lease leader
/// (`steward.v1.<account>.jobspec.journal`), purged up to the latest snapshot, and the leaders'
/// fence (`steward.v1.<account>.jobspec.fence`, one message per takeover).
pub const LEASE_JOURNAL_STREAM: &str = "STEWARD_LEASE_JOURNAL";
/// Dead letters: the server's advisories for messages a consumer of Steward's streams
/// terminated (with the consumer's reason) or stopped delivering after its `max_deliver`; each
/// names the stream and sequence of the message, which stays in its stream until it ages out.
pub const DEAD_LETTERS_STREAM: &str = "STEWARD_DEAD_LETTERS";
/// Alarm transitions, one subject per alarm (`steward.v1.<account>.alarm.event.<id>`): each
/// alarm's timeline, written with the alarm's expected last sequence so no transition is stored
/// twice or lost to a race.
pub const ALARM_EVENTS_STREAM: &str = "STEWARD_ALARM_EVENTS";
/// Transitions kept per alarm (the oldest go first).
pub const ALARM_EVENTS_PER_ALARM: i64 = 1000;
/// Alarms (`<account>.alarm.<id>`), silences (`<account>.silence.<id>`) and the remediation
/// ledger (`<account>.remediation.ledger`).
pub const ALARMS_BUCKET: &str = "steward_alarms";

/// The JetStream advisory subjects captured by [`DEAD_LETTERS_STREAM`]: terminated and
/// max-deliveries advisories of every consumer on Steward's other streams (not of other
/// applications' streams in the same NATS account).
#[must_use]
pub fn dead_letter_subjects() -> Vec<String> {
    let ours = [
        HOST_EVENTS_STREAM,
        HOST_COMMANDS_STREAM,
        CONFIG_EVENTS_STREAM,
        RESULTS_STREAM,
        RUN_EVENTS_STREAM,
        LEASE_JOURNAL_STREAM,
        ALARM_EVENTS_STREAM,
    ];
    let mut out = Vec::new();
    for kind in ["MSG_TERMINATED", "MAX_DELIVERIES"] {
        for stream in ours {
            out.push(format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.*"));
        }
    }
    out
}

/// Telemetry raw points: one message per result on `telemetry.raw.<host>.<check>`.
pub const TELEMETRY_RAW_STREAM: &str = "STEWARD_TELEMETRY_RAW";
/// Telemetry 1-minute rollups on `telemetry.m1.<host>.<check>`.
pub const TELEMETRY_1M_STREAM: &str = "STEWARD_TELEMETRY_1M";
/// Telemetry 1-hour rollups on `telemetry.h1.<host>.<check>`.
pub const TELEMETRY_1H_STREAM: &str = "STEWARD_TELEMETRY_1H";
/// The telemetry writer's checkpoint and lock per account (`<account>.writer`).
pub const TELEMETRY_BUCKET: &str = "steward_telemetry";

/// The stream holding telemetry of `level`.
#[must_use]
pub fn telemetry_stream(level: TelemetryLevel) -> &'static str {
    match level {
        TelemetryLevel::Raw => TELEMETRY_RAW_STREAM,
        TelemetryLevel::Minute => TELEMETRY_1M_STREAM,
        TelemetryLevel::Hour => TELEMETRY_1H_STREAM,
    }
}

/// How long telemetry history is kept, per level (`--telemetry-raw`, `--telemetry-1m`,
/// `--telemetry-1h` of the hub commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryRetention {
    /// Raw points (default 48 h).
    pub raw: Duration,
    /// 1-minute rollups (default 30 days: a month of 1-minute graphs).
    pub minute: Duration,
    /// 1-hour rollups (default 400 days: a year and a month, for year-over-year views).
    pub hour: Duration,
}

impl Default for TelemetryRetention {
    fn default() -> Self {
        TelemetryRetention { raw: 2 * DAY, minute: 30 * DAY, hour: 400 * DAY }
    }
}

impl TelemetryRetention {
    /// How long `level` is kept.
    #[must_use]
    pub fn of(&self, level: TelemetryLevel) -> Duration {
        match level {
            TelemetryLevel::Raw => self.raw,
            TelemetryLevel::Minute => self.minute,
            TelemetryLevel::Hour => self.hour,
        }
    }
}

/// The host registry bucket.
pub const HOSTS_BUCKET: &str = "steward_hosts";
/// Configuration revisions: metadata (`<account>.rev.<N>`) and state archives (`<account>.doc.<N>`).
pub const CONFIG_BUCKET: &str = "steward_config";
/// Rendered job specs, keyed `<account>.<host|pool>.<target>.<spec>`; deletes are tombstones.
pub const JOBSPECS_BUCKET: &str = "steward_jobspecs";
/// Lease coordination: the lease leader lock (`<account>.leader`) and the pointer to the latest
/// lease snapshot (`<account>.snapshot`), both written with compare-and-set. (Older versions kept
/// one record per spec and runtime here, `<account>.spec.<spec>` and `<account>.rt.<runtime>`.)
pub const LEASES_BUCKET: &str = "steward_leases";
/// Runs: run records, per-host run records and idempotency keys (`<account>.run.<run>`,
/// `<account>.host.<run>.<host>`, `<account>.idem.<digest>`), updated with compare-and-set.
pub const RUNS_BUCKET: &str = "steward_runs";
/// Large artifacts (outputs, job event attachments).
pub const ARTIFACTS_STORE: &str = "steward_artifacts";

/// Window within which JetStream drops a message whose `Nats-Msg-Id` it has already stored.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// Description of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDef {
    /// Stream name.
    pub name: &'static str,
    /// What it holds.
    pub description: &'static str,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: stream::RetentionPolicy,
    /// Longest a message is kept (zero = forever).
    pub max_age: Duration,
    /// Most bytes kept (-1 = unlimited).
    pub max_bytes: i64,
    /// Most messages kept per subject (-1 = unlimited; the oldest go first).
    pub max_msgs_per_subject: i64,
    /// Largest message accepted, headers included (-1 = the server's limit).
    pub max_msg_size: i32,
}

impl StreamDef {
    /// The JetStream configuration for this stream with `replicas`.
    #[must_use]
    pub fn config(&self, replicas: Replicas) -> stream::Config {
        stream::Config {
            name: self.name.to_owned(),
            description: Some(self.description.to_owned()),
            subjects: self.subjects.clone(),
            retention: self.retention,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages_per_subject: self.max_msgs_per_subject,
            max_message_size: self.max_msg_size,
            storage: stream::StorageType::File,
            num_replicas: replicas.count(),
            duplicate_window: DEDUPE_WINDOW,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        }
    }
}

/// Description of one KV bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketDef {
    /// Bucket name.
    pub name: &'static str,
    /// What it holds.
    pub description: &'static str,
    /// Revisions kept per key.
    pub history: i64,
}

impl BucketDef {
    /// The JetStream configuration for this bucket with `replicas`.
    #[must_use]
    pub fn config(&self, replicas: Replicas) -> kv::Config {
        kv::Config {
            bucket: self.name.to_owned(),
            description: self.description.to_owned(),
            history: self.history,
            storage: stream::StorageType::File,
            num_replicas: replicas.count(),
            ..Default::default()
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Every stream Steward uses, telemetry kept for the default times.
#[must_use]
pub fn streams() -> Vec<StreamDef> {
    streams_with(&TelemetryRetention::default())
}

/// Every stream Steward uses, telemetry kept as `retention` says.
#[must_use]
pub fn streams_with(retention: &TelemetryRetention) -> Vec<StreamDef> {
    let telemetry = |level: TelemetryLevel, description: &'static str| StreamDef {
        name: telemetry_stream(level),
        description,
        subjects: vec![AnyAccount::telemetry(level)],
        retention: stream::RetentionPolicy::Limits,
        max_age: retention.of(level),
        max_bytes: -1,
        max_msgs_per_subject: -1,
        max_msg_size: -1,
    };
    vec![
        telemetry(TelemetryLevel::Raw, "telemetry: one point per result (status and metrics), per host and check"),
        telemetry(TelemetryLevel::Minute, "telemetry: 1-minute rollups per host and check (parts merged on read)"),
        telemetry(TelemetryLevel::Hour, "telemetry: 1-hour rollups per host and check (parts merged on read)"),
        StreamDef {
            name: HOST_EVENTS_STREAM,
            description: "host registry events: online, offline, changed",
            subjects: vec![AnyAccount::host_events()],
            retention: stream::RetentionPolicy::Limits,
            max_age: 7 * DAY,
            max_bytes: -1,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
        StreamDef {
            name: HOST_COMMANDS_STREAM,
            description: "commands to hosts and their replies, kept until delivered or expired",
            subjects: vec![AnyAccount::host_commands(), AnyAccount::host_replies()],
            retention: stream::RetentionPolicy::Limits,
            max_age: 7 * DAY,
            max_bytes: -1,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
        StreamDef {
            name: CONFIG_EVENTS_STREAM,
            description: "configuration change notices and rejected candidates",
            subjects: vec![AnyAccount::config_changed(), AnyAccount::config_rejected()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
        StreamDef {
            name: RESULTS_STREAM,
            description: "assessment results, each stored once",
            subjects: vec![AnyAccount::results()],
            retention: stream::RetentionPolicy::Limits,
            max_age: 30 * DAY,
            max_bytes: -1,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
        StreamDef {
            name: OUTPUTS_STREAM,
            description: "full outputs of results, one message each, per host",
            subjects: vec![AnyAccount::result_outputs()],
            retention: stream::RetentionPolicy::Limits,
            max_age: 30 * DAY,
            max_bytes: -1,
            max_msgs_per_subject: OUTPUTS_PER_HOST,
            max_msg_size: MAX_OUTPUT_MSG,
        },
        StreamDef {
            name: RUN_EVENTS_STREAM,
            description: "job event data of runs, each event stored once",
            subjects: vec![AnyAccount::run_events()],
            retention: stream::RetentionPolicy::Limits,
            max_age: 30 * DAY,
            max_bytes: -1,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
        StreamDef {
            name: ALARM_EVENTS_STREAM,
            description: "alarm transitions: each alarm's timeline, each transition stored once",
            subjects: vec![AnyAccount::alarm_events()],
            retention: stream::RetentionPolicy::Limits,
            max_age: 400 * DAY,
            max_bytes: -1,
            max_msgs_per_subject: ALARM_EVENTS_PER_ALARM,
            max_msg_size: -1,
        },
        StreamDef {
            name: LEASE_JOURNAL_STREAM,
            description: "lease journal: group-committed grants, releases and sessions of the lease leader",
            subjects: vec![AnyAccount::lease_journal(), AnyAccount::lease_fence()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
        StreamDef {
            name: DEAD_LETTERS_STREAM,
            description: "dead letters: messages a consumer terminated or gave up redelivering, with the reason",
            subjects: dead_letter_subjects(),
            retention: stream::RetentionPolicy::Limits,
            max_age: 7 * DAY,
            // A flooding host must not fill the disk with its dead letters: the oldest go first.
            max_bytes: 256 * 1024 * 1024,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
        },
    ]
}

/// Every KV bucket Steward uses.
#[must_use]
pub fn buckets() -> Vec<BucketDef> {
    vec![
        BucketDef { name: HOSTS_BUCKET, description: "host registry: presence, labels, workers", history: 1 },
        BucketDef { name: CONFIG_BUCKET, description: "configuration revisions and state archives", history: 1 },
        BucketDef { name: ALARMS_BUCKET, description: "alarms, silences and the remediation ledger", history: 1 },
        BucketDef { name: JOBSPECS_BUCKET, description: "rendered job specs per account and target", history: 1 },
        BucketDef {
            name: RUNS_BUCKET,
            description: "dispatched runs, per-host run records, idempotency keys",
            history: 1,
        },
        BucketDef {
            name: TELEMETRY_BUCKET,
            description: "telemetry writer checkpoint and lock per account",
            history: 1,
        },
        BucketDef {
            name: LEASES_BUCKET,
            description: "job-spec leases (holder, epoch) and runtime sessions",
            history: 1,
        },
    ]
}

/// Every object store Steward uses.
#[must_use]
pub fn object_stores() -> Vec<&'static str> {
    vec![ARTIFACTS_STORE]
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Streams (including KV and object-store backing streams) that exist and match now.
    pub streams: Vec<String>,
    /// KV buckets that exist now.
    pub buckets: Vec<String>,
    /// Object stores that exist now.
    pub object_stores: Vec<String>,
}

/// [`ensure`] failed on one item.
#[derive(Debug, thiserror::Error)]
#[error("cannot ensure {what} {name}: {reason}")]
pub struct EnsureError {
    /// `stream`, `bucket` or `object store`.
    pub what: &'static str,
    /// Name of the item.
    pub name: String,
    /// Server's reason.
    pub reason: String,
}

/// How long one request of [`ensure`] waits before it is tried again.
const ENSURE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times [`ensure`] sends one item's request before it gives up on a timeout.
const ENSURE_ATTEMPTS: u32 = 8;

/// Runs `op` until it succeeds, fails for a reason other than a timeout, or has timed out
/// [`ENSURE_ATTEMPTS`] times. When several hubs create the same stream of a cluster at once,
/// the server answers one of them and lets the others' requests time out (seen with three
/// `steward node`s starting together: each stream cost a 10 s timeout); the next attempt finds
/// the stream and goes on. The pause before it depends on the process id, so hubs that
/// collided do not collide again in lock-step.
async fn ensure_item<T, E, F, Fut>(what: &'static str, name: &str, mut op: F) -> Result<T, EnsureError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let reason = e.to_string();
                if attempt >= ENSURE_ATTEMPTS || !reason.contains("timed out") {
                    return Err(EnsureError { what, name: name.to_owned(), reason });
                }
                let pause = 100 + u64::from(std::process::id() % 500) + 200 * u64::from(attempt);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
        }
    }
}

/// Creates every stream, bucket and object store, or updates it to the current definition.
/// Safe to call on every start and from several processes at once (a request that times out
/// is sent again, see [`ensure_item`]). Telemetry is kept for the default times.
///
/// # Errors
/// [`EnsureError`] naming the first item the server refused.
pub async fn ensure(js: &jetstream::Context, replicas: Replicas) -> Result<EnsureReport, EnsureError> {
    ensure_with(js, replicas, &TelemetryRetention::default()).await
}

/// [`ensure`] with telemetry kept as `retention` says (every hub of a deployment should be
/// given the same retention: the last one to start sets it).
///
/// # Errors
/// [`EnsureError`] naming the first item the server refused.
pub async fn ensure_with(
    js: &jetstream::Context,
    replicas: Replicas,
    retention: &TelemetryRetention,
) -> Result<EnsureReport, EnsureError> {
    let mut js = js.clone();
    js.set_timeout(ENSURE_REQUEST_TIMEOUT);
    let js = &js;
    let mut report = EnsureReport::default();
    // A stream that does not exist yet is created without the update request first (which
    // `create_or_update_*` sends): an update racing another hub's create is what timed out.
    for def in streams_with(retention) {
        ensure_item("stream", def.name, || async {
            if js.get_stream(def.name).await.is_ok() {
                js.update_stream(def.config(replicas)).await.map(drop).map_err(|e| e.to_string())
            } else {
                js.create_stream(def.config(replicas)).await.map(drop).map_err(|e| e.to_string())
            }
        })
        .await?;
        report.streams.push(def.name.to_owned());
    }
    for def in buckets() {
        ensure_item("bucket", def.name, || async {
            if js.get_stream(format!("KV_{}", def.name)).await.is_ok() {
                js.create_or_update_key_value(def.config(replicas)).await.map(drop).map_err(|e| e.to_string())
            } else {
                js.create_key_value(def.config(replicas)).await.map(drop).map_err(|e| e.to_string())
            }
        })
        .await?;
        report.buckets.push(def.name.to_owned());
    }
    for name in object_stores() {
        let exists = js.get_object_store(name).await.is_ok();
        if !exists {
            ensure_item("object store", name, || {
                js.create_object_store(object_store::Config {
                    bucket: name.to_owned(),
                    num_replicas: replicas.count(),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
            })
            .await?;
        }
        report.object_stores.push(name.to_owned());
    }
    Ok(report)
}

/// How long [`read_object`] waits for the next chunk of an object before it gives up.
pub const OBJECT_READ_IDLE: Duration = Duration::from_secs(2);

/// Why [`read_object`] returned no bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectReadError {
    /// Nothing is stored under the name (or it was deleted).
    #[error("object {0} not found")]
    NotFound(String),
    /// The object is larger than the caller accepts.
    #[error("object {name} holds {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// Object name.
        name: String,
        /// Its size.
        size: u64,
        /// The caller's limit.
        limit: usize,
    },
    /// No chunk arrived for [`OBJECT_READ_IDLE`]: the object was deleted or replaced while it
    /// was read (its chunks are gone), or the server stopped answering.
    #[error("object {0}: no data for {OBJECT_READ_IDLE:?} (deleted or replaced while read?)")]
    Stalled(String),
    /// The server refused or the read failed.
    #[error("object {name}: {reason}")]
    Unavailable {
        /// Object name.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// Reads the whole object `name` of `store`, at most `limit` bytes.
///
/// Use this instead of reading an [`object_store::Object`] to its end: an object deleted or
/// replaced between its info and its chunks leaves that read waiting for chunks that never
/// come. Here a read that gets no chunk for [`OBJECT_READ_IDLE`] ends as
/// [`ObjectReadError::Stalled`]; the caller can look the name up again.
///
/// # Errors
/// See [`ObjectReadError`].
pub async fn read_object(
    store: &object_store::ObjectStore,
    name: &str,
    limit: usize,
) -> Result<Vec<u8>, ObjectReadError> {
    use tokio::io::AsyncReadExt;
    let unavailable =
        |e: &dyn std::fmt::Display| ObjectReadError::Unavailable { name: name.to_owned(), reason: e.to_string() };
    let mut object = match store.get(name).await {
        Ok(o) => o,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
            return Err(ObjectReadError::NotFound(name.to_owned()))
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let size = object.info().size as u64;
    if size > limit as u64 {
        return Err(ObjectReadError::TooLarge { name: name.to_owned(), size, limit });
    }
    // The size is the writer's word: reserve at most 1 MiB up front, grow with what arrives.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(OBJECT_READ_IDLE, object.read(&mut chunk))
            .await
            .map_err(|_| ObjectReadError::Stalled(name.to_owned()))?
            .map_err(|e| unavailable(&e))?;
        if n == 0 {
            return Ok(bytes);
        }
        if bytes.len() + n > limit {
            return Err(ObjectReadError::TooLarge { name: name.to_owned(), size: (bytes.len() + n) as u64, limit });
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Why [`read_output`] returned no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputReadError {
    /// No message of that sequence is in the outputs stream (never stored, or aged out).
    #[error("no output {0} in {OUTPUTS_STREAM}")]
    NotFound(u64),
    /// The server refused or the read failed.
    #[error("cannot read output {seq} of {OUTPUTS_STREAM}: {reason}")]
    Unavailable {
        /// The stream sequence asked for.
        seq: u64,
        /// What failed.
        reason: String,
    },
}

/// Reads message `seq` of the outputs stream with one direct get: its subject (which names the
/// host that stored it) and its bytes.
///
/// # Errors
/// See [`OutputReadError`].
pub async fn read_output(js: &jetstream::Context, seq: u64) -> Result<(String, bytes::Bytes), OutputReadError> {
    let unavailable = |reason: String| OutputReadError::Unavailable { seq, reason };
    let stream = js.get_stream_no_info(OUTPUTS_STREAM).await.map_err(|e| unavailable(e.to_string()))?;
    match stream.direct_get(seq).await {
        Ok(m) => Ok((m.subject.to_string(), m.payload)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Err(OutputReadError::NotFound(seq)),
        Err(e) => Err(unavailable(e.to_string())),
    }
}
