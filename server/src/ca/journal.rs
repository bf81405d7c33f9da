//! The CA journal: a serde_json document describing the slots, stored by the caller in the datastore.
//! It holds certificates and public keys only; private keys live in files under `<data_dir>/keys/`.

use serde::{Deserialize, Serialize};

use super::KeyType;
use super::rotation::SlotState;

pub(crate) const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub version: u32,
    pub trust_domain: String,
    pub x509: [Option<X509Record>; 2],
    pub jwt: [Option<JwtRecord>; 2],
    /// CAs pushed out of a slot before they expired: still published until `not_after`.
    #[serde(default)]
    pub retired_x509: Vec<RetiredX509>,
    #[serde(default)]
    pub retired_jwt: Vec<JwtPublic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct X509Record {
    pub id: String,
    pub state: SlotState,
    pub key_type: KeyType,
    /// File name (no directory) under the keys directory.
    pub key_file: String,
    #[serde(with = "b64")]
    pub cert_der: Vec<u8>,
    /// Certificates between the CA and the roots (upstream intermediates); empty when self-signed.
    #[serde(with = "b64_list")]
    pub chain_der: Vec<Vec<u8>>,
    /// What this CA contributes to the bundle: itself when self-signed, else the upstream roots.
    #[serde(with = "b64_list")]
    pub authorities_der: Vec<Vec<u8>>,
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JwtRecord {
    pub id: String,
    pub state: SlotState,
    pub key_type: KeyType,
    pub key_file: String,
    pub kid: String,
    #[serde(with = "b64")]
    pub public_key_spki_der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetiredX509 {
    #[serde(with = "b64_list")]
    pub authorities_der: Vec<Vec<u8>>,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JwtPublic {
    pub kid: String,
    #[serde(with = "b64")]
    pub public_key_spki_der: Vec<u8>,
    pub not_after: i64,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod b64_list {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| STANDARD.encode(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter().map(|s| STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_with_base64_fields() {
        let j = Journal {
            version: JOURNAL_VERSION,
            trust_domain: "example.org".into(),
            x509: [
                Some(X509Record {
                    id: "a".into(),
                    state: SlotState::Active,
                    key_type: KeyType::EcP256,
                    key_file: "x509-ca-a.key.pem".into(),
                    cert_der: vec![1, 2, 3],
                    chain_der: vec![],
                    authorities_der: vec![vec![1, 2, 3]],
                    not_before: 1,
                    not_after: 2,
                }),
                None,
            ],
            jwt: [None, None],
            retired_x509: vec![],
            retired_jwt: vec![JwtPublic { kid: "k".into(), public_key_spki_der: vec![9], not_after: 5 }],
        };
        let bytes = serde_json::to_vec(&j).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"cert_der\":\"AQID\""), "{text}");
        assert!(text.contains("\"state\":\"active\""), "{text}");
        assert!(text.contains("\"key_type\":\"ec-p256\""), "{text}");
        let back: Journal = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, j);
    }
}
