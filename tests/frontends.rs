//! `[[frontend]]` tables: each listener serves its own frontend's
//! certificate, ALPN and backends (and mutual TLS); `ringterm check` lists
//! them; a reload applies each frontend's certificates and backends; a bad
//! table exits 64 naming the file, the table and the key (or the line and
//! column).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

fn named_backend(name: &'static str) -> SocketAddr {
    spawn_backend(move |mut s| {
        let _ = s.write_all(name.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// A combined PEM (key + certificate) for `names` in `dir/file`; returns
/// the certificate's PEM.
fn cert(dir: &Path, file: &str, names: &[&str]) -> String {
    let (cert, key) = ringterm::tls::generate_self_signed(names).unwrap();
    std::fs::write(dir.join(file), format!("{cert}{key}")).unwrap();
    cert
}

/// A client trusting every certificate in `pems`, offering `alpn`.
fn client(pems: &[&str], alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for pem in pems {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Full handshakes only: a resumed one shows the stored certificate.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// What one connection saw: the server's certificate, the ALPN protocol,
/// and the backend's name.
#[derive(Debug)]
struct Seen {
    cert: Vec<u8>,
    alpn: Option<String>,
    backend: String,
}

fn visit(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> Result<Seen, String> {
    let mut sock = tcp_connect(addr);
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = ClientConnection::new(config.clone(), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut s = StreamOwned::new(conn, sock);
    let (data, _) = tls_read_to_end(&mut s);
    Ok(Seen {
        cert,
        alpn,
        backend: String::from_utf8(data).unwrap(),
    })
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

const FILE: &str = "ringterm.toml";

fn config(web: SocketAddr, api: SocketAddr, api_cert: &str) -> String {
    format!(
        r#"workers = 2
admin = "127.0.0.1:0"
alpn = ["http/1.1"]

[[frontend]]
name = "web"
listen = ["127.0.0.1:0"]
cert = "web.pem"
backend = "{web}"

[[frontend]]
name = "api"
listen = ["127.0.0.1:0"]
cert = "{api_cert}"
backend = "{api}"
alpn = ["h2", "http/1.1"]
"#
    )
}

#[test]
fn each_listener_serves_its_frontend() {
    let dir = tempfile::tempdir().unwrap();
    let web_pem = cert(dir.path(), "web.pem", &["web.test"]);
    let api_pem = cert(dir.path(), "api.pem", &["api.test"]);
    let api2_pem = cert(dir.path(), "api2.pem", &["api.test"]);
    let (web_b, api_b, api2_b) = (
        named_backend("web"),
        named_backend("api"),
        named_backend("api2"),
    );
    let file = dir.path().join(FILE);
    std::fs::write(&file, config(web_b, api_b, "api.pem")).unwrap();

    // `check` shows both frontends.
    let out = run_to_exit(
        &["check", "--config", file.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("frontends: 2"), "{}", out.stdout);
    assert!(out.stdout.contains("frontend web:"), "{}", out.stdout);
    assert!(out.stdout.contains("frontend api:"), "{}", out.stdout);
    assert!(out.stdout.contains("api.test"), "{}", out.stdout);

    let rt = Ringterm::start(&["--config", file.to_str().unwrap()]);
    assert_eq!(rt.listen.len(), 2, "{:?}", rt.startup);
    let (web, api) = (rt.listen[0], rt.listen[1]);
    let c = client(&[&web_pem, &api_pem, &api2_pem], &["h2", "http/1.1"]);
    for _ in 0..4 {
        let w = visit(web, "web.test", &c).unwrap();
        assert_eq!(w.cert, der(&web_pem));
        assert_eq!(w.alpn.as_deref(), Some("http/1.1"));
        assert_eq!(w.backend, "web");
        let a = visit(api, "api.test", &c).unwrap();
        assert_eq!(a.cert, der(&api_pem));
        assert_eq!(a.alpn.as_deref(), Some("h2"));
        assert_eq!(a.backend, "api");
    }
    // The web frontend has no certificate for api.test: its default one.
    assert_eq!(visit(web, "web.test", &c).unwrap().cert, der(&web_pem));

    // A real OpenSSL client sees the same per-listener ALPN.
    let s_client = |addr: SocketAddr| {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-alpn",
                "h2,http/1.1",
            ])
            .args(["-servername", "x.test"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(s_client(api).contains("ALPN protocol: h2"));
    assert!(s_client(web).contains("ALPN protocol: http/1.1"));

    // A reload applies the api frontend's new certificate and backend,
    // and leaves the web frontend as it was.
    std::fs::write(
        dir.path().join("next.toml"),
        config(web_b, api2_b, "api2.pem"),
    )
    .unwrap();
    std::fs::rename(dir.path().join("next.toml"), &file).unwrap();
    send_signal(rt.child.id(), "HUP");
    assert!(
        rt.wait_log(Duration::from_secs(10), |m| m
            .starts_with("configuration reloaded"))
            .is_some(),
        "{}",
        rt.stderr()
    );
    for _ in 0..4 {
        let a = visit(api, "api.test", &c).unwrap();
        assert_eq!(a.cert, der(&api2_pem));
        assert_eq!(a.backend, "api2");
        let w = visit(web, "web.test", &c).unwrap();
        assert_eq!(w.cert, der(&web_pem));
        assert_eq!(w.backend, "web");
    }
}

#[test]
fn mutual_tls_on_one_frontend_only() {
    let dir = tempfile::tempdir().unwrap();
    let pem = cert(dir.path(), "c.pem", &["localhost"]);
    let (ca, _, _) = client_pki(dir.path());
    let b = named_backend("b");
    let file = dir.path().join(FILE);
    std::fs::write(
        &file,
        format!(
            "cert = \"c.pem\"\nbackend = \"{b}\"\nworkers = 1\n\
             [[frontend]]\nlisten = [\"127.0.0.1:0\"]\n\
             [[frontend]]\nlisten = [\"127.0.0.1:0\"]\nclient-ca = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let rt = Ringterm::start(&["--config", file.to_str().unwrap()]);
    let c = client(&[&pem], &[]);
    assert_eq!(visit(rt.listen[0], "localhost", &c).unwrap().backend, "b");
    // No client certificate: the second frontend refuses (TLS 1.3 reports
    // it after the handshake: no byte from the backend either way).
    let refused = visit(rt.listen[1], "localhost", &c);
    assert!(
        refused.as_ref().map_or(true, |s| s.backend.is_empty()),
        "{refused:?}"
    );
}

/// A session made on one frontend never resumes on another (which may ask
/// for a client certificate the first did not): cache and tickets, TLS 1.2
/// and 1.3.
#[test]
fn sessions_never_cross_frontends() {
    let dir = tempfile::tempdir().unwrap();
    let pem = cert(dir.path(), "c.pem", &["localhost"]);
    let (ca, _, _) = client_pki(dir.path());
    let b = named_backend("b");
    let file = dir.path().join(FILE);
    for mode in ["cache", "tickets"] {
        std::fs::write(
            &file,
            format!(
                "cert = \"c.pem\"\nbackend = \"{b}\"\nworkers = 1\nadmin = \"127.0.0.1:0\"\nresumption = \"{mode}\"\n\
                 [[frontend]]\nlisten = [\"127.0.0.1:0\"]\n\
                 [[frontend]]\nlisten = [\"127.0.0.1:0\"]\nclient-ca = \"{}\"\n",
                ca.display()
            ),
        )
        .unwrap();
        let rt = Ringterm::start(&["--config", file.to_str().unwrap()]);
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
            let c = Arc::new(
                ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            );
            // Two visits to the open frontend: the second one resumes.
            assert_eq!(visit(rt.listen[0], "localhost", &c).unwrap().backend, "b");
            assert_eq!(visit(rt.listen[0], "localhost", &c).unwrap().backend, "b");
            // The same session offered to the mTLS frontend: refused.
            let got = visit(rt.listen[1], "localhost", &c);
            assert!(
                got.as_ref().map_or(true, |s| s.backend.is_empty()),
                "{mode} {version:?}: {got:?}"
            );
        }
        // Resumption works on one frontend (counted when connections end).
        rt.wait_metric("ringterm_handshakes_resumed_total", |n| n >= 2);
    }
}

#[test]
fn bad_frontend_tables_exit_64_naming_the_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path(), "c.pem", &["localhost"]);
    let file = dir.path().join(FILE);
    let run = |text: &str| {
        std::fs::write(
            &file,
            format!("cert = \"c.pem\"\nbackend = \"127.0.0.1:9\"\n{text}"),
        )
        .unwrap();
        let out = run_to_exit(
            &["--config", file.to_str().unwrap()],
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        let line = out.stderr.trim().to_owned();
        assert_eq!(line.lines().count(), 1, "{line}");
        line
    };
    let f = file.display().to_string();
    let e = run("[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:99999\"]\n");
    assert!(
        e.starts_with(&format!(
            "ringterm: {f}:5:10: [[frontend]] #1 (api): listen:"
        )),
        "{e}"
    );
    let e = run("[[frontend]]\nlisten = [\"127.0.0.1:0\"]\nclient-auth = \"sometimes\"\n");
    assert!(
        e.contains("[[frontend]] #1 (frontend 1): client-auth:"),
        "{e}"
    );
    let e = run("[[frontend]]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n");
    assert!(e.starts_with(&format!("ringterm: {f}:5:1:")), "{e}");
    let e = run("listen = [\"127.0.0.1:0\"]\n[[frontend]]\nlisten = [\"127.0.0.1:0\"]\n");
    assert!(e.contains("listen") && e.contains("[[frontend]]"), "{e}");
    // A certificate file of one frontend that is missing names the file.
    let e = run("[[frontend]]\nlisten = [\"127.0.0.1:0\"]\ncert = \"missing.pem\"\n");
    assert!(e.contains("missing.pem"), "{e}");
}
