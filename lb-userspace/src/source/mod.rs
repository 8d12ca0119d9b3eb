//! Where the agent's objects come from besides manifest files ([`crate::files`]).
//!
//! - [`kube`]: the Kubernetes API server (list + watch, as kube-proxy's informers).

pub mod kube;
