//! The generated protobuf code in `src/format/chatvault.v1.rs` is checked in, so builds need no
//! `protoc` and no protobuf compiler crate. This test regenerates it with the pure-Rust `protox`
//! compiler and fails if the checked-in file is stale.
//!
//! Regenerate: `CHATVAULT_UPDATE_PROTO=1 cargo test --test proto_current`.

use std::path::Path;

#[test]
fn generated_protobuf_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = root.join("proto/chatvault/v1/chatvault.proto");
    let descriptors = protox::compile([&proto], [root.join("proto")]).expect("proto files compile");
    let out = tempfile::tempdir().expect("temp dir");
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("prost-build generates code");
    let generated = std::fs::read_to_string(out.path().join("chatvault.v1.rs")).expect("generated");
    let checked_in_path = root.join("src/format/chatvault.v1.rs");
    if std::env::var_os("CHATVAULT_UPDATE_PROTO").is_some() {
        std::fs::write(&checked_in_path, &generated).expect("write generated code");
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "src/format/chatvault.v1.rs is stale: run CHATVAULT_UPDATE_PROTO=1 cargo test --test proto_current"
    );
}
