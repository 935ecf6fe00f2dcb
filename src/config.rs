//! Configuration: plain structs with documented defaults, a TOML file
//! format, CLI overrides, and `validate` into a [`Config`].
//!
//! Sans-IO: nothing here reads a file or opens a socket. The caller passes the
//! TOML text and the list of CPUs the process may run on. Addresses are plain
//! values (`core::net::SocketAddr`), parsed, never bound.

#![forbid(unsafe_code)]

use core::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Default ring size (submission queue entries) per worker.
pub const DEFAULT_RING_ENTRIES: u32 = 1024;
/// Default number of provided read buffers per worker.
pub const DEFAULT_READ_BUFFERS: u32 = 64;
/// Default bound of a coalesced completion wait, µs (`--coalesce-usec`).
pub const DEFAULT_COALESCE_USEC: u32 = 50;
/// Default listen backlog. The kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default size of each direction's relay buffer, in bytes.
/// (64 KiB: four TLS records a read. On the io_uring driver a bulk
/// transfer with 16 KiB reads cost 1.10 s of server CPU per GB and with
/// 64 KiB 0.60, the per-operation kernel work being most of it; the
/// read-buffer ring is 64 x 64 KiB = 4 MiB per worker, touched as used.)
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default handshake timeout, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default backend connect timeout, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Whether the server's cipher suite order wins by default
/// (`--prefer-server-ciphers`): on, so that clients that list AES-256-GCM
/// first (OpenSSL, rustls) get AES-128-GCM and its cheaper SHA-256 key
/// schedule. See README "Cipher suite order".
pub const DEFAULT_PREFER_SERVER_CIPHERS: bool = true;

/// Default session lifetime, in seconds (nginx's `ssl_session_timeout`).
pub const DEFAULT_SESSION_TIMEOUT_S: u64 = 300;
/// Default session cache entries per worker.
pub const DEFAULT_SESSION_CACHE_SIZE: usize = 20_000;
/// Default cross-core session sync interval, in milliseconds.
pub const DEFAULT_SESSION_SYNC_INTERVAL_MS: u64 = 100;
/// Default ticket key rotation period, in seconds.
pub const DEFAULT_TICKET_ROTATION_S: u64 = 3600;
/// Default number of TLS 1.3 tickets sent after a full handshake.
pub const DEFAULT_TLS13_TICKETS: usize = 1;
/// Default idle timeout of an established connection, in milliseconds
/// (HAProxy's `timeout client`); 0 turns it off.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default time established connections get to finish after SIGTERM or
/// SIGINT, in milliseconds.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Default period of the OCSP re-check (re-read the response files,
/// re-validate, restaple), in seconds.
pub const DEFAULT_OCSP_REFRESH_S: u64 = 3600;

/// How sessions are resumed (`--resumption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// The per-core session cache (TLS 1.2 session IDs, TLS 1.3 stateful
    /// tickets), synced across cores.
    Cache,
    /// Stateless tickets (TLS 1.2 and 1.3) only.
    Tickets,
    /// Both: tickets for clients that take them, the cache for the others.
    Both,
    /// No resumption.
    Off,
}

impl Resumption {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cache" => Ok(Self::Cache),
            "tickets" => Ok(Self::Tickets),
            "both" => Ok(Self::Both),
            "off" => Ok(Self::Off),
            other => Err(range(
                "--resumption",
                other,
                "must be one of cache, tickets, both, off",
            )),
        }
    }

    /// Whether the session cache is used.
    pub fn uses_cache(self) -> bool {
        matches!(self, Self::Cache | Self::Both)
    }

    /// Whether stateless tickets are used.
    pub fn uses_tickets(self) -> bool {
        matches!(self, Self::Tickets | Self::Both)
    }
}

crate::settings! {
    /// Everything that can be set, from the TOML file or from flags: each
    /// option declared once (see [`crate::options`]). Every field is
    /// optional: a flag overrides the file, and `validate` fills defaults.
    #[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Settings {
        /// Address to accept TLS on (repeatable).
        #[arg(value_name = "ADDR")]
        listen: Vec<String> => "listen", live + frontend;
        /// Plaintext backend address (repeatable: round-robin, a backend that
        /// fails to connect is skipped for --backend-eject ms).
        #[arg(value_name = "ADDR")]
        #[serde(default, deserialize_with = "one_or_many")]
        backend: Vec<String> => "backend", live + frontend;
        /// Per-SNI backends: NAME[,NAME...]=ADDR[,ADDR...] (repeatable; names
        /// may be *.wildcards). Other connections go to --backend.
        #[arg(value_name = "ROUTE", value_parser = RouteSetting::parse_flag)]
        route: Vec<RouteSetting> => "route", live + frontend;
        /// How long a backend that failed to connect is skipped, ms.
        #[arg(value_name = "MS")]
        backend_eject: u64 => "backend-eject", live,
            default DEFAULT_BACKEND_EJECT_MS;
        /// PEM certificate chain (repeatable: one per certificate, chosen by SNI;
        /// the first is the default).
        #[arg(value_name = "PEM")]
        #[serde(default, deserialize_with = "one_or_many")]
        cert: Vec<CertEntry> => "cert", live + path + frontend;
        /// PEM private key (repeatable, paired with --cert by position;
        /// without it, each --cert file holds its key too).
        #[arg(value_name = "PEM")]
        #[serde(default, deserialize_with = "one_or_many")]
        key: Vec<String> => "key", live + path + frontend;
        /// Folder of combined PEM files (key + chain, names from the SANs),
        /// repeatable.
        #[arg(value_name = "DIR")]
        cert_dirs: Vec<String> => "cert-dir", live + path + frontend;
        /// Folder of DER OCSP responses to staple: CERTFILE.ocsp for each
        /// certificate file (re-read on SIGHUP and every --ocsp-refresh s).
        #[arg(value_name = "DIR")]
        ocsp_dir: String => "ocsp-dir", live + path;
        /// OCSP re-check period, seconds.
        #[arg(value_name = "SECS")]
        ocsp_refresh: u64 => "ocsp-refresh", live,
            default DEFAULT_OCSP_REFRESH_S,
            check |v| (1..=86_400).contains(v) => "must be from 1 to 86400 seconds";
        /// Fetch OCSP responses from each certificate's responder (its AIA
        /// OCSP URL), on a thread of its own, refreshed before nextUpdate.
        #[arg(num_args = 0, default_missing_value = "true")]
        ocsp_fetch: bool => "ocsp-fetch", restart,
            default false;
        /// Number of workers (default: one per CPU this process may run on).
        #[arg(value_name = "N")]
        workers: usize => "workers", restart,
            check |v| (1..=4096).contains(v) => "must be from 1 to 4096";
        /// CPUs to pin workers to, e.g. `0-3,8`.
        #[arg(value_name = "LIST")]
        cpus: String => "cpus", restart;
        /// io_uring submission queue entries per worker (power of two).
        #[arg(value_name = "N")]
        ring_entries: u32 => "ring-entries", restart,
            default DEFAULT_RING_ENTRIES,
            check |v| (8..=32768).contains(v) && v.is_power_of_two()
                => "must be a power of two from 8 to 32768";
        /// Provided read buffers per worker (power of two), each --buffer-size
        /// bytes: reads take one when data arrives and give it back at once.
        #[arg(value_name = "N")]
        read_buffers: u32 => "read-buffers", restart,
            default DEFAULT_READ_BUFFERS,
            check |v| (1..=32768).contains(v) && v.is_power_of_two()
                => "must be a power of two from 1 to 32768";
        /// Completion coalescing under load, µs (0: off): while the worker's
        /// wake-ups find several completions each, its next wait asks for
        /// about as many, for at most this long (Linux 6.12+, not with --sqpoll).
        #[arg(value_name = "USEC")]
        coalesce_usec: u32 => "coalesce-usec", restart,
            default DEFAULT_COALESCE_USEC,
            check |v| *v <= 10_000 => "must be at most 10000 µs";
        /// Enable SQPOLL, with the kernel thread's idle time in ms (default 1000).
        #[arg(value_name = "IDLE_MS", num_args = 0..=1, default_missing_value = "1000")]
        sqpoll: u32 => "sqpoll", restart;
        /// Listen backlog (capped by net.core.somaxconn).
        #[arg(value_name = "N")]
        backlog: u32 => "backlog", restart,
            default DEFAULT_BACKLOG,
            check |v| (1..=1 << 20).contains(v) => "must be 1..=1048576";
        /// Relay buffer size per direction, bytes.
        #[arg(value_name = "BYTES")]
        buffer_size: usize => "buffer-size", restart,
            default DEFAULT_BUFFER_SIZE,
            check |v| (1024..=16 << 20).contains(v) => "must be from 1024 to 16777216 bytes";
        /// Admin/metrics listener (off by default; use loopback).
        #[arg(value_name = "ADDR")]
        admin: String => "admin", restart;
        /// Handshake timeout, ms.
        #[arg(value_name = "MS")]
        handshake_timeout: u64 => "handshake-timeout", live,
            default DEFAULT_HANDSHAKE_TIMEOUT_MS,
            check |v| *v > 0 => "must be at least 1 ms";
        /// Backend connect timeout, ms.
        #[arg(value_name = "MS")]
        connect_timeout: u64 => "connect-timeout", live,
            default DEFAULT_CONNECT_TIMEOUT_MS,
            check |v| *v > 0 => "must be at least 1 ms";
        /// Refuse TLS 1.2 (TLS 1.3 only). In TOML: `tls12 = false`.
        #[arg(num_args = 0, default_missing_value = "false")]
        tls12: bool => "no-tls12", live;
        /// Log level: error, warn, info, debug, trace, off.
        #[arg(value_name = "LEVEL")]
        log_level: String => "log-level", live,
            default "info",
            check |v| ["error", "warn", "info", "debug", "trace", "off"].contains(&v.as_str())
                => "must be one of error, warn, info, debug, trace, off";
        /// Log line format: text or json (one object a line).
        #[arg(value_name = "FORMAT")]
        log_format: String => "log-format", restart,
            default "text",
            check |v| ["text", "json"].contains(&v.as_str()) => "must be text or json";
        /// UNIX socket for zero-downtime upgrades: a new process started with
        /// the same socket takes the listening sockets over, and this one drains.
        #[arg(value_name = "PATH")]
        upgrade_socket: String => "upgrade-socket", restart;
        /// Session resumption: cache, tickets, both or off.
        #[arg(value_name = "MODE")]
        resumption: String => "resumption", restart,
            default "cache",
            check |v| ["cache", "tickets", "both", "off"].contains(&v.as_str())
                => "must be one of cache, tickets, both, off";
        /// Session lifetime, seconds.
        #[arg(value_name = "SECS")]
        session_timeout: u64 => "session-timeout", restart,
            default DEFAULT_SESSION_TIMEOUT_S,
            check |v| (1..=86_400 * 7).contains(v) => "must be from 1 to 604800 seconds";
        /// Session cache entries per worker.
        #[arg(value_name = "N")]
        session_cache_size: usize => "session-cache-size", restart,
            default DEFAULT_SESSION_CACHE_SIZE,
            check |v| *v <= 10_000_000 => "must be at most 10000000 entries per worker";
        /// Cross-core session sync interval, ms.
        #[arg(value_name = "MS")]
        session_sync_interval: u64 => "session-sync-interval", restart,
            default DEFAULT_SESSION_SYNC_INTERVAL_MS,
            check |v| (1..=60_000).contains(v) => "must be from 1 to 60000 ms";
        /// L2 session store shared by a fleet: redis://HOST:PORT[/DB] or
        /// unix:///path (Redis or Valkey; keep it on a private network).
        #[arg(value_name = "URL")]
        session_store: String => "session-store", restart;
        /// Prefix of the session store's keys.
        #[arg(value_name = "PREFIX")]
        session_store_prefix: String => "session-store-prefix", restart,
            default DEFAULT_STORE_PREFIX,
            check |v| v.len() <= 256 && !v.chars().any(|c| c.is_control() || c == ' ')
                => "must be at most 256 characters, without spaces or control characters";
        /// File holding the session store's AUTH password.
        #[arg(value_name = "FILE")]
        session_store_password_file: String => "session-store-password-file", restart + path;
        /// Session store connect timeout, ms.
        #[arg(value_name = "MS")]
        session_store_connect_timeout: u64 => "session-store-connect-timeout", restart,
            default DEFAULT_STORE_CONNECT_TIMEOUT_MS,
            check |v| (1..=60_000).contains(v) => "must be from 1 to 60000 ms";
        /// How long a handshake waits for a session store lookup, ms.
        #[arg(value_name = "MS")]
        session_store_timeout: u64 => "session-store-timeout", restart,
            default DEFAULT_STORE_TIMEOUT_MS,
            check |v| (1..=10_000).contains(v) => "must be from 1 to 10000 ms";
        /// Ticket key rotation period, seconds (random keys only).
        #[arg(value_name = "SECS")]
        ticket_rotation: u64 => "ticket-rotation", restart,
            default DEFAULT_TICKET_ROTATION_S,
            check |v| *v > 0 => "must be at least 1 second";
        /// Ticket key file, 80 bytes (repeatable; the first encrypts). Re-read on SIGHUP.
        #[arg(value_name = "FILE")]
        ticket_key_file: Vec<String> => "ticket-key-file", restart + path;
        /// TLS 1.3 tickets sent after a full handshake.
        #[arg(value_name = "N")]
        tls13_tickets: usize => "tls13-tickets", restart,
            default DEFAULT_TLS13_TICKETS,
            check |v| *v <= 8 => "must be from 0 to 8";
        /// Lowest TLS version: 1.2 or 1.3.
        #[arg(value_name = "VERSION")]
        min_tls: String => "min-tls", live;
        /// Highest TLS version: 1.2 or 1.3.
        #[arg(value_name = "VERSION")]
        max_tls: String => "max-tls", live;
        /// Cipher suites by rustls name, comma-separated, in preference order.
        #[arg(value_name = "LIST", value_delimiter = ',')]
        ciphers: Vec<String> => "ciphers", live;
        /// Key exchange groups, comma-separated (default
        /// X25519MLKEM768,X25519,secp256r1,secp384r1).
        #[arg(value_name = "LIST", value_delimiter = ',')]
        groups: Vec<String> => "groups", live;
        /// Pick the cipher suite in the server's order (AES-128-GCM first), not
        /// the client's: on or off (a bare flag means on).
        #[arg(value_name = "on|off", num_args = 0..=1, require_equals = true,
              default_missing_value = "on", value_parser = clap::builder::BoolishValueParser::new())]
        prefer_server_ciphers: bool => "prefer-server-ciphers", live,
            default DEFAULT_PREFER_SERVER_CIPHERS;
        /// ALPN protocols, comma-separated, e.g. h2,http/1.1.
        #[arg(value_name = "LIST", value_delimiter = ',')]
        alpn: Vec<String> => "alpn", live + frontend;
        /// CA certificates (PEM) for client certificates: turns on mutual TLS.
        #[arg(value_name = "PEM")]
        client_ca: String => "client-ca", live + path + frontend;
        /// With --client-ca: required (default) or optional.
        #[arg(value_name = "MODE")]
        client_auth: String => "client-auth", live + frontend;
        /// Unknown or missing SNI: default (serve the first certificate) or
        /// reject (unrecognized_name alert).
        #[arg(value_name = "MODE")]
        unknown_sni: String => "unknown-sni", live + frontend;
        /// Record layer after the handshake: own (ringterm's, default) or
        /// rustls (A/B comparison, fallback).
        #[arg(value_name = "LAYER")]
        record_layer: String => "record-layer", live;
        /// Close established connections idle this long, ms (0 = off).
        #[arg(value_name = "MS")]
        idle_timeout: u64 => "idle-timeout", live,
            default DEFAULT_IDLE_TIMEOUT_MS,
            check |v| *v <= 86_400_000 => "must be from 0 (off) to 86400000 ms";
        /// Connections per worker above which new ones are closed at once (0 = unlimited).
        #[arg(value_name = "N")]
        max_connections: u64 => "max-connections", live,
            default 0u64,
            check |v| *v <= 10_000_000 => "must be from 0 (unlimited) to 10000000 per worker";
        /// On SIGTERM/SIGINT, how long open connections may finish, ms.
        #[arg(value_name = "MS")]
        drain_timeout: u64 => "drain-timeout", live,
            default DEFAULT_DRAIN_TIMEOUT_MS,
            check |v| *v <= 3_600_000 => "must be from 0 to 3600000 ms";
        /// Switch to this user after binding (needs root).
        #[arg(value_name = "NAME")]
        user: String => "user", restart;
        /// Switch to this group after binding (default: the user's primary group).
        #[arg(value_name = "NAME")]
        group: String => "group", restart;
        /// Send a PROXY protocol header to the backend: off, v1 or v2 (v2
        /// carries ALPN, SNI and TLS facts as TLVs).
        #[arg(value_name = "VERSION")]
        proxy_protocol: String => "proxy-protocol", live + frontend;
        /// Expect a PROXY protocol v1/v2 header from a fronting L4 balancer.
        #[arg(num_args = 0, default_missing_value = "true")]
        accept_proxy: bool => "accept-proxy", live + frontend,
            default false;
        /// Access log, one line per connection: stderr, a file (reopened on
        /// SIGHUP and SIGUSR1, for logrotate) or off (default).
        #[arg(value_name = "stderr|FILE|off")]
        access_log: String => "access-log", restart;
        /// Access log line format: json or text (key=value).
        #[arg(value_name = "FORMAT")]
        access_log_format: String => "access-log-format", restart,
            default "json",
            check |v| ["json", "text"].contains(&v.as_str()) => "must be json or text";
        /// Active backend health checks: a TCP (or UNIX) connect to every
        /// backend each MS; down after 3 failures, up after 2 successes.
        /// 0 = off.
        #[arg(value_name = "MS")]
        health_check_interval: u64 => "health-check-interval", restart,
            default 0u64,
            check |v| *v <= 3_600_000 => "must be at most 3600000 ms (0 = off)";
        /// `[[frontend]]` tables (TOML only): listeners with their own
        /// certificates, backends and TLS settings (see [`crate::frontend`]).
        #[arg(skip)]
        frontend: Vec<FrontendSetting>, live + path;
        /// ACME: `[acme]`/`[[acme]]` tables, or the `--acme-*` flags (see
        /// [`crate::acme`]).
        #[arg(skip)]
        acme: crate::acme::AcmeSetting, restart + path;
    }
    extra {
        /// The `--acme-*` flags; [`Layered::new`] turns them into `acme`.
        #[command(flatten)]
        #[serde(skip)]
        acme_flags: crate::acme::AcmeArgs;
    }
}

/// `key = "x"` or `key = ["x", "y"]` (and `[[cert]]` tables for `cert`):
/// one value or a list, as a list.
pub(crate) fn one_or_many<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(
        match Option::<OneOrMany<T>>::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a value or a list of values"))?
        {
            None => None,
            Some(OneOrMany::One(t)) => Some(vec![t]),
            Some(OneOrMany::Many(v)) => Some(v),
        },
    )
}
/// One `[[route]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteSetting {
    /// SNI names (exact or `*.example.com`).
    pub names: Vec<String>,
    /// Backend addresses, round-robin.
    pub backends: Vec<String>,
}

impl RouteSetting {
    /// Parses `--route NAME[,NAME...]=ADDR[,ADDR...]` (clap names the flag
    /// and the value in the error).
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let (names, backends) = s
            .split_once('=')
            .ok_or_else(|| "must be NAME[,NAME...]=ADDR[,ADDR...]".to_owned())?;
        let split = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(Self {
            names: split(names),
            backends: split(backends),
        })
    }
}

/// Default time a backend that failed to connect stays out, ms.
pub const DEFAULT_BACKEND_EJECT_MS: u64 = 10_000;

/// One `cert` entry: a file (`--cert c.pem`, `cert = "c.pem"`, paired
/// with `key`) or a `[[cert]]` table (its own key, OCSP file and names).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CertEntry {
    /// A certificate file, paired with `key` by position (or holding its
    /// key).
    File(String),
    /// A `[[cert]]` table.
    Table(CertTable),
}

impl From<&str> for CertEntry {
    fn from(f: &str) -> Self {
        Self::File(f.to_owned())
    }
}

impl crate::options::Paths for CertEntry {
    fn each_path(&mut self, f: &mut dyn FnMut(&mut String)) {
        match self {
            Self::File(file) => f(file),
            Self::Table(t) => {
                f(&mut t.cert);
                t.key.each_path(f);
                t.ocsp.each_path(f);
            }
        }
    }
}

impl std::str::FromStr for CertEntry {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::File(s.to_owned()))
    }
}

/// One `[[cert]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertTable {
    /// PEM certificate chain (leaf first).
    pub cert: String,
    /// PEM private key (default: the key in the `cert` file).
    #[serde(default)]
    pub key: Option<String>,
    /// DER OCSP response to staple (default: `<cert file name>.ocsp` in
    /// `ocsp-dir`, if set).
    #[serde(default)]
    pub ocsp: Option<String>,
    /// SNI names to serve it for (default: its subjectAltName DNS names);
    /// `*.example.com` wildcards allowed.
    #[serde(default)]
    pub names: Vec<String>,
}

impl Settings {
    /// Parses the TOML config file's text. `file` names it in errors
    /// (with the line and column), and relative paths in it are taken
    /// relative to `file`'s folder.
    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let settings: Settings = toml::from_str(text).map_err(|e| {
            let (line, col) = match e.span() {
                Some(span) => line_col(text, span.start),
                None => (1, 1),
            };
            ConfigError::Toml {
                file: file.to_owned(),
                line,
                col,
                // One line: the parser's message can span several.
                message: e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        let dir = std::path::Path::new(file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty());
        Ok(match dir {
            Some(dir) => settings.relative_to(dir),
            None => settings,
        })
    }

    /// Makes every relative file or folder path (the options declared
    /// `path`) absolute against `dir` (the config file's folder). Pure
    /// path joining: nothing is read.
    pub fn relative_to(mut self, dir: &std::path::Path) -> Self {
        self.each_path(&mut |p: &mut String| {
            if !p.is_empty() && std::path::Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).display().to_string();
            }
        });
        self
    }

    /// The TOML key of a flag (`--cert-dir` is `cert-dirs`, `--no-tls12`
    /// is `tls12`), from the declarations; a name that is no flag comes
    /// back without its dashes.
    pub fn key_of(flag: &str) -> String {
        match Self::OPTIONS.iter().find(|o| o.flag == flag) {
            Some(o) => o.key(),
            None => flag.trim_start_matches("--").to_owned(),
        }
    }

    /// The TOML keys this layer sets.
    fn keys_set(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Parses the TOML config file's raw bytes, as `--config` reads them:
    /// they must be UTF-8, then [`Settings::from_toml`]. `file` names it in
    /// errors.
    pub fn from_toml_bytes(file: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 {
            file: file.to_owned(),
        })?;
        Self::from_toml(file, text)
    }

    /// Applies `over` on top of `self`: every option set in `over` wins
    /// (generic, from the declarations), and the ACME tables merge
    /// ([`crate::acme::merge`]: flag names replace the file's certificates,
    /// each account setting a flag sets replaces the file's).
    pub fn merge(self, over: Settings) -> Settings {
        let acme = crate::acme::merge(self.acme.clone(), over.acme.clone());
        Settings {
            acme,
            ..self.merge_options(over)
        }
    }

    /// One frontend's part of the settings: listen addresses, backends,
    /// routes, certificates, TLS policy and PROXY settings.
    fn frontend_part(&self, name: String) -> Result<crate::frontend::Frontend, ConfigError> {
        let listen_raw = self.listen.clone().unwrap_or_default();
        if listen_raw.is_empty() {
            return Err(ConfigError::Missing("--listen"));
        }
        let listen = listen_raw
            .iter()
            .map(|s| parse_addr("--listen", s))
            .collect::<Result<Vec<_>, _>>()?;
        let backends = self
            .backend
            .clone()
            .ok_or(ConfigError::Missing("--backend"))?
            .iter()
            .map(|s| parse_backend("--backend", s))
            .collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            return Err(ConfigError::Missing("--backend"));
        }
        let mut routes = Vec::new();
        for r in self.route.clone().unwrap_or_default() {
            if r.names.is_empty() || r.backends.is_empty() {
                return Err(range(
                    "--route",
                    &r.names.join(","),
                    "needs at least one name and one backend",
                ));
            }
            routes.push(crate::route::Route {
                names: r.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                backends: r
                    .backends
                    .iter()
                    .map(|s| parse_backend("--route", s))
                    .collect::<Result<_, _>>()?,
            });
        }
        let routes = crate::route::RouteTable {
            routes,
            default: backends,
            eject_ms: self.backend_eject(),
        };
        let cert_dirs = self.cert_dirs.clone().unwrap_or_default();
        if let Some(bad) = cert_dirs.iter().find(|d| d.trim().is_empty()) {
            return Err(range("--cert-dir", bad, "must be a folder"));
        }
        let certs = certs(
            self.cert.clone(),
            self.key.clone(),
            !cert_dirs.is_empty() || self.acme.is_some(),
        )?;
        let tls = tls_policy(self)?;
        let proxy_protocol = match self.proxy_protocol.as_deref() {
            None | Some("off") => None,
            Some("v1") => Some(crate::proxy::Version::V1),
            Some("v2") => Some(crate::proxy::Version::V2),
            Some(other) => return Err(range("--proxy-protocol", other, "must be off, v1 or v2")),
        };
        Ok(crate::frontend::Frontend {
            name,
            listen,
            routes,
            certs,
            cert_dirs,
            tls,
            proxy_protocol,
            accept_proxy: self.accept_proxy(),
        })
    }

    /// Checks every value and fills defaults. `allowed_cpus` is the set of
    /// CPUs this process may run on, as the runtime found it.
    pub fn validate(self, allowed_cpus: &[usize]) -> Result<Config, ConfigError> {
        let settings = self.clone();
        let acme = crate::acme::validate(self.acme.clone())?;
        let frontends = crate::frontend::validate(&self, |s, name| s.frontend_part(name))?;
        self.check_values()?;
        let first = frontends[0].clone();
        let listen = frontends.iter().flat_map(|f| f.listen.clone()).collect();
        let backend = first
            .routes
            .default
            .first()
            .cloned()
            .ok_or(ConfigError::Missing("--backend"))?;
        let crate::frontend::Frontend {
            routes,
            certs,
            cert_dirs,
            tls,
            proxy_protocol,
            accept_proxy,
            ..
        } = first;
        let admin = self
            .admin
            .as_deref()
            .map(|s| parse_addr("--admin", s))
            .transpose()?;

        let cpus = match self.cpus.as_deref() {
            Some(list) => {
                let cpus = parse_cpu_list(list)?;
                if let Some(&cpu) = cpus.iter().find(|c| !allowed_cpus.contains(c)) {
                    return Err(ConfigError::CpuNotAllowed(cpu));
                }
                cpus
            }
            None => allowed_cpus.to_vec(),
        };
        if cpus.is_empty() {
            return Err(ConfigError::NoCpus);
        }
        let workers = self.workers.unwrap_or(cpus.len());
        // Worker i is pinned to cpus[i % cpus.len()]: more workers than CPUs
        // share CPUs round-robin, fewer use the first ones.
        let pins = (0..workers).map(|i| cpus[i % cpus.len()]).collect();

        let resumption = Resumption::parse(&self.resumption())?;
        let session_store = validate_store(&self, &resumption)?;
        let ticket_key_files = self.ticket_key_file.clone().unwrap_or_default();
        if !ticket_key_files.is_empty() && !resumption.uses_tickets() {
            return Err(range(
                "--ticket-key-file",
                &ticket_key_files[0],
                "needs --resumption tickets or both",
            ));
        }
        for (flag, name) in [("--user", &self.user), ("--group", &self.group)] {
            if let Some(name) = name {
                if name.trim().is_empty() || name.contains('\0') {
                    return Err(range(
                        flag,
                        &format!("{name:?}"),
                        "must be a user or group name",
                    ));
                }
            }
        }
        let access_log = match self.access_log.as_deref().map(str::trim) {
            None | Some("off") => None,
            Some("") => return Err(range("--access-log", "", "must be stderr, a file or off")),
            Some(v) => Some(v.to_owned()),
        };
        let access_log_json = self.access_log_format() == "json";
        Ok(Config {
            settings,
            acme,
            access_log,
            access_log_json,
            proxy_protocol,
            accept_proxy,
            frontends,
            resumption,
            session_store,
            ticket_key_files,
            listen,
            backend,
            routes,
            certs,
            cert_dirs,
            tls,
            pins,
            admin,
            ocsp_dir: self.ocsp_dir,
            user: self.user,
            group: self.group,
        })
    }
}

/// The 1-based line and column of each top-level key's value in the
/// TOML `text` (of a table's key, for `[table]` and `[[table]]`), for
/// error lines that name them ([`Layered::with_positions`]). Empty when
/// the text does not parse.
pub fn toml_positions(text: &str) -> Vec<(String, usize, usize)> {
    type Spanned<T> = toml::Spanned<T>;
    let Ok(map) =
        toml::from_str::<std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>>>(text)
    else {
        return Vec::new();
    };
    let mut out: Vec<(String, usize, usize)> = map
        .iter()
        .map(|(k, v)| {
            let at = if v.get_ref().is_table() || is_array_of_tables(v.get_ref()) {
                k.span().start
            } else {
                v.span().start
            };
            let (line, col) = line_col(text, at);
            (k.get_ref().clone(), line, col)
        })
        .collect();
    // The keys of each `[[frontend]]` table: `frontend.N.key` (1-based).
    #[derive(Deserialize)]
    struct Frontends {
        #[serde(default)]
        frontend: Vec<std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    }
    if let Ok(f) = toml::from_str::<Frontends>(text) {
        for (i, table) in f.frontend.iter().enumerate() {
            for (k, v) in table {
                let (line, col) = line_col(text, v.span().start);
                out.push((format!("frontend.{}.{}", i + 1, k.get_ref()), line, col));
            }
        }
    }
    out
}

fn is_array_of_tables(v: &toml::Value) -> bool {
    v.as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(toml::Value::is_table))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// The config file's settings with the flags on top, and which keys the
/// file set (and the flags did not), so that an error names the file and
/// the key instead of the flag.
#[derive(Debug, Clone, Default)]
pub struct Layered {
    /// The merged settings.
    pub settings: Settings,
    /// The config file, if any.
    pub file: Option<String>,
    from_file: Vec<String>,
    /// Where each key's value is in the file ([`toml_positions`]).
    positions: Vec<(String, usize, usize)>,
}

impl Layered {
    /// Merges `flags` over `file` (its name and settings).
    pub fn new(file: Option<(String, Settings)>, mut flags: Settings) -> Self {
        if flags.acme.is_none() {
            flags.acme = flags.acme_flags.settings();
        }
        let flag_keys = flags.keys_set();
        match file {
            Some((name, settings)) => {
                let from_file = settings
                    .keys_set()
                    .into_iter()
                    .filter(|k| !flag_keys.contains(k))
                    .collect();
                Self {
                    settings: settings.merge(flags),
                    file: Some(name),
                    from_file,
                    positions: Vec::new(),
                }
            }
            None => Self {
                settings: flags,
                file: None,
                from_file: Vec::new(),
                positions: Vec::new(),
            },
        }
    }

    /// The file's text, so that errors about a value it set name the
    /// line and column too (`FILE:LINE:COL: key: ...`).
    pub fn with_positions(mut self, text: &str) -> Self {
        self.positions = toml_positions(text);
        self
    }

    /// Where `flag`'s value was set, when the config file set it:
    /// `FILE:LINE:COL: key` (`FILE: key` when its place is unknown).
    pub fn place_of(&self, flag: &str) -> Option<String> {
        let (file, key) = self.source_of(flag)?;
        Some(match self.positions.iter().find(|(k, ..)| k == key) {
            Some((_, line, col)) => format!("{file}:{line}:{col}: {key}"),
            None => format!("{file}: {key}"),
        })
    }

    /// Validates the merged settings; an error about a value the file set
    /// names the file and key ([`Layered::blame`]).
    pub fn validate(&self, allowed_cpus: &[usize]) -> Result<Config, String> {
        self.settings
            .clone()
            .validate(allowed_cpus)
            .map_err(|e| match e.flag() {
                Some(flag) => {
                    let text = e.to_string();
                    let rest = text
                        .strip_prefix(flag)
                        .map(|r| r.trim_start_matches(':').trim_start())
                        .unwrap_or(&text);
                    self.blame(flag, rest)
                }
                None => match (&e, &self.file) {
                    (ConfigError::Frontend { index, key, .. }, Some(file)) => {
                        let at = format!("frontend.{index}.{key}");
                        match self.positions.iter().find(|(k, ..)| *k == at) {
                            Some((_, line, col)) => format!("{file}:{line}:{col}: {e}"),
                            None => format!("{file}: {e}"),
                        }
                    }
                    _ => e.to_string(),
                },
            })
    }

    /// The config file and TOML key that set `flag`'s value, when the file
    /// set it and no flag overrode it. `ocsp` (a `[[cert]]` table key) is
    /// looked up as `cert`.
    pub fn source_of(&self, flag: &str) -> Option<(&str, &str)> {
        let key = match flag.trim_start_matches("--") {
            "ocsp" | "cert/--key" => "cert".to_owned(),
            k if k.starts_with("acme-") => "acme".to_owned(),
            _ => Settings::key_of(flag),
        };
        let file = self.file.as_deref()?;
        let key = self.from_file.iter().find(|k| **k == key)?;
        Some((file, key))
    }

    /// One error line about the setting of `flag`: `FILE:LINE:COL: key:
    /// message` when the config file set it, `--flag: message` otherwise.
    pub fn blame(&self, flag: &str, message: &str) -> String {
        match self.place_of(flag) {
            Some(place) => format!("{place}: {message}"),
            None => format!("{flag}: {message}"),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept TLS on; each worker binds each with SO_REUSEPORT.
    pub listen: Vec<SocketAddr>,
    /// The first default backend (for messages).
    pub backend: crate::route::BackendSpec,
    /// Every backend: the default pool and the per-SNI routes (host names
    /// unresolved: the runtime resolves them).
    pub routes: crate::route::RouteTable<crate::route::BackendSpec>,
    /// Certificates, the default first (then those of `cert_dirs`).
    pub certs: Vec<CertFiles>,
    /// Folders of combined PEM files, read in order, files sorted by name.
    pub cert_dirs: Vec<String>,
    /// Folder of OCSP responses (`<cert file name>.ocsp`).
    pub ocsp_dir: Option<String>,
    /// The TLS policy.
    pub tls: TlsSettingsValid,
    /// The CPU each worker is pinned to; its length is the worker count.
    pub pins: Vec<usize>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// How sessions are resumed.
    pub resumption: Resumption,
    /// The L2 session store, if any.
    pub session_store: Option<StoreSpec>,
    /// Ticket key files; empty means random keys, rotated.
    pub ticket_key_files: Vec<String>,
    /// User to switch to after binding.
    pub user: Option<String>,
    /// Group to switch to after binding.
    pub group: Option<String>,
    /// PROXY protocol header sent to the backend, if any.
    pub proxy_protocol: Option<crate::proxy::Version>,
    /// Access log target (`stderr` or a path); `None` = off.
    pub access_log: Option<String>,
    /// Access log lines in JSON (else text).
    pub access_log_json: bool,
    /// Expect a PROXY protocol header (v1 or v2) before the ClientHello.
    pub accept_proxy: bool,
    /// Every frontend (at least one). `listen` is all their addresses; the
    /// other frontend fields above are the first frontend's.
    pub frontends: Vec<crate::frontend::Frontend>,
    /// Certificates obtained and renewed with ACME, when on.
    pub acme: Option<crate::acme::AcmeConfig>,
    /// The settings this was validated from: a reload compares them by
    /// key ([`crate::reload_plan`]), and an option that needs no
    /// derived value is read from them where it is used, through its
    /// accessor (`config.settings.drain_timeout()`: the value or the
    /// default), not copied into a field here.
    pub settings: Settings,
}

impl Config {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.pins.len()
    }

    /// This configuration as frontend `i` sees it: its listen addresses,
    /// backends, certificates, TLS policy and PROXY settings in the
    /// top-level fields (what the certificate loader reads).
    pub fn for_frontend(&self, i: usize) -> Config {
        let mut c = self.clone();
        if let Some(f) = self.frontends.get(i) {
            c.listen = f.listen.clone();
            c.routes = f.routes.clone();
            if let Some(b) = f.routes.default.first() {
                c.backend = b.clone();
            }
            c.certs = f.certs.clone();
            c.cert_dirs = f.cert_dirs.clone();
            c.tls = f.tls.clone();
            c.proxy_protocol = f.proxy_protocol;
            c.accept_proxy = f.accept_proxy;
            c.frontends = vec![f.clone()];
        }
        c
    }
}

/// Configuration errors. Each names the flag or file at fault; `main` prints
/// the error on one line and exits with code 64 (EX_USAGE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// An address did not parse.
    #[error("{flag}: invalid address {value:?} (expected {})", expected_addr(flag))]
    InvalidAddr {
        /// The flag.
        flag: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A CPU list did not parse.
    #[error("--cpus: invalid CPU list {value:?}: {reason}")]
    InvalidCpuList {
        /// The rejected value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A CPU in `--cpus` is not one this process may run on.
    #[error("--cpus: CPU {0} is not available to this process")]
    CpuNotAllowed(usize),
    /// No CPU is available.
    #[error("--cpus: no CPU available")]
    NoCpus,
    /// A number is out of range.
    #[error("{flag}: {value} {reason}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted range.
        reason: String,
    },
    /// The config file is not UTF-8.
    #[error("--config {file}: not UTF-8")]
    NotUtf8 {
        /// The file.
        file: String,
    },
    /// An ACME setting is wrong (see [`crate::acme`]).
    #[error("{flag}: {message}")]
    Acme {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A `[[frontend]]` table's value (1-based index, name, TOML key).
    #[error("[[frontend]] #{index} ({name}): {key}: {message}")]
    Frontend {
        /// 1-based position of the table.
        index: usize,
        /// Its name.
        name: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The TOML file did not parse.
    #[error("{file}:{line}:{col}: {message}")]
    Toml {
        /// The file.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        col: usize,
        /// What the parser said.
        message: String,
    },
}

impl ConfigError {
    /// The flag the error is about, when it is about one flag's value.
    pub fn flag(&self) -> Option<&'static str> {
        match self {
            Self::InvalidAddr { flag, .. }
            | Self::OutOfRange { flag, .. }
            | Self::Acme { flag, .. } => Some(flag),
            Self::InvalidCpuList { .. } | Self::CpuNotAllowed(_) => Some("--cpus"),
            _ => None,
        }
    }
}

/// One certificate's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM chain file.
    pub cert: String,
    /// PEM key file; `None`: the key is in the `cert` file.
    pub key: Option<String>,
    /// SNI names (empty: the certificate's own).
    pub names: Vec<String>,
    /// DER OCSP response file set for this certificate (`ocsp = "..."`).
    pub ocsp: Option<String>,
}

/// The checked TLS policy settings. Names of suites and groups are checked
/// against the crypto provider when the TLS configuration is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettingsValid {
    /// Accept TLS 1.2.
    pub tls12: bool,
    /// Accept TLS 1.3.
    pub tls13: bool,
    /// Cipher suites (empty: defaults).
    pub ciphers: Vec<String>,
    /// Key exchange groups (empty: defaults).
    pub groups: Vec<String>,
    /// Pick the suite in the server's order (see
    /// [`DEFAULT_PREFER_SERVER_CIPHERS`]).
    pub prefer_server_ciphers: bool,
    /// ALPN protocols.
    pub alpn: Vec<String>,
    /// Client CA file (mTLS on).
    pub client_ca: Option<String>,
    /// Whether a client certificate is required (with `client_ca`).
    pub client_auth_required: bool,
    /// Refuse unknown or missing SNI instead of serving the default.
    pub reject_unknown_sni: bool,
    /// Which record layer carries established connections.
    pub record_layer: crate::record::RecordLayerKind,
}

fn certs(
    cert: Option<Vec<CertEntry>>,
    key: Option<Vec<String>>,
    have_dirs: bool,
) -> Result<Vec<CertFiles>, ConfigError> {
    let certs = match cert {
        Some(c) => c,
        None if have_dirs => {
            if key.is_some() {
                return Err(ConfigError::Missing("--cert (for --key)"));
            }
            return Ok(Vec::new());
        }
        None => return Err(ConfigError::Missing("--cert or --cert-dir")),
    };
    if certs.is_empty() {
        return Err(ConfigError::Missing("--cert"));
    }
    if certs.iter().any(|c| matches!(c, CertEntry::Table(_))) {
        if key.is_some() {
            return Err(range(
                "--key",
                "",
                "cannot be combined with [[cert]] tables (each table has its own key)",
            ));
        }
        return Ok(certs
            .into_iter()
            .map(|c| match c {
                CertEntry::Table(t) => CertFiles {
                    cert: t.cert,
                    key: t.key,
                    names: t.names,
                    ocsp: t.ocsp,
                },
                CertEntry::File(cert) => CertFiles {
                    cert,
                    key: None,
                    names: Vec::new(),
                    ocsp: None,
                },
            })
            .collect());
    }
    let files = certs.into_iter().map(|c| match c {
        CertEntry::File(f) => f,
        CertEntry::Table(t) => t.cert,
    });
    let Some(keys) = key else {
        // Combined PEM files: each holds its key.
        return Ok(files
            .map(|cert| CertFiles {
                cert,
                key: None,
                names: Vec::new(),
                ocsp: None,
            })
            .collect());
    };
    let files: Vec<String> = files.collect();
    if files.len() != keys.len() {
        return Err(range(
            "--key",
            &keys.len().to_string(),
            &format!(
                "keys given for {} certificates: give one --key per --cert",
                files.len()
            ),
        ));
    }
    Ok(files
        .into_iter()
        .zip(keys)
        .map(|(cert, key)| CertFiles {
            cert,
            key: Some(key),
            names: Vec::new(),
            ocsp: None,
        })
        .collect())
}

fn tls_version(flag: &'static str, v: &str) -> Result<u8, ConfigError> {
    match v {
        "1.2" => Ok(2),
        "1.3" => Ok(3),
        other => Err(range(flag, other, "must be 1.2 or 1.3")),
    }
}

fn tls_policy(t: &Settings) -> Result<TlsSettingsValid, ConfigError> {
    let min = match t.min_tls.as_deref() {
        Some(v) => tls_version("--min-tls", v)?,
        None if t.tls12 == Some(false) => 3,
        None => 2,
    };
    let max = match t.max_tls.as_deref() {
        Some(v) => tls_version("--max-tls", v)?,
        None => 3,
    };
    if min > max {
        return Err(range(
            "--min-tls",
            t.min_tls.as_deref().unwrap_or("1.3"),
            "is above --max-tls",
        ));
    }
    let list = |flag: &'static str, v: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
        let v = v.clone().unwrap_or_default();
        if let Some(bad) = v.iter().find(|s| s.trim().is_empty()) {
            return Err(range(flag, bad, "has an empty entry"));
        }
        Ok(v.into_iter().map(|s| s.trim().to_owned()).collect())
    };
    let alpn = list("--alpn", &t.alpn)?;
    if let Some(bad) = alpn.iter().find(|p| p.len() > 255) {
        return Err(range("--alpn", bad, "protocol names are at most 255 bytes"));
    }
    let client_auth_required = match t.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            return Err(range(
                "--client-auth",
                other,
                "must be required or optional",
            ))
        }
    };
    if t.client_auth.is_some() && t.client_ca.is_none() {
        return Err(ConfigError::Missing("--client-ca (for --client-auth)"));
    }
    let reject_unknown_sni = match t.unknown_sni.as_deref() {
        None | Some("default") => false,
        Some("reject") => true,
        Some(other) => return Err(range("--unknown-sni", other, "must be default or reject")),
    };
    let record_layer = match t.record_layer.as_deref() {
        None => crate::record::RecordLayerKind::default(),
        Some(v) => crate::record::RecordLayerKind::parse(v)
            .ok_or_else(|| range("--record-layer", v, "must be own or rustls"))?,
    };
    Ok(TlsSettingsValid {
        tls12: min <= 2,
        tls13: max >= 3,
        ciphers: list("--ciphers", &t.ciphers)?,
        groups: list("--groups", &t.groups)?,
        prefer_server_ciphers: t.prefer_server_ciphers(),
        alpn,
        client_ca: t.client_ca.clone(),
        client_auth_required,
        reject_unknown_sni,
        record_layer,
    })
}

/// Where the L2 session store listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAddr {
    /// `redis://HOST:PORT`: resolved at startup.
    Tcp(String, u16),
    /// `unix:///path`.
    Unix(String),
}

/// The L2 session store's settings (`--session-store*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// Where it is.
    pub addr: StoreAddr,
    /// `SELECT` database.
    pub db: u32,
    /// Key prefix.
    pub prefix: String,
    /// File with the AUTH password, read at startup.
    pub password_file: Option<String>,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Lookup timeout, ms.
    pub timeout_ms: u64,
}

/// Default `--session-store-timeout`, ms.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 5;
/// Default `--session-store-connect-timeout`, ms.
pub const DEFAULT_STORE_CONNECT_TIMEOUT_MS: u64 = 200;
/// Default `--session-store-prefix`.
pub const DEFAULT_STORE_PREFIX: &str = "ringterm:session:";

/// Parses `redis://HOST:PORT[/DB]` or `unix:///path[?db=N]`.
pub fn parse_store_url(url: &str) -> Result<(StoreAddr, u32), ConfigError> {
    let bad = |why: &str| range("--session-store", url, why);
    if let Some(rest) = url.strip_prefix("unix://") {
        let (path, db) = match rest.split_once("?db=") {
            Some((p, d)) => (p, d.parse().map_err(|_| bad("the db must be a number"))?),
            None => (rest, 0),
        };
        if !path.starts_with('/') {
            return Err(bad("must be unix:///absolute/path"));
        }
        return Ok((StoreAddr::Unix(path.to_owned()), db));
    }
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(bad("must be redis://HOST:PORT[/DB] or unix:///path"));
    };
    let (hostport, db) = match rest.split_once('/') {
        Some((hp, "")) => (hp, 0),
        Some((hp, d)) => (hp, d.parse().map_err(|_| bad("the db must be a number"))?),
        None => (rest, 0),
    };
    if hostport.contains('@') {
        return Err(bad(
            "put the password in --session-store-password-file, not in the URL",
        ));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p.parse().map_err(|_| bad("bad port"))?),
        _ => return Err(bad("must name HOST:PORT")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((StoreAddr::Tcp(host.to_owned(), port), db))
}

fn validate_store(s: &Settings, resumption: &Resumption) -> Result<Option<StoreSpec>, ConfigError> {
    let Some(url) = s.session_store.clone() else {
        if let Some(p) = &s.session_store_password_file {
            return Err(range(
                "--session-store-password-file",
                p,
                "needs --session-store",
            ));
        }
        return Ok(None);
    };
    if *resumption != Resumption::Cache && *resumption != Resumption::Both {
        return Err(range(
            "--session-store",
            &url,
            "needs --resumption cache or both",
        ));
    }
    let (addr, db) = parse_store_url(&url)?;
    Ok(Some(StoreSpec {
        addr,
        db,
        prefix: s.session_store_prefix(),
        password_file: s.session_store_password_file.clone(),
        connect_timeout_ms: s.session_store_connect_timeout(),
        timeout_ms: s.session_store_timeout(),
    }))
}

fn range(flag: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::OutOfRange {
        flag,
        // Escaped: a value from the config file may hold a newline, and the
        // error is printed on one line.
        value: value.escape_debug().to_string(),
        reason: reason.to_owned(),
    }
}

/// The forms an address of `flag` may take, for messages.
fn expected_addr(flag: &str) -> &'static str {
    match flag {
        "--backend" | "--route" => "IP:PORT, NAME:PORT or unix:/path, e.g. 127.0.0.1:8080",
        _ => "IP:PORT, e.g. 127.0.0.1:8443",
    }
}

/// A backend: `IP:PORT`, `unix:/path` or `NAME:PORT`.
fn parse_backend(flag: &'static str, s: &str) -> Result<crate::route::BackendSpec, ConfigError> {
    crate::route::BackendSpec::parse(s).ok_or_else(|| ConfigError::InvalidAddr {
        flag,
        value: s.to_owned(),
    })
}

fn parse_addr(flag: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| ConfigError::InvalidAddr {
        flag,
        value: s.to_owned(),
    })
}

/// Parses a CPU list such as `0-3,8` into sorted, distinct CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, ConfigError> {
    let err = |reason: &str| ConfigError::InvalidCpuList {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(err("empty item"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| err("not a number"))?;
        let hi: usize = hi.parse().map_err(|_| err("not a number"))?;
        if lo > hi {
            return Err(err("range goes backwards"));
        }
        if hi >= 65536 {
            return Err(err("CPU number too large"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings {
            listen: Some(vec!["127.0.0.1:8443".into()]),
            backend: Some(vec!["127.0.0.1:8080".into()]),
            cert: Some(vec!["c.pem".into()]),
            key: Some(vec!["k.pem".into()]),
            ..Settings::default()
        }
    }

    /// The flags come from the declarations: every form parses into the
    /// same `Settings` the TOML file gives.
    #[test]
    fn flags_parse_into_settings() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let p = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("ringterm").chain(args.iter().copied()))
                .map(|c| c.settings)
        };
        assert_eq!(p(&[]).unwrap(), Settings::default());
        let s = p(&[
            "--no-tls12",
            "--accept-proxy",
            "--ocsp-fetch",
            "--sqpoll",
            "--prefer-server-ciphers",
            "--cert-dir",
            "d",
            "--backend",
            "a:1",
            "--backend",
            "b:2",
            "--cert",
            "c.pem",
            "--route",
            "x.test=a:1",
            "--alpn",
            "h2,http/1.1",
            "--ring-entries",
            "64",
            "--acme-domain",
            "a.test",
        ])
        .unwrap();
        assert_eq!(s.tls12, Some(false));
        assert_eq!(s.accept_proxy, Some(true));
        assert_eq!(s.ocsp_fetch, Some(true));
        assert_eq!(s.sqpoll, Some(1000));
        assert_eq!(s.prefer_server_ciphers, Some(true));
        assert_eq!(s.cert_dirs, Some(vec!["d".to_owned()]));
        assert_eq!(s.backend, Some(vec!["a:1".to_owned(), "b:2".to_owned()]));
        assert_eq!(s.cert, Some(vec![CertEntry::from("c.pem")]));
        assert_eq!(s.route.as_ref().unwrap()[0].names, vec!["x.test"]);
        assert_eq!(s.alpn, Some(vec!["h2".to_owned(), "http/1.1".to_owned()]));
        assert_eq!(s.ring_entries, Some(64));
        assert_eq!(s.acme_flags.domains, Some(vec!["a.test".to_owned()]));
        assert_eq!(p(&["--sqpoll=5"]).unwrap().sqpoll, Some(5));
        let off = p(&["--prefer-server-ciphers=off"]).unwrap();
        assert_eq!(off.prefer_server_ciphers, Some(false));
        let e = p(&["--route", "nope"]).unwrap_err().to_string();
        assert!(e.contains("--route") && e.contains("NAME[,NAME...]"), "{e}");
        assert!(p(&["--no-tls12=true"]).is_err());
        // Every declared flag is a flag of the command line.
        let cmd = <Cli as clap::CommandFactory>::command();
        for o in Settings::OPTIONS.iter().filter(|o| !o.flag.is_empty()) {
            let long = o.flag.trim_start_matches("--");
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(long)),
                "{}",
                o.flag
            );
        }
        assert_eq!(Settings::key_of("--cert-dir"), "cert-dirs");
        assert_eq!(Settings::key_of("--no-tls12"), "tls12");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list("2,1,1").unwrap(), vec![1, 2]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("1,,2").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn defaults_fill_in() {
        let c = base().validate(&[0, 1]).unwrap();
        assert_eq!(c.pins, vec![0, 1]);
        assert_eq!(c.settings.ring_entries(), DEFAULT_RING_ENTRIES);
        assert_eq!(c.settings.buffer_size(), DEFAULT_BUFFER_SIZE);
        assert!(c.tls.tls12 && c.tls.tls13);
    }

    #[test]
    fn workers_and_cpus() {
        let mut s = base();
        s.workers = Some(3);
        s.cpus = Some("1".into());
        assert_eq!(s.validate(&[0, 1]).unwrap().pins, vec![1, 1, 1]);
        let mut s = base();
        s.cpus = Some("5".into());
        assert_eq!(
            s.validate(&[0, 1]).unwrap_err(),
            ConfigError::CpuNotAllowed(5)
        );
        let mut s = base();
        s.workers = Some(0);
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--workers"));
    }

    #[test]
    fn errors_name_the_flag() {
        let mut s = base();
        s.backend = Some(vec!["nope".into()]);
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--backend"));
        let mut s = base();
        s.listen = None;
        assert_eq!(
            s.validate(&[0]).unwrap_err(),
            ConfigError::Missing("--listen")
        );
        let mut s = base();
        s.ring_entries = Some(100);
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--ring-entries"));
    }

    #[test]
    fn toml_and_merge() {
        let file = Settings::from_toml(
            "r.toml",
            "listen = [\"0.0.0.0:443\"]\nbackend = \"127.0.0.1:80\"\nworkers = 4\nring-entries = 256\n",
        )
        .unwrap();
        let cli = Settings {
            workers: Some(2),
            ..Settings::default()
        };
        let merged = file.merge(cli);
        assert_eq!(merged.workers, Some(2));
        assert_eq!(merged.ring_entries, Some(256));
        assert_eq!(merged.backend, Some(vec!["127.0.0.1:80".into()]));
    }

    #[test]
    fn resumption_settings() {
        let c = base().validate(&[0]).unwrap();
        assert_eq!(c.resumption, Resumption::Cache);
        assert_eq!(c.settings.session_timeout(), DEFAULT_SESSION_TIMEOUT_S);
        let mut s = base();
        s.resumption = Some("sometimes".into());
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--resumption"));
        let mut s = base();
        s.ticket_key_file = Some(vec!["k".into()]);
        assert!(s
            .clone()
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--ticket-key-file"));
        s.resumption = Some("both".into());
        assert_eq!(
            s.validate(&[0]).unwrap().ticket_key_files,
            vec!["k".to_owned()]
        );
        let mut s = base();
        s.session_sync_interval = Some(0);
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--session-sync-interval"));
    }

    #[test]
    fn edge_settings() {
        let c = base().validate(&[0]).unwrap();
        assert_eq!(c.settings.idle_timeout(), DEFAULT_IDLE_TIMEOUT_MS);
        assert_eq!(c.settings.max_connections(), 0);
        assert_eq!(c.settings.drain_timeout(), DEFAULT_DRAIN_TIMEOUT_MS);
        assert_eq!(c.user, None);
        for (field, flag) in [
            ("idle", "--idle-timeout"),
            ("max", "--max-connections"),
            ("drain", "--drain-timeout"),
        ] {
            let mut s = base();
            match field {
                "idle" => s.idle_timeout = Some(u64::MAX),
                "max" => s.max_connections = Some(u64::MAX),
                _ => s.drain_timeout = Some(u64::MAX),
            }
            let err = s.validate(&[0]).unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
        }
        let mut s = base();
        s.user = Some(String::new());
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--user"));
        let file = Settings::from_toml(
            "r.toml",
            "idle-timeout = 0\nmax-connections = 10\ndrain-timeout = 500\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
        )
        .unwrap();
        let c = base().merge(file).validate(&[0]).unwrap();
        assert_eq!(c.settings.idle_timeout(), 0);
        assert_eq!(c.settings.max_connections(), 10);
        assert_eq!(c.settings.drain_timeout(), 500);
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.group.as_deref(), Some("nogroup"));
    }

    #[test]
    fn errors_stay_on_one_line() {
        let mut s = base();
        s.log_level = Some("info\nERROR forged".into());
        let err = s.validate(&[0]).unwrap_err().to_string();
        assert_eq!(
            err,
            "--log-level: info\\nERROR forged must be one of error, warn, info, debug, trace, off"
        );
    }

    #[test]
    fn help_shows_declared_defaults_only() {
        use clap::Args;
        let mut cmd = Settings::show_defaults(Settings::augment_args(clap::Command::new("t")));
        let help = cmd.render_long_help().to_string();
        let after = |flag: &str| {
            let at = help
                .find(flag)
                .unwrap_or_else(|| panic!("{flag} in {help}"));
            help[at..].split("\n      --").next().unwrap().to_owned()
        };
        assert!(
            after("--ring-entries ").contains("[default: 1024]"),
            "{help}"
        );
        assert!(after("--log-level ").contains("[default: info]"));
        assert!(!after("--workers ").contains("[default:"));
        assert!(!after("--ocsp-fetch").contains("[default:"));
        // Only the help: nothing looks set.
        let m = cmd.try_get_matches_from(["t"]).unwrap();
        assert_eq!(
            <Settings as clap::FromArgMatches>::from_arg_matches(&m).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn toml_positions_of_values_and_tables() {
        let text = "workers = 2\nring-entries =  100\nlisten = [\"a\"]\n[acme]\ndomains = [\"x\"]\n[[frontend]]\nname = \"a\"\n";
        let p = toml_positions(text);
        let at = |k: &str| {
            p.iter()
                .find(|(key, ..)| key == k)
                .map(|(_, l, c)| (*l, *c))
        };
        assert_eq!(at("workers"), Some((1, 11)));
        assert_eq!(at("ring-entries"), Some((2, 17)));
        assert_eq!(at("listen"), Some((3, 10)));
        assert_eq!(at("acme"), Some((4, 2)));
        assert_eq!(at("frontend"), Some((6, 3)));
        assert_eq!(at("frontend.1.name"), Some((7, 8)));
        assert!(toml_positions("x = ").is_empty());
    }

    #[test]
    fn config_bytes_must_be_utf8() {
        let err = Settings::from_toml_bytes("r.toml", b"workers = 2\n\xff").unwrap_err();
        assert_eq!(err.to_string(), "--config r.toml: not UTF-8");
        let s = Settings::from_toml_bytes("r.toml", b"workers = 2\n").unwrap();
        assert_eq!(s.workers, Some(2));
    }

    #[test]
    fn toml_errors_name_the_file_line_and_column() {
        let err = Settings::from_toml("r.toml", "bogus = 1\n").unwrap_err();
        assert!(err.to_string().starts_with("r.toml:1:1: "), "{err}");
        let err = Settings::from_toml("r.toml", "workers = 2\nbacklog = \"x\"\n").unwrap_err();
        assert!(err.to_string().starts_with("r.toml:2:11: "), "{err}");
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let s = Settings::from_toml(
            "/etc/rt/r.toml",
            "cert = \"c.pem\"\nkey = \"/abs/k.pem\"\ncert-dirs = [\"d\"]\nocsp-dir = \"o\"\nclient-ca = \"ca.pem\"\nticket-key-file = [\"t.key\"]\n",
        )
        .unwrap();
        assert_eq!(s.cert, Some(vec![CertEntry::from("/etc/rt/c.pem")]));
        assert_eq!(s.key, Some(vec!["/abs/k.pem".into()]));
        assert_eq!(s.cert_dirs, Some(vec!["/etc/rt/d".to_owned()]));
        assert_eq!(s.ocsp_dir.as_deref(), Some("/etc/rt/o"));
        assert_eq!(s.client_ca.as_deref(), Some("/etc/rt/ca.pem"));
        assert_eq!(s.ticket_key_file, Some(vec!["/etc/rt/t.key".to_owned()]));
        let t = Settings::from_toml(
            "conf/r.toml",
            "[[cert]]\ncert = \"a.pem\"\nocsp = \"a.ocsp\"\n",
        )
        .unwrap();
        let Some([CertEntry::Table(table)]) = t.cert.as_deref() else {
            panic!()
        };
        assert_eq!(table.cert, "conf/a.pem");
        assert_eq!(table.ocsp.as_deref(), Some("conf/a.ocsp"));
        assert_eq!(table.key, None);
        // Flags are not touched (they are relative to the working folder).
        let s = Settings::from_toml("r.toml", "cert = \"c.pem\"\n").unwrap();
        assert_eq!(s.cert, Some(vec![CertEntry::from("c.pem")]));
    }

    #[test]
    fn layered_errors_name_the_file_and_key() {
        let file = Settings::from_toml("r.toml", "backend = \"nope\"\nworkers = 0\n").unwrap();
        let flags = Settings {
            listen: Some(vec!["127.0.0.1:1".into()]),
            cert: Some(vec!["c.pem".into()]),
            ..Settings::default()
        };
        let l = Layered::new(Some(("r.toml".into(), file.clone())), flags.clone());
        let err = l.validate(&[0]).unwrap_err();
        assert!(err.starts_with("r.toml: backend: invalid address"), "{err}");
        assert_eq!(l.source_of("--backend"), Some(("r.toml", "backend")));
        assert_eq!(l.source_of("--listen"), None);
        // The flag overrides the file: the flag is named.
        let over = Settings {
            backend: Some(vec!["nope2".into()]),
            ..flags.clone()
        };
        let l = Layered::new(Some(("r.toml".into(), file)), over);
        let err = l.validate(&[0]).unwrap_err();
        assert!(err.starts_with("--backend: invalid address"), "{err}");
        // A declared check: the file and key, or the flag.
        let ok = Settings {
            backend: Some(vec!["127.0.0.1:2".into()]),
            ..flags.clone()
        };
        let file = Settings::from_toml("r.toml", "ring-entries = 100\n").unwrap();
        let l = Layered::new(Some(("r.toml".into(), file)), ok.clone());
        assert_eq!(
            l.validate(&[0]).unwrap_err(),
            "r.toml: ring-entries: 100 must be a power of two from 8 to 32768"
        );
        let over = Settings {
            ring_entries: Some(100),
            ..ok
        };
        let l = Layered::new(None, over);
        assert_eq!(
            l.validate(&[0]).unwrap_err(),
            "--ring-entries: 100 must be a power of two from 8 to 32768"
        );
    }

    #[test]
    fn cert_dirs_and_combined_files() {
        let s = Settings {
            cert: None,
            key: None,
            cert_dirs: Some(vec!["/d".into()]),
            ..base()
        };
        let c = s.validate(&[0]).unwrap();
        assert!(c.certs.is_empty());
        assert_eq!(c.cert_dirs, vec!["/d".to_owned()]);
        let s = Settings {
            key: None,
            ..base()
        };
        let c = s.validate(&[0]).unwrap();
        assert_eq!(c.certs[0].key, None);
        let s = Settings {
            cert: None,
            ..base()
        };
        assert!(s.validate(&[0]).unwrap_err().to_string().contains("--cert"));
        let s = Settings {
            ocsp_refresh: Some(0),
            ..base()
        };
        assert!(s
            .validate(&[0])
            .unwrap_err()
            .to_string()
            .starts_with("--ocsp-refresh"));
    }
    #[test]
    fn cert_tables_and_repeated_flags() {
        let toml = r#"
listen = ["127.0.0.1:8443"]
backend = "127.0.0.1:8080"
[[cert]]
cert = "a.pem"
key = "a.key"
[[cert]]
cert = "b.pem"
key = "b.key"
names = ["*.example.com"]
"#;
        let c = Settings::from_toml("f.toml", toml)
            .unwrap()
            .validate(&[0])
            .unwrap();
        assert_eq!(c.certs.len(), 2);
        assert_eq!(c.certs[1].names, vec!["*.example.com".to_owned()]);

        let flags = Settings {
            cert: Some(vec!["a".into(), "b".into()]),
            key: Some(vec!["ak".into()]),
            ..base()
        };
        let err = flags.validate(&[0]).unwrap_err().to_string();
        assert!(
            err.starts_with("--key: 1 keys given for 2 certificates"),
            "{err}"
        );

        let mixed = format!("{toml}\nkey = \"x\"");
        assert!(Settings::from_toml("f.toml", &mixed).is_err());
    }

    #[test]
    fn tls_policy_settings() {
        let p = |f: fn(&mut Settings)| {
            let mut s = base();
            f(&mut s);
            s.validate(&[0])
        };
        let c = p(|s| s.min_tls = Some("1.3".into())).unwrap();
        assert!(!c.tls.tls12 && c.tls.tls13);
        let c = p(|s| s.max_tls = Some("1.2".into())).unwrap();
        assert!(c.tls.tls12 && !c.tls.tls13);
        let c = p(|s| s.tls12 = Some(false)).unwrap();
        assert!(!c.tls.tls12);
        let e = p(|s| {
            s.min_tls = Some("1.3".into());
            s.max_tls = Some("1.2".into());
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("--min-tls"), "{e}");
        let e = p(|s| s.min_tls = Some("1.1".into())).unwrap_err();
        assert_eq!(e.to_string(), "--min-tls: 1.1 must be 1.2 or 1.3");
        let e = p(|s| s.client_auth = Some("maybe".into())).unwrap_err();
        assert!(e.to_string().starts_with("--client-auth"), "{e}");
        let e = p(|s| s.client_auth = Some("optional".into())).unwrap_err();
        assert!(e.to_string().contains("--client-ca"), "{e}");
        let c = p(|s| {
            s.client_ca = Some("ca.pem".into());
            s.client_auth = Some("optional".into());
        })
        .unwrap();
        assert!(!c.tls.client_auth_required);
        let e = p(|s| s.unknown_sni = Some("drop".into())).unwrap_err();
        assert!(e.to_string().starts_with("--unknown-sni"), "{e}");
        let e = p(|s| s.record_layer = Some("kernel".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--record-layer: kernel must be own or rustls"
        );
        let c = p(|s| s.record_layer = Some("rustls".into())).unwrap();
        assert_eq!(c.tls.record_layer, crate::record::RecordLayerKind::Rustls);
        let c = p(|_| {}).unwrap();
        assert_eq!(c.tls.record_layer, crate::record::RecordLayerKind::Own);
        let file = Settings::from_toml("r.toml", "record-layer = \"rustls\"\n").unwrap();
        assert_eq!(file.record_layer.as_deref(), Some("rustls"));
        let c = p(|s| s.alpn = Some(vec!["h2".into(), " http/1.1".into()])).unwrap();
        assert_eq!(c.tls.alpn, vec!["h2", "http/1.1"]);
        assert!(p(|s| s.alpn = Some(vec!["".into()])).is_err());
        let c = p(|_| {}).unwrap();
        assert_eq!(c.tls.prefer_server_ciphers, DEFAULT_PREFER_SERVER_CIPHERS);
        let c = p(|s| s.prefer_server_ciphers = Some(!DEFAULT_PREFER_SERVER_CIPHERS)).unwrap();
        assert_eq!(c.tls.prefer_server_ciphers, !DEFAULT_PREFER_SERVER_CIPHERS);
        let file = Settings::from_toml("f.toml", "prefer-server-ciphers = false").unwrap();
        assert_eq!(file.prefer_server_ciphers, Some(false));
        let flags = Settings {
            prefer_server_ciphers: Some(true),
            ..Settings::default()
        };
        assert_eq!(file.merge(flags).prefer_server_ciphers, Some(true));
    }

    #[test]
    fn routes_and_backends() {
        let r = RouteSetting::parse_flag("a.test,*.b.test=127.0.0.1:1,127.0.0.1:2").unwrap();
        assert_eq!(r.names, vec!["a.test", "*.b.test"]);
        assert_eq!(r.backends.len(), 2);
        assert!(RouteSetting::parse_flag("a.test").is_err());
        let s = Settings {
            backend: Some(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]),
            route: Some(vec![r]),
            ..base()
        };
        let c = s.validate(&[0]).unwrap();
        assert_eq!(c.routes.default.len(), 2);
        assert_eq!(c.routes.routes[0].backends.len(), 2);
        let bad = Settings {
            route: Some(vec![RouteSetting::parse_flag("a.test=nope").unwrap()]),
            ..base()
        };
        let e = bad.validate(&[0]).unwrap_err().to_string();
        assert!(e.starts_with("--route: invalid address"), "{e}");
        let empty = Settings {
            route: Some(vec![RouteSetting::parse_flag("=127.0.0.1:1").unwrap()]),
            ..base()
        };
        assert!(empty.validate(&[0]).is_err());
    }
}

#[cfg(test)]
mod example_file {
    use super::Settings;

    #[test]
    fn shipped_example_parses_and_validates() {
        let text = include_str!("../config/ringterm.toml");
        let s = Settings::from_toml("config/ringterm.toml", text).unwrap();
        let c = s.validate(&[0, 1]).unwrap();
        assert!(c.backend.to_string().ends_with(":8080"), "{}", c.backend);
    }

    #[test]
    fn session_store_urls() {
        use super::{parse_store_url, StoreAddr};
        assert_eq!(
            parse_store_url("redis://10.0.0.5:6379").unwrap(),
            (StoreAddr::Tcp("10.0.0.5".into(), 6379), 0)
        );
        assert_eq!(
            parse_store_url("redis://cache.internal:6380/3").unwrap(),
            (StoreAddr::Tcp("cache.internal".into(), 6380), 3)
        );
        assert_eq!(
            parse_store_url("redis://[::1]:6379/").unwrap(),
            (StoreAddr::Tcp("::1".into(), 6379), 0)
        );
        assert_eq!(
            parse_store_url("unix:///run/redis.sock?db=2").unwrap(),
            (StoreAddr::Unix("/run/redis.sock".into()), 2)
        );
        for bad in [
            "redis://host",
            "redis://:1",
            "redis://h:x",
            "redis://h:1/x",
            "redis://user:pw@h:1",
            "rediss://h:1",
            "unix://relative.sock",
            "",
        ] {
            let e = parse_store_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("--session-store"), "{bad}: {e}");
        }
    }
}
