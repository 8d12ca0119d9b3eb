//! Builds the eBPF object (lb-ebpf) with aya-build and leaves it in OUT_DIR for
//! `include_bytes_aligned!`. `cargo xtask setup` installs bpf-linker under
//! `$HOME/.local/share/lb-ebpf-toolchain`; it is put on PATH here so a plain `cargo build`
//! works after setup.
use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../lb-ebpf");
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../lb-common/src").display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip = env::var("AYA_BUILD_SKIP").map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false);
    if skip {
        // Unit tests of pure code can build without the eBPF toolchain; the object is empty
        // and loading it fails with a clear error.
        let out = PathBuf::from(env::var("OUT_DIR")?).join("lb-ebpf");
        if !out.exists() {
            std::fs::write(out, [])?;
        }
        return Ok(());
    }

    if let Some(home) = env::var_os("HOME") {
        let bin = PathBuf::from(home).join(".local/share/lb-ebpf-toolchain/bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        if bin.join("bpf-linker").exists() && !paths.contains(&bin) {
            paths.insert(0, bin);
            // SAFETY: build scripts are single-threaded here.
            unsafe { env::set_var("PATH", env::join_paths(paths)?) };
        }
    }
    println!("cargo:rerun-if-env-changed=PATH");

    let root = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
