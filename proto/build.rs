//! Compiles the .proto files with protox (pure Rust, no system protoc) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/spiffe/workload.proto",
        "proto/sigil/types/v1/types.proto",
        "proto/sigil/admin/v1/admin.proto",
        "proto/sigil/agent/v1/agent.proto",
    ];
    // CSI and kubelet plugin registration: compiled apart, so FILE_DESCRIPTOR_SET (served by the agent's
    // and server's gRPC reflection) does not advertise services those processes do not serve.
    let node_plugin_files = ["proto/csi/v1/csi.proto", "proto/pluginregistration/v1/api.proto"];
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // X509SVID's DER fields as `bytes::Bytes`: the agent answers every FetchX509SVID message from the same
    // cached certificates, keys and bundle, and Bytes makes that a reference count, not a copy per SVID.
    tonic_prost_build::configure().build_server(true).build_client(true).bytes(".X509SVID").compile_fds(fds)?;
    let plugin_fds = protox::compile(node_plugin_files, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(plugin_fds)?;
    for f in files.iter().chain(&node_plugin_files) {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
