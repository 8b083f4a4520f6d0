//! The `ringcast` binary: parse flags and the config file, check OS limits, start the node,
//! reload on SIGHUP, stop on SIGINT/SIGTERM, drain on SIGUSR2 (clients sent elsewhere, then
//! stop; see `ringcast::core::drain`). `ringcast token` mints a token instead;
//! `--print-config` / `--print-config-reference` print and exit.

use ringcast::cli::{Cli, Command};
use ringcast::config::{reference, Config};
use ringcast::logging::LogHandle;
use ringcast::reload::Reloader;
use ringcast::server::Server;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use std::ffi::OsString;

/// mimalloc, built as its v2 line: measured here, v2 holds an idle WebSocket connection in about
/// 1.4 KB of RSS where v3 (the crate default) needs about 2.3 KB (`idle` scenario).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the `mi_option_t` enum of its v2 `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays mapped before mimalloc returns it to the kernel, in ms. Its
/// default, 10 ms, is shorter than a loaded core's cycle of frame and write buffers: freed
/// pages went back to the kernel and were faulted in (and zeroed) again on reuse, 18% of the
/// server's CPU at 500k deliveries/s. A second keeps the working set mapped and still gives a
/// burst's memory back. `MIMALLOC_PURGE_DELAY` overrides it.
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

fn main() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it when it next purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli: Cli = ringcast::cli::load(&argv).unwrap_or_else(|e| e.exit());
    if let Some(Command::Token(t)) = &cli.command {
        std::process::exit(t.run(&cli.config));
    }
    if cli.print_config {
        print!("{}", reference::effective_toml(&cli.config));
        return;
    }
    if cli.print_config_reference {
        print!("{}", reference::markdown());
        return;
    }
    let log = ringcast::logging::init(&cli.config.log);
    if let Err(e) = run(cli.config, argv, log) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

fn run(cfg: Config, argv: Vec<OsString>, log: LogHandle) -> std::io::Result<()> {
    match ringcast::limits::raise_nofile() {
        Ok(n) => tracing::debug!(nofile = n, "open-file limit"),
        // A limit that could not be raised is reported once, by the check's warning below.
        Err(e) => tracing::debug!("could not raise the open-file limit: {e}"),
    }
    for w in ringcast::limits::check(cfg.max_connections as u64, cfg.backlog) {
        tracing::warn!("{w}");
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
    let server = Server::start(cfg)?;
    tracing::info!(addr = %server.local_addr(), driver = server.driver(), cores = server.cores(), "ringcast listening");
    let stopper = server.stopper();
    let reloader = Reloader::new(server.node(), argv, Some(log));
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    let _ = reloader.reload();
                    continue;
                }
                if sig == SIGUSR2 {
                    tracing::info!(signal = sig, "draining");
                    stopper.drain();
                    continue;
                }
                tracing::info!(signal = sig, "shutting down");
                stopper.stop();
                break;
            }
        })?;
    server.join()?;
    tracing::info!("stopped");
    Ok(())
}
