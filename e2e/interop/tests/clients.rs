//! Issue 3, acceptance 1 and 2: Workload API clients written by others (the `spiffe` crate, py-spiffe,
//! go-spiffe) against the real sigil-server + sigil-agent binaries; negative cases with a raw client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use spiffe::{JwtSvid, WorkloadApiClient};

fn python() -> String {
    std::env::var("SIGIL_PYTHON").unwrap_or_else(|_| {
        panic!("SIGIL_PYTHON must point at a python with py-spiffe installed (scripts/test.sh sets it up)")
    })
}

fn go_client() -> String {
    std::env::var("SIGIL_GO_INTEROP")
        .unwrap_or_else(|_| panic!("SIGIL_GO_INTEROP must point at the go-spiffe client (scripts/test.sh builds it)"))
}

fn interop_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn json(out: std::process::Output) -> serde_json::Value {
    let text = ok(out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_crate_fetches_validates_and_sees_rotation() {
    let s = tokio::task::spawn_blocking(|| stack(Some(20))).await.unwrap();
    let client = WorkloadApiClient::connect_to(s.endpoint()).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/workload"));
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let bundle = bundles.get(&td).expect("own trust domain bundle");
    // Verify the chain with our own validator against the bundle the client got.
    let chain: Vec<Vec<u8>> = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
    let core_bundle = sigil_core::bundle::Bundle {
        trust_domain: sigil_core::TrustDomain::new(TD).unwrap(),
        x509_authorities: bundle.authorities().iter().map(|c| c.as_bytes().to_vec()).collect(),
        jwt_authorities: vec![],
        sequence: 0,
        refresh_hint_secs: None,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    sigil_core::x509::verify_x509_svid(&chain, &core_bundle, now).unwrap();

    let jwt = client.fetch_jwt_svid(["interop"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), format!("spiffe://{TD}/workload"));
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["interop"]).unwrap();
    assert_eq!(local.spiffe_id().to_string(), format!("spiffe://{TD}/workload"));
    let remote = client.validate_jwt_token("interop", jwt.token()).await.unwrap();
    assert_eq!(remote.spiffe_id().to_string(), format!("spiffe://{TD}/workload"));
    assert!(client.validate_jwt_token("someone-else", jwt.token()).await.is_err());

    // X509Source sees a rotation (20 s TTL -> new SVID at about 10 s).
    let source = spiffe::X509Source::builder().endpoint(s.endpoint()).build().await.unwrap();
    let first = source.svid().unwrap();
    let first_serial = first.cert_chain()[0].as_bytes().to_vec();
    let mut updates = source.updated();
    let rotated = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            updates.changed().await.unwrap();
            let now = source.svid().unwrap();
            if now.cert_chain()[0].as_bytes() != first_serial.as_slice() {
                return now;
            }
        }
    })
    .await
    .expect("a rotated SVID within 40 s");
    assert_eq!(rotated.spiffe_id().to_string(), format!("spiffe://{TD}/workload"));
}

#[test]
fn py_spiffe_fetches_validates_and_sees_rotation() {
    let s = stack(Some(20));
    let out = Command::new(python())
        .arg(interop_dir().join("python/workload_client.py"))
        .arg(s.endpoint())
        .args(["--rotations", "1", "--timeout", "60"])
        .output()
        .unwrap();
    let v = json(out);
    assert_eq!(v["client"], "py-spiffe");
    assert_eq!(v["spiffe_id"], format!("spiffe://{TD}/workload"));
    assert_eq!(v["uri_sans"][0], format!("spiffe://{TD}/workload"));
    assert_eq!(v["issuer_in_bundle"], true);
    assert_eq!(v["jwt_spiffe_id"], format!("spiffe://{TD}/workload"));
    assert_eq!(v["jwt_validated_remotely"], format!("spiffe://{TD}/workload"));
    assert!(v["rotations"].as_array().unwrap().len() >= 2, "{v}");
}

#[test]
fn go_spiffe_fetches_validates_and_sees_rotation() {
    let s = stack(Some(20));
    let out = Command::new(go_client())
        .arg("-socket")
        .arg(s.endpoint())
        .args(["-rotations", "1", "-timeout", "60s"])
        .output()
        .unwrap();
    let v = json(out);
    assert_eq!(v["client"], "go-spiffe");
    assert_eq!(v["spiffe_id"], format!("spiffe://{TD}/workload"));
    assert_eq!(v["jwt_spiffe_id"], format!("spiffe://{TD}/workload"));
    assert_eq!(v["jwt_validated_remotely"], format!("spiffe://{TD}/workload"));
    assert!(v["rotations"].as_array().unwrap().len() >= 2, "{v}");
}

async fn raw_client(
    s: &Stack,
) -> sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let path = s.agent_sock();
    let ch = tonic::transport::Endpoint::from_static("http://workload")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn e2_missing_security_header_is_invalid_argument() {
    let s = tokio::task::spawn_blocking(|| stack(None)).await.unwrap();
    let mut c = raw_client(&s).await;
    let err = c.fetch_x509svid(sigil_proto::workload::X509svidRequest {}).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .fetch_jwtsvid(sigil_proto::workload::JwtsvidRequest { audience: vec!["a".into()], spiffe_id: String::new() })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // With the header the same call works.
    let mut stream =
        c.fetch_x509svid(with_header(sigil_proto::workload::X509svidRequest {})).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids[0].spiffe_id, format!("spiffe://{TD}/workload"));
}

#[test]
fn d3_other_uid_gets_permission_denied_and_never_another_uids_svid() {
    let s = stack(None);
    make_world_reachable(s.agent_sock().parent().unwrap());
    // Run the agent's own fetch CLI as uid 65534: no entry matches it.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("sigil-agent"))
        .args(["api", "fetch", "x509", "-socketPath"])
        .arg(s.agent_sock())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(text.to_lowercase().contains("permission"), "{text}");
    assert!(!text.contains("BEGIN CERTIFICATE") && !text.contains("spiffe://example.org/workload"), "{text}");
}

fn b64(v: &serde_json::Value) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_jwt_svid_rejects_wrong_audience_alg_none_hs256_and_expired() {
    let s = tokio::task::spawn_blocking(|| stack(None)).await.unwrap();
    let mut c = raw_client(&s).await;
    let good = c
        .fetch_jwtsvid(with_header(sigil_proto::workload::JwtsvidRequest {
            audience: vec!["aud1".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    let valid = c
        .validate_jwtsvid(with_header(sigil_proto::workload::ValidateJwtsvidRequest {
            audience: "aud1".into(),
            svid: good.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.spiffe_id, format!("spiffe://{TD}/workload"));
    let parts: Vec<&str> = good.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[0]).unwrap(),
    )
    .unwrap();
    let mut claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1]).unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap();
    let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "kid": kid, "typ": "JWT"})), parts[1]);
    let hs256 =
        format!("{}.{}.{}", b64(&serde_json::json!({"alg": "HS256", "kid": kid, "typ": "JWT"})), parts[1], parts[2]);
    claims["exp"] = serde_json::json!(1_000_000);
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    // A correctly signed token whose exp has passed (1 s TTL, then past the 30 s clock leeway).
    let minted = ok(s.server_cli(&[
        "jwt",
        "mint",
        "-spiffeID",
        &format!("spiffe://{TD}/workload"),
        "-audience",
        "aud1",
        "-ttl",
        "1",
    ]));
    tokio::time::sleep(Duration::from_secs(33)).await;
    let expired = minted.trim().to_owned();
    let cases = [
        ("aud2", good.clone()),
        ("aud1", none),
        ("aud1", hs256),
        ("aud1", tampered),
        ("aud1", expired),
        ("aud1", String::new()),
        ("", good),
    ];
    for (aud, token) in cases {
        let err = c
            .validate_jwtsvid(with_header(sigil_proto::workload::ValidateJwtsvidRequest {
                audience: aud.into(),
                svid: token.clone(),
            }))
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted aud={aud:?} token={token:.40}"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "aud={aud:?}: {}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn e5_server_reflection_lists_the_workload_api() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let s = tokio::task::spawn_blocking(|| stack(None)).await.unwrap();
    let path = s.agent_sock();
    let ch = tonic::transport::Endpoint::from_static("http://workload")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp =
        ServerReflectionClient::new(ch).server_reflection_info(tokio_stream_once(req)).await.unwrap().into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("unexpected: {msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"SpiffeWorkloadAPI".to_string()), "{names:?}");
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send {
    tonic::codegen::tokio_stream::iter([item])
}
