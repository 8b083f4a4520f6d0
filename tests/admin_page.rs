//! The operator page (`/admin`) in headless Chromium, against a node with auth on, a few
//! connections and published traffic: the page, given an admin token in its URL fragment,
//! renders the numbers `/varz` and `/connz` return (per-core counters, node tiles, every row
//! of the connection list), its charts saw the traffic, its search box narrows the list as
//! `?subject=` does, and a screenshot of it is a PNG of the viewport's size with more in it
//! than a blank page (saved as `admin-page-<driver>.png` under Cargo's test tmpdir, for a look).
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Every wait is a bounded poll.

mod common;

#[path = "common/browser.rs"]
mod harness;

use common::{http, start, Node, Ws};
use harness::{Browser, Page, DEADLINE};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::config::DriverChoice;
use ringcast::store::Durability;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

/// The viewport of the screenshot.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

/// Every counter the test compares with the page's per-core table: stable once the traffic
/// has been delivered (unlike connections or HTTP requests, which the page's polls move).
const CORE_FIELDS: [&str; 5] = [
    "published_total",
    "delivered_total",
    "subscriptions",
    "dropped_total",
    "slow_consumer_closes_total",
];

/// The fields of a `/connz` row the page shows and that stay put once traffic stopped
/// (`behind_ms` grows with time: it is compared with what the page fetched).
const ROW_FIELDS: [&str; 8] = [
    "id",
    "core",
    "kind",
    "remote",
    "token_sub",
    "subscriptions",
    "queue_bytes",
    "drops",
];

fn token(sub: &str, permissions: &[&str]) -> String {
    let exp = ringcast::os::now_ms() / 1000 + 3600;
    let claims = json!({"sub":sub,"exp":exp,"permissions":permissions,"allowed_subjects":[">"]});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn get(node: &Node, target: &str, token: &str) -> Value {
    let bearer = format!("Bearer {token}");
    let (status, _, body) = http(node.addr, "GET", target, &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200, "{target}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn small_rcvbuf(s: &socket2::Socket) {
    s.set_recv_buffer_size(4096).unwrap();
}

/// A WebSocket with a token of user `sub`, subscribed to `pattern`.
fn subscriber(node: &Node, sub: &str, pattern: &str, slow: bool) -> Ws {
    let mut ws = if slow {
        let mut ws = Ws::connect_raw(node.addr, small_rcvbuf);
        let t = token(sub, &["subscribe"]);
        ws.send(&format!(r#"{{"op":"auth","id":0,"token":"{t}"}}"#));
        ws.hello()
    } else {
        let target = format!("/ws?token={}", token(sub, &["subscribe"]));
        Ws::try_connect(node.addr, &target, &[]).unwrap().hello()
    };
    if slow {
        assert_eq!(ws.recv_json()["op"], "ok", "auth of {sub}");
    }
    ws.sub(1, pattern);
    ws
}

/// What the page shows, read from its DOM (text as rendered), and what it fetched last.
const READ_PAGE: &str = r#"(() => {
  const cells = tr => Object.fromEntries([...tr.querySelectorAll('td')]
    .map(td => [td.dataset.field, td.textContent]));
  return {
    cores: [...document.querySelectorAll('#cores tr')].map(cells),
    rows: [...document.querySelectorAll('#connz tr')].map(cells),
    tiles: Object.fromEntries([...document.querySelectorAll('.tile b')].map(b => [b.id, b.textContent])),
    total: document.getElementById('connz-count').dataset.total,
    rendered: window.__admin.rendered,
    errors: window.__admin.errors,
    peak: window.__admin.peak,
    connz: window.__admin.connz,
  };
})()"#;

/// A rendered number ("12,345") as a number.
fn num(v: &Value) -> Value {
    let t = v.as_str().unwrap_or_default().replace(',', "");
    t.parse::<u64>().map(Value::from).unwrap_or(Value::Null)
}

/// What the page should show for `varz` and `connz`, in the page's terms (numbers parsed back
/// from its text; absent values as the page's dash).
fn expected(varz: &Value, connz: &Value) -> Value {
    let cores: Vec<Value> = varz["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut o = serde_json::Map::new();
            for f in CORE_FIELDS {
                o.insert(f.into(), c[f].clone());
            }
            o.into()
        })
        .collect();
    let sum = |k: &str| -> u64 {
        varz["cores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[k].as_u64().unwrap())
            .sum()
    };
    let rows: Vec<Value> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for f in ROW_FIELDS {
                let v = match &r[f] {
                    Value::Null => json!("–"),
                    v => v.clone(),
                };
                o.insert(f.into(), v);
            }
            o.into()
        })
        .collect();
    json!({"cores": cores, "rows": rows, "total": connz["total"].to_string(),
        "published": sum("published_total"), "delivered": sum("delivered_total"),
        "subscriptions": sum("subscriptions"), "slow": sum("slow_consumer_closes_total")})
}

/// The page's DOM in the same terms as [`expected`].
fn shown(page: &Value) -> Value {
    let cores: Vec<Value> = page["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut o = serde_json::Map::new();
            for f in CORE_FIELDS {
                o.insert(f.into(), num(&c[f]));
            }
            o.into()
        })
        .collect();
    let rows: Vec<Value> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for f in ROW_FIELDS {
                let v = match f {
                    "core" | "subscriptions" | "queue_bytes" | "drops" => num(&r[f]),
                    _ => r[f].clone(),
                };
                o.insert(f.into(), v);
            }
            o.into()
        })
        .collect();
    let tile = |id: &str| num(&page["tiles"][id]);
    json!({"cores": cores, "rows": rows, "total": page["total"].clone(),
        "published": tile("t-published"), "delivered": tile("t-delivered"),
        "subscriptions": tile("t-subscriptions"), "slow": tile("t-slow")})
}

/// Polls until the page shows what the node answers to `connz_query` (and `/varz`); returns
/// the page's last read.
fn wait_until_page_shows(page: &mut Page, node: &Node, admin: &str, connz_query: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let varz = get(node, "/varz", admin);
        let connz = get(node, &format!("/connz?{connz_query}"), admin);
        let read = page.json_of(READ_PAGE);
        let want = expected(&varz, &connz);
        if read["rendered"].as_u64() > Some(0) && shown(&read) == want {
            return read;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed what the node answers:\n want {want}\n shown {}\n errors {}",
            shown(&read),
            read["errors"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Types `text` into the page's search box.
fn search(page: &mut Page, text: &str) {
    let js = format!(
        "(() => {{ const s = document.getElementById('search'); s.value = {}; \
         s.dispatchEvent(new Event('input')); return true; }})()",
        json!(text)
    );
    page.eval(&js);
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24, "{} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

fn the_admin_page_renders_what_varz_and_connz_return(d: DriverChoice) {
    let node = start(d, |c| {
        c.jwt_secret = Some(SECRET.into());
        c.durability = Some(Durability::None);
        // One of the slow readers below is closed as a slow consumer, the other stays behind.
        c.max_queue_bytes = 256 << 10;
        c.max_unsent_bytes = 4096;
    });
    let admin = token("ops", &["admin"]);
    let mut clients: Vec<Ws> = (0..5)
        .map(|i| {
            subscriber(
                &node,
                &format!("trader-{i}"),
                &format!("feed.{}", i % 3),
                false,
            )
        })
        .collect();
    clients.push(subscriber(&node, "behind", "feed.0", true));
    let closed = subscriber(&node, "too-slow", "feed.>", true);

    let url = format!("http://{}/admin#token={admin}", node.addr);
    let mut browser = Browser::launch(&url);
    let mut page = Page::attach(&mut browser, &format!("http://{}", node.addr));
    page.set_viewport(WIDTH, HEIGHT);
    let deadline = Instant::now() + DEADLINE;
    while page
        .json_of("window.__admin && window.__admin.rendered")
        .as_u64()
        .unwrap_or(0)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the page never rendered: {}",
            page.json_of("window.__admin")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Traffic while the page watches: 120 x 4 KB over three subjects (160 KB for the reader
    // of one of them, within its 256 KiB queue; 480 KB for the reader of all: closed).
    let publisher = format!("Bearer {}", token("feed", &["publish"]));
    let data = format!("\"{}\"", "p".repeat(4000));
    for i in 0..120 {
        let body = format!(r#"{{"subject":"feed.{}","data":{data}}}"#, i % 3);
        let auth = [("Authorization", publisher.as_str())];
        let (status, _, reply) = http(node.addr, "POST", "/publish", &auth, body.as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(closed);

    let t0 = Instant::now();
    let read = wait_until_page_shows(&mut page, &node, &admin, "sort=id&offset=0&limit=100");
    eprintln!(
        "the page showed the node's numbers after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        read["errors"],
        json!([]),
        "the page's fetches all succeeded"
    );
    assert!(
        read["peak"]["publish"].as_f64() > Some(0.0),
        "the publish chart saw the traffic: {}",
        read["peak"]
    );
    assert!(
        read["peak"]["deliver"].as_f64() > Some(0.0),
        "{}",
        read["peak"]
    );
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        6,
        "every connection but the closed one: {rows:?}"
    );
    let behind = rows
        .iter()
        .find(|r| r["token_sub"] == "behind")
        .expect("the slow reader's row");
    assert!(num(&behind["queue_bytes"]).as_u64() > Some(0), "{behind}");
    assert_eq!(num(&read["tiles"]["t-slow"]), 1, "one slow consumer closed");
    // behind_ms moves with the clock: the page shows what it fetched.
    for (r, fetched) in rows
        .iter()
        .zip(read["connz"]["connections"].as_array().unwrap())
    {
        assert_eq!(num(&r["behind_ms"]), fetched["behind_ms"], "{r}");
    }
    assert!(read["connz"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["behind_ms"].as_u64() > Some(0)));

    // The search box narrows the list as `?subject=` does.
    search(&mut page, "trader-1");
    let read = wait_until_page_shows(
        &mut page,
        &node,
        &admin,
        "sort=id&offset=0&limit=100&subject=trader-1",
    );
    assert_eq!(
        read["rows"].as_array().unwrap().len(),
        1,
        "{}",
        read["rows"]
    );
    search(&mut page, "");
    wait_until_page_shows(&mut page, &node, &admin, "sort=id&offset=0&limit=100");

    let png = page.screenshot_png();
    assert_eq!(
        png_size(&png),
        (WIDTH, HEIGHT),
        "a screenshot of the viewport"
    );
    // A blank 1280x900 page compresses to a few KB; tables, tiles and charts take far more.
    assert!(
        png.len() > 40_000,
        "a nearly empty screenshot: {} bytes",
        png.len()
    );
    let name = format!("admin-page-{d:?}.png").to_lowercase();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    drop(clients);
}

on_both_drivers!(the_admin_page_renders_what_varz_and_connz_return);
