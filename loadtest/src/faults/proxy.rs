//! A TCP proxy a fault scenario controls: it accepts on a local port and forwards each
//! connection to one upstream address (a hub's leafnode port), until [`CutProxy::cut`] drops
//! every connection it carries and refuses new ones (each is accepted and closed at once, so the
//! peer sees the link fail and keeps retrying); [`CutProxy::restore`] lets connections through
//! again. The link between a leaf node and its hub goes through it, so a test can cut that link
//! and bring it back while both servers keep running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// What the proxy counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections forwarded to the upstream.
    pub forwarded: u64,
    /// Connections closed at once because the link was cut.
    pub refused: u64,
    /// Connections dropped by [`CutProxy::cut`].
    pub dropped: u64,
    /// Connections open now.
    pub open: u64,
}

#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    forwarded: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, AbortHandle>>,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running proxy; stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    ///
    /// # Errors
    /// When no local port can be bound.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("cannot bind the proxy's port")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(CutProxy { addr, upstream, shared, accept })
    }

    /// The local address peers connect to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    #[must_use]
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Cuts the link: every open connection is closed (both sides) and new ones are closed as
    /// soon as they are accepted, until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let conns: Vec<AbortHandle> = self.shared.conns().drain().map(|(_, h)| h).collect();
        self.shared.dropped.fetch_add(conns.len() as u64, Ordering::Relaxed);
        for c in conns {
            c.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the link is cut.
    #[must_use]
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// What it counted so far.
    #[must_use]
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            open: self.shared.conns().len() as u64,
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, c) in self.shared.conns().drain() {
            c.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        // Registered under the lock before the task can finish, so a finished task always finds
        // its entry to remove, and a cut between accept and registration still drops it.
        let mut conns = shared.conns();
        let task = tokio::spawn(async move {
            forward(inbound, upstream, &s).await;
            s.conns().remove(&id);
        });
        if shared.cut.load(Ordering::SeqCst) {
            task.abort();
            shared.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            conns.insert(id, task.abort_handle());
        }
    }
}

async fn forward(mut inbound: TcpStream, upstream: SocketAddr, shared: &Shared) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn echo_through(proxy: &CutProxy, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(proxy.addr()).await?;
        s.write_all(payload).await?;
        let mut buf = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no echo within 5 s"))??;
        Ok(buf)
    }

    /// Reads until the peer closes; `true` when it did (EOF or reset) within 5 s.
    async fn closed_by_peer(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn forwards_then_cut_drops_and_refuses_then_restore_forwards_again() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        assert_eq!(echo_through(&proxy, b"hello").await.unwrap(), b"hello");

        // A connection open across the cut is closed by it.
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        assert_eq!(proxy.stats().open, 1);
        proxy.cut();
        assert!(proxy.is_cut());
        assert!(closed_by_peer(&mut open).await, "a connection open at the cut must be closed");
        assert_eq!(proxy.stats().dropped, 1);

        // New connections are closed at once, nothing reaches the upstream.
        let forwarded = proxy.stats().forwarded;
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = refused.write_all(b"lost").await;
        assert!(closed_by_peer(&mut refused).await, "a connection made while cut must be closed");
        assert!(echo_through(&proxy, b"lost").await.is_err());
        assert!(proxy.stats().refused >= 2, "{:?}", proxy.stats());
        assert_eq!(proxy.stats().forwarded, forwarded);

        proxy.restore();
        assert!(!proxy.is_cut());
        assert_eq!(echo_through(&proxy, b"back").await.unwrap(), b"back");
        assert_eq!(proxy.stats().forwarded, forwarded + 1);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        drop(proxy);
        assert!(closed_by_peer(&mut s).await);
    }
}
