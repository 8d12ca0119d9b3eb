//! Traffic clients. Sockets are created inside a namespace (see [`crate::netns::in_netns`]).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns::in_netns;

fn hello(dst: SocketAddrV4, timeout: Duration) -> Result<(String, BufReader<TcpStream>)> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout).with_context(|| format!("connect {dst}"))?;
    read_name(s, timeout)
}

/// Reads the backend's name, the first line an echo server sends on a new connection.
fn read_name(s: TcpStream, timeout: Duration) -> Result<(String, BufReader<TcpStream>)> {
    s.set_read_timeout(Some(timeout))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).context("reading the backend's name")?;
    anyhow::ensure!(!line.is_empty(), "connection closed without an answer");
    Ok((line.trim().to_string(), r))
}

/// A TCP connection from local port `sport` (bound with SO_REUSEADDR, so several connections
/// to different destinations may share it) to `dst`, with the backend's name read. Call inside
/// the client's namespace.
pub fn hello_from(sport: u16, dst: SocketAddrV4, timeout: Duration) -> Result<(String, BufReader<TcpStream>)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on an fd we own; the sockaddr structs outlive the calls.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4);
        // A connect() timeout.
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as _,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
            sin_zero: [0; 8],
        };
        let local = sa(std::net::Ipv4Addr::UNSPECIFIED, sport);
        let len = size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            anyhow::bail!("bind :{sport}: {}", std::io::Error::last_os_error());
        }
        let remote = sa(*dst.ip(), dst.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            anyhow::bail!("connect {dst} from :{sport}: {}", std::io::Error::last_os_error());
        }
        stream
    };
    read_name(stream, timeout)
}

/// Sends "ping" on a connection from [`hello_from`] and reads the answer.
pub fn ping(conn: &mut BufReader<TcpStream>) -> Result<String> {
    conn.get_mut().write_all(b"ping\n")?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    anyhow::ensure!(!line.is_empty(), "connection closed");
    Ok(line.trim().to_string())
}

/// `n` sequential new TCP connections: connect, read the backend's name, close.
pub fn tcp_hello(netns: &str, dst: SocketAddrV4, n: usize, timeout: Duration) -> Vec<Result<String>> {
    in_netns(netns, || (0..n).map(|_| hello(dst, timeout).map(|(name, _)| name)).collect())
}

/// `n` new UDP flows, each a fresh connected socket (so only replies from `dst` are accepted).
pub fn udp_hello(netns: &str, dst: SocketAddrV4, n: usize, timeout: Duration) -> Vec<Result<String>> {
    in_netns(netns, || {
        (0..n)
            .map(|_| {
                let f = UdpFlow::new(dst)?;
                f.send_recv(timeout)
            })
            .collect()
    })
}

/// Established TCP connections kept open.
pub struct HeldTcp {
    conns: Vec<(String, BufReader<TcpStream>)>,
}

impl HeldTcp {
    pub fn open(netns: &str, dst: SocketAddrV4, n: usize, timeout: Duration) -> Result<HeldTcp> {
        let conns = in_netns(netns, || (0..n).map(|_| hello(dst, timeout)).collect::<Result<Vec<_>>>())?;
        Ok(HeldTcp { conns })
    }

    /// Opens `n` connections, keeping those that succeed: (the held ones, how many failed).
    pub fn open_counting(netns: &str, dst: SocketAddrV4, n: usize, timeout: Duration) -> (HeldTcp, usize) {
        let results = in_netns(netns, || (0..n).map(|_| hello(dst, timeout)).collect::<Vec<_>>());
        let failed = results.iter().filter(|r| r.is_err()).count();
        (HeldTcp { conns: results.into_iter().filter_map(Result::ok).collect() }, failed)
    }

    /// The backend name each connection got when it was opened.
    pub fn names(&self) -> Vec<String> {
        self.conns.iter().map(|(n, _)| n.clone()).collect()
    }

    /// "ping" on every connection; each answer is the name of the backend serving it now.
    pub fn ping(&mut self, timeout: Duration) -> Vec<Result<String>> {
        self.conns
            .iter_mut()
            .map(|(_, r)| {
                r.get_ref().set_read_timeout(Some(timeout))?;
                r.get_mut().write_all(b"ping\n")?;
                let mut line = String::new();
                r.read_line(&mut line)?;
                anyhow::ensure!(!line.is_empty(), "connection closed");
                Ok(line.trim().to_string())
            })
            .collect()
    }
}

/// One UDP flow: a connected socket with a fixed source port.
pub struct UdpFlow {
    socket: UdpSocket,
}

impl UdpFlow {
    fn new(dst: SocketAddrV4) -> Result<UdpFlow> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(dst)?;
        Ok(UdpFlow { socket })
    }

    /// Opens a flow from inside `netns`.
    pub fn open(netns: &str, dst: SocketAddrV4) -> Result<UdpFlow> {
        in_netns(netns, || UdpFlow::new(dst))
    }

    pub fn send_recv(&self, timeout: Duration) -> Result<String> {
        self.socket.set_read_timeout(Some(timeout))?;
        self.socket.send(b"hi")?;
        let mut buf = [0u8; 256];
        let n = self.socket.recv(&mut buf).context("waiting for the UDP answer")?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }
}

/// One new TCP connection keeping the socket error's kind (`ConnectionRefused`, `TimedOut`...):
/// the first line the server sent, and the peer address the client's socket is connected to.
pub fn tcp_probe(netns: &str, dst: SocketAddrV4, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    in_netns(netns, || {
        let s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let peer = s.peer_addr()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without an answer"));
        }
        Ok((line.trim().to_string(), peer))
    })
}

/// One datagram on a fresh connected UDP socket and its answer, keeping the socket error's
/// kind (an ICMP port unreachable makes `recv` fail with `ConnectionRefused`).
pub fn udp_probe(netns: &str, dst: SocketAddrV4, timeout: Duration) -> std::io::Result<String> {
    in_netns(netns, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(dst)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send(b"hi")?;
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

/// Answers per backend name, and the number of failures.
pub fn count_by_name(results: &[Result<String>]) -> (BTreeMap<String, usize>, usize) {
    let mut counts = BTreeMap::new();
    let mut errors = 0;
    for r in results {
        match r {
            Ok(name) => *counts.entry(name.clone()).or_insert(0) += 1,
            Err(_) => errors += 1,
        }
    }
    (counts, errors)
}

/// A plain HTTP/1.1 GET from inside `netns`: (status, headers lower-cased, body).
pub fn http_get(
    netns: &str,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<(u16, BTreeMap<String, String>, String)> {
    use std::io::Read;
    in_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout).with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
        let mut lines = head.lines();
        let status =
            lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).context("status line")?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect::<BTreeMap<_, _>>();
        let body = if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, headers, body))
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_names_and_errors() {
        let r = vec![Ok("a".to_string()), Ok("b".into()), Ok("a".into()), Err(anyhow::anyhow!("x"))];
        let (c, e) = count_by_name(&r);
        assert_eq!(c["a"], 2);
        assert_eq!(c["b"], 1);
        assert_eq!(e, 1);
    }
}
