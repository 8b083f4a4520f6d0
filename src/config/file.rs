//! The config file (`--config FILE`, TOML): options as `key = value`, under the flags and the
//! `RINGCAST_*` environment variables.
//!
//! Keys are the long flag names without the dashes in front (`max-queue-bytes = 1048576`, as
//! `--max-queue-bytes`), values their TOML type (lists for repeatable options:
//! `allowed-origins = ["https://a.example"]`). The file is turned into flag arguments for every
//! option that no flag and no environment variable set, and those are parsed by the same clap
//! parser as the command line: one parser, one set of checks, one precedence rule (defaults <
//! file < env < flags). An unknown key is an error naming it (a typo is never silently
//! ignored), and so is a value clap refuses, with its key. Main thread only, at start-up and at
//! each reload.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::path::Path;

/// Largest config file read, bytes. A real one is a few KB; the bound keeps a wrong path (a
/// log file, a device) from being read whole into memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads and parses the TOML file at `path`.
pub fn read(path: &Path) -> Result<toml::Table, String> {
    use std::io::Read;
    let shown = path.display();
    let f = std::fs::File::open(path).map_err(|e| format!("config file {shown}: {e}"))?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("config file {shown}: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "config file {shown}: larger than {MAX_FILE_BYTES} bytes"
        ));
    }
    text.parse::<toml::Table>()
        .map_err(|e| format!("config file {shown}: {}", e.to_string().trim_end()))
}

/// The flag arguments (`--key=value`) that `table` stands for, for each option of `options`
/// (the [`super::Config`] command) whose value in `given` (the command line and environment,
/// already parsed) came from neither: a flag or a variable beats the file. `path` is for
/// messages.
pub fn args(
    table: &toml::Table,
    options: &Command,
    given: &ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, String> {
    // Each value is checked alone, by the same parser without its environment variables, so
    // that a refusal names the file's key (and not a variable that happens to be set).
    let check = options
        .clone()
        .mut_args(|a| a.env(None::<&'static str>))
        .no_binary_name(true);
    let mut out = Vec::new();
    for (key, value) in table {
        let at = |why: String| format!("config file {}: key `{key}`: {why}", path.display());
        let arg = options
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .ok_or_else(|| unknown_key(key, options, path))?;
        let source = given.value_source(arg.get_id().as_str());
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if !arg.get_action().takes_values() {
            match value {
                toml::Value::Boolean(true) => out.push(format!("--{key}").into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(at("expected true or false".into())),
            }
            continue;
        }
        let values = match value {
            toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| at("list items must be plain values".into())))
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => return Err(at("takes one value, not a list".into())),
            v => vec![scalar(v).ok_or_else(|| at("expected a plain value, not a table".into()))?],
        };
        for v in values {
            let flag = format!("--{key}={v}");
            if let Err(e) = check.clone().try_get_matches_from([&flag]) {
                return Err(at(clap_reason(&e)));
            }
            out.push(flag.into());
        }
    }
    Ok(out)
}

/// A TOML value as the text of a flag value (strings as they are, numbers and booleans as
/// written); `None` for tables and datetimes.
fn scalar(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => return None,
    })
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// "unknown key", with the key meant when it is a near miss (or written with underscores).
fn unknown_key(key: &str, options: &Command, path: &Path) -> String {
    let mut msg = format!("config file {}: unknown key `{key}`", path.display());
    let known = options.get_arguments().filter_map(|a| a.get_long());
    let dashed = key.replace('_', "-");
    let near = known
        .map(|k| (edit_distance(&dashed, k), k))
        .min()
        .filter(|(d, _)| *d <= 2 || dashed.len() > 8 && *d <= 3);
    if let Some((_, k)) = near {
        msg.push_str(&format!(" (did you mean `{k}`?)"));
    }
    msg
}

/// Levenshtein distance between two short ASCII-ish strings (key suggestions only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::CommandFactory;

    fn file_args(toml: &str, argv: &[&str]) -> Result<Vec<String>, String> {
        let options = Config::command();
        let given = options
            .clone()
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(std::iter::once("ringcast").chain(argv.iter().copied()))
            .unwrap();
        let table = toml.parse::<toml::Table>().unwrap();
        let out = args(&table, &options, &given, Path::new("f.toml"))?;
        Ok(out.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn keys_become_flags_unless_the_command_line_set_them() {
        let toml = r#"
            history = 7
            write-pacing = 0.5
            echo-endpoint = true
            demo-feed = false
            allowed-origins = ["https://a.example", "https://b.example"]
            listen = "127.0.0.1:9000"
        "#;
        let args = file_args(toml, &["--history", "9"]).unwrap();
        assert_eq!(
            args,
            [
                "--allowed-origins=https://a.example",
                "--allowed-origins=https://b.example",
                "--echo-endpoint",
                "--listen=127.0.0.1:9000",
                "--write-pacing=0.5",
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_key_meant() {
        let e = file_args("max-conections = 5", &[]).unwrap_err();
        assert_eq!(
            e,
            "config file f.toml: unknown key `max-conections` (did you mean `max-connections`?)"
        );
        let e = file_args("max_connections = 5", &[]).unwrap_err();
        assert!(e.contains("did you mean `max-connections`"), "{e}");
        let e = file_args("zzz = 5", &[]).unwrap_err();
        assert_eq!(e, "config file f.toml: unknown key `zzz`");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let e = file_args("listen = \"nowhere\"", &[]).unwrap_err();
        assert!(
            e.starts_with("config file f.toml: key `listen`: invalid value"),
            "{e}"
        );
        let e = file_args("history = -1", &[]).unwrap_err();
        assert!(e.contains("key `history`"), "{e}");
        let e = file_args("echo-endpoint = \"yes\"", &[]).unwrap_err();
        assert!(e.ends_with("expected true or false"), "{e}");
        let e = file_args("history = [1, 2]", &[]).unwrap_err();
        assert!(e.ends_with("takes one value, not a list"), "{e}");
        let e = file_args("[history]\nx = 1", &[]).unwrap_err();
        assert!(e.ends_with("not a table"), "{e}");
        let e = file_args("driver = \"fast\"", &[]).unwrap_err();
        assert!(e.contains("key `driver`"), "{e}");
    }
}
