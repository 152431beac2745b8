//! Compiles the contract with protox, so building needs no system `protoc`, and keeps its encoded
//! descriptor set for the servers' reflection service.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["runnel/v1/runnel.proto", "prometheus/remote_write.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("runnel_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        // Ordered maps make the encoding of a message deterministic and its tags iterate in key order.
        .btree_map(".")
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
