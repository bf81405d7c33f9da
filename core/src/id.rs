//! SPIFFE IDs and trust domains (checklist section A).
//!
//! Parsing is delegated to the `spiffe` crate; these newtypes add the rules Sigil needs on top:
//! - **A5 (case)**: the spec text conflicts; the `spiffe` crate lowercases the trust domain, go-spiffe and
//!   SPIRE reject uppercase. Sigil rejects uppercase in the scheme and trust domain, so every ID it stores or
//!   issues is one go-spiffe accepts byte-for-byte. Paths are case-sensitive and kept as given.
//! - **A4**: IDs up to 2048 bytes are accepted; [`SpiffeId::check_issuable`] refuses to issue longer ones.
//! - serde as the plain URI string, so IDs can cross JSON/TOML boundaries without raw strings in code.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest SPIFFE ID URI Sigil accepts or issues (checklist A4).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name (checklist A2).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a SPIFFE ID or trust domain was refused. The message names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    SpiffeId { input: String, reason: String },
    #[error("invalid trust domain {input:?}: {reason}")]
    TrustDomain { input: String, reason: String },
}

fn id_err(input: &str, reason: impl fmt::Display) -> IdError {
    IdError::SpiffeId { input: truncate_for_message(input), reason: reason.to_string() }
}

fn td_err(input: &str, reason: impl fmt::Display) -> IdError {
    IdError::TrustDomain { input: truncate_for_message(input), reason: reason.to_string() }
}

/// Error messages echo input; keep a hostile 1 MiB input from becoming a 1 MiB log line.
fn truncate_for_message(input: &str) -> String {
    const MAX: usize = 128;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &input[..end])
}

fn check_lowercase_td(input: &str, td: &str) -> Result<(), String> {
    if td.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("trust domain {td:?} contains uppercase letters; SPIFFE trust domains must be lowercase"));
    }
    let _ = input;
    Ok(())
}

/// A validated trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(spiffe::TrustDomain);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID (`spiffe://example.org`).
    pub fn new(input: &str) -> Result<Self, IdError> {
        let name = input.strip_prefix("spiffe://").unwrap_or(input);
        if name.is_empty() {
            return Err(td_err(input, "trust domain is empty"));
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(td_err(input, format!("longer than {MAX_TRUST_DOMAIN_LEN} bytes")));
        }
        if input.starts_with("spiffe://") && name.contains('/') {
            return Err(td_err(input, "a trust domain ID has no path"));
        }
        check_lowercase_td(input, name).map_err(|r| td_err(input, r))?;
        if input.contains("://") && !input.starts_with("spiffe://") {
            return Err(td_err(input, "scheme must be spiffe"));
        }
        spiffe::TrustDomain::new(name).map(Self).map_err(|e| td_err(input, e))
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        self.0.as_str()
    }

    /// The trust domain's own ID, `spiffe://example.org` (also the key of bundle maps).
    pub fn id_string(&self) -> String {
        self.0.id_string()
    }

    /// The trust domain's ID as a [`SpiffeId`] with an empty path.
    pub fn to_spiffe_id(&self) -> SpiffeId {
        // `from_segments` with no segments has no failing branch: it is the trust domain ID itself.
        let inner = spiffe::SpiffeId::from_segments(self.0.clone(), &[])
            .unwrap_or_else(|e| unreachable!("trust domain ID from a valid trust domain: {e}"));
        SpiffeId { uri: inner.to_string(), inner }
    }

    /// Builds `spiffe://<td><path>`; `path` must start with `/` and follow the path rules.
    pub fn join(&self, path: &str) -> Result<SpiffeId, IdError> {
        let uri = format!("spiffe://{}{}", self.name(), path);
        if !path.starts_with('/') {
            // Without the slash the path would extend the trust domain name: spiffe://example.orga.
            return Err(id_err(&uri, "path must start with '/'"));
        }
        SpiffeId::new(&uri)
    }

    /// The `spiffe` crate's type, for APIs of that crate.
    pub fn as_spiffe(&self) -> &spiffe::TrustDomain {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.name())
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID such as `spiffe://example.org/ns/default/sa/web`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    inner: spiffe::SpiffeId,
    /// The canonical URI, kept so `as_str` needs no allocation.
    uri: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID (checklist A1-A5).
    pub fn new(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(id_err(input, "SPIFFE ID is empty"));
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(id_err(input, format!("longer than {MAX_SPIFFE_ID_LEN} bytes")));
        }
        let Some(rest) = input.strip_prefix("spiffe://") else {
            return Err(id_err(input, "scheme must be \"spiffe://\" (lowercase)"));
        };
        if input.contains('?') {
            return Err(id_err(input, "a SPIFFE ID has no query"));
        }
        if input.contains('#') {
            return Err(id_err(input, "a SPIFFE ID has no fragment"));
        }
        if input.contains('%') {
            return Err(id_err(input, "percent-encoding is not allowed"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(id_err(input, "trust domain must not contain userinfo"));
        }
        if authority.contains(':') {
            return Err(id_err(input, "trust domain must not contain a port"));
        }
        check_lowercase_td(input, authority).map_err(|r| id_err(input, r))?;
        let inner = spiffe::SpiffeId::new(input).map_err(|e| id_err(input, e))?;
        let uri = inner.to_string();
        Ok(Self { inner, uri })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.inner.trust_domain().clone())
    }

    /// The path, empty for a trust domain ID.
    pub fn path(&self) -> &str {
        self.inner.path()
    }

    /// True for `spiffe://td` (no path): such an ID may name a CA, never a leaf SVID (B2/B3).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.inner.is_member_of(&td.0)
    }

    /// Refuses IDs Sigil must not put into an SVID (A4, B2): over 2048 bytes or without a path.
    pub fn check_issuable(&self) -> Result<(), IdError> {
        if self.uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(id_err(&self.uri, format!("longer than {MAX_SPIFFE_ID_LEN} bytes")));
        }
        if self.is_trust_domain_id() {
            return Err(id_err(&self.uri, "a workload SPIFFE ID needs a non-empty path"));
        }
        Ok(())
    }

    /// The `spiffe` crate's type, for APIs of that crate.
    pub fn as_spiffe(&self) -> &spiffe::SpiffeId {
        &self.inner
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}
