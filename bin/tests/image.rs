//! The one image for every role (`deploy/image/build.sh`), built with buildah from the test's
//! `steward` binary and the nats-server the tests use, then run the only way this machine class
//! allows (containers cannot start: crun's `setrlimit` is refused): the image is mounted
//! through a buildah working container and its entrypoint runs from the mounted root in a
//! chroot, in a private mount namespace (its own /proc, /dev, /dev/shm, /tmp, gone with the process),
//! as the image's user, with the image's environment and working folder — all read from the
//! image's configuration, not assumed. `steward version`, then `steward up --edges 1` starts
//! the image's own nats-server and `steward health` (also run in the chroot, finding the
//! context file `up` wrote in the image's data volume) lists the hub and the edge.
//!
//! Needs root and buildah (`deploy/dev test` installs it); without them the test fails saying
//! so. The image, the working container and every process started in the chroot are removed
//! even when an assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use steward_deploy::server::free_ports;
use steward_deploy::wait::eventually;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

/// The data volume and the user the image is meant to have.
const DATA: &str = "/var/lib/steward";
const UID: u32 = 10001;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command to completion and returns its stdout; panics with its stderr on failure.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Fails, naming the fix, when the test cannot run here (no buildah, not root).
fn require_buildah_as_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
    assert_eq!(uid, Some("0"), "the image test needs root (buildah mount of a rootful store, chroot)");
    let found = Command::new("buildah").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "buildah is not installed: `deploy/dev test` installs it (apt-get install buildah)");
}

/// A built image, removed on drop.
struct Image {
    id: String,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["rmi", "--force", &self.id]).stdout(Stdio::null()).status();
    }
}

/// A buildah working container of the image with its root filesystem mounted; unmounted and
/// removed on drop, after every process still running inside it is killed.
struct Mounted {
    name: String,
    root: PathBuf,
}

impl Mounted {
    /// Pids of the processes whose root folder is this container's root.
    fn processes(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if std::fs::read_link(entry.path().join("root")).is_ok_and(|r| r == self.root) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = Command::new("buildah").args(["umount", &self.name]).stdout(Stdio::null()).status();
        let _ = Command::new("buildah").args(["rm", &self.name]).stdout(Stdio::null()).status();
    }
}

/// The parts of the image's OCI configuration a runtime would use.
struct ImageConfig {
    user: String,
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    workdir: String,
    volumes: Vec<String>,
}

fn image_config(id: &str) -> ImageConfig {
    let text = run(Command::new("buildah").args(["inspect", "--type", "image", id]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["OCIv1"]["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    ImageConfig {
        user: c["User"].as_str().unwrap_or_default().to_owned(),
        env: strings(&c["Env"])
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
        entrypoint: strings(&c["Entrypoint"]),
        workdir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
        volumes: c["Volumes"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default(),
    }
}

/// The image's entrypoint with `args`, run from the mounted root as the image's user with only
/// the image's environment: a private mount namespace gets /proc, /dev, and a /dev/shm and /tmp of its own
/// under the root (they vanish with its last process), then `unshare --root` enters the root.
fn entrypoint(root: &Path, config: &ImageConfig, args: &[&str]) -> Command {
    let (uid, gid) = config.user.split_once(':').unwrap_or((&config.user, &config.user));
    let script = r#"set -e
r=$1; shift
mount -t proc proc "$r/proc"
mount --bind /dev "$r/dev"
mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"])
        .arg(root)
        .arg("/usr/bin/unshare")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--wd={}", config.workdir))
        .args(["--setuid", uid, "--setgid", gid, "--"])
        .args(&config.entrypoint)
        .args(args);
    cmd
}

/// `uid` and the supplementary groups of a running process.
fn credentials(pid: u32) -> (u32, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_owned();
    let uid = field("Uid:").split_whitespace().next().unwrap().parse().unwrap();
    (uid, field("Groups:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_every_role_from_its_own_root_as_its_user() {
    require_buildah_as_root();
    let nats = steward_deploy::find_nats_server().unwrap();
    let unique = format!("{}-{}", std::process::id(), free_ports(1).unwrap()[0]);
    let tag = format!("localhost/steward-test:{unique}");
    let built = Command::new("bash")
        .arg(workspace().join("deploy/image/build.sh"))
        .args(["--steward", STEWARD, "--tag", &tag, "--nats-server"])
        .arg(&nats)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(built.status.success(), "image build failed: {}", String::from_utf8_lossy(&built.stderr));
    let image = Image { id: stdout.lines().last().unwrap().trim().to_owned() };

    let config = image_config(&image.id);
    assert_eq!(config.user, format!("{UID}:{UID}"), "the image runs as its own non-root user");
    assert_eq!(config.entrypoint, ["/usr/bin/steward"]);
    assert_eq!(config.volumes, [DATA]);
    assert_eq!(config.workdir, DATA);

    let name = format!("steward-test-{unique}");
    run(Command::new("buildah").args(["from", "--name", &name, &image.id]));
    let mut mounted = Mounted { root: PathBuf::new(), name };
    let root = PathBuf::from(run(Command::new("buildah").args(["mount", &mounted.name])).trim());
    mounted.root.clone_from(&root);
    let volume = root.join(DATA.trim_start_matches('/'));
    assert_eq!(std::fs::metadata(&volume).unwrap().uid(), UID, "the data volume belongs to the image's user");

    let version = run(&mut entrypoint(&root, &config, &["version"]));
    assert!(version.starts_with("steward "), "{version}");

    // `up` with no --data: the image's environment makes its data volume the state folder.
    let port = free_ports(1).unwrap()[0].to_string();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut up = entrypoint(&root, &config, &["up", "--edges", "1", "--heartbeat-ms", "200", "--port", &port])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let health = eventually(Duration::from_secs(60), Duration::from_millis(300), || {
        let out = entrypoint(&root, &config, &["health", "-o", "json", "--wait-ms", "300"]).output();
        async move {
            let out = out.map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|_| format!("health: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
            let count = |name: &str| v.as_array().map_or(0, |a| a.iter().filter(|s| s["service"] == name).count());
            match (count("steward-hub"), count("steward-edge")) {
                (1, 1) => Ok(v),
                (hubs, edges) => Err(format!("{hubs} hub and {edges} edge services so far")),
            }
        }
    })
    .await;
    let up_log = std::fs::read_to_string(log.path()).unwrap_or_default();
    let health = health.unwrap_or_else(|e| panic!("{e}; steward up logged:\n{up_log}"));
    let edge = health.as_array().unwrap().iter().find(|s| s["service"] == "steward-edge").unwrap();
    assert_eq!(edge["metadata"]["host_id"], "edge-1", "{health}");

    // Everything `up` wrote is in the image's data volume, and it runs the image's own
    // nats-server, as the image's user with no supplementary groups.
    for file in ["context.json", "auth/accounts/default/operators/admin.creds", "nats"] {
        let meta = std::fs::metadata(volume.join(file)).unwrap_or_else(|e| panic!("{DATA}/{file}: {e}"));
        assert_eq!(meta.uid(), UID, "{file}");
    }
    let inside = mounted.processes();
    let nats_pid = inside
        .iter()
        .copied()
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == root.join("usr/bin/nats-server")))
        .unwrap_or_else(|| panic!("no /usr/bin/nats-server running in the image's root among {inside:?}"));
    for pid in [up.id(), nats_pid] {
        assert_eq!(credentials(pid), (UID, String::new()), "process {pid}");
    }

    // SIGTERM stops `up` cleanly, its nats-server with it.
    run(Command::new("kill").args(["-TERM", &up.id().to_string()]));
    let status = up.wait().unwrap();
    assert!(status.success(), "steward up exited with {status}:\n{}", std::fs::read_to_string(log.path()).unwrap());
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let left = mounted.processes();
        async move {
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left running in the image: {left:?}"))
            }
        }
    })
    .await
    .unwrap();
}
