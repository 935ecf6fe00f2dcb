//! PROXY protocol: headers toward the backend (v1, v2 with TLVs), parsed
//! by an independent parser (the `ppp` crate's), and `--accept-proxy` from a
//! fronting balancer: good v1/v2 headers, a header split across writes, a
//! malformed header and no header.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// The SSL TLV: client flags, verify, sub-TLVs.
type SslTlv = (u8, u32, Vec<(u8, Vec<u8>)>);

/// What the backend saw before the plaintext.
#[derive(Debug, Default, Clone)]
struct Seen {
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
    alpn: Option<Vec<u8>>,
    authority: Option<String>,
    ssl: Option<SslTlv>,
}

/// Reads one PROXY header from `s` (v1 line or v2 binary), parses it with
/// `ppp`, then echoes the rest of the stream.
fn proxy_backend() -> (SocketAddr, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = spawn_backend(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 16];
        if s.read_exact(&mut head[..5]).is_err() {
            return;
        }
        let mut bytes = head[..5].to_vec();
        let seen = if &head[..5] == b"PROXY" {
            // v1: up to CRLF.
            let mut b = [0u8; 1];
            while !bytes.ends_with(b"\r\n") && bytes.len() < 108 {
                s.read_exact(&mut b).unwrap();
                bytes.push(b[0]);
            }
            let h = ppp::v1::Header::try_from(std::str::from_utf8(&bytes).unwrap())
                .expect("ppp parses our v1 header");
            match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Seen {
                    src: Some((a.source_address, a.source_port).into()),
                    dst: Some((a.destination_address, a.destination_port).into()),
                    ..Seen::default()
                },
                ppp::v1::Addresses::Tcp6(a) => Seen {
                    src: Some((a.source_address, a.source_port).into()),
                    dst: Some((a.destination_address, a.destination_port).into()),
                    ..Seen::default()
                },
                ppp::v1::Addresses::Unknown => Seen::default(),
            }
        } else {
            s.read_exact(&mut head[5..]).unwrap();
            bytes = head.to_vec();
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            let mut rest = vec![0u8; len];
            s.read_exact(&mut rest).unwrap();
            bytes.extend_from_slice(&rest);
            let h = ppp::v2::Header::try_from(&bytes[..]).expect("ppp parses our v2 header");
            let mut seen = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => Seen {
                    src: Some((a.source_address, a.source_port).into()),
                    dst: Some((a.destination_address, a.destination_port).into()),
                    ..Seen::default()
                },
                ppp::v2::Addresses::IPv6(a) => Seen {
                    src: Some((a.source_address, a.source_port).into()),
                    dst: Some((a.destination_address, a.destination_port).into()),
                    ..Seen::default()
                },
                _ => Seen::default(),
            };
            for tlv in h.tlvs() {
                let tlv = tlv.expect("well-formed TLV");
                match tlv.kind {
                    0x01 => seen.alpn = Some(tlv.value.to_vec()),
                    0x02 => seen.authority = Some(String::from_utf8(tlv.value.to_vec()).unwrap()),
                    0x20 => {
                        let v = &tlv.value[..];
                        let client = v[0];
                        let verify = u32::from_be_bytes([v[1], v[2], v[3], v[4]]);
                        let mut subs = Vec::new();
                        let mut rest = &v[5..];
                        while rest.len() >= 3 {
                            let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
                            subs.push((rest[0], rest[3..3 + n].to_vec()));
                            rest = &rest[3 + n..];
                        }
                        assert!(rest.is_empty(), "trailing bytes in the SSL TLV");
                        seen.ssl = Some((client, verify, subs));
                    }
                    _ => {}
                }
            }
            seen
        };
        let _ = tx.lock().unwrap().send(seen);
        echo_conn(s, &std::sync::atomic::AtomicU64::new(0));
    });
    (addr, rx)
}

fn ssl_sub(seen: &Seen, kind: u8) -> Option<String> {
    let (_, _, subs) = seen.ssl.as_ref()?;
    subs.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

fn with_alpn(base: Arc<ClientConfig>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut c = (*base).clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A TLS session over an already connected socket (after a PROXY header).
fn tls_over(
    sock: TcpStream,
    config: Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut sock = sock;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

fn echo_check(s: &mut StreamOwned<ClientConnection, TcpStream>, msg: &[u8]) {
    s.write_all(msg).unwrap();
    s.flush().unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

#[test]
fn proxy_v1_and_v2_headers_to_the_backend() {
    let certs = TestCerts::generate();
    for version in ["v1", "v2"] {
        let (backend, seen_rx) = proxy_backend();
        let rt = start_ringterm(
            &certs,
            backend,
            &["--proxy-protocol", version, "--alpn", "h2,http/1.1"],
        );
        let mut s = tls_connect(rt.addr(), with_alpn(certs.tls13(), &[b"h2"])).unwrap();
        let client_addr = s.sock.local_addr().unwrap();
        echo_check(&mut s, b"through the proxy header");
        let seen = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(seen.src, Some(client_addr), "{version}");
        assert_eq!(seen.dst, Some(rt.addr()), "{version}");
        if version == "v2" {
            assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
            assert_eq!(seen.authority.as_deref(), Some("localhost"));
            let (client, verify, _) = seen.ssl.clone().expect("SSL TLV");
            assert_eq!(client & 0x01, 0x01, "PP2_CLIENT_SSL");
            assert_eq!(client & 0x06, 0, "no client certificate");
            assert_ne!(verify, 0, "no verified client certificate");
            assert_eq!(ssl_sub(&seen, 0x21).as_deref(), Some("TLSv1.3"));
            let cipher = ssl_sub(&seen, 0x23).unwrap();
            assert!(cipher.starts_with("TLS13_"), "{cipher}");
        }
    }
}

#[test]
fn proxy_v2_carries_the_verified_client_certificate_subject() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, chain, key) = client_pki(dir.path());

    let (backend, seen_rx) = proxy_backend();
    let ca_arg = ca_path.display().to_string();
    let rt = start_ringterm(
        &certs,
        backend,
        &[
            "--proxy-protocol",
            "v2",
            "--client-ca",
            &ca_arg,
            "--client-auth",
            "optional",
        ],
    );
    // With a certificate: its subject reaches the backend, verified.
    let mut roots = rustls::RootCertStore::empty();
    let server_cert: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(certs.cert_pem.as_bytes()).unwrap();
    roots.add(server_cert).unwrap();
    let with_cert = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let mut s = tls_connect(rt.addr(), Arc::new(with_cert)).unwrap();
    echo_check(&mut s, b"mtls");
    let seen = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (client, verify, _) = seen.ssl.clone().expect("SSL TLV");
    assert_eq!(client & 0x03, 0x03, "SSL + cert in connection: {client:#x}");
    assert_eq!(verify, 0, "verified");
    assert_eq!(ssl_sub(&seen, 0x22).as_deref(), Some("client one"));
    // Optional: without a certificate the connection is accepted, and the
    // backend is told there was none.
    let mut s = tls_connect(rt.addr(), certs.tls13()).unwrap();
    echo_check(&mut s, b"anonymous");
    let seen = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (client, verify, _) = seen.ssl.clone().expect("SSL TLV");
    assert_eq!(client & 0x06, 0);
    assert_ne!(verify, 0);
    assert_eq!(ssl_sub(&seen, 0x22), None);
}

fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    ringterm::proxy::encode(
        ringterm::proxy::Version::V2,
        &ringterm::proxy::EncodeInfo {
            addresses: Some((src, dst)),
            alpn: None,
            authority: None,
            ssl: None,
        },
        &mut out,
    )
    .unwrap();
    out
}

#[test]
fn accept_proxy_takes_the_client_address_from_the_balancer() {
    let certs = TestCerts::generate();
    let (backend, seen_rx) = proxy_backend();
    let rt = start_ringterm(
        &certs,
        backend,
        &[
            "--accept-proxy",
            "--proxy-protocol",
            "v1",
            "--handshake-timeout",
            "1000",
        ],
    );
    let addr = rt.addr();
    let origin: SocketAddr = (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40000).into();
    let vip: SocketAddr = (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 443).into();

    // v1, whole, then TLS.
    let mut sock = tcp_connect(addr);
    sock.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n")
        .unwrap();
    let mut s = tls_over(sock, certs.tls13()).unwrap();
    echo_check(&mut s, b"v1");
    drop(s);
    let seen = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((seen.src, seen.dst), (Some(origin), Some(vip)));

    // v2 with the ClientHello in the same write.
    let mut sock = tcp_connect(addr);
    let mut first = v2_header(origin, vip);
    first.extend_from_slice(&client_hello_bytes(certs.tls12()));
    // (A ClientHello from another connection object: just check the header
    // parses and the TLS bytes behind it reach the TLS layer, which answers.)
    sock.write_all(&first).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 5];
    sock.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], 0x16, "a ServerHello record: {answer:02x?}");
    drop(sock);

    // v2, split across writes (one byte, then the rest), then TLS.
    let mut sock = tcp_connect(addr);
    let header = v2_header(origin, vip);
    sock.write_all(&header[..1]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    sock.write_all(&header[1..9]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    sock.write_all(&header[9..]).unwrap();
    let mut s = tls_over(sock, certs.tls13()).unwrap();
    echo_check(&mut s, b"split v2");
    drop(s);
    let seen = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((seen.src, seen.dst), (Some(origin), Some(vip)));

    // Malformed header, and no header at all (a direct ClientHello): both
    // are closed at once and counted, never left hanging.
    for (name, bytes) in [
        (
            "malformed",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n".to_vec(),
        ),
        ("no header", client_hello_bytes(certs.tls13())),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        let mut sock = tcp_connect(addr);
        sock.write_all(&bytes).unwrap();
        let closed = wait_closed(&mut sock, Duration::from_secs(3));
        let (_, _, took) = closed.unwrap_or_else(|| panic!("{name}: not closed"));
        assert!(
            took < Duration::from_millis(900),
            "{name}: closed after {took:?}"
        );
    }
    let text = rt.wait_metric("ringterm_proxy_header_errors_total", |n| n == 3);
    assert_eq!(metric_sum(&text, "ringterm_proxy_header_errors_total"), 3);
    // A header that never completes is cut by the handshake timeout.
    let mut sock = tcp_connect(addr);
    sock.write_all(b"PROXY TCP4 1.2.3.4").unwrap();
    let (_, _, took) = wait_closed(&mut sock, Duration::from_secs(5)).expect("cut");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    rt.wait_metric("ringterm_active", |n| n == 0);
}
