//! The account's telemetry writer: one hub at a time (the holder of the checkpoint lock) reads
//! stored results through its durable consumer, writes one raw point per result, and keeps the
//! 1-minute and 1-hour levels ([`super::rollup`]), flushing their closed buckets as parts.
//!
//! Every step is made exact across a `kill -9` by writing an intent into the checkpoint before
//! publishing and reading back what was published after it on the next start:
//! - raw batch: intent = (last position of the batch, raw stream's last sequence before it);
//!   after a crash the raw stream after that sequence is read, and results whose point is
//!   there are skipped when they come again;
//! - level flush: intent = (cut, last input, output stream's last sequence before it); after a
//!   crash the level is rebuilt from its input stream, the same parts are taken again and only
//!   those whose `Nats-Msg-Id` is not yet in the output stream are published.
//!
//! The checkpoint is written with compare-and-set and names the writing instance with an
//! expiry; a hub takes over only once it has expired, and a writer whose write is refused stops
//! at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use steward_subjects::api::result::ResultRecord;
use steward_subjects::api::telemetry::{LevelMark, RollupPart, TelemetryCheckpoint, TelemetryPoint};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{telemetry_stream, RESULTS_STREAM, TELEMETRY_BUCKET};
use steward_subjects::subject::{
    telemetry_checkpoint_key, telemetry_part_msg_id, telemetry_point_msg_id, TelemetryLevel,
};
use steward_subjects::{AccountId, HostId, Subjects, Token, TokenKind};
use tracing::{debug, info, warn};

use super::rollup::{Level, SeriesKey};
use super::store::{self, Outgoing, StoreError};
use super::TelemetryConfig;
use crate::metrics::CheckValues;
use crate::results::catalog::SpecCatalog;
use crate::results::feed;
use crate::{duration_ms, now_ms};

/// Name of the account's durable consumer of results for telemetry.
#[must_use]
pub fn telemetry_consumer(account: &AccountId) -> String {
    format!("telemetry-{account}")
}

/// Results fetched per batch.
const FETCH: usize = 256;
/// Raw points published per batch (each batch is one checkpoint write).
const MAX_BATCH_POINTS: usize = 2048;
/// How long an unknown spec is waited for in the catalog before its results are filed under the
/// spec id.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// A result stamped this far after the hub's clock is filed at its stored time instead (a host
/// with a clock far ahead would hold a bucket open for ever).
const FUTURE_SLACK_MS: u64 = 60_000;

/// What the writer has done, for the handle and the logs.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Whether this instance writes now.
    pub writing: AtomicBool,
    /// Raw points stored.
    pub points: AtomicU64,
    /// Rollup parts stored.
    pub parts: AtomicU64,
    /// Result position (stream sequence) fully written.
    pub done_seq: AtomicU64,
    /// Takeovers by this instance.
    pub takeovers: AtomicU64,
}

/// What the writer needs.
#[derive(Debug, Clone)]
pub struct WriterCtx {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account.
    pub subjects: Subjects,
    /// This hub's instance name.
    pub instance: String,
    /// Settings.
    pub config: TelemetryConfig,
    /// Counters.
    pub stats: Arc<WriterStats>,
    /// The current-value gauges.
    pub values: CheckValues,
}

/// Runs until aborted: waits for the writer lock, writes while it holds it, and starts over
/// after any failure.
pub async fn run(ctx: WriterCtx) {
    loop {
        match Writer::takeover(&ctx).await {
            Ok(Some(mut w)) => {
                ctx.stats.writing.store(true, Ordering::Relaxed);
                ctx.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                ctx.values.writer(true);
                let r = w.serve().await;
                ctx.stats.writing.store(false, Ordering::Relaxed);
                ctx.values.writer(false);
                w.catalog_task.abort();
                if let Err(e) = r {
                    warn!(account = %ctx.subjects.account(), error = %e, "telemetry writer stopped; starting over");
                }
            }
            Ok(None) => {}
            Err(e) => debug!(account = %ctx.subjects.account(), error = %e, "telemetry writer cannot take over yet"),
        }
        tokio::time::sleep(ctx.config.lock_ttl / 3).await;
    }
}

/// A held writer.
struct Writer {
    ctx: WriterCtx,
    js: jetstream::Context,
    kv: kv::Store,
    key: String,
    cp: TelemetryCheckpoint,
    revision: u64,
    /// When the lock was last confirmed (the expiry written then is `+ lock_ttl`).
    confirmed: Instant,
    minute: Level,
    hour: Level,
    catalog: SpecCatalog,
    catalog_task: tokio::task::JoinHandle<()>,
    unknown_specs: HashSet<String>,
    /// Positions of an interrupted batch whose points are stored (skipped when they come again),
    /// and the last position of that batch.
    stored: HashSet<(u64, u32)>,
    /// Lower bound of the raw stream for the next batch's intent.
    raw_scan_from: u64,
    /// Known last sequences of the 1m and 1h streams (lower bounds for flush intents).
    out_last: [u64; 2],
    latest: HashMap<SeriesKey, u64>,
    last_flush: Instant,
}

type Res<T> = Result<T, StoreError>;

/// A raw point ready to publish: the message, its series, the point.
type Pending = (Outgoing, SeriesKey, TelemetryPoint);

fn io(what: &'static str) -> impl Fn(String) -> StoreError {
    move |reason| StoreError::Io { what, reason }
}

impl Writer {
    /// Takes the lock when it is free or expired, then rebuilds the levels and resolves the
    /// interrupted steps of the last writer; `Ok(None)` while another instance holds it.
    async fn takeover(ctx: &WriterCtx) -> Res<Option<Writer>> {
        let js = jetstream::new(ctx.client.clone());
        let kv = js.get_key_value(TELEMETRY_BUCKET).await.map_err(|e| io("telemetry bucket")(e.to_string()))?;
        let account = ctx.subjects.account();
        let key = telemetry_checkpoint_key(account);
        let (mut cp, revision) = store::load_checkpoint(&kv, &key).await?;
        if cp.instance != ctx.instance && cp.expires_at_ms > now_ms() {
            return Ok(None);
        }
        cp.instance.clone_from(&ctx.instance);
        cp.expires_at_ms = now_ms() + duration_ms(ctx.config.lock_ttl);
        let revision = match store::write_checkpoint(&kv, &key, &cp, revision).await {
            Ok(r) => r,
            Err(StoreError::LockLost(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        let (catalog, catalog_task) =
            SpecCatalog::follow(&ctx.client, account).await.map_err(|e| io("spec catalog")(e.to_string()))?;
        let mut w = Writer {
            ctx: ctx.clone(),
            js,
            kv,
            key,
            minute: Level::new(TelemetryLevel::Minute, cp.minute.clone()),
            hour: Level::new(TelemetryLevel::Hour, cp.hour.clone()),
            cp,
            revision,
            confirmed: Instant::now(),
            catalog,
            catalog_task,
            unknown_specs: HashSet::new(),
            stored: HashSet::new(),
            raw_scan_from: 0,
            out_last: [0, 0],
            latest: HashMap::new(),
            last_flush: Instant::now(),
        };
        let replayed = w.recover().await;
        if let Err(e) = &replayed {
            w.catalog_task.abort();
            return Err(e.clone());
        }
        info!(
            account = %account,
            instance = %ctx.instance,
            done_seq = w.cp.raw.done.0,
            replayed = replayed.unwrap_or(0),
            held_1m = w.minute.held(),
            held_1h = w.hour.held(),
            took_ms = started.elapsed().as_millis() as u64,
            "telemetry writer took over"
        );
        Ok(Some(w))
    }

    /// Rebuilds both levels and redoes their interrupted flushes, then reads back the points of
    /// an interrupted raw batch; answers how many stored messages were read.
    async fn recover(&mut self) -> Res<u64> {
        let mut read = self.recover_level(TelemetryLevel::Minute).await?;
        read += self.recover_level(TelemetryLevel::Hour).await?;
        self.raw_scan_from = store::last_seq(&self.js, telemetry_stream(TelemetryLevel::Raw)).await?;
        self.out_last = [
            store::last_seq(&self.js, telemetry_stream(TelemetryLevel::Minute)).await?,
            store::last_seq(&self.js, telemetry_stream(TelemetryLevel::Hour)).await?,
        ];
        if let Some((_, before)) = self.cp.raw.intent {
            let filter = self.ctx.subjects.telemetry_level_filter(TelemetryLevel::Raw);
            let mut stored = HashSet::new();
            read += store::read_range(
                &self.js,
                telemetry_stream(TelemetryLevel::Raw),
                &filter,
                consumer::DeliverPolicy::ByStartSequence { start_sequence: before + 1 },
                |m| {
                    if let Ok(p) = codec::decode::<TelemetryPoint>(Encoding::MsgPack, &m.payload) {
                        stored.insert((p.result_seq, p.index));
                    }
                    Ok(())
                },
            )
            .await?;
            self.stored = stored;
            // Until the interrupted batch is behind, later intents read back from here too.
            self.raw_scan_from = before;
        }
        self.checkpoint().await?;
        Ok(read)
    }

    fn level_mut(&mut self, level: TelemetryLevel) -> &mut Level {
        if level == TelemetryLevel::Hour {
            &mut self.hour
        } else {
            &mut self.minute
        }
    }

    fn mark_mut(&mut self, level: TelemetryLevel) -> &mut LevelMark {
        if level == TelemetryLevel::Hour {
            &mut self.cp.hour
        } else {
            &mut self.cp.minute
        }
    }

    /// Replays `level`'s input from its mark, redoing an interrupted flush where it stood.
    async fn recover_level(&mut self, level: TelemetryLevel) -> Res<u64> {
        let input = if level == TelemetryLevel::Hour { TelemetryLevel::Minute } else { TelemetryLevel::Raw };
        let intent = self.level_mut(level).mark.intent;
        let from = self.level_mut(level).mark.replay_from.max(1);
        let filter = self.ctx.subjects.telemetry_level_filter(input);
        let subjects = self.ctx.subjects.clone();
        // Inputs up to the intent's `upto` first, then the redo, then the rest.
        let mut after: Vec<(u64, SeriesKey, u64, Input)> = Vec::new();
        let js = self.js.clone();
        let lvl = self.level_mut(level);
        let read = store::read_range(
            &js,
            telemetry_stream(input),
            &filter,
            consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
            |m| {
                let Some((host, check)) = subjects.parse_telemetry_series(input, &m.subject) else { return Ok(()) };
                let series: SeriesKey = (Arc::from(host.as_str()), Arc::from(check.as_str()));
                let Some((ts, item)) = Input::decode(input, &m.payload) else { return Ok(()) };
                if intent.is_some_and(|(_, upto, _)| m.seq > upto) {
                    after.push((m.seq, series, ts, item));
                } else if !lvl.already_written(m.seq, ts) {
                    lvl.add(&series, m.seq, ts, |p| item.fold(p));
                }
                Ok(())
            },
        )
        .await?;
        if let Some((cut, upto, before)) = intent {
            self.redo_flush(level, cut, upto, before).await?;
        }
        let lvl = self.level_mut(level);
        for (seq, series, ts, item) in after {
            lvl.add(&series, seq, ts, |p| item.fold(p));
        }
        let mark = self.level_mut(level).mark.clone();
        *self.mark_mut(level) = mark;
        Ok(read)
    }

    /// Publishes the parts of an interrupted flush that did not reach the output stream.
    async fn redo_flush(&mut self, level: TelemetryLevel, cut: u64, upto: u64, before: u64) -> Res<()> {
        let flush = self.level_mut(level).mark.flush + 1;
        let parts = self.level_mut(level).take_due(cut, flush);
        let mut present = HashSet::new();
        store::read_range(
            &self.js,
            telemetry_stream(level),
            &self.ctx.subjects.telemetry_level_filter(level),
            consumer::DeliverPolicy::ByStartSequence { start_sequence: before + 1 },
            |m| {
                present.extend(m.msg_id);
                Ok(())
            },
        )
        .await?;
        let out = self.outgoing(level, &parts)?;
        let missing: Vec<Outgoing> = out.into_iter().filter(|o| !present.contains(&o.msg_id)).collect();
        store::publish_all(&self.js, &missing).await?;
        info!(
            level = level.name(),
            parts = parts.len(),
            published = missing.len(),
            "interrupted telemetry flush redone"
        );
        self.ctx.values.parts(missing.len());
        self.level_mut(level).commit(cut, upto, flush);
        Ok(())
    }

    fn outgoing(&self, level: TelemetryLevel, parts: &[(SeriesKey, RollupPart)]) -> Res<Vec<Outgoing>> {
        let account = self.ctx.subjects.account();
        parts
            .iter()
            .map(|((host, check), part)| {
                let (h, c) = series_tokens(host, check).ok_or_else(|| io("series")(format!("{host}.{check}")))?;
                Ok(Outgoing {
                    subject: self.ctx.subjects.telemetry_series_subject(level, &h, &c),
                    msg_id: telemetry_part_msg_id(account, level, host, check, part.bucket_ms, part.flush),
                    payload: codec::encode(Encoding::MsgPack, part).map_err(|e| io("encode part")(e.to_string()))?,
                })
            })
            .collect()
    }

    /// Writes the checkpoint (which also pushes the lock's expiry forward).
    async fn checkpoint(&mut self) -> Res<()> {
        let sent = Instant::now();
        self.cp.instance.clone_from(&self.ctx.instance);
        self.cp.expires_at_ms = now_ms() + duration_ms(self.ctx.config.lock_ttl);
        self.revision = store::write_checkpoint(&self.kv, &self.key, &self.cp, self.revision).await?;
        self.confirmed = sent;
        Ok(())
    }

    /// Whether the lock is certainly still held (a third of its TTL to spare).
    fn holds_lock(&self) -> bool {
        self.confirmed.elapsed() < self.ctx.config.lock_ttl - self.ctx.config.lock_ttl / 3
    }

    /// The consumer loop: results → raw points → levels; flushes on time.
    async fn serve(&mut self) -> Res<()> {
        let account = self.ctx.subjects.account().clone();
        let name = telemetry_consumer(&account);
        // The checkpoint, not the consumer's acknowledgements, says where to resume: the
        // consumer is made again from it on every takeover.
        let results = self.js.get_stream_no_info(RESULTS_STREAM).await.map_err(|e| io("results")(e.to_string()))?;
        let _ = results.delete_consumer(&name).await;
        let start = match self.cp.raw.done.0 {
            0 => consumer::DeliverPolicy::All,
            seq => consumer::DeliverPolicy::ByStartSequence { start_sequence: seq },
        };
        let fetch = i64::try_from(FETCH).unwrap_or(256);
        let consumer = feed::durable(&self.js, &self.ctx.subjects, &name, start, fetch * 4)
            .await
            .map_err(|e| io("results consumer")(e.to_string()))?;
        loop {
            let batch = consumer
                .fetch()
                .max_messages(FETCH)
                .expires(self.ctx.config.flush_every.min(Duration::from_secs(1)))
                .messages()
                .await
                .map_err(|e| io("fetch results")(e.to_string()))?;
            let msgs: Vec<jetstream::Message> = batch.filter_map(|m| async move { m.ok() }).collect::<Vec<_>>().await;
            if !msgs.is_empty() {
                self.write_raw(&msgs).await?;
                for m in &msgs {
                    let _ = m.ack().await;
                }
            }
            if self.last_flush.elapsed() >= self.ctx.config.flush_every {
                self.last_flush = Instant::now();
                let now = now_ms();
                self.flush(TelemetryLevel::Minute, now.saturating_sub(duration_ms(self.ctx.config.grace_minute)))
                    .await?;
                self.flush(TelemetryLevel::Hour, now.saturating_sub(duration_ms(self.ctx.config.grace_hour))).await?;
            }
            if !self.holds_lock() || self.confirmed.elapsed() >= self.ctx.config.lock_ttl / 3 {
                self.checkpoint().await?;
            }
        }
    }

    /// The check name a result is filed under: its spec's attestation, or the spec id while the
    /// catalog does not know the spec.
    async fn check_of(&mut self, spec: &str) -> String {
        let known = if self.unknown_specs.contains(spec) {
            self.catalog.get(spec)
        } else {
            let r = self.catalog.resolve(spec, RESOLVE_WAIT).await;
            if r.is_none() {
                warn!(spec, "telemetry: spec unknown to the catalog, filing its results under the spec id");
                self.unknown_specs.insert(spec.to_owned());
            }
            r
        };
        match known {
            Some(info) if Token::parse(TokenKind::Name, &info.check).is_ok() => info.check.clone(),
            _ => spec.to_owned(),
        }
    }

    /// Writes the raw points of `msgs` (in batches, each behind an intent) and feeds them to the
    /// 1-minute level and the current values.
    async fn write_raw(&mut self, msgs: &[jetstream::Message]) -> Res<()> {
        let mut items: Vec<((u64, u32), Pending)> = Vec::new();
        let mut last_msg = self.cp.raw.done;
        for m in msgs {
            let batch = match feed::decode(m) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "telemetry: undecodable stored result skipped");
                    continue;
                }
            };
            last_msg = last_msg.max((batch.stream_seq, u32::MAX));
            for (i, r) in batch.results.iter().enumerate() {
                let pos = (batch.stream_seq, u32::try_from(i).unwrap_or(u32::MAX - 1));
                if pos <= self.cp.raw.done || self.stored.contains(&pos) {
                    continue;
                }
                if let Some(item) = self.point_of(r, pos, batch.stored_ms).await {
                    items.push((pos, item));
                }
            }
        }
        if items.is_empty() {
            self.cp.raw.done = last_msg;
            return Ok(());
        }
        let chunks: Vec<Vec<_>> = items.chunks(MAX_BATCH_POINTS).map(<[_]>::to_vec).collect();
        let n = chunks.len();
        for (k, chunk) in chunks.into_iter().enumerate() {
            let last = if k + 1 == n { last_msg } else { chunk.last().map_or(last_msg, |(p, _)| *p) };
            self.write_batch(chunk.into_iter().map(|(_, item)| item).collect(), last).await?;
        }
        Ok(())
    }

    /// The raw point of one result, with its series, or `None` for a result that cannot be filed.
    async fn point_of(&mut self, r: &ResultRecord, pos: (u64, u32), stored_ms: u64) -> Option<Pending> {
        let Ok(host) = HostId::parse(&r.host) else {
            warn!(host = %r.host, "telemetry: result with an invalid host skipped");
            return None;
        };
        let check = self.check_of(&r.spec).await;
        let check_token = Token::parse(TokenKind::Name, &check).ok()?;
        let ts_ms = if r.ended_at_ms > stored_ms.max(now_ms()) + FUTURE_SLACK_MS { stored_ms } else { r.ended_at_ms };
        let point = TelemetryPoint {
            ts_ms,
            status: r.status,
            metrics: r.metrics.clone(),
            units: r.units.clone(),
            result_seq: pos.0,
            index: pos.1,
        };
        let payload = codec::encode(Encoding::MsgPack, &point).ok()?;
        let out = Outgoing {
            subject: self.ctx.subjects.telemetry_series_subject(TelemetryLevel::Raw, &host, &check_token),
            msg_id: telemetry_point_msg_id(self.ctx.subjects.account(), pos.0, pos.1),
            payload,
        };
        Some((out, (Arc::from(host.as_str()), Arc::from(check.as_str())), point))
    }

    /// Publishes one batch of points behind an intent, then feeds them on; `last` is the last
    /// result position the batch covers.
    async fn write_batch(&mut self, batch: Vec<Pending>, last: (u64, u32)) -> Res<()> {
        self.cp.raw.intent = Some((last, self.raw_scan_from));
        self.checkpoint().await?;
        let out: Vec<Outgoing> = batch.iter().map(|(o, _, _)| o.clone()).collect();
        let seqs = store::publish_all(&self.js, &out).await?;
        for ((_, series, point), seq) in batch.into_iter().zip(seqs) {
            self.minute.add(&series, seq, point.ts_ms, |p| p.add_point(&point));
            self.expose(&series, &point);
            self.raw_scan_from = self.raw_scan_from.max(seq);
        }
        self.ctx.values.points(out.len());
        self.ctx.stats.points.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.cp.raw.done = self.cp.raw.done.max(last);
        self.cp.raw.intent = None;
        self.stored.retain(|p| *p > last);
        self.ctx.stats.done_seq.store(self.cp.raw.done.0, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the current-value gauges of a point newer than the series' latest.
    fn expose(&mut self, series: &SeriesKey, point: &TelemetryPoint) {
        let cap = self.ctx.config.max_exposed;
        let known = self.latest.len();
        match self.latest.get_mut(series) {
            Some(ts) if *ts > point.ts_ms => return,
            Some(ts) => *ts = point.ts_ms,
            None if known >= cap => {
                self.ctx.values.unexposed();
                return;
            }
            None => {
                self.latest.insert(series.clone(), point.ts_ms);
            }
        }
        let metrics: std::collections::BTreeMap<String, f64> =
            point.metrics.iter().take(self.ctx.config.max_metrics).map(|(k, v)| (k.clone(), *v)).collect();
        self.ctx.values.set(&series.0, &series.1, point.status.as_str(), &metrics, point.ts_ms);
    }

    /// Writes the parts of `level` whose bucket ends by `cut` (behind an intent), feeding
    /// 1-minute parts to the 1-hour level.
    async fn flush(&mut self, level: TelemetryLevel, cut: u64) -> Res<()> {
        let cut = cut.max(self.level_mut(level).mark.cut_ms);
        if !self.level_mut(level).due(cut) {
            return Ok(());
        }
        let slot = usize::from(level == TelemetryLevel::Hour);
        let upto = self.level_mut(level).last_seq();
        let flush = self.level_mut(level).mark.flush + 1;
        let mut mark = self.level_mut(level).mark.clone();
        mark.intent = Some((cut, upto, self.out_last[slot]));
        *self.mark_mut(level) = mark;
        self.checkpoint().await?;
        let parts = self.level_mut(level).take_due(cut, flush);
        let out = self.outgoing(level, &parts)?;
        let seqs = store::publish_all(&self.js, &out).await?;
        if let Some(max) = seqs.iter().max() {
            self.out_last[slot] = self.out_last[slot].max(*max);
        }
        if level == TelemetryLevel::Minute {
            for ((series, part), seq) in parts.iter().zip(&seqs) {
                self.hour.add(series, *seq, part.bucket_ms, |p| p.merge(part));
            }
        }
        self.ctx.values.parts(parts.len());
        self.ctx.stats.parts.fetch_add(parts.len() as u64, Ordering::Relaxed);
        self.level_mut(level).commit(cut, upto, flush);
        let mark = self.level_mut(level).mark.clone();
        *self.mark_mut(level) = mark;
        self.checkpoint().await?;
        debug!(level = level.name(), parts = parts.len(), cut, "telemetry flushed");
        Ok(())
    }
}

/// One input of a level, decoded.
enum Input {
    Point(TelemetryPoint),
    Part(RollupPart),
}

impl Input {
    /// Decodes a message of `input`'s stream: its time (a point's, a part's bucket start) and
    /// the item.
    fn decode(input: TelemetryLevel, payload: &[u8]) -> Option<(u64, Input)> {
        if input == TelemetryLevel::Raw {
            let p: TelemetryPoint = codec::decode(Encoding::MsgPack, payload).ok()?;
            Some((p.ts_ms, Input::Point(p)))
        } else {
            let p: RollupPart = codec::decode(Encoding::MsgPack, payload).ok()?;
            Some((p.bucket_ms, Input::Part(p)))
        }
    }

    fn fold(&self, part: &mut RollupPart) {
        match self {
            Input::Point(p) => part.add_point(p),
            Input::Part(p) => part.merge(p),
        }
    }
}

fn series_tokens(host: &str, check: &str) -> Option<(HostId, Token)> {
    Some((HostId::parse(host).ok()?, Token::parse(TokenKind::Name, check).ok()?))
}
