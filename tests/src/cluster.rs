//! A two-node (or more) cluster in network namespaces, each node running its own real
//! `lb-agent`, plus an external client.
//!
//! ```text
//!                      lb-{tag}-lan  (external client, 192.168.50.100/24 on bridge br0)
//!                   br0 ── lb{tag}u0 ─┬─ lb{tag}u1 ── …
//!                                     │               │
//!   node1: lb-{tag}n0-node  uplink 192.168.50.1/24    node2: lb-{tag}n1-node  uplink 192.168.50.2/24
//!     pods: /32 on eth0, gateway 169.254.1.1            pods: …
//!     (wired as [`crate::topo::Topology`])
//! ```
//!
//! * The LAN is a bridge inside the client's namespace: the client is a host on the same L2
//!   segment as the nodes' uplinks (`uplink` in every node namespace, where the agent's XDP
//!   program sits).
//! * Each node routes every other node's pod /32s via that node's uplink address, and has a
//!   default route via the client (so host-originated traffic to ClusterIPs leaves through the
//!   uplink, where the host egress program sees it).
//! * Each node's agent reads its own copy of the manifests ([`Cluster::write_manifest`] writes
//!   every copy), plus a Node object named after it; endpoint `nodeName`s make endpoints local.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use lb_userspace::bench::pktgen::{XdpAttachment, PROG_NOOP};

use crate::{
    agent::Agent,
    netns::{ip, ip_netns, run, sysctl_in},
    topo::{Pod, PodSpec, Topology},
};

/// The LAN prefix length; node uplinks and the client live in it.
pub const LAN_PREFIX: u8 = 24;
/// The external client's address (on the LAN bridge).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
/// The pod CIDR passed as `--cluster-cidr`: every pod IP of a test must be inside.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The uplink's name in every node namespace (`--xdp-interfaces`).
pub const UPLINK: &str = "uplink";

pub struct NodeSpec {
    /// The Kubernetes node name (`--hostname-override`, endpoint `nodeName`).
    pub name: String,
    /// The uplink address (`--node-ip`: primary address, NodePorts, masquerade source).
    pub ip: Ipv4Addr,
    pub pods: Vec<PodSpec>,
}

pub struct Node {
    /// Dropped before the topology: the agent dies before its namespace goes.
    pub agent: Option<Agent>,
    pub name: String,
    pub ip: Ipv4Addr,
    pub topo: Topology,
    /// This node's manifest directory (`--manifests`).
    pub manifests: PathBuf,
}

impl Node {
    pub fn netns(&self) -> &str {
        &self.topo.node_netns
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent started")
    }
}

pub struct Cluster {
    pub tag: String,
    pub nodes: Vec<Node>,
    /// The no-op XDP program on the LAN side of every uplink (see [`Cluster::create_with`]).
    peer_xdp: Vec<XdpAttachment>,
    /// The external client's namespace (also holds the LAN bridge).
    pub client_netns: String,
    /// Namespaces added later ([`Cluster::add_routed_client`]), deleted with the cluster.
    extra_netns: Vec<String>,
    dir: PathBuf,
}

/// Turns TX checksum offload off on a veth end. Why: a veth that transmits a locally built
/// packet leaves its L4 checksum CHECKSUM_PARTIAL (only the pseudo-header sum, to be completed
/// "by the NIC"), and the skb crosses to the peer without the checksum ever being finished. The
/// XDP program on the peer sees raw packet bytes, as from a real NIC, and updates checksums
/// incrementally: on a partial checksum that yields garbage that the receiver drops. With TX
/// offload off, the kernel computes full checksums before transmitting, like a real wire.
pub fn tx_checksum_off(netns: &str, iface: &str) -> Result<()> {
    run("ip", &["netns", "exec", netns, "ethtool", "-K", iface, "tx", "off"])
        .map(|_| ())
        .with_context(|| format!("ethtool -K {iface} tx off in {netns} (is the ethtool package installed?)"))
}

/// A node firewall of the kind CNIs and firewalld install: netfilter conntrack active, and
/// packets conntrack finds INVALID dropped in the node's INPUT, FORWARD and OUTPUT chains.
/// Service traffic must never be half a flow to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    Iptables,
    Nftables,
}

impl Firewall {
    pub fn install(self, netns: &str) -> Result<()> {
        match self {
            Firewall::Iptables => {
                for chain in ["INPUT", "FORWARD", "OUTPUT"] {
                    run(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            netns,
                            "iptables",
                            "-A",
                            chain,
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "INVALID",
                            "-j",
                            "DROP",
                        ],
                    )?;
                }
            }
            Firewall::Nftables => {
                let rules = "table inet lbfw {\n\
                     chain input { type filter hook input priority 0; ct state invalid counter drop; }\n\
                     chain forward { type filter hook forward priority 0; ct state invalid counter drop; }\n\
                     chain output { type filter hook output priority 0; ct state invalid counter drop; }\n\
                     }\n";
                let file = std::env::temp_dir().join(format!("lb-fw-{netns}.nft"));
                std::fs::write(&file, rules)?;
                let r = run("ip", &["netns", "exec", netns, "nft", "-f", &file.to_string_lossy()]);
                let _ = std::fs::remove_file(&file);
                r?;
            }
        }
        Ok(())
    }

    /// Packets the INVALID rules dropped so far in `netns`.
    pub fn invalid_drops(self, netns: &str) -> Result<u64> {
        let (out, marker) = match self {
            Firewall::Iptables => (run("ip", &["netns", "exec", netns, "iptables-save", "-c", "-t", "filter"])?, "INVALID"),
            Firewall::Nftables => (run("ip", &["netns", "exec", netns, "nft", "list", "table", "inet", "lbfw"])?, "invalid"),
        };
        let mut total = 0;
        for line in out.lines().filter(|l| l.contains(marker)) {
            let n = match self {
                // iptables-save -c: "[PACKETS:BYTES] -A CHAIN ..."
                Firewall::Iptables => {
                    line.trim().strip_prefix('[').and_then(|r| r.split(':').next()).and_then(|n| n.parse::<u64>().ok())
                }
                // nft: "ct state invalid counter packets N bytes M drop"
                Firewall::Nftables => {
                    line.split("packets ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok())
                }
            };
            total += n.with_context(|| format!("reading the counter of {line:?}"))?;
        }
        Ok(total)
    }
}

/// How a test cluster is built.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The LAN side of every uplink gets a 9000-byte MTU, which makes native XDP on the uplink
    /// veth impossible ("peer MTU too large"): the agents run the tc ingress program on their
    /// uplinks instead (`--xdp-mode auto`), as on a NIC whose driver has no XDP.
    pub no_native_xdp: bool,
    /// Leave GRO, TSO and checksum offloads as the kernel sets them (on) on every veth,
    /// instead of turning TX checksum offload off (see [`tx_checksum_off`]: needed only where
    /// native XDP sees the packets).
    pub offloads: bool,
    /// A firewall in every node namespace, installed before the agents start.
    pub firewall: Option<Firewall>,
}

impl Cluster {
    /// Builds the namespaces and links (no agents yet). `tag` (≤ 3 characters) keeps parallel
    /// tests apart: namespaces are `lb-{tag}-lan` and `lb-{tag}n{i}-…`.
    pub fn create(tag: &str, nodes: &[NodeSpec]) -> Result<Cluster> {
        Cluster::create_with(tag, nodes, Options::default())
    }

    /// As [`Cluster::create`], built as `opts` says.
    pub fn create_with(tag: &str, nodes: &[NodeSpec], opts: Options) -> Result<Cluster> {
        assert!(tag.len() <= 3, "tag too long");
        let tx_checksum_off = |ns: &str, iface: &str| if opts.offloads { Ok(()) } else { tx_checksum_off(ns, iface) };
        let lan = format!("lb-{tag}-lan");
        let _ = ip(&["netns", "del", &lan]);
        let dir = std::env::temp_dir().join(format!("lb-cluster-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Cluster {
            tag: tag.into(),
            nodes: Vec::new(),
            peer_xdp: Vec::new(),
            client_netns: lan.clone(),
            extra_netns: Vec::new(),
            dir,
        };
        ip(&["netns", "add", &lan])?;
        ip_netns(&lan, &["link", "set", "lo", "up"])?;
        ip_netns(&lan, &["link", "add", "br0", "type", "bridge"])?;
        ip_netns(&lan, &["addr", "add", &format!("{CLIENT_IP}/{LAN_PREFIX}"), "dev", "br0"])?;
        ip_netns(&lan, &["link", "set", "br0", "up"])?;
        sysctl_in(&lan, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl_in(&lan, "net.ipv4.conf.default.rp_filter", "0")?;
        let _ = sysctl_in(&lan, "net.ipv6.conf.all.disable_ipv6", "1");
        // The client sends into the nodes' XDP uplinks: full checksums (see tx_checksum_off).
        tx_checksum_off(&lan, "br0")?;

        for (i, spec) in nodes.iter().enumerate() {
            let topo = Topology::create(&format!("{tag}n{i}"), &spec.pods)?;
            let node_ns = topo.node_netns.clone();
            let lan_if = format!("lb{tag}u{i}");
            ip(&["link", "add", &lan_if, "netns", &lan, "type", "veth", "peer", "name", UPLINK, "netns", &node_ns])?;
            if opts.no_native_xdp {
                ip_netns(&lan, &["link", "set", &lan_if, "mtu", "9000"])?;
            }
            ip_netns(&lan, &["link", "set", &lan_if, "master", "br0"])?;
            ip_netns(&lan, &["link", "set", &lan_if, "up"])?;
            // Both ends transmit towards an XDP uplink (bridge → node; node → bridge → the
            // other node's uplink, the bridge forwarding the skb as it is).
            tx_checksum_off(&lan, &lan_if)?;
            // Native XDP_TX on a veth hands the frame to the peer's XDP receive ring: with no
            // XDP program on the peer, the frames the uplink's program transmits never arrive
            // (a NIC has no such condition). The LAN side therefore runs a no-op XDP program.
            if !opts.no_native_xdp {
                cluster.peer_xdp.push(
                    XdpAttachment::attach(Some(&lan), &lan_if, PROG_NOOP)
                        .with_context(|| format!("no-op XDP on {lan_if} (the uplink's peer)"))?,
                );
            }
            tx_checksum_off(&node_ns, UPLINK)?;
            let _ = sysctl_in(&node_ns, "net.ipv6.conf.all.disable_ipv6", "1");
            ip_netns(&node_ns, &["addr", "add", &format!("{}/{LAN_PREFIX}", spec.ip), "dev", UPLINK])?;
            ip_netns(&node_ns, &["link", "set", UPLINK, "up"])?;
            ip_netns(&node_ns, &["route", "add", "default", "via", &CLIENT_IP.to_string(), "dev", UPLINK])?;
            sysctl_in(&node_ns, &format!("net.ipv4.conf.{UPLINK}.rp_filter"), "0")?;
            // Pods' packets reach other nodes' XDP uplinks after forwarding; the uplink above
            // completes their checksums, but keep pods on full checksums too (belt and braces).
            for pod in &topo.pods {
                tx_checksum_off(&pod.netns, "eth0")?;
            }
            if let Some(fw) = opts.firewall {
                fw.install(&node_ns)?;
            }
            let manifests = cluster.dir.join(&spec.name);
            std::fs::create_dir_all(&manifests)?;
            std::fs::write(
                manifests.join("00-node.yaml"),
                format!(
                    "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {}}}\n",
                    spec.name, spec.ip
                ),
            )?;
            cluster.nodes.push(Node { agent: None, name: spec.name.clone(), ip: spec.ip, topo, manifests });
        }
        // Every node reaches every other node's pods through that node.
        for a in 0..cluster.nodes.len() {
            for b in 0..cluster.nodes.len() {
                if a == b {
                    continue;
                }
                let via = cluster.nodes[b].ip.to_string();
                for pod in cluster.nodes[b].topo.pods.clone() {
                    ip_netns(cluster.nodes[a].netns(), &["route", "add", &format!("{}/32", pod.ip), "via", &via, "dev", UPLINK])?;
                }
            }
        }
        Ok(cluster)
    }

    /// An external client behind a router: the router's namespace `lb-{tag}-rtr` is on the LAN
    /// (192.168.50.254) and reaches the client's namespace `lb-{tag}-far` (192.168.60.2) over
    /// a link of `mtu` bytes. The client announces the MSS of a 1 500-byte link all the same
    /// (its route's `advmss`: as a client two links further away would), so the way back
    /// learns the path MTU only from the router's "fragmentation needed". Every node routes
    /// 192.168.60.0/24 via the router. Returns the client's namespace.
    pub fn add_routed_client(&mut self, mtu: u32) -> Result<String> {
        let (rtr, far) = (format!("lb-{}-rtr", self.tag), format!("lb-{}-far", self.tag));
        for ns in [&rtr, &far] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
            self.extra_netns.push(ns.clone());
            ip_netns(ns, &["link", "set", "lo", "up"])?;
            let _ = sysctl_in(ns, "net.ipv6.conf.all.disable_ipv6", "1");
            sysctl_in(ns, "net.ipv4.conf.all.rp_filter", "0")?;
        }
        let lan_if = format!("lb{}r0", self.tag);
        ip(&["link", "add", &lan_if, "netns", &self.client_netns, "type", "veth", "peer", "name", "lan0", "netns", &rtr])?;
        ip_netns(&self.client_netns, &["link", "set", &lan_if, "master", "br0"])?;
        ip_netns(&self.client_netns, &["link", "set", &lan_if, "up"])?;
        ip(&["link", "add", "far0", "netns", &rtr, "type", "veth", "peer", "name", "eth0", "netns", &far])?;
        ip_netns(&rtr, &["link", "set", "far0", "mtu", &mtu.to_string()])?;
        ip_netns(&far, &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        ip_netns(&rtr, &["addr", "add", "192.168.50.254/24", "dev", "lan0"])?;
        ip_netns(&rtr, &["addr", "add", "192.168.60.1/24", "dev", "far0"])?;
        ip_netns(&far, &["addr", "add", "192.168.60.2/24", "dev", "eth0"])?;
        for (ns, dev) in [(&rtr, "lan0"), (&rtr, "far0"), (&far, "eth0")] {
            ip_netns(ns, &["link", "set", dev, "up"])?;
            // Frames reach the nodes' XDP uplinks: full checksums (see tx_checksum_off).
            tx_checksum_off(ns, dev)?;
        }
        tx_checksum_off(&self.client_netns, &lan_if)?;
        sysctl_in(&rtr, "net.ipv4.ip_forward", "1")?;
        ip_netns(&far, &["route", "add", "default", "via", "192.168.60.1", "advmss", "1460"])?;
        for node in &self.nodes {
            ip_netns(node.netns(), &["route", "add", "192.168.60.0/24", "via", "192.168.50.254", "dev", UPLINK])?;
        }
        Ok(far)
    }

    /// Writes `file` with `content` into every node's manifest directory (replace by rename,
    /// so an agent never reads half a file).
    pub fn write_manifest(&self, file: &str, content: &str) -> Result<()> {
        for node in &self.nodes {
            let tmp = node.manifests.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, content)?;
            std::fs::rename(&tmp, node.manifests.join(file))?;
        }
        Ok(())
    }

    /// Starts one lb-agent per node (waiting for each to be ready) with its node name, node IP,
    /// the cluster CIDR, its pods' host veths and the uplink for XDP; health and metrics
    /// servers off (metrics on where `extra` has `--metrics-bind-address`). `extra` goes to
    /// every agent.
    pub fn start_agents(&mut self, extra: &[&str]) -> Result<()> {
        let pid = std::process::id();
        for node in &mut self.nodes {
            let bpffs = PathBuf::from(format!("/sys/fs/bpf/lb-cluster-{}-{}-{pid}", self.tag, node.name));
            let ip = node.ip.to_string();
            let mut args = vec![
                "--hostname-override",
                &node.name,
                "--node-ip",
                &ip,
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--xdp-interfaces",
                UPLINK,
                "--healthz-bind-address",
                "",
            ];
            // (Metrics on when `extra` says where.)
            if !extra.contains(&"--metrics-bind-address") {
                args.extend_from_slice(&["--metrics-bind-address", ""]);
            }
            args.extend_from_slice(extra);
            let agent = Agent::start(&node.topo.node_netns, &node.manifests, &node.topo.host_if_pattern(), &bpffs, &args)
                .with_context(|| format!("agent on {}", node.name))?;
            node.agent = Some(agent);
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A pod by name, on whichever node.
    pub fn pod(&self, name: &str) -> &Pod {
        self.nodes.iter().find_map(|n| n.topo.pods.iter().find(|p| p.name == name)).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts lb-echo in pod `pod`, answering `POD peer=CLIENT_IP_IT_SAW` (more lb-echo
    /// arguments in `extra`, e.g. `--bulk PORT`).
    pub fn spawn_echo(&mut self, pod: &str, tcp: u16, udp: u16, extra: &[&str]) -> Result<()> {
        let node =
            self.nodes.iter_mut().find(|n| n.topo.pods.iter().any(|p| p.name == pod)).with_context(|| format!("no pod {pod}"))?;
        let mut args = vec!["--report-peer"];
        args.extend_from_slice(extra);
        node.topo.spawn_echo_with(pod, pod, tcp, udp, &args)
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.agent.as_ref().map(|a| format!("--- agent on {} ---\n{}", n.name, a.log())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `lbctl conntrack` and `lbctl stats` of every agent, for failure messages.
    pub fn datapath_state(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if let Some(a) = &n.agent {
                for what in ["stats", "conntrack"] {
                    let v = a.lbctl_json(&[what]).map(|v| v.to_string()).unwrap_or_else(|e| format!("{e:#}"));
                    // (A full table is megabytes: its start is enough.)
                    let v = if v.len() > 20_000 {
                        format!("{}… ({} bytes)", &v[..v.floor_char_boundary(20_000)], v.len())
                    } else {
                        v
                    };
                    out.push_str(&format!("--- lbctl {what} on {} ---\n{v}\n", n.name));
                }
            }
        }
        out
    }

    pub fn manifest_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents and node namespaces first (Node drops its agent before its topology).
        self.nodes.clear();
        self.peer_xdp.clear();
        let _ = ip(&["netns", "del", &self.client_netns]);
        for ns in &self.extra_netns {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
