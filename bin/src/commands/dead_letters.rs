//! `steward dead-letters`: the messages Steward's consumers terminated or stopped redelivering
//! (a flooding host's bogus run events, events of runs that never existed...), newest first,
//! with the reason, the stream sequence and the subject of the message (its host).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use clap::Args;
use serde::Serialize;
use steward_subjects::api::dead_letter::DeadLetter;
use steward_subjects::streams::DEAD_LETTERS_STREAM;
use steward_subjects::subject::account_of;

use crate::cli::Global;
use crate::output;

/// Options of `steward dead-letters`.
#[derive(Debug, Clone, Args)]
pub struct DeadLettersArgs {
    /// How many of the newest dead letters of the account to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
}

/// One dead letter as shown.
#[derive(Debug, Serialize)]
struct Row {
    timestamp: String,
    stream: String,
    stream_seq: u64,
    /// The dead message's subject; empty when it has aged out of its stream.
    subject: String,
    deliveries: u64,
    why: String,
}

/// How many advisories are read to find `limit` of this account (others' are skipped).
const SCAN_FACTOR: u64 = 20;

/// `steward dead-letters`.
///
/// # Errors
/// When NATS cannot be reached or the dead-letter stream does not exist (no hub ever ran).
pub async fn dead_letters(global: &Global, args: DeadLettersArgs) -> anyhow::Result<()> {
    let client = global.connect().await?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(DEAD_LETTERS_STREAM)
        .await
        .with_context(|| format!("no {DEAD_LETTERS_STREAM} stream: has a Steward hub run on this NATS?"))?;
    let last = stream.info().await?.state.last_sequence;
    let mut rows = Vec::new();
    let mut seq = last;
    let floor = last.saturating_sub(args.limit.saturating_mul(SCAN_FACTOR));
    while seq > floor && (rows.len() as u64) < args.limit {
        let Ok(raw) = stream.direct_get(seq).await else {
            seq -= 1;
            continue;
        };
        seq -= 1;
        let Ok(d) = DeadLetter::decode(&raw.payload) else { continue };
        let subject = original_subject(&js, &d).await;
        if !subject.is_empty() && account_of(&subject).as_ref() != Some(&global.account) {
            continue;
        }
        rows.push(Row {
            why: d.why(),
            timestamp: d.timestamp,
            stream: d.stream,
            stream_seq: d.stream_seq,
            subject,
            deliveries: d.deliveries,
        });
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.timestamp.clone(),
                r.stream.clone(),
                r.stream_seq.to_string(),
                if r.subject.is_empty() { "(aged out)".into() } else { r.subject.clone() },
                r.deliveries.to_string(),
                r.why.clone(),
            ]
        })
        .collect();
    output::print(global.output, &["TIME", "STREAM", "SEQ", "SUBJECT", "DELIVERIES", "WHY"], &table, &rows);
    Ok(())
}

/// The subject of the dead message, read from its stream; empty when it is gone.
async fn original_subject(js: &jetstream::Context, d: &DeadLetter) -> String {
    let get = async {
        let stream = js.get_stream_no_info(&d.stream).await.ok()?;
        stream.direct_get(d.stream_seq).await.ok().map(|m| m.subject.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten().unwrap_or_default()
}
