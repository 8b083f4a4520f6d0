//! Minting tokens (`ringcast token`): the claims the verifier reads, signed with the key the
//! node verifies with.
//!
//! Owns the mapping from "who may do what" ([`Mint`]) to exactly the claim shapes that
//! [`super::token`] accepts: `sub` (the user id), `permissions`, `allowed_subjects` and
//! `deny_subjects` (subscribing), `pub` (publishing: its own allow list, the same denies),
//! `iss`, `aud`, `max_publish_rate`, `iat` and `exp`. Every pattern is checked with the
//! server's own syntax rules before anything is signed. Pure code over its inputs (the caller
//! passes the time); runs in the `ringcast token` process, never in a node.

use super::{MAX_PATTERNS, MIN_SECRET_BYTES};
use crate::subject::validate_pattern;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// What a token grants, and to whom.
#[derive(Debug, Clone, Default)]
pub struct Mint {
    /// `sub`: the user id.
    pub sub: Option<String>,
    /// Patterns the holder may subscribe to (and read history of): `allowed_subjects`, and the
    /// `subscribe` permission when there is any.
    pub allow: Vec<String>,
    /// Patterns the holder may publish on: `pub.allow`, and the `publish` permission when
    /// there is any.
    pub publish: Vec<String>,
    /// Patterns denied for both operations (`deny_subjects`, and `pub.deny`).
    pub deny: Vec<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud`.
    pub audience: Option<String>,
    /// `max_publish_rate`: publishes per second per connection (0: unlimited).
    pub max_publish_rate: Option<u32>,
    /// Lifetime, seconds (`exp` = now + this).
    pub ttl_secs: u64,
}

/// The key a token is signed with, and its algorithm.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish()
    }
}

impl SigningKey {
    /// An HS256 secret, as long as the node requires.
    pub fn secret(secret: &[u8]) -> Result<SigningKey, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; HS256 secrets must be at least {MIN_SECRET_BYTES} (the node refuses shorter ones)",
                secret.len()
            ));
        }
        Ok(SigningKey {
            key: EncodingKey::from_secret(secret),
            alg: Algorithm::HS256,
        })
    }

    /// A PEM private key: RSA signs RS256, EC P-256 signs ES256 (the algorithms the node
    /// derives from the matching public key).
    pub fn private_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let text = String::from_utf8_lossy(pem);
        if !text.contains("PRIVATE KEY-----") {
            return Err(if text.contains("PUBLIC KEY-----") {
                "this is a public key; sign with the private key (the node is given the public one)"
                    .into()
            } else {
                "not a PEM private key".into()
            });
        }
        let (key, alg) = if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
            (k, Algorithm::RS256)
        } else if let Ok(k) = EncodingKey::from_ec_pem(pem) {
            (k, Algorithm::ES256)
        } else {
            return Err("neither an RSA nor an EC (P-256, PKCS#8) private key in PEM".into());
        };
        let key = SigningKey { key, alg };
        // An EC key of another curve parses but cannot sign ES256: find out now.
        jsonwebtoken::crypto::sign(b"probe", &key.key, key.alg)
            .map_err(|e| format!("cannot sign {:?} with this key: {e}", key.alg))?;
        Ok(key)
    }

    /// The algorithm this key signs.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// The claims of `m` at `now` (seconds since the Unix epoch), as the node reads them.
pub fn claims(m: &Mint, now: u64) -> Result<Value, String> {
    for (flag, list) in [
        ("--allow", &m.allow),
        ("--publish", &m.publish),
        ("--deny", &m.deny),
    ] {
        if list.len() > MAX_PATTERNS {
            return Err(format!("{flag}: more than {MAX_PATTERNS} patterns"));
        }
        for p in list {
            validate_pattern(p).map_err(|e| format!("{flag} {p:?}: {e}"))?;
        }
    }
    if m.ttl_secs == 0 {
        return Err("--ttl must be longer than 0".into());
    }
    let mut c = Map::new();
    let mut put = |k: &str, v: Value| c.insert(k.to_string(), v);
    if let Some(sub) = &m.sub {
        put("sub", json!(sub));
    }
    let mut permissions = Vec::new();
    if !m.allow.is_empty() {
        permissions.push("subscribe");
    }
    if !m.publish.is_empty() {
        permissions.push("publish");
        put("pub", json!({"allow": m.publish, "deny": m.deny}));
    }
    put("permissions", json!(permissions));
    put("allowed_subjects", json!(m.allow));
    put("deny_subjects", json!(m.deny));
    if let Some(iss) = &m.issuer {
        put("iss", json!(iss));
    }
    if let Some(aud) = &m.audience {
        put("aud", json!(aud));
    }
    if let Some(rate) = m.max_publish_rate {
        put("max_publish_rate", json!(rate));
    }
    put("iat", json!(now));
    put("exp", json!(now.saturating_add(m.ttl_secs)));
    Ok(Value::Object(c))
}

/// The signed token of `m` at `now`.
pub fn mint(m: &Mint, key: &SigningKey, now: u64) -> Result<String, String> {
    let claims = claims(m, now)?;
    jsonwebtoken::encode(&Header::new(key.alg), &claims, &key.key)
        .map_err(|e| format!("signing failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Refusal, Verifier};

    const SECRET: &str = "unit-test-secret-that-is-long-enough-0123";

    fn verifier() -> Verifier {
        let c = AuthConfig {
            secret: Some(SECRET.into()),
            issuer: Some("idp".into()),
            audience: Some("ringcast".into()),
            ..AuthConfig::default()
        };
        Verifier::new(&c).unwrap().unwrap()
    }

    #[test]
    fn a_minted_token_grants_what_it_says_to_the_verifier() {
        let m = Mint {
            sub: Some("alice".into()),
            allow: vec!["prices.>".into()],
            publish: vec!["orders.alice.*".into()],
            deny: vec!["prices.internal.>".into()],
            issuer: Some("idp".into()),
            audience: Some("ringcast".into()),
            max_publish_rate: Some(5),
            ttl_secs: 3600,
        };
        let key = SigningKey::secret(SECRET.as_bytes()).unwrap();
        let token = mint(&m, &key, crate::os::now_ms() / 1000).unwrap();
        let g = verifier().verify(&token).unwrap();
        assert_eq!(g.identity(), (Some("alice"), Some("idp")));
        assert_eq!(g.check_subscribe("prices.EURUSD"), Ok(()));
        assert_eq!(g.check_subscribe("prices.internal.x"), Err(Refusal::Denied));
        assert_eq!(
            g.check_subscribe("orders.alice.1"),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(g.check_publish("orders.alice.1"), Ok(()));
        assert_eq!(g.check_publish("prices.EURUSD"), Err(Refusal::NotAllowed));
        assert_eq!(g.publish_rate(100), 5);
    }

    #[test]
    fn no_allow_list_means_no_subscribe_permission_and_no_publish_list_no_publish() {
        let key = SigningKey::secret(SECRET.as_bytes()).unwrap();
        let m = Mint {
            issuer: Some("idp".into()),
            audience: Some("ringcast".into()),
            publish: vec!["a.b".into()],
            ttl_secs: 60,
            ..Mint::default()
        };
        let g = verifier()
            .verify(&mint(&m, &key, crate::os::now_ms() / 1000).unwrap())
            .unwrap();
        assert_eq!(g.check_subscribe("a.b"), Err(Refusal::NoPermission));
        assert_eq!(g.check_publish("a.b"), Ok(()));
        let m = Mint {
            publish: vec![],
            allow: vec!["a.b".into()],
            ..m
        };
        let g = verifier()
            .verify(&mint(&m, &key, crate::os::now_ms() / 1000).unwrap())
            .unwrap();
        assert_eq!(g.check_publish("a.b"), Err(Refusal::NoPermission));
    }

    #[test]
    fn bad_input_is_refused_before_signing() {
        assert!(SigningKey::secret(b"short")
            .unwrap_err()
            .contains("at least 32"));
        let e = SigningKey::private_pem(b"hello").unwrap_err();
        assert_eq!(e, "not a PEM private key");
        let m = Mint {
            allow: vec!["a..b".into()],
            ttl_secs: 60,
            ..Mint::default()
        };
        assert!(claims(&m, 0).unwrap_err().starts_with("--allow \"a..b\""));
        let m = Mint::default();
        assert!(claims(&m, 0).unwrap_err().contains("--ttl"));
    }
}
