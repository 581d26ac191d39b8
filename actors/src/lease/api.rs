//! The micro-service endpoints of the lease service (`steward-lease`): `jobspec.lease`,
//! `jobspec.renew`, `jobspec.mine`, `jobspec.release` (polled by the loop itself, answered with
//! their commit), and `jobspec.leases` and `result.submit` (served by tasks beside the loop).
//! All but `leases` are served on `<verb>.*.*`: the caller's identity is the subject's last two
//! tokens ([`super::identity`]).
//! All are queue-group endpoints, so any leader instance may answer; a stepping-down leader
//! stays silent and the caller retries. Replies are envelopes in the request's encoding:
//! MessagePack ones go without a content-type header (what no header means), and the `lease`
//! reply is written by hand, splicing each spec's stored MessagePack instead of re-encoding it.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use steward_subjects::api::lease::{LeasesRequest, ReleaseReply, RenewReply};
use steward_subjects::api::result::SubmitRequest;
use steward_subjects::codec::Encoding;
use steward_subjects::config::JobSpec;
use steward_subjects::subject::IdentityEndpoint;
use steward_subjects::{rpc, AccountId, WireError};
use tracing::debug;

use super::commit::Commit;
use super::identity::{Claimed, FenceRefusal};
use super::leader::LeaderGuard;
use super::msgpack as mp;
use super::requests::{Input, Shared};
use super::{LeaseError, LeaseMsg};
use crate::tasks::TaskSet;

/// A granted spec as answered: the shared decoded spec, serialized like
/// [`steward_subjects::api::lease::LeasedSpec`].
#[derive(Serialize)]
pub(super) struct LeasedOut {
    pub(super) spec: SpecRef,
    pub(super) epoch: u64,
}

/// A spec as decoded, and as stored (MessagePack, spliced into MessagePack replies as is).
pub(super) struct SpecRef(pub(super) Arc<JobSpec>, pub(super) Bytes);

impl Serialize for SpecRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl LeaseReplyOut {
    /// The success envelope in MessagePack.
    fn msgpack(&self) -> Bytes {
        let mut b = Vec::with_capacity(64 + self.granted.iter().map(|g| g.spec.1.len() + 24).sum::<usize>());
        mp::map(&mut b, 2);
        mp::str(&mut b, "ok");
        mp::bool(&mut b, true);
        mp::str(&mut b, "data");
        mp::map(&mut b, 5);
        mp::str(&mut b, "granted");
        mp::array(&mut b, self.granted.len());
        for g in &self.granted {
            mp::map(&mut b, 2);
            mp::str(&mut b, "spec");
            b.extend_from_slice(&g.spec.1);
            mp::str(&mut b, "epoch");
            mp::uint(&mut b, g.epoch);
        }
        mp::str(&mut b, "held");
        mp::uint(&mut b, u64::from(self.held));
        mp::str(&mut b, "cap");
        mp::uint(&mut b, u64::from(self.cap));
        mp::str(&mut b, "ttl_ms");
        mp::uint(&mut b, self.ttl_ms);
        mp::str(&mut b, "more");
        mp::bool(&mut b, self.more);
        Bytes::from(b)
    }
}

/// Serialized like [`steward_subjects::api::lease::LeaseReply`].
#[derive(Serialize)]
pub(super) struct LeaseReplyOut {
    pub(super) granted: Vec<LeasedOut>,
    pub(super) held: u32,
    pub(super) cap: u32,
    pub(super) ttl_ms: u64,
    pub(super) more: bool,
}

/// Serialized like [`steward_subjects::api::lease::MineReply`].
#[derive(Serialize)]
pub(super) struct MineReplyOut {
    pub(super) specs: Vec<LeasedOut>,
    pub(super) ttl_ms: u64,
}

pub(super) enum Out {
    Lease(LeaseReplyOut),
    Renew(RenewReply),
    Mine(MineReplyOut),
    Release(ReleaseReply),
    Error(WireError),
}

impl Out {
    pub(super) fn of<T>(r: Result<T, WireError>, f: impl FnOnce(T) -> Out) -> Out {
        match r {
            Ok(v) => f(v),
            Err(e) => Out::Error(e),
        }
    }

    fn encode(self, enc: Encoding) -> Bytes {
        match self {
            Out::Lease(r) if enc == Encoding::MsgPack => r.msgpack(),
            Out::Lease(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Renew(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Mine(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Release(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Error(e) => rpc::encode_reply::<()>(enc, Err(e)),
        }
    }
}

/// Registers the micro service `steward-lease` of `account` (its endpoints are added by
/// [`serve_endpoints`]).
///
/// # Errors
/// [`LeaseError::Register`].
pub(super) async fn start_service(
    client: &async_nats::Client,
    account: &AccountId,
) -> Result<async_nats::service::Service, LeaseError> {
    crate::start_account_service(client, account, "lease", "steward job-spec leases and results")
        .await
        .map_err(|e| LeaseError::Register(e.to_string()))
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Lease,
    Renew,
    Mine,
    Release,
    Leases,
    Submit,
}

/// The endpoints the loop polls itself (no hand-over per request), tagged with their operation.
pub(super) type LoopEndpoints = futures::stream::SelectAll<
    futures::stream::Map<
        async_nats::service::endpoint::Endpoint,
        Box<dyn FnMut(async_nats::service::Request) -> (Op, async_nats::service::Request) + Send>,
    >,
>;

/// Registers every endpoint: `lease`, `renew`, `mine` and `release` are returned for the loop
/// to poll; `leases` and `submit` are served by tasks of their own beside it.
pub(super) async fn serve_endpoints(
    service: &async_nats::service::Service,
    shared: &Arc<Shared>,
    tx: &tokio::sync::mpsc::UnboundedSender<Input>,
    guard: &LeaderGuard,
    tasks: &mut TaskSet<LeaseMsg>,
) -> Result<LoopEndpoints, LeaseError> {
    let s = &shared.subjects;
    let mut looped = futures::stream::SelectAll::new();
    for (name, subject, op) in [
        ("lease", s.identity_wildcard(IdentityEndpoint::Lease), Op::Lease),
        ("renew", s.identity_wildcard(IdentityEndpoint::Renew), Op::Renew),
        ("mine", s.identity_wildcard(IdentityEndpoint::Mine), Op::Mine),
        ("release", s.identity_wildcard(IdentityEndpoint::Release), Op::Release),
        ("leases", s.jobspec_leases(), Op::Leases),
        ("submit", s.identity_wildcard(IdentityEndpoint::Submit), Op::Submit),
    ] {
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| LeaseError::Endpoint { name, reason: e.to_string() })?;
        if matches!(op, Op::Lease | Op::Renew | Op::Mine | Op::Release) {
            let tag: Box<dyn FnMut(async_nats::service::Request) -> (Op, async_nats::service::Request) + Send> =
                Box::new(move |r| (op, r));
            looped.push(endpoint.map(tag));
            continue;
        }
        let (shared, tx, guard) = (shared.clone(), tx.clone(), guard.clone());
        tasks.spawn_detached(async move {
            while let Some(req) = endpoint.next().await {
                if !guard.is_valid() {
                    // Stepping down: stay silent (the caller retries another instance).
                    continue;
                }
                let shared = shared.clone();
                if matches!(op, Op::Leases) {
                    tokio::spawn(async move {
                        let _ = rpc::serve(&req, |r: LeasesRequest| async move { shared.leases(&r) }).await;
                    });
                } else {
                    tokio::spawn(async move {
                        let subject = req.message.subject.as_str();
                        let _ =
                            rpc::serve(&req, |r: SubmitRequest| async move { shared.submit(r, subject).await }).await;
                    });
                }
            }
            let _ = tx.send(Input::StepDown(LeaseError::Closed(format!("endpoint {name}"))));
        });
    }
    Ok(looped)
}

/// Decodes a request polled by the loop and checks it against the identity of its subject; a
/// malformed or foreign one gets its error reply with the commit (a foreign one is counted).
pub(super) fn decode(op: Op, req: async_nats::service::Request, shared: &Shared, c: &mut Commit) -> Option<Input> {
    fn with<T: serde::de::DeserializeOwned + Claimed>(
        op: Op,
        req: async_nats::service::Request,
        shared: &Shared,
        c: &mut Commit,
        wrap: fn(T, Encoding, async_nats::service::Request) -> Input,
    ) -> Option<Input> {
        let (mut r, enc) = match rpc::decode_request::<T>(&req.message) {
            Ok(decoded) => decoded,
            Err((e, enc)) => {
                c.replies.push((req, enc, Out::Error(e)));
                return None;
            }
        };
        let claimed = shared.identities.acting(op, &req.message.subject).and_then(|who| {
            r.claim(&who)
                .inspect_err(|e| shared.fence.refused(FenceRefusal::ForeignRequest, who.host, who.runtime, &e.message))
        });
        match claimed {
            Ok(()) => Some(wrap(r, enc, req)),
            Err(e) => {
                c.replies.push((req, enc, Out::Error(e)));
                None
            }
        }
    }
    match op {
        Op::Lease => with(op, req, shared, c, Input::Lease),
        Op::Renew => with(op, req, shared, c, Input::Renew),
        Op::Mine => with(op, req, shared, c, Input::Mine),
        Op::Release => with(op, req, shared, c, Input::Release),
        Op::Leases | Op::Submit => None,
    }
}

/// Sends one reply (publishing only queues it).
pub(super) async fn respond(req: &async_nats::service::Request, enc: Encoding, out: Out) {
    let payload = out.encode(enc);
    // MessagePack is what a reply without a content type means (`Encoding::from_headers`), so
    // the hot path skips the header; JSON replies say so.
    let sent = match enc {
        Encoding::MsgPack => req.respond(Ok(payload)).await,
        Encoding::Json => req.respond_with_headers(Ok(payload), enc.headers()).await,
    };
    if let Err(e) = sent {
        debug!(error = %e, "lease reply not sent");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use steward_subjects::api::lease::{LeaseReply, LeasedSpec, MineReply};
    use steward_subjects::codec;
    use steward_subjects::config::{SpecTarget, TargetKind};
    use steward_subjects::Envelope;

    use super::*;

    fn spec(i: usize) -> JobSpec {
        JobSpec {
            id: format!("{i:032x}"),
            account: "acme".into(),
            target: SpecTarget { kind: TargetKind::Pool, id: "p".repeat(i * 9) },
            runtime_selector: "zone=a".into(),
            content_hash: "h".repeat(i * 7),
            interval_ms: 1 << (i % 40),
            timeout_ms: 1000 + i as u64,
            ..JobSpec::default()
        }
    }

    fn epoch(i: usize) -> u64 {
        (1u64 << (i % 64)) + i as u64
    }

    /// The reply as answered: each spec spliced from its stored MessagePack.
    fn reply_out(n: usize) -> LeaseReplyOut {
        let granted = (0..n)
            .map(|i| {
                let spec = spec(i);
                let raw = Bytes::from(rmp_serde::to_vec_named(&spec).unwrap());
                LeasedOut { spec: SpecRef(Arc::new(spec), raw), epoch: epoch(i) }
            })
            .collect();
        LeaseReplyOut { granted, held: 70_000, cap: 10_000, ttl_ms: 15_000, more: n % 2 == 0 }
    }

    /// Byte for byte against the real `LeaseReply` (every field set) in its envelope: a field
    /// added to `LeaseReply`, `LeasedSpec` or `Envelope` and not to the hand encoder fails here.
    #[test]
    fn hand_written_lease_reply_is_byte_for_byte_the_real_reply() {
        for n in [0usize, 1, 15, 16, 40] {
            let real = LeaseReply {
                granted: (0..n).map(|i| LeasedSpec { spec: spec(i), epoch: epoch(i) }).collect(),
                held: 70_000,
                cap: 10_000,
                ttl_ms: 15_000,
                more: n % 2 == 0,
            };
            let want = rmp_serde::to_vec_named(&Envelope::from(Ok::<_, WireError>(real))).unwrap();
            assert_eq!(reply_out(n).msgpack().to_vec(), want, "{n} granted");
        }
    }

    /// The serde form of the `mine` reply, byte for byte against the real `MineReply`.
    #[test]
    fn mine_reply_is_byte_for_byte_the_real_reply() {
        let out = MineReplyOut { specs: reply_out(3).granted, ttl_ms: 15_000 };
        let real = MineReply {
            specs: (0..3).map(|i| LeasedSpec { spec: spec(i), epoch: epoch(i) }).collect(),
            ttl_ms: 15_000,
        };
        assert_eq!(rmp_serde::to_vec_named(&out).unwrap(), rmp_serde::to_vec_named(&real).unwrap());
    }

    #[test]
    fn hand_written_lease_reply_decodes_like_the_serde_one() {
        for n in [0usize, 1, 15, 16, 40] {
            let out = reply_out(n);
            let by_serde: Envelope<LeaseReply> =
                codec::decode(Encoding::MsgPack, &rpc::encode_reply(Encoding::MsgPack, Ok(&out))).unwrap();
            let by_hand: Envelope<LeaseReply> = codec::decode(Encoding::MsgPack, &out.msgpack()).unwrap();
            assert_eq!(by_hand, by_serde);
            assert_eq!(by_hand.data.unwrap().granted.len(), n);
        }
    }
}
