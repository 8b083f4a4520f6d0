//! Authentication (JWT) and authorisation (subject ACLs).
//!
//! Owns the verifier built at start-up (and again at each reload) from `--jwt-secret` (HS256)
//! or `--jwt-public-key` (RS256/ES256; the algorithm comes from the key, never from the token),
//! of which each core keeps its own copy, and the [`Grant`] a verified token yields: per operation, allow and deny patterns
//! compiled once into [`SubjectTrie`]s. A grant is immutable and shared by reference (`Arc`);
//! connections keep it on their core. The grant also names whose token it is
//! ([`Grant::identity`]: `sub` and `iss`). `token`: one JWT taken apart and checked (header
//! `alg` and `crit`, signature, registered claims); `mint`: the other side, making a token
//! with exactly those claims (`ringcast token`).
//!
//! Semantics: nothing is allowed unless granted. A pattern may be subscribed only if one allowed
//! pattern covers every subject it can match and no deny pattern covers it wholly; subjects that
//! match a deny pattern are never delivered. Publishing needs an allowed, non-denied subject.

pub mod mint;
mod token;

use crate::subject::{covers, validate_pattern};
use crate::trie::SubjectTrie;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::fmt;
use std::sync::Arc;
use token::{AllowDeny, Checks, Claims, SubClaim};

/// Longest token accepted, bytes (a JWT carrying many subjects is still far below this).
pub const MAX_TOKEN_BYTES: usize = 8 << 10;

/// Most patterns per list in a token: grants are compiled per token, so they are bounded.
pub const MAX_PATTERNS: usize = 1024;

/// Shortest HS256 secret accepted, bytes: the hash's output size (RFC 7518 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Verifies tokens. Built at start-up and at each reload (each core keeps its own clone);
/// `None` in the node state means auth is off.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    checks: Checks,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.checks.alg)
            .finish()
    }
}

/// Key material and checks for a [`Verifier`].
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM of an RSA or EC (P-256) public key.
    pub public_key_pem: Option<Vec<u8>>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp`/`nbf`, seconds.
    pub leeway_secs: u64,
}

impl Verifier {
    /// Builds the verifier; `Ok(None)` when no key is configured (auth off).
    pub fn new(c: &AuthConfig) -> Result<Option<Verifier>, String> {
        let (key, alg) = match (&c.secret, &c.public_key_pem) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("give either --jwt-secret or --jwt-public-key, not both".into())
            }
            (Some(s), None) => {
                if s.len() < MIN_SECRET_BYTES {
                    return Err("--jwt-secret must be at least 32 bytes".into());
                }
                (DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256)
            }
            (None, Some(pem)) => {
                if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                    (k, Algorithm::ES256)
                } else {
                    return Err(
                        "--jwt-public-key is neither an RSA nor an EC public key in PEM".into(),
                    );
                }
            }
        };
        let checks = Checks {
            alg,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway: c.leeway_secs,
        };
        Ok(Some(Verifier { key, checks }))
    }

    /// What this verifier accepts, for the start-up log: `HS256 tokens, iss "a", any aud,
    /// 5 s leeway`.
    pub fn describe(&self) -> String {
        let c = &self.checks;
        let claim = |name: &str, v: &Option<String>| match v {
            Some(v) => format!("{name} {v:?}"),
            None => format!("any {name}"),
        };
        format!(
            "{:?} tokens, {}, {}, {} s leeway",
            c.alg,
            claim("iss", &c.issuer),
            claim("aud", &c.audience),
            c.leeway
        )
    }

    /// Verifies a token (signature, `alg`, `crit`, `exp`, `nbf`, issuer, audience: the
    /// `token` module) and compiles its grant.
    pub fn verify(&self, token: &str) -> Result<Arc<Grant>, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError("token missing or too large".into()));
        }
        let now = crate::os::now_ms() / 1000;
        let claims = token::decode(token, &self.key, &self.checks, now)?;
        Grant::compile(claims).map(Arc::new)
    }
}

/// Allow and deny patterns of one operation, compiled.
pub struct Acl {
    allow: Vec<Box<str>>,
    deny: Vec<Box<str>>,
    allow_trie: SubjectTrie<()>,
    deny_trie: SubjectTrie<()>,
}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .finish()
    }
}

/// Why a pattern or subject is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The operation is not in the token's `permissions`.
    NoPermission,
    /// No allowed pattern covers it.
    NotAllowed,
    /// A deny pattern covers it.
    Denied,
}

impl Refusal {
    /// Message for the `err` frame or HTTP body.
    pub fn message(self, op: &str) -> String {
        match self {
            Refusal::NoPermission => format!("token lacks the '{op}' permission"),
            Refusal::NotAllowed => "subject outside the token's allowed subjects".to_string(),
            Refusal::Denied => "subject inside the token's denied subjects".to_string(),
        }
    }
}

impl Acl {
    fn compile(allow: Vec<String>, deny: Vec<String>) -> Result<Acl, AuthError> {
        if allow.len() > MAX_PATTERNS || deny.len() > MAX_PATTERNS {
            return Err(AuthError("token has too many subject patterns".into()));
        }
        let check = |p: &String| {
            validate_pattern(p)
                .map_err(|e| AuthError(format!("token subject pattern invalid: {e}")))
        };
        allow.iter().try_for_each(check)?;
        deny.iter().try_for_each(check)?;
        let mut allow_trie = SubjectTrie::new();
        let mut deny_trie = SubjectTrie::new();
        allow.iter().for_each(|p| allow_trie.insert(p, ()));
        deny.iter().for_each(|p| deny_trie.insert(p, ()));
        Ok(Acl {
            allow: allow.into_iter().map(Into::into).collect(),
            deny: deny.into_iter().map(Into::into).collect(),
            allow_trie,
            deny_trie,
        })
    }

    fn any_match(trie: &SubjectTrie<()>, subject: &str) -> bool {
        let mut hit = false;
        trie.for_each_match(subject, |_| hit = true);
        hit
    }

    /// May a subscription to `pattern` be made?
    pub fn check_pattern(&self, pattern: &str) -> Result<(), Refusal> {
        if self.deny.iter().any(|d| covers(d, pattern)) {
            return Err(Refusal::Denied);
        }
        if !self.allow.iter().any(|a| covers(a, pattern)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// May this concrete subject be published or read?
    pub fn check_subject(&self, subject: &str) -> Result<(), Refusal> {
        if Self::any_match(&self.deny_trie, subject) {
            return Err(Refusal::Denied);
        }
        if !Self::any_match(&self.allow_trie, subject) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// True when the concrete subject matches a deny pattern (delivery filter).
    pub fn denies(&self, subject: &str) -> bool {
        !self.deny.is_empty() && Self::any_match(&self.deny_trie, subject)
    }

    /// True when some pattern is denied (deliveries must be filtered).
    pub fn has_deny(&self) -> bool {
        !self.deny.is_empty()
    }
}

/// What a verified token allows, and whose it is.
#[derive(Debug)]
pub struct Grant {
    /// The token's `sub` when it is a string: the user id. (`None` when `sub` is absent or
    /// is the subscribe-permission object.)
    pub subject: Option<Box<str>>,
    /// The token's `iss` (issuer) when it is a string.
    pub issuer: Option<Box<str>>,
    /// `exp`, seconds since the Unix epoch.
    pub exp: u64,
    /// Publish ACL (`None`: no `publish` permission).
    pub publish: Option<Acl>,
    /// Subscribe ACL (`None`: no `subscribe` permission).
    pub subscribe: Option<Acl>,
    /// The token's `max_publish_rate`: publishes per second per connection (0: unlimited;
    /// `None`: the node's `--max-publish-per-sec`).
    pub max_publish_rate: Option<u32>,
    /// The `admin` permission: node operations and the operator endpoints (`POST /admin/drain`,
    /// `/admin`, `/connz`, `/varz`; see `transport::admin`).
    pub admin: bool,
}

impl Grant {
    fn compile(c: Claims) -> Result<Grant, AuthError> {
        let has = |p: &str| c.permissions.iter().any(|x| x == p);
        // `token::decode` refuses a token without `exp`; no grant is made without one.
        let exp = c
            .exp
            .ok_or_else(|| AuthError("token lacks a required claim (exp)".into()))?;
        let issuer = c.issuer().map(Into::into);
        let (subject, sub_perm) = match c.sub {
            Some(SubClaim::Id(s)) => (Some(s.into()), None),
            Some(SubClaim::Perm(p)) => (None, Some(p)),
            None => (None, None),
        };
        let acl = |over: Option<AllowDeny>| -> Result<Acl, AuthError> {
            match over {
                Some(ad) => Acl::compile(ad.allow, ad.deny),
                None => Acl::compile(c.allowed_subjects.clone(), c.deny_subjects.clone()),
            }
        };
        let publish = if has("publish") {
            Some(acl(c.publish)?)
        } else {
            None
        };
        let subscribe = if has("subscribe") {
            Some(acl(sub_perm)?)
        } else {
            None
        };
        Ok(Grant {
            subject,
            issuer,
            exp,
            publish,
            subscribe,
            max_publish_rate: c.max_publish_rate,
            admin: has("admin"),
        })
    }

    /// Whose token this is: `(subject, issuer)`, the token's `sub` (when a string) and `iss`.
    /// Together they name a user across issuers; either may be absent.
    pub fn identity(&self) -> (Option<&str>, Option<&str>) {
        (self.subject.as_deref(), self.issuer.as_deref())
    }

    /// May `subject` (concrete) reach this holder: allowed by the subscribe list and not
    /// denied? For frames decided under an earlier grant or subscription (a resume's replay).
    pub fn may_receive(&self, subject: &str) -> bool {
        self.check_subscribe(subject).is_ok() && !self.denies_delivery(subject)
    }

    /// May `pattern` be subscribed (also gates `since`/`snapshot` and `/history`)?
    pub fn check_subscribe(&self, pattern: &str) -> Result<(), Refusal> {
        self.subscribe
            .as_ref()
            .ok_or(Refusal::NoPermission)?
            .check_pattern(pattern)
    }

    /// The publish rate of this holder's connections: its token's `max_publish_rate`, else
    /// `default` (the node's `--max-publish-per-sec`); 0 is unlimited.
    pub fn publish_rate(&self, default: u32) -> u32 {
        self.max_publish_rate.unwrap_or(default)
    }

    /// May `subject` be published?
    pub fn check_publish(&self, subject: &str) -> Result<(), Refusal> {
        self.publish
            .as_ref()
            .ok_or(Refusal::NoPermission)?
            .check_subject(subject)
    }

    /// Is delivery of `subject` to this holder denied?
    pub fn denies_delivery(&self, subject: &str) -> bool {
        self.subscribe.as_ref().is_none_or(|a| a.denies(subject))
    }

    /// Must deliveries be filtered per subject?
    pub fn filters_delivery(&self) -> bool {
        self.subscribe.as_ref().is_none_or(Acl::has_deny)
    }
}

/// True when two connections' grants name the same holder: equal `(sub, iss)`
/// ([`Grant::identity`]), or both without a grant (auth off). A session belongs to the
/// identity that made it: only the same one may resume it or refresh its token.
pub fn same_identity(a: Option<&Grant>, b: Option<&Grant>) -> bool {
    a.map(Grant::identity) == b.map(Grant::identity)
}

/// The token in an `Authorization: Bearer` header, if any.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        Acl::compile(
            allow.iter().map(|s| s.to_string()).collect(),
            deny.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn wildcard_escalation_is_refused() {
        let a = acl(&["prices.*"], &[]);
        assert_eq!(a.check_pattern("prices.EURUSD"), Ok(()));
        assert_eq!(a.check_pattern("prices.*"), Ok(()));
        assert_eq!(a.check_pattern("prices.>"), Err(Refusal::NotAllowed));
        assert_eq!(a.check_pattern("*.EURUSD"), Err(Refusal::NotAllowed));
        assert_eq!(a.check_pattern(">"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn deny_patterns_forbid_whole_patterns_and_filter_subjects() {
        let a = acl(&["prices.>"], &["prices.internal.>"]);
        assert_eq!(
            a.check_pattern("prices.>"),
            Ok(()),
            "overlaps the deny list: accepted, filtered"
        );
        assert_eq!(a.check_pattern("prices.internal.x"), Err(Refusal::Denied));
        assert_eq!(a.check_pattern("prices.internal.*"), Err(Refusal::Denied));
        assert!(a.denies("prices.internal.x"));
        assert!(!a.denies("prices.EURUSD"));
        assert_eq!(a.check_subject("prices.internal.x"), Err(Refusal::Denied));
        assert_eq!(a.check_subject("news.x"), Err(Refusal::NotAllowed));
        assert_eq!(a.check_subject("prices.x"), Ok(()));
    }

    fn verifier(issuer: Option<&str>) -> Verifier {
        let config = AuthConfig {
            secret: Some(SECRET.into()),
            issuer: issuer.map(Into::into),
            ..AuthConfig::default()
        };
        Verifier::new(&config).unwrap().unwrap()
    }

    const SECRET: &str = "unit-test-secret-that-is-long-enough-0123";

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    fn exp() -> u64 {
        crate::os::now_ms() / 1000 + 3600
    }

    #[test]
    fn a_grant_names_the_tokens_subject_and_issuer() {
        use serde_json::json;
        let v = verifier(None);
        let g = v
            .verify(&token(json!({"exp":exp(),"sub":"user-1","iss":"idp"})))
            .unwrap();
        assert_eq!(g.identity(), (Some("user-1"), Some("idp")));
        assert_eq!(
            (g.subject.as_deref(), g.issuer.as_deref()),
            (Some("user-1"), Some("idp"))
        );
        let g = v.verify(&token(json!({"exp":exp()}))).unwrap();
        assert_eq!(g.identity(), (None, None));
        // `sub` as the permission object is no user id.
        let claims = json!({"exp":exp(),"iss":"idp","sub":{"allow":["a"]}});
        let g = v.verify(&token(claims)).unwrap();
        assert_eq!(g.identity(), (None, Some("idp")));
        // An `iss` list (accepted when it holds the configured issuer) is no single issuer.
        let v = verifier(Some("idp"));
        let claims = json!({"exp":exp(),"sub":"u","iss":["idp","other"]});
        let g = v.verify(&token(claims)).unwrap();
        assert_eq!(g.identity(), (Some("u"), None));
    }

    #[test]
    fn max_publish_rate_overrides_the_node_default_and_must_be_a_count() {
        use serde_json::json;
        let v = verifier(None);
        let g = v
            .verify(&token(json!({"exp":exp(),"max_publish_rate":5})))
            .unwrap();
        assert_eq!(g.publish_rate(100_000), 5);
        let g = v.verify(&token(json!({"exp":exp()}))).unwrap();
        assert_eq!(g.publish_rate(100_000), 100_000, "absent: the node default");
        for bad in [json!(-1), json!(2.5), json!("5")] {
            let claims = json!({"exp":exp(),"max_publish_rate":bad});
            assert!(v.verify(&token(claims)).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_object_sub_narrows_subscribing_as_pub_narrows_publishing() {
        let claims = serde_json::json!({"exp":exp(),"permissions":["publish","subscribe"],
            "allowed_subjects":["news.>"],"deny_subjects":["news.x"],
            "sub":{"allow":["prices.*"],"deny":["prices.secret"]},
            "pub":{"allow":["prices.*"],"deny":["prices.secret"]}});
        let g = verifier(None).verify(&token(claims)).unwrap();
        for s in ["prices.a", "prices.secret", "news.y", "news.x", "other"] {
            let sub = g.check_subscribe(s);
            assert_eq!(sub, g.check_publish(s), "{s}");
            assert_eq!(sub.is_ok(), s == "prices.a", "{s}: {sub:?}");
        }
        assert_eq!(g.check_subscribe("prices.>"), Err(Refusal::NotAllowed));
        assert!(g.denies_delivery("prices.secret"));
        assert!(
            !g.denies_delivery("news.x"),
            "the flat deny list is replaced too"
        );
    }

    #[test]
    fn only_the_admin_permission_grants_admin() {
        use serde_json::json;
        let v = verifier(None);
        let admin = json!({"exp":exp(),"permissions":["admin"]});
        assert!(v.verify(&token(admin)).unwrap().admin);
        let user = json!({"exp":exp(),"permissions":["publish","subscribe"]});
        assert!(!v.verify(&token(user)).unwrap().admin);
        let g = v.verify(&token(json!({"exp":exp()}))).unwrap();
        assert!(!g.admin, "no permissions: no admin");
    }

    #[test]
    fn bearer_headers_are_parsed() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
