//! Flags with kube-proxy's names and meanings, shared by `lb-agent` and `lbctl trace` (the
//! trace must decide exactly as the agent would).

/// kube-proxy's proxy-mode flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ProxyFlags {
    /// The node name (default: the host name), as kube-proxy's flag: endpoints whose nodeName
    /// equals it are local.
    #[arg(long)]
    pub hostname_override: Option<String>,

    /// The cluster's pod CIDR (kube-proxy's flag): sources inside it are pods. Accepted; used
    /// by masquerading, which is not implemented yet.
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,

    /// Masquerade all service traffic (kube-proxy's flag). Accepted; not implemented yet.
    #[arg(long)]
    pub masquerade_all: bool,

    /// NodePort addresses: CIDRs or `primary` (kube-proxy's flag). Accepted; NodePorts are not
    /// implemented yet.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
}

impl ProxyFlags {
    /// The node name: the override, else this machine's host name.
    pub fn node_name(&self) -> String {
        self.hostname_override.clone().unwrap_or_else(crate::trace::default_node_name)
    }

    /// Whether any flag this version accepts without acting on it was given.
    pub fn has_unimplemented(&self) -> bool {
        self.cluster_cidr.is_some() || self.masquerade_all || !self.nodeport_addresses.is_empty()
    }
}
