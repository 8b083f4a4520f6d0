//! Reloading a running node (SIGHUP): the config file and key files are read again, and what
//! can change while the node serves is handed to every core; nothing else changes.
//!
//! Owns [`Reloader`], held by the binary's signal thread. A reload parses the command line the
//! process started with and the file again (`cli::load`: the same precedence as at start-up),
//! keeps the running value of every option that needs a restart (`config::live`), builds the
//! new verifier (reading `jwt-public-key` again), and sends the result to each core as one
//! [`CoreMsg::Reload`]: cores never lock anything to read their settings. Anything that fails
//! (the file, a value, the key) leaves the node exactly as it was, logged and counted.

use crate::auth::Verifier;
use crate::config::{live, Config};
use crate::core::settings::Settings;
use crate::core::{CoreMsg, Node};
use crate::logging::LogHandle;
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Options now in force with new values.
    pub applied: Vec<String>,
    /// Options whose new values wait for a restart (the running ones stay).
    pub need_restart: Vec<String>,
}

/// Reloads one node's configuration (signal thread).
pub struct Reloader {
    node: Arc<Node>,
    argv: Vec<OsString>,
    log: Option<LogHandle>,
}

impl Reloader {
    /// A reloader of `node`, which was started from `argv` (program name first); `log`
    /// applies a new `log` filter (`None`: leave logging alone).
    pub fn new(node: Arc<Node>, argv: Vec<OsString>, log: Option<LogHandle>) -> Reloader {
        Reloader { node, argv, log }
    }

    /// Reads the configuration again and applies it, logging and counting the outcome.
    pub fn reload(&self) -> Result<Outcome, String> {
        let result = crate::cli::load(&self.argv)
            .map_err(|e| e.to_string())
            .and_then(|cli| self.apply(&cli.config));
        match &result {
            Ok(out) => {
                self.node.reloads.fetch_add(1, Ordering::Relaxed);
                for key in &out.need_restart {
                    tracing::warn!(key = %key, "config reload: this option changed but needs a restart; keeping the running value");
                }
                tracing::info!(applied = ?out.applied, "config reloaded");
            }
            Err(e) => {
                self.node.reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("config reload failed, keeping the running configuration: {e}");
            }
        }
        result
    }

    /// Waits (bounded) until every core has installed `generation`, so that a reload counted
    /// as applied is in force everywhere.
    fn wait_installed(&self, generation: u64) {
        /// A core's bus loop answers within a loop turn; this bounds a stuck one.
        const WAIT: Duration = Duration::from_secs(5);
        let deadline = Instant::now() + WAIT;
        let installed = &self.node.settings_installed;
        while installed
            .iter()
            .any(|g| g.load(Ordering::Acquire) < generation)
        {
            if Instant::now() >= deadline {
                tracing::warn!("config reload: a core has not installed the new settings yet");
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Applies `new` (a freshly loaded configuration) to the running node.
    pub fn apply(&self, new: &Config) -> Result<Outcome, String> {
        let current = self.node.settings();
        let next = current.cfg.with_live_from(new);
        let auth = next.auth_config().map_err(|e| e.to_string())?;
        let verifier = Verifier::new(&auth)?;
        if verifier.is_some() != current.verifier.is_some() {
            return Err("the new configuration turns auth on or off, which needs a restart".into());
        }
        let (applied, need_restart) = live::changed(&current.cfg, new)
            .into_iter()
            .partition(|k| live::applies(k).is_some());
        let settings = Arc::new(Settings {
            generation: current.generation + 1,
            cfg: next,
            verifier,
        });
        if let Some(log) = &self.log {
            log.set(&settings.cfg.log)?;
        }
        *self.node.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings.clone();
        for core in 0..self.node.cores() {
            self.node.bus.send(core, CoreMsg::Reload(settings.clone()));
        }
        self.wait_installed(settings.generation);
        Ok(Outcome {
            applied,
            need_restart,
        })
    }
}
