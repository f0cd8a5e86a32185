//! TLS for the mesh (rustls with the `ring` provider): server configs for listeners, client
//! configs for upstreams (ALPN `h2`), and local development certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| TlsError::Read {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Read {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// A listener's TLS config from PEM files, offering HTTP/2 and HTTP/1.1 (gRPC-Web) by ALPN.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let certs = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| TlsError::Read {
        path: key_file.to_path_buf(),
        message: error.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An upstream client's TLS config: trust `ca_file` when given, the public web roots
/// otherwise. ALPN is left to the HTTP connector (hyper-rustls offers `h2` itself).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Files written by [`write_dev_certificates`].
pub struct DevCertificates {
    /// The development CA: clients trust this.
    pub ca_file: PathBuf,
    /// The server certificate (signed by the CA) and its key: listeners use these.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Creates a local development CA and a server certificate for `hosts` (DNS names or IP
/// addresses) in `dir`. For local use only: the CA key is not kept.
pub fn write_dev_certificates(dir: &Path, hosts: &[String]) -> Result<DevCertificates, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Storemesh development CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut server_params = CertificateParams::new(hosts.to_vec())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "Storemesh development server");
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = DevCertificates {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    for (path, contents) in [
        (&files.ca_file, ca.pem()),
        (&files.cert_file, server.pem()),
        (&files.key_file, server_key.serialize_pem()),
    ] {
        std::fs::write(path, contents).map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key_file, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| TlsError::Write {
                path: files.key_file.clone(),
                source,
            },
        )?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_load_as_server_and_client_configs() {
        let dir = std::env::temp_dir().join(format!("storemesh-tls-{}", std::process::id()));
        let files =
            write_dev_certificates(&dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let server = server_config(&files.cert_file, &files.key_file).unwrap();
        assert_eq!(server.alpn_protocols[0], b"h2");
        client_config(Some(&files.ca_file)).unwrap();
        client_config(None).unwrap();
        assert!(matches!(
            server_config(&files.ca_file, &dir.join("missing.pem")),
            Err(TlsError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
