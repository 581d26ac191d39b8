//! Finding the `nats-server` binary and checking its version.
//!
//! Search order: `STEWARD_NATS_SERVER`, then `nats-server` on `PATH` (only when it is 2.10 or
//! newer), then the project's tools folder `.tools/bin/nats-server`, looked up in the ancestors
//! of the current directory, of this crate's workspace and of the running executable.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::DeployError;

/// The nats-server release `deploy/install-nats-server.sh` installs and the tests are run against.
pub const PINNED_NATS_SERVER_VERSION: &str = "2.15.1";

/// The environment variable naming the `nats-server` binary to use.
pub const NATS_SERVER_ENV: &str = "STEWARD_NATS_SERVER";

/// The oldest nats-server Steward supports, as `(major, minor)`.
pub const MIN_NATS_SERVER_VERSION: (u32, u32) = (2, 10);

/// How to get a usable `nats-server`; part of every "not found" error.
pub const INSTALL_HINT: &str = "run deploy/install-nats-server.sh (installs the pinned nats-server 2.15.1 into .tools/bin) or set STEWARD_NATS_SERVER to a nats-server 2.10+ binary";

/// The tools-folder location of the binary, relative to a root folder.
const TOOLS_BINARY: &str = ".tools/bin/nats-server";

/// What [`find_nats_server_in`] looks at; [`SearchInputs::from_environment`] fills it from the
/// process, tests fill it by hand so they never touch process-global environment variables.
#[derive(Debug, Clone, Default)]
pub struct SearchInputs {
    /// The value of `STEWARD_NATS_SERVER`, if set.
    pub env_value: Option<OsString>,
    /// The value of `PATH`, if set.
    pub path_var: Option<OsString>,
    /// Folders in which `.tools/bin/nats-server` is looked for, in order.
    pub roots: Vec<PathBuf>,
}

impl SearchInputs {
    /// Reads `STEWARD_NATS_SERVER` and `PATH`, and lists as roots the ancestors of the current
    /// directory, of this crate's workspace root and of the current executable's folder.
    #[must_use]
    pub fn from_environment() -> Self {
        let mut roots: Vec<PathBuf> = Vec::new();
        let mut push_ancestors = |start: &Path| {
            for dir in start.ancestors() {
                if !roots.iter().any(|r| r == dir) {
                    roots.push(dir.to_path_buf());
                }
            }
        };
        if let Ok(cwd) = std::env::current_dir() {
            push_ancestors(&cwd);
        }
        push_ancestors(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        if let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
            push_ancestors(&exe_dir);
        }
        Self { env_value: std::env::var_os(NATS_SERVER_ENV), path_var: std::env::var_os("PATH"), roots }
    }
}

/// Finds the `nats-server` binary from the process environment.
///
/// ```no_run
/// let path = steward_deploy::find_nats_server()?;
/// println!("using {}", path.display());
/// # Ok::<(), steward_deploy::DeployError>(())
/// ```
///
/// # Errors
///
/// [`DeployError::InvalidEnvBinary`] when `STEWARD_NATS_SERVER` is set to something that is not
/// an executable file, [`DeployError::NotFound`] (saying where it looked and how to install)
/// when no binary is found.
pub fn find_nats_server() -> Result<PathBuf, DeployError> {
    find_nats_server_in(&SearchInputs::from_environment())
}

/// Finds the `nats-server` binary using explicit inputs instead of the process environment.
///
/// ```
/// use steward_deploy::{find_nats_server_in, SearchInputs, DeployError};
/// let inputs = SearchInputs { env_value: Some("/no/such/nats-server".into()), ..Default::default() };
/// assert!(matches!(find_nats_server_in(&inputs), Err(DeployError::InvalidEnvBinary { .. })));
/// ```
///
/// # Errors
///
/// As [`find_nats_server`].
pub fn find_nats_server_in(inputs: &SearchInputs) -> Result<PathBuf, DeployError> {
    let mut searched = Vec::new();

    match inputs.env_value.as_deref().filter(|v| !v.is_empty()) {
        Some(value) => {
            let path = PathBuf::from(value);
            if is_executable(&path) {
                tracing::debug!(path = %path.display(), "nats-server from STEWARD_NATS_SERVER");
                return Ok(path);
            }
            return Err(DeployError::InvalidEnvBinary { path });
        }
        None => searched.push(format!("{NATS_SERVER_ENV} (unset)")),
    }

    if let Some(path_var) = inputs.path_var.as_deref() {
        for dir in std::env::split_paths(path_var) {
            let candidate = dir.join("nats-server");
            if !is_executable(&candidate) {
                continue;
            }
            match nats_server_version(&candidate) {
                Ok(version) if version.is_supported() => {
                    tracing::debug!(path = %candidate.display(), %version, "nats-server from PATH");
                    return Ok(candidate);
                }
                Ok(version) => {
                    tracing::warn!(path = %candidate.display(), %version, "nats-server on PATH is older than 2.10, skipping it");
                    searched.push(format!("{} (version {version}, too old)", candidate.display()));
                }
                Err(err) => {
                    tracing::warn!(path = %candidate.display(), error = %err, "nats-server on PATH does not answer --version, skipping it");
                    searched.push(format!("{} (no version)", candidate.display()));
                }
            }
        }
    }
    searched.push("nats-server on PATH".to_owned());

    for root in &inputs.roots {
        let candidate = root.join(TOOLS_BINARY);
        if is_executable(&candidate) {
            tracing::debug!(path = %candidate.display(), "nats-server from the tools folder");
            return Ok(candidate);
        }
        searched.push(candidate.display().to_string());
    }

    Err(DeployError::NotFound { searched })
}

/// A `nats-server` version as reported by `nats-server --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatsServerVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl NatsServerVersion {
    /// Parses output like `nats-server: v2.15.1` (a leading `v` and trailing suffixes are allowed).
    #[must_use]
    pub fn parse(output: &str) -> Option<Self> {
        let token = output
            .split_whitespace()
            .map(|t| t.trim_start_matches('v'))
            .find(|t| t.starts_with(|c: char| c.is_ascii_digit()) && t.contains('.'))?;
        let mut parts = token.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self { major, minor, patch })
    }

    /// Whether this version is at least [`MIN_NATS_SERVER_VERSION`].
    #[must_use]
    pub fn is_supported(&self) -> bool {
        (self.major, self.minor) >= MIN_NATS_SERVER_VERSION
    }
}

impl fmt::Display for NatsServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Runs `<binary> --version` and parses the answer.
///
/// # Errors
///
/// [`DeployError::VersionProbe`] when the binary cannot be run or prints no version.
pub fn nats_server_version(binary: &Path) -> Result<NatsServerVersion, DeployError> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|err| DeployError::VersionProbe { path: binary.to_path_buf(), reason: err.to_string() })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    NatsServerVersion::parse(&text).ok_or_else(|| DeployError::VersionProbe {
        path: binary.to_path_buf(),
        reason: format!("unexpected output {:?}", text.trim()),
    })
}

/// Runs `<binary> --version` and checks it is 2.10 or newer.
///
/// # Errors
///
/// [`DeployError::VersionProbe`] as [`nats_server_version`], [`DeployError::UnsupportedVersion`]
/// when it is older than 2.10.
pub fn check_nats_server(binary: &Path) -> Result<NatsServerVersion, DeployError> {
    let version = nats_server_version(binary)?;
    if version.is_supported() {
        Ok(version)
    } else {
        Err(DeployError::UnsupportedVersion { path: binary.to_path_buf(), version: version.to_string() })
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        let v = NatsServerVersion::parse("nats-server: v2.15.1\n").unwrap();
        assert_eq!(v.to_string(), "2.15.1");
        assert!(v.is_supported());
        assert!(!NatsServerVersion::parse("nats-server: v2.9.25").unwrap().is_supported());
        assert!(NatsServerVersion::parse("nats-server: v2.11.0-RC.1").unwrap().is_supported());
        assert!(NatsServerVersion::parse("garbage").is_none());
    }

    #[test]
    fn not_found_names_every_place_and_the_fix() {
        let inputs = SearchInputs {
            env_value: None,
            path_var: Some(OsString::from("/nonexistent-steward-bin")),
            roots: vec![PathBuf::from("/nonexistent-steward-root")],
        };
        let err = find_nats_server_in(&inputs).unwrap_err().to_string();
        assert!(err.contains("STEWARD_NATS_SERVER (unset)"), "{err}");
        assert!(err.contains("/nonexistent-steward-root/.tools/bin/nats-server"), "{err}");
        assert!(err.contains(INSTALL_HINT), "{err}");
    }
}
