//! The coordinator's dashboard in headless Chromium (Debian `chromium`, installed by `.ci/run`): the page loads
//! and renders live data from real agents, the charts have data points, and a decision appears after a
//! weight change. Saves a screenshot to `target/dashboard-browser.png`.
//!
//! Chromium is driven without extra crates: `--dump-dom` prints the DOM after the page's scripts ran (under
//! `--virtual-time-budget`), and the page writes what it rendered into attributes the test reads
//! (`data-points` on each chart, `tr.decision[data-sequence]`, `#status[data-connected]`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
fn run_chromium(url: &str, extra: &[String], within: Duration) -> String {
    let profile = std::env::temp_dir().join(format!(
        "lateral-chromium-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_suffix()
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
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&profile);
                panic!("chromium did not finish within {within:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let output = child.wait_with_output().expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn rand_suffix() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    u128::from(h.finish())
}

/// The opening tag that contains `marker` (e.g. `id="chart-weight"`).
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

fn dump_dom(url: &str) -> String {
    run_chromium(
        url,
        &["--virtual-time-budget=4000".into(), "--dump-dom".into()],
        Duration::from_secs(90),
    )
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

    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || dump_dom(&url)
    })
    .await
    .unwrap();
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
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || dump_dom(&url)
    })
    .await
    .unwrap();
    let rows: Vec<&str> = tags(&dom, "<tr class=\"decision\"").collect();
    assert!(
        rows.iter().any(|t| {
            attr_of(t, "data-endpoint") == Some("slow")
                && attr_of(t, "data-sequence")
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|s| s >= changed)
        }),
        "the decision #{changed} (after #{last_before}) is in the decision log; rows: {:?}",
        rows.iter().take(5).collect::<Vec<_>>()
    );

    // A screenshot for people.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard-browser.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            run_chromium(
                &url,
                &[
                    "--virtual-time-budget=4000".into(),
                    "--window-size=1400,1500".into(),
                    format!("--screenshot={}", shot.display()),
                ],
                Duration::from_secs(90),
            )
        }
    })
    .await
    .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a screenshot at {} ({size} bytes)",
        shot.display()
    );
    println!("dashboard screenshot: {}", shot.display());
}
