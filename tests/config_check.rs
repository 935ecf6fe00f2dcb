//! Certificate folders (`--cert-dir`), `ringterm check`, and configuration
//! errors: ten certificates and one bad file (exit 64 at start naming the
//! file; skipped on SIGHUP, its previous version serving, counted);
//! `check` on good and bad configurations; TOML errors with line:col;
//! config-file errors naming the file and key; relative paths resolved
//! against the config file's folder from another working directory.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

const EX_USAGE: i32 = 64;

/// A CA that signs leaf certificates, and a client trusting it.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cert-dir test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A combined PEM (key, leaf, CA) for `name`.
    fn combined(&self, name: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        format!("{}{}{}", key.serialize_pem(), leaf.pem(), self.cert.pem())
    }

    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// Whether a handshake for `name` succeeds, the certificate verified for
/// that name.
fn serves(addr: SocketAddr, client: &Arc<ClientConfig>, name: &str) -> bool {
    let mut sock = tcp_connect(addr);
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = ClientConnection::new(client.clone(), server_name).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

fn write_dir(ca: &Ca, dir: &Path, n: usize) {
    for i in 0..n {
        std::fs::write(
            dir.join(format!("n{i}.pem")),
            ca.combined(&format!("n{i}.test")),
        )
        .unwrap();
    }
}

#[test]
fn cert_dir_bad_file_is_exit_64_at_start() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    write_dir(&ca, dir.path(), 10);
    let bad = dir.path().join("broken.pem");
    std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let out = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            "--cert-dir",
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--cert-dir") && out.stderr.contains(bad.to_str().unwrap()),
        "{}",
        out.stderr
    );
    // `check` says the same.
    let out = run_to_exit(
        &[
            "check",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            "--cert-dir",
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert!(out.stderr.contains(bad.to_str().unwrap()), "{}", out.stderr);
}

#[test]
fn cert_dir_reload_skips_bad_files_and_keeps_their_previous_version() {
    let ca = Ca::new();
    let client = ca.client();
    let dir = tempfile::tempdir().unwrap();
    write_dir(&ca, dir.path(), 10);
    let rt = start_ringterm_args(&[
        "--backend".to_owned(),
        "127.0.0.1:9".to_owned(),
        "--cert-dir".to_owned(),
        dir.path().display().to_string(),
    ]);
    for i in 0..10 {
        assert!(serves(rt.addr(), &client, &format!("n{i}.test")), "n{i}");
    }
    assert!(!serves(rt.addr(), &client, "n10.test"));

    // n3 goes bad, a new bad file appears, n10 is added.
    std::fs::write(dir.path().join("n3.pem"), "garbage\n").unwrap();
    std::fs::write(
        dir.path().join("zz-broken.pem"),
        ca.combined("x.test").replace("PRIVATE KEY", "NOTHING"),
    )
    .unwrap();
    std::fs::write(dir.path().join("n10.pem"), ca.combined("n10.test")).unwrap();
    send_signal(rt.child.id(), "HUP");
    assert!(
        eventually(Duration::from_secs(10), || rt
            .metrics()
            .contains("ringterm_reloads_total{result=\"success\"} 1")),
        "{}",
        rt.stderr()
    );
    let metrics = rt.metrics();
    assert!(
        metrics.contains("ringterm_certificate_files_skipped_total 2\n"),
        "{metrics}"
    );
    for i in 0..=10 {
        assert!(serves(rt.addr(), &client, &format!("n{i}.test")), "n{i}");
    }
    assert!(!serves(rt.addr(), &client, "x.test"));
    assert!(metrics.contains("ringterm_certificate_not_after_seconds{name=\"n10.test\"}"));
    let stderr = rt.stderr();
    assert!(
        stderr.contains("n3.pem") && stderr.contains("zz-broken.pem"),
        "{stderr}"
    );
}

fn check(args: &[&str], cwd: &Path) -> Exited {
    let out = Command::new(bin())
        .arg("check")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run ringterm check");
    Exited {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn usage_line(out: &Exited) -> &str {
    assert_eq!(
        out.status.code(),
        Some(EX_USAGE),
        "stdout {}; stderr {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    out.stderr.trim_end()
}

/// A config file with relative paths, checked (and served) from another
/// working directory; then broken in several ways.
#[test]
fn check_good_and_bad_configs_relative_paths_and_error_sources() {
    let ca = Ca::new();
    let etc = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(etc.path().join("certs")).unwrap();
    write_dir(&ca, &etc.path().join("certs"), 3);
    std::fs::write(etc.path().join("main.pem"), ca.combined("main.test")).unwrap();
    std::fs::write(etc.path().join("ca.pem"), ca.cert.pem()).unwrap();
    let config = etc.path().join("ringterm.toml");
    let good = "listen = [\"127.0.0.1:0\"]\nbackend = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\ncert = \"main.pem\"\ncert-dirs = [\"certs\"]\nclient-ca = \"ca.pem\"\nclient-auth = \"optional\"\n";
    std::fs::write(&config, good).unwrap();
    let cfg = config.to_str().unwrap();

    let out = check(&["--config", cfg], elsewhere.path());
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    for want in [
        "OK",
        "listen: 127.0.0.1:0",
        "backend: 127.0.0.1:9, 127.0.0.1:10",
        "certificates: 4",
        "main.test: expires ",
        "n2.test: expires ",
        "client CA: ",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in {}", out.stdout);
    }
    assert!(out.stdout.lines().count() < 25, "{}", out.stdout);

    // The same file serves from another working directory.
    let rt = {
        let mut child = Command::new(bin())
            .args(["--config", cfg, "--workers", "1"])
            .current_dir(elsewhere.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The startup lines go to stderr, through the log.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 {
            if let Some((_, rest)) = line.split_once("listening on ") {
                let a = rest.split_whitespace().next().unwrap_or("");
                addr = Some(a.parse::<SocketAddr>().unwrap());
                break;
            }
            line.clear();
        }
        // Keep draining the log, so that ringterm never writes to a closed
        // pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        (child, addr.expect("listening line"))
    };
    let (mut child, addr) = rt;
    assert!(serves(addr, &ca.client(), "main.test"));
    assert!(serves(addr, &ca.client(), "n1.test"));
    let _ = child.kill();
    let _ = child.wait();

    // A TOML syntax error: file:line:col.
    std::fs::write(&config, format!("{good}workers = \n")).unwrap();
    let out = check(&["--config", cfg], elsewhere.path());
    let line = usage_line(&out);
    assert!(line.contains(&format!("{cfg}:7:")), "{line}");

    // A bad value in the file names the file, the value's line and
    // column, and the key, not the flag.
    std::fs::write(&config, good.replace("127.0.0.1:10", "nope")).unwrap();
    let out = check(&["--config", cfg], elsewhere.path());
    let line = usage_line(&out);
    assert!(line.contains(&format!("{cfg}:2:11: backend: ")), "{line}");
    // So does a value that fails its option's declared check.
    std::fs::write(&config, format!("{good}ring-entries = 100\n")).unwrap();
    let out = check(&["--config", cfg], elsewhere.path());
    assert_eq!(
        usage_line(&out),
        format!("ringterm: {cfg}:7:16: ring-entries: 100 must be a power of two from 8 to 32768")
    );
    assert!(!line.contains("--backend"), "{line}");
    // The same value from the flag names the flag.
    let out = check(&["--config", cfg, "--backend", "nope"], elsewhere.path());
    assert!(
        usage_line(&out).starts_with("ringterm: --backend: "),
        "{}",
        out.stderr
    );

    // A key where the client CA should be: blames client-ca (from the
    // file) or --client-ca (from the flag), not --cert/--key.
    let combined = ca.combined("k.test");
    let key_pem = &combined[..combined.find("-----BEGIN CERTIFICATE").unwrap()];
    std::fs::write(etc.path().join("key.pem"), key_pem).unwrap();
    std::fs::write(
        &config,
        good.replace("client-ca = \"ca.pem\"", "client-ca = \"key.pem\""),
    )
    .unwrap();
    let out = check(&["--config", cfg], elsewhere.path());
    let line = usage_line(&out);
    assert!(
        line.contains(&format!("{cfg}:5:13: client-ca: ")) && line.contains("key.pem"),
        "{line}"
    );
    assert!(line.contains("no certificate"), "{line}");
    std::fs::write(&config, good).unwrap();
    let key_only = etc.path().join("key.pem");
    let out = check(
        &["--config", cfg, "--client-ca", key_only.to_str().unwrap()],
        elsewhere.path(),
    );
    let line = usage_line(&out);
    assert!(
        line.starts_with("ringterm: --client-ca ") && line.contains("no certificate"),
        "{line}"
    );

    // A relative certificate path that is missing is named as resolved.
    std::fs::write(&config, good.replace("main.pem", "gone.pem")).unwrap();
    let out = check(&["--config", cfg], elsewhere.path());
    let line = usage_line(&out);
    assert!(
        line.contains(&etc.path().join("gone.pem").display().to_string()),
        "{line}"
    );

    // A port another socket (without SO_REUSEPORT) holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(&config, good.replace("127.0.0.1:0", &addr)).unwrap();
    let out = check(&["--config", cfg], elsewhere.path());
    let line = usage_line(&out);
    assert!(line.contains(&format!("--listen {addr}")), "{line}");
}

/// `check` next to a running ringterm on the same port: binding without
/// listening, with SO_REUSEPORT, succeeds (the ExecReload case).
#[test]
fn check_passes_next_to_the_running_server() {
    let certs = TestCerts::generate();
    let rt = start_ringterm_args(&{
        let mut a = vec!["--backend".to_owned(), "127.0.0.1:9".to_owned()];
        a.extend(certs.args());
        a
    });
    let listen = rt.addr().to_string();
    let mut args = vec!["--listen", &listen, "--backend", "127.0.0.1:9"];
    let c = certs.cert();
    let k = certs.key();
    args.extend(["--cert", &c, "--key", &k]);
    let out = check(&args, Path::new("/"));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    // And the server still serves.
    assert!(tls_connect(rt.addr(), certs.tls13()).is_ok());
}

/// A reload that fails (the key no longer matches the certificate) changes
/// nothing, and is counted as a failure with its timestamp.
#[test]
fn failed_reload_is_counted_and_keeps_the_old_configuration() {
    let certs = TestCerts::generate();
    let rt = start_ringterm_args(&{
        let mut a = vec!["--backend".to_owned(), "127.0.0.1:9".to_owned()];
        a.extend(certs.args());
        a
    });
    let before = rt.metrics();
    assert!(before.contains("ringterm_reloads_total{result=\"failure\"} 0"));
    assert!(before.contains("ringterm_last_reload_timestamp_seconds 0"));
    assert!(before.contains("ringterm_build_info{version=\""));
    let other = TestCerts::generate();
    std::fs::write(&certs.key_path, &other.key_pem).unwrap();
    send_signal(rt.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(10), || rt
        .metrics()
        .contains("ringterm_reloads_total{result=\"failure\"} 1")));
    let after = rt.metrics();
    assert!(after.contains("ringterm_last_reload_success 0"), "{after}");
    assert!(!after.contains("ringterm_last_reload_timestamp_seconds 0\n"));
    assert!(tls_connect(rt.addr(), certs.tls13()).is_ok());
    assert!(rt.stderr().contains("reload failed"), "{}", rt.stderr());
}

/// The systemd unit checks the configuration it starts with before it
/// sends SIGHUP (`systemctl reload` fails on a broken configuration).
#[test]
fn systemd_unit_checks_before_reloading() {
    let unit = include_str!("../config/ringterm.service");
    let reload: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecReload="))
        .collect();
    assert_eq!(reload.len(), 2, "{reload:?}");
    assert!(reload[0].contains("ringterm check --config "), "{reload:?}");
    assert!(reload[1].contains("kill -HUP $MAINPID"), "{reload:?}");
    let start = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    let config = start
        .split("--config ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("--config in ExecStart");
    assert!(reload[0].ends_with(config), "{reload:?} vs {start}");
}
