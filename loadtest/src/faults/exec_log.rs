//! Check commands that log their own executions, so the history holds what runtimes really ran
//! rather than what they said they ran.
//!
//! [`check_argv`] is a `command` executor argv: it appends `start <check> <runtime> <ns>` to a
//! log file, sleeps, then appends `end <check> <runtime> <ns>` (one `write` each, O_APPEND, so
//! lines from concurrent processes never interleave). The runtime is named by the
//! [`RUNTIME_ENV`] variable the scenario sets on each runtime process (checks inherit it).
//! [`read`] turns the log into [`Event::ExecStarted`] / [`Event::ExecEnded`].

use std::path::Path;

use anyhow::Context;

use crate::checker::Event;

/// Environment variable naming the runtime, set on each `steward runtime` / `steward edge`.
pub const RUNTIME_ENV: &str = "STEWARD_FAULT_RUNTIME";

/// A `command` executor argv logging `check`'s execution to `log`, lasting `busy_ms`.
#[must_use]
pub fn check_argv(log: &Path, check: &str, busy_ms: u64) -> Vec<String> {
    let script = format!(
        "echo \"start {check} ${RUNTIME_ENV} $(date +%s%N)\" >> '{log}'; sleep {secs}; echo \"end {check} ${RUNTIME_ENV} $(date +%s%N)\" >> '{log}'",
        log = log.display(),
        secs = format_args!("{}.{:03}", busy_ms / 1000, busy_ms % 1000),
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The executions logged in `log` (missing file: none).
///
/// # Errors
/// When the file cannot be read or a line is not `start|end <check> <runtime> <ns>`.
pub fn read(log: &Path) -> anyhow::Result<Vec<Event>> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", log.display())),
    };
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, check, runtime, at] = parts[..] else {
            anyhow::bail!("{}:{}: not `start|end <check> <runtime> <ns>`: {line:?}", log.display(), i + 1);
        };
        let at: u64 = at.parse().with_context(|| format!("{}:{}: bad time", log.display(), i + 1))?;
        let (spec, runtime) = (check.to_owned(), runtime.to_owned());
        events.push(match what {
            "start" => Event::ExecStarted { spec, runtime, at },
            "end" => Event::ExecEnded { spec, runtime, at },
            _ => anyhow::bail!("{}:{}: unknown kind {what:?}", log.display(), i + 1),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_execution_reads_back_as_start_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("exec.log");
        let argv = check_argv(&log, "c1", 10);
        let status = std::process::Command::new(&argv[0]).args(&argv[1..]).env(RUNTIME_ENV, "rt-1").status().unwrap();
        assert!(status.success());
        let events = read(&log).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        let (Event::ExecStarted { at: a, .. }, Event::ExecEnded { at: b, runtime, spec }) = (&events[0], &events[1])
        else {
            panic!("{events:?}")
        };
        assert!(b > a, "{events:?}");
        assert_eq!((runtime.as_str(), spec.as_str()), ("rt-1", "c1"));
    }

    #[test]
    fn a_garbled_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("exec.log");
        std::fs::write(&log, "start c1 rt 1\nnonsense\n").unwrap();
        let e = read(&log).unwrap_err().to_string();
        assert!(e.contains(":2:"), "{e}");
    }
}
