//! The test infrastructure itself: the topology wiring (pod → node → pod over routed veths,
//! no load balancer involved), lb-echo, and the clients.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    client::{count_by_name, tcp_hello, udp_hello, HeldTcp, UdpFlow},
    netns::ip,
    privileges::require_root,
    topo::{echo_binary, PodSpec, Topology},
    wait,
};

const T: Duration = Duration::from_secs(3);

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Test binaries live in target/<profile>/deps; lb-echo must be found in target/<profile>.
#[test]
fn echo_binary_is_next_to_the_other_binaries() {
    if std::env::var_os("LB_ECHO_BIN").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    assert_eq!(deps.file_name().unwrap(), "deps");
    assert_eq!(echo_binary(), deps.parent().unwrap().join("lb-echo"));
}

#[test]
fn wait_until_polls_and_times_out() {
    let mut n = 0;
    let v = wait::until("third call", Duration::from_secs(2), || {
        n += 1;
        (n == 3).then_some(n)
    })
    .unwrap();
    assert_eq!(v, 3);
    let err = wait::until::<()>("never", Duration::from_millis(120), || None).unwrap_err();
    assert!(err.to_string().contains("never"), "{err}");
}

#[test]
fn pod_to_pod_over_routed_veths() {
    if !require_root("pod_to_pod_over_routed_veths") {
        return;
    }
    let echo = echo_binary();
    assert!(echo.exists(), "{} missing: run `cargo build -p lb-tests --bins` first", echo.display());
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 9, 10), Ipv4Addr::new(10, 244, 9, 11));
    {
        let pods = [PodSpec { name: "a".into(), ip: a_ip }, PodSpec { name: "b".into(), ip: b_ip }];
        let mut topo = Topology::create("tp1", &pods).expect("topology");
        assert_eq!(topo.node_netns, "lb-tp1-node");
        assert_eq!(topo.pod("a").netns, "lb-tp1-a");
        assert_eq!(topo.pod("b").host_if, "lbtp1h1");
        assert_eq!(topo.host_if_pattern(), "lbtp1h*");
        let links = ip(&["-n", "lb-tp1-node", "-o", "link", "show"]).unwrap();
        assert!(links.contains("lbtp1h0") && links.contains("lbtp1h1"), "{links}");

        topo.spawn_echo("b", "backend-b", 8080, 5353).expect("lb-echo in pod b");
        let (tcp, udp) = (SocketAddrV4::new(b_ip, 8080), SocketAddrV4::new(b_ip, 5353));

        let r = tcp_hello("lb-tp1-a", tcp, 5, T);
        let (counts, errors) = count_by_name(&r);
        assert_eq!(errors, 0, "{r:?}");
        assert_eq!(counts.get("backend-b"), Some(&5), "{r:?}");

        let r = udp_hello("lb-tp1-a", udp, 5, T);
        let (counts, errors) = count_by_name(&r);
        assert_eq!(errors, 0, "{r:?}");
        assert_eq!(counts.get("backend-b"), Some(&5), "{r:?}");

        // Connections opened in the pod's namespace are usable from this thread afterwards.
        let mut held = HeldTcp::open("lb-tp1-a", tcp, 3, T).expect("held connections");
        assert_eq!(held.names(), vec!["backend-b"; 3]);
        for r in held.ping(T) {
            assert_eq!(r.unwrap(), "backend-b");
        }
        let flow = UdpFlow::open("lb-tp1-a", udp).expect("udp flow");
        assert_eq!(flow.send_recv(T).unwrap(), "backend-b");
        assert_eq!(flow.send_recv(T).unwrap(), "backend-b");

        // The source address the backend sees is the client pod's own (routed, no NAT):
        // seen from the node, the pod's /32 is routed to its host-side veth.
        let route = ip(&["-n", "lb-tp1-node", "route", "get", &a_ip.to_string()]).unwrap();
        assert!(route.contains("dev lbtp1h0"), "{route}");

        // Nothing listens on pod a: a refused connection is an error, not a hang.
        let r = tcp_hello("lb-tp1-b", SocketAddrV4::new(a_ip, 8080), 1, T);
        assert!(r[0].is_err());

        // A pod added later is wired the same way.
        topo.add_pod(&PodSpec { name: "c".into(), ip: Ipv4Addr::new(10, 244, 9, 12) }).expect("add pod c");
        topo.spawn_echo("c", "backend-c", 8080, 5353).expect("lb-echo in pod c");
        let r = udp_hello("lb-tp1-a", SocketAddrV4::new(Ipv4Addr::new(10, 244, 9, 12), 5353), 2, T);
        assert_eq!(count_by_name(&r).0.get("backend-c"), Some(&2), "{r:?}");
        drop(held);
    }
    assert_eq!(netns_with_prefix("lb-tp1-"), Vec::<String>::new(), "namespaces leaked");
}

/// Creating a topology twice with the same tag (a crashed earlier run) replaces the leftovers.
#[test]
fn create_replaces_leftovers() {
    if !require_root("create_replaces_leftovers") {
        return;
    }
    let pods = [PodSpec { name: "x".into(), ip: Ipv4Addr::new(10, 244, 9, 20) }];
    let first = Topology::create("tp2", &pods).expect("first");
    std::mem::forget(first); // simulate a crash: nothing cleaned up
    assert_eq!(netns_with_prefix("lb-tp2-").len(), 2);
    {
        let _second = Topology::create("tp2", &pods).expect("second over leftovers");
        assert_eq!(netns_with_prefix("lb-tp2-").len(), 2);
    }
    assert_eq!(netns_with_prefix("lb-tp2-"), Vec::<String>::new(), "namespaces leaked");
}
