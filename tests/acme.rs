//! Built-in ACME (TLS-ALPN-01) against a real ACME server: Debian's
//! `pebble` (Let's Encrypt's test CA; `tools/test` installs it), started here
//! on free loopback ports with `PEBBLE_VA_NOSLEEP=1`, its validation port
//! pointed at ringterm's listener, and `pebble-challtestsrv` as its DNS
//! server (every name is 127.0.0.1). Pebble's HTTPS certificate comes from
//! a CA made here, which ringterm trusts with `--acme-ca-file`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const A: &str = "a.example.com";
const B: &str = "b.example.com";

/// Free loopback ports, distinct (all bound at once, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// The pebble tests run one at a time: ports picked free and released are
/// not taken by another test's pebble before they are bound.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `pebble` and its DNS server, killed on drop.
struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    /// The port pebble validates on: ringterm's listener.
    tls_port: u16,
    /// The directory URL.
    directory: String,
    /// The management API.
    management: SocketAddr,
    /// The CA of pebble's HTTPS certificate (for `--acme-ca-file`).
    ca_file: PathBuf,
    ca: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on a free port (`tls_port`,
    /// where ringterm is to listen), issuing
    /// certificates valid for `validity_s` seconds, its VA sleeping
    /// `va_sleep_s` seconds before each validation (0: none).
    fn start(validity_s: u64, va_sleep_s: u64) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // A CA and pebble's HTTPS certificate for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();

        let [tls_port, dns_port, dns_mgmt, listen, management, http] = free_ports();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble) must be installed");
        let listen = SocketAddr::from(([127, 0, 0, 1], listen));
        let management = SocketAddr::from(([127, 0, 0, 1], management));
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_s,
            }
        });
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_file)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if va_sleep_s == 0 {
            cmd.env("PEBBLE_VA_NOSLEEP", "1");
        } else {
            cmd.env("PEBBLE_VA_SLEEPTIME", va_sleep_s.to_string());
        }
        let pebble = cmd
            .spawn()
            .expect("pebble (Debian package pebble) must be installed");
        let up = eventually(Duration::from_secs(10), || {
            TcpStream::connect(listen).is_ok() && TcpStream::connect(management).is_ok()
        });
        assert!(up, "pebble did not start listening");
        Pebble {
            tls_port,
            pebble: Some(pebble),
            dns,
            directory: format!("https://{listen}/dir"),
            management,
            ca_file,
            ca: ca_cert.der().clone(),
            _dir: dir,
        }
    }

    /// The root that signs the certificates pebble issues (management API
    /// `/roots/0`).
    fn issuing_root(&self) -> CertificateDer<'static> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = client_config(roots, &[]);
        let sock = tcp_connect(self.management);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = ClientConnection::new(config, name).unwrap();
        let mut s = StreamOwned::new(conn, sock);
        s.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp);
        let pem = &text[text.find("-----BEGIN").expect("a PEM root")..];
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A client trusting only pebble's issuing root.
fn trusting(root: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    client_config(roots, &[b"h2", b"http/1.1"])
}

/// A TLS connection to `addr` for `name`, handshake done.
fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut sock = tcp_connect(addr);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// Connects for `name` trusting `root`, echoes a few bytes, and returns
/// the served leaf certificate.
fn verified_echo(addr: SocketAddr, name: &str, root: &CertificateDer<'static>) -> Vec<u8> {
    let mut s = connect(addr, name, trusting(root))
        .unwrap_or_else(|e| panic!("verified handshake for {name}: {e}"));
    let leaf = s.conn.peer_certificates().unwrap()[0].to_vec();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    leaf
}

/// ringterm with ACME for `names` against `pebble`, listening on `port`.
fn start_acme(
    pebble: &Pebble,
    port: u16,
    state: &Path,
    backend: SocketAddr,
    names: &[&str],
    extra: &[&str],
) -> Ringterm {
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--workers".into(),
        "1".into(),
        "--backend".into(),
        backend.to_string(),
        "--acme-directory".into(),
        pebble.directory.clone(),
        "--acme-ca-file".into(),
        pebble.ca_file.display().to_string(),
        "--acme-state-dir".into(),
        state.display().to_string(),
        "--acme-accept-tos".into(),
        "--acme-retry-min".into(),
        "1".into(),
    ];
    for n in names {
        args.extend(["--acme-domain".to_owned(), (*n).to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Ringterm::start(&args)
}

/// Stops `rt` and waits until its port is free: a killed process's
/// io_uring is torn down after it exits, and its listening sockets with it.
fn stop(rt: Ringterm, port: u16) {
    drop(rt);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let free = eventually(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(free, "port {port} still accepts after the process exited");
}

fn obtained(m: &str) -> bool {
    m.contains("ACME: certificate obtained")
}

#[test]
fn terms_of_service_not_accepted_is_exit_64() {
    let out = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:1",
            "--acme-domain",
            A,
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "ringterm: --acme-accept-tos: ACME needs the CA's terms of service accepted"
        ),
        "{lines:?}"
    );
}

/// First issuance for two names, verified against pebble's root; then a
/// restart serves from the state folder at once, with no new order; then,
/// with pebble gone and renewal due, orders fail and are retried with a
/// growing delay while the certificate keeps serving.
#[test]
fn issuance_restart_and_failure() {
    let _serial = serial();
    let pebble_validity = 100 * 86_400;
    let mut pebble = Pebble::start(pebble_validity, 0);
    let port = pebble.tls_port;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("acme");
    let echo = echo_backend();

    let started = Instant::now();
    let rt = start_acme(&pebble, port, &state_dir, echo.addr, &[A, B], &[]);
    let line = rt.wait_log(Duration::from_secs(60), obtained);
    assert!(line.is_some(), "no certificate; stderr: {}", rt.stderr());
    eprintln!(
        "time to first certificate against pebble: {:.2} s (from process start)",
        started.elapsed().as_secs_f64()
    );
    // The state folder is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let root = pebble.issuing_root();
    let leaf_a = verified_echo(rt.addr(), A, &root);
    let leaf_b = verified_echo(rt.addr(), B, &root);
    assert_eq!(leaf_a, leaf_b, "one certificate for both names");
    let m = rt.metrics();
    assert!(
        m.contains("ringterm_acme_orders_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(m.contains("ringterm_acme_next_renewal_timestamp_seconds{name=\"a.example.com\"}"));

    // `ringterm check` reports the ACME settings and the state file.
    let check = run_to_exit(
        &[
            "check",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:1",
            "--acme-domain",
            A,
            "--acme-domain",
            B,
            "--acme-directory",
            &pebble.directory,
            "--acme-state-dir",
            &state_dir.display().to_string(),
            "--acme-accept-tos",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        check.stdout.contains("acme: directory https://"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("acme a.example.com, b.example.com: expires"),
        "{}",
        check.stdout
    );
    stop(rt, port);

    // Restart: the state file serves at once, and no order is made.
    let rt = start_acme(&pebble, port, &state_dir, echo.addr, &[A, B], &[]);
    assert_eq!(verified_echo(rt.addr(), A, &root), leaf_a);
    assert!(
        rt.wait_log(Duration::from_secs(3), |m| m.contains("ACME: ordering")
            || m.contains("ACME: renewing"))
            .is_none(),
        "a new order after a restart: {}",
        rt.stderr()
    );
    let m = rt.metrics();
    assert!(
        m.contains("ringterm_acme_orders_total{result=\"success\"} 0"),
        "{m}"
    );
    stop(rt, port);

    // Pebble gone, renewal due (renew 200 days before a 100-day expiry):
    // failures, retried after 1, 2, 4... seconds; the certificate serves on.
    pebble.stop();
    let rt = start_acme(
        &pebble,
        port,
        &state_dir,
        echo.addr,
        &[A, B],
        &["--acme-renew-before", "200"],
    );
    assert_eq!(verified_echo(rt.addr(), A, &root), leaf_a);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let line = rt
            .wait_log(Duration::from_secs(15), |m| m.contains("ACME order failed"))
            .unwrap_or_else(|| panic!("no failure line; stderr: {}", rt.stderr()));
        assert_eq!(line.lines().count(), 1);
        let delay: u64 = line
            .split("retry_in_s=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no retry_in_s in {line:?}"));
        delays.push(delay);
    }
    assert_eq!(delays, [1, 2, 4], "backoff doubles");
    assert_eq!(verified_echo(rt.addr(), B, &root), leaf_a);
    let m = rt.metrics();
    assert!(
        m.contains("ringterm_acme_orders_total{result=\"failure\"} 3"),
        "{m}"
    );
}

/// While a challenge is pending (pebble's VA waits before validating), a
/// normal client offering h2,http/1.1 for the same name is proxied, and an
/// acme-tls/1 ClientHello for a name with no pending challenge is refused.
#[test]
fn proxying_while_a_challenge_is_pending() {
    let _serial = serial();
    let pebble = Pebble::start(100 * 86_400, 3);
    let port = pebble.tls_port;
    let state = tempfile::tempdir().unwrap();
    let echo = echo_backend();
    let rt = start_acme(
        &pebble,
        port,
        state.path(),
        echo.addr,
        &[A],
        &["--alpn", "h2,http/1.1"],
    );
    rt.wait_log(Duration::from_secs(30), |m| {
        m.contains("answering the tls-alpn-01 challenge for a.example.com")
    })
    .unwrap_or_else(|| panic!("no challenge; stderr: {}", rt.stderr()));

    // The placeholder serves until the certificate arrives: trust anything.
    let any = insecure_client(&[b"h2", b"http/1.1"]);
    let mut s = connect(rt.addr(), A, any).expect("handshake while a challenge is pending");
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"proxied").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"proxied");
    drop(s);

    let acme = insecure_client(&[b"acme-tls/1"]);
    let err = connect(rt.addr(), "c.example.com", acme).unwrap_err();
    assert!(
        err.to_string().contains("UnrecognisedName") || err.to_string().contains("unrecognized"),
        "{err}"
    );

    assert!(
        rt.wait_log(Duration::from_secs(30), obtained).is_some(),
        "no certificate; stderr: {}",
        rt.stderr()
    );
    let root = pebble.issuing_root();
    verified_echo(rt.addr(), A, &root);
}

/// Renewal while a connection streams: pebble issues 20-second
/// certificates and ringterm renews 15 seconds before expiry; a stream
/// through the old certificate goes on across the swap and loses nothing,
/// and new connections get the new certificate.
#[test]
fn renewal_while_streaming() {
    let _serial = serial();
    let pebble = Pebble::start(20, 0);
    let port = pebble.tls_port;
    let state = tempfile::tempdir().unwrap();
    let echo = echo_backend();
    let renew_before = format!("{}", 15.0 / 86_400.0);
    let rt = start_acme(
        &pebble,
        port,
        state.path(),
        echo.addr,
        &[A],
        &["--acme-renew-before", &renew_before],
    );
    assert!(
        rt.wait_log(Duration::from_secs(30), obtained).is_some(),
        "no certificate; stderr: {}",
        rt.stderr()
    );
    let root = pebble.issuing_root();
    let mut s = connect(rt.addr(), A, trusting(&root)).unwrap();
    let first = s.conn.peer_certificates().unwrap()[0].to_vec();

    // Stream in lockstep (a chunk out, its echo back) until the renewal is
    // in, then a little longer.
    let renewed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let renewed = renewed.clone();
        std::thread::spawn(move || {
            let (mut sent, mut got) = (Vec::new(), Vec::new());
            let mut after = 0;
            while after < 32 {
                if renewed.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                }
                let chunk = random_bytes(16 * 1024 + after);
                s.write_all(&chunk).unwrap();
                let mut back = vec![0u8; chunk.len()];
                s.read_exact(&mut back).unwrap();
                sent.extend_from_slice(&chunk);
                got.extend_from_slice(&back);
                std::thread::sleep(Duration::from_millis(20));
            }
            (sent, got)
        })
    };
    let renewal = rt.wait_log(Duration::from_secs(30), obtained);
    renewed.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, got) = streamer.join().expect("the stream across the renewal");
    assert!(renewal.is_some(), "no renewal; stderr: {}", rt.stderr());
    assert!(sent.len() > 32 * 16 * 1024);
    assert_eq!(sha256(&sent), sha256(&got), "nothing lost across the swap");
    let second = verified_echo(rt.addr(), A, &root);
    assert_ne!(first, second, "new connections get the renewed certificate");
}

/// Accepts any server certificate (the placeholder, the challenge's).
fn insecure_client(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(AnyCert::all())
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}
