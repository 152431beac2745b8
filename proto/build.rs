//! Compiles the contract with protox, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["runnel/v1/runnel.proto", "prometheus/remote_write.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Ordered maps make the encoding of a message deterministic and its tags iterate in key order.
        .btree_map(".")
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
