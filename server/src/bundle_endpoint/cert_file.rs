//! The `https_web` profile's `serving_cert_file`: a PEM certificate chain and key kept current by something
//! else (cert-manager, certbot), read again every `file_sync_interval`.
//!
//! The files are compared by content, not modification time: a Kubernetes Secret volume swaps a symlink, and
//! an editor may keep the mtime, but the bytes tell. A changed pair that cannot be used (unreadable, not PEM,
//! key not matching, or caught half-written) is logged once and the certificate in use stays; it is tried
//! again when the files change again.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use rustls::sign::CertifiedKey;
use sigil_tls::ServerCertSlot;
use tokio::sync::watch;

use super::serve::stopped;
use crate::config::ServingCertFile;

/// Larger files are refused: a certificate chain or a key is a few kilobytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a certificate/key pair cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertFileError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// A usable pair.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf's NotAfter, unix seconds (for the log).
    pub not_after: i64,
}

fn invalid(path: &Path, reason: impl Into<String>) -> CertFileError {
    CertFileError::Invalid { path: path.to_owned(), reason: reason.into() }
}

/// Builds the served certificate from the two files' contents (no I/O).
pub fn parse_pair(files: &ServingCertFile, cert_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, CertFileError> {
    let cert_path = &files.cert_file_path;
    let key_path = &files.key_file_path;
    let blocks = pem::parse_many(cert_pem).map_err(|e| invalid(cert_path, format!("not PEM: {e}")))?;
    // Other blocks (a key in a combined file) are not the chain; only certificates are.
    let chain: Vec<Vec<u8>> =
        blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(pem::Pem::into_contents).collect();
    let Some(leaf) = chain.first() else {
        return Err(invalid(cert_path, "no CERTIFICATE block"));
    };
    for (i, der) in chain.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| invalid(cert_path, format!("certificate {} cannot be parsed: {e}", i + 1)))?;
    }
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| invalid(cert_path, e.to_string()))?;

    let blocks = pem::parse_many(key_pem).map_err(|e| invalid(key_path, format!("not PEM: {e}")))?;
    if blocks.iter().any(|b| b.tag() == "ENCRYPTED PRIVATE KEY") {
        return Err(invalid(key_path, "encrypted private keys are not supported"));
    }
    let key = blocks
        .into_iter()
        .find_map(|b| match b.tag() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(b.into_contents()))),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(b.into_contents()))),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(b.into_contents()))),
            _ => None,
        })
        .ok_or_else(|| invalid(key_path, "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block"))?;

    let certs = chain.into_iter().map(CertificateDer::from).collect();
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            CertFileError::KeyMismatch { cert: cert_path.clone(), key: key_path.clone() }
        }
        e => invalid(key_path, e.to_string()),
    })?;
    Ok(Loaded { key: Arc::new(key), not_after })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, CertFileError> {
    let read_err = |e: std::io::Error| CertFileError::Read { path: path.to_owned(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(CertFileError::Read {
            path: path.to_owned(),
            reason: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// Both files' contents.
pub type Contents = (Vec<u8>, Vec<u8>);

pub fn read_pair(files: &ServingCertFile) -> Result<Contents, CertFileError> {
    Ok((read_bounded(&files.cert_file_path)?, read_bounded(&files.key_file_path)?))
}

/// What one file check means for the served certificate.
#[derive(Debug)]
pub enum Check {
    /// The files hold what is served.
    Unchanged,
    /// New contents, usable: serve them.
    Loaded(Loaded),
    /// New contents (or a new read error), unusable: report it, keep serving the previous certificate.
    Failed(CertFileError),
    /// The same failure as at the previous check: already reported.
    StillFailing,
}

/// The failure last reported, so it is reported once.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Read(CertFileError),
    Contents(Contents),
}

/// Decides, check by check, whether the files changed and whether the change can be served (no I/O).
#[derive(Debug)]
pub struct Reloader {
    files: ServingCertFile,
    served: Contents,
    failure: Option<Failure>,
}

impl Reloader {
    /// Loads the pair at start; a pair that cannot be served stops the start.
    pub fn start(files: ServingCertFile, contents: Contents) -> Result<(Self, Loaded), CertFileError> {
        let loaded = parse_pair(&files, &contents.0, &contents.1)?;
        Ok((Self { files, served: contents, failure: None }, loaded))
    }

    pub fn files(&self) -> &ServingCertFile {
        &self.files
    }

    pub fn check(&mut self, read: Result<Contents, CertFileError>) -> Check {
        let contents = match read {
            Ok(c) => c,
            Err(e) => {
                let failure = Failure::Read(e.clone());
                if self.failure.as_ref() == Some(&failure) {
                    return Check::StillFailing;
                }
                self.failure = Some(failure);
                return Check::Failed(e);
            }
        };
        if contents == self.served {
            self.failure = None;
            return Check::Unchanged;
        }
        if matches!(&self.failure, Some(Failure::Contents(c)) if *c == contents) {
            return Check::StillFailing;
        }
        match parse_pair(&self.files, &contents.0, &contents.1) {
            Ok(loaded) => {
                self.served = contents;
                self.failure = None;
                Check::Loaded(loaded)
            }
            Err(e) => {
                self.failure = Some(Failure::Contents(contents));
                Check::Failed(e)
            }
        }
    }
}

/// Reads the files every `file_sync_interval` and swaps the served certificate when they changed, until
/// shutdown.
pub async fn watch(mut reloader: Reloader, slot: Arc<ServerCertSlot>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(reloader.files().file_sync_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the files were read at start.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        let files = reloader.files().clone();
        // Off the async threads: a slow or network file system must not stall request handling.
        let read = match tokio::task::spawn_blocking(move || read_pair(&files)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "bundle endpoint: reading serving_cert_file failed");
                continue;
            }
        };
        let cert = reloader.files().cert_file_path.clone();
        match reloader.check(read) {
            Check::Unchanged | Check::StillFailing => {}
            Check::Loaded(loaded) => {
                slot.set(loaded.key);
                tracing::info!(
                    cert = %cert.display(),
                    not_after = loaded.not_after,
                    "bundle endpoint: serving the changed serving_cert_file certificate"
                );
            }
            Check::Failed(e) => {
                tracing::error!(error = %e, "bundle endpoint: serving_cert_file changed but cannot be used; still serving the previous certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn files() -> ServingCertFile {
        ServingCertFile {
            cert_file_path: "/c.pem".into(),
            key_file_path: "/k.pem".into(),
            file_sync_interval: Duration::from_secs(1),
        }
    }

    /// A self-signed leaf for `localhost` and its key as PKCS#8 PEM.
    fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), key)
    }

    fn sec1_pem(key: &rcgen::KeyPair) -> String {
        // rcgen writes PKCS#8 only. For P-256 its last 109 bytes are the embedded SEC1 ECPrivateKey
        // (SEQUENCE of 0x6b bytes: version, 32-byte key, [1] public key), which is what an "EC PRIVATE KEY"
        // PEM block holds.
        let der = key.serialize_der();
        let inner = &der[der.len() - 0x6d..];
        assert_eq!(&inner[..2], &[0x30, 0x6b], "unexpected PKCS#8 layout");
        pem::encode(&pem::Pem::new("EC PRIVATE KEY", inner.to_vec()))
    }

    #[test]
    fn parse_pair_table() {
        let (cert, key, kp) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (other_cert, other_key, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let sec1 = sec1_pem(&kp);
        let combined = format!("{cert}{key}");
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let garbage_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let cases: Vec<(&str, &str, Result<(), &str>)> = vec![
            (&cert, &key, Ok(())),
            (&cert, &sec1, Ok(())),
            (&combined, &key, Ok(())),
            (&other_cert, &other_key, Ok(())),
            (&cert, &other_key, Err("the private key in /k.pem does not belong to the certificate in /c.pem")),
            ("", &key, Err("/c.pem: no CERTIFICATE block")),
            (&key, &key, Err("/c.pem: no CERTIFICATE block")),
            (garbage_cert, &key, Err("/c.pem: certificate 1 cannot be parsed")),
            (&cert, "", Err("/k.pem: no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block")),
            (&cert, &cert, Err("/k.pem: no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block")),
            (&cert, encrypted, Err("/k.pem: encrypted private keys are not supported")),
            ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", &key, Err("/c.pem: not PEM")),
            (&cert, "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", Err("/k.pem: not PEM")),
        ];
        for (c, k, want) in cases {
            let got = parse_pair(&files(), c.as_bytes(), k.as_bytes()).map(drop).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.starts_with(w), "{e:?} does not start with {w:?}"),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn reloader_reports_each_failure_once_and_keeps_the_served_pair() {
        let (c1, k1, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (c2, k2, _) = pair(&rcgen::PKCS_ECDSA_P384_SHA384);
        let pair_of = |c: &str, k: &str| Ok((c.as_bytes().to_vec(), k.as_bytes().to_vec()));
        let gone = || Err(CertFileError::Read { path: "/c.pem".into(), reason: "No such file".into() });
        let (mut r, _) = Reloader::start(files(), (c1.clone().into_bytes(), k1.clone().into_bytes())).unwrap();
        #[derive(Debug, PartialEq)]
        enum Want {
            Unchanged,
            Loaded,
            Failed,
            StillFailing,
        }
        let steps: Vec<(Result<Contents, CertFileError>, Want)> = vec![
            (pair_of(&c1, &k1), Want::Unchanged),
            // Certificate replaced before the key: mismatch, reported once.
            (pair_of(&c2, &k1), Want::Failed),
            (pair_of(&c2, &k1), Want::StillFailing),
            (pair_of(&c2, &k2), Want::Loaded),
            (pair_of(&c2, &k2), Want::Unchanged),
            (gone(), Want::Failed),
            (gone(), Want::StillFailing),
            // Back to what is served: nothing to do, and the next failure is reported again.
            (pair_of(&c2, &k2), Want::Unchanged),
            (gone(), Want::Failed),
            (pair_of("junk", &k2), Want::Failed),
            (pair_of("junk", &k2), Want::StillFailing),
            (pair_of("other junk", &k2), Want::Failed),
            (pair_of(&c1, &k1), Want::Loaded),
        ];
        for (i, (read, want)) in steps.into_iter().enumerate() {
            let got = match r.check(read) {
                Check::Unchanged => Want::Unchanged,
                Check::Loaded(_) => Want::Loaded,
                Check::Failed(_) => Want::Failed,
                Check::StillFailing => Want::StillFailing,
            };
            assert_eq!(got, want, "step {i}");
        }
    }

    #[test]
    fn oversized_and_missing_files_are_read_errors() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let f = ServingCertFile {
            cert_file_path: big.clone(),
            key_file_path: dir.path().join("missing.pem"),
            file_sync_interval: Duration::from_secs(1),
        };
        let err = read_pair(&f).unwrap_err().to_string();
        assert_eq!(err, format!("{}: larger than 1048576 bytes", big.display()));
        std::fs::write(&big, b"small").unwrap();
        let err = read_pair(&f).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: No such file", dir.path().join("missing.pem").display())), "{err}");
    }
}
