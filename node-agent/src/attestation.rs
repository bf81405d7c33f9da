//! Node attestation methods: what the agent proves to the server to get its agent SVID.
//!
//! - `join_token`: a single-use token from `sigil-server token generate`; once used, the agent keeps its
//!   identity by renewing its SVID (RenewAgentSvid) and needs a new token if it ever loses it.
//! - `k8s_psat`: the projected service-account token the kubelet writes for the agent's pod (SPIRE's
//!   `k8s_psat`, payload `{"cluster": ..., "token": ...}`). The token file is read again for every
//!   attestation, because the kubelet rotates it. Such agents are *re-attestable*: instead of renewing, they
//!   attest again with a fresh token (a new key each time), as SPIRE's agent does; the server keeps one agent
//!   record per node.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// SPIRE's default `token_path` of the k8s_psat agent plugin (a projected volume at /var/run/secrets/tokens).
pub const DEFAULT_PSAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// Largest token file read: service-account tokens are a few KiB; a larger file is not a token.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// `[node_attestor.k8s_psat]` of the agent's config file (SPIRE's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatConfig {
    /// Must equal a key of the server's `[node_attestor.k8s_psat.clusters]`.
    #[serde(default)]
    pub cluster: String,
    /// Where the kubelet writes the projected token (default [`DEFAULT_PSAT_TOKEN_PATH`]).
    #[serde(default)]
    pub token_path: Option<PathBuf>,
}

impl K8sPsatConfig {
    pub fn token_path(&self) -> &Path {
        self.token_path.as_deref().unwrap_or(Path::new(DEFAULT_PSAT_TOKEN_PATH))
    }
}

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("cannot read the service-account token {path}: {source}")]
    ReadToken { path: PathBuf, source: std::io::Error },
    #[error("the service-account token {path} is empty")]
    EmptyToken { path: PathBuf },
    #[error("the service-account token {path} is larger than {MAX_TOKEN_BYTES} bytes")]
    TokenTooLarge { path: PathBuf },
    #[error("k8s_psat: cannot encode the payload: {0}")]
    Encode(String),
}

/// How this agent attests its node.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeAttestor {
    JoinToken(String),
    K8sPsat(K8sPsatConfig),
}

impl fmt::Debug for NodeAttestor {
    // The join token is a credential: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(..)"),
            Self::K8sPsat(c) => f.debug_tuple("K8sPsat").field(c).finish(),
        }
    }
}

/// One attestation's payload. Holds a credential: its `Debug` shows only the type.
pub struct Evidence {
    kind: &'static str,
    payload: Vec<u8>,
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evidence").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Evidence {
    pub fn attestation_type(&self) -> &'static str {
        self.kind
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl NodeAttestor {
    /// The attestation type sent to the server (SPIRE's plugin name).
    pub fn name(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => "join_token",
            Self::K8sPsat(_) => "k8s_psat",
        }
    }

    /// Re-attestable methods attest again (fresh evidence) instead of renewing, and after an eviction.
    pub fn reattestable(&self) -> bool {
        matches!(self, Self::K8sPsat(_))
    }

    /// The evidence for one attestation; for k8s_psat the token file is read now (the kubelet rotates it).
    pub fn evidence(&self) -> Result<Evidence, EvidenceError> {
        match self {
            Self::JoinToken(token) => Ok(Evidence { kind: "join_token", payload: token.as_bytes().to_vec() }),
            Self::K8sPsat(c) => {
                let token = read_token(c.token_path())?;
                let payload = serde_json::to_vec(&serde_json::json!({ "cluster": c.cluster, "token": token }))
                    .map_err(|e| EvidenceError::Encode(e.to_string()))?;
                Ok(Evidence { kind: "k8s_psat", payload })
            }
        }
    }
}

/// Reads a service-account token file (trimmed, at most 64 KiB, not empty): the k8s_psat evidence and the
/// kubelet client's bearer token, both re-read at each use because the kubelet rotates them.
pub(crate) fn read_token(path: &Path) -> Result<String, EvidenceError> {
    use std::io::Read;
    let err = |source| EvidenceError::ReadToken { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut text = String::new();
    file.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text).map_err(err)?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(EvidenceError::TokenTooLarge { path: path.to_owned() });
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(EvidenceError::EmptyToken { path: path.to_owned() });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn psat_payload_is_spire_json_and_rereads_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first.jwt\n").unwrap();
        let a = NodeAttestor::K8sPsat(K8sPsatConfig { cluster: "prod".into(), token_path: Some(path.clone()) });
        let e = a.evidence().unwrap();
        assert_eq!(e.attestation_type(), "k8s_psat");
        let v: serde_json::Value = serde_json::from_slice(e.payload()).unwrap();
        assert_eq!(v, serde_json::json!({"cluster": "prod", "token": "first.jwt"}));
        // The kubelet rotated the token: the next attestation sends the new one.
        std::fs::write(&path, "second.jwt").unwrap();
        let v: serde_json::Value = serde_json::from_slice(a.evidence().unwrap().payload()).unwrap();
        assert_eq!(v["token"], "second.jwt");
        assert!(a.reattestable());
        assert!(!format!("{:?}", a.evidence().unwrap()).contains("second.jwt"));
    }

    #[test]
    fn bad_token_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |p: &Path| NodeAttestor::K8sPsat(K8sPsatConfig { cluster: "c".into(), token_path: Some(p.into()) });
        let missing = dir.path().join("missing");
        assert!(matches!(cfg(&missing).evidence(), Err(EvidenceError::ReadToken { .. })));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = cfg(&empty).evidence().unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70_000]).unwrap();
        assert!(matches!(cfg(&big).evidence(), Err(EvidenceError::TokenTooLarge { .. })));
    }

    #[test]
    fn join_token_is_its_own_payload_and_not_logged() {
        let a = NodeAttestor::JoinToken("s3cret".into());
        let e = a.evidence().unwrap();
        assert_eq!((e.attestation_type(), e.payload()), ("join_token", b"s3cret".as_slice()));
        assert!(!a.reattestable());
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn default_token_path_is_spires() {
        let c = K8sPsatConfig { cluster: "c".into(), token_path: None };
        assert_eq!(c.token_path(), Path::new("/var/run/secrets/tokens/spire-agent"));
    }
}
