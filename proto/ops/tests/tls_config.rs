//! `lateral_ops::tls`: configurations build from a `DevPki`, handshakes (in memory, plain rustls) succeed
//! between peers of one CA and fail across CAs, and bad material gives errors that name the source.

use std::sync::Arc;

use lateral_ops::tls::{self, DevPki, TlsError, TlsFiles, TlsMode, TlsPem};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Runs a TLS handshake between the two configs over in-memory buffers. Returns the negotiated ALPN.
fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    name: &str,
) -> Result<Option<Vec<u8>>, rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
    let mut s = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s.alpn_protocol().map(<[u8]>::to_vec));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn mutual_configs_from_dev_pki_handshake_with_alpn() {
    let pki = DevPki::generate("test CA").unwrap();
    let server = tls::server_config(&pki.mutual_mode("agent-1").unwrap()).unwrap();
    let client = tls::client_config(&pki.mutual_mode("coordinator").unwrap()).unwrap();
    assert_eq!(server.alpn_protocols, vec![tls::ALPN.to_vec()]);
    assert_eq!(client.alpn_protocols, vec![tls::ALPN.to_vec()]);
    let alpn = handshake(server, client, tls::DEFAULT_SERVER_NAME).unwrap();
    assert_eq!(alpn.as_deref(), Some(tls::ALPN));
}

#[test]
fn dev_pki_certificates_carry_the_given_name_and_loopback_ips() {
    let pki = DevPki::generate("test CA").unwrap();
    let agent = pki.mutual_mode("agent.example.internal").unwrap();
    let coordinator = pki.mutual_mode("coordinator").unwrap();
    for name in ["agent.example.internal", "localhost", "127.0.0.1", "::1"] {
        let server = tls::server_config(&agent).unwrap();
        let client = tls::client_config(&coordinator).unwrap();
        handshake(server, client, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let server = tls::server_config(&agent).unwrap();
    let client = tls::client_config(&coordinator).unwrap();
    assert!(handshake(server, client, "other.example").is_err());
}

#[test]
fn server_refuses_a_client_from_another_ca() {
    let pki = DevPki::generate("test CA").unwrap();
    let other = DevPki::generate("other CA").unwrap();
    let server = tls::server_config(&pki.mutual_mode("agent").unwrap()).unwrap();
    // The intruder trusts our CA (so it accepts the server) but its own certificate is from another CA.
    let leaf = other.issue("intruder").unwrap();
    let intruder = TlsMode::MutualPem(TlsPem {
        ca_pem: pki.ca_pem().to_owned(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    });
    // Building the client config already fails: its certificate cannot chain to the CA it trusts.
    match tls::client_config(&intruder) {
        Err(TlsError::CertNotSignedByCa { .. }) => {}
        other => panic!("expected CertNotSignedByCa, got {other:?}"),
    }
    // A client fully from the other CA is refused in the handshake.
    let client = tls::client_config(&other.mutual_mode("intruder").unwrap()).unwrap();
    assert!(handshake(server, client, "localhost").is_err());
}

#[test]
fn server_requires_a_client_certificate() {
    let pki = DevPki::generate("test CA").unwrap();
    let server = tls::server_config(&pki.mutual_mode("agent").unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![tls::ALPN.to_vec()];
    assert!(handshake(server, client, "localhost").is_err());
}

#[test]
fn insecure_dev_configs_handshake_with_each_other() {
    let server = tls::server_config(&TlsMode::InsecureDev).unwrap();
    let client = tls::client_config(&TlsMode::InsecureDev).unwrap();
    assert_eq!(
        handshake(server, client, "anything.invalid")
            .unwrap()
            .as_deref(),
        Some(tls::ALPN)
    );
}

#[test]
fn insecure_dev_client_is_refused_by_a_mutual_server() {
    let pki = DevPki::generate("test CA").unwrap();
    let server = tls::server_config(&pki.mutual_mode("agent").unwrap()).unwrap();
    let client = tls::client_config(&TlsMode::InsecureDev).unwrap();
    assert!(handshake(server, client, "localhost").is_err());
}

fn pem(ca: &str, cert: &str, key: &str) -> TlsMode {
    TlsMode::MutualPem(TlsPem {
        ca_pem: ca.into(),
        cert_pem: cert.into(),
        key_pem: key.into(),
    })
}

#[test]
fn bad_pem_gives_clear_errors() {
    let pki = DevPki::generate("test CA").unwrap();
    let leaf = pki.issue("agent").unwrap();
    let ca = pki.ca_pem();

    let err =
        tls::server_config(&pem("not pem at all", &leaf.cert_pem, &leaf.key_pem)).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("CA PEM"), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");

    let err = tls::server_config(&pem(ca, &leaf.key_pem, &leaf.key_pem)).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate PEM"), "{err}");

    let err = tls::server_config(&pem(ca, &leaf.cert_pem, &leaf.cert_pem)).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("private key PEM"), "{err}");

    let truncated = &leaf.cert_pem[..leaf.cert_pem.len() - 30];
    let err = tls::server_config(&pem(ca, truncated, &leaf.key_pem)).unwrap_err();
    assert!(matches!(err, TlsError::BadPem { .. }), "{err:?}");

    let other = pki.issue("other").unwrap();
    let err = tls::client_config(&pem(ca, &leaf.cert_pem, &other.key_pem)).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");

    let stranger = DevPki::generate("stranger CA").unwrap();
    let err =
        tls::server_config(&pem(stranger.ca_pem(), &leaf.cert_pem, &leaf.key_pem)).unwrap_err();
    assert!(matches!(err, TlsError::CertNotSignedByCa { .. }), "{err:?}");
    assert!(err.to_string().contains("not signed by the CA"), "{err}");
}

#[test]
fn files_written_by_dev_pki_load_and_missing_files_are_named() {
    let dir = std::env::temp_dir().join(format!("lateral-tls-test-{}", std::process::id()));
    let pki = DevPki::generate("test CA").unwrap();
    let written = pki.write_dir(&dir, "agent-1", "coordinator-1").unwrap();
    assert_eq!(written.len(), 5);
    let agent = TlsMode::Mutual(TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("agent.pem"),
        key: dir.join("agent-key.pem"),
    });
    let coordinator = TlsMode::Mutual(TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("coordinator.pem"),
        key: dir.join("coordinator-key.pem"),
    });
    let server = tls::server_config(&agent).unwrap();
    let client = tls::client_config(&coordinator).unwrap();
    handshake(server, client, "agent-1").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("agent-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key must not be readable by others");
    }

    let missing = TlsMode::Mutual(TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("nope.pem"),
        key: dir.join("agent-key.pem"),
    });
    let err = tls::server_config(&missing).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::ReadFile {
                what: "certificate",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope.pem"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_output_does_not_leak_keys() {
    let pki = DevPki::generate("test CA").unwrap();
    let mode = pki.mutual_mode("agent").unwrap();
    let leaf = pki.issue("x").unwrap();
    assert!(!format!("{mode:?}").contains("PRIVATE KEY"));
    assert!(!format!("{leaf:?}").contains("PRIVATE KEY"));
}
