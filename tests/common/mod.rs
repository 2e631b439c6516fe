//! Shared test helpers: configs over in-memory stores wrapped in fault
//! injectors, and a running replicator to drive.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use walship::faults::{Faults, FaultyStore};
use walship::key::Key;
use walship::{Config, Replicator};

/// A replicator over in-memory stores with a fault control per target.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    pub rep: Arc<Replicator>,
    pub stores: HashMap<String, Arc<InMemory>>,
    pub faults: HashMap<String, Faults>,
}

/// Config text: a primary `p` and replicas `r1..=rN`, in-memory.
pub fn config_text(
    data_dir: &std::path::Path,
    replicas: usize,
    mode: &str,
    min_sync: usize,
    timeout_s: f64,
) -> String {
    let mut t = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 1\n[replication]\nmode = \"{mode}\"\nmin_sync_replicas = {min_sync}\n\
         [primary]\nname = \"p\"\nurl = \"memory://\"\nsync_timeout_seconds = {timeout_s}\nretry_delay_seconds = 0.02\n",
        data_dir.display().to_string()
    );
    for i in 1..=replicas {
        t.push_str(&format!(
            "[[targets]]\nname = \"r{i}\"\nurl = \"memory://\"\nsync_timeout_seconds = {timeout_s}\nretry_delay_seconds = 0.02\nmax_retry_attempts = 2\n"
        ));
    }
    t
}

impl Rig {
    pub async fn new(replicas: usize, mode: &str, min_sync: usize, timeout_s: f64) -> Rig {
        Rig::with_top(replicas, mode, min_sync, timeout_s, "").await
    }

    /// Like `new`, with extra top-level config lines (e.g. `max_object_bytes = 10`).
    pub async fn with_top(
        replicas: usize,
        mode: &str,
        min_sync: usize,
        timeout_s: f64,
        top: &str,
    ) -> Rig {
        Rig::with(replicas, mode, min_sync, timeout_s, top, "").await
    }

    /// Like `new`, with extra top-level lines and extra `[replication]` lines.
    pub async fn with(
        replicas: usize,
        mode: &str,
        min_sync: usize,
        timeout_s: f64,
        top: &str,
        replication: &str,
    ) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "{top}\n{}",
            config_text(dir.path(), replicas, mode, min_sync, timeout_s)
        )
        .replacen(
            "[replication]\n",
            &format!("[replication]\n{replication}\n"),
            1,
        );
        let cfg = Config::from_toml(&text).expect("config");
        Rig::open(dir, cfg, HashMap::new()).await
    }

    /// Serves the HTTP API on a free loopback port; returns its base URL.
    pub async fn serve_http(&self, token: Option<&str>) -> String {
        let app = walship::server::router(self.rep.clone(), token.map(str::to_string));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Opens (or reopens) with the given inner stores (fresh ones for names
    /// not given).
    pub async fn open(
        dir: tempfile::TempDir,
        cfg: Config,
        mut inner: HashMap<String, Arc<InMemory>>,
    ) -> Rig {
        let mut stores = HashMap::new();
        let mut faults = HashMap::new();
        let mut wrapped: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
        for (_, t) in cfg.all_targets() {
            let mem = inner
                .remove(&t.name)
                .unwrap_or_else(|| Arc::new(InMemory::new()));
            let (store, f) = FaultyStore::wrap(mem.clone());
            wrapped.insert(t.name.clone(), store);
            stores.insert(t.name.clone(), mem);
            faults.insert(t.name.clone(), f);
        }
        let rep = Replicator::open_with_stores(cfg.clone(), wrapped)
            .await
            .expect("open replicator");
        Rig {
            dir,
            cfg,
            rep,
            stores,
            faults,
        }
    }

    /// Shuts down and reopens on the same data dir and stores.
    pub async fn restart(self) -> Rig {
        let (dir, cfg, stores) = self.stop().await;
        Rig::open(dir, cfg, stores).await
    }

    /// Shuts down and lets go of the log (so another process may open the
    /// data dir); returns what `Rig::open` needs to start again.
    pub async fn stop(self) -> (tempfile::TempDir, Config, HashMap<String, Arc<InMemory>>) {
        self.rep
            .shutdown(Duration::from_millis(200))
            .await
            .expect("shutdown");
        let Rig {
            dir,
            cfg,
            rep,
            stores,
            ..
        } = self;
        drop(rep);
        (dir, cfg, stores)
    }

    /// Stops, changes the stored bytes of entry `seq` in the sled database
    /// (as a bad disk would), and reopens.
    pub async fn corrupt_entry(self, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) -> Rig {
        self.edit_db(|db| {
            let log = db.open_tree("log").expect("tree");
            // The frame holding `seq` starts at or before it.
            let (k, frame) = log
                .range(..=seq.to_be_bytes())
                .next_back()
                .expect("a frame")
                .expect("read");
            let first = u64::from_be_bytes(k.as_ref().try_into().expect("seq key"));
            let mut records: Vec<Vec<u8>> = walship::frame::records(&frame)
                .map(|r| r.expect("record").to_vec())
                .collect();
            edit(&mut records[(seq - first) as usize]);
            let frame = walship::frame::frame_of(records.iter().map(|r| r.as_slice()));
            log.insert(k, frame).expect("insert");
        })
        .await
    }

    /// Stops, changes the sled database behind walship's back (as a bad
    /// disk would), and reopens.
    pub async fn edit_db(self, edit: impl FnOnce(&sled::Db)) -> Rig {
        self.rep.shutdown(Duration::ZERO).await.expect("shutdown");
        let Rig {
            dir,
            cfg,
            rep,
            stores,
            ..
        } = self;
        drop(rep);
        {
            // sled lets go of its file lock from a background thread a
            // moment after the last handle: wait for it (a busy machine).
            let mut tries = 0;
            let db = loop {
                match sled::open(dir.path().join("log")) {
                    Ok(db) => break db,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("sled: {e}"),
                }
            };
            edit(&db);
            db.flush().expect("flush");
        }
        Rig::open(dir, cfg, stores).await
    }

    pub fn fault(&self, target: &str) -> &Faults {
        &self.faults[target]
    }

    pub async fn object(&self, target: &str, key: &str) -> Option<Bytes> {
        let store = &self.stores[target];
        match store
            .get(&Key::parse(key).expect("key").object_path())
            .await
        {
            Ok(r) => Some(r.bytes().await.expect("bytes")),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key} from {target}: {e}"),
        }
    }

    pub fn cursor(&self, target: &str) -> u64 {
        let report = self.rep.cursors().expect("cursors");
        report
            .targets
            .iter()
            .find(|t| t.name == target)
            .expect("target")
            .cursor
    }

    /// Waits (at most 10 s) until `f` holds for the cursors report.
    /// Waits (at most 10 s) until walship has written its marker to
    /// `target`: the one write to it that is not an entry. A test that
    /// counts a target's failed writes starts its fault after this.
    pub async fn wait_marked(&self, target: &str) {
        let marker = object_store::path::Path::from(".walship/target.json");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.stores[target].head(&marker).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "walship did not mark {target} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_until(&self, f: impl Fn(&walship::status::CursorsReport) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.rep.cursors().expect("cursors");
            if f(&r) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("condition not reached within 10 s: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until every target is `active` again.
    pub async fn wait_all_active(&self) {
        self.wait_until(|r| {
            r.targets
                .iter()
                .all(|t| t.state == walship::status::TargetState::Active)
        })
        .await;
    }

    /// Writes `k0 .. k{n-1}` (values `v0 ..`) and waits until every target
    /// holds them.
    pub async fn put_keys(&self, n: usize) {
        for i in 0..n {
            self.rep
                .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
                .await
                .expect("put");
        }
        self.wait_caught_up(Duration::from_secs(10)).await;
    }

    /// Waits (bounded) until every target's cursor reaches the head.
    pub async fn wait_caught_up(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = self.rep.cursors().expect("cursors");
            if r.targets.iter().all(|t| t.cursor == r.head) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("targets did not catch up within {within:?}: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn key(k: &str) -> Key {
    Key::parse(k).expect("valid key")
}
