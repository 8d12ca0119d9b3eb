//! bpffs: mounting it when needed and pinning the maps under a versioned directory
//! (`<root>/v<MAP_LAYOUT_VERSION>/<MAP>`), so `lbctl` and later agents can open them.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure `mountpoint` is a bpffs, mounting one if it is not (as `mount -t bpf bpf DIR`).
pub fn ensure_bpffs(mountpoint: &Path) -> Result<()> {
    if is_bpffs(mountpoint) {
        return Ok(());
    }
    std::fs::create_dir_all(mountpoint).with_context(|| format!("creating {}", mountpoint.display()))?;
    let target = CString::new(mountpoint.as_os_str().as_bytes())?;
    let fstype = CString::new("bpf")?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!("mounting bpffs on {}: {}", mountpoint.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// The directory holding one agent's pinned maps.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        PinDir { root: root.into() }
    }

    /// `<root>/v<layout version>`.
    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{}", lb_common::MAP_LAYOUT_VERSION))
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.versioned().join(name)
    }

    /// Where the interface attachments (TCX links) are pinned. Not versioned: a new agent with
    /// a new map layout still takes the links over, atomically.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Creates the directories (on a bpffs, mounted on the parent if needed). Pins left by an
    /// earlier agent are kept: they are adopted.
    pub fn prepare(&self) -> Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && !is_bpffs(&self.root) {
            ensure_bpffs(parent)?;
        }
        std::fs::create_dir_all(self.versioned()).with_context(|| format!("creating {}", self.versioned().display()))?;
        std::fs::create_dir_all(self.links_dir()).with_context(|| format!("creating {}", self.links_dir().display()))
    }

    /// Removes maps pinned by agents of other layout versions (after an upgrade or a
    /// downgrade this agent has taken the links over; their maps are unused).
    pub fn remove_other_versions(&self) -> Result<Vec<PathBuf>> {
        let mine = self.versioned();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let path = entry?.path();
            let versioned =
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('v') && n[1..].parse::<u32>().is_ok());
            if versioned && path != mine {
                std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Whether `name` is pinned.
    pub fn is_pinned(&self, name: &str) -> bool {
        self.map_path(name).exists()
    }

    /// Unpins `name` if it is pinned with a value size other than `size` (a map the loader
    /// could not adopt: the programs would be checked against the old size). True if it did.
    pub fn drop_if_value_size_differs(&self, name: &str, size: u32) -> Result<bool> {
        let path = self.map_path(name);
        if !path.exists() {
            return Ok(false);
        }
        let info = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        if info.value_size() == size {
            return Ok(false);
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        Ok(true)
    }

    pub fn pin_data(&self, name: &str, map: &MapData) -> Result<()> {
        map.pin(self.map_path(name)).with_context(|| format!("pinning {name} under {}", self.versioned().display()))
    }

    /// Opens a pinned map.
    pub fn open(&self, name: &str) -> Result<Map> {
        let path = self.map_path(name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening {} (is lb-agent running with this --bpffs?)", path.display()))?;
        Ok(Map::from_map_data(data)?)
    }

    /// Removes the whole directory (unpinning every map).
    pub fn remove(&self) -> Result<()> {
        if self.root.exists() {
            std::fs::remove_dir_all(&self.root).with_context(|| format!("removing {}", self.root.display()))?;
        }
        Ok(())
    }
}
