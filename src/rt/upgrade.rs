//! Zero-downtime restarts and binary upgrades, around [`super::handover`].
//!
//! With `--upgrade-socket PATH`, a process starting takes the listening
//! sockets over from the process serving on `PATH` (if any), starts its
//! workers on them, takes `PATH` over for the next upgrade and tells the old
//! process, which then stops accepting and drains exactly as on `SIGTERM`
//! (its established connections finish there), without telling systemd it
//! stops. `SIGUSR2` makes a process start its successor itself: the same
//! binary path and arguments (the binary file may have been replaced), the
//! same environment, so under systemd the new process reports `MAINPID=`
//! and `READY=1` (the unit needs `NotifyAccess=all`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::{handover, notify, Server, StartError};
use crate::config::Config;

/// The upgrade state of one process.
#[derive(Debug)]
pub struct Upgrade {
    path: Option<PathBuf>,
    /// This binary's path, read at start (before a package manager
    /// replaces the file: `/proc/self/exe` then names the deleted one).
    exe: Option<PathBuf>,
    handle: Option<handover::Handle>,
    handed_over: Arc<AtomicU32>,
    stopping: Arc<AtomicBool>,
    /// Holds the listeners' duplicates that reloads offer.
    live: Option<Arc<super::live::LiveHub>>,
}

impl Upgrade {
    /// Upgrades through `path`, or none without one.
    pub fn new(path: Option<String>) -> Self {
        Self {
            path: path.map(PathBuf::from),
            exe: std::env::current_exe().ok(),
            handle: None,
            handed_over: Arc::new(AtomicU32::new(0)),
            stopping: Arc::new(AtomicBool::new(false)),
            live: None,
        }
    }

    /// Starts the server, on the sockets of the process serving on the
    /// upgrade socket if there is one, then serves the upgrade socket.
    /// Returns the server and whether it took over from another process.
    pub fn start(
        &mut self,
        config: &Config,
        tls: super::reload::TlsSet,
    ) -> Result<(Server, bool), StartError> {
        let Some(path) = self.path.clone() else {
            let mut server = super::start(config, tls)?;
            server.offered.clear();
            server.live.drop_offers();
            return Ok((server, false));
        };
        let err = |source| StartError::Upgrade {
            path: path.display().to_string(),
            source,
        };
        let mut inherited = handover::take_over(&path).map_err(err)?;
        let (listeners, admin) = match inherited.as_mut() {
            Some(i) => (std::mem::take(&mut i.listeners), i.admin.take()),
            None => (Vec::new(), None),
        };
        let mut server = super::start_inherited(config, tls, listeners, admin)?;
        let offered = std::mem::take(&mut server.offered);
        let handed_over = self.handed_over.clone();
        let stopping = self.stopping.clone();
        self.handle = Some(
            handover::serve(&path, offered, move |pid| {
                handed_over.store(pid, Ordering::Release);
                // The drain is the SIGTERM drain; a stop already under way
                // must not see a second signal (that one exits at once).
                if !stopping.load(Ordering::Acquire) {
                    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
                }
            })
            .map_err(|e| err(e.into()))?,
        );
        self.live = Some(server.live.clone());
        if let Some(handle) = self.handle.clone() {
            // A reload that adds or removes listen addresses changes what
            // the next process is offered.
            server
                .live
                .on_listeners_changed(Box::new(move |l| handle.replace_listeners(l)));
        }
        if let Some(i) = &inherited {
            match i.confirm() {
                Ok(()) => tracing::info!(
                    old_pid = i.from_pid,
                    "upgrade: took the listening sockets over; the old process drains"
                ),
                Err(e) => tracing::warn!(
                    old_pid = i.from_pid,
                    error = %e,
                    "upgrade: could not tell the old process to drain"
                ),
            }
        }
        Ok((server, inherited.is_some()))
    }

    /// `SIGUSR2`: starts a new process with this one's binary path and
    /// arguments; it takes over through the upgrade socket.
    pub fn spawn_new_process(&self) {
        let (Some(_), Some(exe)) = (&self.path, &self.exe) else {
            tracing::warn!("SIGUSR2: upgrades need --upgrade-socket; ignored");
            return;
        };
        let spawned = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .stdin(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(exe = %exe.display(), error = %e, "upgrade: cannot start the new process");
                return;
            }
        };
        let pid = child.id();
        tracing::info!(pid, exe = %exe.display(), "upgrade: started the new process");
        notify::status(&format!("upgrading: started pid {pid}"));
        // Reap it if it fails to start (it outlives this process otherwise).
        let _ = std::thread::Builder::new()
            .name("ringterm-upgrade-wait".into())
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    tracing::warn!(pid, %status, "upgrade: the new process exited");
                }
            });
    }

    /// Call when the drain starts: stop offering the sockets; tell systemd
    /// the service stops unless this drain follows a hand-over.
    pub fn before_drain(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(h) = &self.handle {
            h.close();
        }
        if let Some(live) = &self.live {
            // Else the duplicates keep the sockets open (and in the
            // SO_REUSEPORT group) after the workers closed theirs.
            live.drop_offers();
        }
        match self.handed_over.load(Ordering::Acquire) {
            0 => notify::stopping("draining"),
            pid => {
                // No STATUS either: the new process owns the service's.
                tracing::info!(new_pid = pid, "upgrade: handed over; draining");
            }
        }
    }
}
