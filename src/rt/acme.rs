//! The ACME client: a thread of its own (`ringterm-acme`, never a worker)
//! running a current-thread tokio runtime for `instant-acme`.
//!
//! For each configured certificate it looks at the state folder, and when
//! the certificate is missing, does not cover the configured names, or
//! reaches its renewal time ([`AcmeConfig::renew_at`]), it orders a new
//! one: account (created once, kept in the state folder), order,
//! TLS-ALPN-01 challenges published to the workers
//! ([`crate::tls::acme::AcmeChallenges`]), finalize with a CSR for a fresh
//! P-256 key, download the chain. The key and chain are written atomically
//! (write, fsync, rename) and the TLS configuration is rebuilt and swapped
//! ([`TlsReloader::reload_certificates`]): established connections keep
//! theirs, new ones get the new certificate.
//!
//! Orders run one at a time. A failed order is logged on one line (the
//! ACME problem document's type and detail) and retried after
//! `--acme-retry-min` seconds, doubling with each failure in a row up to
//! four hours: no tight loop against a CA's rate limits.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};

use super::reload::{now_unix, DiskFiles, TlsReloader};
use crate::acme::AcmeConfig;
use crate::tls::acme::{challenge_config, AcmeChallenges};
use crate::tls::loader;

/// The pending challenges the workers answer (one set per process).
pub fn challenges() -> &'static AcmeChallenges {
    static CHALLENGES: OnceLock<AcmeChallenges> = OnceLock::new();
    CHALLENGES.get_or_init(AcmeChallenges::new)
}

/// At start, before the certificates load: creates the state folder and
/// its `certs` folder (mode 0700) and checks the CA file. With `--user`
/// (`owner`: the user and group ringterm switches to), the folders and
/// their files are given to that user: the ACME thread writes them after
/// the switch. The error is one line naming the flag.
pub fn prepare(acme: &AcmeConfig, owner: Option<(u32, u32)>) -> Result<(), String> {
    for dir in [acme.state_dir(), acme.certs_dir()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("--acme-state-dir {dir}: {e}"))?;
        if let Some((uid, gid)) = owner {
            let mut paths = vec![std::path::PathBuf::from(&dir)];
            if let Ok(entries) = std::fs::read_dir(&dir) {
                paths.extend(entries.flatten().map(|e| e.path()));
            }
            for p in paths {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .map_err(|e| format!("--acme-state-dir {}: chown: {e}", p.display()))?;
            }
        }
    }
    check_ca_file(acme)
}

/// Checks that `--acme-ca-file`, when set, holds a PEM certificate (at
/// start and in `ringterm check`).
pub fn check_ca_file(acme: &AcmeConfig) -> Result<(), String> {
    if let Some(ca) = acme.ca_file() {
        let pem = std::fs::read(ca).map_err(|e| format!("--acme-ca-file {ca}: {e}"))?;
        crate::tls::load_cert_chain(ca, &pem)
            .map_err(|_| format!("--acme-ca-file {ca}: no PEM certificate in it"))?;
    }
    Ok(())
}

/// Starts the ACME thread.
pub fn spawn(acme: AcmeConfig, reloader: Arc<TlsReloader>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringterm-acme".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("ACME: cannot start the client's runtime: {e}");
                    return;
                }
            };
            let sets = vec![SetState::default(); acme.certs.len()];
            rt.block_on(
                Client {
                    acme,
                    reloader,
                    challenges: challenges(),
                    account: None,
                    sets,
                }
                .run(),
            );
        })
        .map(|_| ())
}

/// One certificate's retry state.
#[derive(Debug, Clone, Default)]
struct SetState {
    /// Failed orders in a row.
    failures: u32,
    /// No order before this time (after a failure), seconds since the
    /// epoch.
    retry_at: u64,
}

struct Client {
    acme: AcmeConfig,
    reloader: Arc<TlsReloader>,
    challenges: &'static AcmeChallenges,
    account: Option<Account>,
    sets: Vec<SetState>,
}

/// How long polls for an order's progress may take.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// The longest one order may take, CA round trips included: a CA that
/// accepts connections and never answers does not stall the client.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest sleep between looks at the schedule.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// An error on one line.
fn line(e: impl std::fmt::Display) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

impl Client {
    async fn run(mut self) {
        loop {
            let state = loader::acme_state(&self.acme, &DiskFiles::default());
            for (i, st) in state.iter().enumerate() {
                if self.due(i, st) > now_unix() {
                    continue;
                }
                let names = self.acme.certs[i].clone();
                if let Err(why) = st {
                    tracing::info!(names = %names.join(","), "ACME: ordering a certificate ({why})");
                } else {
                    tracing::info!(names = %names.join(","), "ACME: renewing the certificate");
                }
                let started = std::time::Instant::now();
                let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order(&names)).await {
                    Ok(result) => result,
                    Err(_) => {
                        // A CA that stops answering mid-order: the order's
                        // challenges go too.
                        for n in &names {
                            self.challenges.remove(n);
                        }
                        Err(format!("no answer within {} s", ORDER_TIMEOUT.as_secs()))
                    }
                };
                match result {
                    Ok(not_after) => {
                        crate::acme::metrics().order_done(true);
                        self.sets[i] = SetState::default();
                        tracing::info!(
                            names = %names.join(","),
                            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                            "ACME: certificate obtained, valid until {}, renewal from {}",
                            loader::format_utc(not_after),
                            loader::format_utc(self.acme.renew_at(&names, not_after))
                        );
                    }
                    Err(e) => {
                        crate::acme::metrics().order_done(false);
                        let set = &mut self.sets[i];
                        set.failures += 1;
                        let delay = self.acme.retry_delay(set.failures);
                        set.retry_at = now_unix() + delay;
                        tracing::warn!(
                            names = %names.join(","),
                            failures = set.failures,
                            retry_in_s = delay,
                            "ACME order failed: {e}"
                        );
                    }
                }
            }
            let state = loader::acme_state(&self.acme, &DiskFiles::default());
            let next: Vec<(String, u64)> = (0..self.acme.certs.len())
                .map(|i| (self.acme.certs[i][0].clone(), self.due(i, &state[i])))
                .collect();
            let soonest = next.iter().map(|(_, t)| *t).min().unwrap_or(u64::MAX);
            crate::acme::metrics().set_next(next);
            let wait = Duration::from_secs(soonest.saturating_sub(now_unix()))
                .clamp(Duration::from_secs(1), MAX_SLEEP);
            tokio::time::sleep(wait).await;
        }
    }

    /// When certificate `i` next needs an order: its renewal time, now
    /// when the state file is missing, unusable or lacks a configured
    /// name, and never before its retry time.
    fn due(&self, i: usize, state: &Result<(Vec<String>, u64), String>) -> u64 {
        let names = &self.acme.certs[i];
        let renew = match state {
            Ok((served, not_after)) if names.iter().all(|n| served.contains(n)) => {
                self.acme.renew_at(names, *not_after)
            }
            _ => 0,
        };
        renew.max(self.sets[i].retry_at)
    }

    /// Orders a certificate for `names`, stores it and swaps it in.
    /// Returns its `notAfter`.
    async fn order(&mut self, names: &[String]) -> Result<u64, String> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = match account.new_order(&NewOrder::new(&ids)).await {
            Ok(order) => order,
            Err(e) => {
                let text = line(&e);
                if text.contains("accountDoesNotExist") {
                    // The CA forgot the account: make a new one next time.
                    self.account = None;
                    let _ = std::fs::remove_file(self.acme.account_file());
                }
                return Err(text);
            }
        };
        let result = self.authorize_and_finalize(&mut order, names).await;
        for n in names {
            self.challenges.remove(n);
        }
        let (key_pem, chain_pem) = result?;
        let chain = crate::tls::load_cert_chain("chain", chain_pem.as_bytes())
            .map_err(|e| format!("the CA's certificate chain: {}", line(e)))?;
        let not_after = crate::tls::ocsp::not_after(&chain[0])
            .map_err(|e| format!("the CA's certificate: {}", line(e)))?;
        let path = self.acme.cert_file(names);
        write_atomic(&path, format!("{key_pem}{chain_pem}").as_bytes())
            .map_err(|e| format!("writing {path}: {e}"))?;
        self.reloader
            .reload_certificates()
            .map_err(|e| format!("swapping in {path}: {}", line(e)))?;
        Ok(not_after)
    }

    async fn authorize_and_finalize(
        &self,
        order: &mut Order,
        names: &[String],
    ) -> Result<(String, String), String> {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(line)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(format!(
                        "authorization for {} is {other:?}",
                        authz.identifier()
                    ))
                }
            }
            let name = match &authz.identifier().identifier {
                Identifier::Dns(name) => name.to_ascii_lowercase(),
                other => return Err(format!("unexpected identifier {other:?}")),
            };
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| format!("the CA offers no tls-alpn-01 challenge for {name}"))?;
            let digest = challenge.key_authorization().digest();
            let config = challenge_config(&name, digest.as_ref()).map_err(line)?;
            self.challenges.insert(&name, config);
            tracing::info!("ACME: answering the tls-alpn-01 challenge for {name}");
            challenge.set_ready().await.map_err(line)?;
        }
        match order.poll_ready(&POLL).await.map_err(line)? {
            OrderStatus::Ready => {}
            status => return Err(self.why_invalid(order, status).await),
        }
        let gen = |e: rcgen::Error| format!("making the CSR: {e}");
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(gen)?;
        order.finalize_csr(csr.der()).await.map_err(line)?;
        let chain = order.poll_certificate(&POLL).await.map_err(line)?;
        Ok((key.serialize_pem(), chain))
    }

    /// Why an order did not become ready: the first challenge error the CA
    /// reported (the validation's problem document), on one line.
    async fn why_invalid(&self, order: &mut Order, status: OrderStatus) -> String {
        let mut authzs = order.authorizations();
        while let Some(Ok(mut authz)) = authzs.next().await {
            let who = authz.identifier().to_string();
            let Ok(state) = authz.refresh().await else {
                continue;
            };
            if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return format!("validation of {who} failed: {}", line(problem));
            }
        }
        format!("order is {status:?}")
    }

    /// The account: from the state folder, or created (and stored).
    async fn account(&mut self) -> Result<Account, String> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let builder = || match self.acme.ca_file() {
            Some(ca) => Account::builder_with_root(ca).map_err(line),
            None => Account::builder().map_err(line),
        };
        let path = self.acme.account_file();
        let account = match std::fs::read(&path) {
            Ok(bytes) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?;
                builder()?.from_credentials(creds).await.map_err(line)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact = self.acme.email().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.acme.directory(),
                        None,
                    )
                    .await
                    .map_err(line)?;
                let json = serde_json::to_vec(&creds).map_err(line)?;
                write_atomic(&path, &json).map_err(|e| format!("writing {path}: {e}"))?;
                tracing::info!(directory = %self.acme.directory(), "ACME: account created");
                account
            }
            Err(e) => return Err(format!("{path}: {e}")),
        };
        self.account = Some(account.clone());
        Ok(account)
    }
}

/// Writes `bytes` to `path` so that a crash never leaves half a file: a
/// temporary file in the same folder (mode 0600), fsync, rename over
/// `path`, fsync of the folder.
pub fn write_atomic(path: &str, bytes: &[u8]) -> std::io::Result<()> {
    let target = std::path::Path::new(path);
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_whole_files_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem").display().to_string();
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
