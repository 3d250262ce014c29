//! systemd's notify protocol: readiness, a status line and watchdog pings, sent as datagrams
//! to the socket named by `NOTIFY_SOCKET` (`Type=notify` units).
//!
//! Owns the socket and the pings' schedule. It must not judge relays itself: the daemon hands
//! it a check that says whether the daemon made progress.

use std::future::Future;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How often the status line is refreshed when systemd asks for no watchdog.
pub const DEFAULT_STATUS_EVERY: Duration = Duration::from_secs(5);

/// A connection to the service manager, when there is one.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The manager named by `NOTIFY_SOCKET`, or `None` when the daemon was not started by one.
    /// A path starting with `@` is an abstract socket. The watchdog interval comes from
    /// `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or names this process.
    pub fn from_env() -> io::Result<Option<Self>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        let ours = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(Duration::from_micros);
        Ok(Some(Self {
            socket: UnixDatagram::unbound()?,
            addr,
            watchdog,
        }))
    }

    /// Sends `state`: newline-separated `KEY=value` assignments.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, state, "cannot notify the service manager");
        }
    }

    /// Refreshes the status line from `status` and, when a watchdog is asked for, pings it at
    /// half its interval, but only after `alive` says the daemon made progress. Runs until
    /// dropped.
    pub async fn keep_up<S, A, SF, AF>(&self, mut status: S, mut alive: A)
    where
        S: FnMut() -> SF,
        SF: Future<Output = String>,
        A: FnMut(Duration) -> AF,
        AF: Future<Output = Result<(), String>>,
    {
        let every = self.watchdog.map_or(DEFAULT_STATUS_EVERY, |w| w / 2);
        let mut last_status = String::new();
        let mut missed = false;
        loop {
            tokio::time::sleep(every).await;
            let line = status().await;
            if line != last_status {
                self.send(&format!("STATUS={line}"));
                last_status = line;
            }
            if self.watchdog.is_none() {
                continue;
            }
            match alive(every).await {
                Ok(()) => {
                    if std::mem::take(&mut missed) {
                        tracing::info!("watchdog pings resumed");
                    }
                    self.send("WATCHDOG=1");
                }
                Err(why) => {
                    if !std::mem::replace(&mut missed, true) {
                        tracing::error!(reason = %why, "watchdog ping withheld: no progress");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: UnixDatagram::unbound().expect("socket"),
            addr: SocketAddr::from_pathname(&path).expect("address"),
            watchdog: None,
        };
        notifier.send("READY=1\nSTATUS=ready");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ready");
    }
}
