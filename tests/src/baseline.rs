//! The baselines the benchmark compares the eBPF datapath against: the rule sets kube-proxy
//! writes in its `iptables` and `nftables` modes, with kube-proxy's structure, rule text, comments
//! and chain-name hashing (after `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go`), for ClusterIP services with `Cluster` traffic policy and no
//! session affinity, and loaders that put them into a network namespace and time the load.
//!
//! kube-proxy settings reproduced: masquerade bit 14 (mark 0x4000), `--random-fully` available,
//! `detectLocalMode: ClusterCIDR` with cluster CIDR [`CLUSTER_CIDR`] (hence the
//! `! -s CLUSTER_CIDR -j KUBE-MARK-MASQ` rule heading each KUBE-SVC chain / the
//! `ip saddr != CLUSTER_CIDR jump mark-for-masquerade` rule heading each service chain),
//! `nodePortAddresses` unset (the `KUBE-NODEPORTS` tail rule / `fib daddr type local` rule),
//! localhost node ports (kubelet's `KUBE-FIREWALL`), `nf_conntrack_tcp_be_liberal` = 0 (the
//! INVALID drop in `KUBE-FORWARD`) and, for nftables, the ServiceCIDR [`SERVICE_CIDR`].
//! Like kube-proxy, the iptables rule set drops the per-endpoint comments beyond
//! [`LARGE_CLUSTER_ENDPOINTS_THRESHOLD`] endpoints ("large cluster mode").
//!
//! Deviations, all without effect on what the kernel evaluates per packet: the jump rules from
//! the built-in chains (which kube-proxy installs with separate `iptables -I` calls before its
//! `iptables-restore --noflush`) are `-I` lines of the restore input; the nft script creates
//! each chain once instead of kube-proxy's add+flush per chain, and adds map/set elements in
//! bulk (`add element ... { a, b, ... }`) instead of one `add element` per element.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// One ClusterIP service with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaselineService {
    /// kube-proxy's ServicePortName string: `ns/name:port` (`ns/name` for an unnamed port).
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// `"tcp"` or `"udp"`.
    pub protocol: &'static str,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// kube-proxy's default masquerade mark (`--iptables-masquerade-bit=14`).
pub const MASQUERADE_MARK: &str = "0x4000";
/// The cluster (pod) CIDR of the local-traffic detector; the synthetic endpoints are in it.
pub const CLUSTER_CIDR: &str = "10.128.0.0/10";
/// The ServiceCIDR (nftables mode drops traffic to unallocated ClusterIPs in it).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-proxy's `largeClusterEndpointsThreshold`: above it the iptables mode omits the
/// comments of the KUBE-SVC → KUBE-SEP and KUBE-SEP rules.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;
/// The nftables table kube-proxy owns (family `ip`).
pub const NFT_TABLE: &str = "kube-proxy";

// ---------------------------------------------------------------------------------------------
// Chain names
// ---------------------------------------------------------------------------------------------

/// kube-proxy's `portProtoHash`: the first 16 characters of base32(sha256(name + protocol)).
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    base32_std(&sha256(format!("{service_port_name}{protocol}").as_bytes()))[..16].to_string()
}

/// kube-proxy's `servicePortPolicyClusterChain`: `KUBE-SVC-<portProtoHash>`.
pub fn service_chain_name(service_port_name: &str, protocol: &str) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(service_port_name, protocol))
}

/// kube-proxy's `servicePortEndpointChainName`: `KUBE-SEP-` + 16 characters of
/// base32(sha256(name + protocol + "ip:port")).
pub fn endpoint_chain_name(service_port_name: &str, protocol: &str, endpoint: &str) -> String {
    let hash = base32_std(&sha256(format!("{service_port_name}{protocol}{endpoint}").as_bytes()));
    format!("KUBE-SEP-{}", &hash[..16])
}

/// knftables' name length limit minus kube-proxy's longest chain-name prefix.
const NFT_CHAIN_NAME_BASE_MAX: usize = 256 - 16;

/// kube-proxy nftables' `hashAndTruncate`: 8 characters of base32(sha256(name)), `-`, name.
pub fn nft_hash_and_truncate(name: &str) -> String {
    let hash = base32_std(&sha256(name.as_bytes()));
    let mut out = format!("{}-{name}", &hash[..8]);
    if out.len() > NFT_CHAIN_NAME_BASE_MAX {
        out.truncate(NFT_CHAIN_NAME_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// Splits `ns/name:port` into namespace, name and port name (empty for an unnamed port).
fn split_service_port_name(name: &str) -> (&str, &str, &str) {
    let (ns, rest) = name.split_once('/').unwrap_or(("", name));
    let (svc, port) = rest.split_once(':').unwrap_or((rest, ""));
    (ns, svc, port)
}

/// kube-proxy nftables' cluster-policy chain: `service-<HASH8>-ns/name/proto/port`.
pub fn nft_service_chain_name(service_port_name: &str, protocol: &str) -> String {
    let (ns, svc, port) = split_service_port_name(service_port_name);
    format!("service-{}", nft_hash_and_truncate(&format!("{ns}/{svc}/{protocol}/{port}")))
}

/// kube-proxy nftables' endpoint chain: `endpoint-<HASH8>-ns/name/proto/port__ip/port`.
pub fn nft_endpoint_chain_name(service_port_name: &str, protocol: &str, ip: Ipv4Addr, port: u16) -> String {
    let (ns, svc, port_name) = split_service_port_name(service_port_name);
    format!("endpoint-{}", nft_hash_and_truncate(&format!("{ns}/{svc}/{protocol}/{port_name}__{ip}/{port}")))
}

/// kube-proxy's `computeProbability`: `1/n` printed with `%0.10f`.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// How `iptables-save` prints a `--probability` value loaded from `p`: libxt_statistic stores
/// `lround(p * 2^31)` and prints it back divided by 2^31 with `%.11f` (so kube-proxy's
/// `0.3333333333` reads back as `0.33333333349`).
pub fn probability_as_saved(p: &str) -> String {
    let p: f64 = p.parse().expect("probability");
    let stored = (p * 2147483648.0).round() as u32;
    format!("{:.11}", stored as f64 / 2147483648.0)
}

// ---------------------------------------------------------------------------------------------
// iptables
// ---------------------------------------------------------------------------------------------

/// The services in KUBE-SERVICES order: the others in their order, `target_index` last or first.
fn service_order(len: usize, target_index: usize, target_last: bool) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    assert!(target_index < len, "target_index {target_index} out of range for {len} services");
    let others = (0..len).filter(|&i| i != target_index);
    if target_last {
        others.chain([target_index]).collect()
    } else {
        [target_index].into_iter().chain(others).collect()
    }
}

fn chain_line(out: &mut String, chain: &str) {
    let _ = writeln!(out, ":{chain} - [0:0]");
}

/// `(table, built-in chain, kube-proxy chain, comment, extra match)` in kube-proxy's
/// `iptablesJumpChains` order followed by kubelet's `KUBE-FIREWALL` jumps; each is prepended.
const IPTABLES_JUMPS: &[(&str, &str, &str, &str, &str)] = &[
    ("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    (
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    ("filter", "INPUT", "KUBE-NODEPORTS", "kubernetes health check service ports", ""),
    ("filter", "FORWARD", "KUBE-SERVICES", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules", ""),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", ""),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals", ""),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules", ""),
    ("filter", "INPUT", "KUBE-FIREWALL", "", ""),
    ("filter", "OUTPUT", "KUBE-FIREWALL", "", ""),
];

fn jump_rules(out: &mut String, table: &str) {
    for &(t, from, to, comment, extra) in IPTABLES_JUMPS {
        if t != table {
            continue;
        }
        let _ = write!(out, "-I {from}");
        if !extra.is_empty() {
            let _ = write!(out, " {extra}");
        }
        if !comment.is_empty() {
            let _ = write!(out, " -m comment --comment \"{comment}\"");
        }
        let _ = writeln!(out, " -j {to}");
    }
}

/// iptables-restore input (tables `filter` and `nat`) in kube-proxy's iptables-mode structure,
/// for `iptables-restore --noflush`: KUBE-SERVICES (jumped to from PREROUTING and OUTPUT) with
/// one rule per service, `target_index` last (kube-proxy's worst case) when `target_last`, else
/// first, then the KUBE-NODEPORTS tail rule; per service a KUBE-SVC chain (masquerade of
/// off-cluster sources, one `statistic` rule per endpoint, the last unconditional) and per
/// endpoint a KUBE-SEP chain (hairpin masquerade, DNAT); KUBE-MARK-MASQ, KUBE-POSTROUTING; in
/// `filter` the REJECT of services without endpoints, KUBE-FORWARD and kubelet's KUBE-FIREWALL.
pub fn iptables_restore_input(services: &[BaselineService], target_index: usize, target_last: bool) -> String {
    let total_endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
    let large_cluster = total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    let mark = MASQUERADE_MARK;

    let (mut filter_chains, mut filter_rules) = (String::new(), String::new());
    let (mut nat_chains, mut nat_rules) = (String::new(), String::new());
    for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
        chain_line(&mut filter_chains, chain);
    }
    for chain in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        chain_line(&mut nat_chains, chain);
    }
    let _ = writeln!(nat_rules, "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN");
    let _ = writeln!(nat_rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {mark}");
    let _ = writeln!(
        nat_rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(nat_rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {mark}");
    chain_line(&mut filter_chains, "KUBE-FIREWALL");
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 \
         -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    );

    for i in service_order(services.len(), target_index, target_last) {
        let svc = &services[i];
        let (name, proto, vip, port) = (&svc.name, svc.protocol, svc.cluster_ip, svc.port);
        if svc.endpoints.is_empty() {
            let _ = writeln!(
                filter_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {vip} --dport {port} -j REJECT"
            );
            continue;
        }
        let svc_chain = service_chain_name(name, proto);
        let _ = writeln!(
            nat_rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {vip} --dport {port} -j {svc_chain}"
        );
        chain_line(&mut nat_chains, &svc_chain);
        let _ = writeln!(
            nat_rules,
            "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {vip} --dport {port} \
             ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        let n = svc.endpoints.len();
        let endpoints: Vec<(String, String, Ipv4Addr)> = svc
            .endpoints
            .iter()
            .map(|&(ip, p)| {
                let ep = format!("{ip}:{p}");
                (endpoint_chain_name(name, proto, &ep), ep, ip)
            })
            .collect();
        for (j, (sep, ep, _)) in endpoints.iter().enumerate() {
            let _ = write!(nat_rules, "-A {svc_chain}");
            if !large_cluster {
                let _ = write!(nat_rules, " -m comment --comment \"{name} -> {ep}\"");
            }
            if j < n - 1 {
                let _ = write!(nat_rules, " -m statistic --mode random --probability {}", probability(n - j));
            }
            let _ = writeln!(nat_rules, " -j {sep}");
        }
        for (sep, ep, ip) in &endpoints {
            chain_line(&mut nat_chains, sep);
            let comment = if large_cluster { String::new() } else { format!(" -m comment --comment {name}") };
            let _ = writeln!(nat_rules, "-A {sep}{comment} -s {ip} -j KUBE-MARK-MASQ");
            let _ = writeln!(nat_rules, "-A {sep}{comment} -m {proto} -p {proto} -j DNAT --to-destination {ep}");
        }
    }

    let _ = writeln!(
        nat_rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" \
         -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    let _ = writeln!(filter_rules, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    );
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    jump_rules(&mut filter_rules, "filter");
    jump_rules(&mut nat_rules, "nat");

    let mut out = String::with_capacity(filter_chains.len() + filter_rules.len() + nat_chains.len() + nat_rules.len() + 32);
    out.push_str("*filter\n");
    out.push_str(&filter_chains);
    out.push_str(&filter_rules);
    out.push_str("COMMIT\n*nat\n");
    out.push_str(&nat_chains);
    out.push_str(&nat_rules);
    out.push_str("COMMIT\n");
    out
}

// ---------------------------------------------------------------------------------------------
// nftables
// ---------------------------------------------------------------------------------------------

/// Elements per `add element` statement.
const NFT_ELEMENTS_PER_STATEMENT: usize = 4096;

/// kube-proxy's base chains: name, type, hook, priority. kube-proxy declares the priorities
/// as `dstnat-10`, `dstnat+10`, `dstnat`, `srcnat`; knftables writes them as numbers (dstnat =
/// -100, srcnat = 100) because nft before 1.0.7 refuses named priorities in some hooks.
const NFT_BASE_CHAINS: &[(&str, &str, &str, i32)] = &[
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// kube-proxy's `nftablesJumpChains`: destination chain, base chain, extra match.
const NFT_JUMP_CHAINS: &[(&str, &str, &str)] = &[
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
];

fn nft_elements(out: &mut String, container: &str, elements: &[String]) {
    for chunk in elements.chunks(NFT_ELEMENTS_PER_STATEMENT) {
        let _ = writeln!(out, "add element ip {NFT_TABLE} {container} {{ {} }}", chunk.join(", "));
    }
}

/// The `nft -f` script of kube-proxy's nftables mode (table `ip kube-proxy`): the base chains
/// (nat-prerouting/nat-output hooked at dstnat = -100, ...), `services` dispatching through the
/// `service-ips` verdict map, per service a `service-<hash>-ns/name/proto/port` chain
/// (masquerade of off-cluster sources, `numgen random mod N vmap { 0 : goto endpoint-..., ... }`),
/// per endpoint an `endpoint-...` chain (hairpin masquerade, DNAT), mark-for-masquerade,
/// masquerading, and the no-endpoints / cluster-IP / firewall checks. Map and set elements are
/// added in bulk.
pub fn nft_script(services: &[BaselineService]) -> String {
    let t = NFT_TABLE;
    let mark = MASQUERADE_MARK;
    let mut out = String::new();
    let _ = writeln!(out, "add table ip {t} {{ comment \"rules for kube-proxy\" ; }}");
    for &(name, kind, hook, prio) in NFT_BASE_CHAINS {
        let _ = writeln!(out, "add chain ip {t} {name} {{ type {kind} hook {hook} priority {prio} ; }}");
    }
    let mut created: Vec<&str> = Vec::new();
    for &(dst, src, extra) in NFT_JUMP_CHAINS {
        if !created.contains(&dst) {
            created.push(dst);
            let _ = writeln!(out, "add chain ip {t} {dst}");
        }
        let sep = if extra.is_empty() { "" } else { " " };
        let _ = writeln!(out, "add rule ip {t} {src} {extra}{sep}jump {dst}");
    }
    let _ = writeln!(out, "add chain ip {t} mark-for-masquerade");
    let _ = writeln!(out, "add rule ip {t} mark-for-masquerade mark set mark or {mark}");
    let _ = writeln!(out, "add rule ip {t} masquerading mark and {mark} == 0 return");
    let _ = writeln!(out, "add rule ip {t} masquerading mark set mark xor {mark}");
    let _ = writeln!(out, "add rule ip {t} masquerading masquerade fully-random");
    let _ = writeln!(out, "add set ip {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}");
    let _ = writeln!(
        out,
        "add rule ip {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    let _ = writeln!(
        out,
        "add rule ip {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
    );
    let concat_map = "type ipv4_addr . inet_proto . inet_service : verdict";
    let _ = writeln!(
        out,
        "add map ip {t} no-endpoint-services {{ {concat_map} ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map ip {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    );
    let _ = writeln!(
        out,
        "add chain ip {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    let _ = writeln!(out, "add rule ip {t} reject-chain reject");
    let _ =
        writeln!(out, "add rule ip {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services");
    let _ = writeln!(
        out,
        "add rule ip {t} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    );
    let _ = writeln!(
        out,
        "add map ip {t} firewall-ips {{ {concat_map} ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    );
    let _ = writeln!(out, "add rule ip {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips");
    let _ = writeln!(
        out,
        "add map ip {t} service-ips {{ {concat_map} ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    let _ = writeln!(out, "add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips");
    let _ = writeln!(
        out,
        "add rule ip {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );

    let mut cluster_ips: Vec<Ipv4Addr> = Vec::with_capacity(services.len());
    let mut seen = std::collections::HashSet::with_capacity(services.len());
    let mut service_ips = Vec::with_capacity(services.len());
    let mut no_endpoints = Vec::new();
    for svc in services {
        let (name, proto, vip, port) = (&svc.name, svc.protocol, svc.cluster_ip, svc.port);
        if seen.insert(vip) {
            cluster_ips.push(vip);
        }
        if svc.endpoints.is_empty() {
            no_endpoints.push(format!("{vip} . {proto} . {port} comment \"{name}\" : goto reject-chain"));
            continue;
        }
        let svc_chain = nft_service_chain_name(name, proto);
        let ep_chains: Vec<String> = svc.endpoints.iter().map(|&(ip, p)| nft_endpoint_chain_name(name, proto, ip, p)).collect();
        for c in &ep_chains {
            let _ = writeln!(out, "add chain ip {t} {c}");
        }
        let _ = writeln!(out, "add chain ip {t} {svc_chain}");
        service_ips.push(format!("{vip} . {proto} . {port} : goto {svc_chain}"));
        let _ = writeln!(
            out,
            "add rule ip {t} {svc_chain} ip daddr {vip} {proto} dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let vmap: Vec<String> = ep_chains.iter().enumerate().map(|(i, c)| format!("{i} : goto {c}")).collect();
        let _ =
            writeln!(out, "add rule ip {t} {svc_chain} numgen random mod {} vmap {{ {} }}", ep_chains.len(), vmap.join(" , "));
        for (c, &(ip, p)) in ep_chains.iter().zip(&svc.endpoints) {
            let _ = writeln!(out, "add rule ip {t} {c} ip saddr {ip} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule ip {t} {c} meta l4proto {proto} dnat to {ip}:{p}");
        }
    }
    let cluster_ips: Vec<String> = cluster_ips.iter().map(|ip| ip.to_string()).collect();
    nft_elements(&mut out, "cluster-ips", &cluster_ips);
    nft_elements(&mut out, "service-ips", &service_ips);
    nft_elements(&mut out, "no-endpoint-services", &no_endpoints);
    out
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Where a rule set is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft-restore` (Debian's default `iptables-restore`).
    IptablesNft,
    /// `iptables-legacy-restore`.
    IptablesLegacy,
    /// `nft -f -`.
    Nftables,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::IptablesNft, Backend::IptablesLegacy, Backend::Nftables];

    fn restore_tool(self) -> (&'static str, &'static str) {
        match self {
            Backend::IptablesNft => ("iptables-nft-restore", "iptables"),
            Backend::IptablesLegacy => ("iptables-legacy-restore", "iptables"),
            Backend::Nftables => ("nft", "nftables"),
        }
    }

    fn save_tool(self) -> (&'static str, &'static str) {
        match self {
            Backend::IptablesNft => ("iptables-nft-save", "iptables"),
            Backend::IptablesLegacy => ("iptables-legacy-save", "iptables"),
            Backend::Nftables => ("nft", "nftables"),
        }
    }

    /// The rule set for this backend: [`iptables_restore_input`] or [`nft_script`].
    pub fn rules(self, services: &[BaselineService], target_index: usize, target_last: bool) -> String {
        match self {
            Backend::Nftables => nft_script(services),
            _ => iptables_restore_input(services, target_index, target_last),
        }
    }
}

/// Finds `name` on PATH (and in the sbin directories, which a non-login PATH may lack).
fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` not found: install the Debian package `{package}` (`apt-get install -y {package}`; `cargo xtask setup` installs it)"
    )
}

/// Runs `tool args` in `netns` (`ip netns exec`), feeding `stdin`; returns stdout.
fn run_in_netns(netns: &str, tool: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(tool)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning ip netns exec {netns} {}", tool.display()))?;
    let output = std::thread::scope(|s| {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            s.spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .with_context(|| format!("waiting for {}", tool.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut msg =
            format!("ip netns exec {netns} {} {}: {}: {}", tool.display(), args.join(" "), output.status, stderr.trim());
        // iptables-restore names the failing line by number: show it.
        if let (Some(input), Some(n)) = (stdin, line_number_in(&stderr)) {
            if let Some(line) = input.lines().nth(n.saturating_sub(1)) {
                let _ = write!(msg, "\nline {n}: {line}");
            }
        }
        bail!(msg);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn line_number_in(stderr: &str) -> Option<usize> {
    let rest = &stderr[stderr.find("line ")? + 5..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Loads `rules` into the network namespace `netns` with `backend` after flushing what an
/// earlier load left there (not timed); returns the wall-clock time of the load command
/// (`ip netns exec NS iptables-nft-restore --noflush --counters` / `iptables-legacy-restore
/// --noflush --counters` / `nft -f -`, like kube-proxy's restore).
pub fn load(netns: &str, backend: Backend, rules: &str) -> Result<Duration> {
    let (name, package) = backend.restore_tool();
    let tool = find_tool(name, package)?;
    flush(netns, backend).with_context(|| format!("flushing {backend:?} in {netns} before the load"))?;
    let args: &[&str] = match backend {
        Backend::Nftables => &["-f", "-"],
        _ => &["--noflush", "--counters"],
    };
    let start = Instant::now();
    run_in_netns(netns, &tool, args, Some(rules)).with_context(|| format!("loading the {backend:?} baseline into {netns}"))?;
    Ok(start.elapsed())
}

/// Removes what [`load`] put into `netns` for `backend`: for iptables every `KUBE-*` chain of
/// tables `nat` and `filter` and the rules of other chains jumping to them (kube-proxy's
/// `CleanupLeftovers`, in one `--noflush` restore per table), for nftables `table ip kube-proxy`.
pub fn flush(netns: &str, backend: Backend) -> Result<()> {
    let (name, package) = backend.restore_tool();
    let restore = find_tool(name, package)?;
    if backend == Backend::Nftables {
        let script = format!("add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
        run_in_netns(netns, &restore, &["-f", "-"], Some(&script))?;
        return Ok(());
    }
    let (save_name, save_package) = backend.save_tool();
    let save = find_tool(save_name, save_package)?;
    for table in ["nat", "filter"] {
        let saved = run_in_netns(netns, &save, &["-t", table], None)?;
        let input = cleanup_input(table, &saved);
        if let Some(input) = input {
            run_in_netns(netns, &restore, &["--noflush"], Some(&input))
                .with_context(|| format!("removing the KUBE-* chains of table {table}"))?;
        }
    }
    Ok(())
}

/// The restore input removing the `KUBE-*` chains (and jumps to them) of one table as saved by
/// iptables-save; `None` when there are none.
fn cleanup_input(table: &str, saved: &str) -> Option<String> {
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    for line in saved.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or("");
            if chain.starts_with("KUBE-") {
                chains.push(chain.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            if !chain.starts_with("KUBE-") && rule.contains(" -j KUBE-") {
                jumps.push(format!("-D {rule}"));
            }
        }
    }
    if chains.is_empty() && jumps.is_empty() {
        return None;
    }
    let mut out = format!("*{table}\n");
    for c in &chains {
        chain_line(&mut out, c);
    }
    for j in &jumps {
        let _ = writeln!(out, "{j}");
    }
    for c in &chains {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// What `backend` holds in `netns`: `iptables-{nft,legacy}-save` (all tables) or
/// `nft list ruleset`.
pub fn dump(netns: &str, backend: Backend) -> Result<String> {
    let (name, package) = backend.save_tool();
    let tool = find_tool(name, package)?;
    match backend {
        Backend::Nftables => run_in_netns(netns, &tool, &["list", "ruleset"], None),
        _ => run_in_netns(netns, &tool, &[], None),
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic service sets
// ---------------------------------------------------------------------------------------------

/// `n` TCP services `bench/svc-<i>:http` on port 80, ClusterIPs 10.96.0.1, 10.96.0.2, ... (in
/// 10.96.0.0/12), each with `e` endpoints on port 8080 numbered consecutively from 10.128.0.1
/// (in 10.128.0.0/10). Deterministic.
pub fn synthetic(n: usize, e: usize) -> Vec<BaselineService> {
    assert!(n < (1 << 20) - 1, "{n} services do not fit 10.96.0.0/12");
    assert!(n * e < (1 << 22) - 1, "{} endpoints do not fit 10.128.0.0/10", n * e);
    let vip_base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    let ep_base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    (0..n)
        .map(|i| BaselineService {
            name: format!("bench/svc-{i}:http"),
            cluster_ip: Ipv4Addr::from(vip_base + 1 + i as u32),
            port: 80,
            protocol: "tcp",
            endpoints: (0..e).map(|j| (Ipv4Addr::from(ep_base + 1 + (i * e + j) as u32), 8080)).collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// SHA-256 and base32 (RFC 4648, standard alphabet, padded), as Go's crypto/sha256 and
// base32.StdEncoding.
// ---------------------------------------------------------------------------------------------

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
    0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
    0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
    0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(SHA256_K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn base32_std(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &byte in data {
        buf = (buf << 8) | byte as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
        buf &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    while !out.len().is_multiple_of(8) {
        out.push('=');
    }
    out
}

/// A scratch network namespace (replacing a leftover of the same name), deleted on drop.
pub struct ScratchNetns(String);

impl ScratchNetns {
    pub fn create(name: &str) -> Result<ScratchNetns> {
        let _ = crate::netns::ip(&["netns", "del", name]);
        crate::netns::ip(&["netns", "add", name]).map_err(|e| anyhow!("creating netns {name}: {e:#}"))?;
        Ok(ScratchNetns(name.to_string()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = crate::netns::ip(&["netns", "del", &self.0]);
    }
}

/// Loads [`synthetic`]`(services, endpoints)` into `netns` with every backend in turn (target
/// last), flushing after each, and returns each backend's load time.
pub fn measure_load_times(netns: &str, services: usize, endpoints: usize) -> Result<Vec<(Backend, Duration)>> {
    let set = synthetic(services, endpoints);
    let mut out = Vec::new();
    for backend in Backend::ALL {
        let rules = backend.rules(&set, set.len().saturating_sub(1), true);
        let took = load(netns, backend, &rules)?;
        flush(netns, backend)?;
        out.push((backend, took));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn small() -> Vec<BaselineService> {
        synthetic(3, 3)
    }

    /// The lines of one table (`*filter` / `*nat`) of a restore input.
    fn table<'a>(input: &'a str, name: &str) -> Vec<&'a str> {
        let start = format!("*{name}");
        input.lines().skip_while(|l| *l != start).skip(1).take_while(|l| *l != "COMMIT").collect()
    }

    fn rules_of<'a>(lines: &[&'a str], chain: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain} ");
        lines.iter().copied().filter(|l| l.starts_with(&prefix)).collect()
    }

    fn declared<'a>(lines: &[&'a str], prefix: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split_whitespace().next().unwrap())
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    #[test]
    fn sha256_and_base32_match_the_standard_vectors() {
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(hex(sha256(&[b'a'; 1000])), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
        // RFC 4648 section 10.
        for (input, want) in
            [("", ""), ("f", "MY======"), ("fo", "MZXQ===="), ("foo", "MZXW6==="), ("foob", "MZXW6YQ="), ("fooba", "MZXW6YTB")]
        {
            assert_eq!(base32_std(input.as_bytes()), want);
        }
        assert_eq!(base32_std(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn chain_names_match_kube_proxy_test_vectors() {
        // pkg/proxy/iptables/proxier_test.go: ns1/svc1:p80 (tcp) with endpoint 10.180.0.1:80.
        assert_eq!(service_chain_name("ns1/svc1:p80", "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        // pkg/proxy/nftables/proxier.go (servicePort{,Endpoint}ChainNameBase doc comments).
        assert_eq!(nft_service_chain_name("ns1/svc1:p80", "tcp"), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_endpoint_chain_name("ns1/svc1:p80", "tcp", Ipv4Addr::new(10, 180, 0, 1), 80),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        // Unnamed port: ServicePortName.String() is "ns/name".
        assert!(nft_service_chain_name("ns1/svc1", "udp").ends_with("-ns1/svc1/udp/"));
        assert!(nft_hash_and_truncate(&"x".repeat(300)).len() == NFT_CHAIN_NAME_BASE_MAX);
    }

    #[test]
    fn probabilities_are_kube_proxys_and_read_back_as_iptables_save_prints_them() {
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(10), "0.1000000000");
        assert_eq!(probability_as_saved(&probability(3)), "0.33333333349");
        assert_eq!(probability_as_saved(&probability(2)), "0.50000000000");
    }

    #[test]
    fn synthetic_is_deterministic_and_in_range() {
        let a = synthetic(5, 4);
        assert_eq!(a, synthetic(5, 4));
        assert_eq!(a[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(a[4].endpoints[3], (Ipv4Addr::new(10, 128, 0, 20), 8080));
        assert_eq!(a[2].name, "bench/svc-2:http");
        let big = synthetic(10_000, 10);
        assert_eq!(big.last().unwrap().cluster_ip, Ipv4Addr::new(10, 96, 39, 16));
        assert_eq!(big.last().unwrap().endpoints.last().unwrap().0, Ipv4Addr::new(10, 129, 134, 160));
    }

    #[test]
    fn iptables_structure_for_three_services_of_three_endpoints() {
        let services = small();
        let input = iptables_restore_input(&services, 1, true);
        let nat = table(&input, "nat");
        let filter = table(&input, "filter");
        assert!(input.starts_with("*filter\n") && input.ends_with("COMMIT\n"), "{input}");

        // Chains: the fixed ones, one KUBE-SVC per service, one KUBE-SEP per endpoint.
        assert_eq!(declared(&nat, "KUBE-SVC-").len(), 3);
        assert_eq!(declared(&nat, "KUBE-SEP-").len(), 9);
        for fixed in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
            assert_eq!(declared(&nat, fixed), [fixed]);
        }
        for fixed in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
            assert_eq!(declared(&filter, fixed), [fixed]);
        }

        // KUBE-SERVICES: the target (index 1) last, then the nodeports tail rule.
        let kube_services = rules_of(&nat, "KUBE-SERVICES");
        assert_eq!(kube_services.len(), 4);
        let svc_of = |i: usize| service_chain_name(&services[i].name, "tcp");
        for (rule, i) in kube_services.iter().zip([0, 2, 1]) {
            let s = &services[i];
            assert_eq!(
                *rule,
                format!(
                    "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {} --dport 80 -j {}",
                    s.name,
                    s.cluster_ip,
                    svc_of(i)
                )
            );
        }
        assert!(kube_services[3].ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
        let first = iptables_restore_input(&services, 1, false);
        let first_rules = rules_of(&table(&first, "nat"), "KUBE-SERVICES");
        assert!(first_rules[0].ends_with(&format!("-j {}", svc_of(1))), "{first_rules:?}");
        assert!(first_rules[1].ends_with(&format!("-j {}", svc_of(0))), "{first_rules:?}");

        // KUBE-SVC: masquerade of off-cluster sources, then 1/3, 1/2, unconditional.
        for (i, s) in services.iter().enumerate() {
            let rules = rules_of(&nat, &svc_of(i));
            assert_eq!(rules.len(), 4, "{rules:?}");
            assert!(rules[0].ends_with(&format!("-d {} --dport 80 ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ", s.cluster_ip)));
            let probs: Vec<Option<&str>> =
                rules[1..].iter().map(|r| r.split("--probability ").nth(1).map(|p| p.split(' ').next().unwrap())).collect();
            assert_eq!(probs, [Some("0.3333333333"), Some("0.5000000000"), None]);
            assert!(!rules[3].contains("statistic"));
            let saved: Vec<String> = probs[..2].iter().map(|p| probability_as_saved(p.unwrap())).collect();
            assert_eq!(saved, ["0.33333333349", "0.50000000000"]);
            for (rule, &(ip, port)) in rules[1..].iter().zip(&s.endpoints) {
                let ep = format!("{ip}:{port}");
                let sep = endpoint_chain_name(&s.name, "tcp", &ep);
                assert!(rule.starts_with(&format!("-A {} -m comment --comment \"{} -> {ep}\"", svc_of(i), s.name)), "{rule}");
                assert!(rule.ends_with(&format!(" -j {sep}")), "{rule}");
                // KUBE-SEP: hairpin masquerade and DNAT.
                assert_eq!(
                    rules_of(&nat, &sep),
                    [
                        format!("-A {sep} -m comment --comment {} -s {ip} -j KUBE-MARK-MASQ", s.name),
                        format!("-A {sep} -m comment --comment {} -m tcp -p tcp -j DNAT --to-destination {ep}", s.name),
                    ]
                );
            }
        }

        // Masquerading and jumps.
        assert_eq!(rules_of(&nat, "KUBE-MARK-MASQ"), ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]);
        assert_eq!(
            rules_of(&nat, "KUBE-POSTROUTING"),
            [
                "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
                "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
                "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            ]
        );
        for builtin in ["PREROUTING", "OUTPUT"] {
            assert!(nat.contains(&&*format!("-I {builtin} -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")));
        }
        assert!(nat.contains(&"-I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"));
        assert_eq!(rules_of(&filter, "KUBE-FORWARD").len(), 3);
        assert!(rules_of(&filter, "KUBE-SERVICES").is_empty());

        // Rule counts: nat 4 fixed + 3 KUBE-SERVICES + 1 tail + 3 × 4 KUBE-SVC + 9 × 2 KUBE-SEP + 3 jumps.
        assert_eq!(nat.iter().filter(|l| l.starts_with('-')).count(), 4 + 3 + 1 + 12 + 18 + 3);
        // filter: KUBE-FIREWALL + 3 KUBE-FORWARD + 11 jumps.
        assert_eq!(filter.iter().filter(|l| l.starts_with('-')).count(), 1 + 3 + 11);

        // Every jump target is declared in its table (or is a built-in target).
        for lines in [&nat, &filter] {
            let declared: Vec<&str> = declared(lines, "");
            for l in lines.iter().filter(|l| l.starts_with('-')) {
                let target = l.split(" -j ").nth(1).unwrap().split(' ').next().unwrap();
                let builtin = ["ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "DNAT", "MASQUERADE"].contains(&target);
                assert!(builtin || declared.contains(&target), "undeclared {target} in {l}");
            }
        }
    }

    #[test]
    fn iptables_rejects_services_without_endpoints_in_filter() {
        let mut services = small();
        services[2].endpoints.clear();
        let input = iptables_restore_input(&services, 0, true);
        let nat = table(&input, "nat");
        let filter = table(&input, "filter");
        assert_eq!(declared(&nat, "KUBE-SVC-").len(), 2);
        assert_eq!(declared(&nat, "KUBE-SEP-").len(), 6);
        assert_eq!(
            rules_of(&filter, "KUBE-SERVICES"),
            [format!(
                "-A KUBE-SERVICES -m comment --comment \"bench/svc-2:http has no endpoints\" -m tcp -p tcp -d {} --dport 80 -j REJECT",
                services[2].cluster_ip
            )]
        );
        assert!(nat.iter().all(|l| !l.contains(&services[2].cluster_ip.to_string())));
    }

    #[test]
    fn iptables_large_cluster_mode_drops_endpoint_comments() {
        let services = synthetic(101, 10); // 1010 endpoints > 1000
        let input = iptables_restore_input(&services, 100, true);
        let nat = table(&input, "nat");
        assert_eq!(declared(&nat, "KUBE-SEP-").len(), 1010);
        assert!(nat.iter().all(|l| !l.contains(" -> ")));
        assert!(nat.iter().filter(|l| l.starts_with("-A KUBE-SEP-")).all(|l| !l.contains("comment")));
        assert_eq!(nat.iter().filter(|l| l.contains("cluster IP")).count(), 2 * 101);
        let udp = BaselineService { protocol: "udp", ..synthetic(1, 2).remove(0) };
        let input = iptables_restore_input(&[udp], 0, true);
        assert!(input.contains("-m udp -p udp -d 10.96.0.1 --dport 80 -j KUBE-SVC-"), "{input}");
        assert!(input.contains("-m udp -p udp -j DNAT --to-destination 10.128.0.2:8080"), "{input}");
    }

    #[test]
    fn nft_structure_for_three_services_of_three_endpoints() {
        let services = small();
        let script = nft_script(&services);
        let t = "add chain ip kube-proxy ";
        let chains: Vec<&str> =
            script.lines().filter_map(|l| l.strip_prefix(t)).map(|l| l.split_whitespace().next().unwrap()).collect();
        let service_chains: Vec<&&str> = chains.iter().filter(|c| c.starts_with("service-") && c.contains('/')).collect();
        let endpoint_chains: Vec<&&str> = chains.iter().filter(|c| c.starts_with("endpoint-")).collect();
        assert_eq!(service_chains.len(), 3);
        assert_eq!(endpoint_chains.len(), 9);
        assert!(script.starts_with("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n"));
        assert!(script.contains("add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }"));
        assert!(script.contains("add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }"));
        assert!(script.contains("add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }"));
        assert!(script.contains("add rule ip kube-proxy nat-prerouting jump services\n"));
        assert!(script.contains("add rule ip kube-proxy nat-output jump services\n"));
        assert!(script.contains("add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n"));
        assert!(script.contains("add rule ip kube-proxy nat-postrouting jump masquerading\n"));
        assert!(script.contains("add rule ip kube-proxy masquerading masquerade fully-random\n"));

        // Every chain is created before it is used.
        for (n, line) in script.lines().enumerate() {
            for word in line.split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}') {
                if (word.starts_with("service-") || word.starts_with("endpoint-")) && word.contains('/') {
                    let decl = format!("{t}{word}\n");
                    let pos = script.find(&decl).unwrap_or_else(|| panic!("{word} never created"));
                    let line_start: usize = script.lines().take(n).map(|l| l.len() + 1).sum();
                    assert!(pos <= line_start, "{word} used on line {} before it is created", n + 1);
                }
            }
        }

        let mut elements = BTreeMap::new();
        for (i, s) in services.iter().enumerate() {
            let svc_chain = nft_service_chain_name(&s.name, "tcp");
            assert_eq!(svc_chain, format!("service-{}", nft_hash_and_truncate(&format!("bench/svc-{i}/tcp/http"))));
            let eps: Vec<String> = s.endpoints.iter().map(|&(ip, p)| nft_endpoint_chain_name(&s.name, "tcp", ip, p)).collect();
            let rules: Vec<&str> =
                script.lines().filter_map(|l| l.strip_prefix(&format!("add rule ip kube-proxy {svc_chain} "))).collect();
            assert_eq!(
                rules,
                [
                    format!("ip daddr {} tcp dport 80 ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade", s.cluster_ip),
                    format!("numgen random mod 3 vmap {{ 0 : goto {} , 1 : goto {} , 2 : goto {} }}", eps[0], eps[1], eps[2]),
                ]
            );
            for (c, &(ip, p)) in eps.iter().zip(&s.endpoints) {
                let rules: Vec<&str> =
                    script.lines().filter_map(|l| l.strip_prefix(&format!("add rule ip kube-proxy {c} "))).collect();
                assert_eq!(
                    rules,
                    [format!("ip saddr {ip} jump mark-for-masquerade"), format!("meta l4proto tcp dnat to {ip}:{p}")]
                );
            }
            elements.insert(s.cluster_ip, svc_chain);
        }
        // The verdict map is filled in one bulk statement.
        let adds: Vec<&str> = script.lines().filter(|l| l.starts_with("add element ip kube-proxy service-ips ")).collect();
        assert_eq!(adds.len(), 1);
        let want: Vec<String> = elements.iter().map(|(ip, c)| format!("{ip} . tcp . 80 : goto {c}")).collect();
        assert_eq!(adds[0], format!("add element ip kube-proxy service-ips {{ {} }}", want.join(", ")));
        assert!(script.contains("add element ip kube-proxy cluster-ips { 10.96.0.1, 10.96.0.2, 10.96.0.3 }\n"));
        assert!(
            !script.contains("no-endpoint-services {  }") && !script.contains("add element ip kube-proxy no-endpoint-services")
        );
    }

    #[test]
    fn nft_services_without_endpoints_go_to_the_reject_chain() {
        let mut services = small();
        services[0].endpoints.clear();
        let script = nft_script(&services);
        assert!(script.contains(
            "add element ip kube-proxy no-endpoint-services { 10.96.0.1 . tcp . 80 comment \"bench/svc-0:http\" : goto reject-chain }"
        ));
        assert!(!script.contains(&nft_service_chain_name(&services[0].name, "tcp")));
        assert_eq!(script.lines().filter(|l| l.starts_with("add chain ip kube-proxy endpoint-")).count(), 6);
        // Bulk statements are split beyond NFT_ELEMENTS_PER_STATEMENT elements.
        let many = nft_script(&synthetic(NFT_ELEMENTS_PER_STATEMENT + 1, 1));
        assert_eq!(many.lines().filter(|l| l.starts_with("add element ip kube-proxy service-ips ")).count(), 2);
    }

    #[test]
    fn cleanup_input_removes_kube_chains_and_jumps() {
        let saved = "# Generated by iptables-nft-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
                     :KUBE-SEP-X - [0:0]\n:OTHER - [0:0]\n\
                     -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                     -A PREROUTING -j OTHER\n-A KUBE-SERVICES -j KUBE-SEP-X\nCOMMIT\n";
        assert_eq!(
            cleanup_input("nat", saved).unwrap(),
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-X - [0:0]\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -X KUBE-SERVICES\n-X KUBE-SEP-X\nCOMMIT\n"
        );
        assert_eq!(cleanup_input("nat", "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), None);
    }

    #[test]
    fn a_missing_tool_names_its_debian_package() {
        let err = find_tool("lb-no-such-nft", "nftables").unwrap_err().to_string();
        assert!(err.contains("`lb-no-such-nft` not found") && err.contains("Debian package `nftables`"), "{err}");
    }

    fn count_lines(text: &str, pred: impl Fn(&str) -> bool) -> usize {
        text.lines().filter(|l| pred(l.trim())).count()
    }

    #[test]
    fn loads_into_a_scratch_netns_with_each_backend() {
        if !crate::privileges::require_root("baseline::loads_into_a_scratch_netns_with_each_backend") {
            return;
        }
        let ns = ScratchNetns::create("lb-bl-test").expect("scratch netns");
        let netns = ns.name();
        // 100 services × 3 endpoints, plus one service without endpoints.
        let mut services = synthetic(100, 3);
        services.push(BaselineService { name: "bench/empty:http".into(), endpoints: vec![], ..synthetic(101, 0).remove(100) });
        let target = services[99].cluster_ip.to_string();

        for backend in Backend::ALL {
            let rules = backend.rules(&services, 99, true);
            let took = load(netns, backend, &rules).unwrap_or_else(|e| panic!("{backend:?}: {e:#}"));
            // A second load replaces the first (load flushes first).
            let again = load(netns, backend, &rules).unwrap_or_else(|e| panic!("{backend:?} (again): {e:#}"));
            println!("{backend:?}: 100 services × 3 endpoints loaded in {took:.2?} (again {again:.2?})");
            let saved = dump(netns, backend).unwrap_or_else(|e| panic!("{backend:?}: {e:#}"));
            match backend {
                Backend::Nftables => {
                    let chains =
                        |prefix: &str| count_lines(&saved, |l| l.starts_with(&format!("chain {prefix}")) && l.contains('/'));
                    assert_eq!(chains("service-"), 100, "{saved}");
                    assert_eq!(chains("endpoint-"), 300, "{saved}");
                    assert_eq!(count_lines(&saved, |l| l.starts_with("numgen random mod 3 vmap")), 100, "{saved}");
                    assert_eq!(count_lines(&saved, |l| l.starts_with("meta l4proto tcp dnat to 10.128.")), 300, "{saved}");
                    assert!(saved.contains(&format!("{target} . tcp . 80 : goto service-")), "{saved}");
                    assert!(saved.contains("comment \"bench/empty:http\" : goto reject-chain"), "{saved}");
                }
                _ => {
                    assert_eq!(count_lines(&saved, |l| l.starts_with(":KUBE-SEP-")), 300, "{saved}");
                    assert_eq!(count_lines(&saved, |l| l.starts_with(":KUBE-SVC-")), 100, "{saved}");
                    assert_eq!(count_lines(&saved, |l| l.contains("--probability 0.33333333349")), 100, "{saved}");
                    assert_eq!(count_lines(&saved, |l| l.contains("--probability 0.50000000000")), 100, "{saved}");
                    let hairpin =
                        |l: &str| l.starts_with("-A KUBE-SEP-") && l.contains("/32 ") && l.ends_with("-j KUBE-MARK-MASQ");
                    assert_eq!(count_lines(&saved, hairpin), 300, "{saved}");
                    let dnat = |l: &str| l.starts_with("-A KUBE-SEP-") && l.contains(" -j DNAT --to-destination 10.128.");
                    assert_eq!(count_lines(&saved, dnat), 300, "{saved}");
                    assert_eq!(count_lines(&saved, |l| l.contains("has no endpoints") && l.contains(" -j REJECT")), 1, "{saved}");
                    let services_rules: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).collect();
                    let nat_rules: Vec<&&str> = services_rules.iter().filter(|l| l.contains("cluster IP")).collect();
                    assert_eq!(nat_rules.len(), 100);
                    assert!(nat_rules[99].contains(&format!("-d {target}/32")), "target not last: {}", nat_rules[99]);
                    assert!(saved.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
                    assert!(saved.contains("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
                }
            }
            flush(netns, backend).unwrap_or_else(|e| panic!("{backend:?} flush: {e:#}"));
            let after = dump(netns, backend).unwrap();
            assert!(!after.contains("KUBE-") && !after.contains("kube-proxy"), "{backend:?} left rules behind:\n{after}");
        }

        for (backend, took) in measure_load_times(netns, 1000, 10).expect("1000 × 10 loads") {
            println!("{backend:?}: 1000 services × 10 endpoints loaded in {took:.2?}");
        }
    }
}
