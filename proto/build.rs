//! Generates the tonic/prost code for `fleetmig.v1` and a descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "fleetmig/v1/common.proto",
        "fleetmig/v1/worker.proto",
        "fleetmig/v1/operator.proto",
        "fleetmig/v1/storage.proto",
        "fleetmig/v1/peer.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fleetmig_descriptor.bin"))
        // Bulk payloads as `bytes::Bytes`: chunks move without copies.
        .bytes(".fleetmig.v1.PutChunkRequest.data")
        .bytes(".fleetmig.v1.ChunkData.data")
        .compile_protos(&protos, &["."])
        .map_err(|err| {
            format!("compiling protos failed (is protoc installed? run scripts/setup.sh): {err}")
        })?;
    Ok(())
}
