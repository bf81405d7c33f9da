//! Key generation, key files (mode 0600 from creation) and PEM/DER key parsing.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, SignatureAlgorithm};
use rustls_pki_types::PrivatePkcs8KeyDer;

use super::{CaError, KeyType};

/// The rcgen signature algorithm for a key type.
pub(crate) fn sign_alg(kt: KeyType) -> &'static SignatureAlgorithm {
    match kt {
        KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
        KeyType::EcP384 => &PKCS_ECDSA_P384_SHA384,
        KeyType::Rsa2048 => &PKCS_RSA_SHA256,
    }
}

/// Generates a new key. RSA goes through the `rsa` crate because ring cannot generate RSA keys.
pub(crate) fn generate(kt: KeyType) -> Result<KeyPair, CaError> {
    match kt {
        KeyType::EcP256 | KeyType::EcP384 => {
            KeyPair::generate_for(sign_alg(kt)).map_err(|e| CaError::KeyGeneration(e.to_string()))
        }
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
            let doc = key.to_pkcs8_der().map_err(|e| CaError::KeyGeneration(e.to_string()))?;
            from_pkcs8(doc.as_bytes(), kt).map_err(CaError::KeyGeneration)
        }
    }
}

/// Loads a PKCS#8 DER key of a known type.
pub(crate) fn from_pkcs8(der: &[u8], kt: KeyType) -> Result<KeyPair, String> {
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), sign_alg(kt)).map_err(|e| e.to_string())
}

/// Loads a PKCS#8 DER key of unknown type, trying every supported type.
pub(crate) fn from_pkcs8_any(der: &[u8]) -> Result<(KeyPair, KeyType), String> {
    for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        if let Ok(k) = from_pkcs8(der, kt) {
            return Ok((k, kt));
        }
    }
    Err("not an EC P-256, EC P-384 or RSA PKCS#8 private key".to_owned())
}

/// Parses a PEM private key: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or `RSA PRIVATE KEY` (PKCS#1).
pub(crate) fn parse_private_key_pem(text: &[u8]) -> Result<(KeyPair, KeyType), String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let Some(block) = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) else {
        return Err("no PRIVATE KEY block".to_owned());
    };
    match block.tag() {
        "PRIVATE KEY" => from_pkcs8_any(block.contents()),
        "EC PRIVATE KEY" => {
            for (kt, curve_oid) in [(KeyType::EcP256, OID_P256), (KeyType::EcP384, OID_P384)] {
                let pkcs8 = sec1_to_pkcs8(block.contents(), curve_oid);
                if let Ok(k) = from_pkcs8(&pkcs8, kt) {
                    return Ok((k, kt));
                }
            }
            Err("EC PRIVATE KEY is not a P-256 or P-384 key".to_owned())
        }
        "RSA PRIVATE KEY" => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(block.contents()).map_err(|e| e.to_string())?;
            let doc = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            let kp = from_pkcs8(doc.as_bytes(), KeyType::Rsa2048)?;
            Ok((kp, KeyType::Rsa2048))
        }
        other => Err(format!("unsupported key block {other:?}")),
    }
}

// DER bodies (without tag and length) of the OIDs needed to wrap a SEC1 key into PKCS#8.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Wraps a SEC1 `ECPrivateKey` into a PKCS#8 `PrivateKeyInfo` for the given curve.
fn sec1_to_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    let version = der_tlv(0x02, &[0]);
    let alg = der_tlv(0x30, &[der_tlv(0x06, OID_EC_PUBLIC_KEY), der_tlv(0x06, curve_oid)].concat());
    let key = der_tlv(0x04, sec1);
    der_tlv(0x30, &[version, alg, key].concat())
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), CaError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CaError::Io { path: dir.to_path_buf(), source })
}

/// Writes a new file readable by the owner only. The mode is set at creation (never chmod after), and an
/// existing file is never overwritten.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let io = |source| CaError::Io { path: path.to_path_buf(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// PEM of a PKCS#8 private key.
pub(crate) fn private_key_pem(key: &KeyPair) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", key.serialize_der()))
}

/// Reads a key file written by [`write_private_file`] and checks it holds a key of `kt`.
pub(crate) fn read_key_file(path: &Path, kt: KeyType) -> Result<KeyPair, CaError> {
    let bytes = fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CaError::MissingKeyFile { path: path.to_path_buf() }
        } else {
            CaError::Io { path: path.to_path_buf(), source }
        }
    })?;
    let corrupt = |reason: String| CaError::CorruptKeyFile { path: path.to_path_buf(), reason };
    let block = pem::parse(&bytes).map_err(|e| corrupt(format!("not PEM: {e}")))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(corrupt(format!("expected a PRIVATE KEY block, found {:?}", block.tag())));
    }
    from_pkcs8(block.contents(), kt).map_err(|e| corrupt(format!("not a valid {kt} key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn der_tlv_long_form_lengths() {
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der_tlv(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = der_tlv(0x04, &[0u8; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn sec1_p256_key_round_trips_through_pkcs8_wrapper() {
        // A SEC1 key produced by openssl for P-256 (generated at test time).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let out = std::process::Command::new("openssl")
            .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&text).contains("EC PRIVATE KEY"));
        let (kp, kt) = parse_private_key_pem(&text).unwrap();
        assert_eq!(kt, KeyType::EcP256);
        assert_eq!(kp.der_bytes().len(), 65);
    }

    #[test]
    fn private_file_is_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private_file(&path, b"x").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(write_private_file(&path, b"y"), Err(CaError::Io { .. })));
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn key_file_round_trip_and_type_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let key = generate(KeyType::EcP384).unwrap();
        write_private_file(&path, private_key_pem(&key).as_bytes()).unwrap();
        let back = read_key_file(&path, KeyType::EcP384).unwrap();
        assert_eq!(back.der_bytes(), key.der_bytes());
        assert!(matches!(read_key_file(&path, KeyType::EcP256), Err(CaError::CorruptKeyFile { .. })));
        assert!(matches!(
            read_key_file(&dir.path().join("missing"), KeyType::EcP256),
            Err(CaError::MissingKeyFile { .. })
        ));
    }
}
