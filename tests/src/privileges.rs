//! Privileged tests skip loudly when not root; with LB_REQUIRE_ROOT=1 (set by `cargo xtask
//! test`, hence CI) they fail instead.

pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("LB_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs root but LB_REQUIRE_ROOT=1");
    }
    eprintln!("skipped: needs root ({test})");
    println!("skipped: needs root ({test})");
    false
}
