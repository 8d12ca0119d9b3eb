//! Building and reading Ethernet/IPv4/L4 frames (for `lbctl trace` and the packet tests).
//! TCP and UDP go through etherparse, so their checksums come from an implementation
//! independent of ours; SCTP (which etherparse does not build) gets its CRC32c from the `crc`
//! crate.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::model::Protocol;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A new-flow frame: a TCP SYN, or a UDP/SCTP datagram carrying `payload`.
pub fn build(proto: Protocol, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4(src.octets(), dst.octets(), 64);
    let mut out = Vec::new();
    match proto {
        Protocol::Tcp => {
            let b = b.tcp(sport, dport, 1000, 64240).syn();
            b.write(&mut out, payload).expect("writing to a Vec");
        }
        Protocol::Udp => {
            let b = b.udp(sport, dport);
            b.write(&mut out, payload).expect("writing to a Vec");
        }
        Protocol::Sctp => {
            let mut sctp = Vec::with_capacity(12 + payload.len());
            sctp.extend_from_slice(&sport.to_be_bytes());
            sctp.extend_from_slice(&dport.to_be_bytes());
            sctp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            sctp.extend_from_slice(&[0; 4]);
            sctp.extend_from_slice(payload);
            let crc = sctp_crc32c(&sctp);
            sctp[8..12].copy_from_slice(&crc.to_le_bytes());
            let ip = etherparse::Ipv4Header::new(sctp.len() as u16, 64, etherparse::IpNumber(132), src.octets(), dst.octets())
                .expect("payload fits");
            let eth =
                etherparse::Ethernet2Header { source: SRC_MAC, destination: DST_MAC, ether_type: etherparse::EtherType::IPV4 };
            eth.write(&mut out).expect("writing to a Vec");
            ip.write(&mut out).expect("writing to a Vec");
            out.extend_from_slice(&sctp);
        }
    }
    out
}

/// SCTP's CRC32c (RFC 4960 appendix B), stored little-endian in the common header.
pub fn sctp_crc32c(packet: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(packet)
}

/// The addresses, ports and checksum validity of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSummary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub ip_checksum_ok: bool,
    pub l4_checksum_ok: bool,
}

/// Reads a frame back and verifies its checksums independently (etherparse recomputes them).
pub fn summarize(frame: &[u8]) -> Result<FrameSummary> {
    let sliced = SlicedPacket::from_ethernet(frame)?;
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { bail!("not IPv4") };
    let hdr = ip.header().to_header();
    let ip_checksum_ok = hdr.calc_header_checksum() == hdr.header_checksum;
    let src = Ipv4Addr::from(hdr.source);
    let dst = Ipv4Addr::from(hdr.destination);
    let payload = ip.payload().payload;
    let (sport, dport, l4_checksum_ok) = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let ok = h.calc_checksum_ipv4(&hdr, t.payload())? == h.checksum;
            (h.source_port, h.destination_port, ok)
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let ok = h.checksum == 0 || h.calc_checksum_ipv4(&hdr, u.payload())? == h.checksum;
            (h.source_port, h.destination_port, ok)
        }
        _ if hdr.protocol.0 == 132 && payload.len() >= 12 => {
            let mut copy = payload.to_vec();
            let stored = u32::from_le_bytes([copy[8], copy[9], copy[10], copy[11]]);
            copy[8..12].copy_from_slice(&[0; 4]);
            (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
                sctp_crc32c(&copy) == stored,
            )
        }
        _ => bail!("no TCP/UDP/SCTP header"),
    };
    Ok(FrameSummary { src, dst, sport, dport, ip_checksum_ok, l4_checksum_ok })
}

/// Whether a frame is an ICMP destination-unreachable / port-unreachable with valid IPv4 and
/// ICMP checksums (what a REJECT sends).
pub fn is_port_unreachable(frame: &[u8]) -> bool {
    let Ok(sliced) = SlicedPacket::from_ethernet(frame) else { return false };
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { return false };
    let hdr = ip.header().to_header();
    if hdr.calc_header_checksum() != hdr.header_checksum || hdr.protocol.0 != 1 {
        return false;
    }
    let icmp = ip.payload().payload;
    icmp.len() >= 8 && icmp[0] == 3 && icmp[1] == 3 && lb_common::csum::checksum(icmp, 0) == 0
}
