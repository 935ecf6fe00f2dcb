//! rustls client configuration and blocking connection helpers.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    X25519,
    Secp256r1,
    X25519mlkem768,
}

impl Group {
    fn kx(self) -> &'static dyn SupportedKxGroup {
        match self {
            Group::X25519 => aws_lc_rs::kx_group::X25519,
            Group::Secp256r1 => aws_lc_rs::kx_group::SECP256R1,
            Group::X25519mlkem768 => aws_lc_rs::kx_group::X25519MLKEM768,
        }
    }
}

/// How server certificates are checked.
#[derive(Clone)]
pub enum Trust {
    Insecure,
    Roots(Arc<RootCertStore>),
}

/// Loads a PEM file of CA certificates into a root store.
pub fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {path}: {e}"))?;
    for cert in iter {
        let cert = cert.map_err(|e| format!("bad PEM in CA file {path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificates found in CA file {path}"));
    }
    Ok(roots)
}

/// Builds a client configuration. Every call creates a fresh session cache.
pub fn client_config(
    version: TlsVersion,
    group: Group,
    trust: &Trust,
    resumption: Resumption,
) -> Result<ClientConfig, String> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![group.kx()];
    let provider = Arc::new(provider);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
        TlsVersion::V12 => &[&rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("invalid TLS settings: {e}"))?;
    let mut config = match trust {
        Trust::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    config.resumption = resumption;
    Ok(config)
}

/// Resumption settings: none, TLS 1.2 session ids only, or ids + tickets.
pub fn resumption_disabled() -> Resumption {
    Resumption::disabled()
}

pub fn resumption_enabled(tls12: Tls12Resumption) -> Resumption {
    Resumption::in_memory_sessions(64).tls12_resumption(tls12)
}

/// Accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub timeout: Duration,
}

/// Opens a TCP connection and completes the TLS handshake.
pub fn connect(target: &Target, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let sock = TcpStream::connect_timeout(&target.addr, target.timeout)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(target.timeout))?;
    sock.set_write_timeout(Some(target.timeout))?;
    let conn = ClientConnection::new(config.clone(), target.server_name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        let (rd, wr) = s.conn.complete_io(&mut s.sock)?;
        if rd == 0 && wr == 0 && s.conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during TLS handshake",
            ));
        }
    }
    Ok(s)
}

/// Writes all of `data` and flushes it to the socket.
pub fn send(s: &mut TlsStream, data: &[u8]) -> io::Result<()> {
    s.write_all(data)?;
    s.flush()
}

/// Sends close_notify, half-closes the socket and drains whatever the peer
/// still sends for up to `drain_for`, so the close does not turn into a TCP
/// reset. Returns false if the peer had not closed within `drain_for`.
pub fn close(mut s: TlsStream, drain_for: Duration) -> bool {
    s.conn.send_close_notify();
    while s.conn.wants_write() {
        match s.conn.write_tls(&mut s.sock) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = s.sock.flush();
    let _ = s.sock.shutdown(Shutdown::Write);
    if drain_for.is_zero() {
        return true;
    }
    let deadline = Instant::now() + drain_for;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match s.sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                )
            }
        }
    }
}
