#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] paxlog_storage::StorageError),
    #[error("peer transport: {0}")]
    Transport(#[from] paxlog_transport::TransportError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("the replica's driver stopped: {0}")]
    Driver(String),
}
