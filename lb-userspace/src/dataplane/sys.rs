//! The one bpf(2) command aya 0.14 does not wrap: BPF_MAP_UPDATE_BATCH (written by hand, a
//! few lines; it fills a Maglev table of up to 262k slots in one syscall instead of one per
//! slot, and swaps every changed table of a sync into the map-of-maps at once), and the
//! fdinfo memory accounting of a map.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Result};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values[i]` at index `i` of an array map whose value type is `T`.
pub fn array_update_all<T: Copy>(map: impl AsFd, values: &[T]) -> Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    array_update_all_keys(map, &keys, values)
}

/// The memory the kernel accounts to a map (`memlock:` in /proc/self/fdinfo: the map's own
/// estimate of its usage since Linux 6.4).
pub fn memlock_bytes(map: impl AsFd) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map.as_fd().as_raw_fd())).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// Sets `outer[key] = inner map` for every entry with one BPF_MAP_UPDATE_BATCH on a
/// map-of-maps (`outer` is its descriptor).
pub fn map_of_maps_update_batch(
    outer: Option<&std::os::fd::OwnedFd>,
    entries: &[(u32, std::os::fd::BorrowedFd<'_>)],
) -> Result<()> {
    let Some(outer) = outer else { bail!("no descriptor for the outer map") };
    let keys: Vec<u32> = entries.iter().map(|(k, _)| *k).collect();
    let fds: Vec<u32> = entries.iter().map(|(_, fd)| fd.as_raw_fd() as u32).collect();
    array_update_all_keys(outer, &keys, &fds)
}

/// BPF_MAP_UPDATE_BATCH with explicit keys.
fn array_update_all_keys<T: Copy>(map: impl AsFd, keys: &[u32], values: &[T]) -> Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut done = 0usize;
    while done < values.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (values.len() - done) as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at live buffers of `count` keys and values for the whole call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>())
        };
        if rc < 0 {
            bail!("BPF_MAP_UPDATE_BATCH: {}", std::io::Error::last_os_error());
        }
        if attr.count == 0 {
            bail!("BPF_MAP_UPDATE_BATCH made no progress");
        }
        done += attr.count as usize;
    }
    Ok(())
}
