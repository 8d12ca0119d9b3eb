//! Backend server for tests and the demo: TCP answers its name on connect and to every line;
//! UDP answers its name to every datagram. Prints "ready" once listening. With `--report-peer`
//! the answer is `NAME peer=IP` (IP: the client address this server saw), so tests can check
//! masquerading. With `--bulk PORT` it also serves bulk transfers checked by hash, with
//! `--datagrams PORT` large UDP datagrams checked the same way.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    name: String,
    #[arg(long)]
    tcp: Option<u16>,
    #[arg(long)]
    udp: Option<u16>,
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Answer `NAME peer=IP` instead of `NAME` (IP: the peer address of the connection or
    /// datagram).
    #[arg(long)]
    report_peer: bool,
    /// Also serve bulk transfers on this TCP port (`lb_tests::bulk`).
    #[arg(long)]
    bulk: Option<u16>,
    /// Also answer large UDP datagrams on this port (`lb_tests::datagram`).
    #[arg(long)]
    datagrams: Option<u16>,
}

fn answer_for(name: &str, report_peer: bool, peer: Option<std::net::SocketAddr>) -> String {
    match (report_peer, peer) {
        (true, Some(p)) => format!("{name} peer={}\n", p.ip()),
        _ => format!("{name}\n"),
    }
}

fn serve(mut s: TcpStream, answer: String) {
    if s.write_all(answer.as_bytes()).is_err() {
        return;
    }
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (name, report_peer) = (args.name.clone(), args.report_peer);
    let tcp = args.tcp.map(|p| TcpListener::bind((args.bind.as_str(), p))).transpose()?;
    let udp = args.udp.map(|p| UdpSocket::bind((args.bind.as_str(), p))).transpose()?;
    let bulk = args.bulk.map(|p| TcpListener::bind((args.bind.as_str(), p))).transpose()?;
    let datagrams = args.datagrams.map(|p| UdpSocket::bind((args.bind.as_str(), p))).transpose()?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut threads = Vec::new();
    if let Some(l) = tcp {
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let a = answer_for(&name, report_peer, s.peer_addr().ok());
                // Small stacks: the SNAT capacity test holds 10 000 connections open.
                let _ = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || serve(s, a));
            }
        }));
    }
    if let Some(l) = bulk {
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    if let Err(e) = lb_tests::bulk::serve(s) {
                        eprintln!("lb-echo: bulk transfer: {e:#}");
                    }
                });
            }
        }));
    }
    if let Some(u) = datagrams {
        threads.push(std::thread::spawn(move || lb_tests::datagram::serve(u)));
    }
    if let Some(u) = udp {
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(answer_for(&name, report_peer, Some(from)).as_bytes(), from);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
