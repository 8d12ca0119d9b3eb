//! `cargo xtask`: bootstrap, build, demo, test and manual loading.
//!
//! Every command runs `setup` first; each setup step checks whether it is already done and
//! skips itself, so the commands work on a fresh machine and cost nothing on a prepared one.

mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (nightly rust-src, bpf-linker against the toolchain's
    /// LLVM, bpffs, Debian packages). Idempotent.
    Setup,
    /// Build the agent, lbctl (with the eBPF object inside) and the test helpers.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run lb-agent in the foreground attached to the given interfaces.
    BuildAndLoad {
        /// Interfaces (names or glob patterns) to attach to.
        #[arg(long = "iface", required = true, num_args = 1..)]
        ifaces: Vec<String>,
        /// Manifests to serve (default: demo/manifests).
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Extra arguments for lb-agent (after `--`).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// The demo: pods in network namespaces, the agent, connections balanced through a
    /// ClusterIP, a backend removed, everything cleaned up.
    Demo,
    /// Benchmarks (release build): datapath ns/packet against the no-op floor, control-plane
    /// timings and map memory across service counts, and through a netns topology (live-frames
    /// packet generator, connect latency, connections/s, agent RSS) against kube-proxy-shaped
    /// iptables/nftables rules; results and SVG plots in target/bench/<timestamp>/.
    Bench {
        /// A smoke run of a few seconds.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for lb-bench (after `--`), e.g. `-- --services 1,1000 --endpoints 5`.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// The whole test suite (unit, packet and end-to-end); fails if a privileged test was
    /// skipped.
    Test {
        /// Allow privileged tests to be skipped (when not root).
        #[arg(long)]
        allow_skip: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("PATH", setup::path_with_toolchain());
    cmd
}

pub fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Builds every binary the demo and tests run.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "lb-userspace", "-p", "lb-tests", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(cmd)?;
    Ok(workspace_root().join("target").join(if release { "release" } else { "debug" }))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => setup::setup().and_then(|()| build(release).map(|_| ())),
        Cmd::BuildAndLoad { ifaces, manifests, agent_args } => build_and_load(ifaces, manifests, agent_args),
        Cmd::Demo => setup::setup().and_then(|()| build(false)).and_then(|bin| run(Command::new(bin.join("lb-demo")))),
        Cmd::Test { allow_skip, cargo_args } => test(allow_skip, cargo_args),
        Cmd::Bench { quick, bench_args } => bench(quick, bench_args),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn build_and_load(ifaces: Vec<String>, manifests: Option<PathBuf>, agent_args: Vec<String>) -> Result<()> {
    setup::setup()?;
    let bin = build(false)?;
    let manifests = manifests.unwrap_or_else(|| workspace_root().join("demo/manifests"));
    let mut cmd = Command::new(bin.join("lb-agent"));
    cmd.arg("--manifests").arg(&manifests).arg("--interfaces").arg(ifaces.join(",")).args(agent_args);
    println!("running {cmd:?} (Ctrl-C detaches and cleans up)");
    run(cmd)
}

fn bench(quick: bool, bench_args: Vec<String>) -> Result<()> {
    setup::setup()?;
    let mut cmd = cargo();
    // lb-bench runs lb-baseline (rule-set loads), lb-netbench (netns topology figures), which
    // runs lb-pktgen (the live-frames generator) and lb-agent: all next to each other.
    cmd.args(["build", "--release", "-p", "lb-userspace", "--bin", "lb-bench", "--bin", "lb-pktgen", "--bin", "lb-agent"]);
    cmd.args(["-p", "lb-tests", "--bin", "lb-baseline", "--bin", "lb-netbench"]);
    run(cmd)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let out = workspace_root().join("target/bench").join(stamp.to_string());
    let mut cmd = Command::new(workspace_root().join("target/release/lb-bench"));
    cmd.arg("--out").arg(&out).args(&bench_args);
    if quick {
        cmd.arg("--quick");
    }
    run(cmd)
}

fn test(allow_skip: bool, cargo_args: Vec<String>) -> Result<()> {
    setup::setup()?;
    build(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf"]);
    cmd.args(&cargo_args);
    if !allow_skip {
        cmd.env("LB_REQUIRE_ROOT", "1");
    }
    let shown = format!("{cmd:?}");
    let output = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let skipped = stdout.lines().filter(|l| l.contains("skipped: needs root")).count();
    if !output.status.success() {
        bail!("tests failed");
    }
    if skipped > 0 && !allow_skip {
        bail!("{skipped} privileged test(s) were skipped: run as root");
    }
    if skipped > 0 {
        println!("warning: {skipped} privileged test(s) skipped: needs root");
    }
    Ok(())
}
