//! The HTTP API of SPEC.md: answers, headers, and rejected requests that
//! change nothing.

use crate::common;

use std::time::Duration;

use common::Rig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walship::faults::Fault;

/// Sends a raw request line (no client-side path normalisation) and returns
/// the status code and body.
async fn raw(base: &str, request_line: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{request_line} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn put_get_head_delete_list_roundtrip() {
    let rig = Rig::new(2, "sync", 1, 2.0).await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    let r = c
        .put(format!("{base}/v1/objects/dir/a%20b.json"))
        .body("{\"x\":1}")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["mode"], "sync");
    assert_eq!(v["acked_by"].as_array().expect("array").len(), 3);

    let r = c
        .get(format!("{base}/v1/objects/dir/a%20b.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-walship-served-by"], "p");
    assert_eq!(r.headers()["x-walship-seq"], "1");
    assert_eq!(r.text().await.expect("body"), "{\"x\":1}");
    assert_eq!(
        rig.object("r2", "dir/a b.json").await.as_deref(),
        Some(&b"{\"x\":1}"[..])
    );

    let r = c
        .head(format!("{base}/v1/objects/dir/a%20b.json"))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "7");

    c.put(format!("{base}/v1/objects/other"))
        .body("o")
        .send()
        .await
        .expect("put");
    let v: Value = c
        .get(format!("{base}/v1/objects?prefix=dir/"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(v["keys"].as_array().expect("keys").len(), 1);
    assert_eq!(v["keys"][0]["key"], "dir/a b.json");
    assert_eq!(v["keys"][0]["seq"], 1);

    let r = c
        .delete(format!("{base}/v1/objects/dir/a%20b.json"))
        .send()
        .await
        .expect("delete");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["seq"], 3);
    assert_eq!(rig.object("r1", "dir/a b.json").await, None);
    let r = c
        .get(format!("{base}/v1/objects/dir/a%20b.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let v: Value = c
        .get(format!("{base}/v1/objects?prefix=dir/"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["keys"].as_array().expect("keys").len(),
        0,
        "deleted keys are not listed"
    );

    let v: Value = c
        .get(format!("{base}/v1/cursors"))
        .send()
        .await
        .expect("cursors")
        .json()
        .await
        .expect("json");
    assert_eq!(v["head"], 3);
    let row = &v["targets"][0];
    for field in [
        "name",
        "role",
        "region",
        "health",
        "state",
        "cursor",
        "lag_entries",
        "lag_bytes",
        "lag_ms",
    ] {
        assert!(row.get(field).is_some(), "cursors row lacks {field}: {row}");
    }
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    rig.fault("p").set(Fault::Fail);
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        503
    );
}

#[tokio::test]
async fn rejected_requests_answer_4xx_json_and_change_nothing() {
    let rig = Rig::with_top(1, "async", 1, 1.0, "max_object_bytes = 16").await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    c.put(format!("{base}/v1/objects/ok"))
        .body("fine")
        .send()
        .await
        .expect("put");
    let head = rig.rep.log().head();
    assert_eq!(head, 1);

    let bad_keys = [
        ("PUT /v1/objects/a/../b", "'..' segment"),
        ("PUT /v1/objects/a/%2e%2e/b", "'..' segment"),
        ("PUT /v1/objects//abs", "start with '/'"),
        ("PUT /v1/objects/a%0Ab", "control"),
        ("PUT /v1/objects/a//b", "empty segment"),
        ("PUT /v1/objects/.walship/x", "reserved"),
        ("DELETE /v1/objects/a/./b", "'.' segment"),
        ("PUT /v1/objects/%FF", "bad key"),
    ];
    for (line, why) in bad_keys {
        let (status, body) = raw(&base, line).await;
        assert_eq!(status, 400, "{line}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{line}: not JSON ({e}): {body}"));
        assert!(
            v["error"].as_str().expect("error").contains(why),
            "{line}: {body}"
        );
    }
    let long = "k".repeat(1025);
    let r = c
        .put(format!("{base}/v1/objects/{long}"))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);

    let r = c
        .put(format!("{base}/v1/objects/big"))
        .body(vec![0u8; 17])
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("max_object_bytes"),
        "{v}"
    );
    // Chunked, without a content-length, is caught too.
    let stream = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(vec![1u8; 10]),
        Ok(vec![1u8; 10]),
    ]);
    let r = c
        .put(format!("{base}/v1/objects/big2"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 413);

    for (url, why) in [
        ("/v1/objects/k?mode=fast", "unknown mode"),
        ("/v1/objects/k?mdoe=sync", "malformed query"),
    ] {
        let r = c
            .put(format!("{base}{url}"))
            .body("x")
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["error"].as_str().expect("error").contains(why),
            "{url}: {v}"
        );
    }
    let r = c
        .get(format!("{base}/v1/objects/ok?read_preference=closest"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{base}/v1/objects?limit=zero"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{base}/v1/nothing"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);

    assert_eq!(
        rig.rep.log().head(),
        head,
        "no rejected request reached the log"
    );
    assert_eq!(rig.object("p", "big").await, None);
}

#[tokio::test]
async fn a_missed_quorum_answers_504_with_seq_and_acks() {
    let rig = Rig::new(2, "sync", 1, 0.3).await;
    let base = rig.serve_http(None).await;
    rig.fault("r2").set(Fault::Hang);
    let r = reqwest::Client::new()
        .put(format!("{base}/v1/objects/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["acked"], 2);
    assert_eq!(v["required"], 3);
    let mut acked: Vec<&str> = v["acked_by"]
        .as_array()
        .expect("acks")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    acked.sort();
    assert_eq!(acked, vec!["p", "r1"]);
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("durable locally at seq 1")
    );
    // The same write with ?mode=async is acknowledged.
    let r = reqwest::Client::new()
        .put(format!("{base}/v1/objects/k?mode=async"))
        .body("w")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    rig.fault("r2").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r2", "k").await.as_deref(), Some(&b"w"[..]));
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let rig = Rig::new(1, "async", 1, 1.0).await;
    let base = rig.serve_http(Some("s3cret")).await;
    let c = reqwest::Client::new();
    let r = c
        .put(format!("{base}/v1/objects/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 401);
    let r = c
        .put(format!("{base}/v1/objects/k"))
        .bearer_auth("wrong")
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 401);
    assert_eq!(rig.rep.log().head(), 0);
    let r = c
        .put(format!("{base}/v1/objects/k"))
        .bearer_auth("s3cret")
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    // Probes need no token (Kubernetes sends none); metrics do.
    for probe in ["healthz", "readyz"] {
        let r = c
            .get(format!("{base}/{probe}"))
            .send()
            .await
            .expect("probe");
        assert_eq!(r.status(), 200, "{probe}");
    }
    let r = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 401);
}

/// `/metrics` is Prometheus text 0.0.4 unless the scraper asks for
/// OpenMetrics; in 0.0.4 a counter's TYPE line names its `_total` samples.
#[tokio::test]
async fn metrics_answer_in_the_format_the_scraper_asks_for() {
    let rig = Rig::new(1, "async", 1, 1.0).await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    c.put(format!("{base}/v1/objects/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    for accept in [None, Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")] {
        let mut r = c.get(format!("{base}/metrics"));
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        let r = r.send().await.expect("metrics");
        let ct = r.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {ct}"
        );
        let text = r.text().await.expect("body");
        assert!(
            text.contains("# TYPE walship_writes_total counter\nwalship_writes_total 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
    let r = c
        .get(format!("{base}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .expect("metrics");
    let ct = r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.expect("body");
    assert!(
        text.contains("# TYPE walship_writes counter") && text.ends_with("# EOF\n"),
        "{text}"
    );
}

#[tokio::test]
async fn status_metrics_and_target_actions() {
    let rig = Rig::new(2, "async", 1, 1.0).await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    c.put(format!("{base}/v1/objects/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    rig.wait_caught_up(Duration::from_secs(5)).await;

    let r = c
        .post(format!("{base}/v1/targets/r2/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["state"], "paused");
    for (url, status) in [
        ("/v1/targets/nope/pause", 404),
        ("/v1/targets/p/pause", 409),
        ("/v1/targets/r1/explode", 404),
    ] {
        let r = c.post(format!("{base}{url}")).send().await.expect("post");
        assert_eq!(r.status(), status, "{url}");
        let v: Value = r.json().await.expect("json error");
        assert!(v["error"].is_string(), "{url}: {v}");
    }

    let v: Value = c
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(v["mode"], "async");
    assert_eq!(v["head"], 1);
    assert_eq!(v["failover"]["acting_primary"], "p");
    assert_eq!(v["targets"][2]["state"], "paused");
    for field in [
        "writes_to_primary",
        "writes_replicated",
        "writes_failed",
        "conflicts_detected",
        "conflicts_resolved",
        "failovers",
        "current_lag_ms",
        "success_rate",
        "average_replication_time_ms",
    ] {
        assert!(
            v["metrics"].get(field).is_some(),
            "metrics lacks {field}: {v}"
        );
    }
    assert_eq!(v["metrics"]["writes_to_primary"], 1);

    let r = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    for series in [
        "walship_writes_total",
        "walship_replication_success_total",
        "walship_replication_failure_total",
        "walship_replication_seconds_bucket",
        "walship_conflicts_detected_total",
        "walship_conflicts_resolved_total",
        "walship_failovers_total",
        "walship_head_seq",
        "walship_cursor_seq",
        "walship_lag_entries",
        "walship_lag_bytes",
        "walship_lag_seconds",
        "walship_target_health",
        "walship_log_retained_bytes",
        "walship_quorum_timeouts_total",
    ] {
        assert!(text.contains(series), "/metrics lacks {series}");
    }

    let r = c
        .post(format!("{base}/v1/targets/r2/resume"))
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/v1/objects/k?read_preference=secondary"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["x-walship-served-by"], "p");
    let r = c
        .head(format!("{base}/v1/objects/k?read_preference=any"))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-walship-seq"], "1");
}

/// `GET /v1/objects` pages in key order with `after` and `next_after`,
/// skipping deleted keys, until every live key has been seen once.
#[tokio::test]
async fn listing_pages_through_every_live_key_in_order() {
    let rig = Rig::new(1, "async", 1, 2.0).await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    let mut live = Vec::new();
    for i in 0..40 {
        let k = format!("p/{i:03}");
        c.put(format!("{base}/v1/objects/{k}"))
            .body("v")
            .send()
            .await
            .expect("put");
        if i % 3 == 0 {
            c.delete(format!("{base}/v1/objects/{k}"))
                .send()
                .await
                .expect("delete");
        } else {
            live.push(k);
        }
    }
    c.put(format!("{base}/v1/objects/q/outside"))
        .body("v")
        .send()
        .await
        .expect("put");
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let v: Value = c
            .get(format!("{base}/v1/objects"))
            .query(&[("prefix", "p/"), ("after", after.as_str()), ("limit", "7")])
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        pages += 1;
        let keys = v["keys"].as_array().expect("keys");
        assert!(keys.len() <= 7, "{v}");
        seen.extend(
            keys.iter()
                .map(|k| k["key"].as_str().expect("key").to_string()),
        );
        match v["next_after"].as_str() {
            Some(n) => {
                assert_eq!(v["truncated"], true);
                assert_eq!(Some(n), seen.last().map(String::as_str));
                after = n.to_string();
            }
            None => {
                assert_eq!(v["truncated"], false, "{v}");
                break;
            }
        }
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(seen, live, "every live key once, in order, no deleted one");
    assert_eq!(pages, live.len().div_ceil(7));
}

/// `walship_target_requests_total{target,op}` counts every request a
/// target's store got: its puts equal what the store itself saw.
#[tokio::test]
async fn target_requests_are_counted_as_the_store_sees_them() {
    let rig = Rig::new(1, "sync", 1, 2.0).await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    for i in 0..7 {
        c.put(format!("{base}/v1/objects/k{i}"))
            .body("v")
            .send()
            .await
            .expect("put");
    }
    c.delete(format!("{base}/v1/objects/k0"))
        .send()
        .await
        .expect("delete");
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let value = |target: &str, op: &str| -> u64 {
        let want = format!("walship_target_requests_total{{target=\"{target}\",op=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .unwrap_or_else(|| panic!("no {want} in:\n{text}"))
            .trim()
            .parse()
            .expect("number")
    };
    assert_eq!(value("r1", "put"), rig.fault("r1").puts(), "{text}");
    assert!(value("r1", "put") >= 7);
    assert!(value("p", "put") >= 7);
    assert!(
        value("r1", "delete") >= 1 || value("r1", "head") >= 1,
        "{text}"
    );
}

/// SPEC "S3 API": the HTTP API keeps the Content-Type a PUT sent and gives
/// it back on GET and HEAD, with the MD5 ETag of the bytes.
#[tokio::test]
async fn a_put_keeps_its_content_type_and_get_gives_it_back_with_the_md5_etag() {
    let rig = Rig::new(1, "sync", 1, 2.0).await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    let r = c
        .put(format!("{base}/v1/objects/typed/report.csv"))
        .header("content-type", "text/csv; charset=utf-8")
        .body("a,b\n")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    for head in [false, true] {
        let req = if head {
            c.head(format!("{base}/v1/objects/typed/report.csv"))
        } else {
            c.get(format!("{base}/v1/objects/typed/report.csv"))
        };
        let r = req.send().await.expect("read");
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(
            h.get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/csv; charset=utf-8"),
            "head={head}"
        );
        assert_eq!(
            h.get("etag").and_then(|v| v.to_str().ok()),
            Some(format!("\"{}\"", walship::object::md5_hex(b"a,b\n")).as_str()),
            "head={head}"
        );
    }
    // Without a Content-Type, the default one comes back.
    c.put(format!("{base}/v1/objects/typed/plain"))
        .body("x")
        .send()
        .await
        .expect("put");
    let r = c
        .get(format!("{base}/v1/objects/typed/plain"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
}
