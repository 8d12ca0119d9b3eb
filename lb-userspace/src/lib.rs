//! The node agent (`lb-agent`) and operator CLI (`lbctl`) of the eBPF service load balancer.
//!
//! - [`manifests`]: Kubernetes YAML/JSON files → typed objects.
//! - [`model`]: pure translation of Services/EndpointSlices into the desired datapath state
//!   (SEMANTICS.md is the spec).
//! - [`dataplane`]: the eBPF object, its maps, the single map writer, interface attachment
//!   and pinning.
//! - [`trace`]: runs the real programs on a crafted packet (BPF_PROG_TEST_RUN).
//! - [`files`]: the manifest directory watcher.
//! - [`healthcheck`]: the healthCheckNodePort HTTP servers (SEMANTICS J1).

pub mod bench;
pub mod config;
pub mod dataplane;
pub mod files;
pub mod healthcheck;
pub mod http;
pub mod incremental;
pub mod manifests;
pub mod model;
pub mod packet;
pub mod source;
pub mod sync;
#[cfg(test)]
mod testutil;
pub mod trace;

/// Installs the tracing subscriber (RUST_LOG, default `info`) writing to stderr.
pub fn init_logging(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
