//! The browser tests' harness (included by `tests/browser.rs` and `tests/admin_page.rs` only,
//! with `#[path]`: the other test binaries do not build it; each uses part of it): a TCP proxy of the test's own in front of a node, that can
//! cut every connection and send new ones to another node; headless Chromium on a fresh
//! profile; a DevTools protocol connection to its page.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Bound of every wait (browser start, page state, reconnects).
pub const DEADLINE: Duration = Duration::from_secs(40);

// ---- the proxy -------------------------------------------------------------------------------

/// A TCP proxy in front of the node that can cut every connection at once (both sockets shut
/// down, as when a network path dies: the browser and the node each see the connection end).
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

struct ProxyShared {
    /// Where new connections go.
    upstream: Mutex<SocketAddr>,
    /// Both sockets of every open proxied connection, by connection number.
    live: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next: AtomicU64,
    stop: AtomicBool,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(upstream),
            live: Mutex::default(),
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let upstream = *sh.upstream.lock().unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let id = sh.next.fetch_add(1, Ordering::SeqCst);
                let clone = |s: &TcpStream| s.try_clone().expect("socket clone");
                sh.live
                    .lock()
                    .unwrap()
                    .insert(id, [clone(&client), clone(&server)]);
                pump(clone(&client), clone(&server), &sh, id);
                pump(server, client, &sh, id);
            }
        });
        Proxy { addr, shared }
    }

    /// Sends new connections to `upstream` (as a load balancer does when a node leaves); open
    /// ones stay where they are.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Shuts down every open proxied connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let mut live = self.shared.live.lock().unwrap();
        for s in live.values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let n = live.len();
        live.clear();
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        self.cut();
    }
}

/// Copies `from` to `to` until either side ends, then ends both.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Arc<ProxyShared>, id: u64) {
    let shared = shared.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        shared.live.lock().unwrap().remove(&id);
    });
}

// ---- the browser -----------------------------------------------------------------------------

/// Headless Chromium on a fresh profile, killed (its whole process group) on drop.
pub struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Browser {
    pub fn launch(url: &str) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test needs Debian's chromium (`apt-get install -y chromium`; .ci/run installs it)"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-browser-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("profile")).unwrap();
        let log = File::create(dir.join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        Browser { child, dir }
    }

    /// The DevTools port, from `<profile>/DevToolsActivePort` once Chromium wrote it.
    fn devtools_port(&mut self) -> u16 {
        let file = self.dir.join("profile/DevToolsActivePort");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let port = fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok());
            if let Some(port) = port {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before it listened:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within {DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of Chromium's output.
    fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser leads its own process group (renderers, GPU and utility processes too).
        // SAFETY: kill(2) on a process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A DevTools protocol connection to the page.
pub struct Page {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    /// Finds the tab showing a URL under `origin` and connects to it.
    pub fn attach(browser: &mut Browser, origin: &str) -> Page {
        let port = browser.devtools_port();
        let deadline = Instant::now() + DEADLINE;
        let ws_url = loop {
            let list = devtools_get(port, "/json/list");
            let found = serde_json::from_str::<Value>(&list).ok().and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|t| {
                        t["type"] == "page"
                            && t["url"].as_str().is_some_and(|u| u.starts_with(origin))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(url) = found {
                break url;
            }
            assert!(
                Instant::now() < deadline,
                "no tab on {origin} within {DEADLINE:?}; /json/list: {list}\n{}",
                browser.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(crate::common::IO_BOUND))
            .unwrap();
        stream
            .set_write_timeout(Some(crate::common::IO_BOUND))
            .unwrap();
        // The URL names 127.0.0.1:<port>, which becomes the Host header DevTools checks.
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools WebSocket {ws_url}: {e}"));
        Page { ws, next_id: 0 }
    }

    /// One DevTools call: its `result` (events that arrive meanwhile are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(call.to_string()))
            .expect("DevTools send");
        loop {
            let msg = self.ws.read().expect("DevTools read");
            let Ok(text) = msg.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["id"] != id {
                continue; // an event
            }
            assert!(v["error"].is_null(), "{method} failed: {v}");
            return v["result"].clone();
        }
    }

    /// `Runtime.evaluate` of `expression`, its value returned by value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true});
        let result = self.call("Runtime.evaluate", params);
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Makes the viewport `width` x `height` CSS pixels at one device pixel each.
    pub fn set_viewport(&mut self, width: u32, height: u32) {
        let params = json!({"width": width, "height": height, "deviceScaleFactor": 1,
            "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", params);
    }

    /// A PNG screenshot of the viewport, its bytes.
    pub fn screenshot_png(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = shot["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG")
    }

    /// The value of a JavaScript expression, through JSON (null for `undefined`).
    pub fn json_of(&mut self, expression: &str) -> Value {
        let text = self.eval(&format!("JSON.stringify(({expression}) ?? null)"));
        serde_json::from_str(text.as_str().expect("a string")).expect("page JSON")
    }

    /// `window.__ringcast`, the demo page's record (null until the page's script ran).
    pub fn record(&mut self) -> Value {
        self.json_of("window.__ringcast")
    }
}

/// GET on the DevTools HTTP endpoint, which answers only to a `Host` of an IP or localhost
/// (and keeps the connection open: the body is read by its Content-Length).
fn devtools_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(crate::common::IO_BOUND)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).expect("DevTools HTTP request");
    let (_, _, body) = crate::common::read_response(&mut s);
    String::from_utf8_lossy(&body).into_owned()
}
