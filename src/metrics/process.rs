//! Process-wide figures that belong to no worker: build info, reloads,
//! certificate expiry and OCSP staples. Written by the reloader (a signal or
//! timer thread), read by the admin thread; never touched by a worker.
//!
//! Sans-IO: the writers pass timestamps in; rendering returns text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

/// One certificate name's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertGauge {
    /// An SNI name the certificate is served for.
    pub name: String,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after: u64,
    /// The stapled OCSP response's `nextUpdate`, if one is stapled.
    pub ocsp_next_update: Option<u64>,
}

/// The process-wide figures.
#[derive(Debug, Default)]
pub struct ProcessMetrics {
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_s: AtomicU64,
    last_reload_ok: AtomicU64,
    files_skipped: AtomicU64,
    ocsp_rejected: AtomicU64,
    certs: ArcSwap<Vec<CertGauge>>,
}

/// The one instance.
pub fn global() -> &'static ProcessMetrics {
    static GLOBAL: OnceLock<ProcessMetrics> = OnceLock::new();
    GLOBAL.get_or_init(ProcessMetrics::default)
}

impl ProcessMetrics {
    /// Records a reload's result at `now` (seconds since the epoch).
    pub fn reload_done(&self, ok: bool, now: u64) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
        self.last_reload_s.store(now, Relaxed);
        self.last_reload_ok.store(ok as u64, Relaxed);
    }

    /// Counts certificate files skipped on reload.
    pub fn files_skipped(&self, n: u64) {
        self.files_skipped.fetch_add(n, Relaxed);
    }

    /// Counts OCSP responses found invalid or stale (each one warned about).
    pub fn ocsp_rejected(&self, n: u64) {
        self.ocsp_rejected.fetch_add(n, Relaxed);
    }

    /// Replaces the per-name certificate figures.
    pub fn set_certs(&self, certs: Vec<CertGauge>) {
        self.certs.store(Arc::new(certs));
    }

    /// Reloads so far: (succeeded, failed).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
        )
    }

    /// Appends the Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ringterm_build_info The running version.\n# TYPE ringterm_build_info gauge\nringterm_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP ringterm_reloads_total Reloads (SIGHUP), by result.\n# TYPE ringterm_reloads_total counter\nringterm_reloads_total{{result=\"success\"}} {}\nringterm_reloads_total{{result=\"failure\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringterm_last_reload_timestamp_seconds When the last reload ran (0: never).\n# TYPE ringterm_last_reload_timestamp_seconds gauge\nringterm_last_reload_timestamp_seconds {}",
            self.last_reload_s.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringterm_last_reload_success Whether the last reload succeeded (1 before any).\n# TYPE ringterm_last_reload_success gauge\nringterm_last_reload_success {}",
            if self.last_reload_s.load(Relaxed) == 0 {
                1
            } else {
                self.last_reload_ok.load(Relaxed)
            }
        );
        let _ = writeln!(
            out,
            "# HELP ringterm_certificate_files_skipped_total Certificate files skipped on reload (bad file; its previous version kept).\n# TYPE ringterm_certificate_files_skipped_total counter\nringterm_certificate_files_skipped_total {}",
            self.files_skipped.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringterm_ocsp_rejected_total OCSP responses not stapled because stale or invalid, and failed --ocsp-fetch attempts (each warned about once).\n# TYPE ringterm_ocsp_rejected_total counter\nringterm_ocsp_rejected_total {}",
            self.ocsp_rejected.load(Relaxed)
        );
        let certs = self.certs.load();
        out.push_str("# HELP ringterm_certificate_not_after_seconds Certificate expiry (notAfter), by SNI name.\n# TYPE ringterm_certificate_not_after_seconds gauge\n");
        for c in certs.iter() {
            let _ = writeln!(
                out,
                "ringterm_certificate_not_after_seconds{{name=\"{}\"}} {}",
                escape(&c.name),
                c.not_after
            );
        }
        out.push_str("# HELP ringterm_ocsp_stapled Whether a valid OCSP response is stapled, by SNI name.\n# TYPE ringterm_ocsp_stapled gauge\n");
        for c in certs.iter() {
            let _ = writeln!(
                out,
                "ringterm_ocsp_stapled{{name=\"{}\"}} {}",
                escape(&c.name),
                c.ocsp_next_update.is_some() as u8
            );
        }
        out.push_str("# HELP ringterm_ocsp_next_update_seconds The stapled OCSP response's nextUpdate, by SNI name.\n# TYPE ringterm_ocsp_next_update_seconds gauge\n");
        for c in certs.iter() {
            if let Some(t) = c.ocsp_next_update {
                let _ = writeln!(
                    out,
                    "ringterm_ocsp_next_update_seconds{{name=\"{}\"}} {t}",
                    escape(&c.name)
                );
            }
        }
    }
}

/// Per-name gauges from the loaded certificates: one series per name (the
/// first certificate serving a name wins, as SNI selection does for the
/// default key).
pub fn cert_gauges(loaded: &crate::tls::loader::Loaded) -> Vec<CertGauge> {
    let mut out: Vec<CertGauge> = Vec::new();
    for c in &loaded.certs {
        let next = match &c.ocsp {
            crate::tls::loader::OcspState::Stapled { validity, .. } => Some(validity.next_update),
            _ => None,
        };
        for name in &c.served_names {
            if out.iter().any(|g| &g.name == name) {
                continue;
            }
            out.push(CertGauge {
                name: name.clone(),
                not_after: c.not_after,
                ocsp_next_update: next,
            });
        }
    }
    out
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reloads_and_certs() {
        let m = ProcessMetrics::default();
        m.reload_done(true, 100);
        m.reload_done(false, 200);
        m.set_certs(vec![CertGauge {
            name: "a\"b".into(),
            not_after: 5,
            ocsp_next_update: Some(7),
        }]);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("ringterm_reloads_total{result=\"success\"} 1\n"));
        assert!(out.contains("ringterm_reloads_total{result=\"failure\"} 1\n"));
        assert!(out.contains("ringterm_last_reload_timestamp_seconds 200\n"));
        assert!(out.contains("ringterm_last_reload_success 0\n"));
        assert!(out.contains("ringterm_certificate_not_after_seconds{name=\"a\\\"b\"} 5\n"));
        assert!(out.contains("ringterm_ocsp_next_update_seconds{name=\"a\\\"b\"} 7\n"));
        assert!(out.contains("ringterm_build_info{version=\""));
    }
}
