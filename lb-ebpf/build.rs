//! Link options for the eBPF object (passed to bpf-linker).
//!
//! `--disable-expand-memcpy-in-order`: by default bpf-linker asks LLVM to keep memcpy expansion
//! in order for old kernels' JIT pattern matching, which also sets LLVM's inline limit for
//! memset to zero: every zeroed struct then became a call to a byte-at-a-time `memset`
//! subprogram (16–28 iterations, several of them on every packet). Without it, LLVM expands
//! small memsets and memcpys to a few word stores.
fn main() {
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
