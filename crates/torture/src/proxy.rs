//! One TCP proxy per ordered pair of replicas (i -> j). Replica i dials
//! peer j through proxy (i, j); paxlog's peer connections carry messages
//! one way (the dialer's outbound stream), so blocking proxy (i, j) cuts
//! exactly the direction i -> j. A blocked proxy black-holes: it accepts
//! and silently discards bytes, like a network that drops packets. Every
//! change of a proxy's state closes its open connections, so that no
//! half-forwarded frame survives a heal.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Link {
    target: SocketAddr,
    blocked: AtomicBool,
    epoch: watch::Sender<u64>,
}

pub struct Net {
    n: usize,
    links: Vec<Option<Arc<Link>>>,
    listen: Vec<Option<SocketAddr>>,
}

impl Net {
    /// Starts n*(n-1) proxies forwarding to the replicas' real peer addresses.
    pub async fn start(real: &[SocketAddr]) -> Result<Net> {
        let n = real.len();
        let mut links = Vec::new();
        let mut listen = Vec::new();
        for i in 0..n {
            for (j, target) in real.iter().enumerate() {
                if i == j {
                    links.push(None);
                    listen.push(None);
                    continue;
                }
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("binding a proxy port")?;
                listen.push(Some(listener.local_addr()?));
                let (epoch, _) = watch::channel(0u64);
                let link = Arc::new(Link {
                    target: *target,
                    blocked: AtomicBool::new(false),
                    epoch,
                });
                links.push(Some(link.clone()));
                tokio::spawn(accept_loop(listener, link));
            }
        }
        Ok(Net { n, links, listen })
    }

    /// Where replica `from` dials replica `to`.
    pub fn listen_addr(&self, from: usize, to: usize) -> Option<SocketAddr> {
        self.listen[from * self.n + to]
    }

    pub fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.links[from * self.n + to]
            .as_ref()
            .is_some_and(|l| l.blocked.load(Ordering::SeqCst))
    }

    /// Blocks or unblocks the direction from -> to.
    pub fn set_blocked(&self, from: usize, to: usize, blocked: bool) {
        if let Some(link) = &self.links[from * self.n + to] {
            if link.blocked.swap(blocked, Ordering::SeqCst) != blocked {
                link.epoch.send_modify(|e| *e += 1);
            }
        }
    }

    pub fn heal_all(&self) {
        for i in 0..self.n {
            for j in 0..self.n {
                self.set_blocked(i, j, false);
            }
        }
    }

    /// Cuts every link between the two groups, both ways.
    pub fn split(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.set_blocked(x, y, true);
                self.set_blocked(y, x, true);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, link: Arc<Link>) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(serve(sock, link.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn serve(mut client: TcpStream, link: Arc<Link>) {
    let _ = client.set_nodelay(true);
    let mut rx = link.epoch.subscribe();
    rx.borrow_and_update();
    if link.blocked.load(Ordering::SeqCst) {
        let mut buf = [0u8; 8192];
        loop {
            tokio::select! {
                r = client.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { return },
                _ = rx.changed() => return,
            }
        }
    }
    let mut upstream =
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(link.target)).await {
            Ok(Ok(s)) => s,
            _ => return,
        };
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = rx.changed() => {}
    }
}
