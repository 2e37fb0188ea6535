//! Fault hooks for real-process tests.

use super::*;

/// Fault hooks for real-process tests, off unless the environment asks.
/// `PAXLOG_TEST_FSYNC_STALL_FILE=PATH` (relative to the data folder): when
/// PATH exists at an fsync, the driver reads `STALL_MS [DEAF_MS]` from it,
/// deletes it and blocks `STALL_MS` before syncing (a slow disk, without
/// signals); then, for `DEAF_MS` more, it drops every peer message, those
/// that queued during the stall included (as if cut off from the others
/// since the stall began).
pub(super) struct TestHooks {
    pub(super) fsync_stall_file: Option<std::path::PathBuf>,
    pub(super) deaf_until: Option<Instant>,
}

impl TestHooks {
    pub(super) fn from_env(data_dir: &std::path::Path) -> TestHooks {
        TestHooks {
            fsync_stall_file: std::env::var_os("PAXLOG_TEST_FSYNC_STALL_FILE")
                .map(|path| data_dir.join(path)),
            deaf_until: None,
        }
    }

    pub(super) fn take_fsync_stall(&mut self) -> Option<Duration> {
        let path = self.fsync_stall_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        let _ = std::fs::remove_file(path);
        let mut numbers = text.split_whitespace().map(str::parse::<u64>);
        let stall_ms = numbers.next()?.ok()?;
        let deaf_ms = numbers.next().and_then(Result::ok).unwrap_or(0);
        tracing::warn!(stall_ms, deaf_ms, "test hook: stalling this fsync");
        let stall = Duration::from_millis(stall_ms);
        self.deaf_until = Some(Instant::now() + stall + Duration::from_millis(deaf_ms));
        Some(stall)
    }

    pub(super) fn deaf_to_peers(&mut self) -> bool {
        match self.deaf_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.deaf_until = None;
                false
            }
            None => false,
        }
    }
}
