//! `lb-baseline`: loads kube-proxy-shaped rule sets (iptables-nft, iptables-legacy, nftables;
//! see lb_tests::baseline) for N services × E endpoints into a scratch network namespace and
//! prints each backend's load time as JSON (`{"iptables-nft": seconds, ...}`). lb-bench runs it
//! at each sweep point, so the baselines are measured in the same run as our datapath.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::Parser;
use lb_tests::baseline::{flush, load, synthetic, Backend, ScratchNetns};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    services: usize,
    #[arg(long)]
    endpoints: usize,
    /// Backends to load: iptables-nft, iptables-legacy, nftables.
    #[arg(long, value_delimiter = ',', default_value = "iptables-nft,iptables-legacy,nftables")]
    backends: Vec<String>,
}

fn backend(name: &str) -> Option<Backend> {
    match name {
        "iptables-nft" => Some(Backend::IptablesNft),
        "iptables-legacy" => Some(Backend::IptablesLegacy),
        "nftables" => Some(Backend::Nftables),
        _ => None,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let netns = ScratchNetns::create("lb-bench-bl")?;
    let set = synthetic(args.services, args.endpoints);
    let mut out = BTreeMap::new();
    for name in &args.backends {
        let b = backend(name).ok_or_else(|| anyhow::anyhow!("unknown backend {name}"))?;
        let rules = b.rules(&set, set.len().saturating_sub(1), true);
        let took = load(netns.name(), b, &rules)?;
        flush(netns.name(), b)?;
        out.insert(name.clone(), took.as_secs_f64());
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
