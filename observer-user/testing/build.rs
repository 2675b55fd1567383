//! Generates the CRI client and server used by the tests from `proto/cri/`.

use std::{env, path::PathBuf};

fn main() {
    let proto_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../proto");
    let file = proto_dir.join("cri/runtime_v1.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    if let Err(err) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[&file], &[&proto_dir])
    {
        eprintln!(
            "error: generating the CRI test client and server failed: {err}\n\
             protoc is needed (Debian: protobuf-compiler; `cargo xtask setup` installs it)."
        );
        std::process::exit(1);
    }
}
