//! `lb-agent`: programs the eBPF service load balancer on this node from Kubernetes objects.
//!
//! Sources: the API server (kube-rs watchers, the default) or Kubernetes YAML/JSON manifests
//! (`--manifests FILE|DIR`, watched). Either publishes complete snapshots of Services,
//! EndpointSlices and this Node once its initial lists are complete (K1). The sync loop applies
//! the latest snapshot at most once per `--min-sync-period` (burst 2), retries failed syncs
//! after `--sync-period`, and fully resyncs every `--sync-period` (K2): pure translation
//! (`model::translate`, SEMANTICS.md) → single writer (`dataplane::writer`) → maps pinned under
//! `--bpffs`. Programs (`dataplane::attach::Placement`): tc ingress + egress on every interface
//! matching `--interfaces` (pods), XDP + tc egress on `--xdp-interfaces` (uplinks), tc egress on
//! `lo`, including interfaces created later. Health on `--healthz-bind-address`, Prometheus
//! metrics on `--metrics-bind-address`, healthCheckNodePort servers (J1), as kube-proxy.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_userspace::{
    config::{interface_ips, node_object_ip},
    config::{local_port_range, FlowFlags, ProxyFlags},
    dataplane::{
        attach::{watch_links, Attacher, InterfaceSelector, Placement, XdpMode},
        gc,
        inspect::datapath_snapshot,
        load_object_from,
        migrate::carry_over_flows,
        pin::PinDir,
        sysctl::Journal,
        writer::Writer,
        Capacity, MapSet,
    },
    files::FileSource,
    healthcheck::HealthCheckServers,
    http::{serve_health, serve_metrics, HealthState, Metrics},
    incremental::Translator,
    manifests::ObjectSet,
    model::{DesiredState, TranslateOptions},
    source::kube::{client, KubeSource},
    sync::{Decision, SyncScheduler},
    trace::{find_node, node_info},
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(name = "lb-agent", version, about = "eBPF service load balancer node agent (kube-proxy replacement)")]
struct Args {
    /// Serve Kubernetes manifests instead of the API server: a YAML/JSON file, or a directory
    /// of .yaml/.yml/.json files (like `kubectl apply -f DIR`). Watched for changes, including
    /// replace-by-rename.
    #[arg(long, value_name = "FILE|DIR")]
    manifests: Option<PathBuf>,

    /// Kubeconfig for the API server (default: in-cluster config, else ~/.kube/config).
    #[arg(long, conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,

    /// Pod-facing interfaces (tc ingress + egress programs): names or glob patterns, comma
    /// separated (`veth*,eth1`). Matching interfaces that appear later are attached too.
    #[arg(long, value_delimiter = ',', default_value = "veth*")]
    interfaces: Vec<String>,

    /// Uplinks carrying external traffic (the XDP program in native mode, or the tc ingress
    /// program, see --xdp-mode; plus the tc egress program): names or glob patterns.
    #[arg(long, value_delimiter = ',')]
    xdp_interfaces: Vec<String>,

    /// How uplinks run the datapath: `auto` native XDP where the driver has it and the tc
    /// ingress program elsewhere; `native` XDP only; `tc` the tc program only. Generic (skb)
    /// XDP is never used: it runs after GRO, where checksums cannot be updated correctly.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpMode,

    #[command(flatten)]
    proxy: ProxyFlags,

    /// Directory on a bpffs where the maps are pinned (as `<DIR>/v<layout>/<MAP>`); bpffs is
    /// mounted on its parent if needed.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,

    /// The node's /proc/sys, where the agent lets its interfaces accept packets with a local
    /// source address (accept_local, loose rp_filter: the datapath rewrites sources before the
    /// kernel routes them). A container mounts the host's here writable.
    #[arg(long, default_value = "/proc/sys")]
    proc_sys: PathBuf,

    /// Remove everything a previous agent left under --bpffs (maps and attachments) and write
    /// back the sysctls it changed under --proc-sys, then exit (like kube-proxy's --cleanup).
    #[arg(long)]
    cleanup: bool,

    /// On SIGTERM/SIGINT, leave the datapath running (programs attached, maps pinned) for the
    /// next agent to adopt: restarts and upgrades without dropping a connection. Without it
    /// the agent detaches and removes everything it created.
    #[arg(long)]
    keep_datapath: bool,

    /// Minimum time between two syncs (kube-proxy's --min-sync-period; bursts of 2 allowed).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    min_sync_period: Duration,

    /// Full resync period, and the retry delay after a failed sync (kube-proxy's --sync-period).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    sync_period: Duration,

    /// Health server address (/healthz, /livez); empty disables it.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: String,

    /// Metrics server address (/metrics); empty disables it.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,

    #[command(flatten)]
    flow: FlowFlags,

    /// Load the datapath from this eBPF object file instead of the one built into the agent
    /// (upgrade or roll back the datapath alone; the running program is replaced atomically).
    #[arg(long, value_name = "FILE")]
    ebpf_object: Option<PathBuf>,

    #[command(flatten)]
    capacity: Capacity,
}

fn bind_address(s: &str, flag: &str) -> Result<Option<SocketAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).with_context(|| format!("--{flag} {s:?}: expected IP:PORT"))
}

const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Translation + writer + what the metrics need between syncs.
struct Pipeline {
    node_name: String,
    proxy: ProxyFlags,
    writer: Writer,
    translator: Translator,
    health: Arc<HealthState>,
    metrics: Arc<Metrics>,
    /// J1: the healthCheckNodePort servers, brought in step after each successful sync.
    health_checks: HealthCheckServers,
    /// EndpointSlice (namespace/name) → the last change-trigger time already observed.
    trigger_times: HashMap<String, String>,
}

impl Pipeline {
    /// Applies a snapshot; returns whether every service port was applied.
    fn sync(&mut self, objects: &Arc<ObjectSet>, full: bool) -> bool {
        let started = Instant::now();
        let node = node_info(objects, &self.node_name);
        let node_obj = find_node(objects, &self.node_name);
        if let Some(n) = node_obj {
            self.health.set_node_eligible(HealthState::node_eligible_from(n));
        }
        let node_net = match self.proxy.node_net(node_obj.and_then(node_object_ip), &interface_ips()) {
            Ok(n) => n,
            Err(e) => {
                warn!("node addresses: {e:#}");
                return false;
            }
        };
        if full {
            self.writer.invalidate();
        }
        if let Err(e) = self.writer.set_node(&node_net) {
            warn!("programming the node's addresses: {e:#}");
            return false;
        }
        let translation = self.translator.translate(objects, &node, &TranslateOptions::default());
        let (desired, object_errors) = (translation.desired, translation.errors);
        for e in &object_errors {
            warn!("skipped: {e}");
        }
        let report = self.writer.apply(&desired);
        let elapsed = started.elapsed();
        self.observe_programming_latency(objects);
        self.metrics.set_service_ports(desired.services.len() as u64);
        let (internal, external) = no_local_endpoints(&desired);
        self.metrics.set_no_endpoints(internal, external);
        if report.errors.is_empty() {
            // As kube-proxy: only a successful sync counts as an update.
            self.metrics.observe_sync(elapsed);
            self.health.updated();
            self.health_checks.set_bind_addresses(node_net.nodeport_ips.iter().map(|ip| (*ip).into()).collect());
            self.health_checks.sync_desired(&desired);
        } else {
            self.metrics.inc_sync_errors();
        }
        info!(
            full,
            services_recomputed = translation.recomputed,
            service_ports = report.service_ports,
            changed = report.service_ports_changed,
            removed = report.service_ports_removed,
            tables_written = report.tables_written,
            backends_added = report.backends_added,
            backends_removed = report.backends_removed,
            errors = report.errors.len(),
            skipped_objects = object_errors.len(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "synced"
        );
        report.errors.is_empty()
    }

    /// kubeproxy_network_programming_duration_seconds: from each EndpointSlice change's trigger
    /// time (its annotation) to now, once per new trigger time.
    fn observe_programming_latency(&mut self, objects: &ObjectSet) {
        let now = SystemTime::now();
        let mut seen = HashMap::new();
        for s in &objects.slices {
            let key = format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or(""), s.metadata.name.as_deref().unwrap_or(""));
            let Some(t) = s.metadata.annotations.as_ref().and_then(|a| a.get(TRIGGER_TIME)) else { continue };
            if self.trigger_times.get(&key) != Some(t) {
                if let Ok(at) = humantime::parse_rfc3339_weak(t) {
                    if let Ok(latency) = now.duration_since(at) {
                        self.metrics.observe_network_programming(latency);
                    }
                }
            }
            seen.insert(key, t.clone());
        }
        self.trigger_times = seen;
    }
}

/// Service ports with a Local policy whose endpoints are all elsewhere (K3).
fn no_local_endpoints(desired: &DesiredState) -> (u64, u64) {
    let mut internal = 0;
    let mut external = 0;
    for st in desired.services.values() {
        let none_local = st.has_any_endpoints && st.local_endpoints.is_empty();
        if st.internal_policy_local && none_local {
            internal += 1;
        }
        if st.external_policy_local && st.externally_accessible() && none_local {
            external += 1;
        }
    }
    (internal, external)
}

type Snapshots = watch::Sender<Option<Arc<ObjectSet>>>;

/// The manifest source: loads now and on every change, publishing complete snapshots.
async fn run_files(path: PathBuf, tx: Snapshots) -> Result<()> {
    let mut source = FileSource::new(&path);
    let (file_tx, mut file_rx) = mpsc::channel(64);
    let _watcher = source.watch(file_tx)?;
    loop {
        let (objects, errors) = source.load();
        for e in &errors {
            warn!("manifest: {e}");
        }
        if tx.send(Some(objects)).is_err() {
            return Ok(());
        }
        if file_rx.recv().await.is_none() {
            return Ok(());
        }
        // Let a burst of writes settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while file_rx.try_recv().is_ok() {}
    }
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

/// Removes expired conntrack entries every `every` (`dataplane::gc`), off the async threads.
fn spawn_conntrack_gc(pins: PinDir, timeouts: [u32; lb_common::TimeoutIndex::COUNT], every: Duration, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = pins.clone();
            match tokio::task::spawn_blocking(move || gc::collect_pinned(&p, &timeouts)).await {
                Ok(Ok(pass)) => metrics.observe_conntrack_gc(pass.live, pass.deleted),
                Ok(Err(e)) => warn!("conntrack garbage collection: {e:#}"),
                Err(e) => warn!("conntrack garbage collection: {e}"),
            }
        }
    });
}

async fn run(args: Args) -> Result<()> {
    let pins = PinDir::new(&args.bpffs);
    if args.cleanup {
        if let Some(mut journal) = Journal::open(&pins)? {
            for problem in journal.restore(&args.proc_sys) {
                warn!("{problem}");
            }
        }
        pins.remove()?;
        info!(bpffs = %args.bpffs.display(), "cleaned up (sysctls restored)");
        return Ok(());
    }
    if let Some(m) = &args.manifests {
        if !m.exists() {
            bail!("--manifests {}: no such file or directory", m.display());
        }
    }
    let selector = Placement {
        pods: InterfaceSelector::parse(&args.interfaces)?,
        uplinks: InterfaceSelector::parse(&args.xdp_interfaces)?,
        xdp_mode: args.xdp_mode,
    };
    let node_name = args.proxy.node_name();
    args.proxy.nodeport_addresses()?;
    let healthz = bind_address(&args.healthz_bind_address, "healthz-bind-address")?;
    let metrics_addr = bind_address(&args.metrics_bind_address, "metrics-bind-address")?;

    // The source first: with the API server, a bad kubeconfig fails before anything is loaded.
    let (snap_tx, mut snap_rx) = watch::channel(None);
    let source = match &args.manifests {
        Some(path) => tokio::spawn(run_files(path.clone(), snap_tx)),
        None => {
            let client = client(args.kubeconfig.as_deref()).await.context("connecting to the API server")?;
            tokio::spawn(KubeSource::new(client, node_name.clone()).run(snap_tx))
        }
    };

    // Maps pinned by an earlier agent are reused with their contents (conntrack included) and
    // its programming is read back: ids stay stable, the first sync changes only what differs.
    pins.prepare()?;
    let mut ebpf = load_object_from(args.ebpf_object.as_deref(), &args.capacity, Some(&pins))?;
    forward_datapath_logs(&mut ebpf)?;
    let maps = MapSet::take(&mut ebpf, &args.capacity, Some(&pins))?;
    let carried = carry_over_flows(&pins).context("carrying connections over from the older datapath")?;
    if carried > 0 {
        info!(entries = carried, "conntrack entries carried over from the older layout's datapath (before attaching)");
    }
    let config = args.flow.datapath_config(local_port_range());
    let (writer, adopted) = Writer::adopt(maps, args.capacity.max_table_size, args.capacity.max_service_ports, config)?;
    info!(node = %node_name, bpffs = %pins.versioned().display(), adopted = %adopted, "datapath loaded, maps pinned");

    // kube-proxy's health timeout is twice its sync period.
    let health = HealthState::new(2 * args.sync_period);
    let metrics = Metrics::new();
    if let Some(addr) = healthz {
        let h = health.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_health(addr, h).await {
                error!("health server on {addr}: {e:#}");
            }
        });
    }
    if let Some(addr) = metrics_addr {
        let m = metrics.clone();
        let p = pins.clone();
        let refresh: Arc<dyn Fn() -> Option<lb_userspace::http::DatapathSnapshot> + Send + Sync> =
            Arc::new(move || datapath_snapshot(&p).map_err(|e| warn!("reading the datapath for metrics: {e:#}")).ok());
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(addr, m, refresh).await {
                error!("metrics server on {addr}: {e:#}");
            }
        });
    }

    spawn_conntrack_gc(pins.clone(), config.timeouts, args.flow.conntrack_gc_interval, metrics.clone());

    let mut pipeline = Pipeline {
        node_name,
        proxy: args.proxy.clone(),
        writer,
        translator: Translator::default(),
        health: health.clone(),
        metrics,
        health_checks: HealthCheckServers::with_health(Vec::new(), health.clone()),
        trigger_times: HashMap::new(),
    };
    let mut scheduler = SyncScheduler::new(Instant::now(), args.min_sync_period, args.sync_period, args.sync_period);

    // K1: nothing is programmed (and nothing attached) before the source's first complete
    // snapshot, so the first packets already see every service.
    info!("waiting for the initial lists");
    let first = loop {
        if snap_rx.changed().await.is_err() {
            bail!("the source stopped before its initial lists: {:?}", source.await);
        }
        if let Some(s) = snap_rx.borrow_and_update().clone() {
            break s;
        }
    };
    health.queued_update();
    scheduler.queue();
    // A fresh scheduler has its whole burst: the first snapshot is applied at once.
    if let Decision::Sync { full } = scheduler.decide(Instant::now()) {
        let ok = pipeline.sync(&first, full);
        scheduler.done(Instant::now(), ok);
    }

    let mut attacher = Attacher::new(pins.links_dir(), args.proc_sys.clone(), Journal::open_or_create(&pins)?)?;
    attacher.reconcile(&mut ebpf, &selector).context("attaching")?;
    // What the old programs created until the links were swapped.
    let carried = carry_over_flows(&pins).context("carrying connections over from the older datapath")?;
    if carried > 0 {
        info!(entries = carried, "conntrack entries carried over from the older layout's datapath (after attaching)");
    }
    for old in pins.remove_other_versions()? {
        info!(path = %old.display(), "removed maps of another layout version (links taken over)");
    }
    if attacher.attached().next().is_none() {
        warn!("no interface matches --interfaces {:?} yet; waiting for one", args.interfaces);
    }
    let (link_tx, mut link_rx) = mpsc::channel(64);
    watch_links(link_tx)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(5));
    info!("ready");

    loop {
        let wake = match scheduler.decide(Instant::now()) {
            Decision::Sync { full } => {
                let snapshot = snap_rx.borrow_and_update().clone();
                if let Some(s) = snapshot {
                    let ok = pipeline.sync(&s, full);
                    scheduler.done(Instant::now(), ok);
                }
                continue;
            }
            Decision::WaitUntil(t) => t.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        };
        tokio::select! {
            changed = snap_rx.changed() => {
                if changed.is_err() {
                    bail!("the source stopped: {:?}", source.await);
                }
                health.queued_update();
                pipeline.metrics.queued_sync();
                scheduler.queue();
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
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

    source.abort();
    if args.keep_datapath {
        info!("--keep-datapath: programs stay attached and maps pinned for the next agent");
        return Ok(());
    }
    attacher.detach_all();
    attacher.restore_sysctls();
    drop(pipeline);
    drop(ebpf);
    pins.remove()?;
    info!("detached and cleaned up");
    Ok(())
}
