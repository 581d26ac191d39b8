//! TLS settings of a server's listening ports ([`TlsListen`], for the client and leafnode
//! ports) and of its outgoing leaf links ([`TlsRemote`]), rendered as nats-server `tls { ... }`
//! blocks. Files are named by path; nats-server reads them when it starts.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::quote;

/// TLS of one listening port: the server's certificate and key, and optionally a CA that client
/// (or leaf) certificates must be signed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA that signs client certificates (PEM), if clients present any.
    pub ca: Option<PathBuf>,
    /// Whether every client must present a certificate signed by `ca`.
    pub verify: bool,
}

/// TLS of an outgoing leaf link: the CA to trust the hub's certificate with, and optionally a
/// client certificate presented to a hub that verifies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsRemote {
    /// The CA that signed the hub's certificate (PEM); `None` = the system's trust store.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), for a hub with `verify`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// Adds `key: "path"` to the entries of a one-line block.
fn file(entries: &mut Vec<String>, key: &str, path: Option<&PathBuf>) {
    if let Some(path) = path {
        entries.push(format!("{key}: {}", quote(&path.display().to_string())));
    }
}

/// A one-line block: entries separated by commas (the config syntax needs them on one line).
fn one_line(entries: &[String]) -> String {
    let mut c = String::from("tls {");
    if !entries.is_empty() {
        let _ = write!(c, " {} ", entries.join(", "));
    }
    c.push('}');
    c
}

impl TlsListen {
    /// The `tls { ... }` block on one line.
    ///
    /// ```
    /// use steward_deploy::tls::TlsListen;
    /// let t = TlsListen { cert: "/c.pem".into(), key: "/k.pem".into(), ca: None, verify: false };
    /// assert_eq!(t.block(), "tls { cert_file: \"/c.pem\", key_file: \"/k.pem\" }");
    /// ```
    #[must_use]
    pub fn block(&self) -> String {
        let mut e = Vec::new();
        file(&mut e, "cert_file", Some(&self.cert));
        file(&mut e, "key_file", Some(&self.key));
        file(&mut e, "ca_file", self.ca.as_ref());
        if self.verify {
            e.push("verify: true".to_owned());
        }
        one_line(&e)
    }
}

impl TlsRemote {
    /// The `tls { ... }` block on one line (an empty block still makes the link use TLS).
    #[must_use]
    pub fn block(&self) -> String {
        let mut e = Vec::new();
        file(&mut e, "ca_file", self.ca.as_ref());
        file(&mut e, "cert_file", self.cert.as_ref());
        file(&mut e, "key_file", self.key.as_ref());
        one_line(&e)
    }
}
