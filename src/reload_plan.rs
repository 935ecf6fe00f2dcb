//! What a reload applies and what needs a restart.
//!
//! A reload re-reads the whole configuration. Each option's declaration
//! ([`crate::config::Settings`], [`crate::options`]) says whether a change
//! to it applies at once (`live`: certificates, OCSP, the TLS policy,
//! frontends, listen addresses, backends, routes, ejection, timeouts, the
//! connection limit, PROXY settings) or needs a restart (`restart`: it
//! sizes rings and buffers, pins threads, binds the admin endpoint, drops
//! privileges, starts threads). A change to a `restart` option gives one
//! warning naming it, and the running value stays.
//!
//! Generic: [`plan`] compares the two configurations' settings key by key
//! (defaults filled in), puts each changed `restart` value back to the
//! running one and validates the result; no option needs code here.
//!
//! Sans-IO: compares two validated configurations.

use crate::config::{Config, Settings};
use crate::options::Reload;

/// A setting that changed but needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartNeeded {
    /// The flag (`--workers`), or the TOML key of an option without one
    /// (`acme`).
    pub setting: String,
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

/// A setting's value for messages: `off` when unset (and without a
/// default), lists comma-separated, tables as compact JSON.
fn show(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "off".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The settings as a map from TOML key to value.
fn keys(s: &Settings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// The configuration a reload runs with — `new`, with every setting that
/// needs a restart kept at its running value in `old` — and one
/// [`RestartNeeded`] per such setting that changed. An error when `new`
/// with the running values put back does not validate (a new value that
/// applies live depends on one that needs a restart).
pub fn plan(old: &Config, new: &Config) -> Result<(Config, Vec<RestartNeeded>), String> {
    let was = keys(&old.settings.clone().with_defaults());
    let now = keys(&new.settings.clone().with_defaults());
    let running = keys(&old.settings);
    let mut patched = keys(&new.settings);
    let mut warnings = Vec::new();
    let null = serde_json::Value::Null;
    for o in Settings::OPTIONS
        .iter()
        .filter(|o| o.reload == Reload::Restart)
    {
        let key = o.key();
        let (a, b) = (
            was.get(&key).unwrap_or(&null),
            now.get(&key).unwrap_or(&null),
        );
        if a != b {
            warnings.push(RestartNeeded {
                setting: o.name(),
                old: show(a),
                new: show(b),
            });
            patched.insert(key.clone(), running.get(&key).unwrap_or(&null).clone());
        }
    }
    let mut run = if warnings.is_empty() {
        new.clone()
    } else {
        let mut settings: Settings = serde_json::from_value(serde_json::Value::Object(patched))
            .map_err(|e| format!("reload: {e}"))?;
        settings.acme_flags = new.settings.acme_flags.clone();
        // The pins stay (below): any CPU either configuration uses will do
        // for validating.
        let mut cpus: Vec<usize> = old.pins.iter().chain(&new.pins).copied().collect();
        cpus.sort_unstable();
        cpus.dedup();
        settings.validate(&cpus).map_err(|e| {
            format!("reload: the new configuration with the running values of the settings that need a restart: {e}")
        })?
    };
    run.pins = old.pins.clone();
    Ok((run, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (run, warnings) = plan(&old, &new).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(run, new);
    }

    #[test]
    fn each_fixed_setting_gives_one_line_and_keeps_its_value() {
        let old = config("workers = 4\nbuffer-size = 16384");
        let new = config(
            "workers = 8\nbuffer-size = 65536\nring-entries = 64\nadmin = \"127.0.0.1:9\"\nbackend-eject = 7",
        );
        let (run, warnings) = plan(&old, &new).unwrap();
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
        assert_eq!(run.settings.buffer_size(), 16384);
        assert_eq!(run.settings.ring_entries(), 1024);
        assert_eq!(run.admin, None);
        // What applies live still does.
        assert_eq!(run.routes.eject_ms, 7);
        // A default written out is no change.
        let (_, w) = plan(
            &config(""),
            &config("ring-entries = 1024\nlog-format = \"text\""),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        // Options without a flag are named by their key; lists read as lists.
        let (run, w) = plan(
            &config("ticket-key-file = [\"a\"]\nresumption = \"tickets\""),
            &config(
                "ticket-key-file = [\"a\", \"b\"]\nresumption = \"tickets\"\n\
                 [acme]\ndomains = [\"a.test\"]\naccept-tos = true\n",
            ),
        )
        .unwrap();
        let lines: Vec<String> = w.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            lines[0],
            "reload: --ticket-key-file changed (a -> a,b): needs a restart, keeping a"
        );
        assert!(
            lines[1].starts_with("reload: acme changed (off -> "),
            "{lines:?}"
        );
        assert_eq!(run.ticket_key_files, vec!["a".to_owned()]);
        assert_eq!(run.acme, None);
    }

    /// Every setting is declared either `live` (applied by a reload) or
    /// `restart` (named when it changed), so that no change is ever
    /// ignored silently: the declaration macro requires one of the two,
    /// and every TOML key is a declared option.
    #[test]
    fn every_setting_is_live_or_needs_a_restart() {
        let serde_json::Value::Object(keys) = serde_json::to_value(Settings::default()).unwrap()
        else {
            panic!("settings serialize to a map");
        };
        for key in keys.keys() {
            assert!(
                Settings::OPTIONS.iter().any(|o| o.key() == *key),
                "setting {key:?} is not a declared option"
            );
        }
        assert_eq!(Settings::OPTIONS.len(), keys.len());
        let restart = |k: &str| {
            Settings::OPTIONS
                .iter()
                .any(|o| o.key() == k && o.reload == Reload::Restart)
        };
        assert!(restart("workers") && restart("acme") && !restart("cert"));
    }

    #[test]
    fn pinning_alone_names_cpus() {
        let (_, w) = plan(&config("cpus = \"0,1\""), &config("cpus = \"2,3\"")).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].setting, "--cpus");
        assert_eq!(w[0].old, "0,1");
    }
}
