//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), evaluated without the API server.
//!
//! Semantics follow apimachinery's `LabelSelectorAsSelector`: all requirements must hold; `In` and `NotIn`
//! need at least one value, `Exists` and `DoesNotExist` none; an empty selector matches everything. A
//! *missing* selector (the CR field not set) also matches everything, as in spire-controller-manager.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a label selector can't be used; it goes to the CR's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelSelectorError {
    #[error("matchExpressions[{index}]: operator {operator:?} is not one of In, NotIn, Exists, DoesNotExist")]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    MissingValues { index: usize, operator: &'static str },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    UnexpectedValues { index: usize, operator: &'static str },
    #[error("matchExpressions[{index}]: empty key")]
    EmptyKey { index: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelMatcher {
    requirements: Vec<Requirement>,
}

impl LabelMatcher {
    /// Matches every label set (a missing or empty selector).
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn from_selector(sel: Option<&LabelSelector>) -> Result<Self, LabelSelectorError> {
        let Some(sel) = sel else {
            return Ok(Self::everything());
        };
        let mut requirements = vec![];
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            if e.key.is_empty() {
                return Err(LabelSelectorError::EmptyKey { index });
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let req = match e.operator.as_str() {
                "In" | "NotIn" => {
                    let operator = if e.operator == "In" { "In" } else { "NotIn" };
                    if values.is_empty() {
                        return Err(LabelSelectorError::MissingValues { index, operator });
                    }
                    if operator == "In" {
                        Requirement::In(e.key.clone(), values)
                    } else {
                        Requirement::NotIn(e.key.clone(), values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    let operator = if e.operator == "Exists" { "Exists" } else { "DoesNotExist" };
                    if !values.is_empty() {
                        return Err(LabelSelectorError::UnexpectedValues { index, operator });
                    }
                    if operator == "Exists" {
                        Requirement::Exists(e.key.clone())
                    } else {
                        Requirement::DoesNotExist(e.key.clone())
                    }
                }
                other => return Err(LabelSelectorError::UnknownOperator { index, operator: other.to_string() }),
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    pub fn matches<L: LabelSet + ?Sized>(&self, labels: &L) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.label(k).is_some_and(|v| vs.contains(v)),
            // As in apimachinery: NotIn also matches when the label is absent.
            Requirement::NotIn(k, vs) => labels.label(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::DoesNotExist(k) => labels.label(k).is_none(),
        })
    }
}

/// Something with labels a selector can be matched against.
pub trait LabelSet {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSet for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn selector_table() {
        type Case<'a> = (&'a str, Option<LabelSelector>, &'a [(&'a str, &'a str)], bool);
        let cases: Vec<Case> = vec![
            ("missing selector matches all", None, &[("a", "1")], true),
            ("empty selector matches all", Some(sel(&[], vec![])), &[], true),
            ("matchLabels hit", Some(sel(&[("app", "web")], vec![])), &[("app", "web"), ("x", "y")], true),
            ("matchLabels wrong value", Some(sel(&[("app", "web")], vec![])), &[("app", "db")], false),
            ("matchLabels absent", Some(sel(&[("app", "web")], vec![])), &[], false),
            ("In hit", Some(sel(&[], vec![expr("tier", "In", &["a", "b"])])), &[("tier", "b")], true),
            ("In miss", Some(sel(&[], vec![expr("tier", "In", &["a", "b"])])), &[("tier", "c")], false),
            ("In absent", Some(sel(&[], vec![expr("tier", "In", &["a"])])), &[], false),
            ("NotIn hit", Some(sel(&[], vec![expr("tier", "NotIn", &["a"])])), &[("tier", "a")], false),
            ("NotIn other", Some(sel(&[], vec![expr("tier", "NotIn", &["a"])])), &[("tier", "b")], true),
            ("NotIn absent matches", Some(sel(&[], vec![expr("tier", "NotIn", &["a"])])), &[], true),
            ("Exists", Some(sel(&[], vec![expr("x", "Exists", &[])])), &[("x", "")], true),
            ("Exists absent", Some(sel(&[], vec![expr("x", "Exists", &[])])), &[], false),
            ("DoesNotExist", Some(sel(&[], vec![expr("x", "DoesNotExist", &[])])), &[("x", "1")], false),
            ("DoesNotExist absent", Some(sel(&[], vec![expr("x", "DoesNotExist", &[])])), &[], true),
            (
                "all must hold",
                Some(sel(&[("app", "web")], vec![expr("env", "In", &["prod"])])),
                &[("app", "web"), ("env", "dev")],
                false,
            ),
        ];
        for (name, s, l, want) in cases {
            let m = LabelMatcher::from_selector(s.as_ref()).unwrap();
            assert_eq!(m.matches(&labels(l)), want, "{name}");
        }
    }

    #[test]
    fn invalid_selectors_are_refused() {
        let cases = vec![
            (expr("a", "Has", &[]), "operator \"Has\""),
            (expr("a", "In", &[]), "In needs at least one value"),
            (expr("a", "NotIn", &[]), "NotIn needs at least one value"),
            (expr("a", "Exists", &["x"]), "Exists takes no values"),
            (expr("", "Exists", &[]), "empty key"),
        ];
        for (e, want) in cases {
            let err = LabelMatcher::from_selector(Some(&sel(&[], vec![e]))).unwrap_err();
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
    }
}
