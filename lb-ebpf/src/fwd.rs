//! Delivery: a translated packet is sent on by the datapath itself instead of being handed
//! back to the kernel's stack (no second routing decision, no netfilter, no second pass
//! through our own egress program).
//!
//! The next hop comes from the kernel's FIB (`bpf_fib_lookup`, the same routes and neighbours
//! the stack would use); then, by hook:
//!
//! | hook | next hop is a pod on this node | anything else |
//! |---|---|---|
//! | tc ingress (pod veths, uplinks in tc mode, XDP hand-offs) | `bpf_redirect_peer` into the pod | `bpf_redirect` out of the interface (MACs from the FIB) |
//! | tc egress (the node's own packets) | `bpf_redirect` | `bpf_redirect` (or on, if it already leaves the right way) |
//! | XDP (uplinks) | handed to the uplink's tc ingress (XDP metadata) | `XDP_TX` when it leaves where it came in |
//!
//! An unresolved neighbour goes out with `bpf_redirect_neigh` (the kernel resolves it). The
//! stack gets the packet only where a redirect cannot be right, each case counted: no route
//! (`StackNoRoute`), over the egress MTU (`StackMtu`: the stack fragments or answers
//! "fragmentation needed"), addressed to this node (`StackLocal`), TTL expiring (`StackTtl`).
//! Forwarded packets get their TTL decremented and header checksum updated here, as the stack
//! would.
//!
//! A tracked flow caches its next hop in its conntrack entry ([`flow_hop`]): the FIB is asked
//! again once a second (with the entry's refresh), and whenever the packet does not fit the
//! cached interface's MTU (`bpf_check_mtu`), so route and neighbour changes take effect within
//! a second and the stack still sees every packet that is too big.
//!
//! Only [`Query::new`] and [`decrement_ttl`] know the address family; the rest is written
//! once for both.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh,
        xdp_action::{XDP_PASS, XDP_TX},
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_check_mtu, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
};
use lb_common::{csum, iface_flags, iface_slot, xdp_meta, Counter, CtEntry, MARK_DELIVERED};

use crate::{
    frame::{load, store, Frame},
    maps::LB_IFACES,
    parse::ETH_HLEN,
    stats::Stats,
};

const AF_INET: u8 = 2;
const LOOPBACK_IFINDEX: u32 = 1;
const IP_TTL_OFF: usize = ETH_HLEN + 8;
const IP_CHECK_OFF: usize = ETH_HLEN + 10;

/// Where a translated packet goes: its addresses after translation.
#[derive(Clone, Copy)]
pub struct Fwd {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// The IP packet's length (the XDP MTU check; tc lets the kernel check the skb).
    pub tot_len: u16,
    /// The flow's next hop ([`flow_hop`]); [`Hop::UNKNOWN`] if not known (the delivery asks
    /// the FIB). Never an `Option`: every byte is always initialised (LLVM may otherwise copy an
    /// uninitialised payload, which the verifier refuses).
    pub hop: Hop,
}

/// How the packet reached the program that delivers it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Received from a pod or the network: forwarded, so the TTL is decremented.
    Forwarded,
    /// Sent by this node (a host process, or a reply the datapath built): TTL left as it is.
    Local,
}

/// A next hop: egress interface and the MACs to write.
#[derive(Clone, Copy)]
pub struct Hop {
    ifindex: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
}

impl Hop {
    pub const UNKNOWN: Hop = Hop { ifindex: 0, dmac: [0; 6], smac: [0; 6] };
}

impl Fwd {
    /// Filled in by `lb::process` for a translated packet (every byte initialised up front).
    pub const EMPTY: Fwd = Fwd { saddr: 0, daddr: 0, proto: 0, tot_len: 0, hop: Hop::UNKNOWN };
}

/// The next hop of a tracked flow, for a packet translated to `fwd`'s addresses: the one cached
/// in its conntrack entry `e` (see `lb_common::CtEntry::hop_ifindex`) while fresh and while the
/// packet fits that interface's MTU; otherwise the FIB's, stored in the entry when resolved.
/// [`Hop::UNKNOWN`]: the FIB did not resolve it (the delivery asks again and acts on why).
///
/// A separate BPF function: its FIB query gets its own stack frame.
#[inline(never)]
pub fn flow_hop<F: Frame>(f: &F, e: *mut CtEntry, refresh_due: bool, fwd: &Fwd) -> Hop {
    // SAFETY: a conntrack map value pointer, valid for the program's run; concurrent writers
    // store the same FIB answer.
    let entry = unsafe { &mut *e };
    if entry.hop_ifindex != 0 && !refresh_due {
        let mut mtu = 0u32;
        // SAFETY: the program's own context; `mtu` outlives the call. For an skb the check is
        // GSO-aware (a GRO-merged skb fits if its segments do).
        if unsafe { bpf_check_mtu(f.as_ptr(), entry.hop_ifindex, &mut mtu, 0, 0) } == 0 {
            return Hop { ifindex: entry.hop_ifindex, dmac: entry.hop_dmac, smac: entry.hop_smac };
        }
        return Hop::UNKNOWN;
    }
    let mut q = Query::of(f, fwd);
    if q.run(f) != BPF_FIB_LKUP_RET_SUCCESS {
        return Hop::UNKNOWN;
    }
    let hop = q.hop();
    entry.hop_ifindex = hop.ifindex;
    entry.hop_dmac = hop.dmac;
    entry.hop_smac = hop.smac;
    hop
}

/// The FIB query for a packet's addresses.
struct Query(bpf_fib_lookup);

impl Query {
    /// `tot_len` 0 lets the kernel check the skb against the egress MTU itself (GSO-aware:
    /// a GRO-merged skb is not "too big"); XDP frames pass their IP length.
    #[inline(always)]
    fn new(fwd: &Fwd, ifindex: u32, tot_len: u16) -> Query {
        // SAFETY: all-zero is a valid bpf_fib_lookup.
        let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        p.family = AF_INET;
        p.l4_protocol = fwd.proto;
        p.__bindgen_anon_1.tot_len = tot_len;
        p.ifindex = ifindex;
        p.__bindgen_anon_3.ipv4_src = fwd.saddr;
        p.__bindgen_anon_4.ipv4_dst = fwd.daddr;
        Query(p)
    }

    /// The query for a translated packet on frame `f`: from the interface the program runs
    /// on; XDP passes its IP length (the MTU check), tc lets the kernel check the skb.
    #[inline(always)]
    fn of<F: Frame>(f: &F, fwd: &Fwd) -> Query {
        Query::new(fwd, f.ifindex(), if F::XDP { fwd.tot_len } else { 0 })
    }

    /// The resolved next hop (after a successful lookup).
    #[inline(always)]
    fn hop(&self) -> Hop {
        Hop { ifindex: self.0.ifindex, dmac: self.0.dmac, smac: self.0.smac }
    }

    /// A forwarding lookup (`ifindex` is where the packet comes from): an output lookup bound
    /// to the egress interface would miss routes through other interfaces (a local pod's /32).
    #[inline(always)]
    fn run<F: Frame>(&mut self, f: &F) -> u32 {
        // SAFETY: the context is the program's own; params is a valid, fully sized struct.
        unsafe {
            aya_ebpf::helpers::bpf_fib_lookup(f.as_ptr(), &mut self.0, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) as u32
        }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ifindex
    }

    /// The unresolved next hop, for `bpf_redirect_neigh` (the FIB put the gateway, if any,
    /// into the destination).
    #[inline(always)]
    fn neigh(&self) -> bpf_redir_neigh {
        // SAFETY: all-zero is a valid bpf_redir_neigh.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = AF_INET as u32;
        // SAFETY: an IPv4 lookup filled the IPv4 member.
        nh.__bindgen_anon_1.ipv4_nh = unsafe { self.0.__bindgen_anon_4.ipv4_dst };
        nh
    }
}

/// Decrements the IPv4 TTL with the header checksum (RFC 1624); false if the TTL expires here
/// (the stack then answers "time exceeded").
#[inline(always)]
fn decrement_ttl<F: Frame>(f: &F) -> Result<bool, ()> {
    let word: [u8; 2] = load(f, IP_TTL_OFF).ok_or(())?;
    if word[0] <= 1 {
        return Ok(false);
    }
    let check: u16 = load(f, IP_CHECK_OFF).ok_or(())?;
    let old = u16::from_be_bytes(word);
    let new = old - 0x0100;
    store(f, IP_TTL_OFF, new.to_be_bytes())?;
    store(f, IP_CHECK_OFF, csum::update16(u16::from_be(check), old, new).to_be())?;
    Ok(true)
}

/// What the FIB said, reduced to what every hook acts on.
enum NextHop {
    /// Next hop resolved; MACs written (and TTL decremented when forwarded).
    Resolved(u32),
    /// Egress interface known, neighbour unresolved (TTL decremented when forwarded).
    Unresolved(u32, bpf_redir_neigh),
    /// This node is the destination.
    Local,
    /// The stack must handle it (counted).
    Stack,
}

#[inline(always)]
fn next_hop<F: Frame>(f: &F, st: &Stats, fwd: &Fwd, origin: Origin) -> NextHop {
    // The flow's next hop, else the FIB's.
    let hop = match fwd.hop {
        h if h.ifindex != 0 => h,
        _ => {
            let mut q = Query::of(f, fwd);
            match q.run(f) {
                BPF_FIB_LKUP_RET_SUCCESS => q.hop(),
                BPF_FIB_LKUP_RET_NO_NEIGH => {
                    if origin == Origin::Forwarded && decrement_ttl(f) != Ok(true) {
                        st.inc(Counter::StackTtl);
                        return NextHop::Stack;
                    }
                    return NextHop::Unresolved(q.ifindex(), q.neigh());
                }
                BPF_FIB_LKUP_RET_NOT_FWDED => return NextHop::Local,
                BPF_FIB_LKUP_RET_FRAG_NEEDED => {
                    st.inc(Counter::StackMtu);
                    return NextHop::Stack;
                }
                _ => {
                    st.inc(Counter::StackNoRoute);
                    return NextHop::Stack;
                }
            }
        }
    };
    if origin == Origin::Forwarded && decrement_ttl(f) != Ok(true) {
        st.inc(Counter::StackTtl);
        return NextHop::Stack;
    }
    if store(f, 0, hop.dmac).is_err() || store(f, 6, hop.smac).is_err() {
        return NextHop::Stack;
    }
    NextHop::Resolved(hop.ifindex)
}

/// What the agent said about interface `ifindex` (`lb_common::iface_flags`; 0: nothing).
#[inline(always)]
fn iface(ifindex: u32) -> u32 {
    match LB_IFACES.get(iface_slot(ifindex)) {
        Some(e) if e.ifindex == ifindex => e.flags,
        _ => 0,
    }
}

/// Marks a packet about to be redirected to `flags`' interface for our egress program there.
#[inline(always)]
fn mark_for(ctx: &TcContext, flags: u32) {
    if flags & iface_flags::MANAGED != 0 {
        ctx.set_mark(MARK_DELIVERED);
    }
}

/// Which tc hook delivers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

/// Delivers a translated packet from a tc program.
/// (A separate BPF function, as [`xdp`]: its FIB query does not share a stack frame with the
/// new-flow path's; the verifier limits the stack of a whole call chain.)
#[inline(never)]
pub fn tc(ctx: &TcContext, st: &Stats, fwd: &Fwd, hook: TcHook, origin: Origin) -> i32 {
    let fwd = *fwd;
    match next_hop(ctx, st, &fwd, origin) {
        NextHop::Resolved(ifindex) => {
            let flags = iface(ifindex);
            if hook == TcHook::Ingress && flags & iface_flags::POD_VETH != 0 {
                st.inc(Counter::FwdPeer);
                // SAFETY: no preconditions (a tc ingress program; the target is a veth).
                return unsafe { bpf_redirect_peer(ifindex, 0) as i32 };
            }
            st.inc(Counter::FwdRedirect);
            if hook == TcHook::Egress && ifindex == ctx.ifindex() {
                // Already on its way out of the right interface.
                return TC_ACT_OK as i32;
            }
            mark_for(ctx, flags);
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        NextHop::Unresolved(ifindex, mut nh) => {
            st.inc(Counter::FwdNeigh);
            mark_for(ctx, iface(ifindex));
            // SAFETY: nh is a valid bpf_redir_neigh for the call.
            unsafe { bpf_redirect_neigh(ifindex, &mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
        }
        NextHop::Local if hook == TcHook::Egress => {
            // A host-network backend or client on this node: delivered through the loopback's
            // ingress, whose (all-zero) MAC makes it PACKET_HOST there.
            st.inc(Counter::StackLocal);
            if store(ctx, 0, [0u8; 6]).is_err() {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: no preconditions.
            unsafe { bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS as u64) as i32 }
        }
        NextHop::Local => {
            st.inc(Counter::StackLocal);
            TC_ACT_OK as i32
        }
        NextHop::Stack => TC_ACT_OK as i32,
    }
}

/// Delivers a translated packet from the uplink's XDP program: out of the same uplink with
/// XDP_TX; to anywhere else through the uplink's tc ingress program (see [`hand_to_tc`]).
#[inline(never)]
pub fn xdp(ctx: &XdpContext, st: &Stats, fwd: &Fwd) -> u32 {
    let fwd = *fwd;
    let ingress = ctx.ifindex();
    let hop = match fwd.hop {
        h if h.ifindex != 0 => h,
        _ => {
            let mut q = Query::of(ctx, &fwd);
            match q.run(ctx) {
                BPF_FIB_LKUP_RET_SUCCESS => q.hop(),
                BPF_FIB_LKUP_RET_NO_NEIGH => return hand_to_tc(ctx, st, xdp_meta::FORWARDED),
                BPF_FIB_LKUP_RET_NOT_FWDED => {
                    st.inc(Counter::StackLocal);
                    return XDP_PASS;
                }
                BPF_FIB_LKUP_RET_FRAG_NEEDED => {
                    st.inc(Counter::StackMtu);
                    return XDP_PASS;
                }
                _ => {
                    st.inc(Counter::StackNoRoute);
                    return XDP_PASS;
                }
            }
        }
    };
    if hop.ifindex != ingress {
        return hand_to_tc(ctx, st, xdp_meta::FORWARDED);
    }
    if decrement_ttl(ctx) != Ok(true) {
        st.inc(Counter::StackTtl);
        return XDP_PASS;
    }
    if store(ctx, 0, hop.dmac).is_err() || store(ctx, 6, hop.smac).is_err() {
        return XDP_PASS;
    }
    st.inc(Counter::FwdXdpTx);
    XDP_TX
}

/// Whether this kernel's XDP programs may call `bpf_xdp_adjust_meta` (some kernels refuse the
/// helper to XDP programs). The loader sets it (`.rodata`, frozen): with 0 the verifier never
/// sees the call, and [`hand_to_tc`] leaves such packets to the kernel's stack, counted.
#[unsafe(no_mangle)]
static XDP_META: u8 = 1;

/// Passes the frame up with `kind` in its XDP metadata: the uplink's tc ingress program
/// (`lb_uplink_deliver`) delivers it without processing it again. Without room for metadata
/// (or without the helper on this kernel) the kernel routes the (translated) packet itself.
#[inline(always)]
pub fn hand_to_tc(ctx: &XdpContext, st: &Stats, kind: u32) -> u32 {
    // SAFETY: a read of our own read-only global.
    if unsafe { core::ptr::read_volatile(&XDP_META) } == 0 {
        st.inc(Counter::StackNoXdpMeta);
        return XDP_PASS;
    }
    // SAFETY: the context pointer is the program's own xdp_md.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        st.inc(Counter::StackNoXdpMeta);
        return XDP_PASS;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + 4 <= data {
        // SAFETY: checked against the packet start just above.
        unsafe { (meta as *mut u32).write_unaligned(kind) };
    }
    XDP_PASS
}

/// The metadata the uplink's XDP program left for the tc ingress program, if any.
#[inline(always)]
pub fn take_meta(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading the program's own skb.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    if meta + 4 > data {
        return None;
    }
    // SAFETY: checked against the packet start just above.
    Some(unsafe { (meta as *const u32).read_unaligned() })
}
