//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and keeps the encoded
//! descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

/// Test suites that need a backend are compiled as ignored (with the reason) unless its URL
/// is set, so a bare `cargo test` reports them as ignored rather than passed.
fn backend_cfgs() {
    println!("cargo::rustc-check-cfg=cfg(teamgate_test_pg)");
    println!("cargo::rustc-check-cfg=cfg(teamgate_test_redis)");
    println!("cargo::rustc-check-cfg=cfg(teamgate_test_smtp)");
    for (var, cfg) in [
        ("TEAMGATE_TEST_DATABASE_URL", "teamgate_test_pg"),
        ("TEAMGATE_TEST_REDIS_URL", "teamgate_test_redis"),
        ("TEAMGATE_TEST_SMTP", "teamgate_test_smtp"),
    ] {
        println!("cargo:rerun-if-env-changed={var}");
        if env::var(var).is_ok_and(|v| !v.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    backend_cfgs();
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/teamgate/v1/common.proto",
        "proto/teamgate/v1/team.proto",
        "proto/teamgate/v1/authz.proto",
        "proto/teamgate/v1/identity.proto",
        "proto/teamgate/v1/sso.proto",
        "proto/google/rpc/status.proto",
        "proto/google/rpc/error_details.proto",
    ];
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("teamgate_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Envoy's ext_authz service is served with `envoy-types`' Rust types, which carry no
    // descriptors: compile its protos (vendored, see proto/vendor/README.md) for reflection
    // only, with no code generated.
    let mut envoy = protox::Compiler::new(["proto/vendor", "proto"])?;
    envoy.include_imports(true).include_source_info(true);
    envoy.open_files(["envoy/service/auth/v3/external_auth.proto"])?;
    fs::write(
        out_dir.join("envoy_descriptor.bin"),
        envoy.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
