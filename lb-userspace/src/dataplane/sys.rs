//! The one bpf(2) command aya 0.14 does not wrap: BPF_MAP_UPDATE_BATCH (written by hand,
//! 20 lines; it fills a Maglev table of up to 262k slots in one syscall instead of one per
//! slot).

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

/// Writes `values[i]` at index `i` of an array map with `u32` values.
pub fn array_update_all(map: impl AsFd, values: &[u32]) -> Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
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
