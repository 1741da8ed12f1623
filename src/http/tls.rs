//! HTTPS (`[http.tls]`): a listener for `axum::serve` that hands over connections only once
//! their TLS handshake is done. Handshakes run on their own tasks, each bounded in time and
//! in number, so a slow or hostile client cannot hold up the others. A client speaking plain
//! HTTP fails the handshake and is disconnected: the server speaks HTTPS only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::HttpTlsConfig;
use crate::source::tls::{TlsSetupError, load_certs, load_key, provider};

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 64;

/// The server configuration for `[http.tls]`, or `None` when it is not set.
pub fn server_config(tls: &HttpTlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsSetupError> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        if tls.enabled() {
            return Err(TlsSetupError::Invalid(
                "http.tls.cert_file and http.tls.key_file go together: set both for HTTPS, or neither".into(),
            ));
        }
        return Ok(None);
    };
    build(cert, key).map(Some)
}

fn build(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = load_certs("http.tls.cert_file", cert)?;
    let key_der = load_key("http.tls.key_file", key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Invalid(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            TlsSetupError::Invalid(format!(
                "http.tls.cert_file {} and http.tls.key_file {} cannot be used together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    // The server speaks HTTP/1.1 only (axum with the http1 feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections, completes their TLS handshakes, and yields the finished ones.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor_task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: nothing to await but time.
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%addr, "too many HTTPS handshakes in progress; connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, addr)).await;
                }
                // Plain HTTP to the HTTPS port, scanners, clients that do not trust us.
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "HTTPS handshake failed"),
                Err(_) => tracing::debug!(%addr, "HTTPS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
