//! What a reload applies and what needs a restart.
//!
//! A reload re-reads the whole configuration. Certificates, OCSP, the TLS
//! policy, frontends, listen addresses, backends, routes, ejection,
//! timeouts, the connection limit and PROXY settings apply to new
//! connections at once. The settings below are fixed when the process
//! starts (they size rings and buffers, pin threads, bind the admin
//! endpoint, drop privileges, start threads): a change to one gives one
//! warning naming it, and the running value stays.
//!
//! Sans-IO: compares two validated configurations.

use crate::config::Config;

/// A setting that changed but needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartNeeded {
    /// The flag (`--workers`).
    pub setting: &'static str,
    /// The running value.
    pub old: String,
    /// The value in the new configuration.
    pub new: String,
}

impl std::fmt::Display for RestartNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reload: {} changed ({} -> {}): needs a restart, keeping {}",
            self.setting, self.old, self.new, self.old
        )
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "off".to_owned(),
    }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        return "none".to_owned();
    }
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The settings (TOML keys) a reload applies.
pub const LIVE: &[&str] = &[
    "listen",
    "backend",
    "route",
    "backend-eject",
    "cert",
    "key",
    "cert-dirs",
    "ocsp-dir",
    "ocsp-refresh",
    "handshake-timeout",
    "connect-timeout",
    "tls12",
    "min-tls",
    "max-tls",
    "ciphers",
    "groups",
    "prefer-server-ciphers",
    "alpn",
    "client-ca",
    "client-auth",
    "unknown-sni",
    "record-layer",
    "idle-timeout",
    "max-connections",
    "proxy-protocol",
    "accept-proxy",
    "drain-timeout",
    "log-level",
    "frontend",
];

/// The settings (TOML keys) that need a restart: [`plan`] keeps each at
/// its running value and names it when it changed.
pub const RESTART: &[&str] = &[
    "workers",
    "cpus",
    "ring-entries",
    "read-buffers",
    "sqpoll",
    "backlog",
    "buffer-size",
    "admin",
    "user",
    "group",
    "log-format",
    "upgrade-socket",
    "resumption",
    "session-timeout",
    "session-cache-size",
    "session-sync-interval",
    "session-store",
    "session-store-prefix",
    "session-store-password-file",
    "session-store-connect-timeout",
    "session-store-timeout",
    "ticket-rotation",
    "ticket-key-file",
    "tls13-tickets",
    "ocsp-fetch",
    "access-log",
    "access-log-format",
    "health-check-interval",
    "acme",
];

/// The configuration a reload runs with — `new`, with every setting that
/// needs a restart kept at its running value in `old` — and one
/// [`RestartNeeded`] per such setting that changed.
pub fn plan(old: &Config, new: &Config) -> (Config, Vec<RestartNeeded>) {
    let mut out = new.clone();
    let mut warnings = Vec::new();
    let mut check = |setting: &'static str, o: String, n: String| {
        if o != n {
            warnings.push(RestartNeeded {
                setting,
                old: o,
                new: n,
            });
        }
    };
    // Worker count and pinning: one warning, the one that changed.
    if old.workers() != new.workers() {
        check(
            "--workers",
            old.workers().to_string(),
            new.workers().to_string(),
        );
    } else {
        check("--cpus", list(&old.pins), list(&new.pins));
    }
    out.pins = old.pins.clone();
    macro_rules! keep {
        ($flag:literal, $field:ident, $fmt:expr) => {
            check($flag, $fmt(&old.$field), $fmt(&new.$field));
            out.$field = old.$field.clone();
        };
    }
    let plain = |v: &dyn std::fmt::Display| v.to_string();
    keep!("--ring-entries", ring_entries, |v: &u32| plain(v));
    keep!("--read-buffers", read_buffers, |v: &u16| plain(v));
    keep!("--sqpoll", sqpoll_idle_ms, opt);
    keep!("--backlog", backlog, |v: &u32| plain(v));
    keep!("--buffer-size", buffer_size, |v: &usize| plain(v));
    keep!("--admin", admin, opt);
    keep!("--user", user, opt);
    keep!("--group", group, opt);
    keep!("--log-format", log_format, |v: &String| v.clone());
    keep!("--upgrade-socket", upgrade_socket, opt);
    keep!(
        "--resumption",
        resumption,
        |v: &crate::config::Resumption| { format!("{v:?}").to_ascii_lowercase() }
    );
    keep!("--session-timeout", session_timeout_s, |v: &u64| plain(v));
    keep!("--session-cache-size", session_cache_size, |v: &usize| {
        plain(v)
    });
    keep!(
        "--session-sync-interval",
        session_sync_interval_ms,
        |v: &u64| plain(v)
    );
    keep!("--session-store", session_store, |v: &Option<
        crate::config::StoreSpec,
    >| match v {
        Some(s) => format!("{s:?}"),
        None => "off".to_owned(),
    });
    keep!("--ticket-rotation", ticket_rotation_s, |v: &u64| plain(v));
    keep!("--ticket-key-file", ticket_key_files, |v: &Vec<String>| {
        list(v)
    });
    keep!("--tls13-tickets", tls13_tickets, |v: &usize| plain(v));
    keep!("--ocsp-fetch", ocsp_fetch, |v: &bool| plain(v));
    keep!("--access-log", access_log, opt);
    keep!("--access-log-format", access_log_json, |v: &bool| if *v {
        "json".to_owned()
    } else {
        "text".to_owned()
    });
    keep!(
        "--health-check-interval",
        health_check_interval_ms,
        |v: &u64| plain(v)
    );
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn config(extra: &str) -> Config {
        let text = format!(
            "listen = [\"127.0.0.1:1\"]\nbackend = \"127.0.0.1:2\"\ncert = \"c.pem\"\n{extra}"
        );
        Settings::from_toml("t.toml", &text)
            .unwrap()
            .validate(&[0, 1, 2, 3])
            .unwrap()
    }

    #[test]
    fn live_changes_give_no_warning() {
        let old = config("workers = 2");
        let new = config(
            "workers = 2\nbackend-eject = 5\nalpn = [\"h2\"]\nidle-timeout = 5\nmax-connections = 9\n\
             [[route]]\nnames = [\"a.example\"]\nbackends = [\"127.0.0.1:3\"]\n",
        );
        let (run, warnings) = plan(&old, &new);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(run, new);
    }

    #[test]
    fn each_fixed_setting_gives_one_line_and_keeps_its_value() {
        let old = config("workers = 4\nbuffer-size = 16384");
        let new = config(
            "workers = 8\nbuffer-size = 65536\nring-entries = 64\nadmin = \"127.0.0.1:9\"\nbackend-eject = 7",
        );
        let (run, warnings) = plan(&old, &new);
        let lines: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            lines,
            [
                "reload: --workers changed (4 -> 8): needs a restart, keeping 4",
                "reload: --ring-entries changed (1024 -> 64): needs a restart, keeping 1024",
                "reload: --buffer-size changed (16384 -> 65536): needs a restart, keeping 16384",
                "reload: --admin changed (off -> 127.0.0.1:9): needs a restart, keeping off",
            ]
        );
        assert_eq!(run.workers(), 4);
        assert_eq!(run.buffer_size, 16384);
        assert_eq!(run.ring_entries, 1024);
        assert_eq!(run.admin, None);
        // What applies live still does.
        assert_eq!(run.routes.eject_ms, 7);
    }

    /// Every setting is either applied by a reload or named when it needs
    /// a restart: a new option must be put in one of the two lists (and,
    /// when it needs a restart, kept in [`plan`]), so that no change is
    /// ever ignored silently.
    #[test]
    fn every_setting_is_live_or_needs_a_restart() {
        let serde_json::Value::Object(keys) = serde_json::to_value(Settings::default()).unwrap()
        else {
            panic!("settings serialize to a map");
        };
        for key in keys.keys() {
            let live = LIVE.contains(&key.as_str());
            let restart = RESTART.contains(&key.as_str());
            assert!(
                live ^ restart,
                "setting {key:?} must be in exactly one of reload_plan::LIVE and RESTART"
            );
        }
        assert_eq!(LIVE.len() + RESTART.len(), keys.len());
    }

    #[test]
    fn pinning_alone_names_cpus() {
        let (_, w) = plan(&config("cpus = \"0,1\""), &config("cpus = \"2,3\""));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].setting, "--cpus");
        assert_eq!(w[0].old, "0,1");
    }
}
