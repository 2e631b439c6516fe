//! The real binary against real object-store servers on 127.0.0.1: every
//! mode end to end, and outages (SIGSTOP, kill and restart, a wiped
//! emulator) that lose nothing.

use crate::emulators;
use crate::sidecar;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emulators::{Emulator, Kind};
use object_store::{ObjectStore, ObjectStoreExt};
use sidecar::{Sidecar, bin, free_port};

struct T {
    name: &'static str,
    url: String,
    options: BTreeMap<String, String>,
}

fn config(root: &std::path::Path, port: u16, mode: &str, targets: &[T], timeout: f64) -> String {
    let mut s = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_seconds = 2\n[replication]\nmode = \"{mode}\"\nhealth_check_interval_seconds = 0.5\nenable_failover = false\n",
        root.join("data").display().to_string()
    );
    for (i, t) in targets.iter().enumerate() {
        let table = if i == 0 { "[primary]" } else { "[[targets]]" };
        let opts = if i == 0 {
            "[primary.options]"
        } else {
            "[targets.options]"
        };
        s.push_str(&format!(
            "{table}\nname = \"{}\"\nurl = {:?}\nsync_timeout_seconds = {timeout}\nretry_delay_seconds = 0.1\nmax_retry_attempts = 2\n{opts}\n",
            t.name, t.url
        ));
        for (k, v) in &t.options {
            s.push_str(&format!("{k} = {v:?}\n"));
        }
    }
    s
}

fn store(t: &T) -> Arc<dyn ObjectStore> {
    let mut cfg = walship::Config::from_toml(&format!(
        "[primary]\nname = \"p\"\nurl = \"memory://\"\n[[targets]]\nname = \"x\"\nurl = {:?}\n",
        t.url
    ))
    .expect("config");
    let mut tc = cfg.targets.remove(0);
    tc.options = t.options.clone();
    walship::target::build_store(&tc).expect("store")
}

async fn read(store: &dyn ObjectStore, key: &str) -> Option<String> {
    match store
        .get(&walship::key::Key::parse(key).expect("key").object_path())
        .await
    {
        Ok(r) => Some(String::from_utf8(r.bytes().await.expect("bytes").to_vec()).expect("utf8")),
        Err(_) => None,
    }
}

async fn put(base: &str, key: &str, value: &str, mode: &str) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{base}/v1/objects/{key}?mode={mode}"))
        .body(value.to_string())
        .send()
        .await
        .expect("request")
}

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_end_to_end_on_s3_and_azure() {
    let Some(moto) = Emulator::start(Kind::Moto).await else {
        return;
    };
    let Some(az) = Emulator::start(Kind::Azurite).await else {
        return;
    };
    moto.create_bucket("primary-bucket").await;
    moto.create_bucket("replica-bucket").await;
    az.create_bucket("replica-container").await;
    let targets = [
        T {
            name: "s3-primary",
            url: moto.url("primary-bucket", "results"),
            options: moto.options(),
        },
        T {
            name: "s3-replica",
            url: moto.url("replica-bucket", ""),
            options: moto.options(),
        },
        T {
            name: "azure",
            url: az.url("replica-container", "results"),
            options: az.options(),
        },
    ];
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, config(root.path(), port, "semi_sync", &targets, 10.0)).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let mut acked = Vec::new();
    for (i, mode) in ["sync", "semi_sync", "async"]
        .iter()
        .cycle()
        .take(30)
        .enumerate()
    {
        let key = format!("run/{i} {mode}.json");
        let value = format!("{{\"i\": {i}, \"mode\": \"{mode}\"}}");
        let r = put(&sc.base, &key.replace(' ', "%20"), &value, mode).await;
        assert_eq!(r.status(), 200, "{mode}");
        let v: serde_json::Value = r.json().await.expect("json");
        if *mode == "sync" {
            assert_eq!(v["acked_by"].as_array().expect("acks").len(), 3);
        }
        acked.push((key, value));
    }
    sc.wait_caught_up(Duration::from_secs(30)).await;
    for t in &targets {
        let s = store(t);
        for (k, v) in &acked {
            assert_eq!(
                read(s.as_ref(), k).await.as_deref(),
                Some(v.as_str()),
                "{} {k}",
                t.name
            );
        }
    }
    let (code, out) = run(root.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(sc.term().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_s3_replica_times_out_sync_writes_and_catches_up_after() {
    let Some(moto) = Emulator::start(Kind::Moto).await else {
        return;
    };
    moto.create_bucket("replica").await;
    let root = tempfile::tempdir().expect("tempdir");
    let targets = [
        T {
            name: "local",
            url: walship::config::file_url(&root.path().join("primary")),
            options: BTreeMap::new(),
        },
        T {
            name: "s3",
            url: moto.url("replica", ""),
            options: moto.options(),
        },
    ];
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    let timeout = 2.0;
    std::fs::write(&cfg, config(root.path(), port, "sync", &targets, timeout)).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    assert_eq!(put(&sc.base, "k/0", "v0", "sync").await.status(), 200);

    moto.freeze();
    // A hang guard, not a speed check: the write must be answered.
    let r = tokio::time::timeout(Duration::from_secs(120), put(&sc.base, "k/1", "v1", "sync"))
        .await
        .expect("a write waiting on a frozen store is answered, not left hanging");
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["seq"], 2);
    assert_eq!(v["acked_by"], serde_json::json!(["local"]));
    for i in 2..12 {
        assert_eq!(
            put(&sc.base, &format!("k/{i}"), &format!("v{i}"), "async")
                .await
                .status(),
            200
        );
    }
    let (code, out) = run(root.path(), &["cursors", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("json line")).expect("json");
    let s3 = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "s3")
        .expect("s3")
        .clone();
    assert!(s3["lag_entries"].as_u64().expect("lag") >= 10, "{s3}");

    moto.thaw();
    sc.wait_caught_up(Duration::from_secs(60)).await;
    let s = store(&targets[1]);
    for i in 0..12 {
        assert_eq!(
            read(s.as_ref(), &format!("k/{i}")).await,
            Some(format!("v{i}")),
            "k/{i}"
        );
    }
    assert!(sc.term().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_and_restarted_azure_emulator_loses_nothing() {
    let Some(mut az) = Emulator::start(Kind::Azurite).await else {
        return;
    };
    az.create_bucket("replica").await;
    let root = tempfile::tempdir().expect("tempdir");
    let targets = [
        T {
            name: "local",
            url: walship::config::file_url(&root.path().join("primary")),
            options: BTreeMap::new(),
        },
        T {
            name: "azure",
            url: az.url("replica", "data"),
            options: az.options(),
        },
    ];
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, config(root.path(), port, "async", &targets, 2.0)).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    for i in 0..10 {
        assert_eq!(
            put(&sc.base, &format!("a/{i}"), &format!("v{i}"), "async")
                .await
                .status(),
            200
        );
    }
    az.terminate();
    for i in 10..30 {
        assert_eq!(
            put(&sc.base, &format!("a/{i}"), &format!("v{i}"), "async")
                .await
                .status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    az.start_again().await;
    sc.wait_caught_up(Duration::from_secs(60)).await;
    let s = store(&targets[1]);
    for i in 0..30 {
        assert_eq!(
            read(s.as_ref(), &format!("a/{i}")).await,
            Some(format!("v{i}")),
            "a/{i}"
        );
    }
    assert!(sc.term().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_s3_replica_is_refilled_without_a_command() {
    let Some(mut moto) = Emulator::start(Kind::Moto).await else {
        return;
    };
    moto.create_bucket("replica").await;
    let root = tempfile::tempdir().expect("tempdir");
    let targets = [
        T {
            name: "local",
            url: walship::config::file_url(&root.path().join("primary")),
            options: BTreeMap::new(),
        },
        T {
            name: "s3",
            url: moto.url("replica", ""),
            options: moto.options(),
        },
    ];
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, config(root.path(), port, "sync", &targets, 5.0)).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    for i in 0..15 {
        assert_eq!(
            put(&sc.base, &format!("w/{i}"), &format!("v{i}"), "sync")
                .await
                .status(),
            200
        );
    }
    // moto keeps everything in memory: a restart wipes the replica. Its
    // marker goes with it, so walship notices (guarantee 10) and refills
    // it from the primary without a command.
    moto.restart().await;
    moto.create_bucket("replica").await;
    let s = store(&targets[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..15 {
        loop {
            if read(s.as_ref(), &format!("w/{i}")).await == Some(format!("v{i}")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "w/{i} never came back to the wiped replica"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    sc.wait_caught_up(Duration::from_secs(30)).await;
    let (code, out) = run(root.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(sc.term().success());
}

/// SPEC "S3 API": an object keeps what the client sent, on every target
/// that keeps attributes (S3, Azure), and GET answers it from the log. The
/// client here is object_store's own S3 client (SigV4, signed payload)
/// talking to walship's S3 API; the targets are read directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_attributes_reach_the_stores_that_keep_them() {
    use object_store::{Attribute, AttributeValue, Attributes, PutOptions};
    let Some(moto) = Emulator::start(Kind::Moto).await else {
        return;
    };
    let Some(az) = Emulator::start(Kind::Azurite).await else {
        return;
    };
    moto.create_bucket("attrs-primary").await;
    az.create_bucket("attrs-replica").await;
    let root = tempfile::tempdir().expect("tempdir");
    let targets = [
        T {
            name: "s3-primary",
            url: moto.url("attrs-primary", ""),
            options: moto.options(),
        },
        T {
            name: "azure",
            url: az.url("attrs-replica", "r"),
            options: az.options(),
        },
        T {
            name: "dir",
            url: walship::config::file_url(&root.path().join("dir")),
            options: BTreeMap::new(),
        },
    ];
    let port = free_port();
    let s3_port = free_port();
    std::fs::write(root.path().join("secret"), "s3cret\n").expect("secret");
    let text = format!(
        "{}[s3]\nlisten = \"127.0.0.1:{s3_port}\"\nsecret_access_key_file = \"secret\"\n[[s3.buckets]]\nname = \"results\"\n",
        config(root.path(), port, "sync", &targets, 10.0)
    );
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, text).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let client = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{s3_port}"))
        .with_allow_http(true)
        .with_bucket_name("results")
        .with_region("us-east-1")
        .with_access_key_id("walship")
        .with_secret_access_key("s3cret")
        .build()
        .expect("client");
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, AttributeValue::from("text/csv"));
    attrs.insert(Attribute::CacheControl, AttributeValue::from("max-age=60"));
    attrs.insert(
        Attribute::Metadata("owner".into()),
        AttributeValue::from("qa"),
    );
    let path = object_store::path::Path::from("runs/1.csv");
    let opts = PutOptions {
        attributes: attrs,
        ..Default::default()
    };
    client
        .put_opts(&path, "a,b\n1,2\n".into(), opts)
        .await
        .expect("put through the S3 API");
    // Read back through the S3 API: from the log.
    let got = client.get(&path).await.expect("get");
    let ct = got
        .attributes
        .get(&Attribute::ContentType)
        .map(|v| v.to_string());
    let owner = got
        .attributes
        .get(&Attribute::Metadata("owner".into()))
        .map(|v| v.to_string());
    assert_eq!(ct.as_deref(), Some("text/csv"));
    assert_eq!(owner.as_deref(), Some("qa"));
    assert_eq!(
        got.meta.e_tag.as_deref(),
        Some("\"e5ebd4c02cefbe7955977c67ada242b7\""),
        "the MD5 of the bytes"
    );
    // On the stores that keep attributes, beside walship's own.
    for t in &targets[..2] {
        let s = store(t);
        let r = s
            .get(
                &walship::key::Key::parse("results/runs/1.csv")
                    .expect("key")
                    .object_path(),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        let a = r.attributes.clone();
        assert_eq!(
            a.get(&Attribute::ContentType)
                .map(|v| v.to_string())
                .as_deref(),
            Some("text/csv"),
            "{}",
            t.name
        );
        assert_eq!(
            a.get(&Attribute::CacheControl)
                .map(|v| v.to_string())
                .as_deref(),
            Some("max-age=60"),
            "{}",
            t.name
        );
        assert_eq!(
            a.get(&Attribute::Metadata("owner".into()))
                .map(|v| v.to_string())
                .as_deref(),
            Some("qa"),
            "{}",
            t.name
        );
        assert_eq!(r.bytes().await.expect("bytes").as_ref(), b"a,b\n1,2\n");
    }
    // A local directory keeps the bytes.
    assert_eq!(
        std::fs::read(root.path().join("dir/results/runs/1.csv")).expect("file"),
        b"a,b\n1,2\n"
    );
    assert!(sc.term().success());
}

/// Guarantee 9 with attributes: a foreign version that wins
/// (last_write_wins, a newer hand edit) is adopted as a log entry with the
/// attributes its store kept, so every target converges to the bytes and
/// their Content-Type and user metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_hand_edit_keeps_its_attributes_on_every_target() {
    use object_store::{Attribute, AttributeValue, Attributes, PutOptions};
    let Some(moto) = Emulator::start(Kind::Moto).await else {
        return;
    };
    moto.create_bucket("adopt-primary").await;
    moto.create_bucket("adopt-replica").await;
    let targets = [
        T {
            name: "primary",
            url: moto.url("adopt-primary", ""),
            options: moto.options(),
        },
        T {
            name: "replica",
            url: moto.url("adopt-replica", ""),
            options: moto.options(),
        },
    ];
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, config(root.path(), port, "async", &targets, 10.0)).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    assert_eq!(
        put(&sc.base, "k/doc", "ours v1", "sync").await.status(),
        200
    );
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v1/targets/replica/pause", sc.base))
        .send()
        .await
        .expect("pause");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        put(&sc.base, "k/doc", "ours v2", "async").await.status(),
        200
    );
    // S3 keeps last-modified to the second: the edit must come a second
    // or more after the log's entry to be newer.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A hand edit of the replica, newer than the log's entry, with
    // attributes of its own.
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, AttributeValue::from("text/x-hand"));
    attrs.insert(
        Attribute::Metadata("editor".into()),
        AttributeValue::from("someone"),
    );
    let path = walship::key::Key::parse("k/doc")
        .expect("key")
        .object_path();
    store(&targets[1])
        .put_opts(
            &path,
            "their edit".into(),
            PutOptions {
                attributes: attrs,
                ..Default::default()
            },
        )
        .await
        .expect("hand edit");
    let r = c
        .post(format!("{}/v1/targets/replica/resume", sc.base))
        .send()
        .await
        .expect("resume");
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = store(&targets[0]).get(&path).await.expect("primary get");
        let ct = p
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let editor = p
            .attributes
            .get(&Attribute::Metadata("editor".into()))
            .map(|v| v.to_string());
        let bytes = p.bytes().await.expect("bytes");
        if bytes.as_ref() == b"their edit" {
            assert_eq!(
                ct.as_deref(),
                Some("text/x-hand"),
                "the adopted version's Content-Type"
            );
            assert_eq!(editor.as_deref(), Some("someone"), "its user metadata");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hand edit was not adopted onto the primary"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sc.term().success());
}
