//! The monitoring server against running queries: the JSON API and the Prometheus exposition
//! asserted value by value, and the live page rendered by headless Chromium (with a screenshot
//! saved as a test artifact).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flumen::MonitorServer;
use flumen::datafusion::arrow::array::{Int64Array, RecordBatch};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flumen::prelude::*;
use flumen_tests::*;
use serde_json::{Value, json};

/// GETs `path`; returns (status, content type, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the monitor");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.parse().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len(), "Content-Length of {path}");
    (status, content_type, body.to_string())
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, content_type, body) = get(addr, path);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{path}: {body}"
    );
    serde_json::from_str(&body).unwrap()
}

/// `/metrics` as `name{labels}` → value, after checking the exposition's structure: every sample
/// belongs to the family whose `# HELP` and `# TYPE` precede it.
fn metrics(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let mut samples = BTreeMap::new();
    let mut family = String::new();
    let mut typed = false;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            family = rest.split(' ').next().unwrap().to_string();
            assert!(family.starts_with("flumen_"), "{line}");
            typed = false;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name, family);
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed = true;
        } else {
            assert!(
                typed && line.starts_with(&family),
                "{line} outside {family}"
            );
            let (series, value) = line.rsplit_once(' ').unwrap();
            samples.insert(series.to_string(), value.parse().unwrap());
        }
    }
    samples
}

/// Polls `check` (a condition on progress or on the server) until it holds.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn numbers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn numbers(schema: &SchemaRef, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(Int64Array::from((0..n).collect::<Vec<_>>()))],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_endpoints_report_running_stopped_and_failed_queries() {
    let kafka = EmbeddedKafka::with_topics(&[("clicks", 2)]).unwrap();
    let servers = kafka.bootstrap_servers().to_string();
    let six: Vec<String> = (0..6).map(|i| format!("click {i}")).collect();
    let records: Vec<KeyValue<'_>> = six.iter().map(|v| (None, Some(v.as_bytes()))).collect();
    produce_to(&servers, "clicks", Some(0), &records, &[]);

    let session = StreamSession::new();
    let server = MonitorServer::builder().port(0).start(&session).unwrap();
    let addr = server.addr();

    // One rate-limited batch of 2 of the 6 records, then nothing for an hour: 4 behind on
    // partition 0, none on partition 1.
    let clicks = earliest_reader(&session, &servers, "clicks")
        .max_offsets_per_trigger(2)
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("clicks")
        .trigger(Trigger::ProcessingTime(Duration::from_secs(3600)))
        .start()
        .await
        .unwrap();
    let id = clicks.id().to_string();
    wait_until("the first batch", || clicks.last_progress().is_some());
    let progress_path = format!("/api/queries/{id}/progress");
    wait_until("the monitor to record the batch", || {
        get_json(addr, &progress_path).as_array().unwrap().len() == 1
    });

    let last = serde_json::to_value(clicks.last_progress().unwrap()).unwrap();
    assert_eq!(last["numInputRows"], 2);
    assert_eq!(
        last["sources"][0]["endOffset"],
        json!({"clicks": {"0": 2, "1": 0}})
    );
    assert_eq!(
        last["sources"][0]["latestOffset"],
        json!({"clicks": {"0": 6, "1": 0}}),
        "latestOffset is the broker's latest, before the rate limit"
    );
    let expected = json!({
        "id": id,
        "runId": clicks.run_id(),
        "name": "clicks",
        "status": {"message": "Waiting for next trigger", "isDataAvailable": true, "isTriggerActive": false},
        "isActive": true,
        "exception": null,
        "lastProgress": last,
    });
    assert_eq!(get_json(addr, "/api/queries"), json!([expected]));
    assert_eq!(get_json(addr, &format!("/api/queries/{id}")), expected);
    assert_eq!(get_json(addr, &progress_path), json!([last]));
    assert_eq!(
        get_json(addr, &format!("/api/queries/{}/progress", clicks.run_id())),
        json!([last])
    );
    assert_eq!(
        get_json(addr, &format!("{progress_path}?limit=0")),
        json!([])
    );
    let (status, content_type, body) = get(addr, "/api/queries/no-such-query/progress");
    assert_eq!((status, content_type.as_str()), (404, "application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "no query with id or runId 'no-such-query' in this session; GET /api/queries lists them"})
    );

    let m = metrics(addr);
    let l = format!(r#"query_name="clicks",query_id="{id}""#);
    let lag = |p: u8| {
        m[&format!(
            r#"flumen_source_offsets_behind_latest{{{l},source="KafkaV2[Subscribe[clicks]]",topic="clicks",partition="{p}"}}"#
        )]
    };
    assert_eq!((lag(0), lag(1)), (4.0, 0.0));
    for (series, value) in [
        ("flumen_queries_active".to_string(), 1.0),
        (format!("flumen_query_active{{{l}}}"), 1.0),
        (format!("flumen_query_failed{{{l}}}"), 0.0),
        (format!("flumen_query_batches_total{{{l}}}"), 1.0),
        (format!("flumen_query_input_rows_total{{{l}}}"), 2.0),
        (format!("flumen_query_output_rows_total{{{l}}}"), 2.0),
        (format!("flumen_query_last_batch_id{{{l}}}"), 0.0),
        (
            format!("flumen_query_batch_duration_seconds_count{{{l}}}"),
            1.0,
        ),
        (
            format!(r#"flumen_query_batch_duration_seconds_bucket{{{l},le="+Inf"}}"#),
            1.0,
        ),
        ("flumen_listener_events_dropped_total".to_string(), 0.0),
    ] {
        assert_eq!(m.get(&series), Some(&value), "{series}");
    }
    let processed = m[&format!("flumen_query_processed_rows_per_second{{{l}}}")];
    assert_eq!(
        processed,
        clicks
            .last_progress()
            .unwrap()
            .processed_rows_per_second
            .unwrap_or(0.0)
    );
    assert!(m.contains_key(&format!(
        r#"flumen_query_phase_duration_seconds_total{{{l},phase="addBatch"}}"#
    )));
    assert!(
        !m.keys()
            .any(|k| k.starts_with("flumen_query_watermark_seconds")),
        "no watermark without with_watermark"
    );

    // A query started after the server is seen too: three batches, then stopped.
    let schema = numbers_schema();
    let input = MemoryStream::new("numbers", Arc::clone(&schema));
    let counted = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("numbers")
        .start()
        .await
        .unwrap();
    for n in 1..=3 {
        input.add_batch(numbers(&schema, n)).unwrap();
        counted.process_all_available().await.unwrap();
    }
    counted.stop().await.unwrap();
    let l2 = format!(r#"query_name="numbers",query_id="{}""#, counted.id());
    let batches = format!("flumen_query_batches_total{{{l2}}}");
    wait_until("the monitor to record three batches", || {
        metrics(addr).get(&batches) == Some(&3.0)
    });
    let m = metrics(addr);
    assert_eq!(m[&format!("flumen_query_input_rows_total{{{l2}}}")], 6.0);
    assert_eq!(m[&format!("flumen_query_active{{{l2}}}")], 0.0);
    assert_eq!(m["flumen_queries_active"], 1.0);
    assert!(
        !m.keys()
            .any(|k| k.starts_with("flumen_source_offsets_behind_latest") && k.contains(&l2)),
        "a MemoryStream has no Kafka partitions"
    );
    let listed = get_json(addr, "/api/queries");
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["name"], "numbers");
    assert_eq!(listed[1]["isActive"], false);
    assert_eq!(listed[1]["status"]["message"], "Stopped");
    let history = get_json(addr, &format!("/api/queries/{}/progress", counted.id()));
    let rows: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["numInputRows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [1, 2, 3]);

    // A failed query carries its error.
    let checkpoint = temp_dir();
    let failing = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .query_name("failing")
        .checkpoint_location(checkpoint.path().join("cp"))
        .foreach_batch(|_, _| async { Err(FlumenError::IllegalState("disk full".into())) })
        .start()
        .await
        .unwrap();
    assert!(failing.await_termination(None).await.is_err());
    let failed = get_json(addr, &format!("/api/queries/{}", failing.id()));
    assert_eq!(failed["isActive"], false);
    assert_eq!(
        failed["exception"],
        "sink ForeachBatchSink: batch 0 failed in user code: disk full"
    );
    let l3 = format!(r#"query_name="failing",query_id="{}""#, failing.id());
    assert_eq!(metrics(addr)[&format!("flumen_query_failed{{{l3}}}")], 1.0);

    clicks.stop().await.unwrap();
    let m = metrics(addr);
    assert_eq!(m[&format!("flumen_query_active{{{l}}}")], 0.0);
    assert_eq!(m["flumen_queries_active"], 0.0);
}

/// A Chromium (or Chrome) binary: `$FLUMEN_CHROMIUM`, else the first on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLUMEN_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            [
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ]
            .map(|name| dir.join(name))
        })
        .find(|candidate| candidate.is_file())
}

/// Where test artifacts go: `<target dir>/test-artifacts`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/<profile>/deps/<test binary>
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium with `args` on `url`; returns its standard output.
fn run_chromium(binary: &PathBuf, args: &[String], url: &str) -> String {
    let profile = temp_dir();
    let mut child = std::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `data-value` of the input-rate cell in the summary row of `name`.
fn input_rate_in_dom(dom: &str, name: &str) -> Option<f64> {
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(&format!("data-query-name=\"{name}\"")))?;
    let cell = row.split("input-rate\" data-value=\"").nth(1)?;
    cell.split('"').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_page_in_headless_chromium_shows_the_query_and_its_input_rate() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("FLUMEN_REQUIRE_CHROMIUM").is_none(),
            "FLUMEN_REQUIRE_CHROMIUM is set but no chromium is on PATH (apt-get install chromium, or set FLUMEN_CHROMIUM)"
        );
        eprintln!(
            "\n*** SKIPPED monitoring_page_in_headless_chromium: no chromium on PATH \
             (apt-get install chromium, or set FLUMEN_CHROMIUM) ***\n"
        );
        return;
    };
    let kafka = EmbeddedKafka::with_topics(&[("page-views", 1)]).unwrap();
    let servers = kafka.bootstrap_servers().to_string();
    let session = StreamSession::new();
    let server = MonitorServer::builder().port(0).start(&session).unwrap();
    let query = earliest_reader(&session, &servers, "page-views")
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS page"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("page_views")
        .start()
        .await
        .unwrap();

    // Keep data flowing while the browser looks, so the latest input rate is not an idle zero.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = Arc::clone(&stop);
        let servers = servers.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let pages: Vec<String> = (0..5).map(|k| format!("/page/{}", i * 5 + k)).collect();
                let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
                produce_values(&servers, "page-views", &pages);
                i += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let batches_with_data = || {
        query
            .recent_progress()
            .iter()
            .filter(|p| p.num_input_rows > 0)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while batches_with_data() < 3 {
        assert!(Instant::now() < deadline, "no three batches within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = server.url();
    let screenshot = artifacts_dir().join("monitor-page.png");
    let (dom, shot) = tokio::task::spawn_blocking({
        let screenshot = screenshot.clone();
        move || {
            let budget = "--virtual-time-budget=3000".to_string();
            let dom = run_chromium(&chromium, &[budget.clone(), "--dump-dom".into()], &url);
            std::fs::remove_file(&screenshot).ok();
            run_chromium(
                &chromium,
                &[
                    budget,
                    format!("--screenshot={}", screenshot.display()),
                    "--window-size=1280,900".into(),
                ],
                &url,
            );
            (dom, std::fs::read(&screenshot).unwrap_or_default())
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    query.stop().await.unwrap();

    let rate = input_rate_in_dom(&dom, "page_views");
    assert!(
        rate.is_some_and(|r| r > 0.0),
        "the page shows no non-zero input rate for page_views ({rate:?}); DOM:\n{dom}"
    );
    assert!(dom.contains(r#"<b class="qname">page_views</b>"#), "{dom}");
    assert!(
        dom.contains("live · updated"),
        "the page reached the API: {dom}"
    );
    let rates_chart = dom
        .split(r#"aria-label="Input rate vs processing rate (rows/s)""#)
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .unwrap_or_default();
    assert!(
        rates_chart.contains("<path d=\"M"),
        "the rates chart has lines: {rates_chart}"
    );
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "no screenshot at {}",
        screenshot.display()
    );
    println!(
        "monitoring page screenshot: {} (input rate shown: {:.1} rows/s)",
        screenshot.display(),
        rate.unwrap_or_default()
    );
}

/// Every file under `dir`, read as text (lossy).
fn files_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            text.push_str(&files_text(&path));
        } else {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_option_values_never_appear_in_what_flumen_shows_or_stores() {
    const SECRETS: [(&str, &str); 3] = [
        ("kafka.sasl.password", "pw-1a2b3c"),
        ("tokenSecret", "pw-7g8h9i"),
        ("clientPassword", "pw-0j1k2l"),
    ];
    let logs = captured_logs();
    let kafka = EmbeddedKafka::with_topics(&[("secrets-in", 1), ("secrets-out", 1)]).unwrap();
    let servers = kafka.bootstrap_servers();
    produce_values(servers, "secrets-in", &["a", "b"]);
    let session = StreamSession::new();
    let server = MonitorServer::builder().port(0).start(&session).unwrap();
    let checkpoint = temp_dir();

    // kafka.debug=conf: librdkafka logs every client's configuration.
    let reader = earliest_reader(&session, servers, "secrets-in")
        .options(SECRETS)
        .option("kafka.debug", "conf");
    let mut shown = vec![format!("{reader:?}")];
    let writer = reader
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS value"])
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(servers)
        .topic("secrets-out")
        .query_name("with_secrets")
        .checkpoint_location(checkpoint.path())
        .options(SECRETS)
        .option("kafka.debug", "conf");
    shown.push(format!("{writer:?}"));
    let query = writer.start().await.unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(query.last_progress().unwrap().num_input_rows, 2);

    shown.push(query.explain());
    shown.push(format!("{query:?}"));
    shown.push(serde_json::to_string(&query.recent_progress()).unwrap());
    shown.push(serde_json::to_string(&query.status()).unwrap());
    for path in [
        "/".to_string(),
        "/api/queries".to_string(),
        format!("/api/queries/{}", query.id()),
        format!("/api/queries/{}/progress", query.id()),
        "/metrics".to_string(),
    ] {
        let (status, _, body) = get(server.addr(), &path);
        assert_eq!(status, 200, "{path}");
        shown.push(body);
    }
    query.stop().await.unwrap();
    shown.push(files_text(checkpoint.path()));

    // Errors raised with the secrets set: a bad option at load() and a failure at start().
    let bad = earliest_reader(&session, servers, "secrets-in")
        .option("startingOffsets", "soon")
        .options(SECRETS);
    shown.push(bad.load().unwrap_err().to_string());
    let no_topic = earliest_reader(&session, servers, "secrets-in")
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS value"])
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(servers)
        .checkpoint_location(temp_dir().path())
        .options(SECRETS);
    shown.push(no_topic.start().await.unwrap_err().to_string());
    // librdkafka quotes the value of a property it rejects (this build has no OpenSSL).
    let rejected = earliest_reader(&session, servers, "secrets-in")
        .load()
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(servers)
        .topic("secrets-out")
        .option("kafka.ssl.key.password", "pw-4d5e6f")
        .checkpoint_location(temp_dir().path())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        rejected.contains("ssl.key.password") && !rejected.contains("pw-4d5e6f"),
        "{rejected}"
    );
    // Everything logged meanwhile, librdkafka's configuration dump (kafka.debug=conf) included.
    let logged = logs.text();
    assert!(
        logged.contains("librdkafka") && logged.contains("sasl.password"),
        "the capture saw librdkafka's configuration dump: {logged}"
    );
    assert!(
        !logged.contains("pw-4d5e6f"),
        "ssl.key.password's value was logged: {logged}"
    );
    shown.push(logged);

    for text in &shown {
        for (key, value) in SECRETS {
            assert!(!text.contains(value), "the value of {key} shows in: {text}");
        }
    }
    assert!(shown[0].contains(flumen::options::REDACTED), "{}", shown[0]);
}
