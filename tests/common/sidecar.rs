//! Running the real `walship` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walship"))
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A config with a primary and two replicas as directories under `root`.
pub fn dir_config(root: &Path, port: u16, mode: &str) -> String {
    let url = |n: &str| walship::config::file_url(&root.join("targets").join(n));
    format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_seconds = 5\n\
         [replication]\nmode = \"{mode}\"\n\
         [primary]\nname = \"primary\"\nurl = \"{}\"\nsync_timeout_seconds = 5\n\
         [[targets]]\nname = \"replica-1\"\nurl = \"{}\"\nsync_timeout_seconds = 5\nretry_delay_seconds = 0.05\n\
         [[targets]]\nname = \"replica-2\"\nurl = \"{}\"\nsync_timeout_seconds = 5\nretry_delay_seconds = 0.05\n",
        root.join("data").display().to_string(),
        url("primary"),
        url("replica-1"),
        url("replica-2"),
    )
}

/// Polls `base/healthz` every 50 ms, at most `tries` times; whether it
/// answered 200.
pub async fn answers(base: &str, tries: u32) -> bool {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    for _ in 0..tries {
        if c.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// How long any one request of a test to a sidecar may take: a sidecar
/// that stops answering fails the test, naming what it waited for, rather
/// than hanging the run.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client whose requests give up after [`REQUEST_TIMEOUT`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// Runs `cmd` to its end, at most `within`: past that it is killed (by
/// pid) and the test fails naming the command and what it printed.
pub fn run_within(cmd: &mut Command, within: Duration) -> std::process::Output {
    use std::io::Read;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => std::process::Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not end within {within:?} (killed); it printed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

pub struct Sidecar {
    pub child: Child,
    pub base: String,
    /// Where its stderr goes; its tail is printed when a test fails.
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts `walship serve --config cfg` and waits until it answers.
    pub async fn start(cfg: &Path, port: u16) -> Sidecar {
        Sidecar::start_with_env(cfg, port, &[]).await
    }

    /// Like `start`, with extra environment variables.
    pub async fn start_with_env(cfg: &Path, port: u16, env: &[(&str, String)]) -> Sidecar {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.with_extension("log"))
            .expect("log file");
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(cfg)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn walship");
        let s = Sidecar {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: cfg.with_extension("log"),
        };
        let mut s = s;
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        for _ in 0..300 {
            // A crash point may stop it while it catches up, before it answers.
            if !env.is_empty() && s.exited() {
                return s;
            }
            if let Ok(r) = c.get(format!("{}/healthz", s.base)).send().await
                && r.status().is_success()
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(3000)..];
        panic!(
            "walship did not start; {} ends:\n{tail}",
            cfg.with_extension("log").display()
        );
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("wait");
    }

    /// Whether the process has ended by itself.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn term(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        for _ in 0..600 {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("walship did not exit within 30 s of SIGTERM");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.base))
    }

    /// Asserts that `/metrics` counts no conflict: every version met was
    /// this sidecar's own (what re-shipping, after a crash or a reopen of
    /// the log, must find).
    pub async fn assert_no_conflicts(&self) {
        let text = self.get_text("/metrics").await;
        let detected: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("walship_conflicts_detected"))
            .collect();
        assert_eq!(
            detected,
            ["walship_conflicts_detected_total 0"],
            "conflicts counted where every version was this sidecar's own (its records of them lost?)"
        );
    }

    /// The body of `GET path` (say `/metrics`) on this sidecar.
    pub async fn get_text(&self, path: &str) -> String {
        client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}, its body: {e}"))
    }

    /// The JSON body of `GET path` on this sidecar.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let text = self.get_text(path).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// `GET /v1/cursors`.
    pub async fn cursors(&self) -> serde_json::Value {
        self.get_json("/v1/cursors").await
    }

    /// The cursor of target `name`.
    pub async fn cursor_of(&self, name: &str) -> u64 {
        let v = self.cursors().await;
        v["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["cursor"].as_u64())
            .unwrap_or_else(|| panic!("no cursor for {name}: {v}"))
    }

    /// `name`'s cursor once it has stopped moving: read every 100 ms until
    /// two readings agree (at most 10 s, then the last reading).
    pub async fn settled_cursor(&self, name: &str) -> u64 {
        let mut last = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let cursor = self.cursor_of(name).await;
            if last == Some(cursor) {
                break;
            }
            last = Some(cursor);
        }
        last.unwrap_or_else(|| panic!("no reading of {name}'s cursor"))
    }

    /// Polls `/v1/cursors` until every cursor is at the head.
    pub async fn wait_caught_up(&self, within: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let v = self.cursors().await;
            let head = v["head"].as_u64().expect("head");
            if v["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .all(|t| t["cursor"].as_u64() == Some(head))
            {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "not caught up: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Sidecar {
    /// The last `bytes` of its log.
    pub fn log_tail(&self, bytes: usize) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&log[log.len().saturating_sub(bytes)..]).into_owned()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its sidecar said.
        if std::thread::panicking() {
            eprintln!(
                "--- the end of {} (the sidecar's log) ---\n{}",
                self.log.display(),
                self.log_tail(6000)
            );
        }
    }
}
