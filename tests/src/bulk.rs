//! Bulk TCP transfers with content checked by hash (SHA-256, `ring`): the client sends a
//! length and that many bytes of a deterministic stream; the server hashes what it received,
//! answers the digest, then sends the same number of bytes of the stream back; the client
//! checks the digest and hashes what comes back against the stream's own. Both directions
//! carry the full length, so both are checked.

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use ring::digest::{Context as Sha, SHA256};

use crate::netns::in_netns;

const CHUNK: usize = 64 * 1024;

/// Fills `buf` with the stream's bytes starting at byte `offset` (a xorshift of the 8-byte
/// word index: cheap, and no two nearby chunks repeat).
fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let mut x = (pos / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> ((pos % 8) * 8)) as u8;
    }
}

/// The stream's first `n` bytes, chunk by chunk, to `f`; their digest.
fn stream(n: u64, mut f: impl FnMut(&[u8], u64) -> Result<()>) -> Result<Vec<u8>> {
    let mut sha = Sha::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < n {
        let len = CHUNK.min((n - off) as usize);
        fill(&mut buf[..len], off);
        sha.update(&buf[..len]);
        f(&buf[..len], off)?;
        off += len as u64;
    }
    Ok(sha.finish().as_ref().to_vec())
}

/// Writes `n` bytes of the stream, returning their digest.
fn send_stream(s: &mut TcpStream, n: u64) -> Result<Vec<u8>> {
    stream(n, |chunk, off| s.write_all(chunk).with_context(|| format!("sending at byte {off} of {n}")))
}

/// Reads exactly `n` bytes, returning their digest.
fn receive(s: &mut TcpStream, n: u64) -> Result<Vec<u8>> {
    let mut sha = Sha::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < n {
        let len = CHUNK.min((n - got) as usize);
        let k = s.read(&mut buf[..len]).with_context(|| format!("receiving at byte {got} of {n}"))?;
        ensure!(k > 0, "connection closed after {got} of {n} bytes");
        sha.update(&buf[..k]);
        got += k as u64;
    }
    Ok(sha.finish().as_ref().to_vec())
}

/// The server side of one connection.
pub fn serve(mut s: TcpStream) -> Result<()> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = u64::from_be_bytes(len);
    let digest = receive(&mut s, n)?;
    s.write_all(&digest)?;
    send_stream(&mut s, n)?;
    Ok(())
}

/// One transfer of `n` bytes each way to `dst` from `netns`; the time it took.
pub fn transfer(netns: &str, dst: SocketAddrV4, n: u64, timeout: Duration) -> Result<Duration> {
    in_netns(netns, || {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout).with_context(|| format!("connect {dst}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(&n.to_be_bytes())?;
        let sent = send_stream(&mut s, n).context("client → server")?;
        let mut digest = vec![0u8; sent.len()];
        s.read_exact(&mut digest).context("reading the server's digest")?;
        ensure!(digest == sent, "the server received other bytes than were sent ({n} bytes to {dst})");
        // The server sends the same stream back.
        let expected = stream(n, |_, _| Ok(()))?;
        let back = receive(&mut s, n).context("server → client")?;
        ensure!(back == expected, "the client received other bytes than the server sent ({n} bytes from {dst})");
        Ok(started.elapsed())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stream_is_deterministic_and_position_dependent() {
        let (mut a, mut b, mut c) = ([0u8; 100], [0u8; 100], [0u8; 60]);
        super::fill(&mut a, 0);
        super::fill(&mut b, 0);
        super::fill(&mut c, 40);
        assert_eq!(a, b);
        assert_eq!(&a[40..], &c[..], "a chunk at an offset continues the stream");
        assert_ne!(&a[..50], &a[50..], "not periodic");
    }
}
