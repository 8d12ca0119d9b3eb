//! deploy/: every YAML document parses into its k8s-openapi type, with no field the type does
//! not know (a typo would otherwise be dropped silently by the API server's decoder too), and
//! the manifests keep the invariants running lb-agent in place of kube-proxy depends on.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, PodSpec, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule},
    },
    apimachinery::pkg::util::intstr::IntOrString,
    serde::{de::DeserializeOwned, Deserialize, Serialize},
    Resource,
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
}

/// `v` as a `T`, failing if serializing the `T` back does not give `v` again (a field `T` does
/// not have, or a value it does not keep).
fn typed<T: Resource + DeserializeOwned + Serialize>(v: &serde_yaml::Value, origin: &str) -> T {
    let t: T = serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", T::KIND));
    let original = serde_json::to_value(v).unwrap();
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        back,
        original,
        "{origin}: the {} does not round-trip: fields k8s-openapi does not know (typo?) or values it rewrites",
        T::KIND
    );
    t
}

fn is<T: Resource>(api_version: &str, kind: &str) -> bool {
    api_version == T::API_VERSION && kind == T::KIND
}

fn load() -> Manifests {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML under deploy/");
    let mut m = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut docs = 0;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{name} document {}", i + 1);
            let v = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}"));
            if v.is_null() {
                continue;
            }
            docs += 1;
            let api_version = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or_default();
            let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
            if is::<DaemonSet>(api_version, kind) {
                m.daemonsets.push(typed(&v, &origin));
            } else if is::<ServiceAccount>(api_version, kind) {
                m.service_accounts.push(typed(&v, &origin));
            } else if is::<ClusterRole>(api_version, kind) {
                m.cluster_roles.push(typed(&v, &origin));
            } else if is::<ClusterRoleBinding>(api_version, kind) {
                m.cluster_role_bindings.push(typed(&v, &origin));
            } else {
                panic!("{origin}: unexpected {api_version:?} {kind:?} (expected DaemonSet, ServiceAccount, ClusterRole or ClusterRoleBinding)");
            }
        }
        assert!(docs > 0, "{name}: no documents");
    }
    m
}

fn one<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what} under deploy/");
    &items[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().unwrap().template.spec.as_ref().expect("pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(spec.init_containers.is_none(), "no init containers");
    &spec.containers[0]
}

/// (path, port) of an HTTP GET probe.
fn http_probe(p: Option<&Probe>, what: &str) -> (String, i32) {
    let get = p.and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what}: an httpGet probe"));
    assert!(get.scheme.as_deref().is_none_or(|s| s == "HTTP"), "{what}: plain HTTP");
    assert!(get.host.is_none(), "{what}: the pod (= node) address");
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(s) => panic!("{what}: port {s:?} should be the number 10256"),
    };
    (get.path.clone().unwrap_or_default(), port)
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    let mut found = args.iter().filter_map(|a| a.strip_prefix(prefix.as_str()));
    let v = found.next();
    assert!(found.next().is_none(), "--{name} given twice");
    v
}

#[test]
fn every_document_parses_into_a_known_kind() {
    let m = load();
    one(&m.daemonsets, "DaemonSet");
    one(&m.service_accounts, "ServiceAccount");
    one(&m.cluster_roles, "ClusterRole");
    one(&m.cluster_role_bindings, "ClusterRoleBinding");
}

#[test]
fn daemonset_runs_on_every_node_in_the_host_network() {
    let m = load();
    let ds = one(&m.daemonsets, "DaemonSet");
    assert_eq!(ds.metadata.name.as_deref(), Some("lb-agent"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = ds.spec.as_ref().unwrap();
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("template labels");
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pod template ({k})");
    }
    let pod = pod_spec(ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "tolerates every taint"
    );
    assert!(pod.node_name.is_none() && pod.affinity.is_none(), "not pinned to some nodes");
}

#[test]
fn agent_flags_env_and_probes() {
    let m = load();
    let ds = one(&m.daemonsets, "DaemonSet");
    let c = agent_container(ds);
    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(flag(args, "hostname-override"), Some("$(NODE_NAME)"));
    assert!(flag(args, "interfaces").is_some_and(|i| !i.is_empty()), "--interfaces");
    assert!(flag(args, "xdp-interfaces").is_some_and(|i| !i.is_empty()), "--xdp-interfaces (external traffic)");
    assert!(flag(args, "cluster-cidr").is_some_and(|c| c.parse::<ipnet::Ipv4Net>().is_ok()), "--cluster-cidr is a CIDR");
    assert_eq!(flag(args, "healthz-bind-address"), Some("0.0.0.0:10256"));
    assert_eq!(flag(args, "metrics-bind-address"), Some("127.0.0.1:10249"));
    assert!(flag(args, "manifests").is_none(), "the API server is the source in a cluster");

    let env = c.env.as_deref().unwrap_or_default();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME env");
    let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    // The agent cannot reach the API server through a ClusterIP nobody has programmed yet.
    for var in ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"] {
        assert!(env.iter().any(|e| e.name == var && e.value.as_deref().is_some_and(|v| !v.is_empty())), "{var} set");
    }

    let healthz_port: i32 = flag(args, "healthz-bind-address").unwrap().rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(http_probe(c.liveness_probe.as_ref(), "livenessProbe"), ("/livez".to_string(), healthz_port));
    assert_eq!(http_probe(c.readiness_probe.as_ref(), "readinessProbe"), ("/healthz".to_string(), healthz_port));

    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref()).expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "cpu and memory requests");
}

#[test]
fn agent_is_unprivileged_with_the_minimum_capabilities() {
    let m = load();
    let ds = one(&m.daemonsets, "DaemonSet");
    let c = agent_container(ds);
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.as_deref().unwrap_or_default().iter().map(|c| c.trim_start_matches("CAP_")).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]));

    let pod = pod_spec(ds);
    assert!(pod.host_pid.is_none_or(|h| !h) && pod.host_ipc.is_none_or(|h| !h));
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let host_mount = |host: &str| {
        let vol = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host))
            .unwrap_or_else(|| panic!("a hostPath volume for {host}"));
        mounts.iter().find(|m| m.name == vol.name).unwrap_or_else(|| panic!("{host} is mounted"))
    };
    let bpffs = host_mount("/sys/fs/bpf");
    assert_eq!(bpffs.mount_path, "/sys/fs/bpf", "--bpffs defaults to /sys/fs/bpf/lb");
    assert_eq!(bpffs.read_only, None);
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("HostToContainer"));
    // The host's network sysctls, writable, where --proc-sys points.
    let sysctls = host_mount("/proc/sys/net");
    assert_ne!(sysctls.read_only, Some(true), "the agent writes accept_local / rp_filter");
    let proc_sys = flag(c.args.as_deref().unwrap_or_default(), "proc-sys").expect("--proc-sys");
    assert_eq!(sysctls.mount_path, format!("{proc_sys}/net"));
    // The API server: "Bidirectional mount propagation is available only to privileged containers".
    for m in mounts {
        assert_ne!(m.mount_propagation.as_deref(), Some("Bidirectional"), "{}: rejected for an unprivileged container", m.name);
    }
    // Every mount has its volume.
    for m in mounts {
        assert!(volumes.iter().any(|v| v.name == m.name), "volume {}", m.name);
    }
}

const READ_ONLY: [&str; 3] = ["get", "list", "watch"];

fn matches(values: &Option<Vec<String>>, want: &str) -> bool {
    values.as_deref().unwrap_or_default().iter().any(|v| v == want || v == "*")
}

fn rules_for<'a>(rules: &'a [PolicyRule], group: &'a str, resource: &'a str) -> impl Iterator<Item = &'a PolicyRule> {
    rules.iter().filter(move |r| matches(&r.api_groups, group) && matches(&r.resources, resource))
}

#[test]
fn cluster_role_only_reads_services_endpointslices_and_nodes() {
    let m = load();
    let role = one(&m.cluster_roles, "ClusterRole");
    let rules = role.rules.as_deref().expect("rules");
    for r in rules {
        for list in [&r.api_groups, &r.resources, &Some(r.verbs.clone())] {
            assert!(!list.as_deref().unwrap_or_default().iter().any(|v| v == "*"), "no wildcards: {r:?}");
        }
        assert!(r.non_resource_urls.is_none() && r.resource_names.is_none(), "{r:?}");
    }
    assert!(role.aggregation_rule.is_none());

    for (group, resource) in [("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes")] {
        let verbs: BTreeSet<&str> = rules_for(rules, group, resource).flat_map(|r| r.verbs.iter().map(String::as_str)).collect();
        for v in READ_ONLY {
            assert!(verbs.contains(v), "{group}/{resource}: {v}");
        }
        assert!(verbs.iter().all(|v| READ_ONLY.contains(v)), "{group}/{resource} is read-only: {verbs:?}");
    }
    // Nothing else (the agent emits no Events, so it may not create any).
    let allowed: BTreeSet<(&str, &str)> =
        BTreeSet::from([("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")]);
    for r in rules {
        for g in r.api_groups.as_deref().unwrap_or_default() {
            for res in r.resources.as_deref().unwrap_or_default() {
                assert!(allowed.contains(&(g.as_str(), res.as_str())), "unexpected grant on {g:?}/{res}");
            }
        }
    }
}

#[test]
fn names_line_up() {
    let m = load();
    let ds = one(&m.daemonsets, "DaemonSet");
    let sa = one(&m.service_accounts, "ServiceAccount");
    let role = one(&m.cluster_roles, "ClusterRole");
    let binding = one(&m.cluster_role_bindings, "ClusterRoleBinding");
    let sa_name = sa.metadata.name.as_deref().expect("ServiceAccount name");
    let sa_ns = sa.metadata.namespace.as_deref().expect("ServiceAccount namespace");

    let pod = pod_spec(ds);
    assert_eq!(pod.service_account_name.as_deref(), Some(sa_name));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(sa_ns), "the DaemonSet and its ServiceAccount share a namespace");
    assert_ne!(pod.automount_service_account_token, Some(false), "the agent needs its token");

    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name.as_str()), role.metadata.name.as_deref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == sa_name
            && s.namespace.as_deref() == Some(sa_ns)
            && s.api_group.as_deref().unwrap_or_default().is_empty()),
        "the binding names the ServiceAccount: {subjects:?}"
    );
    assert!(role.metadata.namespace.is_none() && binding.metadata.namespace.is_none(), "cluster-scoped");
}
