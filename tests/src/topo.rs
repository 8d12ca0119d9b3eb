//! A node with pods, wired like Calico: each pod has a /32 on `eth0` with a default route via
//! the link-local gateway 169.254.1.1 (an address of the node namespace), and the node routes
//! each pod's /32 to the pod's host-side veth. Service traffic therefore crosses the node's
//! routing, where the agent's tc programs sit on the host-side veths.

use std::{
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::{ip, ip_netns, sysctl_in};

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub host_if: String,
}

pub struct Topology {
    pub tag: String,
    pub node_netns: String,
    pub pods: Vec<Pod>,
    children: Vec<Child>,
    namespaces: Vec<String>,
}

/// The lb-echo binary: env `LB_ECHO_BIN`, else next to the project's other binaries.
pub fn echo_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_ECHO_BIN") {
        return PathBuf::from(p);
    }
    crate::agent::bin_dir().join("lb-echo")
}

fn delete_netns_with_prefix(prefix: &str) {
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(prefix) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

impl Topology {
    /// Creates the node namespace `lb-{tag}-node` and one namespace per pod. `tag` keeps
    /// parallel tests apart (≤ 5 characters: interface names are limited to 15).
    pub fn create(tag: &str, pods: &[PodSpec]) -> Result<Topology> {
        assert!(tag.len() <= 5, "tag too long");
        delete_netns_with_prefix(&format!("lb-{tag}-"));
        let node = format!("lb-{tag}-node");
        ip(&["netns", "add", &node])?;
        let mut topo = Topology {
            tag: tag.into(),
            node_netns: node.clone(),
            pods: Vec::new(),
            children: Vec::new(),
            namespaces: vec![node.clone()],
        };
        ip_netns(&node, &["link", "set", "lo", "up"])?;
        ip_netns(&node, &["addr", "add", "169.254.1.1/32", "dev", "lo"])?;
        sysctl_in(&node, "net.ipv4.ip_forward", "1")?;
        sysctl_in(&node, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl_in(&node, "net.ipv4.conf.default.rp_filter", "0")?;
        for spec in pods {
            topo.add_pod(spec)?;
        }
        Ok(topo)
    }

    /// Wires one more pod (also after the agent started: it must attach to it).
    pub fn add_pod(&mut self, spec: &PodSpec) -> Result<()> {
        let i = self.pods.len();
        let ns = format!("lb-{}-{}", self.tag, spec.name);
        let host_if = format!("lb{}h{}", self.tag, i);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &host_if, "netns", &self.node_netns, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        let addr = format!("{}/32", spec.ip);
        ip_netns(&ns, &["link", "set", "lo", "up"])?;
        ip_netns(&ns, &["link", "set", "eth0", "up"])?;
        ip_netns(&ns, &["addr", "add", &addr, "dev", "eth0"])?;
        ip_netns(&ns, &["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        ip_netns(&ns, &["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
        let _ = sysctl_in(&ns, "net.ipv6.conf.eth0.disable_ipv6", "1");
        ip_netns(&self.node_netns, &["link", "set", &host_if, "up"])?;
        ip_netns(&self.node_netns, &["route", "add", &addr, "dev", &host_if])?;
        sysctl_in(&self.node_netns, &format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
        let _ = sysctl_in(&self.node_netns, &format!("net.ipv6.conf.{host_if}.disable_ipv6"), "1");
        self.pods.push(Pod { name: spec.name.clone(), netns: ns, ip: spec.ip, host_if });
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// A glob matching every host-side veth of this topology.
    pub fn host_if_pattern(&self) -> String {
        format!("lb{}h*", self.tag)
    }

    /// Starts `program` in `netns`; killed when the topology is dropped.
    pub fn spawn_in(&mut self, netns: &str, program: &Path, args: &[&str]) -> Result<&mut Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} in {netns}", program.display()))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    /// Starts lb-echo (answering `name`) in a pod and waits until it is listening.
    pub fn spawn_echo(&mut self, pod: &str, name: &str, tcp: u16, udp: u16) -> Result<()> {
        self.spawn_echo_with(pod, name, tcp, udp, &[])
    }

    /// As [`Topology::spawn_echo`], with more lb-echo arguments (e.g. `--report-peer`).
    pub fn spawn_echo_with(&mut self, pod: &str, name: &str, tcp: u16, udp: u16, extra: &[&str]) -> Result<()> {
        let ns = self.pod(pod).netns.clone();
        let (tcp, udp) = (tcp.to_string(), udp.to_string());
        let mut args = vec!["--name", name, "--tcp", &tcp, "--udp", &udp];
        args.extend_from_slice(extra);
        let child = self.spawn_in(&ns, &echo_binary(), &args)?;
        let stdout = child.stdout.take().context("echo stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = matches!(lines.next(), Some(Ok(l)) if l.trim() == "ready");
            let _ = tx.send(ready);
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(true) => Ok(()),
            _ => bail!("lb-echo in {ns} did not become ready ({})", echo_binary().display()),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
