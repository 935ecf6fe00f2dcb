//! Certificates by SNI (exact, wildcard, default, strict), ECDSA vs RSA,
//! ALPN, TLS versions, cipher suites, key exchange groups, mutual TLS, and
//! hot reload of certificates on SIGHUP. Real rustls clients; every check
//! looks at what the client saw.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, SignatureScheme, StreamOwned};

/// A client that accepts any certificate, with options.
struct Client {
    schemes: Vec<SignatureScheme>,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    groups: Option<Vec<&'static str>>,
    alpn: Vec<Vec<u8>>,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            schemes: all_schemes(),
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            groups: None,
            alpn: Vec::new(),
            client_cert: None,
        }
    }
}

impl Client {
    fn config(self) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(groups) = &self.groups {
            provider
                .kx_groups
                .retain(|g| groups.contains(&g.name().as_str().unwrap_or("")));
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&self.versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert {
                schemes: self.schemes,
            }));
        let mut config = match self.client_cert {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        Arc::new(config)
    }
}

type Stream = StreamOwned<ClientConnection, std::net::TcpStream>;

fn connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> Result<Stream, String> {
    let mut sock = tcp_connect(addr);
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// The leaf certificate the server presented for `sni`.
fn presented(addr: SocketAddr, sni: &str, client: Client) -> Vec<u8> {
    let s = connect(addr, sni, client.config()).unwrap_or_else(|e| panic!("{sni}: {e}"));
    s.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A certificate for `names` with algorithm `alg`, written to `dir`.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

/// A key pair for `alg`; RSA keys come from aws-lc-rs (rcgen's ring
/// backend cannot generate them).
fn key_pair(alg: &'static rcgen::SignatureAlgorithm) -> rcgen::KeyPair {
    if alg == &rcgen::PKCS_RSA_SHA256 {
        use aws_lc_rs::encoding::AsDer;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = kp.as_der().unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref());
        return rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).unwrap();
    }
    rcgen::KeyPair::generate_for(alg).unwrap()
}

fn make_cert(
    dir: &Path,
    file: &str,
    names: &[&str],
    alg: &'static rcgen::SignatureAlgorithm,
) -> Cert {
    let kp = key_pair(alg);
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let c = dir.join(format!("{file}.pem"));
    let k = dir.join(format!("{file}.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, kp.serialize_pem()).unwrap();
    Cert {
        cert: c,
        key: k,
        der: cert.der().to_vec(),
    }
}

fn cert_args(certs: &[&Cert]) -> Vec<String> {
    certs
        .iter()
        .flat_map(|c| {
            [
                "--cert".to_owned(),
                c.cert.display().to_string(),
                "--key".to_owned(),
                c.key.display().to_string(),
            ]
        })
        .collect()
}

fn start(backend: SocketAddr, args: &[String]) -> Ringterm {
    let mut all = vec!["--backend".to_owned(), backend.to_string()];
    all.extend(args.iter().cloned());
    start_ringterm_args(&all)
}

const EC: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

#[test]
fn sni_selects_exact_wildcard_and_default_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], EC);
    let b = make_cert(dir.path(), "b", &["b.test"], EC);
    let c = make_cert(dir.path(), "c", &["c.test", "alias.test"], EC);
    let w = make_cert(dir.path(), "w", &["*.wild.test"], EC);
    let echo = echo_backend();
    let rt = start(echo.addr, &cert_args(&[&a, &b, &c, &w]));
    let addr = rt.addr();
    assert_eq!(presented(addr, "a.test", Client::default()), a.der);
    assert_eq!(presented(addr, "b.test", Client::default()), b.der);
    assert_eq!(presented(addr, "c.test", Client::default()), c.der);
    assert_eq!(presented(addr, "ALIAS.test", Client::default()), c.der);
    assert_eq!(presented(addr, "x.wild.test", Client::default()), w.der);
    // Unknown names and IP addresses (no SNI is sent for an IP) get the
    // default, the first certificate.
    assert_eq!(presented(addr, "unknown.test", Client::default()), a.der);
    assert_eq!(presented(addr, "y.x.wild.test", Client::default()), a.der);
    assert_eq!(presented(addr, "127.0.0.1", Client::default()), a.der);
    // Data flows on an SNI-selected connection.
    let mut s = connect(addr, "b.test", Client::default().config()).unwrap();
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

#[test]
fn strict_sni_refuses_unknown_names_with_unrecognized_name() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], EC);
    let echo = echo_backend();
    let mut args = cert_args(&[&a]);
    args.extend(["--unknown-sni".into(), "reject".into()]);
    let rt = start(echo.addr, &args);
    assert_eq!(presented(rt.addr(), "a.test", Client::default()), a.der);
    let Err(err) = connect(rt.addr(), "other.test", Client::default().config()) else {
        panic!("an unknown name was accepted");
    };
    assert!(
        err.contains("UnrecognisedName") || err.contains("unrecognised"),
        "{err}"
    );
    let text = rt.wait_metric("ringterm_alerts_sent_total", |n| n == 1);
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_alerts_sent_total{alert=\"unrecognized_name\"}"
        ),
        1
    );
}

#[test]
fn ecdsa_or_rsa_certificate_by_client_signature_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = make_cert(dir.path(), "rsa", &["both.test"], &rcgen::PKCS_RSA_SHA256);
    let ec = make_cert(dir.path(), "ec", &["both.test"], EC);
    let echo = echo_backend();
    let rt = start(echo.addr, &cert_args(&[&rsa, &ec]));
    // A client that verifies ECDSA gets the ECDSA certificate (cheaper),
    // even though RSA was configured first.
    assert_eq!(presented(rt.addr(), "both.test", Client::default()), ec.der);
    let rsa_only = || Client {
        schemes: vec![
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ],
        ..Client::default()
    };
    assert_eq!(presented(rt.addr(), "both.test", rsa_only()), rsa.der);
    let tls12_rsa = Client {
        versions: vec![&rustls::version::TLS12],
        ..rsa_only()
    };
    assert_eq!(presented(rt.addr(), "both.test", tls12_rsa), rsa.der);
}

#[test]
fn alpn_versions_suites_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], EC);
    let echo = echo_backend();

    // ALPN: the server's preference among what the client offers.
    let mut args = cert_args(&[&a]);
    args.extend(["--alpn".into(), "h2,http/1.1".into()]);
    let rt = start(echo.addr, &args);
    let s = connect(
        rt.addr(),
        "a.test",
        Client {
            alpn: vec![b"http/1.1".to_vec(), b"h2".to_vec()],
            ..Client::default()
        }
        .config(),
    )
    .unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The default key exchange is the hybrid post-quantum group.
    assert_eq!(
        s.conn
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str()),
        Some("X25519MLKEM768")
    );
    let s = connect(
        rt.addr(),
        "a.test",
        Client {
            alpn: vec![b"http/1.1".to_vec()],
            ..Client::default()
        }
        .config(),
    )
    .unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(rt);

    // --max-tls 1.2 refuses a TLS 1.3-only client; --min-tls 1.3 a 1.2 one.
    let mut args = cert_args(&[&a]);
    args.extend(["--max-tls".into(), "1.2".into()]);
    let rt = start(echo.addr, &args);
    let only13 = Client {
        versions: vec![&rustls::version::TLS13],
        ..Client::default()
    };
    assert!(connect(rt.addr(), "a.test", only13.config()).is_err());
    let s = connect(rt.addr(), "a.test", Client::default().config()).unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    drop(rt);
    let mut args = cert_args(&[&a]);
    args.extend(["--min-tls".into(), "1.3".into()]);
    let rt = start(echo.addr, &args);
    let only12 = Client {
        versions: vec![&rustls::version::TLS12],
        ..Client::default()
    };
    assert!(connect(rt.addr(), "a.test", only12.config()).is_err());
    drop(rt);

    // Cipher suites and groups.
    let mut args = cert_args(&[&a]);
    args.extend([
        "--ciphers".into(),
        "TLS13_CHACHA20_POLY1305_SHA256".into(),
        "--groups".into(),
        "secp384r1,secp256r1".into(),
    ]);
    let rt = start(echo.addr, &args);
    let s = connect(rt.addr(), "a.test", Client::default().config()).unwrap();
    assert_eq!(
        s.conn.negotiated_cipher_suite().map(|c| c.suite()),
        Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
    // Only the configured groups (rustls takes the client's order among
    // them, to avoid a HelloRetryRequest where it can).
    let group = s
        .conn
        .negotiated_key_exchange_group()
        .and_then(|g| g.name().as_str());
    assert!(
        matches!(group, Some("secp384r1" | "secp256r1")),
        "{group:?}"
    );
    let x25519_only = Client {
        groups: Some(vec!["X25519"]),
        ..Client::default()
    };
    assert!(connect(rt.addr(), "a.test", x25519_only.config()).is_err());
}

#[test]
fn bad_policy_flags_exit_64_naming_the_flag() {
    let certs = TestCerts::generate();
    for (flag, value, expect) in [
        (
            "--ciphers",
            "TLS_NOPE",
            "--ciphers: unknown cipher suite \"TLS_NOPE\"",
        ),
        ("--groups", "X448", "--groups: unknown group \"X448\""),
        ("--min-tls", "1.0", "--min-tls: 1.0 must be 1.2 or 1.3"),
        (
            "--client-ca",
            "/nonexistent/ca.pem",
            "--client-ca /nonexistent/ca.pem",
        ),
    ] {
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".into(),
            "--backend".into(),
            "127.0.0.1:9".into(),
        ];
        args.extend(certs.args());
        args.extend([flag.to_owned(), value.to_owned()]);
        let out = run_to_exit(&args, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(64), "{flag}: {out:?}");
        let line = out.stderr.trim();
        assert!(
            line.starts_with(&format!("ringterm: {expect}")),
            "{flag}: {line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
    }
}

/// Sends `msg` and reads the echo; an error if the server refused us.
fn echo_once(s: &mut Stream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    s.flush()?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn mutual_tls_required_and_optional() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"], EC);
    let (ca, chain, key) = client_pki(dir.path());
    let echo = echo_backend();
    for mode in ["required", "optional"] {
        let mut args = cert_args(&[&a]);
        args.extend([
            "--client-ca".into(),
            ca.display().to_string(),
            "--client-auth".into(),
            mode.into(),
        ]);
        let rt = start(echo.addr, &args);
        // With a certificate: accepted.
        let with = Client {
            client_cert: Some((chain.clone(), key.clone_key())),
            ..Client::default()
        };
        let mut s = connect(rt.addr(), "a.test", with.config()).unwrap();
        assert_eq!(echo_once(&mut s, b"mtls").unwrap(), b"mtls");
        // Without: TLS 1.3 clients learn of the refusal on their first read.
        let without = connect(rt.addr(), "a.test", Client::default().config());
        let refused = match without {
            Err(_) => true,
            Ok(mut s) => echo_once(&mut s, b"anon").is_err(),
        };
        assert_eq!(refused, mode == "required", "{mode}");
        // A certificate from another CA is refused in both modes.
        let (_, other_chain, other_key) = client_pki(tempfile::tempdir().unwrap().path());
        let wrong = Client {
            client_cert: Some((other_chain, other_key)),
            ..Client::default()
        };
        let refused = match connect(rt.addr(), "a.test", wrong.config()) {
            Err(_) => true,
            Ok(mut s) => echo_once(&mut s, b"wrong").is_err(),
        };
        assert!(
            refused,
            "{mode}: a certificate from another CA was accepted"
        );
    }
}

#[test]
fn sighup_reloads_certificates_without_touching_established_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_cert(dir.path(), "live", &["a.test"], EC);
    let echo = echo_backend();
    let mut rt = start(echo.addr, &cert_args(&[&old]));
    let addr = rt.addr();
    let mut established = connect(addr, "a.test", Client::default().config()).unwrap();
    assert_eq!(echo_once(&mut established, b"before").unwrap(), b"before");

    // Swap the files on disk (same paths), then SIGHUP.
    let new = make_cert(dir.path(), "live", &["a.test"], EC);
    assert_ne!(old.der, new.der);
    send_signal(rt.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || presented(
        addr,
        "a.test",
        Client::default()
    ) == new.der));
    // The established connection keeps streaming, every byte intact.
    let payload = random_bytes(256 * 1024);
    for chunk in payload.chunks(16 * 1024) {
        assert_eq!(echo_once(&mut established, chunk).unwrap(), chunk);
    }

    // A reload that fails (a broken key) keeps the current certificate and
    // logs one line.
    std::fs::write(&new.key, "not a key").unwrap();
    send_signal(rt.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || rt
        .stderr()
        .contains("reload failed, keeping the old configuration")));
    assert_eq!(presented(addr, "a.test", Client::default()), new.der);
    assert_eq!(echo_once(&mut established, b"after").unwrap(), b"after");
    rt.assert_alive();
}

/// A backend that says its name, then closes.
fn named_backend(name: &'static str) -> SocketAddr {
    spawn_backend(move |mut s| {
        let _ = s.write_all(name.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// Connects with `sni` and reads the backend's name.
fn which_backend(addr: SocketAddr, sni: &str) -> String {
    let mut s = connect(addr, sni, Client::default().config()).unwrap();
    let (data, _) = tls_read_to_end(&mut s);
    String::from_utf8(data).unwrap()
}

#[test]
fn routes_by_sni_round_robin_and_failover() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test", "*.api.test"], EC);
    let (b1, b2, c) = (named_backend("b1"), named_backend("b2"), named_backend("c"));
    let down = refused_addr();
    let mut args = cert_args(&[&a]);
    args.extend([
        "--route".to_owned(),
        format!("api.test,*.api.test={c}"),
        "--route".to_owned(),
        format!("flaky.test={down},{b2}"),
    ]);
    let mut all = vec![
        "--backend".to_owned(),
        b1.to_string(),
        "--backend".into(),
        b2.to_string(),
    ];
    all.extend(args);
    let rt = start_ringterm_args(&all);
    let addr = rt.addr();

    // Default pool: round-robin over the two --backend addresses.
    let got: Vec<String> = (0..6).map(|_| which_backend(addr, "a.test")).collect();
    assert_eq!(got.iter().filter(|n| *n == "b1").count(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|n| *n == "b2").count(), 3, "{got:?}");
    // Per-SNI route, exact and wildcard.
    assert_eq!(which_backend(addr, "api.test"), "c");
    assert_eq!(which_backend(addr, "v1.api.test"), "c");
    // A pool with a dead backend: every connection still succeeds (the
    // next backend is tried once), and the dead one is then taken out, so
    // it is tried only once within the ejection time.
    for _ in 0..6 {
        assert_eq!(which_backend(addr, "flaky.test"), "b2");
    }
    let text = rt.metrics();
    assert_eq!(
        metric_sum(&text, "ringterm_backend_retries_total"),
        1,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "ringterm_backend_connect_failures_total"),
        1
    );
}

#[test]
fn certificate_chains_are_sent_whole() {
    let dir = tempfile::tempdir().unwrap();
    // root → intermediate → leaf; the file holds leaf then intermediate.
    let ca = |cn: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p
    };
    let root_key = rcgen::KeyPair::generate_for(EC).unwrap();
    let root = ca("test root").self_signed(&root_key).unwrap();
    let int_key = rcgen::KeyPair::generate_for(EC).unwrap();
    let int = ca("test intermediate")
        .signed_by(&int_key, &root, &root_key)
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(EC).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["chain.test".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &int, &int_key)
        .unwrap();
    let cert = dir.path().join("chain.pem");
    let key = dir.path().join("chain.key");
    std::fs::write(&cert, format!("{}{}", leaf.pem(), int.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let echo = echo_backend();
    let rt = start(
        echo.addr,
        &[
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ],
    );
    // A client that trusts only the root verifies the whole chain.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.der().clone()).unwrap();
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let s = connect(rt.addr(), "chain.test", Arc::new(config)).unwrap();
    let chain = s.conn.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].as_ref(), leaf.der().as_ref());
    assert_eq!(chain[1].as_ref(), int.der().as_ref());
}
