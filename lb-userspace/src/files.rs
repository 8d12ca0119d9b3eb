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
