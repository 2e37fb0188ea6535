use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] paxlog_storage::StorageError),
    /// Recovery fell back to a snapshot older than the point the log was
    /// compacted to: the promises and accepts this replica made for the
    /// rounds in between are gone, and a replica never votes with state it
    /// may have forgotten.
    #[error(
        "{dir}: the newest usable snapshot covers rounds below {snapshot_round}, but the write-ahead \
         log was compacted up to round {compacted_round}, so this replica's accepts for the rounds \
         between are lost. It must not vote with this folder: keep the folder aside (`paxlog inspect` \
         shows what it holds) and restore the missing snapshot file if you have it"
    )]
    ForgottenState {
        dir: PathBuf,
        snapshot_round: u64,
        compacted_round: u64,
    },
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
