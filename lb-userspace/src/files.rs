//! The manifest source: a file or a directory of Kubernetes YAML/JSON, re-read when it changes.
//!
//! A file that cannot be parsed at all (an editor's half-written save, a YAML syntax error)
//! keeps contributing the objects of its last good version, so a typo never withdraws
//! Services; a bad document inside a readable file is reported and skipped on its own.

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

use crate::manifests::{self, ObjectSet};

/// Where one file's objects sit in the merged set.
#[derive(Clone, Default)]
struct Ranges {
    services: Range<usize>,
    slices: Range<usize>,
    nodes: Range<usize>,
}

/// The objects of one file in the making of a merged set: freshly parsed, or the last good
/// ones, taken from the previous merged set.
enum FileObjects {
    Parsed(ObjectSet),
    Previous(Ranges),
}

pub struct FileSource {
    path: PathBuf,
    /// The last merged set (shared with whoever holds the snapshot: one copy in memory) and
    /// each file's part of it.
    merged: Arc<ObjectSet>,
    last_good: BTreeMap<PathBuf, Ranges>,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> FileSource {
        FileSource { path: path.into(), merged: Arc::default(), last_good: BTreeMap::new() }
    }

    /// Reads every manifest file now. Returns the merged objects (shared, not copied) and the
    /// problems found.
    pub fn load(&mut self) -> (Arc<ObjectSet>, Vec<String>) {
        let mut errors = Vec::new();
        let files = match manifests::manifest_files(&self.path) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("{}: {e}", self.path.display()));
                return (self.merged.clone(), errors);
            }
        };
        let mut now = Vec::new();
        for file in files {
            let report = match std::fs::read_to_string(&file) {
                Ok(text) => manifests::parse_str(&text, &file.display().to_string()),
                Err(e) => {
                    errors.push(format!("{}: {e}", file.display()));
                    if let Some(prev) = self.last_good.get(&file) {
                        now.push((file.clone(), FileObjects::Previous(prev.clone())));
                    }
                    continue;
                }
            };
            let empty = report.objects.services.is_empty() && report.objects.slices.is_empty() && report.objects.nodes.is_empty();
            errors.extend(report.errors.iter().cloned());
            if empty && !report.errors.is_empty() {
                if let Some(prev) = self.last_good.get(&file) {
                    errors.push(format!("{}: unreadable, keeping its last good version", file.display()));
                    now.push((file.clone(), FileObjects::Previous(prev.clone())));
                    continue;
                }
            }
            now.push((file, FileObjects::Parsed(report.objects)));
        }
        let (merged, ranges) = merge(now, &self.merged);
        self.merged = Arc::new(merged);
        self.last_good = ranges;
        (self.merged.clone(), errors)
    }

    /// Watches the path; every relevant change sends a unit on `tx`. Keep the returned
    /// watcher alive.
    pub fn watch(&self, tx: tokio::sync::mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
        let (dir, only) = if self.path.is_dir() {
            (self.path.clone(), None)
        } else {
            let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            (parent, self.path.file_name().map(|n| n.to_os_string()))
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if event.kind.is_access() {
                return;
            }
            let relevant = match &only {
                None => true,
                // Files replaced by rename show up under either name.
                Some(name) => event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())),
            };
            if relevant {
                let _ = tx.try_send(());
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", dir.display()))?;
        Ok(watcher)
    }
}

/// The merged set of every file's objects (moved in when parsed, copied from `previous` when
/// kept) and where each file's objects are in it.
fn merge(files: Vec<(PathBuf, FileObjects)>, previous: &ObjectSet) -> (ObjectSet, BTreeMap<PathBuf, Ranges>) {
    let mut all = ObjectSet::default();
    let mut ranges = BTreeMap::new();
    for (file, objects) in files {
        let start = (all.services.len(), all.slices.len(), all.nodes.len());
        match objects {
            FileObjects::Parsed(o) => {
                all.services.extend(o.services);
                all.slices.extend(o.slices);
                all.nodes.extend(o.nodes);
            }
            FileObjects::Previous(r) => {
                all.services.extend_from_slice(&previous.services[r.services]);
                all.slices.extend_from_slice(&previous.slices[r.slices]);
                all.nodes.extend_from_slice(&previous.nodes[r.nodes]);
            }
        }
        let r =
            Ranges { services: start.0..all.services.len(), slices: start.1..all.slices.len(), nodes: start.2..all.nodes.len() };
        ranges.insert(file, r);
    }
    (all, ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns, name: a}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n";
    const SVC_B: &str = "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns, name: b}\nspec:\n  clusterIP: 10.96.0.2\n  ports: [{port: 80}]\n";

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(set: &ObjectSet) -> Vec<String> {
        let mut v: Vec<String> = set.services.iter().filter_map(|s| s.metadata.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn unparsable_file_keeps_its_last_good_version() {
        let dir = tempdir("lastgood");
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.join("b.yaml"), SVC_B).unwrap();
        let mut src = FileSource::new(&dir);
        let (set, errors) = src.load();
        assert_eq!(names(&set), ["a", "b"]);
        assert!(errors.is_empty(), "{errors:?}");

        // A half-written save: not YAML at all.
        std::fs::write(dir.join("a.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n").unwrap();
        let (set, errors) = src.load();
        assert_eq!(names(&set), ["a", "b"], "service a is not withdrawn by a syntax error");
        assert!(errors.iter().any(|e| e.contains("a.yaml")), "{errors:?}");
        // Still broken at the next load (kept from a set that itself kept it), while b changes.
        std::fs::write(dir.join("b.yaml"), format!("{SVC_B}---\n{}", SVC_B.replace("name: b", "name: c"))).unwrap();
        let (set, _) = src.load();
        assert_eq!(names(&set), ["a", "b", "c"]);

        // Deleting the file does withdraw it.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let (set, _) = src.load();
        assert_eq!(names(&set), ["b", "c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn single_file_source() {
        let dir = tempdir("single");
        let f = dir.join("all.yaml");
        std::fs::write(&f, format!("{SVC}---\n{SVC_B}")).unwrap();
        let (set, errors) = FileSource::new(&f).load();
        assert_eq!(names(&set), ["a", "b"]);
        assert!(errors.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
