//! The agent's own identity and its connection to the server.
//!
//! - [`StoredIdentity`]: the agent SVID, its key and the last known bundle, kept in `data_dir` (file mode
//!   0600, written atomically) so that a restart within the SVID's lifetime needs no new join token.
//! - [`ServerConn`]: the mTLS channel to the server (the server must present `spiffe://<td>/spire/server`
//!   valid for the current bundle), rebuilt whenever the agent SVID is renewed. It implements
//!   [`SvidSigner`] for the SVID manager.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sigil_core::bundle::Bundle;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::agent as pb;
use sigil_proto::agent::node_client::NodeClient;
use sigil_proto::convert;
use sigil_tls::ServerCheck;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::Channel;

use crate::manager::{SignResult, SvidSigner, new_key_and_csr, now_unix, validity};

/// The largest message the agent takes from the server (see [`ServerConn::client`]).
pub const MAX_SYNC_MESSAGE: usize = 256 * 1024 * 1024;

/// The file in `data_dir` holding the agent SVID, key and bundle.
pub const IDENTITY_FILE: &str = "agent-identity.json";

/// Errors talking to the server or handling the agent's identity.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] sigil_tls::TlsError),
    #[error("the server refused: {0}")]
    Rpc(#[from] Status),
    #[error("the server's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("key generation: {0}")]
    Key(#[from] crate::manager::ManagerError),
    #[error("cannot resolve server address {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("reading trust bundle {path}: {reason}")]
    TrustBundle { path: PathBuf, reason: String },
}

/// The agent's SVID, key and the trust bundle it last received.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub chain_der: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    pub bundle: Bundle,
    pub spiffe_id: SpiffeId,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for StoredIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IdentityFile {
    svid_chain: Vec<String>,
    key_pkcs8: String,
    trust_domain: String,
    bundle_jwks: String,
}

impl StoredIdentity {
    /// Checks a chain from the server against `bundle` and the expected trust domain.
    pub fn new(
        chain_der: Vec<Vec<u8>>,
        key_pkcs8: Vec<u8>,
        bundle: Bundle,
        td: &TrustDomain,
    ) -> Result<Self, NodeError> {
        let spiffe_id = sigil_core::x509::verify_x509_svid(&chain_der, &bundle, now_unix())
            .map_err(|e| NodeError::BadAnswer(format!("agent SVID: {e}")))?;
        if !spiffe_id.is_member_of(td) {
            return Err(NodeError::BadAnswer(format!("agent SVID {spiffe_id} is not in trust domain {td}")));
        }
        let leaf = chain_der.first().ok_or_else(|| NodeError::BadAnswer("empty agent SVID chain".into()))?;
        let (not_before, not_after) = validity(leaf).map_err(NodeError::BadAnswer)?;
        Ok(Self { chain_der, key_pkcs8, bundle, spiffe_id, not_before, not_after })
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(IDENTITY_FILE)
    }

    /// Loads the stored identity; `Ok(None)` when there is none.
    pub fn load(data_dir: &Path, td: &TrustDomain) -> Result<Option<Self>, NodeError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NodeError::Read { path, source }),
        };
        let corrupt = |reason: String| NodeError::Corrupt { path: path.clone(), reason };
        let f: IdentityFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if f.trust_domain != td.name() {
            return Err(corrupt(format!("stored identity is for trust domain {}, configured is {td}", f.trust_domain)));
        }
        let chain = f
            .svid_chain
            .iter()
            .map(|c| STANDARD.decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        let key = STANDARD.decode(&f.key_pkcs8).map_err(|e| corrupt(e.to_string()))?;
        let bundle =
            Bundle::from_jwks_json(td.clone(), f.bundle_jwks.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| corrupt("no certificate".into()))?;
        let spiffe_id = sigil_core::x509::leaf_spiffe_id(leaf).map_err(|e| corrupt(e.to_string()))?;
        let (not_before, not_after) = validity(leaf).map_err(corrupt)?;
        Ok(Some(Self { chain_der: chain, key_pkcs8: key, bundle, spiffe_id, not_before, not_after }))
    }

    /// Writes the identity atomically with mode 0600 (the directory is created with mode 0700).
    pub fn save(&self, data_dir: &Path) -> Result<(), NodeError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| NodeError::Write { path, source }
        };
        if !data_dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(werr(data_dir))?;
        }
        let f = IdentityFile {
            svid_chain: self.chain_der.iter().map(|c| STANDARD.encode(c)).collect(),
            key_pkcs8: STANDARD.encode(&self.key_pkcs8),
            trust_domain: self.bundle.trust_domain.name().to_owned(),
            bundle_jwks: self.bundle.to_jwks_json(),
        };
        let text = serde_json::to_string(&f).map_err(|e| NodeError::BadAnswer(e.to_string()))?;
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(werr(&tmp))?;
        file.write_all(text.as_bytes()).map_err(werr(&tmp))?;
        file.sync_all().map_err(werr(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(werr(&path))?;
        // The rename itself must survive a power loss: the server refuses the previous SVID once the new
        // one has been used.
        std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(werr(data_dir))?;
        Ok(())
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.not_after <= now
    }
}

/// Reads a PEM bundle file (the `-trustBundle` flag).
pub fn read_trust_bundle(path: &Path, td: &TrustDomain) -> Result<Bundle, NodeError> {
    let err = |reason: String| NodeError::TrustBundle { path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let b = Bundle::from_pem(td.clone(), &pem).map_err(|e| err(e.to_string()))?;
    if b.x509_authorities.is_empty() {
        return Err(err("no certificates".into()));
    }
    Ok(b)
}

/// Resolves `host:port` (first address).
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, NodeError> {
    let err = |reason: String| NodeError::Resolve { addr: format!("{host}:{port}"), reason };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no addresses".into()))
}

/// The server's SPIFFE ID.
pub fn server_id(td: &TrustDomain) -> Result<SpiffeId, NodeError> {
    td.join(sigil_core::entry::SERVER_ID_PATH).map_err(|e| NodeError::BadAnswer(e.to_string()))
}

/// Attests with `method`'s evidence (join token or projected service-account token). `check` says how to
/// authenticate the server (bundle or insecure bootstrap). Every call makes a new key: a re-attestation
/// never reuses the previous SVID's key.
pub async fn attest(
    addr: SocketAddr,
    check: ServerCheck,
    td: &TrustDomain,
    evidence: &crate::attestation::Evidence,
) -> Result<StoredIdentity, NodeError> {
    let (key, csr) = new_key_and_csr()?;
    let cfg = sigil_tls::client_config(check, None)?;
    let channel = sigil_tls::channel(addr, Arc::new(cfg))?;
    let resp = NodeClient::new(channel)
        .attest(pb::AttestRequest {
            attestation_type: evidence.attestation_type().into(),
            payload: evidence.payload().to_vec(),
            csr,
        })
        .await?
        .into_inner();
    let svid = resp.svid.ok_or_else(|| NodeError::BadAnswer("no SVID in AttestResponse".into()))?;
    let bundle = resp.bundle.ok_or_else(|| NodeError::BadAnswer("no bundle in AttestResponse".into()))?;
    let bundle = convert::bundle_from_pb(&bundle).map_err(|e| NodeError::BadAnswer(e.to_string()))?;
    if &bundle.trust_domain != td {
        return Err(NodeError::BadAnswer(format!("server sent a bundle for {}, expected {td}", bundle.trust_domain)));
    }
    StoredIdentity::new(svid.cert_chain, key, bundle, td)
}

/// The mTLS connection to the server, swapped on agent SVID renewal.
#[derive(Debug)]
pub struct ServerConn {
    addr: SocketAddr,
    server_id: SpiffeId,
    bundle: watch::Receiver<Arc<Bundle>>,
    channel: RwLock<Option<Channel>>,
}

impl ServerConn {
    pub fn new(addr: SocketAddr, server_id: SpiffeId, bundle: watch::Receiver<Arc<Bundle>>) -> Self {
        Self { addr, server_id, bundle, channel: RwLock::new(None) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Builds a new channel presenting `identity`'s SVID.
    pub fn set_identity(&self, identity: &StoredIdentity) -> Result<(), NodeError> {
        let ck = sigil_tls::certified_key(&identity.chain_der, &identity.key_pkcs8)?;
        let check = ServerCheck::SpiffeId { expected: self.server_id.clone(), bundle: self.bundle.clone() };
        let cfg = sigil_tls::client_config(check, Some(ck))?;
        let channel = sigil_tls::channel(self.addr, Arc::new(cfg))?;
        if let Ok(mut slot) = self.channel.write() {
            *slot = Some(channel);
        }
        Ok(())
    }

    pub fn client(&self) -> Result<NodeClient<Channel>, Status> {
        self.channel
            .read()
            .ok()
            .and_then(|c| c.clone())
            // A full sync snapshot is one message: ~190 bytes per entry, so the 4 MiB default would stop an
            // agent that may see more than ~20,000 entries. 256 MiB: over a million.
            .map(|c| NodeClient::new(c).max_decoding_message_size(MAX_SYNC_MESSAGE))
            .ok_or_else(|| Status::unavailable("the agent is not attested yet"))
    }

    /// Renews the agent SVID with a new key; returns the new identity (bundle unchanged).
    pub async fn renew(&self, current: &StoredIdentity, td: &TrustDomain) -> Result<StoredIdentity, NodeError> {
        let (key, csr) = new_key_and_csr()?;
        let resp = self.client()?.renew_agent_svid(pb::RenewAgentSvidRequest { csr }).await?.into_inner();
        let svid = resp.svid.ok_or_else(|| NodeError::BadAnswer("no SVID in RenewAgentSvidResponse".into()))?;
        let bundle = self.bundle.borrow().as_ref().clone();
        let bundle = if bundle.x509_authorities.is_empty() { current.bundle.clone() } else { bundle };
        StoredIdentity::new(svid.cert_chain, key, bundle, td)
    }
}

#[async_trait::async_trait]
impl SvidSigner for ServerConn {
    async fn batch_new_x509_svid(&self, params: Vec<(String, Vec<u8>)>) -> Result<Vec<SignResult>, Status> {
        let req = pb::BatchNewX509SvidRequest {
            params: params
                .into_iter()
                .map(|(entry_id, csr)| pb::batch_new_x509_svid_request::Param { entry_id, csr })
                .collect(),
        };
        let resp = self.client()?.batch_new_x509_svid(req).await?.into_inner();
        Ok(resp
            .results
            .into_iter()
            .map(|r| {
                let out = match (r.code, r.svid) {
                    (0, Some(svid)) => Ok(svid.cert_chain),
                    (0, None) => Err("no SVID in result".to_owned()),
                    (code, _) => Err(format!("{:?}: {}", tonic::Code::from(code), r.message)),
                };
                (r.entry_id, out)
            })
            .collect())
    }

    async fn new_jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<(String, i64), Status> {
        let resp = self
            .client()?
            .new_jwt_svid(pb::NewJwtSvidRequest { entry_id: entry_id.to_owned(), audience: audience.to_vec() })
            .await?
            .into_inner();
        Ok((resp.token, resp.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCa;

    #[test]
    fn identity_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let ca = TestCa::new("example.org").unwrap();
        let id = SpiffeId::new("spiffe://example.org/spire/agent/join_token/abc").unwrap();
        let (chain, key) = ca.issue(&id, 600).unwrap();
        let td = ca.trust_domain.clone();
        let ident = StoredIdentity::new(chain, key, ca.bundle(), &td).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(StoredIdentity::load(&data, &td).unwrap(), None);
        ident.save(&data).unwrap();
        ident.save(&data).unwrap();
        let mode = std::fs::metadata(StoredIdentity::path(&data)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        let back = StoredIdentity::load(&data, &td).unwrap().unwrap();
        assert_eq!(back.spiffe_id, id);
        assert_eq!(back.chain_der, ident.chain_der);
        assert_eq!(back.key_pkcs8, ident.key_pkcs8);
        assert_eq!(back.bundle.x509_authorities, ident.bundle.x509_authorities);
        assert_eq!(back.bundle.jwt_authorities, ident.bundle.jwt_authorities);
        let other = TrustDomain::new("other.org").unwrap();
        assert!(matches!(StoredIdentity::load(&data, &other), Err(NodeError::Corrupt { .. })));
        std::fs::write(StoredIdentity::path(&data), "{").unwrap();
        assert!(matches!(StoredIdentity::load(&data, &td), Err(NodeError::Corrupt { .. })));
    }

    #[test]
    fn foreign_or_unverifiable_svid_is_refused() {
        let ca = TestCa::new("example.org").unwrap();
        let other_ca = TestCa::new("example.org").unwrap();
        let id = SpiffeId::new("spiffe://example.org/spire/agent/join_token/abc").unwrap();
        let (chain, key) = other_ca.issue(&id, 600).unwrap();
        let td = ca.trust_domain.clone();
        assert!(StoredIdentity::new(chain, key, ca.bundle(), &td).is_err(), "signed by a CA outside the bundle");
    }
}
