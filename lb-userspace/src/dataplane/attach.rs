//! Attaching the pod-facing tc program to the configured interfaces, and following
//! interfaces as they come and go (netlink link notifications).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::{
    programs::{tc::SchedClassifierLinkId, SchedClassifier, TcAttachType},
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

/// Loads the pod-facing program into the kernel (once).
pub fn load_pod_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let prog: &mut SchedClassifier =
        ebpf.program_mut(names::PROG_POD_INGRESS).context("program lb_pod_ingress missing")?.try_into()?;
    if prog.fd().is_err() {
        prog.load().context("loading lb_pod_ingress (verifier)")?;
    }
    Ok(prog)
}

/// The interfaces the program is attached to.
#[derive(Default)]
pub struct Attacher {
    attached: BTreeMap<String, (u32, SchedClassifierLinkId)>,
}

impl Attacher {
    /// Attaches to every matching interface not yet attached, forgets vanished ones.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf, selector: &InterfaceSelector) -> Result<()> {
        let prog = load_pod_program(ebpf)?;
        let present: BTreeMap<String, u32> = interfaces().into_iter().filter(|(n, _)| selector.matches(n)).collect();
        let stale: Vec<String> =
            self.attached.iter().filter(|(n, (idx, _))| present.get(*n) != Some(idx)).map(|(n, _)| n.clone()).collect();
        for name in stale {
            if let Some((_, link)) = self.attached.remove(&name) {
                // The interface is gone (or was replaced): its link went with it.
                let _ = prog.detach(link);
                info!(interface = %name, "interface gone, forgotten");
            }
        }
        for (name, idx) in present {
            if self.attached.contains_key(&name) {
                continue;
            }
            match prog.attach(&name, TcAttachType::Ingress) {
                Ok(link) => {
                    info!(interface = %name, ifindex = idx, "attached lb_pod_ingress (tc ingress)");
                    self.attached.insert(name, (idx, link));
                }
                Err(e) => warn!(interface = %name, "attach failed: {e}"),
            }
        }
        Ok(())
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let Ok(prog) = load_pod_program(ebpf) else { return };
        for (name, (_, link)) in std::mem::take(&mut self.attached) {
            if let Err(e) = prog.detach(link) {
                warn!(interface = %name, "detach: {e}");
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
