//! Embeds the eBPF object built by `cargo xtask build-ebpf` and generates the CRI client.

use std::{env, fs, path::PathBuf};

fn main() {
    embed_probes();
    generate_cri();
}

fn embed_probes() {
    println!("cargo:rerun-if-env-changed=ZASTAVA_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("ZASTAVA_EBPF_OBJECT").map_or_else(
        || manifest_dir.join("../observer-ebpf/target/bpfel-unknown-none/release/zastava-probes"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("zastava-probes.o");
    if let Err(err) = fs::copy(&object, &out) {
        eprintln!(
            "error: the eBPF object {} is missing ({err}).\n\
             Build it first with `cargo xtask build-ebpf` (or set ZASTAVA_EBPF_OBJECT to its path).",
            object.display()
        );
        std::process::exit(1);
    }
}

fn generate_cri() {
    let proto_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../proto");
    let file = proto_dir.join("cri/runtime_v1.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let generated = tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[&file], &[&proto_dir]);
    if let Err(err) = generated {
        eprintln!(
            "error: generating the CRI client failed: {err}\n\
             protoc is needed (Debian: protobuf-compiler; `cargo xtask setup` installs it)."
        );
        std::process::exit(1);
    }
}
