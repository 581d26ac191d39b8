//! Rendering a nats-server configuration file from [`ServerOptions`] and resolved ports.

use std::fmt::Write as _;
use std::path::Path;

use crate::server::{ResolvedPorts, ServerOptions};

/// Quotes a string for the nats-server configuration syntax.
#[must_use]
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders the configuration text for one server.
///
/// `store_dir` is where JetStream keeps its data (nats-server adds a `jetstream/` folder below it).
#[must_use]
pub fn render(opts: &ServerOptions, ports: &ResolvedPorts, store_dir: &Path) -> String {
    let mut c = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(c, "# rendered by steward-deploy; do not edit, it is rewritten on every start");
    let _ = writeln!(c, "server_name: {}", quote(&opts.name));
    let _ = writeln!(c, "host: {}", quote(&opts.host));
    let _ = writeln!(c, "port: {}", ports.client);
    if let Some(tls) = &opts.tls {
        let _ = writeln!(c, "{}", tls.block());
    }
    let _ = writeln!(c, "http: {}", quote(&format!("127.0.0.1:{}", ports.monitor)));
    if let Some(max_payload) = opts.max_payload {
        let _ = writeln!(c, "max_payload: {max_payload}");
    }

    if opts.jetstream {
        let _ = writeln!(c, "\njetstream {{");
        let _ = writeln!(c, "  store_dir: {}", quote(&store_dir.display().to_string()));
        let _ = writeln!(c, "  max_memory_store: {}", opts.max_memory_store);
        let _ = writeln!(c, "  max_file_store: {}", opts.max_file_store);
        if let Some(domain) = &opts.jetstream_domain {
            let _ = writeln!(c, "  domain: {}", quote(domain));
        }
        let _ = writeln!(c, "}}");
    }

    if let (Some(cluster), Some(route_port)) = (&opts.cluster, ports.route) {
        let _ = writeln!(c, "\ncluster {{");
        let _ = writeln!(c, "  name: {}", quote(&cluster.name));
        let _ = writeln!(c, "  host: {}", quote(&opts.host));
        let _ = writeln!(c, "  port: {route_port}");
        let _ = writeln!(c, "  routes: [");
        for route in &cluster.routes {
            let _ = writeln!(c, "    {}", quote(route));
        }
        let _ = writeln!(c, "  ]");
        let _ = writeln!(c, "}}");
    }

    if ports.leaf.is_some() || !opts.leaf_remotes.is_empty() {
        let _ = writeln!(c, "\nleafnodes {{");
        if let Some(leaf_port) = ports.leaf {
            let _ = writeln!(c, "  host: {}", quote(&opts.host));
            let _ = writeln!(c, "  port: {leaf_port}");
            if let Some(tls) = &opts.leafnode_tls {
                let _ = writeln!(c, "  {}", tls.block());
            }
            if opts.leafnode_no_advertise {
                let _ = writeln!(c, "  no_advertise: true");
            }
        }
        if !opts.leaf_remotes.is_empty() {
            let _ = writeln!(c, "  remotes: [");
            for remote in &opts.leaf_remotes {
                let _ = write!(c, "    {{ urls: [{}]", quote(&remote.url));
                if let Some(creds) = &remote.credentials {
                    let _ = write!(c, ", credentials: {}", quote(&creds.display().to_string()));
                }
                if let Some(account) = &remote.account {
                    let _ = write!(c, ", account: {}", quote(account));
                }
                if let Some(tls) = &remote.tls {
                    let _ = write!(c, ", {}", tls.block());
                }
                let _ = writeln!(c, " }}");
            }
            let _ = writeln!(c, "  ]");
        }
        let _ = writeln!(c, "}}");
    }

    if !opts.extra_config.is_empty() {
        let _ = writeln!(c, "\n# extra configuration\n{}", opts.extra_config);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{ClusterOptions, LeafRemote};
    use crate::tls::{TlsListen, TlsRemote};

    #[test]
    fn renders_every_block() {
        let opts = ServerOptions {
            name: "n1".into(),
            jetstream_domain: Some("hub".into()),
            cluster: Some(ClusterOptions {
                name: "steward".into(),
                port: Some(6222),
                routes: vec!["nats-route://127.0.0.1:6223".into()],
            }),
            leafnode_listen: true,
            leaf_remotes: vec![LeafRemote {
                url: "nats-leaf://127.0.0.1:7422".into(),
                credentials: Some("/tmp/a \"b\".creds".into()),
                account: None,
                tls: Some(TlsRemote { ca: Some("/ca.pem".into()), cert: None, key: None }),
            }],
            tls: Some(TlsListen { cert: "/c.pem".into(), key: "/k.pem".into(), ca: None, verify: false }),
            leafnode_tls: Some(TlsListen {
                cert: "/lc.pem".into(),
                key: "/lk.pem".into(),
                ca: Some("/ca.pem".into()),
                verify: true,
            }),
            leafnode_no_advertise: true,
            max_payload: Some(2_000_000),
            extra_config: "debug: false".into(),
            ..ServerOptions::default()
        };
        let ports = ResolvedPorts { client: 4222, monitor: 8222, route: Some(6222), leaf: Some(7422) };
        let text = render(&opts, &ports, Path::new("/data"));
        assert!(text.contains("server_name: \"n1\""));
        assert!(text.contains("http: \"127.0.0.1:8222\""));
        assert!(text.contains("domain: \"hub\""));
        assert!(text.contains("\"nats-route://127.0.0.1:6223\""));
        assert!(text.contains("credentials: \"/tmp/a \\\"b\\\".creds\""));
        assert!(text.contains("max_payload: 2000000"));
        assert!(text.contains("\ntls { cert_file: \"/c.pem\", key_file: \"/k.pem\" }\n"), "{text}");
        assert!(text
            .contains("  tls { cert_file: \"/lc.pem\", key_file: \"/lk.pem\", ca_file: \"/ca.pem\", verify: true }"));
        assert!(text.contains(", tls { ca_file: \"/ca.pem\" } }"), "{text}");
        assert!(text.contains("  port: 7422\n  tls {") && text.contains("\n  no_advertise: true\n"), "{text}");
        assert!(text.ends_with("debug: false\n"));
    }
}
