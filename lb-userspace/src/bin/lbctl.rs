//! `lbctl`: inspect a running agent's datapath (pinned maps) and trace packets through the
//! real programs.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};
use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray};
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::{
    backend_flags, ct_dir, ct_flags, ip_from_map, port_from_map, svc_flags, Backend, Counter, Counters, ServiceKey, ServiceValue,
};
use lb_userspace::{
    config::ProxyFlags,
    dataplane::{decode_name, names, pin::PinDir, NAME_LEN},
    model::Protocol,
    trace::{self, TraceRequest},
};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Inspect the eBPF service load balancer")]
struct Cli {
    /// The agent's --bpffs directory.
    #[arg(long, global = true, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Service frontends with their Maglev table and backends.
    Services {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Backends (one per endpoint of each service port).
    Backends {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Connection-tracking entries.
    Conntrack {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The interfaces the datapath is attached to: link and program ids, program tag.
    Attachments {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Datapath counters, summed over CPUs.
    Stats {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Where does this packet go, and why: runs the real program on a crafted packet against
    /// maps programmed from manifests by the agent's own code.
    Trace(TraceArgs),
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Kubernetes manifests (a file or a directory), read as lb-agent reads them.
    #[arg(long, value_name = "FILE|DIR")]
    manifests: PathBuf,
    #[command(flatten)]
    proxy: ProxyFlags,
    /// tcp, udp or sctp.
    #[arg(long, value_parser = parse_proto)]
    proto: Protocol,
    /// Source address of the packet.
    #[arg(long)]
    src: Ipv4Addr,
    /// Destination address of the packet.
    #[arg(long)]
    dst: Ipv4Addr,
    /// Destination port of the packet.
    #[arg(long)]
    dport: u16,
    /// Number of flows (source ports) to try.
    #[arg(long, default_value_t = 1)]
    flows: u32,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

fn parse_proto(s: &str) -> Result<Protocol, String> {
    Protocol::parse(&s.to_uppercase()).ok_or_else(|| format!("unknown protocol {s:?} (tcp, udp, sctp)"))
}

fn main() {
    lb_userspace::init_logging("warn");
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("lbctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let pins = PinDir::new(&cli.bpffs);
    match cli.cmd {
        Cmd::Services { output } => print(output, &services(&pins)?),
        Cmd::Backends { output } => print(output, &backends(&pins)?),
        Cmd::Conntrack { output } => print(output, &conntrack(&pins)?),
        Cmd::Stats { output } => print(output, &stats(&pins)?),
        Cmd::Attachments { output } => print(output, &attachments(&pins)?),
        Cmd::Trace(t) => trace_cmd(t),
    }
}

/// A table of rows for human output; JSON prints the rows themselves.
trait Rows: Serialize {
    fn header() -> Vec<&'static str>;
    fn cells(&self) -> Vec<String>;
}

fn print<R: Rows>(output: Output, rows: &[R]) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let header = R::header();
    let cells: Vec<Vec<String>> = rows.iter().map(Rows::cells).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |items: Vec<String>| {
        items.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(header.iter().map(|s| s.to_string()).collect()));
    for row in cells {
        println!("{}", line(row));
    }
    Ok(())
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(pins: &PinDir, name: &str) -> Result<T> {
    Ok(T::try_from(pins.open(name)?)?)
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        other => other.to_string(),
    }
}

fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{}", Ipv4Addr::from(ip_from_map(addr)), port_from_map(port))
}

fn backend_flag_names(f: u8) -> Vec<&'static str> {
    [
        (backend_flags::READY, "ready"),
        (backend_flags::SERVING, "serving"),
        (backend_flags::TERMINATING, "terminating"),
        (backend_flags::LOCAL, "local"),
    ]
    .into_iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, n)| n)
    .collect()
}

#[derive(Serialize)]
struct BackendRow {
    id: u32,
    address: String,
    protocol: String,
    service_port_id: u32,
    service: String,
    flags: Vec<&'static str>,
}

impl Rows for BackendRow {
    fn header() -> Vec<&'static str> {
        vec!["ID", "ADDRESS", "PROTO", "SVC-ID", "SERVICE", "FLAGS"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.address.clone(),
            self.protocol.clone(),
            self.service_port_id.to_string(),
            self.service.clone(),
            self.flags.join(","),
        ]
    }
}

fn service_names(pins: &PinDir) -> Result<BTreeMap<u32, String>> {
    let map: HashMap<MapData, u32, [u8; NAME_LEN]> = open(pins, names::NAMES)?;
    Ok(map.iter().filter_map(|r| r.ok()).map(|(id, n)| (id, decode_name(&n))).collect())
}

fn backends(pins: &PinDir) -> Result<Vec<BackendRow>> {
    let names_by_id = service_names(pins)?;
    let map: HashMap<MapData, u32, Backend> = open(pins, names::BACKENDS)?;
    let mut rows: Vec<BackendRow> = map
        .iter()
        .filter_map(|r| r.ok())
        .map(|(id, b)| BackendRow {
            id,
            address: endpoint(b.addr, b.port),
            protocol: proto_name(b.proto),
            service_port_id: b.svc_id,
            service: names_by_id.get(&b.svc_id).cloned().unwrap_or_default(),
            flags: backend_flag_names(b.flags),
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

#[derive(Serialize)]
struct ServiceRow {
    frontend: String,
    protocol: String,
    scope: &'static str,
    id: u32,
    service: String,
    flags: Vec<&'static str>,
    table: u32,
    table_size: u32,
    /// Backends holding slots in the frontend's Maglev table, with their slot counts.
    active_backends: BTreeMap<String, u32>,
    /// Every backend of the service port (including terminating ones).
    backends: Vec<BackendRow>,
}

impl Rows for ServiceRow {
    fn header() -> Vec<&'static str> {
        vec!["FRONTEND", "PROTO", "SCOPE", "ID", "SERVICE", "FLAGS", "TABLE(M)", "ACTIVE BACKENDS (slots)"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.frontend.clone(),
            self.protocol.clone(),
            self.scope.to_string(),
            self.id.to_string(),
            self.service.clone(),
            self.flags.join(","),
            format!("{}({})", self.table, self.table_size),
            self.active_backends.iter().map(|(b, n)| format!("{b}({n})")).collect::<Vec<_>>().join(" "),
        ]
    }
}

fn services(pins: &PinDir) -> Result<Vec<ServiceRow>> {
    let names_by_id = service_names(pins)?;
    let svcs: HashMap<MapData, ServiceKey, ServiceValue> = open(pins, names::SERVICES)?;
    let maglev: ArrayOfMaps<MapData, MapData> = open(pins, names::MAGLEV)?;
    let all_backends = backends(pins)?;
    let by_id: BTreeMap<u32, &BackendRow> = all_backends.iter().map(|b| (b.id, b)).collect();
    let mut rows = Vec::new();
    for (k, v) in svcs.iter().filter_map(|r| r.ok()) {
        if v.flags & svc_flags::ADDRESS_MARKER != 0 {
            continue;
        }
        let mut table_size = 0;
        let mut active = BTreeMap::new();
        // The table of the frontend's policy (for an eTP=Local frontend: the one external
        // clients use).
        let table = if v.flags & svc_flags::POLICY_LOCAL != 0 { v.local_table } else { v.cluster_table };
        if let Ok(inner) = maglev.get(&table, 0) {
            let arr: Array<MapData, [u32; 2]> = Array::try_from(Map::from_map_data(inner)?)?;
            let words: Vec<u32> = arr.iter().filter_map(|r| r.ok()).flatten().collect();
            if let Some((m, rest)) = words.split_first() {
                table_size = *m;
                for id in rest.iter().take(*m as usize).filter(|&&id| id != 0) {
                    let name = by_id.get(id).map(|b| b.address.clone()).unwrap_or_else(|| format!("#{id}"));
                    *active.entry(name).or_insert(0) += 1;
                }
            }
        }
        let flags = [
            (svc_flags::NO_ENDPOINTS, "no-endpoints"),
            (svc_flags::POLICY_LOCAL, "local"),
            (svc_flags::AFFINITY, "affinity"),
            (svc_flags::SOURCE_RANGES, "source-ranges"),
        ]
        .into_iter()
        .filter(|(b, _)| v.flags & b != 0)
        .map(|(_, n)| n)
        .collect();
        rows.push(ServiceRow {
            frontend: endpoint(k.addr, k.port),
            protocol: proto_name(k.proto),
            scope: if v.flags & svc_flags::EXTERNAL == 0 { "ClusterIP" } else { "External" },
            id: v.id,
            service: names_by_id.get(&v.id).cloned().unwrap_or_default(),
            flags,
            table,
            table_size,
            active_backends: active,
            backends: all_backends
                .iter()
                .filter(|b| b.service_port_id == v.id)
                .map(|b| BackendRow {
                    id: b.id,
                    address: b.address.clone(),
                    protocol: b.protocol.clone(),
                    service_port_id: b.service_port_id,
                    service: b.service.clone(),
                    flags: b.flags.clone(),
                })
                .collect(),
        });
    }
    rows.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    Ok(rows)
}

#[derive(Serialize)]
struct CtRow {
    direction: &'static str,
    protocol: String,
    source: String,
    destination: String,
    service_port_id: u32,
    backend_id: u32,
    frontend: String,
    /// Source-NATed flows (masqueraded, or a port remapped after a clash): the source
    /// written (forward) or the client restored (reply).
    masquerade: String,
    /// The connection's state (netfilter's TCP states; UDP/SCTP UNREPLIED or REPLIED).
    state: &'static str,
    idle_seconds: f64,
}

impl Rows for CtRow {
    fn header() -> Vec<&'static str> {
        vec!["DIR", "PROTO", "SOURCE", "DESTINATION", "SVC-ID", "BACKEND", "FRONTEND", "SNAT", "STATE", "IDLE(s)"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.direction.to_string(),
            self.protocol.clone(),
            self.source.clone(),
            self.destination.clone(),
            self.service_port_id.to_string(),
            self.backend_id.to_string(),
            self.frontend.clone(),
            if self.masquerade.is_empty() { "-".into() } else { self.masquerade.clone() },
            self.state.to_string(),
            format!("{:.1}", self.idle_seconds),
        ]
    }
}

fn conntrack(pins: &PinDir) -> Result<Vec<CtRow>> {
    let (map, capacity) = lb_userspace::dataplane::inspect::open_ct(pins)?;
    let now = lb_userspace::dataplane::inspect::monotonic_ns();
    let mut rows: Vec<CtRow> = lb_userspace::dataplane::inspect::ct_entries(&map, capacity)
        .into_iter()
        .map(|(k, e)| CtRow {
            direction: if k.dir == ct_dir::REPLY { "reply" } else { "forward" },
            protocol: proto_name(k.proto),
            source: endpoint(k.saddr, k.sport),
            destination: endpoint(k.daddr, k.dport),
            service_port_id: e.svc_id,
            backend_id: e.backend_id,
            // The forward entry's key holds the frontend; the reply entry holds it.
            frontend: if k.dir == ct_dir::REPLY { endpoint(e.peer_addr, e.peer_port) } else { endpoint(k.daddr, k.dport) },
            masquerade: if e.flags & ct_flags::SNAT != 0 { endpoint(e.nat_addr, e.nat_port) } else { String::new() },
            state: lb_common::flow::state_name(k.proto, e.state),
            idle_seconds: now.saturating_sub(e.last_seen_ns) as f64 / 1e9,
        })
        .collect();
    rows.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
    Ok(rows)
}

#[derive(Serialize)]
struct StatRow {
    counter: &'static str,
    value: u64,
}

impl Rows for StatRow {
    fn header() -> Vec<&'static str> {
        vec!["COUNTER", "VALUE"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.counter.to_string(), self.value.to_string()]
    }
}

fn stats(pins: &PinDir) -> Result<Vec<StatRow>> {
    let map: PerCpuArray<MapData, Counters> = open(pins, names::STATS)?;
    let sums = lb_userspace::dataplane::inspect::sum_counters(&map)?;
    Ok(Counter::ALL.iter().map(|c| StatRow { counter: c.name(), value: sums[*c as usize] }).collect())
}

#[derive(Serialize)]
struct AttachmentRow {
    interface: String,
    hook: &'static str,
    link_id: u32,
    program_id: u32,
    program_tag: String,
    program_name: String,
}

impl Rows for AttachmentRow {
    fn header() -> Vec<&'static str> {
        vec!["INTERFACE", "HOOK", "LINK", "PROGRAM", "TAG", "NAME"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.interface.clone(),
            self.hook.to_string(),
            self.link_id.to_string(),
            self.program_id.to_string(),
            self.program_tag.clone(),
            self.program_name.clone(),
        ]
    }
}

fn attachments(pins: &PinDir) -> Result<Vec<AttachmentRow>> {
    use aya::programs::links::{FdLink, PinnedLink};
    let programs: BTreeMap<u32, aya::programs::ProgramInfo> =
        aya::programs::loaded_programs().filter_map(|p| p.ok()).map(|p| (p.id(), p)).collect();
    let dir = pins.links_dir();
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some((hook, interface)) = lb_userspace::dataplane::attach::Hook::from_pin_name(&file) else { continue };
        let link = FdLink::from(PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?);
        let info = link.info()?;
        let prog = programs.get(&info.program_id());
        rows.push(AttachmentRow {
            interface,
            hook: hook.describe(),
            link_id: info.id(),
            program_id: info.program_id(),
            program_tag: prog.map(|p| format!("{:016x}", p.tag())).unwrap_or_default(),
            program_name: prog.and_then(|p| p.name_as_str().map(str::to_string)).unwrap_or_default(),
        });
    }
    rows.sort_by(|a, b| (&a.interface, a.hook).cmp(&(&b.interface, b.hook)));
    Ok(rows)
}

fn trace_cmd(t: TraceArgs) -> Result<()> {
    let req = TraceRequest {
        manifests: t.manifests,
        proxy: t.proxy,
        proto: t.proto,
        src: t.src,
        dst: t.dst,
        dport: t.dport,
        flows: t.flows,
    };
    let d = trace::run(&req)?;
    if t.output == Output::Json {
        println!("{}", serde_json::to_string(&d.outcome)?);
        return Ok(());
    }
    for e in &d.manifest_errors {
        println!("warning: {e}");
    }
    println!("packet:     {} {}:* -> {}:{} ({} flow(s))", req.proto, req.src, req.dst, req.dport, req.flows);
    println!("program:    {}", d.program);
    println!("verdict:    {}", d.outcome.verdict);
    println!("backends:   {}", if d.outcome.backends.is_empty() { "-".to_string() } else { d.outcome.backends.join(", ") });
    println!("masquerade: {}", d.outcome.masquerade);
    if d.per_verdict.len() > 1 {
        println!("outcomes:   {:?}", d.per_verdict);
    }
    Ok(())
}
