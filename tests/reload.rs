//! SIGHUP reloads everything it can: a changed backend and a changed route
//! take effect for new connections, a listen address added by a reload
//! accepts and a removed one stops accepting (its open connections go on),
//! and a setting that needs a restart gives one warning naming it.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A backend that writes its name and closes.
fn named_backend(name: &'static str) -> SocketAddr {
    spawn_backend(move |mut s| {
        let _ = s.write_all(name.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// A client trusting the test certificate (valid for `names`).
fn client(cert_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Connects with `sni` and reads what the backend says.
fn which_backend(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> String {
    let mut sock = tcp_connect(addr);
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = ClientConnection::new(config.clone(), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let mut s = StreamOwned::new(conn, sock);
    let (data, _) = tls_read_to_end(&mut s);
    String::from_utf8(data).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    cert_pem: String,
    top: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            ringterm::tls::generate_self_signed(&["localhost", "api.test", "other.test"]).unwrap();
        std::fs::write(dir.path().join("c.pem"), format!("{cert}{key}")).unwrap();
        let file = dir.path().join("ringterm.toml");
        Self {
            _dir: dir,
            file,
            cert_pem: cert,
            top: "cert = \"c.pem\"\nadmin = \"127.0.0.1:0\"\n".to_owned(),
        }
    }

    fn write(&self, body: &str) {
        // Written whole, then renamed: a reload never reads half a file.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}{body}", self.top)).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    fn start(&self, body: &str) -> Ringterm {
        self.write(body);
        Ringterm::start(&["--config", self.file.to_str().unwrap()])
    }
}

fn reload(rt: &Ringterm) {
    send_signal(rt.child.id(), "HUP");
    assert!(
        rt.wait_log(Duration::from_secs(10), |m| m
            .starts_with("configuration reloaded"))
            .is_some(),
        "no reload line: {}",
        rt.stderr()
    );
}

#[test]
fn a_changed_backend_and_route_take_effect() {
    let s = Setup::new();
    let c = client(&s.cert_pem);
    let (a, b, r1, r2) = (
        named_backend("a"),
        named_backend("b"),
        named_backend("r1"),
        named_backend("r2"),
    );
    let rt = s.start(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nbackend = \"{a}\"\n\
         [[route]]\nnames = [\"api.test\"]\nbackends = [\"{r1}\"]\n"
    ));
    let addr = rt.addr();
    assert_eq!(which_backend(addr, "localhost", &c), "a");
    assert_eq!(which_backend(addr, "api.test", &c), "r1");

    s.write(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nbackend = \"{b}\"\n\
         [[route]]\nnames = [\"api.test\"]\nbackends = [\"{r2}\"]\n\
         [[route]]\nnames = [\"other.test\"]\nbackends = [\"{r1}\"]\n"
    ));
    reload(&rt);
    // Both workers took it (every connection, whichever worker accepts it).
    for _ in 0..6 {
        assert_eq!(which_backend(addr, "localhost", &c), "b");
        assert_eq!(which_backend(addr, "api.test", &c), "r2");
        assert_eq!(which_backend(addr, "other.test", &c), "r1");
    }
    let text = rt.metrics();
    assert!(
        text.contains("ringterm_reloads_total{result=\"success\"} 1"),
        "{text}"
    );

    // A configuration that does not validate changes nothing.
    s.write("listen = [\"127.0.0.1:0\"]\nworkers = 2\nbackend = \"nope\"\n");
    send_signal(rt.child.id(), "HUP");
    let line = rt
        .wait_log(Duration::from_secs(10), |m| m.starts_with("reload failed"))
        .expect("a failure line");
    assert!(line.contains("backend"), "{line}");
    assert_eq!(which_backend(addr, "localhost", &c), "b");
}

#[test]
fn settings_that_need_a_restart_are_named_once_each() {
    let s = Setup::new();
    let c = client(&s.cert_pem);
    let (a, b) = (named_backend("a"), named_backend("b"));
    let rt = s.start(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\nbuffer-size = 16384\nbackend = \"{a}\"\n"
    ));
    s.write(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nbuffer-size = 32768\nbackend = \"{b}\"\n"
    ));
    send_signal(rt.child.id(), "HUP");
    assert!(rt
        .wait_log(Duration::from_secs(10), |m| {
            m == "reload: --workers changed (1 -> 2): needs a restart, keeping 1"
        })
        .is_some());
    assert!(rt
        .wait_log(Duration::from_secs(10), |m| {
            m == "reload: --buffer-size changed (16384 -> 32768): needs a restart, keeping 16384"
        })
        .is_some());
    assert!(rt
        .wait_log(Duration::from_secs(10), |m| m
            .starts_with("configuration reloaded"))
        .is_some());
    // What could change did; still one worker.
    assert_eq!(which_backend(rt.addr(), "localhost", &c), "b");
    assert_eq!(worker_count(&rt.metrics()), 1);
    assert_eq!(rt.stderr().matches("--workers changed").count(), 1);
}

/// A free port on 127.0.0.1 (bound and closed).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

#[test]
fn listeners_added_by_a_reload_accept_and_removed_ones_stop() {
    let s = Setup::new();
    let c = client(&s.cert_pem);
    let echo = echo_backend();
    let rt = s.start(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nbackend = \"{}\"\n",
        echo.addr
    ));
    let first = rt.addr();
    let port = free_port();
    let second: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    s.write(&format!(
        "listen = [\"{first}\", \"{second}\"]\nworkers = 2\nbackend = \"{}\"\n",
        echo.addr
    ));
    reload(&rt);
    for _ in 0..6 {
        assert_echo(second, c.clone(), b"through the new listener");
        assert_echo(first, c.clone(), b"through the old one");
    }
    // A connection open on the first address outlives its removal.
    let open = TlsDuplex::connect(first, c.clone()).unwrap();
    let (got, _) = echo_roundtrip_open(&open, b"before");
    assert_eq!(got, b"before");
    s.write(&format!(
        "listen = [\"{second}\"]\nworkers = 2\nbackend = \"{}\"\n",
        echo.addr
    ));
    reload(&rt);
    assert!(
        eventually(Duration::from_secs(5), || refuses(first)),
        "{first} still accepts after its removal"
    );
    assert_echo(second, c.clone(), b"still served");
    let (got, _) = echo_roundtrip_open(&open, b"after the removal");
    assert_eq!(got, b"after the removal");
}

/// Writes `payload` on an open connection and reads it back (the echo).
fn echo_roundtrip_open(c: &TlsDuplex, payload: &[u8]) -> (Vec<u8>, ()) {
    c.write_all(payload).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < payload.len() {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        out.extend_from_slice(&buf[..n]);
    }
    (out, ())
}

/// With `--upgrade-socket`, a listener added by a reload is handed to the
/// next process like the others (it would fail to bind a port the old
/// process still holds), and a removed one is not.
#[test]
fn an_upgrade_after_a_reload_takes_the_new_listeners() {
    let s = Setup::new();
    let c = client(&s.cert_pem);
    let echo = echo_backend();
    let sock = s._dir.path().join("upgrade.sock");
    let body = |listen: &str| {
        format!(
            "upgrade-socket = \"{}\"\nlisten = [{listen}]\nworkers = 2\nbackend = \"{}\"\n",
            sock.display(),
            echo.addr
        )
    };
    let mut old = s.start(&body("\"127.0.0.1:0\""));
    let first = old.addr();
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let third: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    s.write(&body(&format!("\"{first}\", \"{second}\", \"{third}\"")));
    reload(&old);
    assert_echo(second, c.clone(), b"added");
    // Removed again before the upgrade: not offered, so not served.
    s.write(&body(&format!("\"{first}\", \"{second}\"")));
    reload(&old);

    let next = Ringterm::start(&["--config", s.file.to_str().unwrap()]);
    assert_eq!(next.listen, vec![first, second], "{:?}", next.startup);
    assert!(
        eventually(Duration::from_secs(15), || old
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "the old process did not hand over: {}",
        old.stderr()
    );
    assert_echo(first, c.clone(), b"the new process");
    assert_echo(second, c.clone(), b"the new process, added address");
    assert!(refuses(third), "{third} was removed");
}

/// A reload that turns mutual TLS on: a session made before it does not
/// resume past the new client-certificate check (cache and tickets).
#[test]
fn a_reload_that_requires_client_certificates_resumes_no_earlier_session() {
    for mode in ["cache", "tickets"] {
        let s = Setup::new();
        let c = client(&s.cert_pem);
        let (ca, _, _) = client_pki(s._dir.path());
        let a = named_backend("a");
        let body = |extra: &str| {
            format!(
                "listen = [\"127.0.0.1:0\"]\nworkers = 1\nresumption = \"{mode}\"\nbackend = \"{a}\"\n{extra}"
            )
        };
        let rt = s.start(&body(""));
        assert_eq!(which_backend(rt.addr(), "localhost", &c), "a");
        assert_eq!(which_backend(rt.addr(), "localhost", &c), "a");
        // The second connection resumed (counted when it ends).
        rt.wait_metric("ringterm_handshakes_resumed_total", |n| n >= 1);
        s.write(&body(&format!("client-ca = \"{}\"\n", ca.display())));
        reload(&rt);
        // The client offers its session; no client certificate: refused.
        let mut sock = tcp_connect(rt.addr());
        let mut conn =
            ClientConnection::new(c.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        let mut failed = false;
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            let mut st = StreamOwned::new(conn, sock);
            let (data, _) = tls_read_to_end(&mut st);
            assert!(
                data.is_empty(),
                "{mode}: a session from before the reload skipped mTLS"
            );
        }
    }
}

/// The drain after SIGTERM takes the drain timeout of the last reload.
#[test]
fn the_drain_uses_the_reloaded_drain_timeout() {
    let s = Setup::new();
    let c = client(&s.cert_pem);
    let echo = echo_backend();
    let body = |ms: u64| {
        format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = 1\ndrain-timeout = {ms}\nbackend = \"{}\"\n",
            echo.addr
        )
    };
    let mut rt = s.start(&body(600_000));
    s.write(&body(200));
    reload(&rt);
    assert!(!rt.stderr().contains("--drain-timeout changed"));
    // Held open through the drain: cut when the (new) timeout passes.
    let held = TlsDuplex::connect(rt.addr(), c).unwrap();
    let (got, _) = echo_roundtrip_open(&held, b"held");
    assert_eq!(got, b"held");
    send_signal(rt.child.id(), "TERM");
    assert!(
        eventually(Duration::from_secs(30), || rt
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "still draining: {}",
        rt.stderr()
    );
    assert!(
        rt.stderr().contains("drain timeout: cut"),
        "{}",
        rt.stderr()
    );
}

/// `log-level` applies on reload.
#[test]
fn the_log_level_applies_on_reload() {
    let s = Setup::new();
    let a = named_backend("a");
    let body = |level: &str, workers: u32| {
        format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = {workers}\nlog-level = \"{level}\"\nbackend = \"{a}\"\n"
        )
    };
    let rt = s.start(&body("info", 1));
    // To warn: the reload's own info line is not written, its warning is.
    s.write(&body("warn", 2));
    send_signal(rt.child.id(), "HUP");
    assert!(rt
        .wait_log(Duration::from_secs(10), |m| m
            .starts_with("reload: --workers changed"))
        .is_some());
    // Back to info: written again.
    s.write(&body("info", 1));
    reload(&rt);
    assert_eq!(
        rt.stderr().matches("configuration reloaded").count(),
        1,
        "{}",
        rt.stderr()
    );
}
