//! REJECT: turn the packet into an ICMP port unreachable addressed back to its sender
//! (SEMANTICS E1), built by `lb_common::icmp` and sent back by the caller: tc redirects it
//! out of the interface it came in on (Ethernet addresses swapped); XDP hands it to the kernel,
//! which routes it to the client like any forwarded packet (Ethernet addresses kept, so the
//! frame is still addressed to this node). XDP_TX is not used: native XDP on veth loses
//! XDP_TX frames built from locally generated skbs, and routing also serves asymmetric paths.

use lb_common::icmp::{self, ORIG_LEN, REPLY_LEN};

use crate::{
    frame::{load, store, Frame},
    parse::{Ipv4Packet, ETH_HLEN},
};

/// Rewrites the frame in place into the reply (Ethernet addresses swapped if `swap_macs`). Err
/// when the packet has IP options (not answered: the caller drops it) or a helper failed.
#[inline(always)]
pub fn build<F: Frame>(f: &F, pkt: &Ipv4Packet, swap_macs: bool) -> Result<(), ()> {
    if pkt.l4_off != ETH_HLEN + 20 {
        return Err(());
    }
    let macs: [u8; 12] = load(f, 0).ok_or(())?;
    let orig: [u8; ORIG_LEN] = load(f, ETH_HLEN).ok_or(())?;
    let reply = icmp::port_unreachable(&orig);
    f.set_len((ETH_HLEN + REPLY_LEN) as u32)?;
    let mut eth = [0u8; ETH_HLEN];
    if swap_macs {
        eth[..6].copy_from_slice(&macs[6..12]);
        eth[6..12].copy_from_slice(&macs[..6]);
    } else {
        eth[..12].copy_from_slice(&macs);
    }
    eth[12] = 0x08;
    store(f, 0, eth)?;
    store(f, ETH_HLEN, reply)?;
    f.csum_reset();
    Ok(())
}
