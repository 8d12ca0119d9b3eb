//! Flow state: netfilter's TCP states and the timeouts of every state, written as pure
//! functions the datapath runs per packet and user space tests against tables.
//!
//! Both conntrack entries of a connection (forward and reply) carry the same [`CtEntry::state`]
//! byte: a packet that changes it writes both (the datapath looks the other half up only then,
//! and once a second with its refresh), so the two halves expire together.
//!
//! TCP follows netfilter's state table (`nf_conntrack_proto_tcp.c`, read for its semantics):
//! the states, which packet in which direction moves a flow between them, and the default
//! timeouts. Differences, all on the side of simplicity: no window tracking (an RST is believed
//! when it is plausible for the flow, see [`rst_believed`]; other segments are not checked
//! against the window), and no simultaneous-open state (`SYN_SENT2`: a SYN from the reply
//! side is ignored).
//!
//! UDP and SCTP: [`UNREPLIED`] until a packet came back, then [`REPLIED`] (netfilter's UDP
//! `udp_timeout` 30 s and `udp_timeout_stream` 120 s; SCTP is given the same two timeouts).
//!
//! [`CtEntry::state`]: crate::CtEntry::state

use crate::{ct_dir, ct_flags, CtEntry, CtKey, TimeoutIndex, PROTO_TCP};

/// TCP states (the values of `CtEntry::state` for TCP flows), netfilter's names.
pub mod tcp {
    /// Only the client's SYN was seen.
    pub const SYN_SENT: u8 = 1;
    /// The backend's SYN-ACK was seen.
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    /// One side sent a FIN.
    pub const FIN_WAIT: u8 = 4;
    /// The FIN was acknowledged; the other side has not closed yet.
    pub const CLOSE_WAIT: u8 = 5;
    /// Both sides sent a FIN; the last one is not acknowledged yet.
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    /// An RST was believed.
    pub const CLOSE: u8 = 8;
}

/// UDP / SCTP states.
pub const UNREPLIED: u8 = 0;
pub const REPLIED: u8 = 1;

/// The TCP flag bits the state machine reads.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Which half of the connection a packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → frontend (the direction that opened the flow).
    Original,
    /// Backend → client.
    Reply,
}

/// What a TCP segment is, for the state table (netfilter's `get_conntrack_index`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
    None,
}

#[inline(always)]
const fn event(flags: u8) -> Event {
    if flags & TCP_RST != 0 {
        Event::Rst
    } else if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 {
            Event::SynAck
        } else {
            Event::Syn
        }
    } else if flags & TCP_FIN != 0 {
        Event::Fin
    } else if flags & TCP_ACK != 0 {
        Event::Ack
    } else {
        Event::None
    }
}

/// The state of a tracked TCP flow after a segment with `flags` in direction `dir` (an RST
/// only once [`rst_believed`] said so). Segments that are invalid or ignored in a state
/// leave it unchanged.
#[inline(always)]
pub const fn tcp_next(state: u8, dir: Dir, flags: u8) -> u8 {
    use tcp::*;
    let ev = event(flags);
    match (dir, ev) {
        (_, Event::Rst) => CLOSE,
        // A new SYN on a closed tuple reopens it (the datapath treats that as a new flow:
        // see `reopens`); a retransmitted SYN keeps SYN_SENT; anything else ignores it.
        (Dir::Original, Event::Syn) => match state {
            SYN_SENT | TIME_WAIT | CLOSE => SYN_SENT,
            s => s,
        },
        (Dir::Reply, Event::SynAck) => match state {
            SYN_SENT => SYN_RECV,
            s => s,
        },
        (_, Event::Fin) => match state {
            SYN_RECV | ESTABLISHED => FIN_WAIT,
            FIN_WAIT | CLOSE_WAIT | LAST_ACK => LAST_ACK,
            s => s,
        },
        (Dir::Original, Event::Ack) => match state {
            SYN_RECV | ESTABLISHED => ESTABLISHED,
            FIN_WAIT | CLOSE_WAIT => CLOSE_WAIT,
            LAST_ACK => TIME_WAIT,
            s => s,
        },
        (Dir::Reply, Event::Ack) => match state {
            // The backend acknowledging data before the client's final ACK of the handshake
            // (the client's ACK was lost or is in flight): the handshake is complete for it.
            ESTABLISHED | SYN_RECV => ESTABLISHED,
            FIN_WAIT | CLOSE_WAIT => CLOSE_WAIT,
            LAST_ACK => TIME_WAIT,
            s => s,
        },
        // A SYN from the reply side (simultaneous open), a SYN-ACK from the client, segments
        // without SYN/FIN/ACK/RST: invalid or ignored, the state stays.
        _ => state,
    }
}

/// Whether a segment with `flags` on a tracked flow in `state` starts a new connection on the
/// same tuple: a SYN (without ACK) from the client after the old connection closed. The
/// datapath then chooses the backend and the NAT afresh, as netfilter does with a new
/// conntrack for a reused tuple.
#[inline(always)]
pub const fn reopens(state: u8, flags: u8) -> bool {
    matches!(event(flags), Event::Syn) && matches!(state, tcp::TIME_WAIT | tcp::CLOSE)
}

/// The state a new TCP flow starts in: SYN_SENT for a SYN, ESTABLISHED for any other segment
/// (a connection picked up in the middle, netfilter's `tcp_loose`: after an agent upgrade
/// that lost the table, or a flow that outlived its entry).
#[inline(always)]
pub const fn tcp_initial(flags: u8) -> u8 {
    match event(flags) {
        Event::Syn => tcp::SYN_SENT,
        _ => tcp::ESTABLISHED,
    }
}

/// Whether a new flow may be created for a segment with no tracked flow: anything but an RST
/// (netfilter: an RST without a connection is INVALID and never NATed).
#[inline(always)]
pub const fn tcp_may_create(flags: u8) -> bool {
    !matches!(event(flags), Event::Rst)
}

/// How far ahead of the sequence number recorded for its sender an RST may be and still be
/// believed: TCP's largest window (65 535 << 14).
pub const RST_WINDOW: u32 = 65_535 << 14;
/// How far behind it (data the recording already saw, retransmissions).
pub const RST_BEHIND: u32 = 1 << 20;

/// Whether an RST belongs to the flow (a plausible RST closes it; any other is ignored and
/// passed on unchanged in its effect on the state).
///
/// `recorded` is the entry's `seq`: in SYN_SENT the reply half holds the client's ISN + 1 (an
/// RST answering the SYN must acknowledge exactly that: RFC 793's rule for a SYN-SENT
/// socket); otherwise each half holds its own sender's sequence number as last recorded (at
/// every state change and with the once-a-second refresh), and the RST's must lie within
/// [`RST_WINDOW`] ahead of it or [`RST_BEHIND`] behind (netfilter checks the exact window; we
/// do not track windows per packet). An RST from the client in SYN_SENT (it gave up) is
/// always believed, and so is any RST while nothing is recorded (`recorded` 0: a rebuilt half,
/// a flow picked up in the middle, in its first second).
#[inline(always)]
pub const fn rst_believed(state: u8, dir: Dir, flags: u8, seq: u32, ack: u32, recorded: u32) -> bool {
    if state == tcp::SYN_SENT {
        return match dir {
            Dir::Original => true,
            Dir::Reply => flags & TCP_ACK != 0 && ack == recorded,
        };
    }
    if recorded == 0 {
        return true;
    }
    let ahead = seq.wrapping_sub(recorded);
    ahead <= RST_WINDOW || ahead.wrapping_neg() <= RST_BEHIND
}

/// The state of a UDP / SCTP flow after a packet in `dir`.
#[inline(always)]
pub const fn dgram_next(state: u8, dir: Dir) -> u8 {
    match dir {
        Dir::Reply => REPLIED,
        Dir::Original => state,
    }
}

/// Which configured timeout applies to a flow of `proto` in `state`.
#[inline(always)]
pub const fn timeout_index(proto: u8, state: u8) -> TimeoutIndex {
    if proto == PROTO_TCP {
        match state {
            tcp::SYN_SENT => TimeoutIndex::TcpSynSent,
            tcp::SYN_RECV => TimeoutIndex::TcpSynRecv,
            tcp::FIN_WAIT => TimeoutIndex::TcpFinWait,
            tcp::CLOSE_WAIT => TimeoutIndex::TcpCloseWait,
            tcp::LAST_ACK => TimeoutIndex::TcpLastAck,
            tcp::TIME_WAIT => TimeoutIndex::TcpTimeWait,
            tcp::CLOSE => TimeoutIndex::TcpClose,
            _ => TimeoutIndex::TcpEstablished,
        }
    } else if state == REPLIED {
        TimeoutIndex::UdpStream
    } else {
        TimeoutIndex::Udp
    }
}

/// Whether a flow of `proto` in `state`, last seen at `last_seen_ns`, has expired at `now_ns`
/// under `timeouts` (seconds, by [`TimeoutIndex`]): the rule the datapath's lookups apply
/// (`conntrack::live`), and the agent's garbage collector with it.
#[inline(always)]
pub const fn expired(proto: u8, state: u8, last_seen_ns: u64, now_ns: u64, timeouts: &[u32; TimeoutIndex::COUNT]) -> bool {
    let secs = timeouts[timeout_index(proto, state) as usize] as u64;
    now_ns.saturating_sub(last_seen_ns) > secs * 1_000_000_000
}

/// Whether a flow in `state` is closed: its post-NAT tuple may be taken over by a new
/// connection's SYN before the entry expires (netfilter's NAT lets a new connection reuse a
/// tuple whose conntrack is closing, `nf_nat_used_tuple`'s TIME_WAIT / CLOSE case).
#[inline(always)]
pub const fn tuple_reusable(proto: u8, state: u8) -> bool {
    proto == PROTO_TCP && matches!(state, tcp::TIME_WAIT | tcp::CLOSE)
}

/// The `attempt`-th port a source NAT tries for a flow whose hash is `hash`: ports in
/// `[min, max]` outside `[ex_min, ex_max]` (host order, inclusive; an empty or reversed
/// exclusion excludes nothing; a range wholly excluded falls back to the whole range).
/// Candidates walk the allowed ports from a hash-chosen start with a prime stride, so
/// concurrent flows spread out and one flow's attempts are distinct.
#[inline(always)]
pub const fn snat_port_candidate(hash: u32, attempt: u32, min: u16, max: u16, ex_min: u16, ex_max: u16) -> u16 {
    let (lo, hi) = if min <= max { (min as u32, max as u32) } else { (max as u32, min as u32) };
    let total = hi - lo + 1;
    // The excluded ports inside [lo, hi].
    let (a, b) = (if ex_min as u32 > lo { ex_min as u32 } else { lo }, if (ex_max as u32) < hi { ex_max as u32 } else { hi });
    let excluded = if ex_min <= ex_max && a <= b { b - a + 1 } else { 0 };
    let span = if excluded < total { total - excluded } else { total };
    if span == 0 {
        // Unreachable (span is 1..=65536), but it spares the datapath a division-by-zero
        // panic path the verifier would reject.
        return lo as u16;
    }
    let mut port = lo + (hash.wrapping_add(attempt.wrapping_mul(7919))) % span;
    if excluded < total && excluded > 0 && port >= a {
        port += excluded;
    }
    port as u16
}

/// Whether a source NAT may keep the client's own port `port` (host order) on the node's
/// address: not inside the node's ephemeral range (see [`snat_port_candidate`]).
#[inline(always)]
pub const fn may_keep_port(port: u16, ex_min: u16, ex_max: u16) -> bool {
    port != 0 && !(ex_min <= port && port <= ex_max)
}

/// The key of the other half of the connection whose half `entry` is stored under `key`.
///
/// Forward key (client → frontend) → reply key (backend → client, or → the SNAT source);
/// reply key → forward key (the client: the SNAT entry's `nat_*`, else the reply's
/// destination; the frontend: the reply entry's `peer_*`).
#[inline(always)]
pub const fn partner_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    let snat = entry.flags & ct_flags::SNAT != 0;
    if key.dir == ct_dir::FORWARD {
        let (to, to_port) = if snat { (entry.nat_addr, entry.nat_port) } else { (key.saddr, key.sport) };
        CtKey::new(entry.peer_addr, to, entry.peer_port, to_port, key.proto, ct_dir::REPLY)
    } else {
        let (client, client_port) = if snat { (entry.nat_addr, entry.nat_port) } else { (key.daddr, key.dport) };
        CtKey::new(client, entry.peer_addr, client_port, entry.peer_port, key.proto, ct_dir::FORWARD)
    }
}

/// The other half's entry, rebuilt from one half (a new flow's reply entry; a half the LRU
/// evicted). Same backend, service, state and flags; `peer_*` and `nat_*` seen from the other
/// side; no cached next hop; no recorded sequence number (`seq` 0: any RST of the rebuilt
/// half is believed until its sender's sequence number is recorded).
#[inline(always)]
pub const fn partner_entry(key: &CtKey, entry: &CtEntry) -> CtEntry {
    let snat = entry.flags & ct_flags::SNAT != 0;
    let (peer_addr, peer_port, nat_addr, nat_port) = if key.dir == ct_dir::FORWARD {
        // The reply half restores the frontend as source and, with SNAT, the client as
        // destination.
        (key.daddr, key.dport, if snat { key.saddr } else { 0 }, if snat { key.sport } else { 0 })
    } else {
        // The forward half sends to the backend and, with SNAT, from the reply's destination.
        (key.saddr, key.sport, if snat { key.daddr } else { 0 }, if snat { key.dport } else { 0 })
    };
    CtEntry {
        last_seen_ns: entry.last_seen_ns,
        backend_id: entry.backend_id,
        svc_id: entry.svc_id,
        peer_addr,
        peer_port,
        flags: entry.flags,
        state: entry.state,
        nat_addr,
        nat_port,
        _pad2: [0; 2],
        hop_ifindex: 0,
        hop_dmac: [0; 6],
        hop_smac: [0; 6],
        seq: 0,
        _pad3: 0,
    }
}

/// The state name `lbctl conntrack` prints.
pub const fn state_name(proto: u8, state: u8) -> &'static str {
    if proto == PROTO_TCP {
        match state {
            tcp::SYN_SENT => "SYN_SENT",
            tcp::SYN_RECV => "SYN_RECV",
            tcp::ESTABLISHED => "ESTABLISHED",
            tcp::FIN_WAIT => "FIN_WAIT",
            tcp::CLOSE_WAIT => "CLOSE_WAIT",
            tcp::LAST_ACK => "LAST_ACK",
            tcp::TIME_WAIT => "TIME_WAIT",
            tcp::CLOSE => "CLOSE",
            _ => "NONE",
        }
    } else if state == REPLIED {
        "REPLIED"
    } else {
        "UNREPLIED"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiry_follows_the_state_timeout() {
        let t = crate::Config::DEFAULT.timeouts;
        const S: u64 = 1_000_000_000;
        // (proto, state, idle seconds, expired)
        let cases = [
            (PROTO_TCP, tcp::SYN_SENT, 120, false),
            (PROTO_TCP, tcp::SYN_SENT, 121, true),
            (PROTO_TCP, tcp::ESTABLISHED, 121, false),
            (PROTO_TCP, tcp::ESTABLISHED, 86_401, true),
            (PROTO_TCP, tcp::CLOSE, 11, true),
            (PROTO_TCP, tcp::TIME_WAIT, 119, false),
            (crate::PROTO_UDP, UNREPLIED, 31, true),
            (crate::PROTO_UDP, REPLIED, 31, false),
            (crate::PROTO_UDP, REPLIED, 121, true),
        ];
        for (proto, state, idle, want) in cases {
            assert_eq!(expired(proto, state, 5 * S, 5 * S + idle * S, &t), want, "{proto} {state} {idle}s");
        }
        // A last_seen after now (another CPU's refresh read late) is live.
        assert!(!expired(PROTO_TCP, tcp::CLOSE, 10 * S, 5 * S, &t));
    }

    use super::{tcp::*, *};
    use crate::PROTO_UDP;

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FINACK: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;
    const O: Dir = Dir::Original;
    const R: Dir = Dir::Reply;

    /// A whole connection, packet by packet: (direction, flags, state after).
    fn walk(start: u8, steps: &[(Dir, u8, u8)]) {
        let mut s = start;
        for (i, &(dir, flags, want)) in steps.iter().enumerate() {
            s = tcp_next(s, dir, flags);
            assert_eq!(state_name(PROTO_TCP, s), state_name(PROTO_TCP, want), "step {i}: {dir:?} flags {flags:#x}");
        }
    }

    #[test]
    fn handshake_data_and_client_close() {
        let s = tcp_initial(SYN);
        assert_eq!(s, SYN_SENT);
        walk(
            s,
            &[
                (O, SYN, SYN_SENT), // retransmitted SYN
                (R, SYNACK, SYN_RECV),
                (O, ACK, ESTABLISHED),
                (R, ACK, ESTABLISHED),
                (O, FINACK, FIN_WAIT),
                (R, ACK, CLOSE_WAIT),
                (R, FINACK, LAST_ACK),
                (O, ACK, TIME_WAIT),
                (O, ACK, TIME_WAIT),
            ],
        );
    }

    #[test]
    fn backend_closes_first_and_simultaneous_close() {
        walk(ESTABLISHED, &[(R, FINACK, FIN_WAIT), (O, ACK, CLOSE_WAIT), (O, FINACK, LAST_ACK), (R, ACK, TIME_WAIT)]);
        walk(ESTABLISHED, &[(O, FINACK, FIN_WAIT), (R, FINACK, LAST_ACK), (O, ACK, TIME_WAIT)]);
    }

    #[test]
    fn rst_closes_from_any_state_and_invalid_segments_change_nothing() {
        for s in [SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE] {
            assert_eq!(tcp_next(s, O, RST), CLOSE);
            assert_eq!(tcp_next(s, R, RST | ACK), CLOSE);
        }
        // A SYN-ACK from the client, a SYN from the backend, a SYN in the middle of a
        // connection, a segment without flags: ignored.
        assert_eq!(tcp_next(SYN_SENT, O, SYNACK), SYN_SENT);
        assert_eq!(tcp_next(SYN_SENT, R, SYN), SYN_SENT);
        assert_eq!(tcp_next(ESTABLISHED, O, SYN), ESTABLISHED);
        assert_eq!(tcp_next(ESTABLISHED, O, 0), ESTABLISHED);
        // An ACK before the SYN-ACK does not establish anything.
        assert_eq!(tcp_next(SYN_SENT, O, ACK), SYN_SENT);
        // The backend's data ACK completes the handshake when the client's ACK is missing.
        assert_eq!(tcp_next(SYN_RECV, R, ACK), ESTABLISHED);
    }

    #[test]
    fn a_syn_reopens_only_closed_tuples() {
        assert!(reopens(TIME_WAIT, SYN));
        assert!(reopens(CLOSE, SYN));
        assert!(!reopens(TIME_WAIT, SYNACK));
        for s in [SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK] {
            assert!(!reopens(s, SYN), "{}", state_name(PROTO_TCP, s));
        }
        assert_eq!(tcp_initial(ACK), ESTABLISHED, "mid-stream pickup");
        assert_eq!(tcp_initial(FINACK), ESTABLISHED);
        assert!(tcp_may_create(SYN) && tcp_may_create(ACK) && !tcp_may_create(RST) && !tcp_may_create(RST | ACK));
    }

    #[test]
    fn rst_belief() {
        // SYN_SENT: the backend's RST must acknowledge the SYN (recorded = ISN + 1).
        assert!(rst_believed(SYN_SENT, R, RST | ACK, 0, 1001, 1001));
        assert!(!rst_believed(SYN_SENT, R, RST | ACK, 0, 1002, 1001));
        assert!(!rst_believed(SYN_SENT, R, RST, 0, 1001, 1001), "no ACK flag");
        assert!(rst_believed(SYN_SENT, O, RST, 5, 0, 1001), "the client gives up");
        // Later: within the window ahead of the recorded sequence, or a little behind it.
        assert!(rst_believed(ESTABLISHED, R, RST, 5000, 0, 5000));
        assert!(rst_believed(ESTABLISHED, R, RST, 5000 + RST_WINDOW, 0, 5000));
        assert!(!rst_believed(ESTABLISHED, R, RST, 5001 + RST_WINDOW, 0, 5000));
        assert!(rst_believed(ESTABLISHED, O, RST, 10, 0, 100), "behind, wrapping");
        assert!(rst_believed(ESTABLISHED, O, RST, u32::MAX - 10, 0, 100), "behind across the wrap");
        assert!(!rst_believed(ESTABLISHED, O, RST, 100u32.wrapping_sub(RST_BEHIND + 1), 0, 100));
        assert!(rst_believed(ESTABLISHED, O, RST, 100u32.wrapping_sub(RST_BEHIND), 0, 100));
        // Nothing recorded yet (a rebuilt half, a flow picked up mid-stream): believed.
        assert!(rst_believed(ESTABLISHED, R, RST, 0x8000_0000, 0, 0));
    }

    #[test]
    fn datagrams_are_replied_after_the_first_reply() {
        assert_eq!(dgram_next(UNREPLIED, O), UNREPLIED);
        assert_eq!(dgram_next(UNREPLIED, R), REPLIED);
        assert_eq!(dgram_next(REPLIED, O), REPLIED);
        assert_eq!(timeout_index(PROTO_UDP, UNREPLIED), TimeoutIndex::Udp);
        assert_eq!(timeout_index(PROTO_UDP, REPLIED), TimeoutIndex::UdpStream);
        assert_eq!(timeout_index(crate::PROTO_SCTP, REPLIED), TimeoutIndex::UdpStream);
    }

    fn entry(peer: (u32, u16), nat: Option<(u32, u16)>) -> CtEntry {
        let mut e: CtEntry = bytemuck::Zeroable::zeroed();
        e.backend_id = 4;
        e.svc_id = 2;
        e.state = ESTABLISHED;
        e.peer_addr = peer.0;
        e.peer_port = peer.1;
        if let Some((a, p)) = nat {
            e.flags = ct_flags::SNAT;
            e.nat_addr = a;
            e.nat_port = p;
        }
        e
    }

    #[test]
    fn halves_find_and_rebuild_each_other() {
        const CLIENT: (u32, u16) = (10, 40_000);
        const FRONT: (u32, u16) = (20, 80);
        const BACKEND: (u32, u16) = (30, 8080);
        const NODE: (u32, u16) = (40, 61_001);
        for nat in [None, Some(NODE), Some((CLIENT.0, 1500))] {
            let fwd_key = CtKey::new(CLIENT.0, FRONT.0, CLIENT.1, FRONT.1, PROTO_TCP, ct_dir::FORWARD);
            let fwd = entry(BACKEND, nat);
            let post = nat.unwrap_or(CLIENT);
            let reply_key = partner_key(&fwd_key, &fwd);
            assert_eq!(reply_key, CtKey::new(BACKEND.0, post.0, BACKEND.1, post.1, PROTO_TCP, ct_dir::REPLY), "{nat:?}");
            let reply = partner_entry(&fwd_key, &fwd);
            assert_eq!((reply.peer_addr, reply.peer_port), FRONT, "replies come from the frontend");
            if nat.is_some() {
                assert_eq!((reply.nat_addr, reply.nat_port), CLIENT, "and go to the client");
            }
            assert_eq!((reply.backend_id, reply.svc_id, reply.state, reply.flags), (4, 2, ESTABLISHED, fwd.flags));
            // And back: the reply half leads to the forward key and rebuilds the same entry.
            assert_eq!(partner_key(&reply_key, &reply), fwd_key);
            let again = partner_entry(&reply_key, &reply);
            assert_eq!(again, fwd, "{nat:?}");
        }
    }

    #[test]
    fn snat_candidates_skip_the_ephemeral_range_and_differ() {
        for hash in [0, 1, 0xdead_beef, u32::MAX] {
            let mut seen = std::collections::BTreeSet::new();
            for attempt in 0..64 {
                let p = snat_port_candidate(hash, attempt, 1024, 65_535, 32_768, 60_999);
                assert!((1024..=65_535).contains(&p) && !(32_768..=60_999).contains(&p), "{p}");
                seen.insert(p);
            }
            assert_eq!(seen.len(), 64, "distinct candidates");
        }
        // Every allowed port is reachable, and only those: a small range walked whole.
        let all: std::collections::BTreeSet<u16> = (0..7).map(|i| snat_port_candidate(0, i, 10, 20, 12, 15)).collect();
        assert_eq!(all.into_iter().collect::<Vec<_>>(), [10, 11, 16, 17, 18, 19, 20]);
        // Exclusion outside the range, reversed, or covering it.
        assert_eq!(snat_port_candidate(3, 0, 100, 200, 300, 400), 103);
        assert_eq!(snat_port_candidate(3, 0, 100, 200, 400, 300), 103);
        assert_eq!(snat_port_candidate(3, 0, 100, 200, 0, 65_535), 103);
        assert_eq!(snat_port_candidate(5, 0, 100, 100, 0, 0), 100);
        assert!(may_keep_port(61_000, 32_768, 60_999) && !may_keep_port(40_000, 32_768, 60_999) && !may_keep_port(0, 1, 2));
    }

    #[test]
    fn every_tcp_state_has_netfilters_default_timeout() {
        let cfg = crate::Config::DEFAULT;
        let t = |s| cfg.timeouts[timeout_index(PROTO_TCP, s) as usize];
        assert_eq!(t(SYN_SENT), 120);
        assert_eq!(t(SYN_RECV), 60);
        assert_eq!(t(ESTABLISHED), 86_400, "kube-proxy's --conntrack-tcp-timeout-established");
        assert_eq!(t(FIN_WAIT), 120);
        assert_eq!(t(CLOSE_WAIT), 3_600, "kube-proxy's --conntrack-tcp-timeout-close-wait");
        assert_eq!(t(LAST_ACK), 30);
        assert_eq!(t(TIME_WAIT), 120);
        assert_eq!(t(CLOSE), 10);
        assert_eq!(cfg.timeouts[TimeoutIndex::Udp as usize], 30);
        assert_eq!(cfg.timeouts[TimeoutIndex::UdpStream as usize], 120);
        assert!(tuple_reusable(PROTO_TCP, TIME_WAIT) && tuple_reusable(PROTO_TCP, CLOSE));
        assert!(!tuple_reusable(PROTO_TCP, FIN_WAIT) && !tuple_reusable(PROTO_UDP, REPLIED));
    }
}
