#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

use std::collections::BTreeMap;

use super::*;

fn cluster() -> K8sPsatCluster {
    K8sPsatCluster {
        service_account_allow_list: ["spire:spire-agent".to_owned()].into(),
        audience: vec!["spire-server".into()],
        kube_config_file: None,
        allowed_node_label_keys: ["zone".to_owned()].into(),
        allowed_pod_label_keys: ["app".to_owned()].into(),
        use_pod_uid_for_agent_id: false,
    }
}

fn config() -> K8sPsatConfig {
    K8sPsatConfig { clusters: [("demo".to_owned(), cluster())].into() }
}

fn review() -> TokenReviewFacts {
    TokenReviewFacts {
        authenticated: true,
        error: String::new(),
        audiences: vec!["spire-server".into()],
        username: "system:serviceaccount:spire:spire-agent".into(),
        extra: [
            (POD_NAME_KEY.to_owned(), vec!["agent-x1".to_owned()]),
            (POD_UID_KEY.to_owned(), vec!["pod-uid-1".to_owned()]),
            ("authentication.kubernetes.io/node-name".to_owned(), vec!["n1".to_owned()]),
        ]
        .into(),
    }
}

fn identity() -> TokenIdentity {
    TokenIdentity {
        namespace: "spire".into(),
        service_account: "spire-agent".into(),
        pod_name: "agent-x1".into(),
        pod_uid: "pod-uid-1".into(),
    }
}

fn pod() -> PodFacts {
    PodFacts {
        uid: "pod-uid-1".into(),
        node_name: "n1".into(),
        host_ip: "10.0.0.7".into(),
        labels: [("app".to_owned(), "spire-agent".to_owned()), ("secret".to_owned(), "x".to_owned())].into(),
    }
}

fn node() -> NodeFacts {
    NodeFacts {
        uid: "9a1b8c2e-0000-4000-8000-000000000001".into(),
        labels: [("zone".to_owned(), "z1".to_owned()), ("kubernetes.io/os".to_owned(), "linux".to_owned())].into(),
    }
}

#[test]
fn payload_table() {
    let cfg = config();
    let big = format!(r#"{{"cluster":"demo","token":"{}"}}"#, "a".repeat(MAX_PAYLOAD_BYTES));
    let cases: &[(&[u8], Result<(&str, &str), &str>)] = &[
        (br#"{"cluster":"demo","token":"t"}"#, Ok(("demo", "t"))),
        (br#"{"cluster":"demo","token":"t","extra":1}"#, Ok(("demo", "t"))),
        (b"", Err("missing attestation payload")),
        (b"join-token-uuid", Err("failed to unmarshal data payload")),
        (br#"["demo"]"#, Err("failed to unmarshal data payload")),
        (br#"{"cluster":1,"token":"t"}"#, Err("failed to unmarshal data payload")),
        (br#"{"token":"t"}"#, Err("missing cluster in attestation data")),
        (br#"{"cluster":"","token":"t"}"#, Err("missing cluster in attestation data")),
        (br#"{"cluster":"demo"}"#, Err("missing token in attestation data")),
        (br#"{"cluster":"demo","token":""}"#, Err("missing token in attestation data")),
        (br#"{"cluster":"x","token":"t"}"#, Err(r#"not configured for cluster "x""#)),
        (big.as_bytes(), Err("larger than")),
    ];
    for (payload, want) in cases {
        let got = parse_payload(payload, &cfg);
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned();
        match (want, got) {
            (Ok((c, t)), Ok((p, _))) => assert_eq!((p.cluster.as_str(), p.token.as_str()), (*c, *t), "{shown}"),
            (Err(fragment), Err(e)) => {
                assert_eq!(e.code(), Code::InvalidArgument, "{shown}");
                assert!(e.to_string().contains(fragment), "{shown}: {e}");
            }
            (want, got) => panic!("{shown}: want {want:?}, got {got:?}"),
        }
    }
    let none = K8sPsatConfig::default();
    let err = parse_payload(br#"{"cluster":"demo","token":"t"}"#, &none).unwrap_err();
    assert_eq!(err.to_status().message(), r#"k8s_psat: not configured for cluster "demo""#);
}

#[test]
fn review_table() {
    type Edit = fn(&mut TokenReviewFacts);
    let cases: &[(&str, Edit, Result<(), (Code, &str)>)] = &[
        ("ok", |_| {}, Ok(())),
        ("several audiences back", |r| r.audiences = vec!["x".into(), "spire-server".into()], Ok(())),
        (
            "not authenticated",
            |r| {
                r.authenticated = false;
                r.error = "[invalid bearer token, service account token has expired]".into();
            },
            Err((Code::PermissionDenied, "not authenticated according to TokenReview API: [invalid bearer token")),
        ),
        ("not authenticated, no reason", |r| r.authenticated = false, Err((Code::PermissionDenied, "no reason given"))),
        ("authenticated with an error", |r| r.error = "odd".into(), Err((Code::Internal, "contains an error: odd"))),
        ("no audiences back", |r| r.audiences.clear(), Err((Code::PermissionDenied, "include none of the configured"))),
        ("other audience back", |r| r.audiences = vec!["x".into()], Err((Code::PermissionDenied, r#"["x"]"#))),
        ("empty username", |r| r.username.clear(), Err((Code::Internal, "empty username"))),
        ("user", |r| r.username = "alice".into(), Err((Code::Internal, "unexpected username format"))),
        (
            "five parts",
            |r| r.username = "system:serviceaccount:spire:spire-agent:x".into(),
            Err((Code::Internal, "unexpected username format")),
        ),
        ("node user", |r| r.username = "system:node:n1:x".into(), Err((Code::Internal, "unexpected username"))),
        ("empty sa", |r| r.username = "system:serviceaccount:spire:".into(), Err((Code::Internal, "unexpected"))),
        (
            "not allowed",
            |r| r.username = "system:serviceaccount:default:spire-agent".into(),
            Err((Code::PermissionDenied, r#""default:spire-agent" is not an allowed service account"#)),
        ),
        (
            "no pod name",
            |r| {
                r.extra.remove(POD_NAME_KEY);
            },
            Err((Code::Internal, "fail to get pod name from token review status: missing pod name")),
        ),
        (
            "two pod names",
            |r| {
                r.extra.insert(POD_NAME_KEY.into(), vec!["a".into(), "b".into()]);
            },
            Err((Code::Internal, "expected 1 pod name but got 2")),
        ),
        (
            "empty pod name",
            |r| {
                r.extra.insert(POD_NAME_KEY.into(), vec![String::new()]);
            },
            Err((Code::Internal, "pod name is empty")),
        ),
        (
            "no pod uid",
            |r| {
                r.extra.insert(POD_UID_KEY.into(), vec![]);
            },
            Err((Code::Internal, "fail to get pod UID from token review status: expected 1 pod UID but got 0")),
        ),
        (
            "legacy token",
            |r| r.extra = BTreeMap::new(),
            Err((Code::Internal, "missing pod name (not a pod-bound projected token?)")),
        ),
    ];
    let cfg = cluster();
    for (name, edit, want) in cases {
        let mut r = review();
        edit(&mut r);
        match (want, check_review(&r, &cfg.audience, &cfg)) {
            (Ok(()), Ok(id)) => assert_eq!(id, identity(), "{name}"),
            (Err((code, fragment)), Err(e)) => {
                assert_eq!(e.code(), *code, "{name}: {e}");
                assert!(e.to_string().contains(fragment), "{name}: {e}");
            }
            (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn no_audiences_sent_means_no_audience_check() {
    let mut r = review();
    r.audiences = vec!["https://kubernetes.default.svc.cluster.local".into()];
    assert_eq!(check_review(&r, &[], &cluster()), Ok(identity()));
    r.audiences.clear();
    assert_eq!(check_review(&r, &[], &cluster()), Ok(identity()));
}

#[test]
fn pod_table() {
    type Edit = fn(&mut PodFacts);
    let cases: &[(&str, Edit, Result<(), (Code, &str)>)] = &[
        ("ok", |_| {}, Ok(())),
        ("no host ip yet", |p| p.host_ip.clear(), Ok(())),
        (
            "re-created pod",
            |p| p.uid = "pod-uid-2".into(),
            Err((
                Code::PermissionDenied,
                r#"pod UID mismatch: the token is bound to pod UID "pod-uid-1", pod spire/agent-x1 has UID "pod-uid-2""#,
            )),
        ),
        ("unscheduled", |p| p.node_name.clear(), Err((Code::Internal, "pod spire/agent-x1 is not scheduled"))),
    ];
    for (name, edit, want) in cases {
        let mut p = pod();
        edit(&mut p);
        match (want, check_pod(&identity(), &p)) {
            (Ok(()), Ok(())) => {}
            (Err((code, fragment)), Err(e)) => {
                assert_eq!(e.code(), *code, "{name}");
                assert!(e.to_string().contains(fragment), "{name}: {e}");
            }
            (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
}

fn strings(a: &PsatAttestation) -> Vec<String> {
    a.selectors.iter().map(ToString::to_string).collect()
}

#[test]
fn agent_id_and_selectors() {
    let td = TrustDomain::new("example.org").unwrap();
    let a = attestation(&td, "demo", &cluster(), &identity(), &pod(), &node()).unwrap();
    assert_eq!(
        a.agent_id.as_str(),
        "spiffe://example.org/spire/agent/k8s_psat/demo/9a1b8c2e-0000-4000-8000-000000000001"
    );
    assert_eq!(
        strings(&a),
        [
            "k8s_psat:cluster:demo",
            "k8s_psat:agent_ns:spire",
            "k8s_psat:agent_sa:spire-agent",
            "k8s_psat:agent_pod_name:agent-x1",
            "k8s_psat:agent_pod_uid:pod-uid-1",
            "k8s_psat:agent_node_ip:10.0.0.7",
            "k8s_psat:agent_node_name:n1",
            "k8s_psat:agent_node_uid:9a1b8c2e-0000-4000-8000-000000000001",
            "k8s_psat:agent_node_label:zone:z1",
            "k8s_psat:agent_pod_label:app:spire-agent",
        ]
    );
}

#[test]
fn attestation_variants() {
    let td = TrustDomain::new("example.org").unwrap();
    type Edit = fn(&mut K8sPsatCluster, &mut PodFacts, &mut NodeFacts);
    let cases: &[(&str, Edit, Result<(&str, usize), (Code, &str)>)] = &[
        (
            "pod uid for agent id",
            |c, _, _| c.use_pod_uid_for_agent_id = true,
            Ok(("spiffe://example.org/spire/agent/k8s_psat/demo/pod/pod-uid-1", 10)),
        ),
        (
            "no label keys allowed",
            |c, _, _| {
                c.allowed_node_label_keys.clear();
                c.allowed_pod_label_keys.clear();
            },
            Ok(("spiffe://example.org/spire/agent/k8s_psat/demo/9a1b8c2e-0000-4000-8000-000000000001", 8)),
        ),
        (
            "every label allowed, one without value",
            |c, p, n| {
                c.allowed_node_label_keys = n.labels.keys().cloned().collect();
                c.allowed_pod_label_keys = p.labels.keys().cloned().collect();
                p.labels.insert("empty".into(), String::new());
                c.allowed_pod_label_keys.insert("empty".into());
            },
            Ok(("spiffe://example.org/spire/agent/k8s_psat/demo/9a1b8c2e-0000-4000-8000-000000000001", 13)),
        ),
        (
            "no host ip",
            |_, p, _| p.host_ip.clear(),
            Ok(("spiffe://example.org/spire/agent/k8s_psat/demo/9a1b8c2e-0000-4000-8000-000000000001", 9)),
        ),
        ("empty node uid", |_, _, n| n.uid.clear(), Err((Code::Internal, "node UID is empty"))),
        (
            "node uid not a segment",
            |_, _, n| n.uid = "a/../b".into(),
            Err((Code::Internal, "cannot build the agent ID")),
        ),
    ];
    for (name, edit, want) in cases {
        let (mut c, mut p, mut n) = (cluster(), pod(), node());
        edit(&mut c, &mut p, &mut n);
        match (want, attestation(&td, "demo", &c, &identity(), &p, &n)) {
            (Ok((id, count)), Ok(a)) => {
                assert_eq!(a.agent_id.as_str(), *id, "{name}");
                assert_eq!(a.selectors.len(), *count, "{name}: {:?}", strings(&a));
            }
            (Err((code, fragment)), Err(e)) => {
                assert_eq!(e.code(), *code, "{name}");
                assert!(e.to_string().contains(fragment), "{name}: {e}");
            }
            (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn codes_and_labels() {
    let cases: &[(PsatError, Code, &str)] = &[
        (PsatError::MissingToken, Code::InvalidArgument, "invalid"),
        (PsatError::NotAuthenticated("x".into()), Code::PermissionDenied, "denied"),
        (PsatError::PodNotFound { namespace: "a".into(), name: "b".into() }, Code::PermissionDenied, "denied"),
        (PsatError::TokenReview("x".into()), Code::Internal, "error"),
        (PsatError::Unavailable { what: "TokenReview", message: "timeout".into() }, Code::Unavailable, "unavailable"),
    ];
    for (e, code, label) in cases {
        assert_eq!((e.code(), e.result_label()), (*code, *label), "{e}");
        assert!(e.to_status().message().starts_with("k8s_psat: "), "{e}");
    }
}
