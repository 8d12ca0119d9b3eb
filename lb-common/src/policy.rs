//! Which endpoint set a new connection uses and whether it is masqueraded: kube-proxy's
//! traffic-policy and masquerade rules (SEMANTICS C6/C7, H1–H5) as one pure function, used by
//! every datapath program and table-tested against kube-proxy's matrix.

use crate::svc_flags;

/// What the datapath knows about a packet's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Inside the local traffic detector's CIDRs (`--cluster-cidr`): a pod. Never returned
    /// when no detector is configured.
    Pod,
    /// One of this node's own addresses (kube-proxy's `fib saddr type local`).
    Host,
    /// Anything else: an external client.
    External,
}

/// The endpoint set a frontend's new connections are balanced over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointSet {
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub set: EndpointSet,
    pub masquerade: bool,
}

/// The decision for a new connection to a frontend with `flags` (`svc_flags`) from `src`.
///
/// - ClusterIP: the local set iff iTP=Local (C6); masquerade with `--masquerade-all`, or when a
///   detector is configured and the source is not a pod (H1).
/// - External frontend, eTP=Cluster: the cluster set, always masqueraded (H2).
/// - External frontend, eTP=Local (H3): pods short-circuit to the cluster set without
///   masquerade; the node's own addresses short-circuit with masquerade; external clients get
///   the local set and keep their address.
///
/// Hairpin (H4: a client that lands on itself is masqueraded) depends on the chosen backend:
/// see [`hairpin`].
#[inline(always)]
pub const fn decide(flags: u32, src: Source, masquerade_all: bool, detector: bool) -> Decision {
    let local = flags & svc_flags::POLICY_LOCAL != 0;
    if flags & svc_flags::EXTERNAL == 0 {
        let set = if local { EndpointSet::Local } else { EndpointSet::Cluster };
        let masquerade = masquerade_all || (detector && !matches!(src, Source::Pod));
        return Decision { set, masquerade };
    }
    if !local {
        return Decision { set: EndpointSet::Cluster, masquerade: true };
    }
    match src {
        Source::Pod => Decision { set: EndpointSet::Cluster, masquerade: false },
        Source::Host => Decision { set: EndpointSet::Cluster, masquerade: true },
        Source::External => Decision { set: EndpointSet::Local, masquerade: false },
    }
}

/// H4: a connection whose chosen endpoint is its own source is masqueraded, so the reply
/// comes back through the node instead of short-cutting inside the pod.
#[inline(always)]
pub const fn hairpin(src_addr: u32, backend_addr: u32) -> bool {
    src_addr == backend_addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svc_flags::{EXTERNAL, POLICY_LOCAL};
    use EndpointSet::*;
    use Source::*;

    /// kube-proxy's TestInternalExternalMasquerade, base case (detector on, masqueradeAll
    /// off). svc1: eTP=Cluster; svc2: eTP=Local; svc3: iTP=Local. Frontend flags per column.
    #[test]
    fn internal_external_masquerade_matrix() {
        let cluster_ip = |svc: u8| if svc == 3 { POLICY_LOCAL } else { 0 };
        let external = |svc: u8| EXTERNAL | if svc == 2 { POLICY_LOCAL } else { 0 };
        // (source, frontend is external, svc, expected set, expected masquerade)
        let rows = [
            (Pod, false, 1, Cluster, false),
            (Pod, false, 2, Cluster, false),
            (Pod, false, 3, Local, false),
            (Pod, true, 1, Cluster, true),
            (Pod, true, 2, Cluster, false),
            (Pod, true, 3, Cluster, true),
            (Host, false, 1, Cluster, true),
            (Host, false, 2, Cluster, true),
            (Host, false, 3, Local, true),
            (Host, true, 1, Cluster, true),
            (Host, true, 2, Cluster, true),
            (Host, true, 3, Cluster, true),
            (External, false, 1, Cluster, true),
            (External, false, 2, Cluster, true),
            (External, false, 3, Local, true),
            (External, true, 1, Cluster, true),
            (External, true, 2, Local, false),
            (External, true, 3, Cluster, true),
        ];
        for (src, ext, svc, set, masquerade) in rows {
            let flags = if ext { external(svc) } else { cluster_ip(svc) };
            assert_eq!(decide(flags, src, false, true), Decision { set, masquerade }, "{src:?} ext={ext} svc{svc}");
        }
    }

    /// The two overrides of the same test.
    #[test]
    fn no_detector_and_masquerade_all_overrides() {
        // No detector: nothing is a pod; node/external → ClusterIP not masqueraded; a pod →
        // NodePort/LB of an eTP=Local service is an external client (local set, no masq).
        for src in [Host, External] {
            assert!(!decide(0, src, false, false).masquerade, "{src:?} → ClusterIP");
        }
        assert_eq!(decide(EXTERNAL | POLICY_LOCAL, External, false, false), Decision { set: Local, masquerade: false });
        assert_eq!(decide(EXTERNAL, External, false, false), Decision { set: Cluster, masquerade: true });
        // masqueradeAll: pod → ClusterIP masqueraded for all three services; external
        // frontends unchanged (client IP preservation of eTP=Local survives it).
        for flags in [0, POLICY_LOCAL] {
            assert!(decide(flags, Pod, true, true).masquerade);
        }
        assert_eq!(decide(EXTERNAL | POLICY_LOCAL, External, true, true), Decision { set: Local, masquerade: false });
    }

    #[test]
    fn hairpin_is_source_equals_endpoint() {
        assert!(hairpin(0x0a00_0001, 0x0a00_0001));
        assert!(!hairpin(0x0a00_0001, 0x0a00_0002));
    }
}
