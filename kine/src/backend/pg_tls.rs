//! TLS to PostgreSQL with libpq's `sslmode` meanings, on rustls.
//!
//! - `disable`: plain TCP.
//! - `allow`, `prefer` (libpq's default): TLS if the server offers it,
//!   the certificate not checked.
//! - `require`: TLS or nothing; the certificate checked against the CA
//!   only if one is given (libpq does the same).
//! - `verify-ca`: the chain must lead to the CA; any host name.
//! - `verify-full`: the chain and the host name.
//!
//! The CA, and a client certificate and key, come from the datastore TLS
//! flags or from the DSN's `sslrootcert`, `sslcert` and `sslkey`. k3rs
//! does not read the system's CA store: verification needs a CA file.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// PEM files for TLS to the database, as read from the flags.
#[derive(Clone, Default)]
pub struct DatabaseTls {
    /// The CA that signed the database server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate (chain), for databases that ask for one.
    pub cert_pem: Option<Vec<u8>>,
    /// Its private key.
    pub key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for DatabaseTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when offered, unchecked.
    Prefer,
    /// TLS always; checked against the CA if one is given.
    Require,
    /// TLS; the chain checked, not the host name.
    VerifyCa,
    /// TLS; the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Storage(format!(
                    "sslmode={other} is unknown; use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// What tokio-postgres negotiates (it knows no verify modes).
    pub fn negotiation(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        }
    }
}

/// The TLS parameters libpq reads from a DSN, taken out of it (the driver
/// refuses parameters it does not know).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DsnTls {
    /// `sslmode`, if given.
    pub mode: Option<String>,
    /// `sslrootcert`: the CA file.
    pub root_cert: Option<String>,
    /// `sslcert`: the client certificate file.
    pub cert: Option<String>,
    /// `sslkey`: the client key file.
    pub key: Option<String>,
}

/// Splits the libpq TLS parameters off a URL-form or key=value DSN.
pub fn split_dsn(dsn: &str) -> (String, DsnTls) {
    let mut tls = DsnTls::default();
    let mut take = |name: &str, value: &str| -> bool {
        let slot = match name {
            "sslmode" => &mut tls.mode,
            "sslrootcert" => &mut tls.root_cert,
            "sslcert" => &mut tls.cert,
            "sslkey" => &mut tls.key,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    };
    if dsn.contains("://") {
        let Some((base, query)) = dsn.split_once('?') else {
            return (dsn.to_string(), tls);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(name, value)
            })
            .collect();
        let dsn = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (dsn, tls)
    } else {
        let kept: Vec<&str> = dsn
            .split_whitespace()
            .filter(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(name, value)
            })
            .collect();
        (kept.join(" "), tls)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Storage(format!("{what}: not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Storage(format!("{what}: holds no certificate")));
    }
    Ok(certs)
}

/// A rustls client configuration for `mode`, or `None` for plain TCP.
pub fn client_config(mode: SslMode, files: &DatabaseTls) -> Result<Option<rustls::ClientConfig>> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match (&files.ca_pem, mode) {
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(Error::Storage(
                "sslmode=verify-ca and verify-full need the database's CA (--datastore-cafile or sslrootcert); k3rs does not read the system's CAs".into(),
            ));
        }
        (None, _) | (Some(_), SslMode::Prefer) => Arc::new(Unchecked { algorithms }),
        (Some(ca), mode) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "the database CA")? {
                roots
                    .add(cert)
                    .map_err(|e| Error::Storage(format!("the database CA is not usable: {e}")))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Storage(format!("the database CA is not usable: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Storage(format!("TLS to the database: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&files.cert_pem, &files.key_pem) {
        (Some(cert), Some(key)) => {
            use rustls::pki_types::pem::PemObject;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                Error::Storage(format!("the database client key is not a PEM key: {e}"))
            })?;
            builder
                .with_client_auth_cert(certificates(cert, "the database client certificate")?, key)
                .map_err(|e| Error::Storage(format!("the database client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Storage(
                "a database client certificate needs both --datastore-certfile and --datastore-keyfile".into(),
            ));
        }
    };
    Ok(Some(config))
}

/// libpq's `require` without a CA: encryption without authentication.
#[derive(Debug)]
struct Unchecked {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name may be any.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The mode and files a DSN and the flags ask for, checked now.
pub fn resolve(dsn_tls: &DsnTls, flags: &DatabaseTls) -> Result<(SslMode, DatabaseTls)> {
    let read = |path: &Option<String>, what: &str| -> Result<Option<Vec<u8>>> {
        path.as_ref()
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| Error::Storage(format!("{what} {p}: cannot read it: {e}")))
            })
            .transpose()
    };
    let files = DatabaseTls {
        ca_pem: flags
            .ca_pem
            .clone()
            .or(read(&dsn_tls.root_cert, "sslrootcert")?),
        cert_pem: flags.cert_pem.clone().or(read(&dsn_tls.cert, "sslcert")?),
        key_pem: flags.key_pem.clone().or(read(&dsn_tls.key, "sslkey")?),
    };
    let mode = match &dsn_tls.mode {
        Some(m) => SslMode::parse(m)?,
        None => SslMode::Prefer,
    };
    // libpq: `require` with a root certificate behaves as `verify-ca`.
    let mode = if mode == SslMode::Require && files.ca_pem.is_some() {
        SslMode::VerifyCa
    } else {
        mode
    };
    Ok((mode, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_dsn() {
        let (dsn, tls) = split_dsn(
            "postgres://u@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=/ca.pem",
        );
        assert_eq!(dsn, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/ca.pem"));
        let (dsn, tls) = split_dsn("postgres://u@h/db?sslmode=disable");
        assert_eq!(dsn, "postgres://u@h/db");
        assert_eq!(tls.mode.as_deref(), Some("disable"));
        let (dsn, tls) = split_dsn("host=h dbname=db sslmode=require");
        assert_eq!(dsn, "host=h dbname=db");
        assert_eq!(tls.mode.as_deref(), Some("require"));
        assert!(SslMode::parse("bogus").is_err());
    }

    #[test]
    fn verification_needs_a_ca() {
        let none = DatabaseTls::default();
        assert!(client_config(SslMode::VerifyFull, &none).is_err());
        assert!(client_config(SslMode::Require, &none).unwrap().is_some());
        assert!(client_config(SslMode::Disable, &none).unwrap().is_none());
    }
}
