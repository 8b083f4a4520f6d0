//! The operator endpoints: `GET /admin` (the page, `src/web/admin.html`), `GET /connz` (the
//! connection list, gathered from every core) and `GET /varz` (the node's counters as JSON),
//! and the rule of who may read them.
//!
//! The rule ([`access`]): with auth on, a token with the `admin` permission (401 without a
//! valid token, 403 with one that lacks it); with auth off, loopback peers only (403 for any
//! other), since the list shows every connection's address and identity. The page itself holds
//! no data and is served to anyone: it takes a token from its URL fragment (`#token=`) or asks
//! for one, and sends it as a bearer token on its JSON calls. Runs on the connection's core.

use super::admission::Granted;
use super::endpoints::Conn;
use crate::connz::ConnzQuery;
use crate::core::Core;
use crate::http::{self, Route};
use crate::proto::ErrorCode;
use crate::store::Durability;
use std::net::SocketAddr;

/// The operator page served at `/admin` (source: `src/web/admin.html`).
pub const ADMIN_PAGE: &str = include_str!("../web/admin.html");

/// Headers of the page: never cached (it is the node's own build), never framed, and no
/// script or connection but its own origin's.
const PAGE_HEADERS: [(&str, &str); 3] = [
    ("Cache-Control", "no-cache"),
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
];

/// Why an operator endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Auth on, and no valid token (401): why.
    Unauthorized(String),
    /// A valid token without the `admin` permission, or auth off and a peer that is not
    /// loopback (403): why.
    Forbidden(&'static str),
}

/// May a request whose token gave `granted`, from `peer`, read `/connz` and `/varz`?
pub fn access(auth_on: bool, granted: &Granted, peer: Option<SocketAddr>) -> Result<(), Denied> {
    if !auth_on {
        return match peer {
            Some(p) if crate::os::is_loopback(&p) => Ok(()),
            _ => Err(Denied::Forbidden(
                "auth is off: the operator endpoints are served to loopback clients only",
            )),
        };
    }
    match granted {
        Ok(Some(g)) if g.admin => Ok(()),
        Ok(_) => Err(Denied::Forbidden("the token lacks the 'admin' permission")),
        Err(why) => Err(Denied::Unauthorized(why.clone())),
    }
}

/// The page.
pub fn page(keep_alive: bool) -> Vec<u8> {
    let content_type = "text/html; charset=utf-8";
    http::response(
        200,
        content_type,
        &PAGE_HEADERS,
        ADMIN_PAGE.as_bytes(),
        keep_alive,
    )
}

/// `GET /connz` or `GET /varz` (`route`), once [`access`] allows it.
pub async fn respond(
    core: &Core,
    route: Route<'_>,
    query: &str,
    conn: Conn<'_>,
    granted: &Granted,
) -> Vec<u8> {
    let ka = conn.keep_alive;
    match access(core.auth_on(), granted, conn.peer) {
        Ok(()) => {}
        Err(Denied::Unauthorized(why)) => return http::error(ErrorCode::Unauthorized, &why, ka),
        Err(Denied::Forbidden(why)) => return http::error(ErrorCode::Forbidden, why, ka),
    }
    match route {
        Route::Connz => match ConnzQuery::parse(query) {
            Ok(q) => http::json(200, &core.connz(&q).await, ka),
            Err(why) => http::error(ErrorCode::BadRequest, &why, ka),
        },
        _ => http::json(200, &varz(core), ka),
    }
}

/// The `/varz` body, read from every core's counters (atomics; no core is asked).
fn varz(core: &Core) -> Vec<u8> {
    let node = &core.node;
    let mode = if node.cluster.is_some() {
        "cluster"
    } else if node.store.durability() != Durability::None {
        "durable"
    } else {
        "standalone"
    };
    let info = crate::varz::NodeInfo {
        version: env!("CARGO_PKG_VERSION"),
        driver: node.driver,
        auth: core.auth_on(),
        uptime_ms: core.precise_ms(),
        now_ms: crate::os::now_ms(),
        health: node.health(),
        mode,
    };
    let depth: Vec<usize> = (0..node.cores()).map(|c| node.bus.depth(c)).collect();
    crate::varz::render(&info, &node.metrics, &depth, &node.node_series())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn without_auth_only_loopback_peers_are_served() {
        let none: Granted = Ok(None);
        assert_eq!(access(false, &none, peer("127.0.0.1:5000")), Ok(()));
        assert_eq!(access(false, &none, peer("127.1.2.3:5000")), Ok(()));
        assert_eq!(access(false, &none, peer("[::1]:5000")), Ok(()));
        assert_eq!(
            access(false, &none, peer("[::ffff:127.0.0.1]:5000")),
            Ok(())
        );
        for remote in [
            "10.0.0.7:5000",
            "[2001:db8::1]:5000",
            "[::ffff:10.0.0.7]:5000",
        ] {
            let r = access(false, &none, peer(remote));
            assert!(matches!(r, Err(Denied::Forbidden(_))), "{remote}: {r:?}");
        }
        assert!(matches!(
            access(false, &none, None),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn with_auth_a_token_needs_the_admin_permission_from_any_peer() {
        let missing: Granted = Err("missing token".into());
        let r = access(true, &missing, peer("127.0.0.1:1"));
        assert_eq!(r, Err(Denied::Unauthorized("missing token".into())));
        let verifier = crate::auth::Verifier::new(&crate::auth::AuthConfig {
            secret: Some("unit-test-secret-that-is-long-enough-0123".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let grant = |perms: &[&str]| -> Granted {
            let claims = serde_json::json!({"exp": crate::os::now_ms() / 1000 + 60,
                "permissions": perms});
            let key = jsonwebtoken::EncodingKey::from_secret(
                b"unit-test-secret-that-is-long-enough-0123",
            );
            let token =
                jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
            Ok(Some(verifier.verify(&token).unwrap()))
        };
        let admin = grant(&["admin"]);
        assert_eq!(access(true, &admin, peer("10.0.0.7:1")), Ok(()));
        let user = grant(&["subscribe"]);
        let r = access(true, &user, peer("127.0.0.1:1"));
        assert!(matches!(r, Err(Denied::Forbidden(_))), "{r:?}");
    }
}
