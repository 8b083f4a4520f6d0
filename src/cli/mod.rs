//! The `ringcast` command line: serving (the default), `--print-config`,
//! `--print-config-reference`, and the `token` subcommand.
//!
//! Owns [`Cli`], the top-level clap parser: the node's [`Config`] (flattened: every option is a
//! top-level flag, as it always was), `--config FILE` and the subcommands; and [`load`], which
//! parses the command line and the environment, then the config file under them
//! (`config::file`), the same way at start-up and at each reload. Main thread only.

pub mod token;

use crate::config::{self, Config};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// ringcast: realtime fanout gateway (WebSocket + SSE), thread-per-core on io_uring.
#[derive(Parser, Debug)]
#[command(name = "ringcast", version, about, long_about = None)]
pub struct Cli {
    /// TOML file of options, keys named as the flags (`max-queue-bytes = 1048576`); flags and
    /// RINGCAST_* variables override it. Read again on SIGHUP. Reference: docs/config.md.
    #[arg(
        long = "config",
        env = "RINGCAST_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config_file: Option<PathBuf>,

    /// Print the effective configuration as TOML (every option with its documentation,
    /// default and reload behaviour; secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Print the reference of every option (docs/config.md, Markdown) and exit.
    #[arg(long)]
    pub print_config_reference: bool,

    /// The node's options.
    #[command(flatten)]
    pub config: Config,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands (none: serve).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mint a JWT the node accepts, signed with its secret or the private half of its key,
    /// and print it on stdout.
    Token(token::TokenArgs),
}

/// Why the command line could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// A flag or variable clap refused (also `--help` and `--version`, which "fail" to exit).
    Usage(clap::Error),
    /// The config file: unreadable, not TOML, an unknown key or a refused value.
    File(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Usage(e) => {
                let text = e.to_string();
                let line = text.lines().next().unwrap_or_default();
                f.write_str(line.strip_prefix("error: ").unwrap_or(line))
            }
            LoadError::File(why) => f.write_str(why),
        }
    }
}

impl LoadError {
    /// Prints the error and exits: 2 for a bad command line or file (0 for `--help`).
    pub fn exit(self) -> ! {
        match self {
            LoadError::Usage(e) => e.exit(),
            LoadError::File(why) => {
                eprintln!("error: {why}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `argv` (program name first) and the `RINGCAST_*` environment, then the config file
/// they name under them: precedence defaults < file < environment < flags.
pub fn load(argv: &[OsString]) -> Result<Cli, LoadError> {
    let cmd = Cli::command();
    let given = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(LoadError::Usage)?;
    let Some(path) = given.get_one::<PathBuf>("config_file").cloned() else {
        return Cli::from_arg_matches(&given).map_err(LoadError::Usage);
    };
    let table = config::file::read(&path).map_err(LoadError::File)?;
    let from_file =
        config::file::args(&table, &Config::command(), &given, &path).map_err(LoadError::File)?;
    let merged: Vec<OsString> = argv
        .iter()
        .take(1)
        .cloned()
        .chain(from_file)
        .chain(argv.iter().skip(1).cloned())
        .collect();
    let matches = cmd.try_get_matches_from(merged).map_err(LoadError::Usage)?;
    Cli::from_arg_matches(&matches).map_err(LoadError::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("ringcast")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn no_subcommand_serves_and_token_is_a_subcommand() {
        let cli = load(&argv(&["--history", "5"])).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.config.history, 5);
        let cli = load(&argv(&["token", "--sub", "alice"])).unwrap();
        assert!(matches!(cli.command, Some(Command::Token(_))));
    }

    #[test]
    fn the_file_is_under_the_flags() {
        let dir = std::env::temp_dir().join(format!("ringcast-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.toml");
        std::fs::write(&f, "history = 7\nmax-subjects = 9\n").unwrap();
        let path = f.to_str().unwrap();
        let cli = load(&argv(&["--config", path, "--history", "5"])).unwrap();
        assert_eq!((cli.config.history, cli.config.max_subjects), (5, 9));
        let cli = load(&argv(&["token", "--config", path])).unwrap();
        assert_eq!(cli.config.max_subjects, 9, "--config is global");
        std::fs::write(&f, "histry = 7\n").unwrap();
        let e = load(&argv(&["--config", path])).unwrap_err().to_string();
        assert!(e.contains("unknown key `histry`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
