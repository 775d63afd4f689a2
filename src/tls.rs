//! TLS for pgtwin's own connections, as a node URL's libpq `sslmode` and `sslrootcert` say (the foreign
//! servers get the same parameters and let libpq do the same on the peer's side).
//!
//! libpq's meaning is kept: `disable` never encrypts; `allow` and `prefer` (the default) encrypt when
//! the server offers it, without verifying the certificate; `require` insists on encryption, still
//! without verifying; `verify-ca` verifies the chain against `sslrootcert`; `verify-full` also checks
//! that the certificate names the host.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db::ConnInfo;

/// What a URL asks of TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt if offered (or required), trust any certificate: libpq's allow, prefer, require.
    Nothing,
    /// The chain must lead to a root in `sslrootcert`.
    Chain,
    /// The chain, and the host name.
    Full,
}

/// The tokio-postgres mode and the verification a URL's `sslmode` asks for.
pub fn mode(sslmode: Option<&str>) -> Result<(SslMode, Verify), String> {
    Ok(
        match sslmode.unwrap_or("prefer") {
            "disable" => (SslMode::Disable, Verify::Nothing),
            "allow" | "prefer" => (SslMode::Prefer, Verify::Nothing),
            "require" => (SslMode::Require, Verify::Nothing),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        },
    )
}

/// The connector for a node's URL.
pub fn connector(info: &ConnInfo) -> Result<MakeRustlsConnect> {
    let sslmode = info.params.get("sslmode").map(String::as_str);
    let (_, mut verify) = mode(sslmode).map_err(|e| anyhow!(e))?;
    // As in libpq: `require` with a root certificate at hand verifies like `verify-ca`.
    if sslmode == Some("require") && root_cert_path(info).is_some_and(|p| p.exists()) {
        verify = Verify::Chain;
    }
    for unsupported in ["sslcert", "sslkey"] {
        if info.params.contains_key(unsupported) {
            bail!("{unsupported}: pgtwin's own connections do not present client certificates yet; remove it from the url (or its service entry)");
        }
    }
    for unsupported in ["sslcrl", "sslcrldir"] {
        if info.params.contains_key(unsupported) {
            bail!("{unsupported}: pgtwin's own connections do not check revocation lists yet; remove it from the url (or its service entry)");
        }
    }
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS setup: {e}"))?;
    let webpki = match verify {
        Verify::Nothing => None,
        Verify::Chain | Verify::Full => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(info)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| anyhow!("sslrootcert: {e}"))?,
        ),
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            provider,
            webpki,
            check_name: verify == Verify::Full,
        }))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `sslrootcert`, or libpq's default `~/.postgresql/root.crt`.
fn root_cert_path(info: &ConnInfo) -> Option<PathBuf> {
    match info.params.get("sslrootcert") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql/root.crt")),
    }
}

fn root_store(info: &ConnInfo) -> Result<RootCertStore> {
    if info
        .params
        .get("sslrootcert")
        .is_some_and(|p| p == "system")
    {
        bail!("sslrootcert=system is not supported by pgtwin's own connections: name a file");
    }
    let path = root_cert_path(info)
        .ok_or_else(|| anyhow!("verify-ca/verify-full need sslrootcert=FILE"))?;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| anyhow!("sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| anyhow!("sslrootcert {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("sslrootcert {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("sslrootcert {}: no certificate in it", path.display());
    }
    Ok(roots)
}

/// The certificate check libpq's sslmode asks for: none (`allow`, `prefer`, `require` without a root
/// certificate), the chain (`verify-ca`), or the chain and the name (`verify-full`). Handshake
/// signatures are checked in every case, so the encryption itself is sound.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
