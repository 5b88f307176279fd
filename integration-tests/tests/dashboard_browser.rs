//! The coordinator's dashboard in headless Chromium (Debian `chromium`, installed by `.ci/run`): the page loads
//! and renders live data from real agents, the charts have data points, and a decision appears after a
//! weight change. Saves a screenshot to `target/dashboard-browser.png`.
//!
//! Chromium is driven over the DevTools protocol (a WebSocket to `--remote-debugging-port`): the test opens the
//! page, then evaluates expressions in it until what it waits for is rendered, each wait bounded by a deadline,
//! and reads the DOM (`outerHTML`). The page writes what it rendered into attributes the test reads
//! (`data-points` on each chart, `tr.decision[data-sequence]`, `#status[data-connected]`, `body[data-updates]`).
//! No virtual time: `--virtual-time-budget` with a page that polls forever could wait for good (it hung one
//! run in five here), where a condition with a deadline cannot.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use lateral_coordinator::Coordinator;
use lateral_integration_tests::*;

fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = Path::new(dir).join(candidate);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "headless Chromium is needed for the dashboard test but `chromium` is not on PATH: run .ci/run \
         (CI installs it) or `apt-get install -y chromium`"
    );
}

/// Runs Chromium headless on `url` with `extra` flags; returns stdout. Fails after `within`.
/// A headless Chromium driven over the DevTools protocol; killed (and its profile removed) on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
    socket: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    session: String,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Every DevTools step is bounded by this.
const STEP: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts Chromium and opens `url` in a page of `width` × `height`.
    async fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "lateral-chromium-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints `DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID` on stderr.
        let stderr = child.stderr.take().expect("chromium stderr");
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = found.send(line[at..].trim().to_string());
                }
            }
        });
        let ws = match tokio::task::spawn_blocking(move || address.recv_timeout(STEP))
            .await
            .unwrap()
        {
            Ok(ws) => ws,
            Err(_) => {
                let _ = child.kill();
                panic!("chromium did not open its DevTools endpoint within {STEP:?}");
            }
        };
        let (socket, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(ws.as_str()))
            .await
            .expect("DevTools connect within the step")
            .expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            profile,
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser.call("Page.navigate", json!({ "url": url })).await;
        browser
    }

    /// Sends one command (to the page once attached) and returns its result; a protocol error fails the test.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send to DevTools");
        let reply = tokio::time::timeout(STEP, async {
            while let Some(frame) = self.socket.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                let value: serde_json::Value = serde_json::from_str(&text).expect("DevTools JSON");
                if value["id"] == json!(id) {
                    return value;
                }
            }
            panic!("the DevTools connection closed during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within {STEP:?}"));
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Waits until the page has rendered at least `updates` times since it loaded (`body[data-updates]`).
    async fn wait_for_updates(&mut self, updates: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rendered = self
                .eval("Number(document.body && document.body.dataset.updates || 0)")
                .await
                .as_u64()
                .unwrap_or(0);
            if rendered >= updates {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page rendered {rendered} updates, not {updates}, within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The DOM as HTML.
    async fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .await
            .as_str()
            .expect("the DOM as a string")
            .to_string()
    }

    /// A PNG of the page.
    async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("PNG data"))
            .expect("base64 PNG")
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn tag_with<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

fn attr_of<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// Every opening tag starting with `prefix`.
fn tags<'a>(dom: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    dom.match_indices(prefix)
        .filter_map(move |(at, _)| Some(&dom[at..=at + dom[at..].find('>')?]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_live_data_and_a_new_decision_in_chromium() {
    chromium(); // fail early, with the message, if it is missing
    let pki = Pki::new("test-ca");
    let ([fast, slow], mut config) = fleet(&pki, [("fast", 8, 5), ("slow", 8, 10)]).await;
    config.listen.http = Some(any_port());
    let coordinator = Coordinator::start(config).await.unwrap();
    let url = format!("http://{}/", coordinator.http_addr().unwrap());
    let _load_fast = steady_load(fast.uri(), 100);
    let _load_slow = steady_load(slow.uri(), 100);

    // A few seconds of history, so the charts have several points per endpoint.
    let handle = coordinator.handle().clone();
    eventually(
        Duration::from_secs(15),
        "3 history points per endpoint",
        || {
            let handle = handle.clone();
            async move {
                let now = tokio::time::Instant::now().into_std();
                let state = handle.metrics().state(now, 0, 600);
                state.first().is_some_and(|s| {
                    s.endpoints.len() == 2 && s.endpoints.iter().all(|e| e.history.len() >= 3)
                })
            }
        },
    )
    .await;

    let mut browser = Browser::open(&url, 1400, 1500).await;
    browser.wait_for_updates(2, Duration::from_secs(30)).await;
    let dom = browser.dom().await;
    let status = tag_with(&dom, "id=\"status\"").expect("status element");
    assert_eq!(
        attr_of(status, "data-connected"),
        Some("true"),
        "the page fetched /api/state: {status}"
    );
    for id in ["fast", "slow"] {
        assert!(
            tags(&dom, "<tr class=\"endpoint\"").any(|t| attr_of(t, "data-endpoint") == Some(id)),
            "a row for {id}"
        );
    }
    for chart in [
        "chart-weight",
        "chart-p99",
        "chart-inflight",
        "chart-errors",
    ] {
        let tag = tag_with(&dom, &format!("id=\"{chart}\"")).expect("chart");
        let points: usize = attr_of(tag, "data-points").unwrap().parse().unwrap();
        assert!(points >= 4, "{chart} plots data: {tag}");
    }
    assert!(dom.contains("<polyline"), "charts have lines");

    // A weight change: the slow backend gets much slower; a decision follows and the page shows it.
    let (before, _) = handle.decisions().query("svc", "", 0, 10_000);
    let last_before = before.last().map(|d| d.sequence).unwrap_or(0);
    slow.knobs().set_service_time(Duration::from_millis(60));
    let mut changed = 0;
    eventually(
        Duration::from_secs(15),
        "a decision for slow after the slowdown",
        || {
            let (after, _) = handle.decisions().query("svc", "slow", last_before, 100);
            changed = after
                .iter()
                .filter(|d| d.new_weight < d.old_weight)
                .map(|d| d.sequence)
                .max()
                .unwrap_or(0);
            std::future::ready(changed > 0)
        },
    )
    .await;
    // The open page polls on: the decision shows up in it without a reload.
    let shows_the_decision = |dom: &str| {
        tags(dom, "<tr class=\"decision\"").any(|t| {
            attr_of(t, "data-endpoint") == Some("slow")
                && attr_of(t, "data-sequence")
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|s| s >= changed)
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dom = browser.dom().await;
        if shows_the_decision(&dom) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the decision #{changed} (after #{last_before}) is in the decision log; rows: {:?}",
            tags(&dom, "<tr class=\"decision\"")
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A screenshot for people.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard-browser.png");
    let png = browser.screenshot().await;
    assert!(png.len() > 10_000, "a screenshot ({} bytes)", png.len());
    std::fs::write(&shot, &png).unwrap();
    println!("dashboard screenshot: {}", shot.display());
}
