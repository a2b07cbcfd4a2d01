//! TLS in silo itself (issue 17, finding 10): HTTPS with HSTS, and a renewed certificate
//! picked up on SIGHUP without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::TestApp;

/// A CA, and a certificate it signed for localhost and 127.0.0.1, with `openssl`: answers
/// (CA certificate, server certificate, server key).
fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |ext: &str| dir.join(format!("{name}.{ext}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: &PathBuf| p.to_str().expect("path").to_owned();
    let (ca, ca_key, csr, cert, key, ext) = (
        p("ca.crt"),
        p("ca.key"),
        p("csr"),
        p("crt"),
        p("key"),
        p("ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext file");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (ca, cert, key)
}

/// GET /healthz over TLS, trusting only `trusted`: the answer's head and the certificate
/// the server showed; `Err` when the handshake fails.
fn get_over_tls(addr: &str, trusted: &Path) -> Result<(String, Vec<u8>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(trusted).expect("read cert") {
            roots.add(cert.expect("cert")).expect("add root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let shown = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .expect("peer certificate");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        Ok((String::from_utf8_lossy(&answer).into_owned(), shown))
    })
}

#[test]
fn https_with_hsts_and_a_certificate_reloaded_on_sighup() {
    let certs = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = issue(certs.path(), "first");
    let app = TestApp::spawn_process_with(&[
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
    ]);
    let addr = app
        .base
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("not serving https: {}", app.base))
        .to_owned();
    let (answer, first) = get_over_tls(&addr, &ca).expect("HTTPS with the trusted CA");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let lower = answer.to_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age="),
        "{answer}"
    );
    assert!(
        lower.contains("content-security-policy: default-src 'none'; frame-ancestors 'none'"),
        "{answer}"
    );
    // Renewed in place, then SIGHUP: new connections get the new certificate.
    let (new_ca, new_cert, new_key) = issue(certs.path(), "second");
    std::fs::copy(&new_key, &key).expect("replace key");
    std::fs::copy(&new_cert, &cert).expect("replace cert");
    let status = Command::new("kill")
        .args(["-HUP", &app.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match get_over_tls(&addr, &new_ca) {
            Ok((answer, shown)) if shown != first => {
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                break;
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "the certificate was not reloaded: {other:?}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
