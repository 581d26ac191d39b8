//! Files holding secrets (nkey seeds, credentials, signing keys): [`write_secret`] writes them
//! mode 0600 every time, also over an existing file with a looser mode; [`read_secret`] refuses,
//! as ssh does, a file that anyone but its owner may read or write (any bit of `0o077` set), and
//! every error names the file.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Why a secret file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file does not exist.
    #[error("'{}' does not exist", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may access the file.
    #[error(
        "permissions {mode:04o} for '{}' are too open; it must be readable only by its owner (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold what it should.
    #[error("'{}' is not {expected}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
    /// Any other file-system error.
    #[error("cannot {action} '{}': {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl SecretFileError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return SecretFileError::NotFound { path: path.to_owned() };
        }
        SecretFileError::Io { action, path: path.to_owned(), source }
    }
}

/// Reads a secret file as text after checking that only its owner may access it (the mode of
/// the opened file is checked, so the file read is the file checked).
///
/// ```
/// use steward_deploy::secret::{read_secret, write_secret, SecretFileError};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("x.nk");
/// write_secret(&path, "SUSECRET\n").unwrap();
/// assert_eq!(read_secret(&path).unwrap(), "SUSECRET\n");
/// # #[cfg(unix)] {
/// use std::os::unix::fs::PermissionsExt as _;
/// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
/// assert!(matches!(read_secret(&path), Err(SecretFileError::TooOpen { mode: 0o644, .. })));
/// # }
/// ```
///
/// # Errors
/// [`SecretFileError::NotFound`], [`SecretFileError::TooOpen`], or [`SecretFileError::Io`]
/// (also for text that is not UTF-8).
pub fn read_secret(path: &Path) -> Result<String, SecretFileError> {
    let mut file = std::fs::File::open(path).map_err(|e| SecretFileError::io("read", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = file.metadata().map_err(|e| SecretFileError::io("read", path, e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::TooOpen { path: path.to_owned(), mode });
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| SecretFileError::io("read", path, e))?;
    Ok(text)
}

/// Writes `text` to a secret file with mode 0600, creating or replacing it. An existing file is
/// made 0600 before its old content is truncated and the new one written, so the secret never
/// sits in a file others may read.
///
/// # Errors
/// [`SecretFileError::Io`] (or [`SecretFileError::NotFound`] when the folder does not exist).
pub fn write_secret(path: &Path, text: &str) -> Result<(), SecretFileError> {
    let err = |e| SecretFileError::io("write", path, e);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    file.set_len(0).map_err(err)?;
    let mut file = file;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(err)
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn written_0600_first_time_and_over_a_looser_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.nk");
        write_secret(&path, "one").unwrap();
        assert_eq!(mode(&path), 0o600);
        chmod(&path, 0o644);
        write_secret(&path, "two").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_secret(&path).unwrap(), "two");
        // A file made by someone else with the default umask is tightened on overwrite too.
        let other = dir.path().join("b.nk");
        std::fs::write(&other, "a longer old content").unwrap();
        chmod(&other, 0o666);
        write_secret(&other, "new").unwrap();
        assert_eq!((mode(&other), read_secret(&other).unwrap().as_str()), (0o600, "new"));
    }

    #[test]
    fn group_or_world_access_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.nk");
        write_secret(&path, "s").unwrap();
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            chmod(&path, bad);
            let e = read_secret(&path).unwrap_err();
            assert!(matches!(e, SecretFileError::TooOpen { mode, .. } if mode == bad), "{bad:o}: {e}");
            let text = e.to_string();
            let shown = path.display().to_string();
            assert!(text.contains(&format!("permissions {bad:04o} for '{shown}' are too open")), "{text}");
            assert!(text.contains(&format!("chmod 600 {shown}")), "{text}");
        }
        for good in [0o600, 0o400] {
            chmod(&path, good);
            assert_eq!(read_secret(&path).unwrap(), "s");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.nk");
        let e = read_secret(&path).unwrap_err();
        assert!(matches!(e, SecretFileError::NotFound { .. }));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
