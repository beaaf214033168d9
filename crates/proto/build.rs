//! Compiles `proto/hodei/v1/*.proto` with protox (pure Rust: no `protoc` on the machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "hodei/v1/scheduler.proto",
        "hodei/v1/jobs.proto",
        "hodei/v1/tenants.proto",
        "hodei/v1/credentials.proto",
    ]
    .map(|file| root.join(file));
    println!("cargo:rerun-if-changed={}", root.join("hodei/v1").display());
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
