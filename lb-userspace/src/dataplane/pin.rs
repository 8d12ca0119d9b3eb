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

    /// Creates the directory (on a bpffs) and removes pins left by an earlier run.
    pub fn prepare_fresh(&self) -> Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && !is_bpffs(&self.root) {
            ensure_bpffs(parent)?;
        }
        self.remove()?;
        std::fs::create_dir_all(self.versioned()).with_context(|| format!("creating {}", self.versioned().display()))
    }

    pub fn pin(&self, name: &str, map: &Map) -> Result<()> {
        map.pin(self.map_path(name)).with_context(|| format!("pinning {name} under {}", self.versioned().display()))
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
