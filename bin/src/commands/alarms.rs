//! `steward alarms`, `steward alarm ID`, `steward ack ID`, `steward silence add|list|expire`:
//! the alarm endpoints from the terminal.

use clap::{Args, Subcommand};
use steward_actors::alarms::client::AlarmClient;
use steward_subjects::api::alarm::{
    AckRequest, AddSilenceRequest, AlarmRecord, ExpireSilenceRequest, GetAlarmRequest, ListAlarmsRequest,
    ListSilencesRequest, Silence,
};
use steward_subjects::Subjects;

use crate::args::parse_duration;
use crate::cli::Global;
use crate::output;

/// Options of `steward alarms`.
#[derive(Debug, Clone, Args)]
pub struct AlarmsArgs {
    /// Only alarms in this state: `firing`, `ok` or `all`.
    #[arg(long, default_value = "all")]
    pub state: String,
    /// Only hosts whose labels match this selector.
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Only this host.
    #[arg(long, default_value = "")]
    pub host: String,
}

/// Options of `steward alarm`.
#[derive(Debug, Clone, Args)]
pub struct AlarmArgs {
    /// The alarm id (`<host>.<check>.<rule>`).
    pub id: String,
    /// Most transitions shown (the latest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// Options of `steward ack`.
#[derive(Debug, Clone, Args)]
pub struct AckArgs {
    /// The alarm id.
    pub id: String,
    /// Why (shown in the timeline).
    #[arg(long, default_value = "")]
    pub comment: String,
    /// Who acknowledges (default: `$USER`).
    #[arg(long)]
    pub author: Option<String>,
}

/// Options of `steward silence`.
#[derive(Debug, Clone, Args)]
pub struct SilenceArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SilenceAction,
}

/// `steward silence` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum SilenceAction {
    /// Silence matching alarms for a while (their state is kept; notifications stop).
    Add {
        /// Host label selector.
        #[arg(long, default_value = "")]
        selector: String,
        /// Only this host.
        #[arg(long, default_value = "")]
        host: String,
        /// Only this check.
        #[arg(long, default_value = "")]
        check: String,
        /// Only this alarm rule.
        #[arg(long, default_value = "")]
        rule: String,
        /// How long (`30m`, `2h`).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// End the silence as soon as an alarm it covers resolves.
        #[arg(long)]
        expire_on_resolve: bool,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Who (default: `$USER`).
        #[arg(long)]
        author: Option<String>,
    },
    /// List silences (`--all` includes ended ones).
    List {
        /// Include silences that have ended.
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire {
        /// The silence id.
        id: String,
    },
}

fn author(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).filter(|s| !s.is_empty()).unwrap_or_else(|| "operator".to_owned())
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = steward_actors::now_ms();
    output::duration(now.saturating_sub(ms) / 1000) + " ago"
}

fn time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

async fn client(global: &Global) -> anyhow::Result<AlarmClient> {
    let nats = global.connect().await?;
    Ok(AlarmClient::new(nats, Subjects::new(global.account.clone())))
}

fn alarm_row(a: &AlarmRecord) -> Vec<String> {
    vec![a.id.clone(), a.severity.as_str().to_owned(), a.state_label(), ago(a.since_ms), a.message.clone()]
}

/// `steward alarms`.
///
/// # Errors
/// When the request fails.
pub async fn alarms(global: &Global, args: AlarmsArgs) -> anyhow::Result<()> {
    let c = client(global).await?;
    let reply = c.list(&ListAlarmsRequest { state: args.state, selector: args.selector, host: args.host }).await?;
    let rows: Vec<Vec<String>> = reply.alarms.iter().map(alarm_row).collect();
    output::print(global.output, &["ALARM", "SEVERITY", "STATE", "SINCE", "MESSAGE"], &rows, &reply.alarms);
    Ok(())
}

/// `steward alarm ID`: the alarm and its timeline.
///
/// # Errors
/// When the request fails or the alarm does not exist.
pub async fn alarm(global: &Global, args: AlarmArgs) -> anyhow::Result<()> {
    let c = client(global).await?;
    let reply = c.get(&GetAlarmRequest { id: args.id, limit: args.limit }).await?;
    if global.output == crate::cli::OutputFormat::Json {
        output::print(global.output, &[], &[], &reply);
        return Ok(());
    }
    let a = &reply.alarm;
    println!("alarm     {}", a.id);
    println!("host      {}   check {}   rule {}", a.host, a.check, a.rule);
    println!("severity  {}", a.severity.as_str());
    println!("state     {} since {}", a.state_label(), time(a.since_ms));
    println!("message   {}", a.message);
    if let Some(ack) = &a.ack {
        println!("acked     by {} at {}: {}", ack.author, time(ack.at_ms), ack.comment);
    }
    if !a.silenced_by.is_empty() {
        println!("silenced  by {}", a.silenced_by.join(", "));
    }
    println!();
    let rows: Vec<Vec<String>> = reply
        .timeline
        .iter()
        .map(|e| {
            let cause = e.cause.as_ref().map_or(String::new(), |c| {
                let status = c.status.map_or("", |s| s.as_str());
                format!("result {} {status}", c.key)
            });
            vec![
                e.n.to_string(),
                time(e.at_ms),
                e.kind.as_str().to_owned(),
                if e.notify { "yes" } else { "no" }.to_owned(),
                e.by.clone(),
                if e.detail.is_empty() { e.alarm.message.clone() } else { e.detail.clone() },
                cause,
            ]
        })
        .collect();
    print!("{}", output::table(&["N", "TIME", "TRANSITION", "NOTIFIED", "BY", "DETAIL", "CAUSE"], &rows));
    Ok(())
}

/// `steward ack ID`.
///
/// # Errors
/// When the request fails or the alarm is not firing.
pub async fn ack(global: &Global, args: AckArgs) -> anyhow::Result<()> {
    let c = client(global).await?;
    let a = c.ack(&AckRequest { id: args.id, author: author(args.author), comment: args.comment }).await?;
    output::print(global.output, &["ALARM", "SEVERITY", "STATE", "SINCE", "MESSAGE"], &[alarm_row(&a)], &a);
    Ok(())
}

fn silence_rows(list: &[Silence]) -> Vec<Vec<String>> {
    list.iter()
        .map(|s| {
            let matcher = [("selector", &s.selector), ("host", &s.host), ("check", &s.check), ("rule", &s.rule)]
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let state = match &s.ended {
                Some(why) => format!("ended ({why})"),
                None if s.active(steward_actors::now_ms()) => "active".to_owned(),
                None if s.starts_ms > steward_actors::now_ms() => "pending".to_owned(),
                None => "expired".to_owned(),
            };
            vec![
                s.id.clone(),
                matcher,
                time(s.expires_ms),
                if s.expire_on_resolve { "yes" } else { "no" }.to_owned(),
                state,
                s.author.clone(),
                s.comment.clone(),
            ]
        })
        .collect()
}

const SILENCE_HEADERS: [&str; 7] = ["SILENCE", "MATCHES", "EXPIRES", "ON RESOLVE", "STATE", "AUTHOR", "COMMENT"];

/// `steward silence add|list|expire`.
///
/// # Errors
/// When the request fails or is refused.
pub async fn silence(global: &Global, args: SilenceArgs) -> anyhow::Result<()> {
    let c = client(global).await?;
    match args.action {
        SilenceAction::Add { selector, host, check, rule, duration, expire_on_resolve, comment, author: who } => {
            let now = steward_actors::now_ms();
            let silence = Silence {
                selector,
                host,
                check,
                rule,
                starts_ms: now,
                expires_ms: now + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2),
                expire_on_resolve,
                author: author(who),
                comment,
                ..Default::default()
            };
            let s = c.add_silence(&AddSilenceRequest { silence }).await?;
            output::print(global.output, &SILENCE_HEADERS, &silence_rows(std::slice::from_ref(&s)), &s);
        }
        SilenceAction::List { all } => {
            let reply = c.silences(&ListSilencesRequest { all }).await?;
            output::print(global.output, &SILENCE_HEADERS, &silence_rows(&reply.silences), &reply.silences);
        }
        SilenceAction::Expire { id } => {
            let s = c.expire_silence(&ExpireSilenceRequest { id, author: author(None) }).await?;
            output::print(global.output, &SILENCE_HEADERS, &silence_rows(std::slice::from_ref(&s)), &s);
        }
    }
    Ok(())
}
