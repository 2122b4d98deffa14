//! TLS for the TCP API: the daemon's server configuration from PEM files, serving the
//! API router over TLS, and the client's configuration trusting a given CA.
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3. Certificates and keys are read at
//! start-up, and every error names the file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::error::{Result, ServiceError};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(path: &Path, why: impl std::fmt::Display) -> ServiceError {
    ServiceError::Invalid(format!("TLS: {}: {why}", path.display()))
}

/// Every certificate in the PEM file at `path`.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, format!("cannot read certificates: {e}")))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no certificate"));
    }
    Ok(certs)
}

/// The TLS configuration of the daemon's TCP listener.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let certs = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad(&files.key, format!("no usable private key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                &files.cert,
                format!("certificate and key do not go together: {e}"),
            )
        })?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the CA certificate(s) in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(ca, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` over TLS until the listener fails. A client that does not
/// complete its handshake in time, or fails it, costs its own connection only.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (stream, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, "API connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::*;
    use crate::client::{request, Endpoint};

    /// A CA, and a server certificate it signed for `localhost` and 127.0.0.1, as PEM
    /// files in `dir`; returns (CA file, server files).
    fn pki(dir: &Path, name: &str) -> (std::path::PathBuf, TlsFiles) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        (ca_file, files)
    }

    #[tokio::test]
    async fn the_api_answers_over_tls_to_a_client_that_trusts_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, files) = pki(dir.path(), "api");
        let (other_ca, _) = pki(dir.path(), "other");
        let mut config = crate::ServiceConfig::defaults();
        config.data_dir = dir.path().join("state");
        let svc = crate::Service::new(config).unwrap();
        let app = crate::api::router_with_token(svc, "s3cret".into());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, server_config(&files).unwrap(), app));

        let endpoint = |tls: Option<Arc<rustls::ClientConfig>>, token: &str| Endpoint::Tcp {
            authority: format!("localhost:{}", addr.port()),
            token: Some(token.into()),
            tls,
        };
        let t = Duration::from_secs(10);
        let ok = request(
            &endpoint(Some(client_config(&ca).unwrap()), "s3cret"),
            "GET",
            "/v1/guests",
            None,
            "application/json",
            t,
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert_eq!(ok.text(), "[]");
        // The token is still required inside TLS.
        let denied = request(
            &endpoint(Some(client_config(&ca).unwrap()), "wrong"),
            "GET",
            "/v1/guests",
            None,
            "application/json",
            t,
        )
        .await
        .unwrap();
        assert_eq!(denied.status, 401);
        // A client that does not trust the daemon's CA gets no answer.
        let e = request(
            &endpoint(Some(client_config(&other_ca).unwrap()), "s3cret"),
            "GET",
            "/v1/guests",
            None,
            "application/json",
            t,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("TLS"), "{e}");
        // Plain HTTP to the TLS port fails too.
        assert!(
            request(&endpoint(None, "s3cret"), "GET", "/v1/guests", None, "", t)
                .await
                .is_err()
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files) = pki(dir.path(), "api");
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: files.key.clone(),
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let swapped = TlsFiles {
            cert: files.key.clone(),
            key: files.cert.clone(),
        };
        let e = server_config(&swapped).unwrap_err().to_string();
        assert!(e.contains("api.key") && e.contains("no certificate"), "{e}");
    }
}
