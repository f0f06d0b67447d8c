//! A slow link to a registry, for tests that need one endpoint much slower than another (the
//! seeds' 200 KB/s over a tailnet against 69 MB/s in-cluster): a TCP forwarder on loopback in a
//! node's namespace that holds back each chunk of the answer. `tc` on loopback would slow every
//! local service of the node alike; this slows one port.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::node::Node;

/// Most connections forwarded at once (later ones are closed at once).
const MAX_CONNECTIONS: u32 = 32;
/// Largest chunk of the answer sent after each delay.
const CHUNK: usize = 8 * 1024;

/// Forwards `127.0.0.1:<port>` in a node's namespace to an upstream address reachable from it,
/// sleeping `delay` before each chunk (at most 8 KiB) of the upstream's answer.
#[derive(Debug)]
pub struct SlowProxy {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl SlowProxy {
    pub fn start(node: &Node, port: u16, upstream: &str, delay: Duration) -> SlowProxy {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let netns = format!("/run/netns/{}", node.netns());
        let upstream = upstream.to_owned();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::Builder::new()
            .name("slow-proxy".into())
            .spawn(move || {
                // Threads started from here share the namespace entered.
                let Some(listener) = crate::token::listen_in(&netns, port, &ready_tx) else {
                    return;
                };
                let active = Arc::new(AtomicU32::new(0));
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted2.fetch_add(1, Ordering::Relaxed);
                            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                                continue;
                            }
                            active.fetch_add(1, Ordering::Relaxed);
                            let (stop3, active3, up) =
                                (stop2.clone(), active.clone(), upstream.clone());
                            let _ = std::thread::Builder::new()
                                .name("slow-proxy-conn".into())
                                .spawn(move || {
                                    forward(conn, &up, delay, &stop3);
                                    active3.fetch_sub(1, Ordering::Relaxed);
                                });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("start the slow proxy thread");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("slow proxy start")
            .unwrap_or_else(|e| panic!("slow proxy: {e}"));
        SlowProxy {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Copies `client` to `upstream` and back (slowly), until either side closes or `stop`.
fn forward(client: TcpStream, upstream: &str, delay: Duration, stop: &AtomicBool) {
    let Ok(addr) = upstream.parse() else { return };
    let Ok(up) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let tick = Some(Duration::from_millis(200));
    for s in [&client, &up] {
        let _ = s.set_read_timeout(tick);
        let _ = s.set_nodelay(true);
    }
    let (Ok(mut c_in), Ok(mut u_out)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    std::thread::scope(|s| {
        s.spawn(move || copy(&mut c_in, &mut u_out, Duration::ZERO, stop));
        let (mut u_in, mut c_out) = (&up, &client);
        copy(&mut u_in, &mut c_out, delay, stop);
    });
}

/// Copies until EOF, an error or `stop`, sleeping `delay` before each chunk; then closes both.
fn copy(from: &mut impl ReadShut, to: &mut impl ReadShut, delay: Duration, stop: &AtomicBool) {
    let mut buf = [0u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                std::thread::sleep(delay);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    from.shut();
    to.shut();
}

trait ReadShut: Read + Write {
    fn shut(&self);
}

impl ReadShut for TcpStream {
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl ReadShut for &TcpStream {
    fn shut(&self) {
        let _ = (*self).shutdown(Shutdown::Both);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
