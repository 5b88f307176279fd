//! TLS for the heartbeat QUIC connections, shared by the agent (QUIC server) and the coordinator (QUIC client).
//!
//! Both sides authenticate each other (mutual TLS): each presents a certificate signed by one configured CA
//! and each refuses a peer whose certificate does not chain to that CA. The configurations are TLS 1.3 only,
//! use the `ring` provider explicitly (never a process-wide default), and negotiate the ALPN protocol
//! [`ALPN`].
//!
//! This module builds [`rustls`] configurations and nothing else: no sockets, no QUIC. A side turns them into
//! quinn configurations itself:
//!
//! ```ignore
//! use lateral_ops::tls::{self, TlsMode};
//! // agent (server)
//! let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&mode)?)?;
//! let server = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
//! // coordinator (client)
//! let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(&mode)?)?;
//! let client = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
//! endpoint.connect_with(client, agent_addr, tls::DEFAULT_SERVER_NAME)?;
//! ```
//!
//! # Which server name the coordinator dials with
//! The coordinator passes a *server name* to `connect`; the agent's certificate must carry it as a
//! subject alternative name (a DNS name, or an IP address written as text). Use the name configured for the
//! agent endpoint (its DNS name, or the name given to `lateral-agent gen-certs --name`), and
//! [`DEFAULT_SERVER_NAME`] (`"localhost"`) when none is configured: every certificate [`DevPki`] issues carries
//! `localhost`, `127.0.0.1` and `::1`. In [`TlsMode::InsecureDev`] the name is not checked.
//!
//! # Modes
//! - [`TlsMode::Mutual`]: CA, certificate and key from PEM files (what production uses);
//! - [`TlsMode::MutualPem`]: the same from PEM strings in memory (tests, secrets injected by a platform);
//! - [`TlsMode::InsecureDev`]: a throwaway self-signed certificate generated in memory; the client does not
//!   verify the server and the server accepts any client certificate. Anyone can connect and read
//!   heartbeats, or impersonate an agent. It logs a loud warning every time a configuration is built.
//!
//! [`DevPki`] generates a CA and leaf certificates for tests, demos and `lateral-agent gen-certs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

/// The ALPN protocol id of the heartbeat protocol, version 1. Both sides require it.
pub const ALPN: &[u8] = b"lateral-hb/1";

/// The server name a coordinator dials an agent with when no name is configured for it. Every certificate
/// issued by [`DevPki`] carries it. See the [module docs](self#which-server-name-the-coordinator-dials-with).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// How a side authenticates itself and its peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TlsMode {
    /// Mutual TLS from PEM files: the peer must present a certificate that chains to `ca`.
    Mutual(TlsFiles),
    /// Mutual TLS from PEM text in memory; same rules as [`TlsMode::Mutual`].
    MutualPem(TlsPem),
    /// Development only: self-signed certificates generated in memory, no verification of the peer.
    /// Logs a loud warning.
    InsecureDev,
}

/// Paths of the PEM files for [`TlsMode::Mutual`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This side's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This side's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// PEM text for [`TlsMode::MutualPem`]. `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The CA certificate(s) that peers' certificates must chain to.
    pub ca_pem: String,
    /// This side's certificate chain (leaf first).
    pub cert_pem: String,
    /// This side's private key.
    pub key_pem: String,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why a TLS configuration could not be built. Each variant names the file (or in-memory source) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {what} file {path}: {source}")]
    ReadFile {
        /// Which file: "CA", "certificate" or "private key".
        what: &'static str,
        /// The path that was tried.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be written (`gen-certs`).
    #[error("cannot write {path}: {source}")]
    WriteFile {
        /// The path that was tried.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The PEM text is malformed (bad base64, a section without its END line, ...).
    #[error("{origin}: malformed PEM: {detail}")]
    BadPem {
        /// The file or in-memory source.
        origin: String,
        /// What the PEM parser said.
        detail: String,
    },
    /// The PEM text holds no `CERTIFICATE` section.
    #[error("{origin}: no certificate found (expected a \"-----BEGIN CERTIFICATE-----\" section)")]
    NoCertificate {
        /// The file or in-memory source.
        origin: String,
    },
    /// The PEM text holds no private key section.
    #[error(
        "{origin}: no private key found (expected a \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" section)"
    )]
    NoPrivateKey {
        /// The file or in-memory source.
        origin: String,
    },
    /// The CA file holds certificates, but none is usable as a trust anchor.
    #[error("{origin}: unusable CA certificate: {detail}")]
    BadCa {
        /// The file or in-memory source.
        origin: String,
        /// What was wrong.
        detail: String,
    },
    /// This side's certificate does not chain to the configured CA, so every peer would refuse it.
    #[error("{cert}: certificate is not signed by the CA in {ca}")]
    CertNotSignedByCa {
        /// The certificate's source.
        cert: String,
        /// The CA's source.
        ca: String,
    },
    /// This side's certificate chains to the CA but is unusable (expired, not yet valid, ...).
    #[error("{cert}: certificate is not valid: {detail}")]
    CertInvalid {
        /// The certificate's source.
        cert: String,
        /// What was wrong.
        detail: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate's source.
        cert: String,
        /// The key's source.
        key: String,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// rustls refused the configuration for another reason.
    #[error("tls configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the agent's (QUIC server's) TLS configuration: TLS 1.3, [`ALPN`], and in mutual modes a
/// **required** client certificate that chains to the CA.
pub fn server_config(mode: &TlsMode) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match Material::load(mode)? {
        Some(m) => {
            m.check_own_cert_as_server(&provider)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider)
                .build()
                .map_err(|e| TlsError::BadCa {
                    origin: m.ca_origin.clone(),
                    detail: e.to_string(),
                })?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(m.chain, m.key)
                .map_err(|e| key_error(e, &m.cert_origin, &m.key_origin))?
        }
        None => {
            warn_insecure("server");
            let (chain, key) = self_signed()?;
            builder
                .with_client_cert_verifier(Arc::new(AcceptAnyPeer { provider }))
                .with_single_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Builds the coordinator's (QUIC client's) TLS configuration: TLS 1.3, [`ALPN`], verifies the agent's
/// certificate against the CA (and the server name passed to `connect`) and presents this side's
/// certificate.
pub fn client_config(mode: &TlsMode) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match Material::load(mode)? {
        Some(m) => {
            m.check_own_cert_as_client(&provider)?;
            let verifier = WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider)
                .build()
                .map_err(|e| TlsError::BadCa {
                    origin: m.ca_origin.clone(),
                    detail: e.to_string(),
                })?;
            builder
                .with_webpki_verifier(verifier)
                .with_client_auth_cert(m.chain, m.key)
                .map_err(|e| key_error(e, &m.cert_origin, &m.key_origin))?
        }
        None => {
            warn_insecure("client");
            let (chain, key) = self_signed()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyPeer { provider }))
                .with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn warn_insecure(side: &str) {
    tracing::warn!(
        side,
        "!!! INSECURE DEV MODE: TLS uses a throwaway self-signed certificate and does NOT verify the peer. \
         Anyone can read these heartbeats or impersonate a peer. Never use --insecure-dev outside a laptop; \
         use --ca/--cert/--key (try `lateral-agent gen-certs --out DIR`) !!!"
    );
}

fn key_error(e: rustls::Error, cert: &str, key: &str) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        other => TlsError::Rustls(other),
    }
}

/// Parsed material for a mutual mode.
struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_origin: String,
    cert_origin: String,
    key_origin: String,
}

impl Material {
    /// `None` for [`TlsMode::InsecureDev`].
    fn load(mode: &TlsMode) -> Result<Option<Self>, TlsError> {
        let (ca, cert, key, ca_origin, cert_origin, key_origin) = match mode {
            TlsMode::InsecureDev => return Ok(None),
            TlsMode::Mutual(files) => (
                read(&files.ca, "CA")?,
                read(&files.cert, "certificate")?,
                read(&files.key, "private key")?,
                format!("CA file {}", files.ca.display()),
                format!("certificate file {}", files.cert.display()),
                format!("private key file {}", files.key.display()),
            ),
            TlsMode::MutualPem(pem) => (
                pem.ca_pem.clone().into_bytes(),
                pem.cert_pem.clone().into_bytes(),
                pem.key_pem.clone().into_bytes(),
                "CA PEM (in memory)".to_owned(),
                "certificate PEM (in memory)".to_owned(),
                "private key PEM (in memory)".to_owned(),
            ),
        };
        let ca_certs = parse_certs(&ca, &ca_origin)?;
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(ca_certs);
        if added == 0 {
            return Err(TlsError::BadCa {
                origin: ca_origin,
                detail: format!(
                    "none of its {ignored} certificate(s) could be parsed as a trust anchor"
                ),
            });
        }
        let chain = parse_certs(&cert, &cert_origin)?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                origin: key_origin.clone(),
            },
            other => TlsError::BadPem {
                origin: key_origin.clone(),
                detail: other.to_string(),
            },
        })?;
        Ok(Some(Self {
            roots: Arc::new(roots),
            chain,
            key,
            ca_origin,
            cert_origin,
            key_origin,
        }))
    }

    /// Fails early, naming the files, when our own certificate would be refused by every peer.
    fn check_own_cert_as_server(&self, provider: &Arc<CryptoProvider>) -> Result<(), TlsError> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::BadCa {
                    origin: self.ca_origin.clone(),
                    detail: e.to_string(),
                })?;
        let (leaf, rest) = self.leaf()?;
        let name = ServerName::try_from(DEFAULT_SERVER_NAME)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let result = verifier.verify_server_cert(leaf, rest, &name, &[], UnixTime::now());
        self.judge(result.map(|_| ()))
    }

    fn check_own_cert_as_client(&self, provider: &Arc<CryptoProvider>) -> Result<(), TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::BadCa {
                    origin: self.ca_origin.clone(),
                    detail: e.to_string(),
                })?;
        let (leaf, rest) = self.leaf()?;
        let result = verifier.verify_client_cert(leaf, rest, UnixTime::now());
        self.judge(result.map(|_| ()))
    }

    fn leaf(&self) -> Result<(&CertificateDer<'static>, &[CertificateDer<'static>]), TlsError> {
        self.chain
            .split_first()
            .ok_or_else(|| TlsError::NoCertificate {
                origin: self.cert_origin.clone(),
            })
    }

    /// Only chain and validity problems are errors here; the server name and key usage depend on how the
    /// peer dials and are checked in the handshake.
    fn judge(&self, result: Result<(), rustls::Error>) -> Result<(), TlsError> {
        let Err(rustls::Error::InvalidCertificate(e)) = result else {
            return Ok(());
        };
        match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Err(TlsError::CertNotSignedByCa {
                    cert: self.cert_origin.clone(),
                    ca: self.ca_origin.clone(),
                })
            }
            CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }
            | CertificateError::InvalidPurpose
            | CertificateError::InvalidPurposeContext { .. } => Ok(()),
            other => Err(TlsError::CertInvalid {
                cert: self.cert_origin.clone(),
                detail: other.to_string(),
            }),
        }
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            origin: origin.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let params = leaf_params("lateral-insecure-dev")?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_owned()))?;
    Ok((vec![cert.der().clone()], key))
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn leaf_params(name: &str) -> Result<rcgen::CertificateParams, TlsError> {
    let mut names = vec![DEFAULT_SERVER_NAME.to_owned()];
    if name != DEFAULT_SERVER_NAME && name.parse::<IpAddr>().is_err() {
        names.push(name.to_owned());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(gen_err)?;
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    if let Ok(ip) = name.parse::<IpAddr>()
        && !ip.is_loopback()
    {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// A development CA that issues leaf certificates. For tests, demos and `lateral-agent gen-certs`; keys live
/// in memory and the CA key is never written out.
pub struct DevPki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .finish()
    }
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (leaf only; the CA is [`DevPki::ca_pem`]).
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl DevPki {
    /// Generates a new CA whose certificate has the common name `ca_name`.
    pub fn generate(ca_name: &str) -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate, in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a leaf certificate usable by either side (server and client auth), with the subject
    /// alternative names `localhost`, `127.0.0.1`, `::1` and `name` (a DNS name or an IP address).
    pub fn issue(&self, name: &str) -> Result<IssuedCert, TlsError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = leaf_params(name)?
            .signed_by(&key, &self.issuer)
            .map_err(gen_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `name` and returns the [`TlsMode::MutualPem`] that uses it with this CA.
    pub fn mutual_mode(&self, name: &str) -> Result<TlsMode, TlsError> {
        let leaf = self.issue(name)?;
        Ok(TlsMode::MutualPem(TlsPem {
            ca_pem: self.ca_pem.clone(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        }))
    }

    /// Writes `ca.pem`, `agent.pem`, `agent-key.pem`, `coordinator.pem` and `coordinator-key.pem` into `dir`
    /// (created if missing). The agent certificate also carries `agent_name`, the coordinator's
    /// `coordinator_name`. Keys are written with mode 0600 on Unix. Returns the files written.
    pub fn write_dir(
        &self,
        dir: &Path,
        agent_name: &str,
        coordinator_name: &str,
    ) -> Result<Vec<PathBuf>, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::WriteFile {
            path: dir.to_owned(),
            source,
        })?;
        let agent = self.issue(agent_name)?;
        let coordinator = self.issue(coordinator_name)?;
        let files = [
            ("ca.pem", self.ca_pem.as_str(), false),
            ("agent.pem", agent.cert_pem.as_str(), false),
            ("agent-key.pem", agent.key_pem.as_str(), true),
            ("coordinator.pem", coordinator.cert_pem.as_str(), false),
            ("coordinator-key.pem", coordinator.key_pem.as_str(), true),
        ];
        let mut written = Vec::with_capacity(files.len());
        for (name, contents, secret) in files {
            let path = dir.join(name);
            write_file(&path, contents, secret).map_err(|source| TlsError::WriteFile {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())
}

/// InsecureDev peer verification, both sides: any certificate is accepted (the server still requires the
/// client to present one), but handshake signatures are checked, so a peer holds the key of the certificate it
/// shows.
#[derive(Debug)]
struct AcceptAnyPeer {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnyPeer {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAnyPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for AcceptAnyPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
