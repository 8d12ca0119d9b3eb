//! Attaching the pod-facing tc program to the configured interfaces, following interfaces as
//! they come and go (netlink link notifications), and keeping the attachments alive across
//! agent restarts.
//!
//! Each attachment is a TCX bpf_link pinned at `<bpffs>/links/<interface>`: while the pin
//! exists the program stays attached, whether or not an agent runs. A starting agent finds the
//! pin and swaps its freshly loaded program into the existing link (`bpf_link_update`, atomic:
//! no packet is ever without a program), so restarts and upgrades are hitless.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use tracing::{info, warn};

use super::names;

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

/// Loads the pod-facing program into the kernel (once).
pub fn load_pod_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let prog: &mut SchedClassifier =
        ebpf.program_mut(names::PROG_POD_INGRESS).context("program lb_pod_ingress missing")?.try_into()?;
    if prog.fd().is_err() {
        prog.load().context("loading lb_pod_ingress (verifier)")?;
    }
    Ok(prog)
}

/// The interfaces the program is attached to, as pinned links.
pub struct Attacher {
    dir: PathBuf,
    /// interface → ifindex it had when attached.
    attached: BTreeMap<String, u32>,
}

impl Attacher {
    /// Attachments pinned under `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Result<Attacher> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Attacher { dir, attached: BTreeMap::new() })
    }

    fn pin_path(&self, interface: &str) -> PathBuf {
        self.dir.join(pin_name(interface))
    }

    /// Pins a link of ours at the interface's path, atomically replacing an older pin.
    fn pin(&self, prog: &mut SchedClassifier, id: aya::programs::tc::SchedClassifierLinkId, interface: &str) -> Result<()> {
        let link = prog.take_link(id)?;
        let fd: FdLink = link.try_into().context("not a bpf_link (TCX needs Linux 6.6)")?;
        let tmp = self.dir.join(format!("new-{}", pin_name(interface)));
        let _ = std::fs::remove_file(&tmp);
        fd.pin(&tmp).with_context(|| format!("pinning the link of {interface}"))?;
        std::fs::rename(&tmp, self.pin_path(interface)).with_context(|| format!("replacing the pinned link of {interface}"))?;
        Ok(())
    }

    /// Attaches to every matching interface not yet attached (taking over links pinned by an
    /// earlier agent), and forgets vanished interfaces.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf, selector: &InterfaceSelector) -> Result<()> {
        let prog = load_pod_program(ebpf)?;
        let present: BTreeMap<String, u32> = interfaces().into_iter().filter(|(n, _)| selector.matches(n)).collect();

        let stale: Vec<String> =
            self.attached.iter().filter(|(n, idx)| present.get(*n) != Some(idx)).map(|(n, _)| n.clone()).collect();
        for name in stale {
            // The interface is gone or was replaced: the kernel detached its link.
            self.attached.remove(&name);
            let _ = std::fs::remove_file(self.pin_path(&name));
            info!(interface = %name, "interface gone, forgotten");
        }

        for (name, idx) in present {
            if self.attached.contains_key(&name) {
                continue;
            }
            match self.attach_one(prog, &name) {
                Ok(how) => {
                    info!(interface = %name, ifindex = idx, "{how} lb_pod_ingress (tcx ingress)");
                    self.attached.insert(name, idx);
                }
                Err(e) => warn!(interface = %name, "attach failed: {e:#}"),
            }
        }
        Ok(())
    }

    fn attach_one(&self, prog: &mut SchedClassifier, name: &str) -> Result<&'static str> {
        let path = self.pin_path(name);
        if let Ok(old) = PinnedLink::from_pin(&path) {
            // An earlier agent's link: swap our program in atomically.
            let link = FdLink::from(old).try_into().context("pinned link is not a tc link")?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    self.pin(prog, id, name)?;
                    return Ok("took over the pinned link and swapped in");
                }
                // A link of a deleted interface (defunct): replace it with a fresh attachment.
                Err(e) => {
                    warn!(interface = %name, "pinned link unusable ({e}); attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = prog.attach(name, TcAttachType::Ingress)?;
        self.pin(prog, id, name)?;
        Ok("attached")
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Detaches from every interface (unpinning the links releases them).
    pub fn detach_all(&mut self) {
        for name in std::mem::take(&mut self.attached).into_keys() {
            if let Err(e) = std::fs::remove_file(self.pin_path(&name)) {
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
    fn pin_names_have_no_dots() {
        assert_eq!(super::pin_name("veth1"), "veth1");
        assert_eq!(super::pin_name("eth0.100"), "eth0%2e100");
        assert_eq!(super::pin_name("a%b"), "a%25b");
    }
}
