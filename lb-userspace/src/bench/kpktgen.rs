//! The kernel's packet generator (`/proc/net/pktgen`, CONFIG_NET_PKTGEN) as the traffic source
//! where the kernel has it; `lb-pktgen --engine auto` picks it for UDP, and the XDP live-frames
//! generator ([`super::pktgen`]) otherwise (pktgen only builds UDP, and this project's CI
//! kernel has no pktgen).
//!
//! pktgen is configured by writing commands to files under `/proc/net/pktgen` of the sender's
//! network namespace: the per-CPU thread file (`kpktgend_N`) takes the device, the device file
//! its parameters, `pgctrl` starts the run (the write returns when the run is over), and the
//! device file then holds the result line. The commands and the result parsing are pure
//! functions, table-tested; [`run`] only does the file I/O.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::pktgen::{FrameSpec, RunStats};
use crate::model::Protocol;

/// Where pktgen lives, for the calling thread's network namespace.
pub fn proc_dir() -> PathBuf {
    PathBuf::from("/proc/thread-self/net/pktgen")
}

/// Whether this kernel has pktgen (in the calling thread's namespace).
pub fn available() -> bool {
    proc_dir().join("pgctrl").exists()
}

/// Which generator to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// pktgen when the kernel has it and the traffic is UDP, else XDP live frames.
    Auto,
    /// XDP live frames (BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES).
    Xdp,
    /// The kernel's pktgen.
    Kernel,
}

impl Engine {
    /// The engine that runs (`Xdp` or `Kernel`) for `proto`, given whether pktgen exists.
    pub fn resolve(self, proto: Protocol, pktgen: bool) -> Result<Engine> {
        match self {
            Engine::Auto if pktgen && proto == Protocol::Udp => Ok(Engine::Kernel),
            Engine::Auto | Engine::Xdp => Ok(Engine::Xdp),
            Engine::Kernel => {
                ensure!(pktgen, "--engine kernel: this kernel has no pktgen (/proc/net/pktgen)");
                ensure!(proto == Protocol::Udp, "--engine kernel: pktgen only sends UDP");
                Ok(Engine::Kernel)
            }
        }
    }
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The writes configuring one run of `count` frames out of `iface` on pktgen thread `thread`:
/// (file relative to `/proc/net/pktgen`, command). Flows as the XDP generator numbers them:
/// source ports `sport..` (at most `sport_span` per source address), then the next address.
pub fn commands(spec: &FrameSpec, iface: &str, count: u32, thread: usize) -> Result<Vec<(String, String)>> {
    ensure!(spec.proto == Protocol::Udp, "pktgen only sends UDP");
    ensure!((64..=1514).contains(&spec.frame_len), "frame length {} outside 64..=1514", spec.frame_len);
    let span = spec.sport_span.max(1) as u32;
    let flows = if spec.flows == 0 { u32::MAX } else { spec.flows };
    let ports = flows.min(span);
    let addrs = flows.div_ceil(span).max(1);
    let src_max = std::net::Ipv4Addr::from(u32::from(spec.src).saturating_add(addrs - 1));
    let t = format!("kpktgend_{thread}");
    let d = iface.to_string();
    let mut out = vec![(t.clone(), "rem_device_all".to_string()), (t, format!("add_device {iface}"))];
    for cmd in [
        format!("count {count}"),
        // pktgen's size counts the 4-byte FCS that the frame length here leaves out.
        format!("pkt_size {}", spec.frame_len + 4),
        "clone_skb 0".to_string(),
        "delay 0".to_string(),
        format!("dst {}", spec.dst),
        format!("dst_mac {}", mac(spec.dst_mac)),
        format!("src_mac {}", mac(spec.src_mac)),
        format!("src_min {}", spec.src),
        format!("src_max {src_max}"),
        format!("udp_src_min {}", spec.sport),
        format!("udp_src_max {}", (spec.sport as u32 + ports - 1).min(u16::MAX as u32)),
        format!("udp_dst_min {}", spec.dport),
        format!("udp_dst_max {}", spec.dport),
    ] {
        out.push((d.clone(), cmd));
    }
    Ok(out)
}

/// Frames sent and microseconds from a device file's result line, e.g.
/// `Result: OK: 1153(c1052+d101) usec, 100000 (60byte,0frags)`.
pub fn parse_result(device_file: &str) -> Result<(u64, u64)> {
    let line = device_file.lines().find(|l| l.trim_start().starts_with("Result:")).context("no Result line")?;
    let rest = line.trim_start().strip_prefix("Result:").unwrap_or_default().trim();
    let Some(rest) = rest.strip_prefix("OK:") else { bail!("pktgen: {rest}") };
    let (usec, after) = rest.split_once("usec,").context("no usec")?;
    let usec: u64 = usec.trim().split('(').next().unwrap_or_default().trim().parse().context("usec")?;
    let frames: u64 = after.split_whitespace().next().context("no frame count")?.parse().context("frame count")?;
    Ok((frames, usec))
}

/// Runs pktgen with `commands` in the calling thread's namespace (see [`super::pktgen::in_netns`]).
pub fn run(iface: &str, commands: &[(String, String)]) -> Result<RunStats> {
    let dir = proc_dir();
    let write = |file: &Path, cmd: &str| -> Result<()> {
        std::fs::write(file, cmd).with_context(|| format!("pktgen: writing {cmd:?} to {}", file.display()))
    };
    for (file, cmd) in commands {
        write(&dir.join(file), cmd)?;
    }
    let started = std::time::Instant::now();
    let cpu_before = super::pktgen::thread_cpu_ns();
    write(&dir.join("pgctrl"), "start")?;
    let elapsed_ns = started.elapsed().as_nanos() as u64;
    let result = std::fs::read_to_string(dir.join(iface)).context("reading the pktgen result")?;
    let (frames, usec) = parse_result(&result)?;
    Ok(RunStats {
        frames,
        elapsed_ns,
        kernel_ns_per_frame: (usec * 1000).checked_div(frames).unwrap_or(0),
        cpu_ns: super::pktgen::thread_cpu_ns().saturating_sub(cpu_before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_resolution() {
        use Engine::*;
        assert_eq!(Auto.resolve(Protocol::Udp, true).unwrap(), Kernel);
        assert_eq!(Auto.resolve(Protocol::Tcp, true).unwrap(), Xdp, "pktgen cannot build TCP");
        assert_eq!(Auto.resolve(Protocol::Udp, false).unwrap(), Xdp);
        assert_eq!(Xdp.resolve(Protocol::Udp, true).unwrap(), Xdp);
        assert!(Kernel.resolve(Protocol::Udp, false).is_err());
        assert!(Kernel.resolve(Protocol::Tcp, true).is_err());
    }

    #[test]
    fn commands_configure_the_device_and_its_flows() {
        let spec = FrameSpec {
            proto: Protocol::Udp,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: "10.190.0.1".parse().unwrap(),
            sport: 1024,
            sport_span: 1000,
            dst: "10.96.0.1".parse().unwrap(),
            dport: 53,
            frame_len: 64,
            flows: 2500,
        };
        let cmds = commands(&spec, "gen0", 100_000, 1).unwrap();
        let text: Vec<String> = cmds.iter().map(|(f, c)| format!("{f}: {c}")).collect();
        assert_eq!(
            text,
            [
                "kpktgend_1: rem_device_all",
                "kpktgend_1: add_device gen0",
                "gen0: count 100000",
                "gen0: pkt_size 68",
                "gen0: clone_skb 0",
                "gen0: delay 0",
                "gen0: dst 10.96.0.1",
                "gen0: dst_mac 02:00:00:00:00:02",
                "gen0: src_mac 02:00:00:00:00:01",
                "gen0: src_min 10.190.0.1",
                "gen0: src_max 10.190.0.3",
                "gen0: udp_src_min 1024",
                "gen0: udp_src_max 2023",
                "gen0: udp_dst_min 53",
                "gen0: udp_dst_max 53",
            ]
        );
        assert!(commands(&FrameSpec { proto: Protocol::Tcp, ..spec.clone() }, "gen0", 1, 0).is_err());
        assert!(commands(&FrameSpec { frame_len: 40, ..spec }, "gen0", 1, 0).is_err());
    }

    #[test]
    fn result_lines_parse() {
        let file = "Params: count 100000  min_pkt_size: 60  max_pkt_size: 60\n\
                    Current:\n     pkts-sofar: 100000  errors: 0\n\
                    Result: OK: 1153(c1052+d101) usec, 100000 (60byte,0frags)\n  86730pps 41Mb/sec (41630400bps) errors: 0\n";
        assert_eq!(parse_result(file).unwrap(), (100_000, 1153));
        assert!(parse_result("Result: Idle\n").is_err());
        assert!(parse_result("no result here").is_err());
    }
}
