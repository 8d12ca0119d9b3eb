//! `lb-agent`: programs the eBPF service load balancer on this node from Kubernetes objects.
//!
//! Source (this version): Kubernetes YAML/JSON manifests (`--manifests FILE|DIR`), watched.
//! Pipeline: source → pure translation (`model::translate`, SEMANTICS.md) → single writer
//! (`dataplane::writer`) → maps pinned under `--bpffs`. The tc program is attached at ingress
//! of every interface matching `--interfaces`, including interfaces created later.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_userspace::{
    config::ProxyFlags,
    dataplane::{
        attach::{watch_links, Attacher, InterfaceSelector},
        load_object,
        pin::PinDir,
        pin_object_maps,
        writer::Writer,
        Capacity, MapSet,
    },
    files::FileSource,
    model::{self, TranslateOptions},
    trace::node_info,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(name = "lb-agent", version, about = "eBPF service load balancer node agent (kube-proxy replacement)")]
struct Args {
    /// Kubernetes manifests to serve: a YAML/JSON file, or a directory of .yaml/.yml/.json
    /// files (like `kubectl apply -f DIR`). Watched for changes, including replace-by-rename.
    #[arg(long, value_name = "FILE|DIR")]
    manifests: Option<PathBuf>,

    /// Interfaces to attach the pod-facing program to: names or glob patterns, comma
    /// separated (`veth*,eth1`). Matching interfaces that appear later are attached too.
    #[arg(long, value_delimiter = ',', default_value = "veth*")]
    interfaces: Vec<String>,

    #[command(flatten)]
    proxy: ProxyFlags,

    /// Directory on a bpffs where the maps are pinned (as `<DIR>/v<layout>/<MAP>`); bpffs is
    /// mounted on its parent if needed.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,

    /// Minimum time between two syncs (kube-proxy's --min-sync-period).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    min_sync_period: Duration,

    /// Idle timeout of established TCP flows (kube-proxy's flag of the same name).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    conntrack_tcp_timeout_established: Duration,

    /// Idle timeout of TCP flows after a FIN or RST.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    conntrack_tcp_timeout_close: Duration,

    /// Idle timeout of UDP flows (kube-proxy's --conntrack-udp-timeout-stream).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    conntrack_udp_timeout: Duration,

    #[command(flatten)]
    capacity: Capacity,
}

fn secs(d: Duration) -> u32 {
    d.as_secs().clamp(1, u32::MAX as u64) as u32
}

struct Agent {
    args: Args,
    node_name: String,
    source: FileSource,
    writer: Writer,
    last_sync: Option<Instant>,
}

impl Agent {
    fn sync(&mut self) {
        let started = Instant::now();
        let (objects, errors) = self.source.load();
        for e in &errors {
            warn!("manifest: {e}");
        }
        let node = node_info(&objects, &self.node_name);
        let (desired, object_errors) = model::translate(&objects.services, &objects.slices, &node, &TranslateOptions::default());
        for e in &object_errors {
            warn!("skipped: {e}");
        }
        let report = self.writer.apply(&desired);
        info!(
            service_ports = report.service_ports,
            changed = report.service_ports_changed,
            removed = report.service_ports_removed,
            tables_written = report.tables_written,
            backends_added = report.backends_added,
            backends_removed = report.backends_removed,
            errors = report.errors.len() + object_errors.len() + errors.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "synced"
        );
        self.last_sync = Some(Instant::now());
    }
}

/// The datapath's (rare, cold-path) aya-log records go to this process's log.
fn forward_datapath_logs(ebpf: &mut aya::Ebpf) -> Result<()> {
    use tokio::io::unix::AsyncFd;
    let logger = aya_log::EbpfLogger::init(ebpf).context("initialising aya-log")?;
    // SAFETY: the descriptor belongs to `logger`, which the AsyncFd owns: it stays open for as
    // long as it is registered.
    let mut fd = unsafe { AsyncFd::register(logger) }.map_err(|e| anyhow::anyhow!("registering the aya-log ring: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() {
    lb_userspace::init_logging("info");
    let args = Args::parse();
    if let Err(e) = run(args).await {
        error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let Some(manifests) = args.manifests.clone() else {
        bail!("--manifests is required: the Kubernetes API source is not implemented in this version");
    };
    if !manifests.exists() {
        bail!("--manifests {}: no such file or directory", manifests.display());
    }
    let selector = InterfaceSelector::parse(&args.interfaces)?;
    let node_name = args.proxy.node_name();
    if args.proxy.has_unimplemented() {
        info!("--cluster-cidr/--masquerade-all/--nodeport-addresses are accepted but not acted on yet");
    }

    let pins = PinDir::new(&args.bpffs);
    pins.prepare_fresh()?;
    let mut ebpf = load_object(&args.capacity)?;
    forward_datapath_logs(&mut ebpf)?;
    pin_object_maps(&ebpf, &pins)?;
    let maps = MapSet::take(&mut ebpf, &args.capacity, Some(&pins))?;
    let config = lb_common::Config {
        tcp_established_timeout: secs(args.conntrack_tcp_timeout_established),
        tcp_closing_timeout: secs(args.conntrack_tcp_timeout_close),
        udp_timeout: secs(args.conntrack_udp_timeout),
        flags: 0,
    };
    let writer = Writer::new(maps, args.capacity.max_table_size, args.capacity.max_service_ports, config)?;
    info!(node = %node_name, bpffs = %pins.versioned().display(), "datapath loaded, maps pinned");

    let mut agent = Agent { source: FileSource::new(&manifests), node_name, writer, last_sync: None, args };
    // Nothing is attached before the first complete sync, so the first packets already see
    // every service.
    agent.sync();

    let mut attacher = Attacher::default();
    attacher.reconcile(&mut ebpf, &selector).context("attaching")?;
    if attacher.attached().next().is_none() {
        warn!("no interface matches --interfaces {:?} yet; waiting for one", agent.args.interfaces);
    }

    let (file_tx, mut file_rx) = mpsc::channel(64);
    let _watcher = agent.source.watch(file_tx)?;
    let (link_tx, mut link_rx) = mpsc::channel(64);
    watch_links(link_tx)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(5));
    info!("ready");

    loop {
        tokio::select! {
            Some(()) = file_rx.recv() => {
                // Let a burst of writes settle, then respect the minimum sync period.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(last) = agent.last_sync {
                    let wait = agent.args.min_sync_period.saturating_sub(last.elapsed());
                    tokio::time::sleep(wait).await;
                }
                while file_rx.try_recv().is_ok() {}
                agent.sync();
            }
            Some(()) = link_rx.recv() => {
                while link_rx.try_recv().is_ok() {}
                if let Err(e) = attacher.reconcile(&mut ebpf, &selector) { warn!("attach: {e:#}"); }
            }
            _ = rescan.tick() => {
                if let Err(e) = attacher.reconcile(&mut ebpf, &selector) { warn!("attach: {e:#}"); }
            }
            _ = sigterm.recv() => { info!("SIGTERM"); break; }
            _ = sigint.recv() => { info!("SIGINT"); break; }
        }
    }

    attacher.detach_all(&mut ebpf);
    drop(agent);
    drop(ebpf);
    pins.remove()?;
    info!("detached and cleaned up");
    Ok(())
}
