//! The benchmark floor: programs that do nothing, run side by side with ours through
//! BPF_PROG_TEST_RUN so timings are reported as ratios measured in the same run.

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, TC_ACT_OK},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn lb_noop_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[classifier]
pub fn lb_noop_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}
