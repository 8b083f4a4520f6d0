//! `ringcast token`: mints a JWT for a node from the command line (the secret or private key,
//! who, what), prints it on stdout, and exits 0; anything wrong is one line on stderr and exit
//! code 2.
//!
//! Owns the subcommand's flags and where its key comes from: `--secret-file`, `--secret` or
//! `--key-file`, else the node's own `jwt-secret` (`RINGCAST_JWT_SECRET`, `--jwt-secret`, or
//! the `--config` file), so that `ringcast --config node.toml token ...` signs with what the
//! node verifies with; `iss` and `aud` default to the node's `jwt-issuer`/`jwt-audience`. The
//! claims themselves are `auth::mint`'s. Main thread of the `ringcast token` process.

use crate::auth::mint::{self, Mint, SigningKey};
use crate::config::Config;
use std::path::{Path, PathBuf};

/// Largest key or secret file read, bytes (a 4096-bit RSA private key PEM is ~3.3 KB).
const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// `ringcast token` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// File holding the HS256 secret (the node's jwt-secret); a trailing newline is ignored.
    #[arg(long, value_name = "FILE", group = "signing_key")]
    pub secret_file: Option<PathBuf>,

    /// The HS256 secret itself (visible to other local users in `ps`: prefer --secret-file).
    /// Default: the node's jwt-secret (RINGCAST_JWT_SECRET, --jwt-secret or the --config file).
    #[arg(long, group = "signing_key")]
    pub secret: Option<String>,

    /// PEM private key (PKCS#8): RSA signs RS256, EC P-256 signs ES256; the node has the
    /// public half as --jwt-public-key.
    #[arg(long, value_name = "PEM", group = "signing_key")]
    pub key_file: Option<PathBuf>,

    /// The algorithm; it must be the key's (HS256 for a secret, RS256 for an RSA key, ES256
    /// for an EC key), which is the default.
    #[arg(long, value_enum)]
    pub alg: Option<TokenAlg>,

    /// `sub`: the user id (with `iss`, who the connection's session belongs to).
    #[arg(long)]
    pub sub: Option<String>,

    /// A subject pattern the holder may subscribe to and read history of (repeatable):
    /// `allowed_subjects`, and the `subscribe` permission.
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,

    /// A subject pattern the holder may publish on (repeatable): the `publish` permission with
    /// its own allow list (`pub`). Without it the token cannot publish.
    #[arg(long, value_name = "PATTERN")]
    pub publish: Vec<String>,

    /// A subject pattern denied for subscribing and publishing alike (repeatable):
    /// `deny_subjects`.
    #[arg(long, value_name = "PATTERN")]
    pub deny: Vec<String>,

    /// `iss`. Default: the node's jwt-issuer, if it has one.
    #[arg(long)]
    pub iss: Option<String>,

    /// `aud`. Default: the node's jwt-audience, if it has one.
    #[arg(long)]
    pub aud: Option<String>,

    /// `max_publish_rate`: publishes per second per connection (0: unlimited). Default: none
    /// (the node's --max-publish-per-sec applies).
    #[arg(long, value_name = "N")]
    pub max_publish_rate: Option<u32>,

    /// Lifetime: a whole number with a unit of s, m, h or d (`90s`, `30m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = ttl_secs)]
    pub ttl: u64,
}

/// A signing algorithm the node verifies.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum TokenAlg {
    /// HMAC-SHA256 with a shared secret.
    #[value(name = "HS256")]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    #[value(name = "RS256")]
    RS256,
    /// ECDSA P-256 with SHA-256.
    #[value(name = "ES256")]
    ES256,
}

/// `--ttl`: seconds of a `90s`/`30m`/`1h`/`7d` duration (no unit: seconds).
fn ttl_secs(s: &str) -> Result<u64, String> {
    let d = crate::store::parse_duration(s)?;
    match d.as_secs() {
        0 => Err("must be at least one second".into()),
        n => Ok(n),
    }
}

fn read_small(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let at = |e: std::io::Error| format!("{flag} {}: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(at)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(at)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("{flag} {}: larger than a key", path.display()));
    }
    Ok(bytes)
}

impl TokenArgs {
    /// The signing key, from the flags or else `node`'s jwt-secret.
    fn key(&self, node: &Config) -> Result<SigningKey, String> {
        let key = if let Some(p) = &self.secret_file {
            let mut s = read_small("--secret-file", p)?;
            while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                s.pop();
            }
            SigningKey::secret(&s).map_err(|e| format!("--secret-file {}: {e}", p.display()))?
        } else if let Some(p) = &self.key_file {
            let pem = read_small("--key-file", p)?;
            SigningKey::private_pem(&pem).map_err(|e| format!("--key-file {}: {e}", p.display()))?
        } else if let Some(s) = self.secret.as_ref().or(node.jwt_secret.as_ref()) {
            SigningKey::secret(s.as_bytes())?
        } else {
            return Err("no signing key: give --secret-file, --secret or --key-file (or the node's jwt-secret: RINGCAST_JWT_SECRET, --config)".into());
        };
        let have = key.algorithm();
        if let Some(want) = self.alg {
            if format!("{want:?}") != format!("{have:?}") {
                return Err(format!(
                    "--alg {want:?} does not match the key, which signs {have:?}"
                ));
            }
        }
        Ok(key)
    }

    /// The token these flags describe, at `now` (seconds since the Unix epoch).
    pub fn token(&self, node: &Config, now: u64) -> Result<String, String> {
        let key = self.key(node)?;
        let m = Mint {
            sub: self.sub.clone(),
            allow: self.allow.clone(),
            publish: self.publish.clone(),
            deny: self.deny.clone(),
            issuer: self.iss.clone().or_else(|| node.jwt_issuer.clone()),
            audience: self.aud.clone().or_else(|| node.jwt_audience.clone()),
            max_publish_rate: self.max_publish_rate,
            ttl_secs: self.ttl,
        };
        mint::mint(&m, &key, now)
    }

    /// Runs the subcommand: the token on stdout (exit 0), or the error on stderr (exit 2).
    pub fn run(&self, node: &Config) -> i32 {
        match self.token(node, crate::os::now_ms() / 1000) {
            Ok(token) => {
                println!("{token}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        }
    }
}
