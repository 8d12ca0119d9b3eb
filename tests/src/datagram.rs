//! Large UDP datagrams (fragmented on the way) checked end to end: the client sends a request
//! of `len` bytes asking for an answer of `answer` bytes; the server answers with the SHA-256
//! of the whole request it received and then that many bytes of a pattern derived from it.
//! The client checks the digest against what it sent, the answer's length and every byte of
//! the pattern: a datagram that lost, duplicated or mixed up a fragment fails.
//!
//! Request: `answer` (u32, big endian), then `len - 4` bytes of [`pattern`]`(seed)`. Answer:
//! the 32-byte digest, then `answer - 32` bytes of [`pattern`] seeded with the digest's first
//! byte.

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use ring::digest::{digest, SHA256};

use crate::netns::in_netns;

/// The largest datagram either side handles (UDP's limit).
pub const MAX: usize = 65_507;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8 ^ (i >> 8) as u8).collect()
}

/// The answer to `request`, or `None` for a request too short to carry its header.
pub fn answer(request: &[u8]) -> Option<Vec<u8>> {
    let want = u32::from_be_bytes(request.get(..4)?.try_into().ok()?) as usize;
    let d = digest(&SHA256, request);
    let mut out = d.as_ref().to_vec();
    out.extend_from_slice(&pattern(out[0], want.clamp(32, MAX) - 32));
    Some(out)
}

/// Serves requests on `socket` until it fails.
pub fn serve(socket: UdpSocket) {
    let mut buf = vec![0u8; MAX];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        if let Some(a) = answer(&buf[..n]) {
            let _ = socket.send_to(&a, from);
        }
    }
}

/// One exchange from `netns`: a `len`-byte request to `dst` asking for `answer` bytes, both
/// checked. `seed` varies the request's content.
pub fn exchange(netns: &str, dst: SocketAddrV4, len: usize, answer: usize, seed: u8, timeout: Duration) -> Result<()> {
    ensure!((4..=MAX).contains(&len) && (32..=MAX).contains(&answer), "sizes out of range");
    in_netns(netns, || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::V4(dst))?;
        s.set_read_timeout(Some(timeout))?;
        let mut req = (answer as u32).to_be_bytes().to_vec();
        req.extend_from_slice(&pattern(seed, len - 4));
        let sent = s.send(&req).with_context(|| format!("sending {len} bytes to {dst}"))?;
        ensure!(sent == len, "sent {sent} of {len} bytes");
        let mut buf = vec![0u8; MAX];
        let n = s.recv(&mut buf).with_context(|| format!("the {answer}-byte answer to a {len}-byte request to {dst}"))?;
        let got = &buf[..n];
        ensure!(n == answer, "answer of {n} bytes, expected {answer}");
        ensure!(got[..32] == *digest(&SHA256, &req).as_ref(), "the server received another request than was sent");
        ensure!(got[32..] == pattern(got[0], answer - 32)[..], "the answer's content is corrupted");
        Ok(())
    })
}
