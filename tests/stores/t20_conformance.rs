//! One target conformance suite, run against every kind of store walship
//! ships to: memory, a local directory, S3 (moto) and Azure (azurite).
//! Stores are built the way the sidecar builds them (URL + options).

use crate::emulators;

use std::sync::Arc;

use bytes::Bytes;
use emulators::{Emulator, Kind};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use walship::config::TargetConfig;
use walship::key::Key;

fn target(url: &str, options: std::collections::BTreeMap<String, String>) -> TargetConfig {
    let mut cfg = walship::Config::from_toml(&format!(
        "[primary]\nname = \"p\"\nurl = \"memory://\"\n[[targets]]\nname = \"t\"\nurl = {url:?}\nsync_timeout_seconds = 10\n"
    ))
    .expect("config");
    let mut t = cfg.targets.remove(0);
    t.options = options;
    t
}

fn path(k: &str) -> Path {
    Key::parse(k).expect("key").object_path()
}

async fn get(store: &dyn ObjectStore, k: &str) -> Option<Bytes> {
    match store.get(&path(k)).await {
        Ok(r) => Some(r.bytes().await.expect("bytes")),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("get {k}: {e}"),
    }
}

/// What every target must do for walship.
async fn conformance(store: Arc<dyn ObjectStore>, conditional_update: bool) {
    let s = store.as_ref();
    // put, get, head, overwrite
    s.put(&path("a/one"), "1".into()).await.expect("put");
    assert_eq!(get(s, "a/one").await.as_deref(), Some(&b"1"[..]));
    assert_eq!(s.head(&path("a/one")).await.expect("head").size, 1);
    s.put(&path("a/one"), "uno".into())
        .await
        .expect("overwrite");
    assert_eq!(get(s, "a/one").await.as_deref(), Some(&b"uno"[..]));
    // keys with spaces and unicode round-trip
    for k in ["with space/file name.txt", "ünïcødé/κλειδί/数据", "a+b=c&d"] {
        s.put(&path(k), Bytes::from(k.to_string()).into())
            .await
            .expect("put odd key");
        assert_eq!(get(s, k).await, Some(Bytes::from(k.to_string())), "{k}");
    }
    // delete, and a missing key answers NotFound
    s.delete(&path("a/one")).await.expect("delete");
    assert_eq!(get(s, "a/one").await, None);
    assert!(matches!(
        s.head(&path("a/one")).await,
        Err(object_store::Error::NotFound { .. })
    ));
    // list under a prefix
    for i in 0..5 {
        s.put(&path(&format!("list/{i}")), "x".into())
            .await
            .expect("put");
    }
    let mut listed: Vec<String> = s
        .list(Some(&path("list")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    listed.sort();
    assert_eq!(
        listed,
        (0..5).map(|i| format!("list/{i}")).collect::<Vec<_>>()
    );
    // a large object (over one default multipart part)
    let big = Bytes::from(
        (0..6 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    s.put(&path("big/object"), big.clone().into())
        .await
        .expect("put big");
    assert_eq!(get(s, "big/object").await, Some(big));
    // conditional create: the second one finds the object there
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    s.put_opts(&path("cond/c"), "first".into(), create.clone())
        .await
        .expect("create");
    let again = s.put_opts(&path("cond/c"), "second".into(), create).await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(get(s, "cond/c").await.as_deref(), Some(&b"first"[..]));
    // conditional update with the e-tag last written, and with a stale one
    if conditional_update {
        let r = s.put(&path("cond/u"), "v1".into()).await.expect("put");
        let v1 = UpdateVersion {
            e_tag: r.e_tag.clone(),
            version: r.version.clone(),
        };
        let r2 = s
            .put_opts(
                &path("cond/u"),
                "v2".into(),
                PutOptions {
                    mode: PutMode::Update(v1.clone()),
                    ..Default::default()
                },
            )
            .await
            .expect("update with the current e-tag");
        assert_ne!(r2.e_tag, r.e_tag);
        let stale = s
            .put_opts(
                &path("cond/u"),
                "v3".into(),
                PutOptions {
                    mode: PutMode::Update(v1),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "{stale:?}"
        );
        assert_eq!(get(s, "cond/u").await.as_deref(), Some(&b"v2"[..]));
    }
}

#[tokio::test]
async fn memory() {
    let store =
        walship::target::build_store(&target("memory://", Default::default())).expect("store");
    conformance(store, true).await;
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = walship::config::file_url(&dir.path().join("t"));
    let store = walship::target::build_store(&target(&url, Default::default())).expect("store");
    // LocalFileSystem supports PutMode::Create but not Update.
    conformance(store, false).await;
}

#[tokio::test]
async fn s3_on_moto() {
    let Some(moto) = Emulator::start(Kind::Moto).await else {
        return;
    };
    moto.create_bucket("conformance").await;
    let store =
        walship::target::build_store(&target(&moto.url("conformance", "pre/fix"), moto.options()))
            .expect("store");
    conformance(store, true).await;
}

#[tokio::test]
async fn azure_on_azurite() {
    let Some(az) = Emulator::start(Kind::Azurite).await else {
        return;
    };
    az.create_bucket("conformance").await;
    let store = walship::target::build_store(&target(&az.url("conformance", "pre"), az.options()))
        .expect("store");
    conformance(store, true).await;
}
