//! OCSP stapling with responses made at test time by `openssl ocsp` (an
//! openssl CA index, signed by the CA or by a delegated responder):
//! `openssl s_client -status` sees the staple; expired, not-yet-valid,
//! wrong-certificate, revoked and tampered responses are not stapled; a
//! SIGHUP or the refresh timer picks up a new response.
//!
//! Needs `openssl` on PATH (CI installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use ringterm::tls::loader::{self, LoadMode, OcspState};
use ringterm::tls::ocsp::{self, OcspError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (required for the OCSP tests)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a leaf for localhost (serial 1001) and a second leaf (serial
/// 1002) it signed, a delegated OCSP responder, and an openssl index.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Test OCSP CA",
            "-days",
            "3",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca);
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        std::fs::write(
            d.join("responder.ext"),
            "extendedKeyUsage=OCSPSigning\nkeyUsage=critical,digitalSignature\n",
        )
        .unwrap();
        std::fs::write(d.join("plain.ext"), "keyUsage=critical,digitalSignature\n").unwrap();
        for (name, serial, ext) in [
            ("leaf", "0x1001", "leaf.ext"),
            ("other", "0x1002", "leaf.ext"),
            ("responder", "0x2001", "responder.ext"),
            ("plain", "0x2002", "plain.ext"),
        ] {
            let mut req = vec!["req", "-new"];
            req.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={name}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &req);
            let pem = format!("{name}.pem");
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    serial,
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &pem,
                ],
            );
        }
        let chain = std::fs::read_to_string(d.join("leaf.pem")).unwrap()
            + &std::fs::read_to_string(d.join("ca.pem")).unwrap();
        std::fs::write(d.join("chain.pem"), chain).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn der(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.path(name)).unwrap()
    }

    /// An OCSP response for the certificate `cert` (serial `serial`) with
    /// `status` ("V" good, "R" revoked), signed by `signer` (`ca` or a
    /// responder), written to `out`.
    fn response(&self, cert: &str, serial: &str, status: &str, signer: &str, out: &str) {
        let d = self.dir.path();
        let exp = "301231235959Z";
        let revoked = if status == "R" { "261201000000Z" } else { "" };
        let subject = cert.trim_end_matches(".pem");
        std::fs::write(
            d.join("index.txt"),
            format!("{status}\t{exp}\t{revoked}\t{serial}\tunknown\t/CN={subject}\n"),
        )
        .unwrap();
        let req = format!("{out}.req");
        openssl(
            d,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                cert,
                "-reqout",
                &req,
                "-no_nonce",
            ],
        );
        let signer_pem = format!("{signer}.pem");
        let signer_key = format!("{signer}.key");
        openssl(
            d,
            &[
                "ocsp",
                "-index",
                "index.txt",
                "-rsigner",
                &signer_pem,
                "-rkey",
                &signer_key,
                "-CA",
                "ca.pem",
                "-reqin",
                &req,
                "-respout",
                out,
                "-ndays",
                "1",
            ],
        );
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn verify_checks_certificate_signature_time_and_status() {
    let pki = Pki::new();
    let leaf = pki.der("leaf.pem");
    let ca = pki.der("ca.pem");
    let now = now();

    pki.response("leaf.pem", "1001", "V", "ca", "good.der");
    let good = std::fs::read(pki.path("good.der")).unwrap();
    let v = ocsp::verify(&good, &leaf, &ca, now).expect("a good response verifies");
    assert!(v.this_update <= now + ocsp::CLOCK_SKEW_S);
    assert!(v.next_update > now && v.next_update <= now + 86_400 + 60);

    // Time: after nextUpdate, and before thisUpdate (beyond the skew).
    assert!(matches!(
        ocsp::verify(&good, &leaf, &ca, v.next_update + 1),
        Err(OcspError::Expired { .. })
    ));
    assert!(matches!(
        ocsp::verify(&good, &leaf, &ca, v.this_update - ocsp::CLOCK_SKEW_S - 10),
        Err(OcspError::NotYetValid { .. })
    ));

    // Another certificate of the same CA (another serial), and the right
    // serial under another issuer.
    let other = pki.der("other.pem");
    assert_eq!(
        ocsp::verify(&good, &other, &ca, now),
        Err(OcspError::WrongCertificate)
    );
    let stranger = pki.der("responder.pem");
    assert_eq!(
        ocsp::verify(&good, &leaf, &stranger, now),
        Err(OcspError::WrongCertificate)
    );

    // Revoked.
    pki.response("leaf.pem", "1001", "R", "ca", "revoked.der");
    let revoked = std::fs::read(pki.path("revoked.der")).unwrap();
    assert_eq!(
        ocsp::verify(&revoked, &leaf, &ca, now),
        Err(OcspError::Revoked)
    );

    // A delegated responder with id-kp-OCSPSigning is accepted; a
    // certificate of the same CA without it is not.
    pki.response("leaf.pem", "1001", "V", "responder", "delegated.der");
    let delegated = std::fs::read(pki.path("delegated.der")).unwrap();
    ocsp::verify(&delegated, &leaf, &ca, now).expect("delegated responder");
    pki.response("leaf.pem", "1001", "V", "plain", "undelegated.der");
    let undelegated = std::fs::read(pki.path("undelegated.der")).unwrap();
    assert_eq!(
        ocsp::verify(&undelegated, &leaf, &ca, now),
        Err(OcspError::UnknownResponder)
    );

    // A changed byte in the signed data: producedAt (the first
    // GeneralizedTime, which nothing else checks) one second off.
    let mut tampered = good.clone();
    let at = tampered
        .windows(2)
        .position(|w| w == [0x18, 0x0f])
        .expect("producedAt GeneralizedTime");
    let second = at + 2 + 13; // YYYYMMDDHHMMS|S|Z
    tampered[second] = if tampered[second] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        ocsp::verify(&tampered, &leaf, &ca, now),
        Err(OcspError::BadSignature)
    );

    // Every single-byte change and every truncation: no panic, and nothing
    // accepted but the same answer (a change in the unsigned certificate
    // list may still verify against the issuer).
    for i in 0..good.len() {
        let mut flipped = good.clone();
        flipped[i] ^= 0x55;
        if let Ok(w) = ocsp::verify(&flipped, &leaf, &ca, now) {
            assert_eq!(w, v, "byte {i} changed the accepted answer");
        }
        assert!(ocsp::verify(&good[..i], &leaf, &ca, now).is_err());
    }
}

/// The loader with `--ocsp-dir` at a time past the response's nextUpdate:
/// the certificate loads, the response is rejected (not stapled), and the
/// warning is given once.
#[test]
fn loader_rejects_stale_response_once() {
    let pki = Pki::new();
    let ocsp_dir = pki.path("ocsp");
    std::fs::create_dir(&ocsp_dir).unwrap();
    pki.response("leaf.pem", "1001", "V", "ca", "ocsp/chain.pem.ocsp");
    let config = ringterm::config::Settings {
        listen: Some(vec!["127.0.0.1:0".into()]),
        backend: Some(vec!["127.0.0.1:9".into()]),
        cert: Some(vec![pki.path("chain.pem").to_str().unwrap().into()]),
        key: Some(vec![pki.path("leaf.key").to_str().unwrap().into()]),
        ocsp_dir: Some(ocsp_dir.display().to_string()),
        ..Default::default()
    }
    .validate(&[0])
    .unwrap();
    let files = ringterm::rt::reload::DiskFiles::default();
    let fresh = loader::load(&config, &files, now(), LoadMode::Start, None).unwrap();
    assert!(matches!(fresh.certs[0].ocsp, OcspState::Stapled { .. }));
    let later = now() + 3 * 86_400;
    let stale = loader::load(&config, &files, later, LoadMode::Start, None).unwrap();
    match &stale.certs[0].ocsp {
        OcspState::Rejected(why) => assert!(why.contains("expired"), "{why}"),
        other => panic!("{other:?}"),
    }
    let warnings = loader::ocsp_warnings(Some(&fresh), &stale);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("chain.pem.ocsp"), "{warnings:?}");
    // The same state again: no second warning.
    let again = loader::refresh_ocsp(&stale, &files, later + 60);
    assert!(loader::ocsp_warnings(Some(&stale), &again).is_empty());
    // Built anyway: the certificate serves, without a staple.
    loader::build(&config, &stale, &files, Default::default()).unwrap();
}

/// `openssl s_client -status`: what it says about the staple.
fn s_client_status(addr: std::net::SocketAddr) -> String {
    let out = run_bin_to_exit(
        "openssl",
        &[
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-status",
        ],
        Duration::from_secs(20),
    );
    out.stdout
}

fn stapled(out: &str) -> bool {
    out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good")
}

fn not_stapled(out: &str) -> bool {
    out.contains("OCSP response: no response sent")
}

fn start(pki: &Pki, extra: &[&str]) -> Ringterm {
    let mut args = vec![
        "--backend".to_owned(),
        "127.0.0.1:9".to_owned(),
        "--cert".to_owned(),
        pki.path("chain.pem").display().to_string(),
        "--key".to_owned(),
        pki.path("leaf.key").display().to_string(),
        "--ocsp-dir".to_owned(),
        pki.path("ocsp").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    start_ringterm_args(&args)
}

#[test]
fn s_client_sees_the_staple_and_sighup_picks_up_a_new_one() {
    let pki = Pki::new();
    std::fs::create_dir(pki.path("ocsp")).unwrap();
    // No response yet: nothing stapled, no warning.
    let rt = start(&pki, &[]);
    let out = s_client_status(rt.addr());
    assert!(not_stapled(&out), "{out}");
    assert!(!rt.stderr().contains("not stapled"), "{}", rt.stderr());

    // A revoked response: still not stapled, one warning, counted.
    pki.response("leaf.pem", "1001", "R", "ca", "ocsp/chain.pem.ocsp");
    send_signal(rt.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(10), || rt
        .metrics()
        .contains("ringterm_reloads_total{result=\"success\"} 1")));
    let out = s_client_status(rt.addr());
    assert!(not_stapled(&out), "{out}");
    let metrics = rt.metrics();
    assert!(
        metrics.contains("ringterm_ocsp_rejected_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("ringterm_ocsp_stapled{name=\"localhost\"} 0"));
    assert!(eventually(Duration::from_secs(5), || rt
        .stderr()
        .contains("revoked")));

    // A response for another certificate: not stapled either.
    pki.response("other.pem", "1002", "V", "ca", "ocsp/chain.pem.ocsp");
    send_signal(rt.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(10), || rt
        .metrics()
        .contains("ringterm_reloads_total{result=\"success\"} 2")));
    let out = s_client_status(rt.addr());
    assert!(not_stapled(&out), "{out}");
    assert!(
        rt.stderr().contains("another certificate"),
        "{}",
        rt.stderr()
    );

    // A good one: stapled after the reload.
    pki.response("leaf.pem", "1001", "V", "ca", "ocsp/chain.pem.ocsp");
    send_signal(rt.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(10), || rt
        .metrics()
        .contains("ringterm_reloads_total{result=\"success\"} 3")));
    let out = s_client_status(rt.addr());
    assert!(stapled(&out), "{out}");
    let metrics = rt.metrics();
    assert!(metrics.contains("ringterm_ocsp_stapled{name=\"localhost\"} 1"));
    assert!(metrics.contains("ringterm_ocsp_next_update_seconds{name=\"localhost\"} "));
    assert!(metrics.contains("ringterm_certificate_not_after_seconds{name=\"localhost\"} "));
    assert!(metrics.contains("ringterm_last_reload_success 1"));
}

/// The refresh timer (here every second) picks up a response written after
/// the start, with no signal.
#[test]
fn refresh_timer_staples_a_new_response() {
    let pki = Pki::new();
    std::fs::create_dir(pki.path("ocsp")).unwrap();
    let rt = start(&pki, &["--ocsp-refresh", "1"]);
    assert!(not_stapled(&s_client_status(rt.addr())));
    pki.response("leaf.pem", "1001", "V", "ca", "response.der");
    // Written whole, then renamed into place (as a deploy hook should).
    std::fs::rename(pki.path("response.der"), pki.path("ocsp/chain.pem.ocsp")).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || rt
            .metrics()
            .contains("ringterm_ocsp_stapled{name=\"localhost\"} 1")),
        "{}",
        rt.stderr()
    );
    let out = s_client_status(rt.addr());
    assert!(stapled(&out), "{out}");
}

/// `ocsp = "file"` in a `[[cert]]` table, with the key in the certificate
/// file (combined PEM) and paths relative to the config file.
#[test]
fn cert_table_ocsp_key_staples() {
    let pki = Pki::new();
    pki.response("leaf.pem", "1001", "V", "ca", "leaf.ocsp");
    let combined = std::fs::read_to_string(pki.path("leaf.key")).unwrap()
        + &std::fs::read_to_string(pki.path("chain.pem")).unwrap();
    std::fs::write(pki.path("combined.pem"), combined).unwrap();
    let config = pki.path("ringterm.toml");
    std::fs::write(
        &config,
        "backend = \"127.0.0.1:9\"\n[[cert]]\ncert = \"combined.pem\"\nocsp = \"leaf.ocsp\"\n",
    )
    .unwrap();
    let rt = start_ringterm_args(&["--config".to_owned(), config.display().to_string()]);
    let out = s_client_status(rt.addr());
    assert!(stapled(&out), "{out}");
    // An explicitly configured response file that is missing is an error
    // at start, naming the file.
    std::fs::remove_file(pki.path("leaf.ocsp")).unwrap();
    let exited = run_to_exit(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(exited.status.code(), Some(64), "{}", exited.stderr);
    assert!(exited.stderr.contains("leaf.ocsp"), "{}", exited.stderr);
}

/// `--ocsp-fetch` against a real `openssl ocsp -port` responder on
/// loopback: the certificate's AIA names it, ringterm's fetch thread asks
/// it at start, checks the answer and staples it, with no response file.
#[test]
fn ocsp_fetch_from_a_real_responder() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        d.join("aia.ext"),
        format!(
            "subjectAltName=DNS:localhost\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:{port}/ocsp\n"
        ),
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x1003",
            "-days",
            "2",
            "-extfile",
            "aia.ext",
            "-out",
            "aia.pem",
        ],
    );
    let chain = std::fs::read_to_string(d.join("aia.pem")).unwrap()
        + &std::fs::read_to_string(d.join("ca.pem")).unwrap();
    std::fs::write(d.join("aia-chain.pem"), chain).unwrap();
    std::fs::write(
        d.join("index.txt"),
        "V\t301231235959Z\t\t1003\tunknown\t/CN=leaf\n",
    )
    .unwrap();
    let port_arg = port.to_string();
    let mut responder = Command::new("openssl")
        .current_dir(d)
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            &port_arg,
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca.key",
            "-CA",
            "ca.pem",
            "-ndays",
            "1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl ocsp -port");
    // Wait for its "waiting for OCSP client connections" line (a probe
    // connection would block this one-connection-at-a-time responder).
    let mut stderr = std::io::BufReader::new(responder.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.contains("waiting"), "openssl ocsp: {line}");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let rt = start_ringterm_args(&[
        "--backend".to_owned(),
        "127.0.0.1:9".to_owned(),
        "--cert".to_owned(),
        d.join("aia-chain.pem").display().to_string(),
        "--key".to_owned(),
        d.join("leaf.key").display().to_string(),
        "--ocsp-fetch".to_owned(),
    ]);
    let ok = eventually(Duration::from_secs(20), || {
        rt.metrics()
            .contains("ringterm_ocsp_stapled{name=\"localhost\"} 1")
    });
    let _ = responder.kill();
    let _ = responder.wait();
    assert!(ok, "{}", rt.stderr());
    let out = s_client_status(rt.addr());
    assert!(stapled(&out), "{out}");
}
