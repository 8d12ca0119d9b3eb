//! The node sysctls the agent changes (`accept_local`, `rp_filter`: see
//! [`super::attach::allow_local_sources`]), journaled in a map pinned at `<bpffs>/sysctl-journal`
//! so that the first value each one had is known to whichever agent cleans up: `lb-agent
//! --cleanup`, or an agent's own exit without `--keep-datapath`, writes those values back.
//! The journal lives outside the versioned map directory: an upgrade to a new map layout keeps
//! it.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};

use super::pin::PinDir;

/// Key length: a path under `/proc/sys`, NUL-padded (`net/ipv4/conf/<15 chars>/accept_local`
/// is 42 bytes).
const KEY_LEN: usize = 64;
const MAX_ENTRIES: u32 = 4096;
const FILE: &str = "sysctl-journal";

/// The journal: sysctl path (relative to the node's `/proc/sys`) → the value it had before the
/// agent first changed it.
pub struct Journal {
    map: HashMap<MapData, [u8; KEY_LEN], u8>,
}

fn key(rel: &str) -> Option<[u8; KEY_LEN]> {
    let mut k = [0u8; KEY_LEN];
    (rel.len() < KEY_LEN).then(|| {
        k[..rel.len()].copy_from_slice(rel.as_bytes());
        k
    })
}

fn path_of(key: &[u8; KEY_LEN]) -> String {
    let end = key.iter().position(|&b| b == 0).unwrap_or(KEY_LEN);
    String::from_utf8_lossy(&key[..end]).into_owned()
}

fn read(proc_sys: &Path, rel: &str) -> Option<u8> {
    std::fs::read_to_string(proc_sys.join(rel)).ok()?.trim().parse().ok()
}

impl Journal {
    /// The journal pinned under `pins`' root, created (and pinned) if there is none.
    pub fn open_or_create(pins: &PinDir) -> Result<Journal> {
        let path = pins.root.join(FILE);
        let data = if path.exists() {
            MapData::from_pin(&path).context("opening the sysctl journal")?
        } else {
            const BPF_MAP_TYPE_HASH: u32 = 1;
            let obj =
                aya_obj::Map::new_from_params(BPF_MAP_TYPE_HASH, KEY_LEN as u32, 1, MAX_ENTRIES, lb_common::BPF_F_NO_PREALLOC);
            let data = MapData::create(obj, "LB_SYSCTL", None).context("creating the sysctl journal")?;
            data.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            data
        };
        Ok(Journal { map: HashMap::try_from(Map::from_map_data(data)?)? })
    }

    /// The journal pinned under `pins`' root, if any (`--cleanup`).
    pub fn open(pins: &PinDir) -> Result<Option<Journal>> {
        let path = pins.root.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&path).context("opening the sysctl journal")?;
        Ok(Some(Journal { map: HashMap::try_from(Map::from_map_data(data)?)? }))
    }

    /// Sets `proc_sys/rel` to `value`, journaling the value it had if this is the first change.
    pub fn set(&mut self, proc_sys: &Path, rel: &str, value: u8) -> Result<()> {
        let k = key(rel).with_context(|| format!("sysctl path too long: {rel}"))?;
        let before = read(proc_sys, rel).with_context(|| format!("reading {}", proc_sys.join(rel).display()))?;
        if before == value {
            return Ok(());
        }
        if self.map.get(&k, 0).is_err() {
            self.map.insert(k, before, 0).context("journaling a sysctl")?;
        }
        std::fs::write(proc_sys.join(rel), value.to_string()).with_context(|| format!("writing {}", proc_sys.join(rel).display()))
    }

    /// Writes every journaled sysctl back under `proc_sys` (skipping those whose interface is
    /// gone) and empties the journal. Returns what could not be restored.
    pub fn restore(&mut self, proc_sys: &Path) -> Vec<String> {
        let entries: Vec<([u8; KEY_LEN], u8)> = self.map.iter().filter_map(|r| r.ok()).collect();
        let mut problems = Vec::new();
        for (k, v) in entries {
            let rel = path_of(&k);
            let path = proc_sys.join(&rel);
            if path.exists() {
                if let Err(e) = std::fs::write(&path, v.to_string()) {
                    problems.push(format!("restoring {} to {v}: {e}", path.display()));
                    continue;
                }
            }
            let _ = self.map.remove(&k);
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::{key, path_of};

    #[test]
    fn keys_round_trip_and_refuse_long_paths() {
        let rel = "net/ipv4/conf/eth0.100/accept_local";
        assert_eq!(path_of(&key(rel).unwrap()), rel);
        assert!(key(&"x".repeat(64)).is_none());
    }
}
