//! Attaching the programs to the configured interfaces (see [`Placement`]), following
//! interfaces as they come and go (netlink link notifications), keeping the attachments
//! alive across agent restarts, and telling the datapath which interfaces are pod veths
//! (`LB_IFACES`: delivery with bpf_redirect_peer).
//!
//! Uplinks run the XDP program in native (driver) mode, with `lb_uplink_deliver` on their tc
//! ingress for what XDP hands over. Where the driver has no native XDP, the uplink runs the
//! tc ingress program instead (`--xdp-mode auto`, the default; `tc` forces it): generic (skb)
//! XDP is never used, because it runs after GRO, where a merged TCP skb's checksum field holds
//! only the pseudo-header sum and an incremental update there produces wrong checksums.
//!
//! Each attachment is a bpf_link (TCX or XDP) pinned at `<bpffs>/links/<hook prefix><interface>`: while the pin
//! exists the program stays attached, whether or not an agent runs. A starting agent finds the
//! pin and swaps its freshly loaded program into the existing link (`bpf_link_update`, atomic:
//! no packet is ever without a program), so restarts and upgrades are hitless.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf,
};
use tracing::{info, warn};

use lb_common::IfaceEntry;

use super::{names, sysctl::Journal};

/// Interface names or glob patterns (`veth*`, `eth?`), as given to `--interfaces`.
#[derive(Clone, Debug)]
pub struct InterfaceSelector {
    patterns: Vec<glob::Pattern>,
}

impl InterfaceSelector {
    pub fn parse(list: &[String]) -> Result<InterfaceSelector> {
        let patterns = list
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| glob::Pattern::new(s).with_context(|| format!("bad interface pattern {s:?}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(InterfaceSelector { patterns })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }
}

/// The interfaces of this network namespace: (name, ifindex).
pub fn interfaces() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push((name, (*p).if_index));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// A bpffs file name for an interface: bpffs refuses '.' in names (VLAN interfaces such as
/// `eth0.100` have one), so '%' and '.' are escaped.
fn pin_name(interface: &str) -> String {
    interface.replace('%', "%25").replace('.', "%2e")
}

/// Where a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// `lb_pod_ingress` on tc ingress of pod-facing interfaces.
    PodIngress,
    /// `lb_host_egress` on tc egress of every managed interface and `lo`.
    HostEgress,
    /// `lb_uplink` as XDP on uplinks (native mode only).
    Uplink,
    /// tc ingress on uplinks: `lb_uplink_deliver` behind native XDP, or the whole datapath
    /// (`lb_pod_ingress`) where the uplink runs no XDP.
    UplinkIngress,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::PodIngress, Hook::HostEgress, Hook::Uplink, Hook::UplinkIngress];

    /// The program this hook runs (`tc_mode`: the uplink has no XDP program).
    pub fn program(self, tc_mode: bool) -> &'static str {
        match self {
            Hook::PodIngress => names::PROG_POD_INGRESS,
            Hook::HostEgress => names::PROG_HOST_EGRESS,
            Hook::Uplink => names::PROG_UPLINK,
            Hook::UplinkIngress if tc_mode => names::PROG_POD_INGRESS,
            Hook::UplinkIngress => names::PROG_UPLINK_DELIVER,
        }
    }

    /// The pin file name of this hook on `interface` (the pod-facing ingress keeps the bare
    /// interface name it has had since the first layout).
    pub fn pin_name(self, interface: &str) -> String {
        match self {
            Hook::PodIngress => pin_name(interface),
            Hook::HostEgress => format!("egress-{}", pin_name(interface)),
            Hook::Uplink => format!("xdp-{}", pin_name(interface)),
            Hook::UplinkIngress => format!("ingress-{}", pin_name(interface)),
        }
    }

    /// The hook and interface a pin file name stands for.
    pub fn from_pin_name(file: &str) -> Option<(Hook, String)> {
        if file.starts_with("new-") {
            return None;
        }
        let unescape = |s: &str| s.replace("%2e", ".").replace("%25", "%");
        Some(if let Some(i) = file.strip_prefix("egress-") {
            (Hook::HostEgress, unescape(i))
        } else if let Some(i) = file.strip_prefix("xdp-") {
            (Hook::Uplink, unescape(i))
        } else if let Some(i) = file.strip_prefix("ingress-") {
            (Hook::UplinkIngress, unescape(i))
        } else {
            (Hook::PodIngress, unescape(file))
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Hook::PodIngress => "tcx ingress",
            Hook::HostEgress => "tcx egress",
            Hook::Uplink => "xdp",
            Hook::UplinkIngress => "tcx ingress",
        }
    }
}

/// How uplinks run the datapath (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native XDP where the driver has it, the tc ingress program elsewhere.
    Auto,
    /// Native XDP only: an uplink whose driver lacks it is not attached (and reported).
    Native,
    /// The tc ingress program only.
    Tc,
}

/// Loads one tc program into the kernel (once).
pub fn load_tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("loading {name} (verifier)"))?;
    }
    Ok(prog)
}

/// Loads the pod-facing program into the kernel (once).
pub fn load_pod_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    load_tc_program(ebpf, names::PROG_POD_INGRESS)
}

/// Loads the uplink XDP program into the kernel (once).
pub fn load_xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog: &mut Xdp = ebpf.program_mut(names::PROG_UPLINK).context("program lb_uplink missing")?.try_into()?;
    if prog.fd().is_err() {
        prog.load().context("loading lb_uplink (verifier)")?;
    }
    Ok(prog)
}

/// Lets an interface accept packets whose source is one of the node's own addresses. The
/// datapath delivers what it translates itself, but on its counted fallback paths (a
/// masqueraded flow to a host-network endpoint on this node, a packet over the egress MTU, no
/// route) the kernel receives packets whose source it rewrote to the node's address
/// (masquerade, replies restored to a NodePort / local LB address) before routing, where
/// netfilter would rewrite after routing. Without `accept_local` the kernel drops them as
/// "martian source"; strict reverse-path filtering (`rp_filter=1`) would too, so it is made
/// loose (2) on the interface, and on `all` if that is strict (the effective value is the
/// larger of the two). `proc_sys` is the node's `/proc/sys` (the DaemonSet mounts the host's,
/// writable). Every change is journaled first (`super::sysctl`), so `--cleanup` restores the
/// previous values. Returns what it changed host-wide or could not do, for the log.
pub fn allow_local_sources(proc_sys: &Path, interface: &str, journal: &mut Journal) -> Vec<String> {
    let conf = |i: &str, key: &str| format!("net/ipv4/conf/{i}/{key}");
    let mut problems = Vec::new();
    if let Err(e) = journal.set(proc_sys, &conf(interface, "accept_local"), 1) {
        problems.push(format!("setting accept_local on {interface}: {e:#}"));
    }
    let read =
        |i: &str| std::fs::read_to_string(proc_sys.join(conf(i, "rp_filter"))).ok().and_then(|v| v.trim().parse::<u8>().ok());
    if read(interface) == Some(1) {
        if let Err(e) = journal.set(proc_sys, &conf(interface, "rp_filter"), 2) {
            problems.push(format!("making rp_filter loose on {interface}: {e:#}"));
        }
    }
    if read("all") == Some(1) {
        problems.push(match journal.set(proc_sys, &conf("all", "rp_filter"), 2) {
            Ok(()) => "net.ipv4.conf.all.rp_filter changed from 1 (strict) to 2 (loose): strict reverse-path filtering \
                       drops masqueraded packets and NodePort replies the stack receives (restored by --cleanup)"
                .to_string(),
            Err(e) => format!(
                "net.ipv4.conf.all.rp_filter=1 (strict) overrides {interface}'s and could not be changed ({e:#}): \
                 masqueraded packets and NodePort replies will be dropped; set it to 2"
            ),
        });
    }
    problems
}

/// Which interfaces get which programs.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Pod-facing interfaces (`--interfaces`): pod ingress + host egress.
    pub pods: InterfaceSelector,
    /// Uplinks (`--xdp-interfaces`): XDP (unless `xdp_mode` is tc) + tc ingress + host egress.
    pub uplinks: InterfaceSelector,
    pub xdp_mode: XdpMode,
}

impl Placement {
    /// The (interface, hook) pairs wanted among `present` interfaces; `lo` always gets the
    /// host egress program (the node's connections to its own addresses: NodePorts, local LB
    /// IPs) when anything is attached.
    pub fn wanted(&self, present: &[(String, u32)]) -> BTreeMap<(String, Hook), u32> {
        let mut out = BTreeMap::new();
        for (name, idx) in present {
            if self.pods.matches(name) {
                out.insert((name.clone(), Hook::PodIngress), *idx);
                out.insert((name.clone(), Hook::HostEgress), *idx);
            }
            if self.uplinks.matches(name) {
                if self.xdp_mode != XdpMode::Tc {
                    out.insert((name.clone(), Hook::Uplink), *idx);
                }
                out.insert((name.clone(), Hook::UplinkIngress), *idx);
                out.insert((name.clone(), Hook::HostEgress), *idx);
            }
        }
        if !out.is_empty() {
            if let Some((name, idx)) = present.iter().find(|(n, _)| n == "lo") {
                out.insert((name.clone(), Hook::HostEgress), *idx);
            }
        }
        out
    }
}

/// The kernel driver of an interface (`ethtool -i`), through the SIOCETHTOOL ioctl in this
/// network namespace (sysfs may belong to another one, e.g. under `nsenter --net`).
pub fn driver_name(interface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain-data structs, zero is valid for both; the ioctl writes into `info` through
    // the pointer in `req`, both alive for the call; the socket is closed below.
    unsafe {
        let mut info: DrvInfo = std::mem::zeroed();
        info.cmd = ETHTOOL_GDRVINFO;
        let mut req: IfReq = std::mem::zeroed();
        req.name[..interface.len()].copy_from_slice(interface.as_bytes());
        req.data = &mut info;
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
        let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
        Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
    }
}

/// `LB_IFACES` slots for interfaces (ifindex, flags; an ifindex may come more than once, its
/// flags are merged): each interface in its `lb_common::iface_slot`; of two sharing a slot the
/// lower ifindex keeps it (the other is delivered to with a plain redirect, unmarked).
pub fn iface_entries(ifaces: impl IntoIterator<Item = (u32, u32)>) -> BTreeMap<u32, IfaceEntry> {
    let mut merged: BTreeMap<u32, u32> = BTreeMap::new();
    for (ifindex, flags) in ifaces {
        *merged.entry(ifindex).or_default() |= flags;
    }
    let mut out = BTreeMap::new();
    // Ascending ifindex: the first to claim a slot is the lowest.
    for (ifindex, flags) in merged {
        out.entry(lb_common::iface_slot(ifindex)).or_insert(IfaceEntry { ifindex, flags });
    }
    out
}

/// The programs attached, as pinned links.
pub struct Attacher {
    dir: PathBuf,
    /// The node's `/proc/sys` and the journal of what was changed there (see
    /// [`allow_local_sources`]).
    proc_sys: PathBuf,
    journal: Journal,
    /// (interface, hook) → ifindex it had when attached.
    attached: BTreeMap<(String, Hook), u32>,
    /// Uplinks whose driver has no native XDP (→ ifindex): they run the tc ingress program.
    no_native_xdp: BTreeMap<String, u32>,
    /// Pins of an earlier agent that this one does not want were removed (first reconcile).
    pruned: bool,
    /// Attached pod-facing interfaces that are veths (ifindex), and what `LB_IFACES` holds.
    pod_veths: BTreeMap<u32, String>,
    ifaces_written: Option<BTreeMap<u32, IfaceEntry>>,
}

impl Attacher {
    /// Attachments pinned under `dir` (created if missing); sysctls written under `proc_sys`,
    /// journaled in `journal`.
    pub fn new(dir: PathBuf, proc_sys: PathBuf, journal: Journal) -> Result<Attacher> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Attacher {
            dir,
            proc_sys,
            journal,
            attached: BTreeMap::new(),
            no_native_xdp: BTreeMap::new(),
            pruned: false,
            pod_veths: BTreeMap::new(),
            ifaces_written: None,
        })
    }

    fn pin_path(&self, interface: &str, hook: Hook) -> PathBuf {
        self.dir.join(hook.pin_name(interface))
    }

    /// Pins a link at the hook's path, atomically replacing an older pin.
    fn pin(&self, fd: FdLink, interface: &str, hook: Hook) -> Result<()> {
        let tmp = self.dir.join(format!("new-{}", hook.pin_name(interface)));
        let _ = std::fs::remove_file(&tmp);
        fd.pin(&tmp).with_context(|| format!("pinning the link of {interface}"))?;
        std::fs::rename(&tmp, self.pin_path(interface, hook))
            .with_context(|| format!("replacing the pinned link of {interface}"))?;
        Ok(())
    }

    /// Attaches to every wanted (interface, hook) not yet attached (taking over links pinned
    /// by an earlier agent), and forgets vanished interfaces.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf, placement: &Placement) -> Result<()> {
        let wanted = placement.wanted(&interfaces());
        if !self.pruned {
            self.prune_unwanted(&wanted);
            self.pruned = true;
        }
        self.no_native_xdp.retain(|name, idx| wanted.get(&(name.clone(), Hook::Uplink)) == Some(idx));
        let stale: Vec<(String, Hook)> =
            self.attached.iter().filter(|(k, idx)| wanted.get(*k) != Some(idx)).map(|(k, _)| k.clone()).collect();
        for (name, hook) in stale {
            // The interface is gone or was replaced: the kernel detached its link.
            if let Some(idx) = self.attached.remove(&(name.clone(), hook)) {
                if hook == Hook::PodIngress {
                    self.pod_veths.remove(&idx);
                }
            }
            let _ = std::fs::remove_file(self.pin_path(&name, hook));
            info!(interface = %name, hook = hook.describe(), "interface gone, forgotten");
        }
        for ((name, hook), idx) in wanted {
            if self.attached.contains_key(&(name.clone(), hook))
                || self.no_native_xdp.get(&name) == Some(&idx) && hook == Hook::Uplink
            {
                continue;
            }
            let tc_mode = placement.xdp_mode == XdpMode::Tc || self.no_native_xdp.contains_key(&name);
            let program = hook.program(tc_mode);
            let result = match hook {
                Hook::PodIngress | Hook::UplinkIngress => self.attach_tc(ebpf, &name, hook, program, TcAttachType::Ingress),
                Hook::HostEgress => self.attach_tc(ebpf, &name, hook, program, TcAttachType::Egress),
                Hook::Uplink if placement.xdp_mode == XdpMode::Auto && !super::sys::xdp_has_metadata() => {
                    info!(interface = %name, "this kernel's XDP has no bpf_xdp_adjust_meta (needed to hand packets for pods to tc): the uplink runs the tc ingress program");
                    self.no_native_xdp.insert(name.clone(), idx);
                    continue;
                }
                Hook::Uplink => match self.attach_xdp(ebpf, &name) {
                    Err(e) if placement.xdp_mode == XdpMode::Auto => {
                        info!(interface = %name, "no native XDP ({e:#}): the uplink runs the tc ingress program");
                        self.no_native_xdp.insert(name.clone(), idx);
                        continue;
                    }
                    other => other,
                },
            };
            match result {
                Ok(how) => {
                    info!(interface = %name, ifindex = idx, "{how} {program} ({})", hook.describe());
                    if !self.attached.keys().any(|(n, _)| *n == name) {
                        for problem in allow_local_sources(&self.proc_sys, &name, &mut self.journal) {
                            warn!("{problem}");
                        }
                    }
                    if hook == Hook::PodIngress && driver_name(&name).as_deref() == Some("veth") {
                        self.pod_veths.insert(idx, name.clone());
                    }
                    self.attached.insert((name, hook), idx);
                }
                Err(e) => warn!(interface = %name, hook = hook.describe(), "attach failed: {e:#}"),
            }
        }
        self.sync_ifaces(ebpf)
    }

    /// Removes pinned links of an earlier agent for (interface, hook) pairs this one does not
    /// want (an uplink that now runs in tc mode, an interface no longer selected): unpinning
    /// detaches them.
    fn prune_unwanted(&self, wanted: &BTreeMap<(String, Hook), u32>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((hook, name)) = Hook::from_pin_name(&file) else { continue };
            if !wanted.contains_key(&(name.clone(), hook)) {
                let _ = std::fs::remove_file(entry.path());
                info!(interface = %name, hook = hook.describe(), "removed an earlier agent's attachment that is no longer wanted");
            }
        }
    }

    /// Interfaces running the tc ingress program in place of XDP.
    pub fn tc_mode_uplinks(&self) -> impl Iterator<Item = &str> {
        self.no_native_xdp.keys().map(String::as_str)
    }

    /// What `LB_IFACES` should hold for the attached interfaces: slot → entry (see
    /// [`iface_entries`]).
    pub fn iface_entries(&self) -> BTreeMap<u32, IfaceEntry> {
        use lb_common::iface_flags::{MANAGED, POD_VETH};
        let managed = self.attached.iter().filter(|((_, hook), _)| *hook == Hook::HostEgress).map(|(_, idx)| (*idx, MANAGED));
        iface_entries(managed.chain(self.pod_veths.keys().map(|idx| (*idx, POD_VETH))))
    }

    /// Writes the `LB_IFACES` slots whose entry changed (emptied slots are zeroed).
    fn sync_ifaces(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let want = self.iface_entries();
        let before = self.ifaces_written.take();
        let mut map: aya::maps::Array<_, IfaceEntry> =
            aya::maps::Array::try_from(ebpf.map_mut(names::IFACES).context("map LB_IFACES missing")?)?;
        match &before {
            // Unknown (first sync, after an earlier agent): every slot it could have written.
            None => {
                for slot in 0..lb_common::IFACE_SLOTS {
                    let entry = want.get(&slot).copied().unwrap_or_default();
                    if map.get(&slot, 0).ok() != Some(entry) {
                        map.set(slot, entry, 0).context("writing LB_IFACES")?;
                    }
                }
            }
            Some(old) => {
                for slot in old.keys().chain(want.keys()).collect::<std::collections::BTreeSet<_>>() {
                    let entry = want.get(slot).copied().unwrap_or_default();
                    if old.get(slot) != Some(&entry) {
                        map.set(*slot, entry, 0).context("writing LB_IFACES")?;
                    }
                }
            }
        }
        self.ifaces_written = Some(want);
        Ok(())
    }

    fn attach_tc(&self, ebpf: &mut Ebpf, name: &str, hook: Hook, program: &str, kind: TcAttachType) -> Result<&'static str> {
        let prog = load_tc_program(ebpf, program)?;
        let path = self.pin_path(name, hook);
        if let Ok(old) = PinnedLink::from_pin(&path) {
            // An earlier agent's link: swap our program in atomically.
            let link = FdLink::from(old).try_into().context("pinned link is not a tc link")?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    let fd: FdLink = prog.take_link(id)?.try_into().context("not a bpf_link")?;
                    self.pin(fd, name, hook)?;
                    return Ok("took over the pinned link and swapped in");
                }
                // A link of a deleted interface (defunct): replace it with a fresh attachment.
                Err(e) => {
                    warn!(interface = %name, "pinned link unusable ({e}); attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = prog.attach(name, kind)?;
        let fd: FdLink = prog.take_link(id)?.try_into().context("not a bpf_link (TCX needs Linux 6.6)")?;
        self.pin(fd, name, hook)?;
        Ok("attached")
    }

    /// XDP in native (driver) mode; an error where the driver has no native XDP.
    fn attach_xdp(&self, ebpf: &mut Ebpf, name: &str) -> Result<&'static str> {
        let prog = load_xdp_program(ebpf)?;
        let path = self.pin_path(name, Hook::Uplink);
        if let Ok(old) = PinnedLink::from_pin(&path) {
            let link = XdpLink::try_from(FdLink::from(old)).context("pinned link is not an XDP link")?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    let fd: FdLink = prog.take_link(id)?.try_into().context("not a bpf_link")?;
                    self.pin(fd, name, Hook::Uplink)?;
                    return Ok("took over the pinned link and swapped in");
                }
                Err(e) => {
                    warn!(interface = %name, "pinned XDP link unusable ({e}); attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = prog.attach(name, aya::programs::XdpMode::Driver).context("native XDP")?;
        let how = "attached (native)";
        let fd: FdLink = prog.take_link(id)?.try_into().context("XDP attachment is not a bpf_link")?;
        self.pin(fd, name, Hook::Uplink)?;
        Ok(how)
    }

    pub fn attached(&self) -> impl Iterator<Item = (&str, Hook)> {
        self.attached.keys().map(|(n, h)| (n.as_str(), *h))
    }

    /// Writes back the sysctls the agents changed (the journal's values).
    pub fn restore_sysctls(&mut self) {
        for problem in self.journal.restore(&self.proc_sys) {
            warn!("{problem}");
        }
    }

    /// Detaches everything (unpinning the links releases them).
    pub fn detach_all(&mut self) {
        for (name, hook) in std::mem::take(&mut self.attached).into_keys() {
            if let Err(e) = std::fs::remove_file(self.pin_path(&name, hook)) {
                warn!(interface = %name, "unpinning: {e}");
            }
        }
    }
}

/// Sends a unit on `tx` whenever a link appears, changes or disappears (a blocking thread on
/// an rtnetlink socket subscribed to RTMGRP_LINK; the payload is not parsed, the receiver
/// re-reads the interface list).
pub fn watch_links(tx: tokio::sync::mpsc::Sender<()>) -> Result<()> {
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
    const RTMGRP_LINK: u32 = 1;
    let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK)).context("netlink bind")?;
    std::thread::Builder::new().name("link-watch".into()).spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(_) => {
                    if tx.blocking_send(()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("netlink recv: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_names_come_from_ethtool() {
        // The loopback has no ethtool driver info; a missing interface has none either.
        assert_eq!(super::driver_name("no-such-if0"), None);
        assert_eq!(super::driver_name("an-interface-name-far-too-long"), None);
    }

    #[test]
    fn iface_slots_keep_the_lower_ifindex_on_a_clash() {
        use lb_common::iface_flags::MANAGED;
        use lb_common::{iface_flags::POD_VETH, IfaceEntry, IFACE_SLOTS};
        let e = super::iface_entries([(7, POD_VETH), (7 + IFACE_SLOTS, POD_VETH), (9, POD_VETH), (7, MANAGED)]);
        assert_eq!(e.len(), 2);
        assert_eq!(e[&7], IfaceEntry { ifindex: 7, flags: POD_VETH | MANAGED }, "flags of one interface merged");
        let e = super::iface_entries([(7 + IFACE_SLOTS, 1), (7, 2)]);
        assert_eq!(e[&7], IfaceEntry { ifindex: 7, flags: 2 }, "the lower ifindex keeps the slot");
    }

    #[test]
    fn pin_names_have_no_dots() {
        assert_eq!(super::pin_name("veth1"), "veth1");
        assert_eq!(super::pin_name("eth0.100"), "eth0%2e100");
        assert_eq!(super::pin_name("a%b"), "a%25b");
    }

    #[test]
    fn hooks_round_trip_through_pin_names() {
        use super::Hook;
        for hook in Hook::ALL {
            for ifname in ["eth0", "eth0.100", "veth-x", "lbh0"] {
                assert_eq!(Hook::from_pin_name(&hook.pin_name(ifname)), Some((hook, ifname.to_string())), "{hook:?} {ifname}");
            }
        }
        assert_eq!(Hook::from_pin_name("new-eth0"), None);
    }

    #[test]
    fn placement_puts_egress_everywhere_and_lo_once() {
        use super::{Hook, InterfaceSelector, Placement, XdpMode};
        let sel = |s: &str| InterfaceSelector::parse(&[s.into()]).unwrap();
        let p = Placement { pods: sel("veth*"), uplinks: sel("eth0"), xdp_mode: XdpMode::Auto };
        let present = vec![("lo".to_string(), 1), ("eth0".to_string(), 2), ("veth1".to_string(), 3), ("other".to_string(), 4)];
        let wanted: Vec<(String, Hook)> = p.wanted(&present).into_keys().collect();
        let s = |n: &str, h| (n.to_string(), h);
        assert_eq!(
            wanted,
            vec![
                s("eth0", Hook::HostEgress),
                s("eth0", Hook::Uplink),
                s("eth0", Hook::UplinkIngress),
                s("lo", Hook::HostEgress),
                s("veth1", Hook::PodIngress),
                s("veth1", Hook::HostEgress)
            ]
        );
        // tc mode: no XDP; the uplink's tc ingress runs the whole datapath.
        let tc = Placement { xdp_mode: XdpMode::Tc, ..p.clone() };
        assert!(!tc.wanted(&present).contains_key(&s("eth0", Hook::Uplink)));
        assert!(tc.wanted(&present).contains_key(&s("eth0", Hook::UplinkIngress)));
        assert_eq!(Hook::UplinkIngress.program(true), super::names::PROG_POD_INGRESS);
        assert_eq!(Hook::UplinkIngress.program(false), super::names::PROG_UPLINK_DELIVER);
        let none = Placement {
            pods: InterfaceSelector::parse(&[]).unwrap(),
            uplinks: InterfaceSelector::parse(&[]).unwrap(),
            xdp_mode: XdpMode::Auto,
        };
        assert!(none.wanted(&present).is_empty());
    }
}
