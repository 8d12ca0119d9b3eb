//! The packet access the datapath needs, over both program types: tc (`__sk_buff`) and XDP.
//!
//! Bounds-checked pointers ([`ptr_at`], [`ptr_at_mut`]) for reading and writing headers, an L4
//! checksum update, and resizing at the tail (for REJECT replies). tc uses the kernel's
//! `bpf_l4_csum_replace`, which also handles CHECKSUM_PARTIAL skbs (locally generated
//! traffic, where the field holds only the pseudo-header sum); XDP frames come from the wire
//! with complete checksums, updated here with RFC 1624 (`lb_common::csum`).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_level, bpf_skb_change_tail, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::csum;

pub trait Frame: EbpfContext {
    /// An XDP frame (else a tc skb).
    const XDP: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length (linear and paged).
    fn len(&self) -> u32;
    /// The interface the program runs on (XDP, tc ingress: where the packet came in; tc
    /// egress: where it leaves).
    fn ifindex(&self) -> u32;
    /// Makes the first `len` bytes linear (tc only; XDP frames are linear).
    fn pull(&self, len: u32);
    /// Updates the L4 checksum at `check_off` for a 4-byte (`size == 4`) or 2-byte field that
    /// changed from `from` to `to` (map representation). `pseudo`: the field is part of the
    /// pseudo-header (an address). `udp`: a zero checksum means none and stays zero.
    fn l4_csum_replace(&self, check_off: usize, from: u32, to: u32, size: u8, pseudo: bool, udp: bool) -> Result<(), ()>;
    /// Makes the frame hold `len` bytes for a new packet of that length: tc resizes the skb to
    /// exactly `len`; XDP only grows a shorter frame and otherwise leaves the extra bytes as
    /// trailing padding (the frame goes to the kernel, which trims it to the IPv4 total length:
    /// native XDP on veth loses frames shrunk with bpf_xdp_adjust_tail when they are backed by
    /// a locally generated skb).
    fn set_len(&self, len: u32) -> Result<(), ()>;
    /// Tells the stack the checksums are in the packet (after building a new one).
    fn csum_reset(&self);
}

/// A pointer to a `T` at `off`, if the whole `T` lies inside the packet's linear data.
#[inline(always)]
pub fn ptr_at<F: Frame, T>(f: &F, off: usize) -> Option<*const T> {
    ptr_at_mut(f, off).map(|p| p as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<F: Frame, T>(f: &F, off: usize) -> Option<*mut T> {
    let start = f.data();
    let end = f.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Writes `v` at `off` (bounds-checked; both program types allow direct packet writes).
#[inline(always)]
pub fn store<F: Frame, T: Copy>(f: &F, off: usize, v: T) -> Result<(), ()> {
    let p = ptr_at_mut::<F, T>(f, off).ok_or(())?;
    // SAFETY: ptr_at_mut checked the bounds; packet data has no alignment guarantee.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

#[inline(always)]
pub fn load<F: Frame, T: Copy>(f: &F, off: usize) -> Option<T> {
    let p = ptr_at::<F, T>(f, off)?;
    // SAFETY: ptr_at checked the bounds.
    Some(unsafe { p.read_unaligned() })
}

const BPF_CSUM_LEVEL_RESET: u64 = 3;

impl Frame for TcContext {
    const XDP: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading the program's own skb.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn pull(&self, len: u32) {
        let _ = self.pull_data(len);
    }
    #[inline(always)]
    fn l4_csum_replace(&self, check_off: usize, from: u32, to: u32, size: u8, pseudo: bool, udp: bool) -> Result<(), ()> {
        let mut flags = size as u64;
        if pseudo {
            flags |= BPF_F_PSEUDO_HDR as u64;
        }
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        TcContext::l4_csum_replace(self, check_off, from as u64, to as u64, flags).map_err(|_| ())
    }
    #[inline(always)]
    fn set_len(&self, len: u32) -> Result<(), ()> {
        // SAFETY: the context pointer is the program's own skb.
        let rc = unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) };
        if rc != 0 {
            return Err(());
        }
        self.pull(len);
        Ok(())
    }
    #[inline(always)]
    fn csum_reset(&self) {
        // SAFETY: as above.
        unsafe { bpf_csum_level(self.skb.skb, BPF_CSUM_LEVEL_RESET) };
    }
}

impl Frame for XdpContext {
    const XDP: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading the program's own xdp_md.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn pull(&self, _len: u32) {}
    #[inline(always)]
    fn l4_csum_replace(&self, check_off: usize, from: u32, to: u32, size: u8, _pseudo: bool, udp: bool) -> Result<(), ()> {
        let old: u16 = u16::from_be(load(self, check_off).ok_or(())?);
        if udp && old == 0 {
            return Ok(());
        }
        let mut new = if size == 4 {
            csum::update32(old, from.to_ne_bytes(), to.to_ne_bytes())
        } else {
            csum::update16(old, u16::from_be(from as u16), u16::from_be(to as u16))
        };
        if udp && new == 0 {
            new = 0xffff;
        }
        store(self, check_off, new.to_be())
    }
    #[inline(always)]
    fn set_len(&self, len: u32) -> Result<(), ()> {
        let delta = len as i32 - Frame::len(self) as i32;
        if delta <= 0 {
            return Ok(());
        }
        // SAFETY: the context pointer is the program's own xdp_md.
        let rc = unsafe { bpf_xdp_adjust_tail(self.ctx, delta) };
        if rc != 0 {
            return Err(());
        }
        Ok(())
    }
    #[inline(always)]
    fn csum_reset(&self) {}
}
