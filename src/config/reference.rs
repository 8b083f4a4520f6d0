//! The one reference of every option, rendered from [`Config`]'s clap definition (doc comment,
//! flag, environment variable, default, accepted values) and [`super::live`] (what a reload
//! applies): as TOML with the effective values (`ringcast --print-config`, itself a valid
//! config file), and as Markdown (`ringcast --print-config-reference`, committed as
//! `docs/config.md`; a test keeps the two equal). Secrets are never printed. Pure functions,
//! main thread.

use super::{live, Config};
use clap::{Arg, CommandFactory};

/// Width the TOML comments are wrapped to.
const WRAP: usize = 96;

/// What a secret's value is printed as.
pub const REDACTED: &str = "<redacted>";

/// The options in definition order (clap's built-in `--help` and `--version` left out).
fn options() -> Vec<Arg> {
    let mut cmd = Config::command();
    cmd.build();
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .cloned()
        .collect()
}

fn key(a: &Arg) -> &str {
    a.get_long().unwrap_or_else(|| a.get_id().as_str())
}

/// A secret: an option whose value clap hides from `--help` too (`hide_env_values`).
fn is_secret(a: &Arg) -> bool {
    a.is_hide_env_values_set()
}

fn help(a: &Arg) -> String {
    a.get_long_help()
        .or_else(|| a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// The default as text (`None`: unset by default).
fn default(a: &Arg) -> Option<String> {
    let d: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    (!d.is_empty()).then(|| d.join(","))
}

fn possible(a: &Arg) -> Option<String> {
    if !a.get_action().takes_values() {
        return None;
    }
    let v: Vec<String> = a
        .get_possible_values()
        .iter()
        .map(|p| p.get_name().to_string())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

fn reload_note(k: &str) -> String {
    match live::applies(k) {
        Some(when) => format!("SIGHUP applies it: {when}"),
        None => "needs a restart".to_string(),
    }
}

/// Words of `text` wrapped to lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// `nats://user:pass@host` without its credentials.
fn without_credentials(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    (!userinfo.contains('/')).then(|| format!("{scheme}://{REDACTED}@{host}"))
}

/// The value of `a` in `table` (the effective config), as TOML, secrets redacted.
fn value(a: &Arg, table: &toml::Table) -> Option<String> {
    let v = table.get(key(a))?;
    if is_secret(a) {
        return Some(toml::Value::from(REDACTED).to_string());
    }
    if let Some(hidden) = v.as_str().and_then(without_credentials) {
        return Some(toml::Value::from(hidden).to_string());
    }
    Some(v.to_string())
}

/// `--print-config`: every option of `cfg` as a TOML config file, each under its doc comment,
/// flag, environment variable, default and reload note; unset options commented out.
pub fn effective_toml(cfg: &Config) -> String {
    let table = cfg.as_table();
    let mut out = String::from(
        "# ringcast: the effective configuration (ringcast --print-config).\n\
         # A config file for --config: keys as the flags are named; flags and RINGCAST_* variables\n\
         # override it. Secrets are shown as \"<redacted>\". Reference: docs/config.md.\n",
    );
    for a in options() {
        let k = key(&a);
        out.push('\n');
        for line in wrap(&help(&a), WRAP - 2) {
            out.push_str(&format!("# {line}\n"));
        }
        let mut meta = format!("--{k}");
        if let Some(env) = a.get_env() {
            meta.push_str(&format!(", {}", env.to_string_lossy()));
        }
        meta.push_str(&format!(
            "; default: {}",
            default(&a).unwrap_or_else(|| "unset".into())
        ));
        if let Some(p) = possible(&a) {
            meta.push_str(&format!("; one of: {p}"));
        }
        meta.push_str(&format!("; {}", reload_note(k)));
        for line in wrap(&meta, WRAP - 2) {
            out.push_str(&format!("# {line}\n"));
        }
        match value(&a, &table) {
            Some(v) => out.push_str(&format!("{k} = {v}\n")),
            None => out.push_str(&format!("# {k} = (unset)\n")),
        }
    }
    out
}

/// The head of `docs/config.md`: how options are given, and what a reload does.
const MARKDOWN_HEAD: &str = r#"# Configuration reference

<!-- Generated by `ringcast --print-config-reference` from the option definitions in
src/config/mod.rs and src/config/live.rs; tests/config.rs fails when this file differs.
Regenerate: cargo run --bin ringcast -- --print-config-reference > docs/config.md -->

Every option can be given three ways; a later one in this list overrides an earlier one, and
an option given none of them has its default:

1. a TOML **config file**, `--config FILE` (or `RINGCAST_CONFIG=FILE`): one `key = value` per
   option, the key being the flag's name without its dashes (`max-queue-bytes = 1048576`);
   repeatable options take a list (`allowed-origins = ["https://app.example"]`), switches
   `true` or `false`. An unknown key is an error naming it, and so is a value of the wrong
   kind; the node does not start.
2. an **environment variable**, `RINGCAST_<NAME>` (listed with each option);
3. a **flag**, `--name VALUE`.

`ringcast --print-config` prints the effective configuration (after all three) as such a file,
every option with its documentation, default and reload behaviour; secrets (`jwt-secret`, a
password in `nats-url`) are printed as `"<redacted>"`. Unset options are commented out.

## Reloading (SIGHUP)

`kill -HUP <pid>` makes a running node read its config file (and `jwt-public-key`'s file) again
and apply what can change while it serves, without dropping a connection: the options marked
"SIGHUP applies it" below, each from the moment stated (new connections, each operation, ...).
Connections keep what was fixed when they were admitted: their token stays valid until it
expires or they send `auth` (which is checked with the new key), their queue and frame limits
stay. Other options need a restart; a reload that changes one logs a warning naming it and
keeps the running value. A reload that cannot be applied (the file does not parse, a value is
refused, the new key file is unreadable, or the change would turn auth on or off) is logged as
an error and changes nothing. `ringcast_config_reloads_total` and
`ringcast_config_reload_errors_total` on `/metrics` count both outcomes.

Flags and environment variables are read again at a reload too, but they are those the process
started with: a flag still beats the file.

## Options
"#;

/// `docs/config.md`: the reference of every option (defaults, not the effective values).
pub fn markdown() -> String {
    let mut out = String::from(MARKDOWN_HEAD);
    for a in options() {
        let k = key(&a);
        out.push_str(&format!("\n### `{k}`\n\n"));
        for line in wrap(&help(&a), WRAP) {
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
        let mut flag = format!("- flag `--{k}`");
        if let Some(env) = a.get_env() {
            flag.push_str(&format!(", env `{}`", env.to_string_lossy()));
        }
        out.push_str(&flag);
        out.push('\n');
        match default(&a) {
            Some(d) => out.push_str(&format!("- default: `{d}`\n")),
            None => out.push_str("- default: unset\n"),
        }
        if let Some(p) = possible(&a) {
            out.push_str(&format!("- one of: {p}\n"));
        }
        if is_secret(&a) {
            out.push_str("- a secret: `--print-config` shows it as `\"<redacted>\"`\n");
        }
        out.push_str(&format!("- {}\n", reload_note(k)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_effective_toml_is_a_config_file_with_every_option() {
        let cfg = Config::try_parse_from(["ringcast", "--jwt-secret", &"s".repeat(40)]).unwrap();
        let text = effective_toml(&cfg);
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["jwt-secret"].as_str(), Some(REDACTED));
        assert!(!text.contains(&"s".repeat(40)));
        for a in options() {
            let k = key(&a);
            assert!(
                table.contains_key(k) || text.contains(&format!("# {k} = (unset)")),
                "{k}"
            );
        }
    }

    #[test]
    fn credentials_in_a_url_are_redacted() {
        assert_eq!(
            without_credentials("nats://u:p@h:4222").as_deref(),
            Some("nats://<redacted>@h:4222")
        );
        assert_eq!(without_credentials("nats://h:4222"), None);
    }

    #[test]
    fn comments_wrap_at_word_boundaries() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("", 5), [""]);
    }
}
