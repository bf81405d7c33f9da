//! The Workload API must be wire-exact (checklist D): no package, these messages, these field numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use prost_types::FileDescriptorSet;

fn workload_file() -> prost_types::FileDescriptorProto {
    let fds = FileDescriptorSet::decode(sigil_proto::FILE_DESCRIPTOR_SET).unwrap();
    fds.file.into_iter().find(|f| f.name() == "spiffe/workload.proto").unwrap()
}

#[test]
fn d_workload_proto_has_no_package() {
    assert_eq!(workload_file().package(), "");
}

#[test]
fn d_rpcs_and_streaming_match_the_standard() {
    let file = workload_file();
    let svc = file.service.iter().find(|s| s.name() == "SpiffeWorkloadAPI").unwrap();
    let got: Vec<(String, String, String, bool, bool)> = svc
        .method
        .iter()
        .map(|m| {
            (
                m.name().to_owned(),
                m.input_type().to_owned(),
                m.output_type().to_owned(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect();
    let want = [
        ("FetchX509SVID", ".X509SVIDRequest", ".X509SVIDResponse", false, true),
        ("FetchX509Bundles", ".X509BundlesRequest", ".X509BundlesResponse", false, true),
        ("FetchJWTSVID", ".JWTSVIDRequest", ".JWTSVIDResponse", false, false),
        ("FetchJWTBundles", ".JWTBundlesRequest", ".JWTBundlesResponse", false, true),
        ("ValidateJWTSVID", ".ValidateJWTSVIDRequest", ".ValidateJWTSVIDResponse", false, false),
    ];
    let want: Vec<_> =
        want.iter().map(|(a, b, c, d, e)| (a.to_string(), b.to_string(), c.to_string(), *d, *e)).collect();
    assert_eq!(got, want);
}

#[test]
fn d_field_numbers_match_the_standard() {
    use prost_types::field_descriptor_proto::{Label, Type};
    let file = workload_file();
    type Field = (&'static str, i32, Type, Label);
    let table: &[(&str, &[Field])] = &[
        ("X509SVIDRequest", &[]),
        (
            "X509SVIDResponse",
            &[
                ("svids", 1, Type::Message, Label::Repeated),
                ("crl", 2, Type::Bytes, Label::Repeated),
                ("federated_bundles", 3, Type::Message, Label::Repeated),
            ],
        ),
        (
            "X509SVID",
            &[
                ("spiffe_id", 1, Type::String, Label::Optional),
                ("x509_svid", 2, Type::Bytes, Label::Optional),
                ("x509_svid_key", 3, Type::Bytes, Label::Optional),
                ("bundle", 4, Type::Bytes, Label::Optional),
                ("hint", 5, Type::String, Label::Optional),
            ],
        ),
        ("X509BundlesRequest", &[]),
        (
            "X509BundlesResponse",
            &[("crl", 1, Type::Bytes, Label::Repeated), ("bundles", 2, Type::Message, Label::Repeated)],
        ),
        (
            "JWTSVIDRequest",
            &[("audience", 1, Type::String, Label::Repeated), ("spiffe_id", 2, Type::String, Label::Optional)],
        ),
        ("JWTSVIDResponse", &[("svids", 1, Type::Message, Label::Repeated)]),
        (
            "JWTSVID",
            &[
                ("spiffe_id", 1, Type::String, Label::Optional),
                ("svid", 2, Type::String, Label::Optional),
                ("hint", 3, Type::String, Label::Optional),
            ],
        ),
        ("JWTBundlesRequest", &[]),
        ("JWTBundlesResponse", &[("bundles", 1, Type::Message, Label::Repeated)]),
        (
            "ValidateJWTSVIDRequest",
            &[("audience", 1, Type::String, Label::Optional), ("svid", 2, Type::String, Label::Optional)],
        ),
        (
            "ValidateJWTSVIDResponse",
            &[("spiffe_id", 1, Type::String, Label::Optional), ("claims", 2, Type::Message, Label::Optional)],
        ),
    ];
    assert_eq!(file.message_type.len(), table.len(), "no extra messages in workload.proto");
    for (msg_name, fields) in table {
        let msg = file.message_type.iter().find(|m| m.name() == *msg_name).unwrap_or_else(|| panic!("{msg_name}"));
        let got: Vec<_> = msg.field.iter().map(|f| (f.name(), f.number(), f.r#type(), f.label())).collect();
        assert_eq!(&got, fields, "{msg_name}");
    }
    // Map value types: federated_bundles and bundles are map<string, bytes>.
    for (msg_name, field) in [
        ("X509SVIDResponse", "federated_bundles"),
        ("X509BundlesResponse", "bundles"),
        ("JWTBundlesResponse", "bundles"),
    ] {
        let msg = file.message_type.iter().find(|m| m.name() == msg_name).unwrap();
        let f = msg.field.iter().find(|f| f.name() == field).unwrap();
        let entry_name = f.type_name().rsplit('.').next().unwrap();
        let entry = msg.nested_type.iter().find(|n| n.name() == entry_name).unwrap();
        assert!(entry.options.as_ref().is_some_and(|o| o.map_entry()), "{msg_name}.{field} is a map");
        let kv: Vec<_> = entry.field.iter().map(|f| (f.name(), f.r#type())).collect();
        assert_eq!(kv, vec![("key", Type::String), ("value", Type::Bytes)], "{msg_name}.{field}");
    }
}

#[test]
fn d_method_paths_have_no_package_prefix() {
    // What a go-spiffe or py-spiffe client dials: "/SpiffeWorkloadAPI/FetchX509SVID".
    let file = workload_file();
    let svc = &file.service[0];
    assert_eq!(svc.name(), "SpiffeWorkloadAPI");
    let paths: Vec<String> = svc.method.iter().map(|m| format!("/{}/{}", svc.name(), m.name())).collect();
    assert!(paths.contains(&"/SpiffeWorkloadAPI/FetchX509SVID".to_string()));
}
