//! Turns CRs into the world's typed inputs, refusing what the schema could not catch (bad templates, label
//! selectors, durations). The error text goes to the CR's `Ready` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sigil_core::{RegistrationEntry, TrustDomain};

use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry, GoDuration, SPIFFE_ID_TEMPLATE_REASON};
use crate::labels::LabelMatcher;
use crate::template::Template;
use crate::world::{Policy, Rank, StaticEntry};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CompileError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl ToString) -> CompileError {
    CompileError { field: field.into(), reason: reason.to_string() }
}

/// The ownership rank from an object's metadata.
pub fn rank(meta: &ObjectMeta) -> Rank {
    Rank {
        created: meta.creation_timestamp.as_ref().map_or(i64::MAX, |t| t.0.as_second()),
        deleting: meta.deletion_timestamp.is_some(),
        uid: meta.uid.clone().unwrap_or_default(),
    }
}

fn ttl_seconds(field: &str, d: Option<&GoDuration>) -> Result<u32, CompileError> {
    let Some(d) = d else { return Ok(0) };
    let d = d.to_duration().map_err(|e| err(field, e))?;
    u32::try_from(d.as_secs()).map_err(|_| err(field, "too long"))
}

fn template(field: String, src: &str) -> Result<Template, CompileError> {
    Template::parse(src).map_err(|e| err(field, e))
}

pub fn policy(cr: &ClusterSPIFFEID) -> Result<Policy, CompileError> {
    let s = &cr.spec;
    let name = cr.metadata.name.as_deref().unwrap_or_default().into();
    Ok(Policy {
        name,
        rank: rank(&cr.metadata).into(),
        class_name: s.class_name.clone().filter(|c| !c.is_empty()),
        namespace_selector: LabelMatcher::from_selector(s.namespace_selector.as_ref())
            .map_err(|e| err("namespaceSelector", e))?,
        pod_selector: LabelMatcher::from_selector(s.pod_selector.as_ref()).map_err(|e| err("podSelector", e))?,
        spiffe_id: {
            // The schema refuses these; an object stored before the CRD had the rule gets the same words here.
            s.check_spiffe_id_template_start().map_err(|_| err("spiffeIDTemplate", SPIFFE_ID_TEMPLATE_REASON))?;
            template("spiffeIDTemplate".into(), &s.spiffe_id_template)?
        },
        workload_selectors: s
            .workload_selector_templates
            .iter()
            .enumerate()
            .map(|(i, t)| template(format!("workloadSelectorTemplates[{i}]"), t))
            .collect::<Result<_, _>>()?,
        dns_names: s
            .dns_name_templates
            .iter()
            .enumerate()
            .map(|(i, t)| template(format!("dnsNameTemplates[{i}]"), t))
            .collect::<Result<_, _>>()?,
        auto_populate_dns_names: s.auto_populate_dns_names,
        x509_svid_ttl: ttl_seconds("ttl", s.ttl.as_ref())?,
        jwt_svid_ttl: ttl_seconds("jwtTtl", s.jwt_ttl.as_ref())?,
        federates_with: s.federates_with().map_err(|e| err("federatesWith", e))?,
        admin: s.admin,
        downstream: s.downstream,
        fallback: s.fallback,
        hint: s.hint.clone().unwrap_or_default(),
    })
}

pub fn static_entry(cr: &ClusterStaticEntry, td: &TrustDomain) -> Result<StaticEntry, CompileError> {
    let s = &cr.spec;
    let mut selectors = s.selectors().map_err(|e| err("selectors", e))?;
    selectors.sort();
    selectors.dedup();
    let mut federates_with = s.federates_with().map_err(|e| err("federatesWith", e))?;
    federates_with.sort();
    federates_with.dedup();
    let entry = RegistrationEntry {
        id: String::new(),
        spiffe_id: s.spiffe_id().map_err(|e| err("spiffeID", e))?,
        parent_id: s.parent_id().map_err(|e| err("parentID", e))?,
        selectors,
        x509_svid_ttl: ttl_seconds("x509SVIDTTL", s.x509_svid_ttl.as_ref())?,
        jwt_svid_ttl: ttl_seconds("jwtSVIDTTL", s.jwt_svid_ttl.as_ref())?,
        dns_names: s.dns_names.clone(),
        federates_with,
        admin: s.admin,
        downstream: s.downstream,
        hint: s.hint.clone().unwrap_or_default(),
        entry_expiry: 0,
        store_svid: s.store_svid,
        revision: 0,
        created_at: 0,
    };
    entry.validate(td).map_err(|e| err("spec", e))?;
    Ok(StaticEntry {
        name: cr.metadata.name.clone().unwrap_or_default(),
        rank: rank(&cr.metadata),
        class_name: s.class_name.clone().filter(|c| !c.is_empty()),
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterSPIFFEIDSpec, SPIFFE_ID_TEMPLATE_MESSAGE};

    fn csid(template: &str) -> ClusterSPIFFEID {
        ClusterSPIFFEID::new("t", ClusterSPIFFEIDSpec { spiffe_id_template: template.into(), ..Default::default() })
    }

    #[test]
    fn spiffe_id_template_start_agrees_with_the_schema() {
        let refused =
            ["http://example.org/x", " spiffe://example.org/x", "\t{{ .TrustDomain }}", "x{{ .TrustDomain }}", ""];
        for template in refused {
            let e = policy(&csid(template)).err().unwrap_or_else(|| panic!("{template:?} was accepted"));
            assert_eq!(e.field, "spiffeIDTemplate", "{template:?}");
            assert_eq!(e.reason, SPIFFE_ID_TEMPLATE_REASON, "{template:?}");
            // The status says what the apiserver says for the same value.
            assert_eq!(format!("spiffeIDTemplate {}", e.reason), SPIFFE_ID_TEMPLATE_MESSAGE);
        }
        let accepted = [
            "spiffe://example.org/x",
            "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}",
            "{{ printf \"spiffe://%s/x\" .TrustDomain }}",
            "{{- printf \"spiffe://%s/x\" .TrustDomain -}}",
            "{{/* comment */}}spiffe://example.org/x",
        ];
        for template in accepted {
            assert!(policy(&csid(template)).is_ok(), "{template:?}: {:?}", policy(&csid(template)).err());
        }
        // A template that starts well but does not parse still fails, with the parser's words.
        let e = policy(&csid("{{ .TrustDomain")).err().unwrap_or_else(|| panic!("unclosed action accepted"));
        assert_eq!(e.field, "spiffeIDTemplate");
        assert_ne!(e.reason, SPIFFE_ID_TEMPLATE_REASON);
    }
}
