//! Compiles the .proto files with protox (pure Rust, no system protoc) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/spiffe/workload.proto",
        "proto/sigil/types/v1/types.proto",
        "proto/sigil/admin/v1/admin.proto",
        "proto/sigil/agent/v1/agent.proto",
        "proto/csi/v1/csi.proto",
        "proto/pluginregistration/v1/api.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
