//! The manifest source: a file or a directory of Kubernetes YAML/JSON, re-read when it changes.
//!
//! A file that cannot be parsed at all (an editor's half-written save, a YAML syntax error)
//! keeps contributing the objects of its last good version, so a typo never withdraws
//! Services; a bad document inside a readable file is reported and skipped on its own.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

use crate::manifests::{self, ObjectSet};

pub struct FileSource {
    path: PathBuf,
    last_good: BTreeMap<PathBuf, ObjectSet>,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> FileSource {
        FileSource { path: path.into(), last_good: BTreeMap::new() }
    }

    /// Reads every manifest file now. Returns the merged objects and the problems found.
    pub fn load(&mut self) -> (ObjectSet, Vec<String>) {
        let mut errors = Vec::new();
        let files = match manifests::manifest_files(&self.path) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("{}: {e}", self.path.display()));
                return (merge(self.last_good.values()), errors);
            }
        };
        let mut now = BTreeMap::new();
        for file in files {
            let report = match std::fs::read_to_string(&file) {
                Ok(text) => manifests::parse_str(&text, &file.display().to_string()),
                Err(e) => {
                    errors.push(format!("{}: {e}", file.display()));
                    if let Some(prev) = self.last_good.get(&file) {
                        now.insert(file.clone(), prev.clone());
                    }
                    continue;
                }
            };
            let empty = report.objects.services.is_empty() && report.objects.slices.is_empty() && report.objects.nodes.is_empty();
            errors.extend(report.errors.iter().cloned());
            if empty && !report.errors.is_empty() {
                if let Some(prev) = self.last_good.get(&file) {
                    errors.push(format!("{}: unreadable, keeping its last good version", file.display()));
                    now.insert(file.clone(), prev.clone());
                    continue;
                }
            }
            now.insert(file, report.objects);
        }
        self.last_good = now;
        (merge(self.last_good.values()), errors)
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

fn merge<'a>(sets: impl Iterator<Item = &'a ObjectSet>) -> ObjectSet {
    let mut all = ObjectSet::default();
    for s in sets {
        all.services.extend(s.services.iter().cloned());
        all.slices.extend(s.slices.iter().cloned());
        all.nodes.extend(s.nodes.iter().cloned());
    }
    all
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

        // Deleting the file does withdraw it.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let (set, _) = src.load();
        assert_eq!(names(&set), ["b"]);
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
