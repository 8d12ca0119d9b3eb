//! Toolchain bootstrap (TOOLCHAIN.md's recipe), idempotent: each step checks first.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where bpf-linker is installed (a stable path: the binary's RUNPATH points into it).
pub fn toolchain_prefix() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/lb-ebpf-toolchain")
}

/// PATH with the bpf-linker directory first.
pub fn path_with_toolchain() -> OsString {
    let mut paths = vec![toolchain_prefix().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(name: &str, done: bool) -> bool {
    if done {
        println!("setup: {name}: already there");
    } else {
        println!("setup: {name}: installing");
    }
    !done
}

pub fn setup() -> Result<()> {
    // 1. The nightly toolchain (it cannot be downloaded here: it must exist).
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
        .context("the nightly toolchain is needed to build eBPF (rustup toolchain install nightly)")?;

    // 2. rust-src for -Z build-std=core.
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"])).unwrap_or_default();
    if step("nightly rust-src", installed.lines().any(|l| l.starts_with("rust-src"))) {
        crate::run({
            let mut c = Command::new("rustup");
            c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
            c
        })?;
    }

    // 3. bpf-linker built against the nightly toolchain's own LLVM.
    let prefix = toolchain_prefix();
    let linker = prefix.join("bin/bpf-linker");
    let works = output(Command::new(&linker).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if step("bpf-linker", works) {
        install_bpf_linker(&sysroot, &prefix)?;
    }

    // 4. bpffs.
    let bpffs = Path::new("/sys/fs/bpf");
    if step("bpffs on /sys/fs/bpf", is_bpffs(bpffs)) {
        crate::run({
            let mut c = Command::new("mount");
            c.args(["-t", "bpf", "bpf", "/sys/fs/bpf"]);
            c
        })?;
    }

    // 5. Debian packages the demo, the tests and the benchmark run.
    let missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("ping", "iputils-ping"),
        // The two-node e2e tests turn veth TX checksum offload off (XDP needs full checksums).
        ("ethtool", "ethtool"),
        // The benchmark's kube-proxy-shaped baselines.
        ("iptables-legacy-restore", "iptables"),
        ("nft", "nftables"),
        // The benchmark's bulk TCP throughput figure.
        ("iperf3", "iperf3"),
    ]
    .into_iter()
    .filter(|(bin, _)| output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none())
    .map(|(_, pkg)| pkg)
    .collect();
    if step("Debian packages", missing.is_empty()) {
        crate::run({
            let mut c = Command::new("apt-get");
            c.arg("update").arg("-q");
            c
        })?;
        crate::run({
            let mut c = Command::new("apt-get");
            c.args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
            c
        })?;
    }
    Ok(())
}

fn install_bpf_linker(sysroot: &Path, prefix: &Path) -> Result<()> {
    let libdir = sysroot.join("lib");
    let lib = std::fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let major = lib.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or("").to_string();
    let target = libdir.join(&lib);
    std::fs::create_dir_all(prefix.join("lib"))?;
    for link in [prefix.join("lib/libLLVM.so"), prefix.join("lib").join(&lib)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let mut c = Command::new("cargo");
    c.args(["install", "--root"])
        .arg(prefix)
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", prefix);
    crate::run(c)?;
    if output(Command::new(prefix.join("bin/bpf-linker")).arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    output(Command::new("stat").args(["-f", "-c", "%T"]).arg(path)).is_some_and(|t| t.trim() == "bpf_fs")
}
