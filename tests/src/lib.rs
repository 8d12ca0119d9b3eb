//! Test infrastructure shared by the end-to-end tests and `cargo xtask demo`: network
//! namespace topologies, the `lb-echo` backend, traffic clients, the agent process, a fake
//! Kubernetes API server.

pub mod agent;
pub mod baseline;
pub mod bulk;
pub mod client;
pub mod cluster;
pub mod datagram;
pub mod fakeapi;
pub mod netbench;
pub mod netns;
pub mod privileges;
pub mod topo;
pub mod wait;
