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

/// Whether this kernel lets XDP programs call `bpf_xdp_adjust_meta` (some builds refuse the
/// helper to XDP). Probed once by loading a three-instruction XDP program that calls it
/// (written by hand: aya probes program and map types, not helpers per program type).
pub fn xdp_has_metadata() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const BPF_FUNC_XDP_ADJUST_META: i32 = 54;
        // r2 = 0; call bpf_xdp_adjust_meta; r0 = XDP_PASS; exit
        let insn =
            |code: u8, regs: u8, imm: i32| -> u64 { u64::from(code) | (u64::from(regs) << 8) | (u64::from(imm as u32) << 32) };
        let prog: [u64; 4] = [insn(0xb7, 2, 0), insn(0x85, 0, BPF_FUNC_XDP_ADJUST_META), insn(0xb7, 0, 2), insn(0x95, 0, 0)];
        let license = c"GPL";
        #[repr(C)]
        #[derive(Default)]
        struct ProgLoadAttr {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            _rest: [u64; 12],
        }
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: attr points at live buffers for the whole call; a returned fd is closed.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>())
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd as i32) };
        true
    })
}
