//! Real object-store servers on 127.0.0.1 for the tests: moto (S3) and
//! azurite (Azure Blob), one instance per test on a free port, so a test
//! can stop (SIGSTOP), continue, kill and restart its own.
//!
//! The binaries come from `WALSHIP_MOTO_SERVER` / `WALSHIP_AZURITE_BLOB`
//! (set by `.ci/run`) or `moto_server` / `azurite-blob` on the PATH. When
//! one is missing the test is skipped with a printed reason, except in CI
//! (`CI=true`), where a missing emulator is a failure.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The well-known azurite development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    Azurite,
}

pub struct Emulator {
    pub kind: Kind,
    bin: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Emulator {
    /// Starts one, or returns None (skip) outside CI when it is not installed.
    pub async fn start(kind: Kind) -> Option<Emulator> {
        let (var, name) = match kind {
            Kind::Moto => ("WALSHIP_MOTO_SERVER", "moto_server"),
            Kind::Azurite => ("WALSHIP_AZURITE_BLOB", "azurite-blob"),
        };
        let bin = std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| which(name));
        let Some(bin) = bin.filter(|b| b.is_file()) else {
            let msg =
                format!("{name} not found (set {var} or put it on the PATH; .ci/run installs it)");
            super::skip::skip(&msg);
            return None;
        };
        let mut e = Emulator {
            kind,
            bin,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        e.spawn().await;
        Some(e)
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("emulator.log"))
            .expect("log");
        let mut cmd = Command::new(&self.bin);
        match self.kind {
            Kind::Moto => {
                cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()]);
            }
            Kind::Azurite => {
                let data = self.dir.path().join("data");
                cmd.args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &self.port.to_string(),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--location",
                ])
                .arg(&data);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn emulator");
        self.child = Some(child);
        let c = reqwest::Client::new();
        for _ in 0..200 {
            if c.get(self.endpoint()).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{:?} did not start on port {}", self.kind, self.port);
    }

    /// The service URL (for azurite: the account URL).
    pub fn endpoint(&self) -> String {
        match self.kind {
            Kind::Moto => format!("http://127.0.0.1:{}", self.port),
            Kind::Azurite => format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port),
        }
    }

    /// Creates a bucket (S3) or container (Azure); object_store never does.
    pub async fn create_bucket(&self, name: &str) {
        match self.kind {
            Kind::Moto => {
                let r = reqwest::Client::new()
                    .put(format!("{}/{name}", self.endpoint()))
                    .send()
                    .await
                    .expect("create bucket");
                assert!(
                    r.status().is_success(),
                    "create bucket {name}: {}",
                    r.status()
                );
            }
            Kind::Azurite => {
                let cs = format!(
                    "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
                    self.endpoint()
                );
                let python = std::env::var("WALSHIP_PYTHON").unwrap_or_else(|_| "python3".into());
                let out = Command::new(python)
                    .args([
                        "-c",
                        "import sys\nfrom azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
                        &cs,
                        name,
                    ])
                    .output()
                    .expect("python3 with azure-storage-blob (pip install azure-storage-blob)");
                assert!(
                    out.status.success(),
                    "create container {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// The target URL for a bucket and prefix.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        match self.kind {
            Kind::Moto => format!("s3://{bucket}/{prefix}"),
            Kind::Azurite => format!("az://{bucket}/{prefix}"),
        }
    }

    /// The object_store options to reach it.
    pub fn options(&self) -> BTreeMap<String, String> {
        let mut o = BTreeMap::new();
        o.insert("endpoint".into(), self.endpoint());
        o.insert("allow_http".into(), "true".into());
        match self.kind {
            Kind::Moto => {
                o.insert("region".into(), "us-east-1".into());
                o.insert("access_key_id".into(), "test".into());
                o.insert("secret_access_key".into(), "test".into());
            }
            Kind::Azurite => {
                o.insert("account_name".into(), AZURITE_ACCOUNT.into());
                o.insert("access_key".into(), AZURITE_KEY.into());
            }
        }
        o
    }

    /// The options as TOML lines for an `[...options]` table.
    pub fn options_toml(&self) -> String {
        self.options()
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect()
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    /// SIGSTOP: requests hang.
    pub fn freeze(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the process to end (azurite saves its
    /// metadata on the way out; after kill -9 it may lose what it took in
    /// its last seconds, which would test azurite, not walship).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            for _ in 0..200 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port after `kill` or `terminate`
    /// (azurite keeps its data directory; moto comes back empty).
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// kill -9 and start again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.kill();
    }
}
