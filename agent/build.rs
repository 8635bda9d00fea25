//! Builds `agent-ebpf` for the BPF target and leaves the object in OUT_DIR,
//! where `dataplane` embeds it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let object = out.join("agent");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Unit tests of pure logic do not need the kernel object. An empty
        // file keeps `include_bytes!` compiling; loading it fails at run time
        // with an error that names AYA_BUILD_SKIP.
        if !object.exists() {
            fs::write(&object, b"")?;
        }
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .expect("agent/ has a parent")
        .join("agent-ebpf");
    let root_dir = root.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
