//! Types and pure functions shared by the eBPF programs (`lb-ebpf`) and user space
//! (`lb-userspace`, `lbctl`, tests).
//!
//! Everything here is `no_std`, allocation-free unless the `std` feature is on, and every map
//! key/value is `#[repr(C)]` + [`bytemuck::Pod`] with its layout pinned by tests, so both sides
//! agree on the bytes.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod crc32c;
pub mod csum;
pub mod flow;
pub mod hash;
pub mod icmp;
#[cfg(feature = "std")]
pub mod maglev;
pub mod maps;
pub mod pktgen;
pub mod policy;

pub use maps::*;
