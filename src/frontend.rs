//! Frontends: `[[frontend]]` tables in the TOML file, each a set of listen
//! addresses with its own certificates, backends, routes, ALPN, mutual TLS,
//! PROXY settings and `unknown-sni`.
//!
//! Without `[[frontend]]` tables the top-level keys (and the flags) are the
//! one frontend. With them, every top-level key a frontend can set is that
//! key's default for every table that does not set it (the certificate keys
//! `cert`, `key` and `cert-dirs` as one group: a table that sets any of
//! them takes none of the top-level ones); a top-level `listen` is an error.
//!
//! Sans-IO: validation only, nothing is read or bound here.

use std::net::SocketAddr;

use crate::config::{CertFiles, ConfigError, Settings};

pub use crate::config::FrontendSetting;

impl FrontendSetting {
    /// The settings this frontend runs with: `top`'s, with this table's
    /// keys over them.
    fn over(&self, top: &Settings) -> Settings {
        let mut s = top.clone();
        s.frontend = None;
        s.listen = self.listen.clone();
        if self.cert.is_some() || self.key.is_some() || self.cert_dirs.is_some() {
            s.cert = self.cert.clone();
            s.key = self.key.clone();
            s.cert_dirs = self.cert_dirs.clone();
        }
        self.set_over(&mut s);
        s
    }
}

/// One validated frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// Its name (`frontend N` when the table has none; `default` for the
    /// top-level one).
    pub name: String,
    /// Addresses to accept TLS on.
    pub listen: Vec<SocketAddr>,
    /// Default pool and per-SNI routes (host names unresolved).
    pub routes: crate::route::RouteTable<crate::route::BackendSpec>,
    /// Certificates, the default first.
    pub certs: Vec<CertFiles>,
    /// Folders of combined PEM files.
    pub cert_dirs: Vec<String>,
    /// TLS policy (ALPN, mutual TLS, unknown SNI, and the top-level rest).
    pub tls: crate::config::TlsSettingsValid,
    /// PROXY header sent to the backends.
    pub proxy_protocol: Option<crate::proxy::Version>,
    /// Expect a PROXY header before the ClientHello.
    pub accept_proxy: bool,
}

/// Validates the frontends of `settings`: its `[[frontend]]` tables, or
/// the top-level keys as the one frontend. `part` validates one
/// frontend's settings (the top-level rules).
pub(crate) fn validate(
    settings: &Settings,
    part: impl Fn(&Settings, String) -> Result<Frontend, ConfigError>,
) -> Result<Vec<Frontend>, ConfigError> {
    let Some(tables) = &settings.frontend else {
        return Ok(vec![part(settings, "default".to_owned())?]);
    };
    if let Some(listen) = &settings.listen {
        return Err(ConfigError::OutOfRange {
            flag: "--listen",
            value: listen.join(","),
            reason: "cannot be combined with [[frontend]] tables: each sets its own listen"
                .to_owned(),
        });
    }
    if tables.is_empty() {
        return Err(ConfigError::Missing("--listen or [[frontend]]"));
    }
    let mut out: Vec<Frontend> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let name = t
            .name
            .clone()
            .unwrap_or_else(|| format!("frontend {}", i + 1));
        let blame = |e: ConfigError| frontend_error(i, &name, e);
        if t.listen.as_ref().is_none_or(|l| l.is_empty()) {
            return Err(blame(ConfigError::Missing("--listen")));
        }
        if out.iter().any(|f| f.name == name) {
            return Err(ConfigError::Frontend {
                index: i + 1,
                name: name.clone(),
                key: "name".to_owned(),
                message: "is used by another frontend".to_owned(),
            });
        }
        let f = part(&t.over(settings), name.clone()).map_err(blame)?;
        // Port 0 (any free port) may repeat: each is its own listener.
        for addr in f.listen.iter().filter(|a| a.port() != 0) {
            if let Some(other) = out.iter().find(|o| o.listen.contains(addr)) {
                return Err(ConfigError::Frontend {
                    index: i + 1,
                    name: name.clone(),
                    key: "listen".to_owned(),
                    message: format!("{addr} is also frontend {:?}'s", other.name),
                });
            }
        }
        out.push(f);
    }
    Ok(out)
}

/// An error in frontend table `i` (0-based), naming the table and its key.
fn frontend_error(i: usize, name: &str, e: ConfigError) -> ConfigError {
    let text = e.to_string();
    let (key, message) = match e.flag().or(match &e {
        ConfigError::Missing(f) => Some(*f),
        _ => None,
    }) {
        Some(flag) => {
            let key = key_of(flag.split_whitespace().next().unwrap_or(flag));
            let message = match &e {
                ConfigError::Missing(_) => "is required".to_owned(),
                _ => text
                    .strip_prefix(flag)
                    .map(|r| r.trim_start_matches(':').trim_start().to_owned())
                    .unwrap_or(text.clone()),
            };
            (key, message)
        }
        None => (String::new(), text),
    };
    ConfigError::Frontend {
        index: i + 1,
        name: name.to_owned(),
        key,
        message,
    }
}

/// The TOML key of a flag (`--cert-dir` is `cert-dirs`).
pub fn key_of(flag: &str) -> String {
    match flag {
        "--cert/--key" => "cert".to_owned(),
        _ => Settings::key_of(flag),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, Settings};

    fn parse(text: &str) -> Result<crate::config::Config, ConfigError> {
        Settings::from_toml("/etc/ringterm/t.toml", text)?.validate(&[0, 1])
    }

    const TWO: &str = r#"
backend = "127.0.0.1:8080"
cert = "top.pem"
alpn = ["http/1.1"]

[[frontend]]
name = "web"
listen = ["127.0.0.1:8443"]

[[frontend]]
name = "api"
listen = ["127.0.0.1:9443", "127.0.0.1:9444"]
backend = ["127.0.0.1:9090", "127.0.0.1:9091"]
cert-dirs = ["api-certs"]
alpn = ["h2"]
client-ca = "ca.pem"
accept-proxy = true
proxy-protocol = "v2"
unknown-sni = "reject"
[[frontend.route]]
names = ["x.example"]
backends = ["127.0.0.1:7070"]
"#;

    #[test]
    fn tables_inherit_top_level_keys_and_set_their_own() {
        let c = parse(TWO).unwrap();
        assert_eq!(c.frontends.len(), 2);
        let (web, api) = (&c.frontends[0], &c.frontends[1]);
        assert_eq!(web.name, "web");
        assert_eq!(web.certs[0].cert, "/etc/ringterm/top.pem");
        assert_eq!(web.tls.alpn, ["http/1.1"]);
        assert!(!web.accept_proxy && web.proxy_protocol.is_none());
        assert_eq!(api.listen.len(), 2);
        assert!(
            api.certs.is_empty(),
            "a table with cert-dirs takes no top-level cert"
        );
        assert_eq!(api.cert_dirs, ["/etc/ringterm/api-certs"]);
        assert_eq!(api.tls.alpn, ["h2"]);
        assert_eq!(api.tls.client_ca.as_deref(), Some("/etc/ringterm/ca.pem"));
        assert!(api.tls.reject_unknown_sni && api.accept_proxy);
        assert_eq!(api.routes.default.len(), 2);
        assert_eq!(api.routes.routes[0].names, ["x.example"]);
        // The top-level view is the first frontend; listen is every address.
        assert_eq!(c.listen.len(), 3);
        assert_eq!(c.certs, web.certs);
    }

    /// The example file's frontend tables, uncommented, validate.
    #[test]
    fn the_example_file_frontends_validate() {
        let example = include_str!("../config/ringterm.toml");
        let mut text = String::new();
        let mut in_tables = false;
        for line in example.lines() {
            in_tables |= line == "# [[frontend]]";
            let line = match line.strip_prefix("# ") {
                Some(l) if in_tables => l.split(" #").next().unwrap_or(l),
                _ if line.starts_with("listen = ") => "",
                _ => line,
            };
            text.push_str(line);
            text.push('\n');
        }
        let c = Settings::from_toml("/etc/ringterm/ringterm.toml", &text)
            .unwrap()
            .validate(&[0])
            .unwrap();
        assert_eq!(c.frontends.len(), 2);
        assert_eq!(c.frontends[1].name, "partners");
        assert!(c.frontends[1].tls.client_ca.is_some());
        assert_eq!(c.frontends[1].routes.routes.len(), 1);
    }

    #[test]
    fn one_frontend_without_tables() {
        let c = parse("listen = [\"127.0.0.1:1\"]\nbackend = \"127.0.0.1:2\"\ncert = \"c.pem\"\n")
            .unwrap();
        assert_eq!(c.frontends.len(), 1);
        assert_eq!(c.frontends[0].name, "default");
        assert_eq!(c.frontends[0].listen, c.listen);
    }

    #[test]
    fn bad_tables_name_the_frontend_and_key() {
        let top = "backend = \"127.0.0.1:2\"\ncert = \"c.pem\"\n";
        let err = |t: &str| parse(&format!("{top}{t}")).unwrap_err().to_string();
        let e = err("[[frontend]]\nname = \"api\"\nlisten = [\"nope\"]\n");
        assert!(
            e.starts_with("[[frontend]] #1 (api): listen: invalid address"),
            "{e}"
        );
        let e = err("[[frontend]]\nlisten = [\"127.0.0.1:1\"]\nalpn = [\"\"]\n");
        assert!(e.starts_with("[[frontend]] #1 (frontend 1): alpn:"), "{e}");
        let e = err("[[frontend]]\nbackend = \"127.0.0.1:3\"\n");
        assert!(e.contains("listen: is required"), "{e}");
        let e = err(
            "[[frontend]]\nlisten = [\"127.0.0.1:1\"]\n[[frontend]]\nlisten = [\"127.0.0.1:1\"]\n",
        );
        assert!(
            e.starts_with("[[frontend]] #2 (frontend 2): listen: 127.0.0.1:1 is also"),
            "{e}"
        );
        let e = err("[[frontend]]\nlisten = [\"127.0.0.1:1\"]\nproxy-protocol = \"v3\"\n");
        assert!(
            e.contains("proxy-protocol: v3 must be off, v1 or v2"),
            "{e}"
        );
        // Unknown keys: the parser's line and column.
        let e = err("[[frontend]]\nlisten = [\"127.0.0.1:1\"]\nworkers = 3\n");
        assert!(
            e.starts_with("/etc/ringterm/t.toml:5:1: unknown field `workers`"),
            "{e}"
        );
        // A top-level listen with tables.
        let e = err("listen = [\"127.0.0.1:1\"]\n[[frontend]]\nlisten = [\"127.0.0.1:2\"]\n");
        assert!(e.contains("cannot be combined with [[frontend]]"), "{e}");
    }
}
