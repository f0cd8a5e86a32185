//! Compiles every `.proto` under the repository's `proto/` directory with protox (pure Rust, no
//! system `protoc`) and generates prost messages plus tonic stubs. Server code is generated only
//! with the `server` feature and `connect()` helpers only with `transport`, so the crate also
//! builds for `wasm32-wasip2`, where the edge functions use the clients over Spin's outbound HTTP.

use std::path::{Path, PathBuf};

fn collect_protos(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut protos = Vec::new();
    collect_protos(&proto_root, &mut protos)?;
    protos.sort();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&protos)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded by the compiler rather than from `descriptors`: prost's `MethodOptions` has no
    // field for custom options such as `(storemesh.options.v1.public_method)`, which the
    // crate reads back from these bytes (`contract`), and reflection clients see them too.
    std::fs::write(
        out_dir.join("storemesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    let transport = std::env::var_os("CARGO_FEATURE_TRANSPORT").is_some();
    tonic_prost_build::configure()
        .build_server(server)
        .build_client(true)
        .build_transport(transport)
        .codec_path("crate::codec::StrictProstCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
