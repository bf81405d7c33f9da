//! deploy/demo.yaml without a cluster: it parses, and each Deployment calls the other's Service and
//! authorizes exactly the SPIFFE ID the chart's default ClusterSPIFFEID gives the other's ServiceAccount.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_yaml::Value;

#[test]
fn the_example_manifest_pairs_demo_a_and_demo_b() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo.yaml")).unwrap();
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let kinds: Vec<(&str, &str)> =
        docs.iter().map(|d| (d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap())).collect();
    for want in
        [("Namespace", "spiffe-demo"), ("ServiceAccount", "demo-a"), ("Service", "demo-b"), ("Deployment", "demo-a")]
    {
        assert!(kinds.contains(&want), "{want:?} missing: {kinds:?}");
    }
    for (me, peer) in [("a", "b"), ("b", "a")] {
        let d =
            docs.iter().find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == format!("demo-{me}")).unwrap();
        assert_eq!(d["spec"]["replicas"].as_u64(), Some(1));
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"].as_str(), Some(format!("demo-{me}").as_str()));
        assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
        assert_eq!(pod["volumes"][0]["csi"]["driver"].as_str(), Some("csi.spiffe.io"));
        let c = &pod["containers"][0];
        assert_eq!(c["env"][0]["name"].as_str(), Some("SPIFFE_ENDPOINT_SOCKET"));
        assert_eq!(c["env"][0]["value"].as_str(), Some("unix:///spiffe-workload-api/spire-agent.sock"));
        assert_eq!(c["volumeMounts"][0]["mountPath"].as_str(), Some("/spiffe-workload-api"));
        let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[0], "serve");
        assert!(args.contains(&format!("--peer=https://demo-{peer}.spiffe-demo.svc:8443").as_str()), "{args:?}");
        assert!(
            args.contains(&format!("--peer-id=spiffe://example.org/ns/spiffe-demo/sa/demo-{peer}").as_str()),
            "{args:?}"
        );
        let svc =
            docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == format!("demo-{me}")).unwrap();
        assert_eq!(svc["spec"]["selector"]["app"].as_str(), Some(format!("demo-{me}").as_str()));
        assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(8443));
    }
}
