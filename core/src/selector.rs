//! Selectors (`type:value`) and the matching rule shared by the server and the agent.
//!
//! An entry matches a workload (or an alias entry matches a node) when **all** of the entry's selectors are
//! among the selectors the attestor produced (AND); several matching entries give several SVIDs (OR).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("invalid selector {0:?}: expected type:value (for example unix:uid:1000)")]
    MissingColon(String),
    #[error("invalid selector {0:?}: the type before ':' is empty")]
    EmptyType(String),
    #[error("invalid selector {0:?}: the value after ':' is empty")]
    EmptyValue(String),
    #[error("invalid selector type {0:?}: only letters, digits, '_' and '-' are allowed")]
    BadType(String),
}

/// One attested property, e.g. type `unix`, value `uid:1000` (written `unix:uid:1000`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its parts, with the same checks as parsing.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let shown = || format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(shown()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(shown()));
        }
        if !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        Ok(Self { kind: kind.to_owned(), value: value.to_owned() })
    }

    /// Parses `type:value`; the value may itself contain ':' (`unix:uid:1000`, `k8s:pod-label:app:web`).
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let (kind, value) = input.split_once(':').ok_or_else(|| SelectorError::MissingColon(input.to_owned()))?;
        Self::new(kind, value)
    }

    /// The attestor type, e.g. `unix`, `k8s`, `k8s_psat`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Everything after the first ':'.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// True when every selector of `required` is in `available` (the AND rule). An empty `required` never
/// matches: an entry without selectors would otherwise match every workload.
pub fn all_present(required: &[Selector], available: &BTreeSet<Selector>) -> bool {
    !required.is_empty() && required.iter().all(|s| available.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<Selector> {
        items.iter().filter_map(|s| Selector::parse(s).ok()).collect()
    }

    #[test]
    fn parse_table() {
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), ()>);
        let cases: &[Case] = &[
            ("unix:uid:1000", Ok(("unix", "uid:1000"))),
            ("k8s:pod-label:app:web", Ok(("k8s", "pod-label:app:web"))),
            ("k8s_psat:cluster:demo", Ok(("k8s_psat", "cluster:demo"))),
            ("unix", Err(())),
            (":uid:1", Err(())),
            ("unix:", Err(())),
            ("un ix:uid:1", Err(())),
            ("", Err(())),
        ];
        for (input, want) in cases {
            let got = Selector::parse(input);
            match (want, &got) {
                (Ok((k, v)), Ok(sel)) => {
                    assert_eq!((sel.kind(), sel.value()), (*k, *v), "{input}");
                    assert_eq!(sel.to_string(), *input);
                }
                (Err(()), Err(_)) => {}
                _ => panic!("{input}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn missing_colon_message_says_what_to_write() {
        let err = Selector::parse("unixuid1000").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("expected type:value"), "{err}");
    }

    #[test]
    fn matching_is_and_of_entry_selectors() {
        let workload = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:alice"]);
        let table: &[(&[&str], bool)] = &[
            (&["unix:uid:1000"], true),
            (&["unix:uid:1000", "unix:gid:1000"], true),
            (&["unix:uid:1000", "unix:gid:0"], false),
            (&["unix:uid:0"], false),
            (&[], false),
        ];
        for (required, want) in table {
            let required: Vec<Selector> = required.iter().filter_map(|s| Selector::parse(s).ok()).collect();
            assert_eq!(all_present(&required, &workload), *want, "{required:?}");
        }
    }
}
