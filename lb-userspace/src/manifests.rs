//! Kubernetes manifests (YAML or JSON files, as `kubectl apply -f` takes them) → typed objects.
//!
//! Only the kinds the proxier uses are kept: `Service` (v1), `EndpointSlice`
//! (discovery.k8s.io/v1) and `Node` (v1). `List` objects (and typed lists such as
//! `ServiceList`) are flattened. Other kinds are skipped silently (debug log).
//!
//! Errors never stop the rest of a file: a document that cannot be parsed or deserialized is
//! reported (with the file, the document number and its first line, and the object's kind and
//! name when they can be read) and the other documents still load.
//!
//! Like kubectl, a namespaced object without `metadata.namespace` goes to `default`.
//! `metadata.managedFields` is dropped.

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Map, Value};
use tracing::debug;

/// The objects found in a set of manifests.
#[derive(Default, Clone, Debug)]
pub struct ObjectSet {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

impl ObjectSet {
    /// No object of any kind.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty() && self.nodes.is_empty()
    }

    /// Appends all objects of `other`.
    pub fn extend(&mut self, other: ObjectSet) {
        self.services.extend(other.services);
        self.slices.extend(other.slices);
        self.nodes.extend(other.nodes);
    }
}

/// The objects of one or more files and the problems found while reading them.
#[derive(Default, Clone, Debug)]
pub struct ParseReport {
    pub objects: ObjectSet,
    /// One line per problem, starting with the file path.
    pub errors: Vec<String>,
}

/// The kinds this crate reads, with the apiVersion each must have.
const KNOWN_KINDS: &[(&str, &str)] = &[("Service", "v1"), ("EndpointSlice", "discovery.k8s.io/v1"), ("Node", "v1")];

/// Where a document came from, for error messages.
#[derive(Clone, Copy)]
struct Location<'a> {
    origin: &'a str,
    /// 1-based number of the document in the file.
    doc: usize,
    /// 1-based line where the document starts.
    line: usize,
}

/// Parses a multi-document YAML (or JSON) text. `origin` names the source (a file path) in
/// error messages.
pub fn parse_str(text: &str, origin: &str) -> ParseReport {
    let mut report = ParseReport::default();
    let mut errors = Vec::new();
    // Each document is turned into its typed object as soon as it is parsed: holding the whole
    // file as JSON values first would multiply the peak memory (a 50 000-Service file).
    for_each_document(text, origin, &mut errors, |raw| {
        let loc = Location { origin, doc: raw.doc, line: raw.line };
        add_object(raw.value, loc, &[], &mut report);
    });
    errors.append(&mut report.errors);
    report.errors = errors;
    report
}

/// The manifest files under `path`: the file itself, or a directory's `.yaml`, `.yml` and
/// `.json` files (not recursive, like `kubectl apply -f DIR`), sorted, without hidden files
/// (`.name`) and editor backups (`name~`).
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else { continue };
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        if ![".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext)) {
            continue;
        }
        let full = entry.path();
        // Follows symlinks; a dangling link or a directory named `x.yaml` is not a manifest.
        if fs::metadata(&full).map(|m| m.is_file()).unwrap_or(false) {
            files.push(full);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every file of [`manifest_files`]`(path)`. A file that cannot be read is reported and
/// skipped.
pub fn load_path(path: &Path) -> ParseReport {
    let mut report = ParseReport::default();
    let files = match manifest_files(path) {
        Ok(files) => files,
        Err(e) => {
            report.errors.push(format!("{}: {e}", path.display()));
            return report;
        }
    };
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => {
                let one = parse_str(&text, &file.display().to_string());
                report.objects.extend(one.objects);
                report.errors.extend(one.errors);
            }
            Err(e) => report.errors.push(format!("{}: cannot read: {e}", file.display())),
        }
    }
    report
}

// ------------------------------------------------------------------------------------------------
// Documents
// ------------------------------------------------------------------------------------------------

struct RawDocument {
    doc: usize,
    line: usize,
    value: Value,
}

/// Splits `text` into parsed documents. JSON (one or more concatenated values) is tried first
/// when the text starts like JSON; otherwise (or if that fails) the text is split at YAML
/// document markers and each document is parsed on its own, so a syntax error only costs its
/// own document.
fn for_each_document(text: &str, origin: &str, errors: &mut Vec<String>, mut f: impl FnMut(RawDocument)) {
    let trimmed = text.trim_start_matches('\u{feff}');
    if trimmed.trim_start().starts_with(['{', '[']) && is_json_stream(trimmed) {
        json_documents(trimmed, f);
        return;
    }
    let mut n = 0;
    for chunk in yaml_chunks(trimmed) {
        if is_blank_yaml(&chunk.text) {
            continue;
        }
        n += 1;
        let line = chunk.content_line();
        let mut value = match serde_yaml::from_str::<serde_yaml::Value>(&chunk.text) {
            Ok(v) => v,
            Err(e) => {
                let msg = rebase_lines(&e.to_string(), chunk.first_line - 1);
                errors.push(format!("{origin}: document {n} (line {line}): invalid YAML: {msg}"));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        if let Err(e) = value.apply_merge() {
            errors.push(format!("{origin}: document {n} (line {line}): invalid YAML merge key: {e}"));
            continue;
        }
        match serde_json::to_value(&value) {
            Ok(v) => f(RawDocument { doc: n, line, value: v }),
            Err(e) => errors.push(format!("{origin}: document {n} (line {line}): not representable as JSON: {e}")),
        }
    }
}

/// Whether the whole text is concatenated JSON values (checked without building them).
fn is_json_stream(text: &str) -> bool {
    serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>().all(|v| v.is_ok())
}

/// The documents of a text of concatenated JSON values (see [`is_json_stream`]), one by one.
fn json_documents(text: &str, mut f: impl FnMut(RawDocument)) {
    let mut docs = 0;
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut offset = 0;
    // Lines before `offset`, counted incrementally (a count from the start of the text for every
    // document is quadratic: minutes for a file of 50 000 Services).
    let mut lines_before = 0;
    while let Some(item) = stream.next() {
        let Ok(value) = item else { return };
        let start = text[offset..].find(|c: char| !c.is_whitespace()).map_or(offset, |i| offset + i);
        let line = lines_before + text[offset..start].matches('\n').count() + 1;
        lines_before = line - 1 + text[start..stream.byte_offset()].matches('\n').count();
        offset = stream.byte_offset();
        if !value.is_null() {
            docs += 1;
            f(RawDocument { doc: docs, line, value });
        }
    }
}

/// The text of one YAML document. Line `i` (0-based) of `text` is line `first_line + i` of the
/// file, so positions inside the chunk map back to the file.
struct Chunk {
    first_line: usize,
    text: String,
}

impl Chunk {
    /// The file line of the first line with content (not blank, not a comment).
    fn content_line(&self) -> usize {
        let skipped = self.text.lines().take_while(|l| is_blank_yaml(l)).count();
        self.first_line + skipped
    }
}

/// Splits YAML text at document markers: a line starting with `---` or `...` followed by
/// whitespace or the end of the line (at column 0 these can only be markers in YAML).
/// Directive lines (`%YAML`) before a document's content are blanked.
fn yaml_chunks(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut cur = Chunk { first_line: 1, text: String::new() };
    for (i, line) in text.lines().enumerate() {
        let marker = ["---", "..."]
            .into_iter()
            .find(|m| line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r'])));
        if let Some(m) = marker {
            chunks.push(std::mem::replace(&mut cur, Chunk { first_line: i + 1, text: String::new() }));
            // The marker line itself becomes the first line of the new chunk; content after
            // `--- ` belongs to the new document (columns kept).
            if m == "---" {
                cur.text.push_str("   ");
                cur.text.push_str(&line[3..]);
            }
        } else if !(line.starts_with('%') && is_blank_yaml(&cur.text)) {
            cur.text.push_str(line);
        }
        cur.text.push('\n');
    }
    chunks.push(cur);
    chunks
}

/// Only whitespace and comments.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Turns the chunk-relative `line N` positions in a serde_yaml message into file lines.
fn rebase_lines(msg: &str, offset: usize) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        let (head, tail) = rest.split_at(i + "line ".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------------------------------------
// Objects
// ------------------------------------------------------------------------------------------------

/// Adds one document (or list item) to the report. `items` is the item path inside `List`s.
fn add_object(value: Value, loc: Location<'_>, items: &[usize], report: &mut ParseReport) {
    let mut prefix = format!("{}: document {} (line {})", loc.origin, loc.doc, loc.line);
    for i in items {
        prefix.push_str(&format!(", item {i}"));
    }
    let Value::Object(mut obj) = value else {
        report.errors.push(format!("{prefix}: not a Kubernetes object (expected a mapping, found {})", json_type(&value)));
        return;
    };
    let kind = match obj.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(Value::String(_)) | None => {
            report.errors.push(format!("{prefix}: {}: missing kind", describe_unknown(&obj)));
            return;
        }
        Some(other) => {
            report.errors.push(format!(
                "{prefix}: {}: kind must be a string, found {}",
                describe_unknown(&obj),
                json_type(other)
            ));
            return;
        }
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).map(str::to_string);

    // Lists: `kind: List` or a typed list (`ServiceList`) with `items`.
    if kind == "List" || (kind.ends_with("List") && obj.contains_key("items")) {
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty()).map(str::to_string);
        match obj.remove("items") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, mut item) in list.into_iter().enumerate() {
                    // Items of a typed list carry neither kind nor apiVersion.
                    if let (Some(k), Value::Object(m)) = (&item_kind, &mut item) {
                        m.entry("kind").or_insert_with(|| Value::String(k.clone()));
                        if let Some(v) = &api_version {
                            m.entry("apiVersion").or_insert_with(|| Value::String(v.clone()));
                        }
                    }
                    let mut path = items.to_vec();
                    path.push(i + 1);
                    add_object(item, loc, &path, report);
                }
            }
            Some(other) => report.errors.push(format!("{prefix}: {kind}: items must be a list, found {}", json_type(&other))),
        }
        return;
    }

    let Some(&(_, expected_version)) = KNOWN_KINDS.iter().find(|(k, _)| *k == kind) else {
        debug!(origin = loc.origin, doc = loc.doc, kind = %kind, "skipping object of a kind the proxier does not use");
        return;
    };
    let namespaced = kind != "Node";
    if namespaced {
        default_namespace(&mut obj);
    }
    let what = describe(&kind, &obj, namespaced);
    match api_version.as_deref() {
        Some(v) if v == expected_version => {}
        Some(v) => {
            report.errors.push(format!("{prefix}: {what}: unsupported apiVersion {v:?} (expected {expected_version:?})"));
            return;
        }
        None => {
            report.errors.push(format!("{prefix}: {what}: missing apiVersion (expected {expected_version:?})"));
            return;
        }
    }
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("managedFields");
    }
    let value = Value::Object(obj);
    let result = match kind.as_str() {
        "Service" => serde_json::from_value::<Service>(value).map(|o| report.objects.services.push(o)),
        "EndpointSlice" => serde_json::from_value::<EndpointSlice>(value).map(|o| report.objects.slices.push(o)),
        _ => serde_json::from_value::<Node>(value).map(|o| report.objects.nodes.push(o)),
    };
    if let Err(e) = result {
        report.errors.push(format!("{prefix}: {what}: {e}"));
    }
}

/// Sets `metadata.namespace` to `default` when it is missing or empty (what kubectl does).
fn default_namespace(obj: &mut Map<String, Value>) {
    let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        let missing = match meta.get("namespace") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if missing {
            meta.insert("namespace".to_string(), Value::String("default".to_string()));
        }
    }
}

/// `Kind namespace/name` (or `Kind name`, or `Kind (no name)`).
fn describe(kind: &str, obj: &Map<String, Value>, namespaced: bool) -> String {
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty());
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (name, namespace) {
        (Some(n), Some(ns)) if namespaced => format!("{kind} {ns}/{n}"),
        (Some(n), _) => format!("{kind} {n}"),
        (None, _) => format!("{kind} (no metadata.name)"),
    }
}

/// A name for an object whose kind is unknown.
fn describe_unknown(obj: &Map<String, Value>) -> String {
    match obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str) {
        Some(n) => format!("object {n:?}"),
        None => "object".to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = "\
# a comment before the first document
apiVersion: v1
kind: Service
metadata:
  name: web
  managedFields:
  - manager: kubectl
    operation: Apply
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: prod
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
ports:
- name: http
  port: 8080
---
# only a comment
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
data: {a: b}
--- {apiVersion: v1, kind: Node, metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}}
...
";

    #[test]
    fn multi_document_yaml() {
        let r = parse_str(MULTI, "multi.yaml");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!((r.objects.services.len(), r.objects.slices.len(), r.objects.nodes.len()), (1, 1, 1));
        let svc = &r.objects.services[0];
        assert_eq!(svc.metadata.namespace.as_deref(), Some("default"), "kubectl's default namespace");
        assert!(svc.metadata.managed_fields.is_none());
        assert_eq!(r.objects.slices[0].metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(r.objects.slices[0].endpoints[0].addresses, ["10.0.0.1"]);
        let node = &r.objects.nodes[0];
        assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
        assert_eq!(node.metadata.namespace, None, "Nodes are cluster-scoped");
    }

    #[test]
    fn json_documents() {
        let one = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "x"},
                      "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}"#;
        let r = parse_str(one, "svc.json");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.objects.services.len(), 1);

        // Concatenated JSON objects, tabs included (not valid YAML indentation).
        let two = format!("{one}\n{{\n\t\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"n\"}}\n}}\n");
        let r = parse_str(&two, "two.json");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!((r.objects.services.len(), r.objects.nodes.len()), (1, 1));
    }

    #[test]
    fn json_stream_errors_name_the_line_of_their_document() {
        let good = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "x"},
  "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}"#;
        let bad = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": [{"port": "x"}]}}"#;
        // Documents start on lines 1, 4 (after a blank line) and 6.
        let text = format!("{good}\n\n{good}\n{bad}\n");
        let r = parse_str(&text, "s.json");
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("document 3 (line 6)"), "{:?}", r.errors);
    }

    #[test]
    fn lists_are_flattened() {
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "a-1", "labels": {"kubernetes.io/service-name": "a"}},
             "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"name": "", "port": 80}]}
        ]}"#;
        let r = parse_str(list, "list.json");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!((r.objects.services.len(), r.objects.slices.len()), (1, 1));

        // A typed list from the API: items carry neither kind nor apiVersion.
        let typed = "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: b, namespace: y}\n  spec: {clusterIP: 10.96.0.2, ports: [{port: 81}]}\n";
        let r = parse_str(typed, "typed.yaml");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.objects.services[0].metadata.name.as_deref(), Some("b"));

        let bad_item = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: c}, spec: {ports: [{port: x}]}}\n";
        let r = parse_str(bad_item, "bad-list.yaml");
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].starts_with("bad-list.yaml: document 1 (line 1), item 1: Service default/c: "), "{}", r.errors[0]);
    }

    #[test]
    fn bad_documents_do_not_stop_the_good_ones() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: good1, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: broken
---
apiVersion: v1
kind: Service
metadata: {name: badport, namespace: ns}
spec: {clusterIP: 10.96.0.3, ports: [{port: eighty}]}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old, namespace: ns}
---
metadata: {name: kindless}
---
- just
- a list
---
apiVersion: v1
kind: Service
metadata: {name: good2, namespace: ns}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
";
        let r = parse_str(text, "mixed.yaml");
        let names: Vec<_> = r.objects.services.iter().filter_map(|s| s.metadata.name.as_deref()).collect();
        assert_eq!(names, ["good1", "good2"]);
        assert_eq!(r.errors.len(), 5, "{:#?}", r.errors);
        assert!(r.errors[0].starts_with("mixed.yaml: document 2 (line 6): invalid YAML: "), "{}", r.errors[0]);
        assert!(r.errors[0].contains("at line 9 column 1"), "positions are file lines: {}", r.errors[0]);
        assert!(r.errors[1].starts_with("mixed.yaml: document 3 (line 10): Service ns/badport: "), "{}", r.errors[1]);
        assert!(
            r.errors[2]
                .contains("document 4 (line 15): EndpointSlice ns/old: unsupported apiVersion \"discovery.k8s.io/v1beta1\""),
            "{}",
            r.errors[2]
        );
        assert!(r.errors[3].contains("document 5 (line 19): object \"kindless\": missing kind"), "{}", r.errors[3]);
        assert!(r.errors[4].contains("document 6 (line 21): not a Kubernetes object"), "{}", r.errors[4]);
    }

    #[test]
    fn unknown_kinds_and_empty_documents_are_skipped_silently() {
        let text =
            "---\n---\n# nothing\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n---\n\n";
        let r = parse_str(text, "x.yaml");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.objects.is_empty());
        assert!(parse_str("", "empty.yaml").errors.is_empty());
        // A Service with an unknown apiVersion is an error, not an unknown kind.
        let r = parse_str("apiVersion: v2\nkind: Service\nmetadata: {name: s}\n", "v2.yaml");
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].contains("Service default/s: unsupported apiVersion \"v2\""), "{}", r.errors[0]);
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("lb-manifests-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn write(&self, name: &str, content: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, content).expect("write temp file");
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const SVC_YAML: &[u8] =
        b"apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn manifest_files_lists_a_directory_like_kubectl() {
        let dir = TempDir::new("files");
        for name in ["b.yml", "a.yaml", "c.json", ".hidden.yaml", "d.yaml~", "notes.txt", "e.YAML.bak"] {
            dir.write(name, SVC_YAML);
        }
        fs::create_dir(dir.0.join("sub.yaml")).expect("mkdir");
        dir.write("sub.yaml/inner.yaml", SVC_YAML);
        let files = manifest_files(&dir.0).expect("list");
        let names: Vec<_> = files.iter().filter_map(|f| f.file_name()?.to_str()).collect();
        assert_eq!(names, ["a.yaml", "b.yml", "c.json"]);

        let single = dir.0.join("notes.txt");
        assert_eq!(manifest_files(&single).expect("file"), [single], "an explicit file is always read");
        assert!(manifest_files(&dir.0.join("missing")).is_err());
    }

    #[test]
    fn load_path_reads_every_file_and_reports_unreadable_ones() {
        let dir = TempDir::new("load");
        dir.write("1-svc.yaml", SVC_YAML);
        dir.write("2-node.json", br#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#);
        let bad = dir.write("3-binary.yaml", &[0xff, 0xfe, 0x00, 0x80]);
        dir.write(".4-hidden.yaml", b"this: [is not valid");
        let r = load_path(&dir.0);
        assert_eq!((r.objects.services.len(), r.objects.nodes.len()), (1, 1));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].starts_with(&format!("{}: cannot read", bad.display())), "{}", r.errors[0]);

        let r = load_path(&dir.0.join("nope"));
        assert_eq!(r.errors.len(), 1);
        assert!(r.objects.is_empty());
    }
}
