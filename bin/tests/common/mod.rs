//! Helpers the binary's tests share: finding processes in /proc by command line and by
//! parent, and running the CLI against account `acme` of a test's NATS server.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of them

/// Pids of processes whose command line (arguments joined by spaces) mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).replace('\0', " ").contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// (pid, parent pid) of every process.
fn parent_links() -> Vec<(u32, u32)> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            links.push((child, ppid));
        }
    }
    links
}

/// Children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    parent_links().into_iter().filter(|(_, pp)| *pp == pid).map(|(c, _)| c).collect()
}

/// Every descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let links = parent_links();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(links.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

/// The `steward` binary under test.
pub const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

/// `steward --nats URL --account acme`, killed when dropped.
pub fn steward(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme"]).kill_on_drop(true);
    c
}

/// `steward -o json ARGS`: the parsed output, or stderr when it fails.
pub async fn json(url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = steward(url).args(["-o", "json"]).args(args).output().await.unwrap();
    if !out.status.success() {
        return Err(format!("steward {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("steward {args:?}: not JSON ({e})"))
}
