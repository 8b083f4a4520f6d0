//! One JWT (compact JWS), taken apart and checked: the header (`alg`, `crit`), the signature,
//! and the claims with their registered-claim checks (`exp`, `nbf`, `iss`, `aud`).
//!
//! jsonwebtoken's `decode` is not used whole: its claim validation reads `sub` as a string
//! only, so a token with the documented `"sub":{"allow":..}` object fails there before
//! ringcast sees it, and it does not look at `crit`. The crate still does the header parsing
//! and the cryptography (`decode_header`, `crypto::verify`); the registered claims are checked
//! here: `exp` required, `exp`/`nbf` with leeway (the crate's semantics), and a configured
//! issuer or audience required in the token's `iss`/`aud` (the crate let a token without the
//! claim pass).
//!
//! Pure code over its inputs (the caller passes the time); called on the connection's core.

use super::AuthError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// `{"allow":[..],"deny":[..]}` (NATS style).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct AllowDeny {
    /// Allowed patterns.
    #[serde(default)]
    pub(super) allow: Vec<String>,
    /// Denied patterns.
    #[serde(default)]
    pub(super) deny: Vec<String>,
}

/// `sub` is the standard subject claim (a string) or a NATS-style permission object.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum SubClaim {
    /// The token's subject: the user id.
    Id(String),
    /// What the holder may subscribe to (replaces the flat lists for subscribing).
    Perm(AllowDeny),
}

/// The claims ringcast reads; any others are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    /// Expiry, seconds since the Unix epoch (required).
    #[serde(default)]
    pub(super) exp: Option<u64>,
    /// Not before: a NumericDate (integer or fraction), checked, not kept.
    #[serde(default)]
    nbf: Option<Value>,
    /// Issuer: a string (or, as jsonwebtoken accepts, a list of strings).
    #[serde(default)]
    iss: Option<Value>,
    /// Audience: a string or a list of strings.
    #[serde(default)]
    aud: Option<Value>,
    /// The user id, or the subscribe permissions.
    #[serde(default)]
    pub(super) sub: Option<SubClaim>,
    /// The operations granted (`publish`, `subscribe`, `admin`).
    #[serde(default)]
    pub(super) permissions: Vec<String>,
    /// Allowed patterns of both operations (unless `pub`/`sub` replace them).
    #[serde(default)]
    pub(super) allowed_subjects: Vec<String>,
    /// Denied patterns of both operations (unless `pub`/`sub` replace them).
    #[serde(default)]
    pub(super) deny_subjects: Vec<String>,
    /// The publish permissions (replaces the flat lists for publishing).
    #[serde(default, rename = "pub")]
    pub(super) publish: Option<AllowDeny>,
    /// Publishes per second this holder's connections may make, each (0: unlimited; absent:
    /// the node's `--max-publish-per-sec`).
    #[serde(default)]
    pub(super) max_publish_rate: Option<u32>,
}

impl Claims {
    /// The `iss` claim, when it is a string.
    pub(super) fn issuer(&self) -> Option<&str> {
        self.iss.as_ref()?.as_str()
    }
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub(super) struct Checks {
    /// The one algorithm the configured key is for.
    pub(super) alg: Algorithm,
    /// Required `iss` (`--jwt-issuer`).
    pub(super) issuer: Option<String>,
    /// Required `aud` (`--jwt-audience`).
    pub(super) audience: Option<String>,
    /// Clock-skew allowance for `exp`/`nbf`, seconds.
    pub(super) leeway: u64,
}

fn refused(why: &str) -> AuthError {
    AuthError(why.to_string())
}

/// The message for an error of jsonwebtoken's header parsing or cryptography.
fn library_refusal(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    refused(match e.kind() {
        K::InvalidSignature => "bad token signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "token algorithm does not match the configured key"
        }
        K::Json(_) => "token claims have the wrong shape",
        _ => "invalid token",
    })
}

/// Verifies `token` (signature by `key`, header and claims by `checks`) at `now` (seconds
/// since the Unix epoch) and returns its claims.
pub(super) fn decode(
    token: &str,
    key: &DecodingKey,
    checks: &Checks,
    now: u64,
) -> Result<Claims, AuthError> {
    // The split jsonwebtoken makes: signature after the last dot, payload before it.
    let (message, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| refused("invalid token"))?;
    let (header, payload) = message
        .rsplit_once('.')
        .ok_or_else(|| refused("invalid token"))?;
    check_crit(header)?;
    let parsed = jsonwebtoken::decode_header(token).map_err(|e| library_refusal(&e))?;
    if parsed.crit.is_some() {
        // Unreachable after `check_crit`; kept so that no parse can differ from that one.
        return Err(crit_refusal());
    }
    if parsed.alg != checks.alg {
        return Err(refused("token algorithm does not match the configured key"));
    }
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, checks.alg) {
        Ok(true) => {}
        Ok(false) => return Err(refused("bad token signature")),
        Err(e) => return Err(library_refusal(&e)),
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| refused("invalid token"))?;
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|_| refused("token claims have the wrong shape"))?;
    checks.check(&claims, now)?;
    Ok(claims)
}

fn crit_refusal() -> AuthError {
    refused("token header has 'crit' (critical extensions), which ringcast does not support")
}

/// RFC 7515 4.1.11: a recipient must refuse a token whose `crit` lists an extension it does
/// not understand; ringcast understands none, so any `crit` is refused (a malformed one too:
/// it must be a non-empty list of names). A header that is not base64url JSON is left to
/// `decode_header`, which parses the same bytes and refuses it.
fn check_crit(header_b64: &str) -> Result<(), AuthError> {
    let Ok(json) = URL_SAFE_NO_PAD.decode(header_b64) else {
        return Ok(());
    };
    let Ok(header) = serde_json::from_slice::<serde_json::Map<String, Value>>(&json) else {
        return Ok(());
    };
    match header.get("crit") {
        None => Ok(()),
        Some(Value::Array(names)) if !names.is_empty() && names.iter().all(Value::is_string) => {
            Err(crit_refusal())
        }
        Some(_) => Err(refused(
            "token header has a malformed 'crit' (must be a non-empty list of names)",
        )),
    }
}

/// A NumericDate as jsonwebtoken reads one: an integer, or a non-negative fraction rounded.
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)?;
        Some(f.round() as u64)
    })
}

/// Does the token's `iss`/`aud` value name `want`? Nothing required: yes, whatever the claim.
/// Required: the claim must be there (a token that names no issuer or audience is not one of
/// the configured issuer's or for this audience); a string must equal it, a list must hold it
/// (and only strings); any other value never names it.
fn names(claim: Option<&Value>, want: Option<&str>) -> bool {
    let Some(want) = want else {
        return true;
    };
    match claim {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(list)) => {
            list.iter().all(Value::is_string) && list.iter().any(|v| v.as_str() == Some(want))
        }
        _ => false,
    }
}

impl Checks {
    /// The registered-claim checks of `c` at `now`.
    fn check(&self, c: &Claims, now: u64) -> Result<(), AuthError> {
        let exp = c
            .exp
            .ok_or_else(|| refused("token lacks a required claim (exp)"))?;
        if exp < now.saturating_sub(self.leeway) {
            return Err(refused("token expired"));
        }
        if let Some(nbf) = c.nbf.as_ref().filter(|v| !v.is_null()) {
            let nbf = numeric_date(nbf).ok_or_else(|| refused("token nbf is not a date"))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(refused("token not valid yet (nbf)"));
            }
        }
        if !names(c.iss.as_ref(), self.issuer.as_deref()) {
            return Err(refused("token issuer not accepted"));
        }
        if !names(c.aud.as_ref(), self.audience.as_deref()) {
            return Err(refused("token audience not accepted"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"unit-test-secret-that-is-long-enough-0123";
    const NOW: u64 = 1_800_000_000;

    fn checks() -> Checks {
        Checks {
            alg: Algorithm::HS256,
            issuer: None,
            audience: None,
            leeway: 0,
        }
    }

    fn sign(header: &Value, claims: &Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let message = format!("{}.{}", part(header), part(claims));
        let key = EncodingKey::from_secret(SECRET);
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    }

    fn hs(claims: &Value) -> String {
        sign(&json!({"alg":"HS256","typ":"JWT"}), claims)
    }

    fn verify(token: &str, c: &Checks) -> Result<Claims, String> {
        decode(token, &DecodingKey::from_secret(SECRET), c, NOW).map_err(|e| e.0)
    }

    #[test]
    fn a_token_made_by_jsonwebtoken_is_accepted_and_a_tampered_one_is_not() {
        let claims = json!({"exp":NOW + 60,"sub":"u","permissions":["publish"]});
        let key = EncodingKey::from_secret(SECRET);
        let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        let c = verify(&token, &checks()).unwrap();
        assert_eq!(c.permissions, ["publish"]);
        let (message, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert_eq!(
            verify(&forged, &checks()).unwrap_err(),
            "bad token signature"
        );
        let (head, sig) = token.rsplit_once('.').unwrap();
        let (header, _) = head.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(json!({"exp":NOW + 60,"sub":"admin"}).to_string());
        let swapped = format!("{header}.{other}.{sig}");
        assert_eq!(
            verify(&swapped, &checks()).unwrap_err(),
            "bad token signature"
        );
        for bad in ["", "a", "a.b", "a.b.c.d", "..", "e30.e30."] {
            assert!(verify(bad, &checks()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_algorithm_comes_from_the_key_not_the_token() {
        let claims = json!({"exp":NOW + 60});
        let key = EncodingKey::from_secret(SECRET);
        let hs384 = jsonwebtoken::encode(&Header::new(Algorithm::HS384), &claims, &key).unwrap();
        let e = verify(&hs384, &checks()).unwrap_err();
        assert!(e.contains("algorithm"), "{e}");
        let none = sign(&json!({"alg":"none"}), &claims);
        assert!(verify(&none, &checks()).is_err());
    }

    #[test]
    fn any_crit_header_is_refused() {
        let claims = json!({"exp":NOW + 60});
        for crit in [
            json!(["ext"]),
            json!(["exp"]),
            json!([]),
            json!("ext"),
            Value::Null,
            json!([1]),
            json!(["ext", 2]),
            json!({}),
            json!(true),
        ] {
            let token = sign(&json!({"alg":"HS256","crit":crit,"ext":1}), &claims);
            let e = verify(&token, &checks()).unwrap_err();
            assert!(e.contains("'crit'"), "crit {crit}: {e}");
        }
        let plain = sign(&json!({"alg":"HS256","ext":1}), &claims);
        assert!(
            verify(&plain, &checks()).is_ok(),
            "unknown non-critical fields are fine"
        );
    }

    #[test]
    fn exp_is_required_and_exp_and_nbf_allow_the_leeway() {
        let c = Checks {
            leeway: 10,
            ..checks()
        };
        let ok = |claims: Value| verify(&hs(&claims), &c).map(|_| ());
        assert_eq!(
            ok(json!({})).unwrap_err(),
            "token lacks a required claim (exp)"
        );
        assert_eq!(
            ok(json!({"exp":"soon"})).unwrap_err(),
            "token claims have the wrong shape"
        );
        assert_eq!(ok(json!({"exp":NOW - 10})), Ok(()));
        assert_eq!(ok(json!({"exp":NOW - 11})).unwrap_err(), "token expired");
        assert_eq!(ok(json!({"exp":NOW + 60,"nbf":NOW + 10})), Ok(()));
        assert_eq!(
            ok(json!({"exp":NOW + 60,"nbf":(NOW + 10) as f64 + 0.4})),
            Ok(())
        );
        assert_eq!(ok(json!({"exp":NOW + 60,"nbf":null})), Ok(()));
        assert_eq!(
            ok(json!({"exp":NOW + 60,"nbf":NOW + 11})).unwrap_err(),
            "token not valid yet (nbf)"
        );
        for bad in [json!(-1), json!("now"), json!([1])] {
            let e = ok(json!({"exp":NOW + 60,"nbf":bad})).unwrap_err();
            assert_eq!(e, "token nbf is not a date", "nbf {bad}");
        }
    }

    #[test]
    fn a_configured_issuer_and_audience_are_compared_with_the_token() {
        let c = Checks {
            issuer: Some("idp".into()),
            audience: Some("ringcast".into()),
            ..checks()
        };
        let ok = |extra: Value| {
            let mut claims = json!({"exp":NOW + 60});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            verify(&hs(&claims), &c).map(|_| ())
        };
        assert_eq!(ok(json!({"iss":"idp","aud":"ringcast"})), Ok(()));
        assert_eq!(
            ok(json!({"iss":["x","idp"],"aud":["ringcast","y"]})),
            Ok(())
        );
        // Configured, a claim is required: absent or null is refused.
        let iss = Err("token issuer not accepted".to_string());
        assert_eq!(ok(json!({"aud":"ringcast"})), iss);
        assert_eq!(ok(json!({"iss":null,"aud":"ringcast"})), iss);
        let aud = Err("token audience not accepted".to_string());
        assert_eq!(ok(json!({"iss":"idp"})), aud);
        assert_eq!(ok(json!({"iss":"idp","aud":null})), aud);
        for bad in [
            json!("other"),
            json!(["x"]),
            json!([]),
            json!(5),
            json!(["idp", 5]),
        ] {
            assert_eq!(ok(json!({"iss":bad,"aud":"ringcast"})), iss, "iss {bad}");
        }
        for bad in [
            json!("other"),
            json!([]),
            json!({"a":1}),
            json!(["ringcast", {}]),
        ] {
            assert_eq!(ok(json!({"iss":"idp","aud":bad})), aud, "aud {bad}");
        }
        // Nothing configured: `iss` and `aud` of any shape are not looked at.
        let claims = json!({"exp":NOW + 60,"iss":5,"aud":{"x":1}});
        assert!(verify(&hs(&claims), &checks()).is_ok());
    }
}
