//! Which options a running node takes from a reload (SIGHUP), and when each applies; every
//! other option is read once at start-up and needs a restart.
//!
//! [`LIVE`] is the list (it feeds `--print-config` and `docs/config.md`), and
//! [`Config::with_live_from`] the one function that copies exactly those options: a unit test
//! holds the two together. Pure code; called on the main thread by a reload.

use super::Config;

/// The options a reload applies, with when each takes effect. Everything an operation reads
/// from `Core::cfg` when it starts; a connection keeps what was fixed when it was admitted
/// (its queue limit, its frame limit, its token).
pub const LIVE: &[(&str, &str)] = &[
    ("write-pacing", "from the next flush pass"),
    (
        "max-frame-bytes",
        "new WebSocket connections, and each publish's data",
    ),
    ("max-body-bytes", "each HTTP request"),
    ("max-body-buffer-bytes", "each HTTP request"),
    ("max-header-bytes", "each HTTP request"),
    ("handshake-timeout-ms", "each HTTP request read"),
    ("ping-interval-ms", "every connection, from the next sweep"),
    ("max-connections", "each accepted connection"),
    ("max-queue-bytes", "new connections"),
    ("max-unsent-bytes", "new connections"),
    ("auth-timeout-ms", "new WebSocket connections"),
    ("jwt-secret", "new connections and `auth` refreshes"),
    (
        "jwt-public-key",
        "new connections and `auth` refreshes (the file is read again)",
    ),
    ("jwt-issuer", "new connections and `auth` refreshes"),
    ("jwt-audience", "new connections and `auth` refreshes"),
    ("jwt-leeway-secs", "new connections and `auth` refreshes"),
    ("metrics-require-auth", "each `/metrics` request"),
    ("max-subs-per-conn", "each `sub`"),
    ("max-sub-bytes-per-conn", "each `sub`"),
    ("max-msgs-per-sec", "each inbound message"),
    ("max-publish-per-sec", "each publish"),
    ("rate-abuse-limit", "each inbound message"),
    ("max-accept-per-sec", "each accepted connection"),
    ("allowed-origins", "each WebSocket upgrade and SSE stream"),
    ("echo-endpoint", "each HTTP request"),
    ("session-ttl", "sessions detached from then on"),
    ("session-retain", "new connections"),
    ("max-detached-sessions", "each disconnect"),
    ("max-detached-bytes", "from the next sweep"),
    ("sse-heartbeat-secs", "from the next sweep"),
    ("max-schedule-horizon", "each scheduled publish"),
    ("log", "at once"),
];

/// When a reload applies `key`, or `None`: it needs a restart.
pub fn applies(key: &str) -> Option<&'static str> {
    LIVE.iter().find(|(k, _)| *k == key).map(|(_, when)| *when)
}

impl Config {
    /// This (running) configuration with the [`LIVE`] options taken from `new`; every other
    /// option keeps its value, as the node started with it.
    pub fn with_live_from(&self, new: &Config) -> Config {
        let n = new.clone();
        Config {
            write_pacing: n.write_pacing,
            max_frame_bytes: n.max_frame_bytes,
            max_body_bytes: n.max_body_bytes,
            max_body_buffer_bytes: n.max_body_buffer_bytes,
            max_header_bytes: n.max_header_bytes,
            handshake_timeout_ms: n.handshake_timeout_ms,
            ping_interval_ms: n.ping_interval_ms,
            max_connections: n.max_connections,
            max_queue_bytes: n.max_queue_bytes,
            max_unsent_bytes: n.max_unsent_bytes,
            auth_timeout_ms: n.auth_timeout_ms,
            jwt_secret: n.jwt_secret,
            jwt_public_key: n.jwt_public_key,
            jwt_issuer: n.jwt_issuer,
            jwt_audience: n.jwt_audience,
            jwt_leeway_secs: n.jwt_leeway_secs,
            metrics_require_auth: n.metrics_require_auth,
            max_subs_per_conn: n.max_subs_per_conn,
            max_sub_bytes_per_conn: n.max_sub_bytes_per_conn,
            max_msgs_per_sec: n.max_msgs_per_sec,
            max_publish_per_sec: n.max_publish_per_sec,
            rate_abuse_limit: n.rate_abuse_limit,
            max_accept_per_sec: n.max_accept_per_sec,
            allowed_origins: n.allowed_origins,
            echo_endpoint: n.echo_endpoint,
            session_ttl: n.session_ttl,
            session_retain: n.session_retain,
            max_detached_sessions: n.max_detached_sessions,
            max_detached_bytes: n.max_detached_bytes,
            sse_heartbeat_secs: n.sse_heartbeat_secs,
            max_schedule_horizon: n.max_schedule_horizon,
            log: n.log,
            ..self.clone()
        }
    }
}

/// The keys whose values differ between `old` and `new` (secrets compared, never shown).
pub fn changed(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (old.as_table(), new.as_table());
    let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| a.get(k) != b.get(k));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option set to a value other than its default.
    const EVERY_OPTION: &[&str] = &[
        "--listen=127.0.0.2:9",
        "--cores=3",
        "--history=7",
        "--max-queue-bytes=7",
        "--max-unsent-bytes=7",
        "--write-pacing=0.25",
        "--max-frame-bytes=7",
        "--max-body-bytes=7",
        "--max-body-buffer-bytes=7",
        "--max-header-bytes=7",
        "--subject-ttl=7",
        "--max-subjects=7",
        "--max-history-bytes=7",
        "--dedup-window=7",
        "--dedup-secs=7",
        "--handshake-timeout-ms=7",
        "--ping-interval-ms=7",
        "--max-connections=7",
        "--backlog=7",
        "--driver=legacy",
        "--jwt-secret=0123456789abcdef0123456789abcdef",
        "--jwt-public-key=/k.pem",
        "--jwt-issuer=i",
        "--jwt-audience=a",
        "--jwt-leeway-secs=7",
        "--auth-timeout-ms=7",
        "--insecure-no-auth",
        "--metrics-require-auth",
        "--max-subs-per-conn=7",
        "--max-sub-bytes-per-conn=7",
        "--max-msgs-per-sec=7",
        "--max-publish-per-sec=7",
        "--rate-abuse-limit=7",
        "--max-accept-per-sec=7",
        "--allowed-origins=https://x.example",
        "--echo-endpoint",
        "--session-ttl=7",
        "--session-retain=7",
        "--max-detached-sessions=7",
        "--max-detached-bytes=7",
        "--sse-heartbeat-secs=7",
        "--demo-feed",
        "--max-schedule-bytes=7",
        "--max-schedule-horizon=7",
        "--data-dir=/d",
        "--durability=sync",
        "--fsync-interval-ms=7",
        "--retention=a.>=count:1",
        "--store-max-backlog=7",
        "--nats-url=nats://h:1",
        "--nats-stream=S",
        "--nats-prefix=p",
        "--nats-replicas=3",
        "--nats-max-msgs-per-subject=7",
        "--shutdown-grace-ms=7",
        "--drain-timeout-ms=7",
        "--drain-retry-ms=7",
        "--log=debug",
    ];

    fn parse(args: &[&str]) -> Config {
        let cmd = Config::command().mut_args(|a| a.env(None::<&'static str>));
        let m = cmd
            .try_get_matches_from(std::iter::once("ringcast").chain(args.iter().copied()))
            .unwrap();
        <Config as clap::FromArgMatches>::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn a_reload_takes_exactly_the_live_options() {
        let (old, new) = (parse(&[]), parse(EVERY_OPTION));
        let (old_t, new_t) = (old.as_table(), new.as_table());
        let merged = old.with_live_from(&new).as_table();
        for arg in Config::command().get_arguments() {
            let key = arg.get_long().unwrap();
            assert_ne!(
                old_t.get(key),
                new_t.get(key),
                "EVERY_OPTION must change {key}"
            );
            let want = if applies(key).is_some() {
                &new_t
            } else {
                &old_t
            };
            assert_eq!(merged.get(key), want.get(key), "{key}");
        }
        for (key, _) in LIVE {
            assert!(Config::command()
                .get_arguments()
                .any(|a| a.get_long() == Some(key)));
        }
    }

    #[test]
    fn changed_lists_the_keys_that_differ() {
        let old = parse(&[]);
        let new = parse(&[
            "--history=7",
            "--jwt-secret=0123456789abcdef0123456789abcdef",
        ]);
        assert_eq!(changed(&old, &new), ["history", "jwt-secret"]);
        assert!(changed(&new, &new).is_empty());
    }
}
