//! What a program does with a packet once the pipeline (`lb`) has seen it.

pub enum Verdict {
    /// Let the packet continue (translated or not).
    Pass,
    /// A service packet or a reply was translated to the addresses `process` wrote into its
    /// `out`: the caller delivers it (`fwd`).
    Translated,
    Drop,
    /// Dropped: a rewrite helper refused the packet (logged by the program).
    RewriteFailed,
    /// The frame was rewritten into an ICMP port unreachable for its sender.
    Reject,
    /// (Inside `process` only: the packet starts a new flow.)
    NewFlow,
}
