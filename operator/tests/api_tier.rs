//! The operator against the api tier: a real kube-apiserver + etcd (`e2e/cluster/cluster up --tier api`), a
//! real `sigil-server` and real `sigil-operator` processes. Run by `e2e/operator/run.sh`, which brings the
//! tier up and runs these with `--ignored`; each test uses its own className, namespaces, nodes and server,
//! so they don't see each other's objects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sigil_core::{RegistrationEntry, Selector, SpiffeId};
use sigil_proto::admin as apb;
use sigil_proto::admin::bundles_client::BundlesClient;
use sigil_proto::admin::trust_domains_client::TrustDomainsClient;
use support::*;

const T: Duration = Duration::from_secs(20);

struct Ctx {
    run: String,
    class: String,
    cluster: String,
    prefix: String,
    dir: tempfile::TempDir,
    k: kube::Client,
}

async fn ctx(name: &str) -> Ctx {
    let run = suffix();
    let k = kube().await;
    install_crds();
    let cluster = format!("c{run}");
    let class = format!("{name}-{run}");
    Ctx {
        // The default prefix names cluster and class.
        prefix: format!("sigil.{cluster}.{class}."),
        class,
        cluster,
        run,
        dir: tempfile::tempdir().unwrap(),
        k,
    }
}

impl Ctx {
    fn config(&self, extra: &str) -> String {
        format!(
            "trustDomain: {TRUST_DOMAIN}\nclusterName: {}\nclassName: {}\nwatchClassless: false\ngcInterval: 5s\n{extra}",
            self.cluster, self.class
        )
    }

    fn ns(&self, n: &str) -> String {
        format!("{n}-{}", self.run)
    }
}

fn sel(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// (spiffe_id, parent_id, selectors) of every entry, sorted.
fn identities(entries: &HashMap<String, RegistrationEntry>) -> Vec<(String, String, Vec<String>)> {
    let mut v: Vec<_> = entries.values().map(identity).collect();
    v.sort();
    v
}

async fn manual_entry(server: &Server) -> RegistrationEntry {
    let e = RegistrationEntry {
        hint: "made by hand".into(),
        ..RegistrationEntry::new(
            SpiffeId::new("spiffe://example.org/manual").unwrap(),
            SpiffeId::new("spiffe://example.org/spire/agent/join_token/abc").unwrap(),
            vec![Selector::parse("unix:uid:1000").unwrap()],
        )
    };
    match server.client.create(&[e]).await.unwrap().pop().unwrap() {
        sigil_operator::server_client::WriteResult::Ok(Some(stored)) => *stored,
        other => panic!("manual entry: {other:?}"),
    }
}

async fn assert_manual_untouched(server: &Server, manual: &RegistrationEntry) {
    let all = server.entries("").await;
    assert_eq!(all.get(&manual.id), Some(manual), "the manually created entry must be untouched");
}

/// Waits until the operator's entries have exactly these identities.
async fn expect_entries(server: &Server, prefix: &str, want: Vec<(String, String, Vec<String>)>, what: &str) {
    let mut want = want;
    want.sort();
    let mut last = vec![];
    let r = tokio::time::timeout(T, async {
        loop {
            last = identities(&server.entries(prefix).await);
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: entries are\n{last:#?}\nwant\n{want:#?}");
}

/// The ClusterSPIFFEID of the "follow" test: app=web pods in namespaces labelled team=<team>.
fn web_csid(name: &str, class: &str, team: &str, auto_populate_dns_names: bool) -> String {
    format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: {name}
spec:
  className: {class}
  spiffeIDTemplate: "spiffe://{{{{ .TrustDomain }}}}/ns/{{{{ .PodMeta.Namespace }}}}/sa/{{{{ .PodSpec.ServiceAccountName }}}}/{{{{ .PodMeta.Name }}}}"
  podSelector:
    matchLabels:
      app: web
  namespaceSelector:
    matchLabels:
      team: {team}
  workloadSelectorTemplates:
    - "k8s:ns:{{{{ .PodMeta.Namespace }}}}"
  dnsNameTemplates:
    - "{{{{ .PodMeta.Name }}}}.{{{{ .PodMeta.Namespace }}}}.example"
  autoPopulateDNSNames: {auto_populate_dns_names}
  ttl: 1h
"#
    )
}

#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn pod_entries_follow_pods_labels_namespaces_and_crs() {
    let c = ctx("follow").await;
    let server = Server::spawn(c.dir.path()).await;
    let manual = manual_entry(&server).await;
    let (a, b) = (c.ns("team-a"), c.ns("team-b"));
    // Label values are per run: namespaces outlive a run at this tier (no namespace controller).
    let (team_a, team_b) = (format!("a-{}", c.run), format!("b-{}", c.run));
    create_namespace(&c.k, &a, &[("team", &team_a)]).await;
    create_namespace(&c.k, &b, &[("team", &team_b)]).await;
    let node = format!("node-{}", c.run);
    let node_uid = create_node(&c.k, &node).await;
    let web1 = create_pod(&c.k, &a, "web-1", &node, &[("app", "web")]).await;
    let db1 = create_pod(&c.k, &a, "db-1", &node, &[("app", "db")]).await;
    let web2 = create_pod(&c.k, &b, "web-2", &node, &[("app", "web")]).await;
    let csid = format!("web-{}", c.run);
    kubectl_apply(&web_csid(&csid, &c.class, &team_a, false));
    let mut op = Operator::spawn(c.dir.path(), "operator", &server, &c.config(""));
    let parent = format!("spiffe://example.org/spire/agent/k8s_psat/{}/{node_uid}", c.cluster);
    let id = |ns: &str, pod: &str| format!("spiffe://example.org/ns/{ns}/sa/default/{pod}");
    let entry = |ns: &str, pod: &str, uid: &str| {
        (id(ns, pod), parent.clone(), sel(&[&format!("k8s:ns:{ns}"), &format!("k8s:pod-uid:{uid}")]))
    };

    expect_entries(&server, &c.prefix, vec![entry(&a, "web-1", &web1)], "initial").await;
    let e = server.entries(&c.prefix).await.into_values().next().unwrap();
    assert_eq!(e.dns_names, vec![format!("web-1.{a}.example")]);
    assert_eq!(e.x509_svid_ttl, 3600);
    assert!(e.id.starts_with(&c.prefix));

    // A pod label change selects db-1.
    set_pod_labels(&c.k, &a, "db-1", &[("app", "web")]).await;
    expect_entries(&server, &c.prefix, vec![entry(&a, "web-1", &web1), entry(&a, "db-1", &db1)], "pod label").await;

    // A namespace label change selects web-2.
    set_namespace_labels(&c.k, &b, &[("team", &team_a)]).await;
    expect_entries(
        &server,
        &c.prefix,
        vec![entry(&a, "web-1", &web1), entry(&a, "db-1", &db1), entry(&b, "web-2", &web2)],
        "namespace label",
    )
    .await;

    // Status counts reach the CR.
    let status = eventually(T, "ClusterSPIFFEID status", || async {
        let v = kubectl_get_json("clusterspiffeid", &csid);
        (v["status"]["stats"]["entriesToSet"] == 3).then_some(v)
    })
    .await;
    let stats = &status["status"]["stats"];
    assert_eq!(stats["podsSelected"], 3, "{status}");
    assert_eq!(stats["namespacesSelected"], 2, "{status}");
    assert_eq!(stats["podEntryRenderFailures"], 0, "{status}");
    let ready = &status["status"]["conditions"][0];
    assert_eq!((ready["type"].as_str(), ready["status"].as_str()), (Some("Ready"), Some("True")), "{status}");

    // Pod deletion removes its entry.
    delete_pod_now(&c.k, &a, "web-1").await;
    expect_entries(&server, &c.prefix, vec![entry(&a, "db-1", &db1), entry(&b, "web-2", &web2)], "pod deletion").await;
    assert_manual_untouched(&server, &manual).await;

    // The operator restarts: nothing is rewritten, duplicated or dropped.
    let before = server.entries(&c.prefix).await;
    op.stop();
    let op2 = Operator::spawn(c.dir.path(), "operator-2", &server, &c.config(""));
    eventually(T, "restarted operator ready", || async {
        op2.metric("sigil_operator_reconcile_seconds_count{kind=\"full\"}").await.filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(server.entries(&c.prefix).await, before, "a restart must not rewrite entries");
    assert_eq!(op2.metric("sigil_operator_entry_writes_total").await.unwrap_or(0.0), 0.0);

    // Drift: an entry of ours deleted behind the operator's back comes back at the next full pass (5 s).
    let victim = before.values().find(|e| e.spiffe_id.to_string() == id(&b, "web-2")).unwrap().clone();
    server.client.delete(std::slice::from_ref(&victim.id)).await.unwrap();
    eventually(T, "drift repaired", || async {
        let now = server.entries(&c.prefix).await;
        now.get(&victim.id).map(|e| identity(e) == identity(&victim)).filter(|ok| *ok)
    })
    .await;
    assert!(op2.metric("sigil_operator_drift_repaired_total").await.unwrap_or(0.0) >= 1.0, "repair is counted");

    // autoPopulateDNSNames: an EndpointSlice naming web-2 adds the Service's DNS names.
    kubectl_apply(&format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: websvc-abc
  namespace: {b}
  labels:
    kubernetes.io/service-name: websvc
addressType: IPv4
endpoints:
  - addresses: ["10.0.0.9"]
    targetRef: {{kind: Pod, name: web-2, namespace: {b}, uid: {web2}}}
"#
    ));
    kubectl_apply(&web_csid(&csid, &c.class, &team_a, true));
    let want_dns = vec![
        format!("web-2.{b}.example"),
        "websvc".to_string(),
        format!("websvc.{b}"),
        format!("websvc.{b}.svc"),
        format!("websvc.{b}.svc.cluster.local"),
    ];
    eventually(T, "service DNS names", || async {
        let now = server.entries(&c.prefix).await;
        now.values().find(|e| e.spiffe_id.to_string() == id(&b, "web-2") && e.dns_names == want_dns).map(|_| ())
    })
    .await;

    // An edit the schema can't catch (a bad label-selector operator) is reported and the last valid spec
    // stays in effect: a typo must not delete live identities.
    let kept = server.entries(&c.prefix).await;
    let bad = web_csid(&csid, &c.class, &team_a, true).replace(
        "  podSelector:\n    matchLabels:\n      app: web\n",
        "  podSelector:\n    matchExpressions:\n      - {key: app, operator: Bogus}\n",
    );
    assert!(bad.contains("Bogus"));
    kubectl_apply(&bad);
    let status = eventually(T, "InvalidSpec condition", || async {
        let v = kubectl_get_json("clusterspiffeid", &csid);
        (v["status"]["conditions"][0]["reason"] == "InvalidSpec").then_some(v)
    })
    .await;
    assert!(status["status"]["conditions"][0]["message"].as_str().unwrap().contains("Bogus"), "{status}");
    assert_eq!(identities(&server.entries(&c.prefix).await), identities(&kept), "entries kept");

    // Deleting the CR removes every entry it made, and only those.
    kubectl_delete("clusterspiffeid", &csid);
    expect_entries(&server, &c.prefix, vec![], "CR deletion").await;
    assert_manual_untouched(&server, &manual).await;
    delete_node(&c.k, &node).await;
}

#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn render_failures_go_to_status_and_events_not_a_crash() {
    let c = ctx("render").await;
    let server = Server::spawn(c.dir.path()).await;
    let ns = c.ns("render");
    create_namespace(&c.k, &ns, &[]).await;
    let node = format!("node-{}", c.run);
    create_node(&c.k, &node).await;
    create_pod(&c.k, &ns, "p", &node, &[("app", "x")]).await;
    let csid = format!("foreign-{}", c.run);
    kubectl_apply(&format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: {csid}
spec:
  className: {class}
  spiffeIDTemplate: "spiffe://other.org/{{{{ .PodMeta.Name }}}}"
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {ns}
"#,
        class = c.class
    ));
    let op = Operator::spawn(c.dir.path(), "operator", &server, &c.config(""));
    let status = eventually(T, "RenderFailed condition", || async {
        let v = kubectl_get_json("clusterspiffeid", &csid);
        (v["status"]["conditions"][0]["reason"] == "RenderFailed").then_some(v)
    })
    .await;
    assert_eq!(status["status"]["stats"]["podEntryRenderFailures"], 1, "{status}");
    let msg = status["status"]["conditions"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("not in the trust domain example.org"), "{msg}");
    let events = std::process::Command::new(kubectl())
        .args(["get", "events", "-A", "--field-selector", &format!("involvedObject.name={csid}"), "-o", "json"])
        .output()
        .unwrap();
    let events: serde_json::Value = serde_json::from_slice(&events.stdout).unwrap();
    assert!(
        events["items"].as_array().unwrap().iter().any(|e| e["reason"] == "RenderFailed"),
        "a RenderFailed Event: {events}"
    );
    assert!(server.entries(&c.prefix).await.is_empty());
    assert_eq!(op.metric("sigil_operator_render_failures ").await, Some(1.0));
    kubectl_delete("clusterspiffeid", &csid);
    delete_node(&c.k, &node).await;
}

/// The apiserver itself refuses a spiffeIDTemplate that cannot render a spiffe:// URI (the CRD's CEL rule),
/// with the rule's message, on `kubectl apply` and `kubectl create`; templates starting with spiffe:// or with
/// an action are stored. No operator runs: this is the schema alone.
#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn spiffe_id_template_must_start_with_spiffe_or_an_action() {
    let c = ctx("template-start").await;
    let message = "spiffeIDTemplate must start with spiffe:// or with a template action {{ ... }}";
    let manifest = |name: &str, template: &str| {
        // A JSON string is a YAML double-quoted scalar.
        let template = serde_json::to_string(template).unwrap();
        format!(
            "apiVersion: sigil.dev/v1alpha1\nkind: ClusterSPIFFEID\nmetadata:\n  name: {name}\nspec:\n  className: {}\n  \
             spiffeIDTemplate: {template}\n",
            c.class
        )
    };
    let refused = ["http://example.org/x", " spiffe://example.org/x", "ns/{{ .PodMeta.Namespace }}"];
    for (i, template) in refused.iter().enumerate() {
        let name = format!("refused-{i}-{}", c.run);
        for verb in [&["apply", "-f", "-"][..], &["create", "-f", "-"][..]] {
            let (ok, out) = kubectl_stdin(verb, &manifest(&name, template));
            assert!(!ok, "kubectl {verb:?} accepted spiffeIDTemplate {template:?}: {out}");
            assert!(out.contains(message), "kubectl {verb:?} of {template:?} refused without {message:?}: {out}");
        }
        let (found, _) = kubectl_stdin(&["get", "clusterspiffeid", &name], "");
        assert!(!found, "{name} was stored");
    }
    let accepted = [
        "spiffe://example.org/x",
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        "{{ printf \"spiffe://%s/ns/%s\" .TrustDomain .PodMeta.Namespace }}",
        "{{- printf \"spiffe://%s/x\" .TrustDomain -}}",
    ];
    for (i, template) in accepted.iter().enumerate() {
        let name = format!("accepted-{i}-{}", c.run);
        let verb: &[&str] = if i % 2 == 0 { &["apply", "-f", "-"] } else { &["create", "-f", "-"] };
        let (ok, out) = kubectl_stdin(verb, &manifest(&name, template));
        assert!(ok, "kubectl {verb:?} refused spiffeIDTemplate {template:?}: {out}");
        let stored = kubectl_get_json("clusterspiffeid", &name);
        assert_eq!(stored["spec"]["spiffeIDTemplate"], *template, "{stored}");
        kubectl_delete("clusterspiffeid", &name);
    }
}

#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn static_entries_and_federation_relationships() {
    let c = ctx("static").await;
    let server = Server::spawn(c.dir.path()).await;
    let manual = manual_entry(&server).await;
    let mut td_api = TrustDomainsClient::new(server.client.channel());
    // A relationship made by hand: never touched by the operator.
    td_api
        .batch_create_federation_relationship(apb::BatchCreateFederationRelationshipRequest {
            federation_relationships: vec![apb::FederationRelationship {
                trust_domain: "manual.org".into(),
                bundle_endpoint_url: "https://manual.org/bundle".into(),
                profile: Some(apb::federation_relationship::Profile::HttpsWeb(apb::HttpsWebProfile {})),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let (cse, fed, clash) = (format!("db-{}", c.run), format!("partner-{}", c.run), format!("clash-{}", c.run));
    kubectl_apply(&format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterStaticEntry
metadata:
  name: {cse}
spec:
  className: {class}
  spiffeID: spiffe://example.org/static/db
  parentID: spiffe://example.org/spire/agent/join_token/x
  selectors: ["unix:uid:1001", "unix:gid:1001"]
  dnsNames: ["db.example"]
  hint: db
---
apiVersion: sigil.dev/v1alpha1
kind: ClusterFederatedTrustDomain
metadata:
  name: {fed}
spec:
  className: {class}
  trustDomain: partner.org
  bundleEndpointURL: https://partner.org:8443/bundle
  bundleEndpointProfile:
    type: https_spiffe
    endpointSPIFFEID: spiffe://partner.org/spire/server
---
apiVersion: sigil.dev/v1alpha1
kind: ClusterFederatedTrustDomain
metadata:
  name: {clash}
spec:
  className: {class}
  trustDomain: manual.org
  bundleEndpointURL: https://elsewhere.org/bundle
  bundleEndpointProfile:
    type: https_web
"#,
        class = c.class
    ));
    let _op = Operator::spawn(c.dir.path(), "operator", &server, &c.config(""));
    expect_entries(
        &server,
        &c.prefix,
        vec![(
            "spiffe://example.org/static/db".into(),
            "spiffe://example.org/spire/agent/join_token/x".into(),
            sel(&["unix:gid:1001", "unix:uid:1001"]),
        )],
        "static entry",
    )
    .await;
    let list = || {
        let mut api = td_api.clone();
        async move {
            let r = api
                .list_federation_relationships(apb::ListFederationRelationshipsRequest::default())
                .await
                .unwrap()
                .into_inner();
            r.federation_relationships.into_iter().map(|r| (r.trust_domain.clone(), r)).collect::<BTreeMap<_, _>>()
        }
    };
    let rels = eventually(T, "partner.org relationship", || async {
        let l = list().await;
        l.contains_key("partner.org").then_some(l)
    })
    .await;
    let p = &rels["partner.org"];
    assert_eq!(p.bundle_endpoint_url, "https://partner.org:8443/bundle");
    assert_eq!(
        p.profile,
        Some(apb::federation_relationship::Profile::HttpsSpiffe(apb::HttpsSpiffeProfile {
            endpoint_spiffe_id: "spiffe://partner.org/spire/server".into()
        }))
    );
    assert_eq!(rels["manual.org"].bundle_endpoint_url, "https://manual.org/bundle", "hand-made relationship kept");
    let status = eventually(T, "Conflict condition", || async {
        let v = kubectl_get_json("clusterfederatedtrustdomain", &clash);
        (v["status"]["conditions"][0]["reason"] == "Conflict").then_some(v)
    })
    .await;
    assert!(status["status"]["conditions"][0]["message"].as_str().unwrap().contains("did not create"));
    // The hand-made relationship's fetching is not this CR's to show.
    let fetched = condition_of(&status, "BundleFetched").expect("BundleFetched condition");
    assert_eq!(
        (fetched["status"].as_str(), fetched["reason"].as_str()),
        (Some("Unknown"), Some("Pending")),
        "{status}"
    );
    assert!(status["status"].get("bundle").is_none(), "{status}");
    let ok = eventually(T, "static entry status", || async {
        let v = kubectl_get_json("clusterstaticentry", &cse);
        (v["status"]["set"] == true).then_some(v)
    })
    .await;
    assert_eq!(ok["status"]["rendered"], true);

    kubectl_delete("clusterstaticentry", &cse);
    kubectl_delete("clusterfederatedtrustdomain", &fed);
    kubectl_delete("clusterfederatedtrustdomain", &clash);
    expect_entries(&server, &c.prefix, vec![], "static entry deleted").await;
    eventually(T, "partner.org relationship removed", || async {
        (!list().await.contains_key("partner.org")).then_some(())
    })
    .await;
    assert!(list().await.contains_key("manual.org"), "hand-made relationship survives");
    assert_manual_untouched(&server, &manual).await;
}

/// The condition of `type_` in a CR's JSON, if any.
fn condition_of(cr: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    cr["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn federated_bundle_fetch_status_reaches_the_cr() {
    let c = ctx("fedstatus").await;
    let server = Server::spawn(&c.dir.path().join("home")).await;
    // A real partner trust domain with its bundle endpoint (https_spiffe) on loopback; a 4 s hint makes the
    // home server refresh every second, so a dead partner shows within seconds.
    let port = free_port();
    let partner_conf = format!(
        "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = {port}\nrefresh_hint = \"4s\"\nprofile = \"https_spiffe\"\n"
    );
    let partner = Server::spawn_as(&c.dir.path().join("partner"), "partner.test", Some(&partner_conf)).await;
    // https_spiffe needs the partner's bundle once (SPIRE's `bundle set`).
    let partner_bundle =
        BundlesClient::new(partner.client.channel()).get_bundle(apb::GetBundleRequest {}).await.unwrap().into_inner();
    assert_eq!(partner_bundle.trust_domain, "partner.test");
    let mut bundles = BundlesClient::new(server.client.channel());
    bundles
        .set_federated_bundle(apb::SetFederatedBundleRequest { bundle: Some(partner_bundle.clone()) })
        .await
        .unwrap();
    let name = format!("partner-{}", c.run);
    kubectl_apply(&format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterFederatedTrustDomain
metadata:
  name: {name}
spec:
  className: {class}
  trustDomain: partner.test
  bundleEndpointURL: https://127.0.0.1:{port}/
  bundleEndpointProfile:
    type: https_spiffe
    endpointSPIFFEID: spiffe://partner.test/spire/server
"#,
        class = c.class
    ));
    let _op = Operator::spawn(c.dir.path(), "operator", &server, &c.config(""));

    let cr = eventually(T, "BundleFetched True with a sequence", || async {
        let v = kubectl_get_json("clusterfederatedtrustdomain", &name);
        let ok = condition_of(&v, "BundleFetched").is_some_and(|c| c["status"] == "True" && c["reason"] == "Fetched");
        (ok && v["status"]["bundle"]["sequence"].is_u64()).then_some(v)
    })
    .await;
    let bundle = &cr["status"]["bundle"];
    assert_eq!(condition_of(&cr, "Ready").unwrap()["status"], "True", "{cr}");
    assert_eq!(bundle["source"], "api", "{cr}");
    assert_eq!(bundle["consecutiveFailures"], 0, "{cr}");
    assert!(bundle["lastSuccessTime"].is_string() && bundle["nextRefreshTime"].is_string(), "{cr}");
    // The home server fetched the partner's bundle itself: its status says so, and the stored bundle is the
    // partner's own, with the sequence the CR shows.
    let report = TrustDomainsClient::new(server.client.channel())
        .list_federation_status(apb::ListFederationStatusRequest { trust_domain: "partner.test".into() })
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].last_success_at > 0 && report[0].consecutive_failures == 0, "{report:?}");
    let stored = bundles.list_federated_bundles(apb::ListFederatedBundlesRequest {}).await.unwrap().into_inner();
    let stored = stored.bundles.iter().find(|b| b.trust_domain == "partner.test").expect("partner.test stored");
    let (mut got, mut want) = (stored.x509_authorities.clone(), partner_bundle.x509_authorities.clone());
    got.sort();
    want.sort();
    assert_eq!(got, want, "the partner's CA");
    assert_eq!(bundle["sequence"].as_u64(), Some(stored.sequence_number), "{cr}");
    let table = kubectl_ok(&["get", "clusterfederatedtrustdomain", &name]);
    assert!(table.contains("FETCHED") && table.contains("SEQUENCE") && table.contains("LAST FETCH"), "{table}");

    // The partner goes away: the failure reaches the CR, the last bundle stays.
    drop(partner);
    let cr = eventually(Duration::from_secs(30), "BundleFetched False", || async {
        let v = kubectl_get_json("clusterfederatedtrustdomain", &name);
        let failed =
            condition_of(&v, "BundleFetched").is_some_and(|c| c["status"] == "False" && c["reason"] == "FetchFailed");
        failed.then_some(v)
    })
    .await;
    let bundle = &cr["status"]["bundle"];
    assert!(bundle["consecutiveFailures"].as_u64().unwrap_or(0) >= 1, "{cr}");
    assert!(bundle["lastError"].as_str().is_some_and(|e| !e.is_empty()), "{cr}");
    assert!(bundle["lastErrorTime"].is_string(), "{cr}");
    assert_eq!(bundle["sequence"].as_u64(), Some(stored.sequence_number), "the last bundle stays: {cr}");
    let message = condition_of(&cr, "BundleFetched").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("stays in use"), "{message}");
    assert_eq!(condition_of(&cr, "Ready").unwrap()["status"], "True", "the relationship itself is still set: {cr}");

    kubectl_delete("clusterfederatedtrustdomain", &name);
}

#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn leader_change_and_restart_neither_duplicate_nor_drop() {
    let c = ctx("leader").await;
    let server = Server::spawn(c.dir.path()).await;
    let ns = c.ns("ha");
    create_namespace(&c.k, &ns, &[]).await;
    let node = format!("node-{}", c.run);
    let node_uid = create_node(&c.k, &node).await;
    let mut uids = BTreeMap::new();
    for i in 0..20 {
        let name = format!("p{i}");
        uids.insert(name.clone(), create_pod(&c.k, &ns, &name, &node, &[("app", "ha")]).await);
    }
    let csid = format!("ha-{}", c.run);
    kubectl_apply(&format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: {csid}
spec:
  className: {class}
  spiffeIDTemplate: "spiffe://{{{{ .TrustDomain }}}}/ha/{{{{ .PodMeta.Name }}}}"
  podSelector:
    matchLabels:
      app: ha
"#,
        class = c.class
    ));
    let lease = format!("lease-{}", c.run);
    let le = format!(
        "leaderElection:\n  leaderElect: true\n  resourceName: {lease}\n  resourceNamespace: default\n  leaseDuration: 4\n"
    );
    let mut a = Operator::spawn(c.dir.path(), "op-a", &server, &c.config(&le));
    let mut b = Operator::spawn(c.dir.path(), "op-b", &server, &c.config(&le));
    let parent = format!("spiffe://example.org/spire/agent/k8s_psat/{}/{node_uid}", c.cluster);
    let want = |uids: &BTreeMap<String, String>| {
        uids.iter()
            .map(|(n, u)| (format!("spiffe://example.org/ha/{n}"), parent.clone(), sel(&[&format!("k8s:pod-uid:{u}")])))
            .collect::<Vec<_>>()
    };
    expect_entries(&server, &c.prefix, want(&uids), "20 pods").await;
    let before = server.entries(&c.prefix).await;

    // Exactly one leader.
    let (la, lb) = (a.is_leader().await, b.is_leader().await);
    assert!(la ^ lb, "exactly one leader: a={la} b={lb}");
    let (leader, follower) = if la { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!(follower.metric("sigil_operator_entry_writes_total").await.unwrap_or(0.0), 0.0, "the follower wrote");

    // The leader dies without releasing the lease; the follower takes over after the lease expires.
    leader.kill_hard();
    eventually(Duration::from_secs(30), "follower becomes leader", || async {
        follower.is_leader().await.then_some(())
    })
    .await;
    // Full pass after takeover: nothing rewritten.
    assert_eq!(server.entries(&c.prefix).await, before, "takeover must not rewrite or duplicate entries");
    // Changes keep flowing through the new leader.
    delete_pod_now(&c.k, &ns, "p0").await;
    uids.remove("p0");
    uids.insert("p20".into(), create_pod(&c.k, &ns, "p20", &node, &[("app", "ha")]).await);
    expect_entries(&server, &c.prefix, want(&uids), "after takeover").await;
    let after = server.entries(&c.prefix).await;
    let ids: BTreeSet<_> = after.values().map(identity).collect();
    assert_eq!(ids.len(), after.len(), "no duplicate identities");
    for (id, e) in &before {
        if let Some(now) = after.get(id) {
            assert_eq!(now.revision, e.revision, "{id} was rewritten");
        }
    }
    follower.stop();
    kubectl_delete("clusterspiffeid", &csid);
    delete_node(&c.k, &node).await;
}

#[tokio::test]
#[ignore = "needs the api tier: e2e/operator/run.sh"]
async fn runs_with_least_privilege_rbac() {
    let c = ctx("rbac").await;
    let server = Server::spawn(c.dir.path()).await;
    // operator/deploy/rbac.yaml as shipped, in its namespace.
    let ns_yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: sigil-system\n";
    kubectl_apply(ns_yaml);
    let rbac = std::fs::read_to_string(workspace_root().join("operator/deploy/rbac.yaml")).unwrap();
    kubectl_apply(&rbac);
    let token = kubectl_ok(&["-n", "sigil-system", "create", "token", "sigil-operator", "--duration", "1h"]);
    let kubeconfig = token_kubeconfig(c.dir.path(), token.trim());
    // The ServiceAccount must not be able to do more than the rules say.
    let can = |verb: &str, what: &str| {
        kubectl_ok(&["--kubeconfig", kubeconfig.to_str().unwrap(), "auth", "can-i", verb, what, "--all-namespaces"])
            .trim()
            .to_string()
    };
    let can_not = |verb: &str, what: &str| {
        let out = std::process::Command::new(kubectl())
            .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "auth", "can-i", verb, what, "--all-namespaces"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can("watch", "pods"), "yes");
    assert_eq!(can_not("create", "pods"), "no");
    assert_eq!(can_not("get", "secrets"), "no");
    assert_eq!(can_not("update", "clusterspiffeids.sigil.dev"), "no", "spec is read-only for the operator");

    let ns = c.ns("rbac");
    create_namespace(&c.k, &ns, &[]).await;
    let node = format!("node-{}", c.run);
    let node_uid = create_node(&c.k, &node).await;
    let uid = create_pod(&c.k, &ns, "app", &node, &[("app", "rbac")]).await;
    let csid = format!("rbac-{}", c.run);
    kubectl_apply(&format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: {csid}
spec:
  className: {class}
  spiffeIDTemplate: "spiffe://{{{{ .TrustDomain }}}}/rbac/{{{{ .PodMeta.Name }}}}"
  podSelector:
    matchLabels:
      app: rbac
"#,
        class = c.class
    ));
    let lease = format!("lease-{}", c.run);
    let le =
        format!("leaderElection:\n  leaderElect: true\n  resourceName: {lease}\n  resourceNamespace: sigil-system\n");
    let op = Operator::spawn_env(
        c.dir.path(),
        "operator",
        &server,
        &c.config(&le),
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let parent = format!("spiffe://example.org/spire/agent/k8s_psat/{}/{node_uid}", c.cluster);
    expect_entries(
        &server,
        &c.prefix,
        vec![("spiffe://example.org/rbac/app".into(), parent, sel(&[&format!("k8s:pod-uid:{uid}")]))],
        "entry made under the ServiceAccount",
    )
    .await;
    eventually(T, "status written under the ServiceAccount", || async {
        let v = kubectl_get_json("clusterspiffeid", &csid);
        (v["status"]["stats"]["entriesToSet"] == 1).then_some(())
    })
    .await;
    let log = op.log_text();
    assert!(!log.contains("forbidden"), "the operator hit a permission error:\n{log}");
    kubectl_delete("clusterspiffeid", &csid);
    delete_node(&c.k, &node).await;
}
