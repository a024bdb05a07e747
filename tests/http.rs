//! The web side (feature `http`): `/metrics` read by a real Prometheus text parser during
//! and after a download, `/api/status` listing the table, tokens enforced, and a page that
//! a real browser renders (headless Chromium, when installed; `.ci/run` installs it and sets
//! `P2P_REQUIRE_BROWSER=1` so that there it cannot be skipped).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use common::*;
use p2ptorrent::http::HttpConfig;
use p2ptorrent::{Event, Tracker, TrackerConfig};
use prometheus_parse::{Scrape, Value};

const MIB: u64 = 1 << 20;

/// Sends one GET; returns the status code and the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, body.to_string())
}

/// Scrapes `/metrics` and parses it as Prometheus does.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition text")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name} is not a number: {other:?}"),
    }
}

fn web() -> HttpConfig {
    HttpConfig::new(localhost())
}

fn start_tracker_web() -> Tracker {
    Tracker::start(TrackerConfig::new(localhost()).http(web()))
        .expect("tracker starts")
        .0
}

#[test]
fn metrics_and_status_follow_a_download() {
    let tracker = start_tracker_web();
    let tracker_web = tracker.http_addr().unwrap();
    let before = scrape(tracker_web);
    let seeder = start_node_with("seeder", tracker.local_addr(), |c| c.http(web()));
    write_random(&seeder.path("f.bin"), 31, 8 * MIB);
    seeder.node.share("f.bin").unwrap();
    // Capped, so the leecher is scraped mid-download.
    let leech = start_node_with("leech", tracker.local_addr(), |mut c| {
        c.download_limit = Some(4 * MIB);
        c.http(web())
    });
    let leech_web = leech.node.http_addr().unwrap();
    let download = leech.node.download("f.bin").unwrap();
    wait_event(&leech.events, PATIENCE, |e| match e {
        Event::PieceReceived { done, .. } if *done >= 4 => Some(()),
        _ => None,
    });

    let during = scrape(leech_web);
    assert_eq!(
        value(&during, "p2ptorrent_downloads_started_total", &[]),
        1.0
    );
    let got = value(&during, "p2ptorrent_received_bytes_total", &[]);
    assert!(got > 0.0 && got < (8 * MIB) as f64, "{got}");
    assert!(value(&during, "p2ptorrent_connections_open", &[]) >= 1.0);
    // Capped at 4 MiB/s, the download always has requests out.
    let in_flight = value(&during, "p2ptorrent_in_flight_bytes", &[]);
    assert!(
        in_flight >= f64::from(PIECE) && in_flight < (8 * MIB) as f64,
        "{in_flight}"
    );
    let (status, json) = get(leech_web, "/api/status", None);
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dl = &status["downloads"][0];
    assert_eq!(dl["file"], "f.bin");
    assert_eq!(dl["download"], download.id().get());
    let pieces = 8 * MIB / u64::from(PIECE);
    assert_eq!(dl["pieces"], pieces);
    let fraction = dl["fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction < 1.0, "{json}");

    download.wait().unwrap();
    let after = scrape(leech_web);
    assert_eq!(value(&after, "p2ptorrent_in_flight_bytes", &[]), 0.0);
    assert_eq!(
        value(&after, "p2ptorrent_received_bytes_total", &[]),
        (8 * MIB) as f64
    );
    assert_eq!(
        value(&after, "p2ptorrent_pieces_received_total", &[]),
        pieces as f64
    );
    assert_eq!(
        value(
            &after,
            "p2ptorrent_downloads_ended_total",
            &[("outcome", "finished")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "p2ptorrent_rate_limit_wait_seconds_total",
            &[("direction", "download")]
        ) > 0.0
    );
    let sent = scrape(seeder.node.http_addr().unwrap());
    assert!(value(&sent, "p2ptorrent_sent_bytes_total", &[]) >= (8 * MIB) as f64);
    assert!(value(&sent, "p2ptorrent_pieces_sent_total", &[]) >= pieces as f64);

    // The tracker counted the announces and look-ups, and lists both owners.
    let announced = |s: &Scrape| {
        value(
            s,
            "p2ptorrent_tracker_requests_total",
            &[("kind", "announce"), ("outcome", "answered")],
        )
    };
    let tracked = scrape(tracker_web);
    assert!(announced(&tracked) > announced(&before));
    assert!(
        value(
            &tracked,
            "p2ptorrent_tracker_requests_total",
            &[("kind", "lookup"), ("outcome", "answered")]
        ) >= 1.0
    );
    assert_eq!(value(&tracked, "p2ptorrent_tracker_files", &[]), 1.0);
    assert!(
        value(
            &tracked,
            "p2ptorrent_tracker_request_duration_seconds_count",
            &[]
        ) >= 3.0
    );
    let table = wait_until("the tracker to list both owners", PATIENCE, || {
        let (_, json) = get(tracker_web, "/api/status", None);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let owners: Vec<String> = v["files"][0]["owners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["node"].as_str().unwrap_or("").to_string())
            .collect();
        if owners == ["leech", "seeder"] {
            Ok(v)
        } else {
            Err(owners)
        }
    });
    assert_eq!(table["files"][0]["file"], "f.bin");
    assert_eq!(table["files"][0]["size"], 8 * MIB);
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_wrong_or_missing_token_gets_401_and_a_token_is_required_off_loopback() {
    let config = TrackerConfig::new(localhost()).http(web().token("open sesame"));
    let (tracker, _events) = Tracker::start(config).unwrap();
    let addr = tracker.http_addr().unwrap();
    for path in ["/", "/metrics", "/api/status"] {
        assert_eq!(get(addr, path, None).0, 401, "{path}");
        assert_eq!(get(addr, path, Some("open sesamE")).0, 401, "{path}");
        assert_eq!(get(addr, path, Some("open sesame")).0, 200, "{path}");
    }
    assert_eq!(get(addr, "/nowhere", Some("open sesame")).0, 404);
    tracker.shutdown().unwrap();
    // Every interface, no token: refused at start, not served open.
    let open = TrackerConfig::new(localhost()).http(HttpConfig::new("0.0.0.0:0".parse().unwrap()));
    assert!(Tracker::start(open).is_err());
}

/// Headless Chromium, if it is installed (or required).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("P2P_REQUIRE_BROWSER").is_none(),
            "P2P_REQUIRE_BROWSER is set and no Chromium is installed"
        );
        eprintln!("skipping: no chromium installed (apt-get install chromium)");
    }
    found
}

/// Renders `url` in headless Chromium, scripts run, and returns the DOM; with `shot`, also
/// saves a screenshot there.
fn render(browser: &str, url: &str, shot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--virtual-time-budget=3000")
    .arg("--window-size=1100,700");
    match shot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("running chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bytes as the page groups them ("8,388,608 B").
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out} B")
}

/// The text of the first element of `class` in `dom`, from its opening tag on.
fn first_of(dom: &str, class: &str) -> String {
    let at = dom
        .find(&format!("class=\"{class}\""))
        .unwrap_or_else(|| panic!("no {class} in the page: {dom}"));
    dom[at..].chars().take(120).collect()
}

#[test]
fn a_browser_shows_the_table_with_counts_and_a_download_moving() {
    let Some(browser) = chromium() else { return };
    let tracker = start_tracker_web();
    let page = format!("http://{}/", tracker.http_addr().unwrap());
    let seeder = start_node_with("seeder", tracker.local_addr(), |c| c.http(web()));
    write_random(&seeder.path("movie.bin"), 32, 16 * MIB);
    seeder.node.share("movie.bin").unwrap();
    let leech = start_node_with("leech", tracker.local_addr(), |mut c| {
        c.download_limit = Some(2 * MIB);
        c.http(web())
    });
    // A stranger's node name is markup: the page must show it as text.
    let mallory = start_node("<em>mallory", tracker.local_addr());
    write_random(&mallory.path("m.bin"), 33, 1000);
    mallory.node.share("m.bin").unwrap();
    let download = leech.node.download("movie.bin").unwrap();
    let node_page = format!("http://{}/", leech.node.http_addr().unwrap());
    wait_event(&leech.events, PATIENCE, |e| match e {
        Event::PieceReceived { done, .. } if *done >= 2 => Some(()),
        _ => None,
    });
    let first = render(browser, &node_page, None);
    let first = first_of(&first, "progress");
    wait_event(&leech.events, PATIENCE, |e| match e {
        Event::PieceReceived { done, .. } if *done >= 12 => Some(()),
        _ => None,
    });
    let second = render(browser, &node_page, None);
    assert!(second.contains("p2ptorrent node leech"), "{second}");
    let second = first_of(&second, "progress");
    assert_ne!(first, second, "the progress shown did not move");
    if let Ok(dir) = std::env::var("P2P_SCREENSHOTS") {
        render(browser, &node_page, Some(&Path::new(&dir).join("node.png")));
    }
    download.wait().unwrap();

    // Once the leecher's last announce is in, the counts are still: compare them.
    let snapshot = wait_until("the leecher's counters at the tracker", PATIENCE, || {
        let s = tracker.snapshot();
        let got = s
            .nodes
            .iter()
            .find(|n| n.node == "leech")
            .map(|n| n.counters.bytes_received);
        if got == Some(16 * MIB) {
            Ok(s)
        } else {
            Err(got)
        }
    });
    let dom = render(browser, &page, None);
    assert!(dom.contains("p2ptorrent tracker"), "{dom}");
    assert!(dom.contains("movie.bin"), "{dom}");
    for node in &snapshot.nodes {
        assert!(
            dom.contains(&format!(
                "<b>{}</b>",
                node.node.replace('<', "&lt;").replace('>', "&gt;")
            )),
            "{} missing: {dom}",
            node.node
        );
        assert!(dom.contains(&grouped(node.counters.bytes_sent)), "{dom}");
        assert!(
            dom.contains(&grouped(node.counters.bytes_received)),
            "{dom}"
        );
    }
    assert!(dom.contains("&lt;em&gt;mallory"), "{dom}");
    assert!(!dom.contains("<em>mallory"), "a name became markup: {dom}");
    for owner in snapshot.owners_of("movie.bin") {
        assert!(
            dom.contains(&owner.addr.to_string()),
            "{} missing: {dom}",
            owner.addr
        );
    }
    if let Ok(dir) = std::env::var("P2P_SCREENSHOTS") {
        render(browser, &page, Some(&Path::new(&dir).join("tracker.png")));
    }
    mallory.shutdown();
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}
