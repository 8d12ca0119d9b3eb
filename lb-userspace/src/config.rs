//! Flags with kube-proxy's names and meanings, shared by `lb-agent` and `lbctl trace` (the
//! trace must decide exactly as the agent would), and their resolution into this node's
//! network facts ([`NodeNet`]).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use ipnet::Ipv4Net;

use crate::dataplane::writer::NodeNet;

/// kube-proxy's proxy-mode flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ProxyFlags {
    /// The node name (default: the host name), as kube-proxy's flag: endpoints whose nodeName
    /// equals it are local.
    #[arg(long)]
    pub hostname_override: Option<String>,

    /// The cluster's pod CIDRs (kube-proxy's flag, comma separated or repeated): the local
    /// traffic detector. Sources inside are pods (not masqueraded to ClusterIPs, short-circuited
    /// for eTP=Local); without it nothing is detected as local (SEMANTICS H1–H5).
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<Ipv4Net>,

    /// Masquerade all ClusterIP traffic (kube-proxy's flag).
    #[arg(long)]
    pub masquerade_all: bool,

    /// Addresses NodePorts are served on: CIDRs (interface addresses inside them; a list
    /// without IPv4 CIDRs means every address) or `primary` (the node's primary address),
    /// kube-proxy's flag. Default `primary`, as kube-proxy's nftables mode; loopback
    /// addresses never.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,

    /// This node's addresses (repeatable); the first is the primary one (NodePorts with
    /// `primary`, and the masquerade source). Default: the Node object's InternalIP, else the
    /// first non-loopback interface address.
    #[arg(long = "node-ip")]
    pub node_ip: Vec<Ipv4Addr>,
}

/// Flow-state flags: kube-proxy's conntrack timeouts and the source NAT port range.
#[derive(Clone, Debug, clap::Args)]
pub struct FlowFlags {
    /// Idle timeout of established TCP connections (kube-proxy's flag).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_established: std::time::Duration,

    /// Idle timeout of TCP connections in CLOSE_WAIT (kube-proxy's flag). The other TCP
    /// states keep netfilter's defaults (FIN_WAIT 120 s, LAST_ACK 30 s, TIME_WAIT 120 s,
    /// CLOSE 10 s; SYN_SENT 120 s and SYN_RECV 60 s have flags of their own).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_close_wait: std::time::Duration,

    /// Idle timeout of TCP connections whose SYN was not answered (netfilter's
    /// `nf_conntrack_tcp_timeout_syn_sent`; kube-proxy has no flag for it). What a SYN flood
    /// costs: each SYN holds its entries this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_syn_sent: std::time::Duration,

    /// Idle timeout of TCP connections whose SYN was answered but whose handshake did not
    /// complete (netfilter's `nf_conntrack_tcp_timeout_syn_recv`; no kube-proxy flag): a SYN
    /// flood to a listening backend leaves its entries in this state.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_syn_recv: std::time::Duration,

    /// Idle timeout of UDP flows that have not seen a reply (kube-proxy's flag; netfilter's
    /// default).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub conntrack_udp_timeout: std::time::Duration,

    /// Idle timeout of UDP flows once a reply was seen (kube-proxy's flag; netfilter's
    /// default).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub conntrack_udp_timeout_stream: std::time::Duration,

    /// How often expired conntrack entries are removed (`dataplane::gc`; the datapath never
    /// uses them, but they hold room in the table and in its fill metric until then).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub conntrack_gc_interval: std::time::Duration,

    /// Source ports a source NAT may use when the client's own port cannot be kept, `MIN-MAX`.
    /// The node's ephemeral range (`net.ipv4.ip_local_port_range`, read at start) is always
    /// left out: the node's own sockets take ports from it at any time.
    #[arg(long, default_value = "1024-65535", value_parser = parse_port_range)]
    pub masquerade_port_range: (u16, u16),
}

impl Default for FlowFlags {
    fn default() -> FlowFlags {
        let d = lb_common::Config::DEFAULT;
        let t = |i: lb_common::TimeoutIndex| std::time::Duration::from_secs(d.timeouts[i as usize] as u64);
        FlowFlags {
            conntrack_tcp_timeout_established: t(lb_common::TimeoutIndex::TcpEstablished),
            conntrack_tcp_timeout_close_wait: t(lb_common::TimeoutIndex::TcpCloseWait),
            conntrack_tcp_timeout_syn_sent: t(lb_common::TimeoutIndex::TcpSynSent),
            conntrack_tcp_timeout_syn_recv: t(lb_common::TimeoutIndex::TcpSynRecv),
            conntrack_udp_timeout: t(lb_common::TimeoutIndex::Udp),
            conntrack_udp_timeout_stream: t(lb_common::TimeoutIndex::UdpStream),
            conntrack_gc_interval: std::time::Duration::from_secs(30),
            masquerade_port_range: (d.snat_port_min, d.snat_port_max),
        }
    }
}

impl FlowFlags {
    /// The datapath configuration these flags give on a node whose ephemeral port range is
    /// `local_ports` (flags, addresses: filled in by the writer).
    pub fn datapath_config(&self, local_ports: (u16, u16)) -> lb_common::Config {
        use lb_common::TimeoutIndex as T;
        let secs = |d: std::time::Duration| d.as_secs().clamp(1, u32::MAX as u64) as u32;
        let mut c = lb_common::Config::DEFAULT;
        c.timeouts[T::TcpEstablished as usize] = secs(self.conntrack_tcp_timeout_established);
        c.timeouts[T::TcpCloseWait as usize] = secs(self.conntrack_tcp_timeout_close_wait);
        c.timeouts[T::TcpSynSent as usize] = secs(self.conntrack_tcp_timeout_syn_sent);
        c.timeouts[T::TcpSynRecv as usize] = secs(self.conntrack_tcp_timeout_syn_recv);
        c.timeouts[T::Udp as usize] = secs(self.conntrack_udp_timeout);
        c.timeouts[T::UdpStream as usize] = secs(self.conntrack_udp_timeout_stream);
        (c.snat_port_min, c.snat_port_max) = self.masquerade_port_range;
        (c.local_port_min, c.local_port_max) = local_ports;
        c
    }
}

/// `MIN-MAX` (inclusive, 1–65535, MIN ≤ MAX).
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s.split_once('-').ok_or_else(|| anyhow::anyhow!("{s:?}: expected MIN-MAX"))?;
    let a: u16 = a.trim().parse().map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    if a == 0 || a > b {
        bail!("{s:?}: expected 1 <= MIN <= MAX <= 65535");
    }
    Ok((a, b))
}

/// This network namespace's ephemeral port range (`net.ipv4.ip_local_port_range`); Linux's
/// default if it cannot be read.
pub fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((lb_common::Config::DEFAULT.local_port_min, lb_common::Config::DEFAULT.local_port_max))
}

/// What `--nodeport-addresses` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    Primary,
    Cidrs(Vec<Ipv4Net>),
}

impl ProxyFlags {
    /// The node name: the override, else this machine's host name.
    pub fn node_name(&self) -> String {
        self.hostname_override.clone().unwrap_or_else(crate::trace::default_node_name)
    }

    /// `--nodeport-addresses`, parsed (IPv6 CIDRs are another family's business: skipped).
    /// A list without an IPv4 CIDR means every IPv4 address, as kube-proxy's
    /// `NewNodePortAddresses` ("if there are no CIDRs of the given family, 0.0.0.0/0 is added").
    pub fn nodeport_addresses(&self) -> Result<NodePortAddresses> {
        let items: Vec<&str> = self.nodeport_addresses.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
        if items.is_empty() || items == ["primary"] {
            return Ok(NodePortAddresses::Primary);
        }
        let mut cidrs = Vec::new();
        for item in items {
            if item == "primary" {
                bail!("--nodeport-addresses: `primary` cannot be combined with CIDRs");
            }
            match item.parse::<ipnet::IpNet>() {
                Ok(ipnet::IpNet::V4(n)) => cidrs.push(n),
                Ok(ipnet::IpNet::V6(_)) => {}
                Err(_) => bail!("--nodeport-addresses: {item:?} is neither a CIDR nor `primary`"),
            }
        }
        if cidrs.is_empty() {
            cidrs.push(Ipv4Net::default()); // 0.0.0.0/0
        }
        Ok(NodePortAddresses::Cidrs(cidrs))
    }

    /// This node's network facts from the flags, the Node object's primary address and the
    /// addresses of the node's interfaces (pure; the agent reads the interfaces, the trace
    /// uses `--node-ip`).
    pub fn node_net(&self, node_object_ip: Option<Ipv4Addr>, interface_ips: &[Ipv4Addr]) -> Result<NodeNet> {
        let primary = self
            .node_ip
            .first()
            .copied()
            .or(node_object_ip)
            .or_else(|| interface_ips.iter().copied().find(|ip| !ip.is_loopback()));
        let mut local_ips: Vec<Ipv4Addr> = self.node_ip.iter().chain(primary.iter()).chain(interface_ips).copied().collect();
        local_ips.sort();
        local_ips.dedup();
        let nodeport_ips = match self.nodeport_addresses()? {
            NodePortAddresses::Primary => primary.into_iter().filter(|ip| !ip.is_loopback()).collect(),
            NodePortAddresses::Cidrs(cidrs) => {
                local_ips.iter().copied().filter(|ip| !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip))).collect()
            }
        };
        Ok(NodeNet {
            nodeport_ips,
            local_ips,
            cluster_cidrs: self.cluster_cidr.iter().map(|n| n.trunc()).collect(),
            masquerade_all: self.masquerade_all,
            snat_ip: primary,
        })
    }
}

/// The IPv4 addresses of this network namespace's interfaces.
pub fn interface_ips() -> Vec<Ipv4Addr> {
    if_addrs::get_if_addrs()
        .map(|list| {
            list.into_iter()
                .filter_map(|i| match i.ip() {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The InternalIP (else the first IPv4 address) of a Node object.
pub fn node_object_ip(node: &k8s_openapi::api::core::v1::Node) -> Option<Ipv4Addr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    let v4 = |t: Option<&str>| {
        addrs.iter().filter(|a| t.is_none_or(|t| a.type_ == t)).find_map(|a| a.address.parse::<Ipv4Addr>().ok())
    };
    v4(Some("InternalIP")).or_else(|| v4(None))
}

#[cfg(test)]
mod flow_flag_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flow: FlowFlags,
    }

    #[test]
    fn defaults_are_kube_proxys_and_netfilters() {
        let cli = Cli::parse_from(["x"]);
        let c = cli.flow.datapath_config((32_768, 60_999));
        assert_eq!(c.timeouts, lb_common::Config::DEFAULT.timeouts);
        assert_eq!((c.snat_port_min, c.snat_port_max, c.local_port_min, c.local_port_max), (1024, 65_535, 32_768, 60_999));
        assert_eq!(FlowFlags::default().datapath_config((32_768, 60_999)), c);
    }

    #[test]
    fn flags_set_their_timeouts_and_the_range() {
        use lb_common::TimeoutIndex as T;
        let cli = Cli::parse_from([
            "x",
            "--conntrack-tcp-timeout-established=2h",
            "--conntrack-tcp-timeout-close-wait=30s",
            "--conntrack-udp-timeout=5s",
            "--conntrack-tcp-timeout-syn-sent=7s",
            "--conntrack-tcp-timeout-syn-recv=8s",
            "--conntrack-udp-timeout-stream=1m",
            "--masquerade-port-range=20000-29999",
        ]);
        let c = cli.flow.datapath_config((40_000, 50_000));
        assert_eq!(c.timeouts[T::TcpEstablished as usize], 7200);
        assert_eq!(c.timeouts[T::TcpCloseWait as usize], 30);
        assert_eq!(c.timeouts[T::Udp as usize], 5);
        assert_eq!(c.timeouts[T::TcpSynSent as usize], 7);
        assert_eq!(c.timeouts[T::TcpSynRecv as usize], 8);
        assert_eq!(c.timeouts[T::UdpStream as usize], 60);
        assert_eq!(c.timeouts[T::TcpTimeWait as usize], 120, "netfilter's, not a flag");
        assert_eq!((c.snat_port_min, c.snat_port_max, c.local_port_min, c.local_port_max), (20_000, 29_999, 40_000, 50_000));
        for bad in ["", "5", "0-10", "10-5", "1-70000", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?}");
        }
        let (lo, hi) = local_port_range();
        assert!(lo <= hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(nodeport: &[&str], node_ip: &[&str]) -> ProxyFlags {
        ProxyFlags {
            nodeport_addresses: nodeport.iter().map(|s| s.to_string()).collect(),
            node_ip: node_ip.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        }
    }
    fn ips(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// kube-proxy's TestNodePorts variants (D3): primary by default, CIDRs select interface
    /// addresses, loopback never.
    #[test]
    fn nodeport_addresses_resolve_like_kube_proxys_nftables_mode() {
        let ifs = ips(&["127.0.0.1", "192.168.0.2", "192.168.1.2", "10.0.0.1"]);
        // (--nodeport-addresses, --node-ip, the Node object's address, expected NodePort IPs)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a str>, &'a [&'a str]);
        let cases: [Case; 8] = [
            (&[], &[], Some("192.168.0.2"), &["192.168.0.2"]),
            (&["primary"], &["192.168.1.2"], Some("192.168.0.2"), &["192.168.1.2"]),
            (&["192.168.0.0/24"], &[], None, &["192.168.0.2"]),
            (&["192.168.0.0/16"], &[], None, &["192.168.0.2", "192.168.1.2"]),
            (&["127.0.0.0/8", "192.168.1.0/24"], &[], None, &["192.168.1.2"]),
            (&["0.0.0.0/0", "2001:db8::/64"], &[], None, &["10.0.0.1", "192.168.0.2", "192.168.1.2"]),
            // No IPv4 CIDR at all: every IPv4 address (kube-proxy adds 0.0.0.0/0), loopback never.
            (&["2001:db8::/64"], &[], Some("192.168.0.2"), &["10.0.0.1", "192.168.0.2", "192.168.1.2"]),
            (&["2001:db8::/64", "fd00::/8"], &["192.168.1.2"], None, &["10.0.0.1", "192.168.0.2", "192.168.1.2"]),
        ];
        for (np, node_ip, object_ip, want) in cases {
            let net = flags(np, node_ip).node_net(object_ip.map(|s| s.parse().unwrap()), &ifs).unwrap();
            assert_eq!(net.nodeport_ips, ips(want), "{np:?} {node_ip:?}");
        }
    }

    #[test]
    fn primary_is_the_flag_then_the_node_object_then_an_interface() {
        let ifs = ips(&["127.0.0.1", "10.1.1.1"]);
        assert_eq!(
            flags(&[], &["192.168.9.9"]).node_net(Some("192.168.0.2".parse().unwrap()), &ifs).unwrap().snat_ip,
            Some("192.168.9.9".parse().unwrap())
        );
        assert_eq!(
            flags(&[], &[]).node_net(Some("192.168.0.2".parse().unwrap()), &ifs).unwrap().snat_ip,
            Some("192.168.0.2".parse().unwrap())
        );
        let net = flags(&[], &[]).node_net(None, &ifs).unwrap();
        assert_eq!(net.snat_ip, Some("10.1.1.1".parse().unwrap()));
        assert_eq!(net.local_ips, ips(&["10.1.1.1", "127.0.0.1"]));
    }

    #[test]
    fn only_ipv6_nodeport_addresses_match_every_ipv4_address() {
        assert_eq!(
            flags(&["2001:db8::/64"], &[]).nodeport_addresses().unwrap(),
            NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()])
        );
    }

    #[test]
    fn bad_nodeport_addresses_are_errors() {
        assert!(flags(&["primary", "10.0.0.0/8"], &[]).nodeport_addresses().is_err());
        assert!(flags(&["eth0"], &[]).nodeport_addresses().is_err());
    }
}
