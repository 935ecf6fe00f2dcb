//! Interoperability with other TLS stacks: `openssl s_client` through
//! ringterm to an echo backend, and `curl` against `ringterm demo`.
//!
//! These tests need `openssl` and `curl` on PATH; without them they fail
//! (CI installs both), they never skip silently.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Panics with a clear message unless `tool` runs.
fn require_tool(tool: &str, version_arg: &str) {
    match Command::new(tool).arg(version_arg).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{tool} {version_arg}` failed ({}): {}; {tool} is required for the interop tests",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "`{tool}` is not installed or not on PATH ({e}); the interop tests require it \
             (CI installs openssl and curl)"
        ),
    }
}

/// Runs `openssl s_client` with `version_flag`, writes `line` on its stdin,
/// and returns what came out on stdout once it contains `line` (or after
/// 10 s). The child is killed afterwards.
fn s_client_echo(addr: std::net::SocketAddr, version_flag: &str, line: &str) -> String {
    s_client_echo_with(addr, &[version_flag, "-quiet"], line).0
}

/// [`s_client_echo`] with any `flags` (which must make s_client quiet:
/// `-quiet` or `-brief`); returns stdout and stderr.
fn s_client_echo_with(addr: std::net::SocketAddr, flags: &[&str], line: &str) -> (String, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(flags)
        .args(["-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(line) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let text = String::from_utf8_lossy(&out).into_owned();
    let err = err_thread.join().unwrap();
    if !text.contains(line) {
        panic!(
            "openssl s_client {flags:?}: echo not received; stdout: {} bytes; stderr: {err}",
            text.len()
        );
    }
    (text, err)
}

#[test]
fn openssl_s_client_tls13_and_tls12() {
    require_tool("openssl", "version");
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &[]);

    let out = s_client_echo(rt.addr(), "-tls1_3", "hello over TLS 1.3 from openssl\n");
    assert_eq!(out, "hello over TLS 1.3 from openssl\n");
    let out = s_client_echo(rt.addr(), "-tls1_2", "hello over TLS 1.2 from openssl\n");
    assert_eq!(out, "hello over TLS 1.2 from openssl\n");

    let text = rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.2\",resumed=\"false\"}",
        |n| n == 1,
    );
    assert_eq!(
        metric_sum(
            &text,
            "ringterm_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"}"
        ),
        1
    );
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    rt.assert_alive();
}

/// Runs curl with `args` (plus -sk and time limits); returns stdout.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "10", "--connect-timeout", "5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn curl_against_demo() {
    require_tool("curl", "--version");
    let mut rt = Ringterm::start_until(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
        |line| line.starts_with("try:"),
    );
    let addr = rt.addr();
    assert_eq!(
        rt.startup.last().unwrap(),
        &format!("try: curl -k https://{addr}/"),
        "stdout: {:?}",
        rt.startup
    );
    let dir = tempfile::tempdir().unwrap();
    let root = format!("https://{addr}/");
    let bytes_url = format!("https://{addr}/bytes/100000");
    let post_body = dir.path().join("post.bin");
    std::fs::write(&post_body, random_bytes(50_000)).unwrap();
    let post_arg = format!("@{}", post_body.display());

    let versions: [(&str, &[&str]); 2] =
        [("1.3", &[]), ("1.2", &["--tlsv1.2", "--tls-max", "1.2"])];
    for (name, flags) in versions {
        let mut args = flags.to_vec();
        args.push(&root);
        let body = curl(&args);
        assert_eq!(
            String::from_utf8_lossy(&body),
            "hello from the ringterm demo backend\n",
            "TLS {name}"
        );

        let file = dir.path().join(format!("bytes-{name}"));
        let file_arg = file.display().to_string();
        let mut args = flags.to_vec();
        args.extend(["-o", &file_arg, &bytes_url]);
        curl(&args);
        let len = std::fs::metadata(&file).unwrap().len();
        assert_eq!(len, 100_000, "TLS {name}: /bytes/100000 gave {len} bytes");

        let mut args = flags.to_vec();
        args.extend([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            &post_arg,
            &root,
        ]);
        let code = curl(&args);
        assert_eq!(String::from_utf8_lossy(&code), "200", "TLS {name}: POST");
    }

    // Counted as each connection ends: wait for both.
    rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.2\",resumed=\"false\"}",
        |n| n == 3,
    );
    let text = rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"}",
        |n| n == 3,
    );
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    rt.assert_alive();
}

/// The demo backend skips the PROXY header ringterm sends it, v1 or v2.
#[test]
fn curl_against_demo_behind_proxy_protocol() {
    require_tool("curl", "--version");
    for version in ["v1", "v2"] {
        let rt = Ringterm::start_until(
            &[
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--proxy-protocol",
                version,
            ],
            |line| line.starts_with("try:"),
        );
        let root = format!("https://{}/", rt.addr());
        let bytes_url = format!("https://{}/bytes/1000", rt.addr());
        assert_eq!(
            String::from_utf8_lossy(&curl(&[&root])),
            "hello from the ringterm demo backend\n",
            "{version}"
        );
        assert_eq!(curl(&[&bytes_url]).len(), 1000, "{version}");
    }
}

/// `openssl s_client` (interactive mode, so that it reads its commands)
/// through ringterm's own record layer: data, then `k` (a KeyUpdate,
/// update_not_requested), data, `K` (update_requested: ringterm answers
/// with its own KeyUpdate, which OpenSSL must follow), data. Every line
/// comes back from the echo backend under the new keys.
#[test]
fn openssl_s_client_key_updates_with_own_record_layer() {
    require_tool("openssl", "version");
    let certs = TestCerts::generate();
    let echo = echo_backend();
    let mut rt = start_ringterm(&certs, echo.addr, &["--record-layer", "own"]);
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &rt.addr().to_string(), "-tls1_3"])
        .args(["-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        let mut pipe = pipe;
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let mut stdin = child.stdin.take().unwrap();
    let mut out = Vec::new();
    let wait_for = |needle: &str, out: &mut Vec<u8>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(out).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => out.extend(chunk),
                Err(_) => panic!(
                    "s_client: {needle:?} not seen; output: {}",
                    String::from_utf8_lossy(out)
                ),
            }
        }
    };
    for (cmd, line) in [
        (None, "line before any update\n"),
        (Some("k\n"), "line after k\n"),
        (Some("K\n"), "line after K\n"),
        (Some("K\n"), "line after a second K\n"),
    ] {
        if let Some(cmd) = cmd {
            stdin.write_all(cmd.as_bytes()).unwrap();
            stdin.flush().unwrap();
            wait_for("KEYUPDATE", &mut out);
            out.clear();
        } else {
            // The handshake is done once the session is printed.
            wait_for("Verify return code", &mut out);
        }
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
        wait_for(line, &mut out);
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"}",
        |n| n == 1,
    );
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    rt.assert_alive();
}

/// curl through ringterm to an echo backend with either record layer:
/// a POST body comes back whole (bulk both ways), TLS 1.3 and 1.2.
#[test]
fn curl_with_either_record_layer() {
    require_tool("curl", "--version");
    for layer in ["own", "rustls"] {
        let mut rt = Ringterm::start_until(
            &[
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--admin",
                "127.0.0.1:0",
                "--record-layer",
                layer,
            ],
            |line| line.starts_with("try:"),
        );
        let addr = rt.addr();
        let url = format!("https://{addr}/bytes/300000");
        let dir = tempfile::tempdir().unwrap();
        for (name, flags) in [
            ("1.3", &[][..]),
            ("1.2", &["--tlsv1.2", "--tls-max", "1.2"][..]),
        ] {
            let file = dir.path().join(format!("out-{name}"));
            let file_arg = file.display().to_string();
            let mut args = flags.to_vec();
            args.extend(["-o", &file_arg, &url]);
            curl(&args);
            let len = std::fs::metadata(&file).unwrap().len();
            assert_eq!(len, 300_000, "{layer} TLS {name}");
        }
        rt.assert_alive();
    }
}

/// An RSA-2048 certificate and key for localhost written to `dir` (the key
/// from aws-lc-rs: rcgen's ring backend cannot generate RSA keys).
fn rsa_cert(dir: &std::path::Path) -> (String, String) {
    use aws_lc_rs::encoding::AsDer;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = kp.as_der().unwrap();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref());
    let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let (c, k) = (dir.join("rsa.pem"), dir.join("rsa.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, kp.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// `openssl s_client` against an RSA certificate through the own record
/// layer, every suite ringterm offers with it: the three ECDHE-RSA AEAD
/// suites of TLS 1.2 and the three TLS 1.3 suites. A 40 000-byte line
/// (several records each way) goes to the echo backend and comes back.
#[test]
fn openssl_s_client_rsa_every_suite_both_ways_through_own_record_layer() {
    require_tool("openssl", "version");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rsa_cert(dir.path());
    let echo = echo_backend();
    let args: Vec<String> = [
        "--backend",
        &echo.addr.to_string(),
        "--cert",
        &cert,
        "--key",
        &key,
        "--record-layer",
        "own",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rt = start_ringterm_args(&args);
    let mut line: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    line.push('\n');
    let cases = [
        ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
        ("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"),
        ("-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"),
        ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
        ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
        ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),
    ];
    for (version, flag, suite) in cases {
        let (out, err) = s_client_echo_with(rt.addr(), &[version, flag, suite, "-brief"], &line);
        assert!(out == line, "{suite}: {} bytes came back", out.len());
        assert!(
            err.contains(&format!("Ciphersuite: {suite}")),
            "{suite}: {err}"
        );
        assert!(err.contains("Signature type: RSA"), "{suite}: {err}");
    }
    // Counted as each connection ends: wait for both.
    rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.2\",resumed=\"false\"}",
        |n| n == 3,
    );
    let text = rt.wait_metric(
        "ringterm_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"}",
        |n| n == 3,
    );
    assert_eq!(metric_sum(&text, "ringterm_handshake_failures_total"), 0);
    rt.assert_alive();
}
