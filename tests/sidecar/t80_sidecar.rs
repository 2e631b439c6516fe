//! The binary: config checking, init, client commands, SIGTERM, offline
//! cursors.

use crate::sidecar;
use crate::skip;

use std::process::Command;

use sidecar::{Sidecar, bin, dir_config, free_port, run_within};

/// How long one client command may take before the test fails.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = run_within(
        Command::new(bin()).args(args).current_dir(dir),
        COMMAND_TIMEOUT,
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `walship ARGS` in `dir`, its stdout and stderr both to one file:
/// (the child, that file's path).
fn in_background(
    args: &[&str],
    dir: &std::path::Path,
) -> (std::process::Child, std::path::PathBuf) {
    let path = dir.join(format!("{}.out", args[0]));
    let out = std::fs::File::create(&path).expect("output file");
    let child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("output file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting walship {args:?}: {e}"));
    (child, path)
}

/// Waits for `child` to end (`Some(Some(status))`) or for `enough` to
/// hold (`Some(None)`), at most [`COMMAND_TIMEOUT`]; past that the child is
/// killed and the answer is `None`.
fn wait_child(
    child: &mut std::process::Child,
    enough: impl Fn() -> bool,
) -> Option<Option<std::process::ExitStatus>> {
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some(Some(st));
        }
        if enough() {
            return Some(None);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A temp dir with the config of a primary and two replicas as local
/// directories under it (`dir_config`), in `mode`: (the dir, the sidecar's
/// port, the config's path).
fn three_dirs(mode: &str) -> (tempfile::TempDir, u16, std::path::PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, dir_config(root.path(), port, mode)).expect("config");
    (root, port, cfg)
}

const BASE: &str = "[primary]\nname = \"p\"\nurl = \"file:///tmp/walship-check-p\"\n";

#[test]
fn check_config_names_each_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, String, &[&str])] = &[
        ("empty targets", BASE.to_string(), &["targets: no replica"]),
        (
            "duplicate names",
            format!("{BASE}[[targets]]\nname = \"p\"\nurl = \"memory://\"\n"),
            &["targets[0].name: duplicate target name \"p\""],
        ),
        (
            "min_sync_replicas",
            format!(
                "[replication]\nmin_sync_replicas = 3\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"
            ),
            &["replication.min_sync_replicas: 3 is more than the 1"],
        ),
        (
            "timeouts",
            format!(
                "[replication]\nhealth_check_interval_seconds = 0\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\nsync_timeout_seconds = -1\nretry_delay_seconds = -2\n"
            ),
            &[
                "replication.health_check_interval_seconds: must be between 0.001 (1 ms) and 31536000 (1 year) seconds, got 0",
                "targets[0].sync_timeout_seconds: must be between 0.001 (1 ms) and 31536000 (1 year) seconds, got -1",
                "targets[0].retry_delay_seconds: must be 0 or between",
            ],
        ),
        (
            "durations a serve would choke on",
            format!(
                "shutdown_grace_seconds = 1e20\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\nsync_timeout_seconds = 1e308\n\
                 [[targets]]\nname = \"r2\"\nurl = \"memory://\"\nsync_timeout_seconds = 1e-300\nretry_delay_seconds = nan\n"
            ),
            &[
                "shutdown_grace_seconds: must be 0 or between 0.001 (1 ms) and 31536000 (1 year) seconds, got 1e20",
                "targets[0].sync_timeout_seconds: must be between 0.001 (1 ms) and 31536000 (1 year) seconds, got 1e308",
                "targets[1].sync_timeout_seconds: must be between 0.001 (1 ms) and 31536000 (1 year) seconds, got 1e-300",
                "targets[1].retry_delay_seconds: must be 0 or between 0.001 (1 ms) and 31536000 (1 year) seconds, got NaN",
            ],
        ),
        (
            "memory primary",
            "[primary]\nname = \"p\"\nurl = \"memory://\"\n[[targets]]\nname = \"r\"\nurl = \"memory://\"\n".to_string(),
            &["primary.url: a memory:// primary forgets every acknowledged write"],
        ),
        (
            "two targets on one store",
            format!("{BASE}[[targets]]\nname = \"r\"\nurl = \"file:///tmp/walship-check-p/\"\n"),
            &["targets[0].url: \"file:///tmp/walship-check-p/\" is also the url of primary"],
        ),
        (
            "open listen without a token",
            format!("listen = \"0.0.0.0:7600\"\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"),
            &["listen: 0.0.0.0:7600 is reachable from other hosts but no auth_token_file is set"],
        ),
        (
            "missing token file, taken from the config's directory",
            format!("auth_token_file = \"no-such-token\"\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"),
            &["auth_token_file: ", "/no-such-token does not exist"],
        ),
        (
            "unknown key",
            format!("bogus = 1\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"),
            &["unknown field `bogus`"],
        ),
        (
            "unknown nested key",
            format!(
                "[replication]\nmdoe = \"sync\"\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"
            ),
            &["line 2", "unknown field `mdoe`"],
        ),
        (
            "unknown scheme",
            format!("{BASE}[[targets]]\nname = \"r\"\nurl = \"ftp://x/y\"\n"),
            &["targets[0].url: unknown scheme \"ftp\""],
        ),
        (
            "unknown option",
            format!(
                "{BASE}[[targets]]\nname = \"r\"\nurl = \"s3://b\"\n[targets.options]\nendpont = \"x\"\n"
            ),
            &["targets[0].options.endpont: unknown option for s3://"],
        ),
        (
            "bad mode",
            format!(
                "[replication]\nmode = \"fast\"\n{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"
            ),
            &["unknown variant `fast`"],
        ),
    ];
    for (what, text, wants) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        let (code, _, err) = run(&["check-config", path.to_str().expect("utf8")], dir.path());
        assert_eq!(code, 2, "{what}: {err}");
        for want in *wants {
            assert!(err.contains(want), "{what}: wanted {want:?} in:\n{err}");
        }
        if what.contains("durations") || *what == "timeouts" {
            assert!(
                err.lines().count() >= wants.len(),
                "{what}: one line per problem:\n{err}"
            );
        }
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("{BASE}[[targets]]\nname = \"r\"\nurl = \"memory://\"\n"),
    )
    .expect("write");
    let (code, out, err) = run(&["check-config", good.to_str().expect("utf8")], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn a_bad_config_starts_nothing_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("data_dir = {:?}\n{BASE}", data.display().to_string()),
    )
    .expect("write");
    let (code, _, err) = run(
        &["serve", "--config", path.to_str().expect("utf8")],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("targets: no replica"), "{err}");
    assert!(
        !data.exists(),
        "a rejected config must not create the data dir"
    );
}

#[test]
fn init_writes_a_valid_config_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run(&["init", "--dir", "."], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("walship.toml"));
    let (code, _, err) = run(&["check-config", "walship.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["init", "--dir", "."], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_sigterm_and_offline_cursors() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, dir_config(root.path(), port, "sync")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let dir = root.path();
    let input = dir.join("in.txt");
    std::fs::write(&input, "hello walship").expect("write");

    let (code, out, err) = run(
        &["put", "greeting/hello.txt", input.to_str().expect("utf8")],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("seq 1") && out.contains("replica-2"), "{out}");
    let (code, out, _) = run(&["get", "greeting/hello.txt"], dir);
    assert_eq!((code, out.as_str()), (0, "hello walship"));
    let (code, out, _) = run(&["list", "greeting/"], dir);
    assert_eq!(code, 0);
    assert!(out.contains("greeting/hello.txt"), "{out}");
    let (code, _, err) = run(&["put", "a/../b", input.to_str().expect("utf8")], dir);
    assert_eq!(code, 2, "a bad key is bad usage");
    assert!(err.contains("'..' segment"), "{err}");
    let (code, _, err) = run(&["get", "missing"], dir);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = run(&["delete", "greeting/hello.txt"], dir);
    assert_eq!(code, 0);
    assert!(out.contains("seq 2"), "{out}");
    assert!(!dir.join("targets/replica-1/greeting/hello.txt").exists());
    for i in 0..20 {
        let (code, _, err) = run(
            &[
                "put",
                &format!("k/{i}"),
                input.to_str().expect("utf8"),
                "--mode",
                "async",
            ],
            dir,
        );
        assert_eq!(code, 0, "{err}");
    }

    let (code, out, _) = run(&["cursors", "--json"], dir);
    assert_eq!(code, 0);
    let online: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(online["head"], 22);
    let (code, out, err) = run(&["status"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acting primary: primary") && out.contains("writes: 22 to primary"),
        "{out}"
    );
    let (code, out, err) = run(&["pause", "replica-2"], dir);
    assert_eq!((code, out.trim()), (0, "replica-2: paused"), "{err}");
    let (code, _, err) = run(&["pause", "nope"], dir);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown target"), "{err}");
    let (code, out, _) = run(&["resume", "replica-2"], dir);
    assert_eq!((code, out.trim()), (0, "replica-2: active"));

    assert!(sc.term().success(), "SIGTERM must exit 0 after draining");

    // No sidecar now: the same command reads the data directory.
    let (code, out, err) = run(&["cursors", "--json"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("offline"), "{err}");
    let offline: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(offline["head"], 22);
    for t in offline["targets"].as_array().expect("targets") {
        assert_eq!(t["cursor"], 22, "drained and persisted on SIGTERM: {t}");
        assert_eq!(t["lag_entries"], 0);
    }
    let (code, out, _) = run(&["cursors"], dir);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("NAME") && out.contains("replica-2"),
        "{out}"
    );
    let (code, out, err) = run(&["status", "--json"], dir);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["head"], 22);
    assert_eq!(status["mode"], "sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_replay_and_log_from_the_command_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, dir_config(root.path(), port, "sync")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let dir = root.path();
    let input = dir.join("in.txt");
    for i in 0..8 {
        std::fs::write(&input, format!("value-{i}")).expect("write");
        let (code, _, err) = run(
            &[
                "put",
                &format!("docs/{i}.txt"),
                input.to_str().expect("utf8"),
            ],
            dir,
        );
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&["verify"], dir);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");

    // Hands in the replica directory.
    let replica = dir.join("targets/replica-1/docs");
    std::fs::remove_file(replica.join("2.txt")).expect("rm");
    std::fs::write(replica.join("5.txt"), "tampered with").expect("edit");
    let (code, out, _) = run(&["verify"], dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("docs/2.txt (seq 3): missing"), "{out}");
    assert!(out.contains("docs/5.txt (seq 6): different size"), "{out}");
    let (code, out, _) = run(&["verify", "replica-2", "--json"], dir);
    assert_eq!(code, 0, "replica-2 was not touched: {out}");

    // The plan changes nothing; --execute repairs.
    let (code, out, err) = run(&["replay", "replica-1", "--from", "1"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("plan for replica-1: seq 1 to 8: 8 entries")
            && out.contains("nothing changed"),
        "{out}"
    );
    assert!(!replica.join("2.txt").exists());
    let (code, out, err) = run(&["replay", "replica-1", "--from", "1", "--execute"], dir);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["verify"], dir);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(replica.join("5.txt")).expect("read"),
        "value-5"
    );
    let (code, _, err) = run(&["replay", "replica-1", "--from", "99"], dir);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("past the head"), "{err}");

    let (code, out, err) = run(&["log", "--from", "2", "--limit", "3"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("docs/1.txt") && out.contains("docs/3.txt") && !out.contains("docs/4.txt"),
        "{out}"
    );
    let (code, out, _) = run(&["log", "--json"], dir);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["entries"].as_array().expect("entries").len(), 8);
    for field in ["seq", "time", "op", "key", "size", "crc_ok"] {
        assert!(
            v["entries"][0].get(field).is_some(),
            "log entry lacks {field}"
        );
    }

    assert!(sc.term().success());
    // Offline, from the data directory and the config.
    std::fs::remove_file(dir.join("targets/replica-2/docs/7.txt")).expect("rm");
    let (code, out, err) = run(&["verify"], dir);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(out.contains("docs/7.txt (seq 8): missing"), "{out}");
    let (code, out, err) = run(&["log", "--limit", "2"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("docs/0.txt") && err.contains("offline"),
        "{out}{err}"
    );
}

/// Writes `n` puts `doc/{i}` with a value that names its seq, in async mode.
/// A `sync` put's answer, as JSON.
async fn put_sync(base: &str, key: &str, body: &'static str) -> serde_json::Value {
    sidecar::client()
        .put(format!("{base}/v1/objects/{key}?mode=sync"))
        .body(body)
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json")
}

async fn put_numbered(base: &str, n: usize) {
    let c = sidecar::client();
    for i in 1..=n {
        let r = c
            .put(format!("{base}/v1/objects/doc/{i}?mode=async"))
            .body(format!("entry-{i:06}-of-the-log"))
            .send()
            .await
            .expect("put");
        assert!(r.status().is_success(), "put {i}: {}", r.status());
    }
}

/// Copies a directory tree (files and directories only).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// `serve` in the foreground: exit code and standard error. One that
/// started (it says it is serving, or is still running after 20 s) when it
/// should have refused is killed and reported as -1.
fn serve_once(cfg: &std::path::Path) -> (i32, String) {
    let err_path = cfg.with_extension("serve-once.log");
    let err = std::fs::File::create(&err_path).expect("log file");
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .expect("run walship serve");
    let mut code = -1;
    for _ in 0..400 {
        if let Some(st) = child.try_wait().expect("wait") {
            code = st.code().unwrap_or(-1);
            break;
        }
        // Started: no need to wait the rest out.
        if std::fs::read_to_string(&err_path).is_ok_and(|s| s.contains("walship serving")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if code == -1 {
        let _ = child.kill();
        let _ = child.wait();
    }
    (code, std::fs::read_to_string(&err_path).unwrap_or_default())
}

/// Guarantee 8: a log that reopens shorter than what was acknowledged is
/// refused with the first missing seq; `repair --accept-loss` records the
/// loss, the next seq is past the old head, and every target converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_got_shorter_is_refused_and_repair_moves_on_without_reusing_seqs() {
    for damage in [
        "flip a byte in entry 150",
        "truncate the db file",
        "delete the db file",
    ] {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        let port = free_port();
        let cfg = dir.join("walship.toml");
        std::fs::write(&cfg, dir_config(dir, port, "async")).expect("config");
        let sc = Sidecar::start(&cfg, port).await;
        put_numbered(&sc.base, 300).await;
        sc.wait_caught_up(std::time::Duration::from_secs(30)).await;
        assert!(sc.term().success());

        let db = dir.join("data/log/db");
        let bytes = std::fs::read(&db).expect("read db");
        let (code, err) = match damage {
            "flip a byte in entry 150" => {
                // sled's file may hold stale copies of the entry too (a leaf
                // rewritten), and a flip in one of those damages nothing the
                // log reads (serve rightly starts), or damages sled's own
                // page state (it refuses to open at all). Flip one copy at a
                // time, newest offset first, on the data dir as it was,
                // until the log opens shorter.
                // sled may also hold the leaf as a file of its own (a page
                // rewritten whole, over its blob threshold): its copies
                // are tried first, newest file first.
                let needle = b"entry-000150-of-the-log";
                let mut files: Vec<std::path::PathBuf> =
                    std::fs::read_dir(dir.join("data/log/blobs"))
                        .map(|d| d.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default();
                // Newest first: sled names blob files by number.
                files.sort_by_key(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str()?.parse::<u64>().ok())
                        .unwrap_or(0)
                });
                files.reverse();
                files.push(db.clone());
                let mut at: Vec<(std::path::PathBuf, Vec<u8>, usize)> = Vec::new();
                for f in &files {
                    let content = std::fs::read(f).expect("read sled file");
                    let mut here: Vec<usize> = content
                        .windows(needle.len())
                        .enumerate()
                        .filter(|(_, w)| *w == needle)
                        .map(|(i, _)| i)
                        .collect();
                    here.reverse();
                    at.extend(here.into_iter().map(|i| (f.clone(), content.clone(), i)));
                }
                assert!(!at.is_empty(), "entry 150 is in sled's files");
                let pristine = dir.join("data.pristine");
                copy_dir(&dir.join("data"), &pristine);
                let mut tried = Vec::new();
                let mut refused = None;
                for (file, content, i) in &at {
                    let _ = std::fs::remove_dir_all(dir.join("data"));
                    copy_dir(&pristine, &dir.join("data"));
                    let mut flipped = content.clone();
                    flipped[i + 3] ^= 0x20;
                    std::fs::write(file, &flipped).expect("write sled file");
                    let (code, err) = serve_once(&cfg);
                    if code == 1 && err.contains("are missing") {
                        refused = Some((code, err));
                        break;
                    }
                    if err.contains("damaged beyond what sled can recover") {
                        // walship writes nothing; sled's recovery zeroes a
                        // torn segment before it gives up, and the error
                        // says it may have.
                        assert!(
                            std::fs::read(file).expect("read sled file") == flipped
                                || err.contains("may have zeroed the torn part"),
                            "a log sled cannot recover changed, and the refusal does not say so: {err}"
                        );
                    }
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                    tried.push(format!("{name:?} offset {i}: exit {code}: {err}"));
                }
                // Each copy alone was read past (another copy held the
                // entry): all of them at once.
                let mut all_at_once = false;
                if refused.is_none() && at.len() > 1 {
                    let _ = std::fs::remove_dir_all(dir.join("data"));
                    copy_dir(&pristine, &dir.join("data"));
                    for f in &files {
                        let Ok(mut content) = std::fs::read(f) else {
                            continue;
                        };
                        let mut changed = false;
                        for (g, _, i) in &at {
                            if g == f {
                                content[i + 3] ^= 0x20;
                                changed = true;
                            }
                        }
                        if changed {
                            std::fs::write(f, &content).expect("write sled file");
                        }
                    }
                    let (code, err) = serve_once(&cfg);
                    if code == 1 && err.contains("are missing") {
                        refused = Some((code, err));
                    } else {
                        tried.push(format!("every copy at once: exit {code}: {err}"));
                        all_at_once = true;
                    }
                }
                // The outcome that counts: all copies at once, if tried.
                let outcome = if all_at_once {
                    &tried[tried.len() - 1..]
                } else {
                    &tried[..]
                };
                match refused {
                    Some(r) => r,
                    // Every copy hit sled's own page state: sled cannot
                    // recover the file at all. That is refused too, as a
                    // damaged log, changing nothing; repair needs a log that
                    // opens, so this damage ends here.
                    None if outcome.iter().all(|t| {
                        t.contains("exit 1") && t.contains("damaged beyond what sled can recover")
                    }) =>
                    {
                        eprintln!(
                            "{damage}: sled could not recover the file at all ({} tries); refused as damaged",
                            tried.len()
                        );
                        continue;
                    }
                    None => panic!(
                        "no copy of entry 150 made the log open shorter:\n{}",
                        tried.join("\n")
                    ),
                }
            }
            "truncate the db file" => {
                std::fs::write(&db, &bytes[..bytes.len() / 2]).expect("write db");
                serve_once(&cfg)
            }
            _ => {
                std::fs::remove_file(&db).expect("remove db");
                serve_once(&cfg)
            }
        };
        assert_eq!(code, 1, "{damage}: serve must refuse a shorter log:\n{err}");
        let missing: u64 = err
            .split("seqs ")
            .find_map(|s| s.split_once("..=300 are missing").map(|(n, _)| n))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{damage}: no missing range named:\n{err}"));
        let expected = match damage {
            // Where sled's recovery stops depends on which of its pages
            // held the flipped copy; walship names wherever that is.
            "flip a byte in entry 150" => 1..=300,
            "truncate the db file" => 2..=299,
            _ => 1..=1,
        };
        assert!(
            expected.contains(&missing),
            "{damage}: first missing seq {missing}:\n{err}"
        );
        assert!(err.contains("walship repair --accept-loss"), "{err}");
        // Refusing changed nothing: it refuses again, the same way.
        let (code, again) = serve_once(&cfg);
        assert_eq!(code, 1);
        assert!(again.contains(&format!("seqs {missing}..=300")), "{again}");

        let cfg_s = cfg.to_str().expect("utf8");
        let (code, _, err) = run(&["repair", "--config", cfg_s], dir);
        assert_eq!(
            code, 2,
            "repair without --accept-loss changes nothing: {err}"
        );
        assert!(err.contains("--accept-loss"), "{err}");
        let (code, out, err) = run(&["repair", "--accept-loss", "--config", cfg_s], dir);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("recorded seqs {missing}..=300 as lost"))
                && out.contains("next write gets seq 301"),
            "{out}"
        );

        let sc = Sidecar::start(&cfg, port).await;
        let v = put_sync(&sc.base, "after-repair", "new").await;
        assert_eq!(v["seq"], 301, "{damage}: seqs are never reused: {v}");
        sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
        // Every target holds what the primary holds (the replicas were
        // resynced from it), the new write included.
        let read = |t: &str, k: &str| std::fs::read(dir.join("targets").join(t).join(k)).ok();
        for t in ["replica-1", "replica-2"] {
            for i in [1, 149, 150, 300] {
                let k = format!("doc/{i}");
                assert_eq!(read(t, &k), read("primary", &k), "{damage}: {t} {k}");
                assert!(read(t, &k).is_some(), "{damage}: {t} lacks {k}");
            }
            assert_eq!(read(t, "after-repair").as_deref(), Some(&b"new"[..]));
        }
        assert!(sc.term().success());
    }
}

/// Guarantee 8: a head record that is gone (while the log says one was
/// kept) or damaged is refused at open, never made anew. `repair` without
/// `--accept-loss` says so, never "whole", and leaves the record as it was
/// (gone stays gone); with it, the record is written from the log's head
/// and the sidecar goes on from the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_record_gone_or_damaged_is_refused_and_a_dry_repair_changes_nothing() {
    for damage in ["remove the head record", "damage both slots"] {
        let (root, port, cfg) = three_dirs("async");
        let dir = root.path();
        let sc = Sidecar::start(&cfg, port).await;
        put_numbered(&sc.base, 20).await;
        sc.wait_caught_up(std::time::Duration::from_secs(30)).await;
        assert!(sc.term().success());
        let head = dir.join("data/head");
        if damage == "remove the head record" {
            std::fs::remove_file(&head).expect("remove head");
        } else {
            std::fs::write(&head, vec![0x5a; 1024]).expect("damage head");
        }
        let before = std::fs::read(&head).ok();

        let (code, err) = serve_once(&cfg);
        assert_eq!(code, 1, "{damage}: serve must refuse:\n{err}");
        assert!(
            err.contains("head record") && err.contains("--accept-loss"),
            "{damage}: {err}"
        );
        assert_eq!(
            std::fs::read(&head).ok(),
            before,
            "{damage}: serve's refusal changed the record"
        );

        let cfg_s = cfg.to_str().expect("utf8");
        let (code, _, err) = run(&["repair", "--config", cfg_s], dir);
        assert_eq!(code, 2, "{damage}: {err}");
        assert!(
            err.contains("is missing or damaged")
                && err.contains("--accept-loss")
                && !err.contains("whole"),
            "{damage}: the dry run must say what serve will refuse: {err}"
        );
        assert_eq!(
            std::fs::read(&head).ok(),
            before,
            "{damage}: repair without --accept-loss changed the head record"
        );

        let (code, out, err) = run(&["repair", "--accept-loss", "--config", cfg_s], dir);
        assert_eq!(code, 0, "{damage}: {err}");
        assert!(
            out.contains("it now says the log's head, 20"),
            "{damage}: {out}"
        );
        let sc = Sidecar::start(&cfg, port).await;
        let v = put_sync(&sc.base, "after", "new").await;
        assert_eq!(v["seq"], 21, "{damage}: {v}");
        assert!(sc.term().success());
    }
}

/// Guarantee 11: with local-directory targets, `a` beside `a/b` (either
/// order) and a segment over 255 bytes are refused with 409 naming the
/// other key and the target; nothing is appended and the next unrelated
/// write is acknowledged in every mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_local_directory_cannot_hold_are_refused_and_stall_nothing() {
    let (root, port, cfg) = three_dirs("sync");
    let dir = root.path();
    let sc = Sidecar::start(&cfg, port).await;
    let c = sidecar::client();
    let put = |k: String| {
        let c = c.clone();
        let url = format!("{}/v1/objects/{k}", sc.base);
        async move {
            let r = c.put(url).body("v").send().await.expect("put");
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.expect("json");
            (status, v)
        }
    };
    assert_eq!(put("a/b".into()).await.0, 200);
    assert_eq!(put("x".into()).await.0, 200);
    let long = "s".repeat(256);
    for (key, names) in [
        ("a".to_string(), "\"a/b\""),
        ("x/y".to_string(), "\"x\""),
        (format!("ok/{long}"), "256 bytes"),
    ] {
        let (status, v) = put(key.clone()).await;
        assert_eq!(status, 409, "{key}: {v}");
        let msg = v["error"].as_str().expect("error");
        assert!(
            msg.contains(names) && msg.contains("target primary"),
            "{msg}"
        );
    }
    let head = |v: serde_json::Value| v["head"].as_u64().expect("head");
    assert_eq!(head(sc.cursors().await), 2, "a refused key appends nothing");
    for mode in ["sync", "semi_sync", "async"] {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            c.put(format!("{}/v1/objects/fine/{mode}?mode={mode}", sc.base))
                .body("v")
                .send(),
        )
        .await
        .expect("answered, not stalled")
        .expect("put");
        assert_eq!(r.status(), 200, "{mode}");
    }
    // Once a/b is deleted, a is a fine key.
    let r = c
        .delete(format!("{}/v1/objects/a/b", sc.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    assert_eq!(put("a".into()).await.0, 200);
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    for t in ["primary", "replica-1", "replica-2"] {
        assert_eq!(
            std::fs::read(dir.join("targets").join(t).join("a"))
                .ok()
                .as_deref(),
            Some(&b"v"[..]),
            "{t}"
        );
    }
}

/// The Python package (`python/`, SPEC "Python") passes its own tests
/// against this very binary: `cargo test` runs them, so the README's one
/// test command covers them. Without python3 and pytest they are skipped
/// with a line saying so, except in CI (`CI=true`), where that fails.
#[test]
fn the_python_package_passes_its_tests_against_this_binary() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var("WALSHIP_PYTHON").unwrap_or_else(|_| "python3".into());
    let ready = Command::new(&py)
        .args(["-c", "import pytest, walship"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        let why = format!(
            "the Python package's tests: {py} cannot import pytest and walship \
             (pip install ./python pytest truthound==3.2.0 'moto[server]==5.2.5' boto3, \
             or run python/run-tests.sh)"
        );
        skip::skip(&why);
        return;
    }
    let out = run_within(
        Command::new(&py)
            .args([
                "-m",
                "pytest",
                "-rs",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests",
            ])
            .current_dir(repo.join("python"))
            .env("WALSHIP_BIN", bin()),
        std::time::Duration::from_secs(900),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or("");
    eprintln!("python/tests: {summary}");
    assert!(
        out.status.success(),
        "python/tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Guarantee 10 for memory:// targets: they start empty at every open, so
/// after a restart their cursor starts over and they hold every key again
/// (before, the cursor claimed what the new, empty store did not hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_target_is_full_again_after_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let port = free_port();
    let cfg = dir.join("walship.toml");
    let text = dir_config(dir, port, "sync");
    let replica2 = walship::config::file_url(&dir.join("targets").join("replica-2"));
    std::fs::write(&cfg, text.replace(&replica2, "memory://")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    put_numbered(&sc.base, 5).await;
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    assert!(sc.term().success());

    let sc = Sidecar::start(&cfg, port).await;
    let v = sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    let r2 = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "replica-2")
        .expect("replica-2")
        .clone();
    assert_eq!(r2["cursor"], 5, "{v}");
    // Every key is readable from it: pause the others' reads by asking for
    // `any` until replica-2 serves one (nearest/any pick at random).
    let c = sidecar::client();
    let mut served_by_r2 = 0;
    for _ in 0..60 {
        let r = c
            .get(format!("{}/v1/objects/doc/3?read_preference=any", sc.base))
            .send()
            .await
            .expect("get");
        let by = r
            .headers()
            .get("x-walship-served-by")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(r.status(), 200, "served by {by}");
        assert_eq!(r.text().await.expect("body"), "entry-000003-of-the-log");
        if by == "replica-2" {
            served_by_r2 += 1;
        }
    }
    assert!(served_by_r2 > 0, "replica-2 never served a read");
}

/// A config whose replica-2 is an S3 store at `endpoint` (nothing useful
/// answers there), with a long shutdown grace.
fn config_with_a_bad_replica(dir: &std::path::Path, port: u16, endpoint: &str) -> String {
    let replica2 = walship::config::file_url(&dir.join("targets").join("replica-2"));
    dir_config(dir, port, "async")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 120")
        .replace(
            "[replication]\n",
            "[replication]\nhealth_check_interval_seconds = 0.3\n",
        )
        .replace(
            &format!("url = \"{replica2}\"\nsync_timeout_seconds = 5"),
            "url = \"s3://bucket/x\"\nsync_timeout_seconds = 30",
        )
        + &format!(
            "[targets.options]\nendpoint = \"{endpoint}\"\nallow_http = \"true\"\n\
             access_key_id = \"k\"\nsecret_access_key = \"s\"\nregion = \"us-east-1\"\n"
        )
}

/// Sends `sig` to the sidecar; returns how long it took to exit, bounded.
fn signal_and_wait(
    sc: &mut Sidecar,
    sig: libc::c_int,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(sc.child.id() as libc::pid_t, sig);
    }
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Some(st) = sc.child.try_wait().expect("wait") {
            return Some(st);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// The drain rules: an unreachable target does not hold the exit (the
/// others caught up, it exits long before the 120 s grace), and a second
/// SIGTERM exits at once; cursors are persisted either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_waiting_for_an_unreachable_target_and_a_second_one_exits_now() {
    // 1. Connection refused: replica-2 goes unhealthy, the exit is quick.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let port = free_port();
    let cfg = dir.join("walship.toml");
    let closed = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&cfg, config_with_a_bad_replica(dir, port, &closed)).expect("config");
    let mut sc = Sidecar::start(&cfg, port).await;
    put_numbered(&sc.base, 5).await;
    let st = signal_and_wait(&mut sc, libc::SIGTERM, std::time::Duration::from_secs(20))
        .expect("exited well before the 120 s grace");
    assert!(st.success(), "{st:?}");
    let (code, out, err) = run(
        &["cursors", "--json", "--config", cfg.to_str().expect("utf8")],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    for t in v["targets"].as_array().expect("targets") {
        let want = if t["name"] == "replica-2" { 0 } else { 5 };
        assert_eq!(t["cursor"], want, "{t}");
    }

    // 2. An endpoint that takes the connection and never answers: the
    // drain would wait; a second SIGTERM exits at once.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let port = free_port();
    let cfg = dir.join("walship.toml");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    std::fs::write(&cfg, config_with_a_bad_replica(dir, port, &endpoint)).expect("config");
    let mut sc = Sidecar::start(&cfg, port).await;
    put_numbered(&sc.base, 5).await;
    assert!(
        signal_and_wait(&mut sc, libc::SIGTERM, std::time::Duration::from_secs(2)).is_none(),
        "the first SIGTERM drains (replica-2 is behind and not yet unhealthy)"
    );
    let r = reqwest::get(format!("{}/readyz", sc.base))
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503, "not ready while draining");
    let st = signal_and_wait(&mut sc, libc::SIGTERM, std::time::Duration::from_secs(5))
        .expect("a second SIGTERM exits at once");
    assert!(st.success(), "{st:?}");
    let (code, out, err) = run(
        &["cursors", "--json", "--config", cfg.to_str().expect("utf8")],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let primary = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "primary")
        .expect("primary")
        .clone();
    assert_eq!(primary["cursor"], 5, "cursors persisted: {v}");
    drop(silent);
}

/// Guarantee 10: a replica directory replaced by an empty one loses its
/// marker; walship notices at the next probe and refills it from the
/// acting primary, without a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_replica_directory_is_refilled_without_a_command() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let port = free_port();
    let cfg = dir.join("walship.toml");
    let text = dir_config(dir, port, "sync").replace(
        "[replication]\n",
        "[replication]\nhealth_check_interval_seconds = 0.3\n",
    );
    std::fs::write(&cfg, text).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    put_numbered(&sc.base, 20).await;
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    let replica = dir.join("targets/replica-1");
    assert!(
        replica.join(".walship/target.json").is_file(),
        "each target has its marker"
    );
    std::fs::remove_dir_all(&replica).expect("wipe");
    std::fs::create_dir_all(&replica).expect("empty directory");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for i in 1..=20 {
        let path = replica.join(format!("doc/{i}"));
        while std::fs::read(&path).ok().as_deref()
            != Some(format!("entry-{i:06}-of-the-log").as_bytes())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "doc/{i} never came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert!(
        replica.join(".walship/target.json").is_file(),
        "marked again"
    );
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    let (code, out, err) = run(&["verify", "--config", cfg.to_str().expect("utf8")], dir);
    assert_eq!(code, 0, "{out}{err}");
}

/// A tmpfs of `mib` MiB mounted at `dir` for one test, unmounted on drop;
/// `None` (a SKIPPED line, or a failure in CI) where mounting is not allowed.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u32) -> Option<Tmpfs> {
        Tmpfs::mount_as(
            dir,
            &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"],
        )
    }

    /// A ramfs: a file system without extended attributes, where a local
    /// directory's versions are recorded next to the log.
    fn ramfs(dir: &std::path::Path) -> Option<Tmpfs> {
        Tmpfs::mount_as(dir, &["-t", "ramfs", "ramfs"])
    }

    fn mount_as(dir: &std::path::Path, args: &[&str]) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(args)
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip::skip(&format!(
                "cannot mount `{}` here (needs root); the full-disk test did not run",
                args.join(" ")
            ));
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

/// An ext4 file system (no journal, `errors=continue`) on a loop device
/// whose image is a sparse file on a small tmpfs, mounted at `dir` for one
/// test: filling that tmpfs (`backing()`) makes the device fail writes
/// into blocks the image has not used yet, so a write-back and an
/// `fdatasync` fail (ENOSPC from the device, then EIO) while the ext4
/// itself still reports free space: a failing disk, for real. Dropped in
/// reverse: unmounted, the loop device detached, the tmpfs unmounted.
/// `None` (a SKIPPED line, or a failure in CI) where that cannot be set up.
struct LoopDisk {
    dir: std::path::PathBuf,
    device: String,
    backing: Tmpfs,
}

impl LoopDisk {
    fn mount(dir: &std::path::Path, backing_mib: u32) -> Option<LoopDisk> {
        let back = dir.with_extension("backing");
        let backing = Tmpfs::mount(&back, backing_mib)?;
        let image = back.join("disk.img");
        let step = |what: &str, cmd: &mut Command| -> Option<String> {
            match cmd.output() {
                Ok(out) if out.status.success() => {
                    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
                }
                Ok(out) => {
                    skip::skip(&format!(
                        "cannot {what} here: {}; the failed-fsync test did not run",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                    None
                }
                Err(e) => {
                    skip::skip(&format!(
                        "cannot {what} here: {e}; the failed-fsync test did not run"
                    ));
                    None
                }
            }
        };
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(256 << 20))
            .expect("sparse image");
        step(
            "make an ext4 file system (mkfs.ext4)",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^has_journal"])
                .arg(&image),
        )?;
        // One at a time: two tests finding the same free device at once
        // would race for it.
        static ATTACHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let device = {
            let _one = ATTACHING.lock().unwrap_or_else(|p| p.into_inner());
            step(
                "attach a loop device (losetup)",
                Command::new("losetup").args(["-f", "--show"]).arg(&image),
            )?
        };
        std::fs::create_dir_all(dir).expect("mkdir");
        let disk = LoopDisk {
            dir: dir.to_path_buf(),
            device,
            backing,
        };
        step(
            "mount a loop device",
            Command::new("mount")
                .args(["-o", "errors=continue", &disk.device])
                .arg(dir),
        )?;
        Some(disk)
    }

    /// Unmounts and mounts the file system again: what it then reads
    /// comes from the device, not from pages kept in memory (what a
    /// machine restart finds).
    fn remount(&self) {
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(Command::new("umount").arg(&self.dir)), "umount");
        assert!(
            ok(Command::new("mount")
                .args(["-o", "errors=continue", &self.device])
                .arg(&self.dir)),
            "mount again"
        );
    }

    /// Where the image lives: a file written there until it is full
    /// leaves the device no room for a block it has not used yet.
    fn backing(&self) -> &std::path::Path {
        &self.backing.0
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// A sidecar (async, local-directory targets) whose `data_dir` is a
/// tmpfs of `mib` MiB; `None` (the test skipped, and says so) where no tmpfs
/// can be mounted.
async fn on_a_tmpfs(mib: u32) -> Option<(tempfile::TempDir, Tmpfs, std::path::PathBuf, Sidecar)> {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let tmpfs = Tmpfs::mount(&dir.join("data"), mib)?;
    let port = free_port();
    let cfg = dir.join("walship.toml");
    std::fs::write(&cfg, dir_config(dir, port, "async")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    Some((root, tmpfs, cfg, sc))
}

/// Writes `filler` until its file system has not a byte left.
fn fill_to_the_last_byte(filler: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0u8; 512]).is_ok() {}
    let _ = f.sync_all();
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// While `data_dir` is full, writes answer 507 and nothing acknowledged is
/// lost; once space is freed they are taken again without a restart, seqs
/// continue without reuse, and after a kill -9 everything acknowledged is
/// on every target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_answers_507_and_resumes_by_itself_once_space_is_freed() {
    let Some((root, _tmpfs, cfg, sc)) = on_a_tmpfs(8).await else {
        return;
    };
    let dir = root.path();
    let data = dir.join("data");
    let port = sc.port();
    // Leave about 1 MiB free beyond the 4 MiB walship keeps free.
    let free = |p: &std::path::Path| {
        let c = std::ffi::CString::new(p.to_str().expect("utf8")).expect("cstr");
        // SAFETY: statvfs on a valid C string into a zeroed struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    };
    let filler = data.join("filler");
    let room = free(&data).saturating_sub(5 << 20);
    std::fs::write(&filler, vec![0u8; room as usize]).expect("filler");

    let c = sidecar::client();
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut full = None;
    for i in 0..4000 {
        let key = format!("fill/{i}");
        let r = c
            .put(format!("{}/v1/objects/{key}", sc.base))
            .body(format!("{i:08}").repeat(512))
            .send()
            .await
            .expect("put");
        match r.status().as_u16() {
            200 => {
                let v: serde_json::Value = r.json().await.expect("json");
                acked.push((key, v["seq"].as_u64().expect("seq")));
            }
            // Durable in the log, but the disk filled before the primary's
            // shipper could record it (sled's own flusher met the full disk
            // first): it is replicated once space is back.
            504 => {
                let v: serde_json::Value = r.json().await.expect("json");
                acked.push((key, v["seq"].as_u64().expect("seq")));
            }
            507 => {
                full = Some(r.text().await.expect("body"));
                break;
            }
            other => {
                let body = r.text().await.unwrap_or_default();
                let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "put {key}: {other} {body}; the sidecar's log ends (newest first):\n{}",
                    tail.join("\n")
                )
            }
        }
    }
    let full = full.expect("the data dir filled up and writes answered 507");
    assert!(
        acked.len() > 20,
        "writes were taken until the disk was nearly full ({} were)",
        acked.len()
    );
    assert!(
        full.contains("data_dir is full") && full.contains("Free space"),
        "{full}"
    );
    // Still full: a write of the same size is still refused, nothing
    // appended. The sidecar frees space of its own meanwhile (a checkpoint
    // removes journal files), so the disk is filled to the last byte
    // again before each try; a try that found room is acknowledged like
    // any write.
    let mut refused_again = false;
    for i in 0..5 {
        fill_to_the_last_byte(&data.join(format!("filler-{i}")));
        let key = format!("while-full/{i}");
        let r = c
            .put(format!("{}/v1/objects/{key}", sc.base))
            .body(format!("{:08}", 0).repeat(512))
            .send()
            .await
            .expect("put");
        match r.status().as_u16() {
            507 => {
                refused_again = true;
                break;
            }
            200 | 504 => {
                let v: serde_json::Value = r.json().await.expect("json");
                acked.push((key, v["seq"].as_u64().expect("seq")));
            }
            other => panic!("{other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    assert!(
        refused_again,
        "a write on a full data_dir is refused with 507"
    );

    std::fs::remove_file(&filler).expect("free the space");
    for i in 0..5 {
        let _ = std::fs::remove_file(data.join(format!("filler-{i}")));
    }
    let mut resumed = None;
    for _ in 0..100 {
        let r = c
            .put(format!("{}/v1/objects/after", sc.base))
            .body("back")
            .send()
            .await
            .expect("put");
        if r.status() == 200 {
            let v: serde_json::Value = r.json().await.expect("json");
            resumed = v["seq"].as_u64();
            break;
        }
        let status = r.status();
        assert_eq!(status, 507, "{}", r.text().await.unwrap_or_default());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let Some(resumed) = resumed else {
        let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .filter(|l| {
                !l.contains("key index checkpoint")
                    && !l.contains("log maintenance")
                    && !l.contains("snapshot file")
            })
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .join("\n");
        let files: Vec<String> = std::fs::read_dir(data.join("log"))
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        format!(
                            "{:?} {}",
                            e.file_name(),
                            e.metadata().map(|m| m.len()).unwrap_or(0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "writes did not resume without a restart; data/log holds {files:?}; the sidecar's log ends (newest first):\n{tail}"
        );
    };
    let last = acked.last().map(|(_, s)| *s).unwrap_or(0);
    assert_eq!(
        resumed,
        last + 1,
        "seqs continue: none skipped, none reused"
    );
    acked.push(("after".into(), resumed));

    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    sc.kill9();
    let sc = Sidecar::start(&cfg, port).await;
    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    for t in ["primary", "replica-1", "replica-2"] {
        for (key, _) in &acked {
            assert!(
                dir.join("targets").join(t).join(key).is_file(),
                "{t} lacks acknowledged {key}"
            );
        }
    }
    assert!(sc.term().success());
}

/// A failed fsync (SPEC: "a failed fsync makes the log reopen itself from
/// disk before it takes writes again (no restart, no seq reused)"), made
/// to happen: `data_dir` is an ext4 on a loop device whose backing store
/// fills, so the journal's `fdatasync` fails while the file system still
/// shows free space. Writes are refused with an error that says so, none
/// is acknowledged meanwhile; once the device has room again they are
/// taken without a restart, the seqs go on from the last acknowledged,
/// and after a kill -9 and a remount (the device read, not memory) every
/// acknowledged write is in the log and on every target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_refuses_writes_until_the_log_reopens_and_loses_nothing_acknowledged() {
    a_failed_fsync(512).await;
}

/// The same with 48 KiB values, which sled keeps in files of their own
/// (`log/blobs`) besides its main file: the reopen writes those anew too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_with_values_sled_keeps_in_files_of_their_own_loses_nothing_either() {
    a_failed_fsync(48 << 10).await;
}

/// [`a_failed_fsync_refuses_writes_until_the_log_reopens_and_loses_nothing_acknowledged`]
/// with values of `value_bytes` before the fault.
async fn a_failed_fsync(value_bytes: usize) {
    // Declared first, so dropped last: the mounts go before their directory.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let data = dir.join("data");
    let Some(disk) = LoopDisk::mount(&data, 48) else {
        return;
    };
    let port = free_port();
    let cfg = dir.join("walship.toml");
    std::fs::write(&cfg, dir_config(dir, port, "sync")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let c = sidecar::client();
    let put = |key: String, body: String| {
        let (c, base) = (c.clone(), sc.base.clone());
        async move {
            let r = c
                .put(format!("{base}/v1/objects/{key}"))
                .body(body)
                .send()
                .await
                .expect("put");
            let status = r.status().as_u16();
            (status, r.text().await.expect("body"))
        }
    };
    let seq_of = |body: &str| -> u64 {
        serde_json::from_str::<serde_json::Value>(body).expect("json")["seq"]
            .as_u64()
            .expect("seq")
    };
    let mut acked: Vec<(String, String, u64)> = Vec::new();
    for i in 0..50 {
        let (key, value) = (
            format!("before/{i}"),
            format!("{i:08}").repeat(value_bytes / 8),
        );
        let (status, body) = put(key.clone(), value.clone()).await;
        assert_eq!(status, 200, "{body}");
        acked.push((key, value, seq_of(&body)));
    }
    let blobs = std::fs::read_dir(data.join("log").join("blobs")).map_or(0, |d| d.count());
    assert_eq!(
        blobs > 0,
        value_bytes > 8 << 10,
        "sled keeps large values in files of their own, small ones not: {blobs} such files"
    );

    // The device runs out of room: the next journal block it has not
    // written before cannot be stored.
    fill_to_the_last_byte(&disk.backing().join("filler"));
    let mut refused = None;
    for i in 0..2000 {
        let (key, value) = (format!("during/{i}"), format!("{i:08}").repeat(64));
        let (status, body) = put(key.clone(), value.clone()).await;
        match status {
            // 504: durable in the log, a target not yet there (SPEC): it
            // must be replicated like an acknowledged write.
            200 | 504 => acked.push((key, value, seq_of(&body))),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a write failed its fsync (the fault happened)");
    assert!(
        status == 507 || status == 500,
        "a failed fsync answers 507 or 500: {status} {body}"
    );
    assert!(
        body.contains("flush") && body.contains("retrying it is safe"),
        "the answer says what happened and what to do: {body}"
    );

    std::fs::remove_file(disk.backing().join("filler")).expect("free the device");
    let mut resumed = None;
    for _ in 0..200 {
        let (status, body) = put("after".into(), "back".into()).await;
        if status == 200 || status == 504 {
            resumed = Some(seq_of(&body));
            break;
        }
        assert!(status == 507 || status == 500, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "writes did not resume without a restart; the sidecar's log ends:\n{}",
            sc.log_tail(3000)
        )
    });
    let last = acked.last().map(|(_, _, s)| *s).unwrap_or(0);
    assert_eq!(resumed, last + 1, "seqs go on from the last acknowledged");
    acked.push(("after".into(), "back".into(), resumed));

    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    sc.kill9();
    // What a machine restart finds: the device, not the pages in memory
    // (a page whose write-back failed stays readable in memory, marked
    // clean, and a later sync does not write it again).
    disk.remount();
    let sc = Sidecar::start(&cfg, port).await;
    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    let log = sc.get_json("/v1/log?from=1&limit=10000").await;
    let in_log: std::collections::HashMap<u64, String> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().expect("seq"),
                e["key"].as_str().expect("key").to_string(),
            )
        })
        .collect();
    for (key, value, seq) in &acked {
        assert_eq!(
            in_log.get(seq),
            Some(key),
            "the log holds acknowledged seq {seq}"
        );
        for t in ["primary", "replica-1", "replica-2"] {
            assert_eq!(
                std::fs::read_to_string(dir.join("targets").join(t).join(key))
                    .ok()
                    .as_deref(),
                Some(value.as_str()),
                "{t} holds acknowledged {key}"
            );
        }
    }
    assert!(sc.term().success());
}

/// Guarantee 9 on a failing disk: a replica directory whose device fails
/// its writes (an ext4 on a loop device whose backing tmpfs fills, so
/// `fsync` fails while the file system shows free space) is never counted
/// as holding what it could not make durable: its cursor stops short
/// while the device is full, and once the device has room it catches up,
/// with no new write, to hold every write's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_fails_its_fsync_vouches_for_nothing_and_catches_up_after() {
    // Declared first, so dropped last: the mounts go before their directory.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let Some(disk) = LoopDisk::mount(&dir.join("targets").join("replica-2"), 48) else {
        return;
    };
    let port = free_port();
    let cfg = dir.join("walship.toml");
    std::fs::write(&cfg, dir_config(dir, port, "async")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let c = sidecar::client();
    let value = |i: u64| format!("{i:08}").repeat(512);
    let mut n = 0u64;
    let write = async |n: &mut u64| {
        *n += 1;
        let r = c
            .put(format!("{}/v1/objects/k/{n}", sc.base))
            .body(value(*n))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200, "put {n}");
    };
    for _ in 0..20 {
        write(&mut n).await;
    }
    sc.wait_caught_up(std::time::Duration::from_secs(30)).await;

    fill_to_the_last_byte(&disk.backing().join("filler"));
    for _ in 0..200 {
        write(&mut n).await;
    }
    // The fault happened: replica-2 stops short of the head and stays.
    let stalled = sc.settled_cursor("replica-2").await;
    assert!(
        stalled < n,
        "replica-2 reached the head although its device could store nothing new: it vouched for writes it could not make durable (or the fault did not happen)"
    );
    assert_eq!(sc.cursor_of("replica-1").await, n, "replica-1 went on");

    std::fs::remove_file(disk.backing().join("filler")).expect("free the device");
    // No write from here on.
    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    for i in 1..=n {
        assert_eq!(
            std::fs::read_to_string(dir.join("targets/replica-2/k").join(i.to_string()))
                .ok()
                .as_deref(),
            Some(value(i).as_str()),
            "replica-2 holds write {i}"
        );
    }
    assert!(sc.term().success());
}

/// A full data dir met outside a write (here by a resumed replica's
/// shipper, whose version records sled's flusher cannot write: replica-2
/// is a local directory on a file system without extended attributes)
/// makes the log refuse every write, and `/readyz` says so; once space is
/// freed the log reopens by itself and the replica catches up without any
/// new write and without a restart. What the reopen lost (the versions
/// recorded since the last sync) is recorded again: after a restart,
/// writing every key again meets this sidecar's own versions, never a
/// conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_while_a_replica_catches_up_heals_without_a_write() {
    // Declared first, so dropped last: the mounts go before their directory.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let Some(_ramfs) = Tmpfs::ramfs(&dir.join("targets").join("replica-2")) else {
        return;
    };
    let Some(_tmpfs) = Tmpfs::mount(&dir.join("data"), 64) else {
        return;
    };
    let port = free_port();
    let cfg = dir.join("walship.toml");
    std::fs::write(&cfg, dir_config(dir, port, "async")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let data = dir.join("data");
    let (code, _, err) = run(&["pause", "replica-2"], dir);
    assert_eq!(code, 0, "{err}");
    let c = sidecar::client();
    // Long keys: replica-2's version records (kept in sled for a local
    // directory without extended attributes) must outgrow the room left.
    let n: u64 = 3000;
    let key = |i: u64| format!("k/{}-{i}", "x".repeat(200));
    let write_all = async |sc: &Sidecar, keys: std::ops::Range<u64>, value: fn(u64) -> String| {
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let (c, base, keys) = (c.clone(), sc.base.clone(), keys.clone());
            writers.push(tokio::spawn(async move {
                for i in keys.skip(w as usize).step_by(8) {
                    let r = c
                        .put(format!("{base}/v1/objects/{}", key(i)))
                        .body(value(i))
                        .send()
                        .await
                        .expect("put");
                    assert_eq!(r.status(), 200, "put {i}");
                }
            }));
        }
        for w in writers {
            w.await.expect("writer");
        }
    };
    let ready = |c: reqwest::Client, base: String| async move {
        let r = c
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        (r.status().as_u16(), r.text().await.expect("readyz body"))
    };
    // Polls `/readyz` until it answers 200 (at most 30 s).
    let wait_ready = async |c: reqwest::Client, base: String| {
        let mut last = (0, String::new());
        let polled = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                last = ready(c.clone(), base.clone()).await;
                if last.0 == 200 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            polled.is_ok(),
            "not ready again although space was freed: {} {}",
            last.0,
            last.1
        );
    };
    let filler = data.join("filler");
    // Rounds, until the fault happens: sled reuses free room inside its
    // file first, so how much of the catch-up fits is not known ahead.
    let mut written = 0;
    for round in 1.. {
        assert!(
            round <= 5,
            "the fault never happened: replica-2's catch-up always fit"
        );
        write_all(&sc, written..written + n, |i| format!("{i:08}")).await;
        written += n;
        // Everything so far made durable, so the room left below is the
        // catch-up's alone: the key index of the writes is written to sled
        // within 200 ms of the last, then a state change syncs the log.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        for cmd in ["pause", "resume"] {
            let (code, _, err) = run(&[cmd, "replica-1"], dir);
            assert_eq!(code, 0, "{err}");
        }
        // Room for the resume's record, not for the catch-up's versions.
        fill_to_the_last_byte(&filler);
        let len = std::fs::metadata(&filler).expect("filler").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .and_then(|f| f.set_len(len - (256 << 10)))
            .expect("leave 256 KiB");
        let (code, _, err) = run(&["resume", "replica-2"], dir);
        if code != 0 {
            // The disk filled before the catch-up began (sled had more to
            // write than was synced): the resume was refused and changed
            // nothing. Not this round.
            eprintln!("round {round}: the resume was refused: {err}");
            std::fs::remove_file(&filler).expect("free the space");
            wait_ready(c.clone(), sc.base.clone()).await;
            continue;
        }
        // The fault happens outside any write: the log refuses writes
        // (another 503, a slow answer of the primary's probe, is not it).
        // Or the catch-up fit: once replica-2 is at the head, pausing it
        // syncs the log, and a sync that works wrote all its versions.
        let faulted = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let (status, body) = ready(c.clone(), sc.base.clone()).await;
                if status == 503 && body.contains("refuses writes") {
                    return true;
                }
                if sc.cursor_of("replica-2").await == written
                    && run(&["pause", "replica-2"], dir).0 == 0
                {
                    return false;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("in 60 s neither did the log refuse writes nor did replica-2's catch-up end");
        if faulted {
            eprintln!("the fault happened in round {round}");
            break;
        }
        // replica-2 is paused again for the next round.
        std::fs::remove_file(&filler).expect("free the space");
    }
    std::fs::remove_file(&filler).expect("free the space");
    // No write from here on: the log reopens by itself, and replica-2
    // catches up.
    wait_ready(c.clone(), sc.base.clone()).await;
    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    for i in 0..written {
        assert!(
            dir.join("targets/replica-2").join(key(i)).is_file(),
            "replica-2 lacks entry {i}"
        );
    }
    let r = c
        .put(format!("{}/v1/objects/after", sc.base))
        .body("back")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200, "writes are taken again");
    assert!(sc.term().success());

    // Restarted, every key written again: replica-2 holds this sidecar's
    // versions, which it must know as its own from what it recorded.
    let sc = Sidecar::start(&cfg, port).await;
    write_all(&sc, 0..written, |i| format!("again {i:08}")).await;
    sc.wait_caught_up(std::time::Duration::from_secs(60)).await;
    // Versions recorded before the reopen, lost with it, would make those
    // keys look written by another.
    sc.assert_no_conflicts().await;
    for i in (0..written).step_by(97) {
        assert_eq!(
            std::fs::read_to_string(dir.join("targets/replica-2").join(key(i))).ok(),
            Some(format!("again {i:08}")),
            "replica-2 holds the new version of entry {i}"
        );
    }
    assert!(sc.term().success());
}

/// A full data dir, met by a write large enough for sled to store as a
/// file of its own: the write answers 507 and the sidecar stays responsive
/// (sled left stuck by a failed blob write used to hang every request);
/// a replay asked meanwhile is refused and changes nothing, or is taken
/// whole; once space is freed, large writes are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_on_a_full_data_dir_answers_507_and_nothing_hangs() {
    let Some((root, _tmpfs, _cfg, sc)) = on_a_tmpfs(8).await else {
        return;
    };
    let dir = root.path();
    let data = dir.join("data");
    let c = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client");
    let n: u64 = 20;
    for i in 1..=n {
        let r = c
            .put(format!("{}/v1/objects/k{i}", sc.base))
            .body(format!("v{i}"))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200, "put {i}");
    }
    sc.wait_caught_up(std::time::Duration::from_secs(30)).await;
    // A hand edit a replay would write over.
    let edited = dir.join("targets/replica-2/k1");
    std::fs::write(&edited, "edited by hand").expect("edit");
    let filler = data.join("filler");
    fill_to_the_last_byte(&filler);
    let big = vec![b'x'; 256 << 10];
    let r = c
        .put(format!("{}/v1/objects/big", sc.base))
        .body(big.clone())
        .send()
        .await
        .expect("the large write is answered");
    assert_eq!(r.status(), 507, "the data dir is full");
    let body = r.text().await.expect("body");
    assert!(
        body.to_lowercase().contains("free space"),
        "the answer says what to do: {body}"
    );
    // Everything else is still answered (507: below the reserve).
    let r = c
        .put(format!("{}/v1/objects/small", sc.base))
        .body("s")
        .send()
        .await
        .expect("a small write is answered, not hung");
    assert_eq!(r.status(), 507);
    sc.wait_caught_up(std::time::Duration::from_secs(30)).await;
    // A replay while the data dir is full: refused with the reason, or
    // taken, and then `--execute` waits for shipping, which needs room in
    // data_dir too: the wait says why it is not moving, and ends once
    // space is freed.
    let before = sc.cursor_of("replica-2").await;
    let (mut replay, said) =
        in_background(&["replay", "replica-2", "--from", "1", "--execute"], dir);
    let said = || std::fs::read_to_string(&said).unwrap_or_default();
    let ended = wait_child(&mut replay, || said().contains("shipping to it fails with"))
        .unwrap_or_else(|| {
            panic!(
                "the replay neither ended nor said why it waits within {COMMAND_TIMEOUT:?}:\n{}",
                said()
            )
        });
    let code = match ended {
        Some(st) if !st.success() => {
            let err = said();
            assert!(
                err.contains("space") || err.contains("full") || err.contains("retry"),
                "the error says why: {err}"
            );
            assert_eq!(
                sc.cursor_of("replica-2").await,
                before,
                "a refused replay moved the cursor"
            );
            eprintln!(
                "a_large_write_on_a_full_data_dir: the replay was refused: {}",
                err.trim()
            );
            1
        }
        Some(_) => {
            eprintln!(
                "a_large_write_on_a_full_data_dir: sled still had room for the replay and its shipping ({}); the waiting path was not exercised this run",
                said()
            );
            0
        }
        None => {
            assert!(
                said().contains("full") || said().contains("space"),
                "the waiting replay names the full data dir: {}",
                said()
            );
            eprintln!(
                "a_large_write_on_a_full_data_dir: the replay was taken and waits: {}",
                said().trim()
            );
            0
        }
    };
    std::fs::remove_file(&filler).expect("free the space");
    if ended.is_none() {
        let st = wait_child(&mut replay, || false)
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the waiting replay did not end within {COMMAND_TIMEOUT:?} of freeing space:\n{}",
                    said()
                )
            });
        assert!(
            st.success(),
            "the replay finished once space was freed: {}",
            said()
        );
    }
    let mut taken = false;
    for _ in 0..50 {
        let r = c
            .put(format!("{}/v1/objects/big", sc.base))
            .body(big.clone())
            .send()
            .await
            .expect("put");
        if r.status() == 200 {
            taken = true;
            break;
        }
        assert_eq!(r.status(), 507);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(taken, "large writes are taken again once space is freed");
    sc.wait_caught_up(std::time::Duration::from_secs(30)).await;
    let hand = std::fs::read_to_string(&edited).expect("read");
    if code == 0 {
        assert_eq!(hand, "v1", "the replay that was taken wrote over the edit");
    } else {
        assert_eq!(
            hand, "edited by hand",
            "nothing was replayed over the target"
        );
    }
    assert_eq!(
        std::fs::read(dir.join("targets/replica-2/big")).expect("big"),
        big
    );
    assert!(sc.term().success());
}

/// `replay --execute` waits for the target; while shipping to it fails
/// (its directory replaced by a file), the wait says why on stderr, and
/// it ends 0 once the target takes the entries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_cannot_ship_says_why_it_waits_and_ends_once_it_can() {
    let (root, port, cfg) = three_dirs("async");
    let dir = root.path();
    let sc = Sidecar::start(&cfg, port).await;
    let c = sidecar::client();
    for i in 1..=3 {
        let r = c
            .put(format!("{}/v1/objects/k{i}", sc.base))
            .body(format!("v{i}"))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
    }
    sc.wait_caught_up(std::time::Duration::from_secs(30)).await;
    let r2 = dir.join("targets/replica-2");
    let away = dir.join("replica-2.away");
    std::fs::rename(&r2, &away).expect("move replica-2 away");
    std::fs::write(&r2, "a file where the replica's directory was").expect("block");
    let (mut replay, said) =
        in_background(&["replay", "replica-2", "--from", "1", "--execute"], dir);
    let said = || std::fs::read_to_string(&said).unwrap_or_default();
    let ended = wait_child(&mut replay, || said().contains("shipping to it fails with"))
        .unwrap_or_else(|| panic!("the replay did not say why it waits:\n{}", said()));
    assert!(
        ended.is_none(),
        "the replay ended while the target was blocked: {}",
        said()
    );
    let text = said();
    assert!(
        text.contains("replica-2 is not done yet (cursor 0 of 3)") && text.contains("Ctrl-C"),
        "the wait names the target, where it is and what to do: {text}"
    );
    std::fs::remove_file(&r2).expect("unblock");
    std::fs::rename(&away, &r2).expect("move replica-2 back");
    let st = wait_child(&mut replay, || false)
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the replay did not end once the target was back:\n{}",
                said()
            )
        });
    assert!(st.success(), "{}", said());
    assert_eq!(
        std::fs::read_to_string(r2.join("k3")).expect("k3 on replica-2"),
        "v3"
    );
    assert!(sc.term().success());
}

/// Guarantee 11, after the door: a target that rejects an entry for good
/// (here a directory made by hand where the key's file must go) goes
/// `failed` naming the seq and the key, the other targets go on, `verify`
/// exits 1, and once the way is clear `resume` ships the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_rejects_an_entry_for_good_fails_alone_and_verify_says_so() {
    let (root, port, cfg) = three_dirs("async");
    let dir = root.path();
    let sc = Sidecar::start(&cfg, port).await;
    let blocker = dir.join("targets/replica-1/doc.json");
    std::fs::create_dir_all(blocker.join("in-the-way")).expect("mkdir");
    let c = sidecar::client();
    let put = |k: &str, v: &str| {
        c.put(format!("{}/v1/objects/{k}", sc.base))
            .body(v.to_string())
            .send()
    };
    assert_eq!(put("doc.json", "v").await.expect("put").status(), 200);
    for i in 0..5 {
        assert_eq!(
            put(&format!("more/{i}"), "m").await.expect("put").status(),
            200
        );
    }
    let cfg_s = cfg.to_str().expect("utf8");
    let row = |v: &serde_json::Value, name: &str| {
        v["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| t["name"] == name)
            .expect("target")
            .clone()
    };
    let mut failed = None;
    for _ in 0..100 {
        let v: serde_json::Value = c
            .get(format!("{}/v1/cursors", sc.base))
            .send()
            .await
            .expect("cursors")
            .json()
            .await
            .expect("json");
        if row(&v, "replica-1")["state"] == "failed" && row(&v, "replica-2")["cursor"] == 6 {
            failed = Some(v);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let v = failed.expect("replica-1 failed while replica-2 went on to the head");
    let r1 = row(&v, "replica-1");
    let err = r1["error"].as_str().unwrap_or("");
    assert!(
        err.contains("seq 1") && err.contains("doc.json") && err.contains("for good"),
        "{r1}"
    );
    assert_eq!(r1["cursor"], 0, "{r1}");
    assert_eq!(row(&v, "primary")["cursor"], 6);
    let (code, out, _) = run(&["verify", "--config", cfg_s], dir);
    assert_eq!(code, 1, "verify fails while a target has failed:\n{out}");
    assert!(out.contains("failed"), "{out}");

    std::fs::remove_dir_all(&blocker).expect("clear the way");
    let (code, _, err) = run(&["resume", "replica-1", "--config", cfg_s], dir);
    assert_eq!(code, 0, "{err}");
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    assert_eq!(std::fs::read(&blocker).ok().as_deref(), Some(&b"v"[..]));
    let (code, out, _) = run(&["verify", "--config", cfg_s], dir);
    assert_eq!(code, 0, "{out}");
}

/// The CLI tells the truth: a config's client command refuses another
/// sidecar holding that config's port (naming both data dirs); offline
/// views say `"offline": true` and show the persisted pause and the
/// config's failover setting; the token comes from --token-file or
/// WALSHIP_TOKEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_checks_whose_sidecar_answers_and_offline_views_are_faithful() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let port = free_port();
    let (cfg_a, cfg_b) = (a.join("walship.toml"), b.join("walship.toml"));
    std::fs::write(&cfg_a, dir_config(&a, port, "async")).expect("config");
    std::fs::write(b.join("token"), "s3cret\n").expect("token");
    std::fs::write(&cfg_b, dir_config(&b, port, "async")).expect("config");

    // a: write, pause a replica, stop: the offline view is faithful.
    let sc = Sidecar::start(&cfg_a, port).await;
    put_numbered(&sc.base, 3).await;
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    let (code, _, err) = run(&["pause", "replica-2"], &a);
    assert_eq!(code, 0, "{err}");
    assert!(sc.term().success());
    let (code, out, err) = run(&["status", "--json"], &a);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["offline"], true, "{v}");
    assert_eq!(v["failover"]["enabled"], true, "the config's setting: {v}");
    assert!(v["log_retained_bytes"].as_u64().expect("bytes") > 0, "{v}");
    let r2 = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == "replica-2")
        .expect("r2")
        .clone();
    assert_eq!(r2["state"], "paused", "{r2}");
    let (code, out, _) = run(&["cursors", "--json"], &a);
    assert_eq!(code, 0);
    assert!(out.contains("\"offline\":true"), "{out}");

    // b now holds a's port: a's commands refuse it, naming both data dirs.
    let sc = Sidecar::start(&cfg_b, port).await;
    let (code, _, err) = run(&["cursors"], &a);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&a.join("data").display().to_string())
            && err.contains(&b.join("data").display().to_string()),
        "{err}"
    );
    // With a token, b's own commands need it: from the config,
    // --token-file, or WALSHIP_TOKEN.
    assert!(sc.term().success());
    std::fs::write(
        &cfg_b,
        format!(
            "auth_token_file = \"token\"\n{}",
            dir_config(&b, port, "async")
        ),
    )
    .expect("config");
    let sc = Sidecar::start(&cfg_b, port).await;
    let (code, _, err) = run(&["cursors", "--json"], &b);
    assert_eq!(code, 0, "{err}");
    let anywhere = root.path();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, _) = run(&["cursors", "--addr", &addr], anywhere);
    assert_ne!(code, 0, "no token, refused");
    let tf = b.join("token");
    let (code, _, err) = run(
        &[
            "cursors",
            "--addr",
            &addr,
            "--token-file",
            tf.to_str().expect("utf8"),
        ],
        anywhere,
    );
    assert_eq!(code, 0, "{err}");
    let out = run_within(
        Command::new(bin())
            .args(["cursors", "--addr", &addr])
            .env("WALSHIP_TOKEN", "s3cret")
            .current_dir(anywhere),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sc);
}

/// `serve --log-format json` writes one JSON object a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_one_json_object_a_line_when_asked() {
    let (root, port, cfg) = three_dirs("async");
    let dir = root.path();
    let log = dir.join("serve.log");
    let child = Command::new(bin())
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let sc = Sidecar {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log: log.clone(),
    };
    assert!(
        sidecar::answers(&sc.base, 200).await,
        "walship did not start"
    );
    assert!(sc.term().success());
    let text = std::fs::read_to_string(&log).expect("read");
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

/// Clients that never finish their headers are cut off after
/// `request_header_timeout_seconds`, and the sidecar keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stalled_in_their_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let port = free_port();
    let cfg = dir.join("walship.toml");
    std::fs::write(
        &cfg,
        format!(
            "request_header_timeout_seconds = 0.5\n{}",
            dir_config(dir, port, "async")
        ),
    )
    .expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"PUT /v1/objects/k HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        stalled.push(s);
    }
    // Others are served meanwhile.
    let r = reqwest::get(format!("{}/healthz", sc.base))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    // Every stalled one is closed by the server (EOF, possibly after a 408).
    for (i, mut s) in stalled.into_iter().enumerate() {
        let mut buf = Vec::new();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "stalled client {i} was not cut off");
    }
    let cursors: serde_json::Value = reqwest::get(format!("{}/v1/cursors", sc.base))
        .await
        .expect("cursors")
        .json()
        .await
        .expect("json");
    assert_eq!(cursors["head"], 0, "nothing was written by them");
}

/// A `Type=notify` unit hears READY=1 once the sidecar serves and
/// STOPPING=1 when it starts to drain, through `$NOTIFY_SOCKET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_stopping_through_notify_socket() {
    let (root, port, cfg) = three_dirs("async");
    let dir = root.path();
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut sc = Sidecar::start_with_env(
        &cfg,
        port,
        &[("NOTIFY_SOCKET", sock_path.display().to_string())],
    )
    .await;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // It answers by then.
    let r = reqwest::get(format!("{}/healthz", sc.base))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let st =
        signal_and_wait(&mut sc, libc::SIGTERM, std::time::Duration::from_secs(20)).expect("exits");
    assert!(st.success());
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Under `--json` an error is JSON too (on standard output, with the exit
/// status), so a script reading the output never meets plain text.
#[test]
fn errors_are_json_under_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let (code, out, err) = run(
        &[
            "cursors",
            "--json",
            "--addr",
            "127.0.0.1:9",
            "--data-dir",
            missing.to_str().expect("utf8"),
        ],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("no walship log"),
        "{v}"
    );
    assert_eq!(v["exit"], 1);
}

/// `walship restore`: the objects as they stood at a seq or a time, into
/// another store; a plan first, written only with --execute; a configured
/// target's store is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_writes_the_objects_as_they_stood_into_another_store() {
    let (root, port, cfg) = three_dirs("sync");
    let dir = root.path();
    let sc = Sidecar::start(&cfg, port).await;
    let c = sidecar::client();
    let put = |k: &str, v: &str| {
        c.put(format!("{}/v1/objects/{k}", sc.base))
            .body(v.to_string())
            .send()
    };
    put("doc/1", "one-v1").await.expect("put");
    put("doc/2", "two-v1").await.expect("put");
    put("keep", "same").await.expect("put");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time");
        now.as_millis().to_string()
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    put("doc/1", "one-v2").await.expect("put");
    c.delete(format!("{}/v1/objects/doc/2", sc.base))
        .send()
        .await
        .expect("delete");
    put("doc/3", "three").await.expect("put");

    let dest = dir.join("restored");
    let to = walship::config::file_url(&dest);
    let cfg_s = cfg.to_str().expect("utf8");
    // `get --json` says what it read and from where, not the raw bytes.
    let (code, out, err) = run(&["get", "doc/1", "--json", "--config", cfg_s], dir);
    assert_eq!(code, 0, "{err}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (got["value"].as_str(), got["seq"].as_u64()),
        (Some("one-v2"), Some(4)),
        "{got}"
    );
    assert!(got["served_by"].is_string(), "{got}");
    let (code, out, err) = run(
        &[
            "restore", "--to", &to, "--seq", "3", "--json", "--config", cfg_s,
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (
            plan["objects"].as_u64(),
            plan["absent"].as_u64(),
            plan["executed"].as_bool()
        ),
        (Some(3), Some(1), Some(false)),
        "{plan}"
    );
    assert!(!dest.join("doc/1").exists(), "a plan writes nothing");

    let (code, out, err) = run(
        &[
            "restore",
            "--to",
            &to,
            "--as-of",
            &between,
            "--execute",
            "--config",
            cfg_s,
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored as of seq 3"), "{out}");
    let read = |k: &str| std::fs::read_to_string(dest.join(k)).ok();
    assert_eq!(read("doc/1").as_deref(), Some("one-v1"));
    assert_eq!(read("doc/2").as_deref(), Some("two-v1"));
    assert_eq!(read("keep").as_deref(), Some("same"));
    assert_eq!(read("doc/3"), None, "written after the point");

    let live = walship::config::file_url(&dir.join("targets").join("replica-1"));
    let (code, _, err) = run(
        &["restore", "--to", &live, "--execute", "--config", cfg_s],
        dir,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("replica-1") && err.contains("another store"),
        "{err}"
    );
    let (code, _, err) = run(
        &["restore", "--to", &to, "--seq", "99", "--config", cfg_s],
        dir,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("past the log's head"), "{err}");

    // With no sidecar running, from the data dir and the config's primary.
    assert!(sc.term().success());
    let offline = dir.join("restored-offline");
    let to = walship::config::file_url(&offline);
    let (code, _, err) = run(
        &[
            "restore",
            "--to",
            &to,
            "--seq",
            "3",
            "--execute",
            "--config",
            cfg_s,
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("offline"), "{err}");
    assert_eq!(
        std::fs::read_to_string(offline.join("doc/2"))
            .ok()
            .as_deref(),
        Some("two-v1")
    );
    assert!(!offline.join("doc/3").exists());
}

/// Runs `cmd` and says whether it succeeded; a missing tool is SKIPPED
/// (a failure in CI, which installs it).
fn checker(cmd: &mut Command, what: &str) -> Option<bool> {
    match cmd.output() {
        Ok(o) => {
            if !o.status.success() {
                eprintln!(
                    "{what}:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Some(o.status.success())
        }
        Err(e) => {
            skip::skip(&format!("{what}: {e}"));
            None
        }
    }
}

/// deploy/: the systemd unit, the pod and the alert rules pass their own
/// checkers, and a real Prometheus scraping a sidecar sees its series and
/// fires `WalshipTargetUnhealthy` for a replica that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_pass_their_checkers_and_prometheus_alerts() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let deploy = repo.join("deploy");
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    // systemd-analyze checks that ExecStart exists: point it at this binary.
    let unit = std::fs::read_to_string(deploy.join("walship.service")).expect("unit");
    let unit_path = dir.join("walship.service");
    std::fs::write(
        &unit_path,
        unit.replace("/usr/local/bin/walship", &bin().display().to_string()),
    )
    .expect("unit");
    for (ok, what) in [
        (
            checker(
                Command::new("systemd-analyze")
                    .arg("verify")
                    .arg(&unit_path),
                "systemd-analyze verify",
            ),
            "unit",
        ),
        (
            checker(
                Command::new("promtool")
                    .args(["check", "rules"])
                    .arg(deploy.join("alerts.yml")),
                "promtool check rules",
            ),
            "rules",
        ),
        (
            checker(
                Command::new("kubernetes-validate")
                    .args(["-k", "1.29.0"])
                    .arg(deploy.join("pod.yaml")),
                "kubernetes-validate",
            ),
            "pod",
        ),
    ] {
        assert_ne!(
            ok,
            Some(false),
            "{what} does not pass its checker (see above)"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("json");
    assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));

    // A sidecar whose replica-2 cannot be reached, scraped by Prometheus
    // with the rules (their `for` shortened so the test need not wait).
    let port = free_port();
    let cfg = dir.join("walship.toml");
    let closed = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&cfg, config_with_a_bad_replica(dir, port, &closed)).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    put_numbered(&sc.base, 3).await;
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).expect("rules");
    let rules = rules_firing_at_once(&rules);
    std::fs::write(dir.join("alerts.yml"), rules).expect("rules");
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: walship\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n",
            dir.join("alerts.yml").display()
        ),
    )
    .expect("prometheus config");
    let prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn();
    let mut prom = match prom {
        Ok(p) => p,
        Err(e) => {
            skip::skip(&format!(
                "the Prometheus scrape: cannot run prometheus: {e}"
            ));
            return;
        }
    };
    let c = sidecar::client();
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");
    let mut lag_seen = false;
    let mut fired = false;
    for _ in 0..120 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Ok(r) = c
            .get(format!("{api}/query"))
            .query(&[("query", "walship_lag_entries{target=\"replica-2\"}")])
            .send()
            .await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            lag_seen |= v["data"]["result"].as_array().is_some_and(|a| {
                a.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|x| x.parse::<f64>().ok())
                        .is_some_and(|x| x >= 3.0)
                })
            });
        }
        if let Ok(r) = c.get(format!("{api}/alerts")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            fired = v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "WalshipTargetUnhealthy"
                        && x["labels"]["target"] == "replica-2"
                        && x["state"] == "firing"
                })
            });
        }
        if lag_seen && fired {
            break;
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        lag_seen,
        "Prometheus never saw replica-2's lag; its log:\n{log}"
    );
    assert!(
        fired,
        "WalshipTargetUnhealthy never fired for replica-2; its log:\n{log}"
    );
    drop(sc);
}

/// The rules with every `for:` at 0s.
fn rules_firing_at_once(rules: &str) -> String {
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// deploy/: the image (the binary and the libraries it links on an empty
/// image, built by deploy/build-image.sh with buildah) starts, answers
/// /healthz and takes a write on its embedded default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_image_builds_and_serves() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tag = format!("walship-test:{}", std::process::id());
    let Some(built) = checker(
        Command::new("bash")
            .arg(repo.join("deploy/build-image.sh"))
            .arg(bin())
            .arg(&tag),
        "deploy/build-image.sh (buildah)",
    ) else {
        return;
    };
    assert!(built, "the image did not build (see above)");
    let from = Command::new("buildah")
        .args(["from", "-q", &tag])
        .output()
        .expect("buildah from");
    assert!(
        from.status.success(),
        "{}",
        String::from_utf8_lossy(&from.stderr)
    );
    let ctr = String::from_utf8_lossy(&from.stdout).trim().to_string();
    let port = free_port();
    let s3_port = free_port();
    let mut run = Command::new("buildah")
        .args(["run", "--isolation", "chroot", "--network", "host", "--env"])
        .arg(format!("WALSHIP_LISTEN=127.0.0.1:{port}"))
        .arg("--env")
        .arg(format!("WALSHIP_S3_LISTEN=127.0.0.1:{s3_port}"))
        .args([ctr.as_str(), "--", "/usr/local/bin/walship", "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("buildah run");
    let c = sidecar::client();
    let base = format!("http://127.0.0.1:{port}");
    let up = sidecar::answers(&base, 400).await;
    let put = if up {
        c.put(format!("{base}/v1/objects/in/the/image"))
            .body("hello")
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    } else {
        None
    };
    let got = if up {
        match c
            .get(format!("{base}/v1/objects/in/the/image"))
            .send()
            .await
        {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        }
    } else {
        None
    };
    let _ = run.kill();
    let _ = run.wait();
    let _ = Command::new("buildah").args(["rm", &ctr]).output();
    let _ = Command::new("buildah").args(["rmi", &tag]).output();
    assert!(up, "the image's walship never answered /healthz");
    assert_eq!(put, Some(200));
    assert_eq!(got.as_deref(), Some("hello"));
}

/// Guarantee 10 with health checks off: a replica wiped while walship was
/// down is noticed at open (its marker is checked once) and refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_wiped_while_stopped_is_refilled_at_open_even_without_health_checks() {
    let (root, port, cfg) = three_dirs("sync");
    let dir = root.path();
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace(
            "[replication]\n",
            "[replication]\nenable_health_checks = false\n",
        ),
    )
    .expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    put_numbered(&sc.base, 10).await;
    sc.wait_caught_up(std::time::Duration::from_secs(20)).await;
    // The first (open-time) marker check writes the markers.
    let replica = dir.join("targets/replica-2");
    for _ in 0..100 {
        if replica.join(".walship/target.json").is_file() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        replica.join(".walship/target.json").is_file(),
        "marked at open"
    );
    assert!(sc.term().success());
    std::fs::remove_dir_all(&replica).expect("wipe");
    std::fs::create_dir_all(&replica).expect("empty");
    let sc = Sidecar::start(&cfg, port).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read(replica.join("doc/7")).ok().as_deref()
        != Some(&b"entry-000007-of-the-log"[..])
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the wiped replica was not refilled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(sc.term().success());
}

/// SPEC "S3 API": a taken `[s3] listen` is a clear error at start, naming
/// the S3 API and the address, not a sidecar that half serves.
#[test]
fn serve_refuses_an_s3_listen_address_in_use() {
    let (root, _port, cfg) = three_dirs("async");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    std::fs::write(root.path().join("s3-secret"), "s\n").expect("secret");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "\n[s3]\nlisten = \"{addr}\"\nsecret_access_key_file = \"s3-secret\"\n[[s3.buckets]]\nname = \"results\"\n"
    ));
    std::fs::write(&cfg, text).expect("config");
    let out = run_within(
        Command::new(bin()).args(["serve", "--config"]).arg(&cfg),
        COMMAND_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "serve started beside a taken S3 port"
    );
    assert!(
        stderr.contains(&format!("listening on {addr} for the S3 API")),
        "{stderr}"
    );
    drop(taken);
}

/// The CLI reads the sidecar's answers as the types the server writes
/// (`src/api.rs`): an answer without the fields it needs (another version,
/// or not walship at all) is an error naming the field, not a line of
/// `null`s and a success.
#[test]
fn the_cli_refuses_an_answer_it_does_not_understand() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("127.0.0.1:{}", l.local_addr().expect("addr").port());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = r#"{"sequence":7,"acknowledged":["p"]}"#;
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("v"), "x").expect("value");
    let (code, out, err) = run(&["put", "k", "v", "--addr", &addr], dir.path());
    assert_ne!(code, 0, "stdout: {out}");
    assert!(
        err.contains("reading the answer") && err.contains("seq"),
        "{err}"
    );
    let (code, out, err) = run(&["pause", "r1", "--addr", &addr], dir.path());
    assert_ne!(code, 0, "stdout: {out}");
    assert!(err.contains("missing field"), "{err}");
}

/// The names of a process's threads, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_hands_freed_memory_back_unless_told_not_to() {
    // What keeps its resident size near the live heap (benches/rss.rs).
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = root.path().join("walship.toml");
    std::fs::write(&cfg, dir_config(root.path(), port, "async")).expect("config");
    let sc = Sidecar::start(&cfg, port).await;
    let names = thread_names(sc.child.id());
    assert!(
        names.iter().any(|n| n == "walship-trim"),
        "no allocator trim thread among {names:?}"
    );
    assert!(sc.term().success());
    let sc = Sidecar::start_with_env(&cfg, port, &[("WALSHIP_MALLOC_TRIM", "0".into())]).await;
    let names = thread_names(sc.child.id());
    assert!(
        !names.is_empty() && !names.iter().any(|n| n == "walship-trim"),
        "WALSHIP_MALLOC_TRIM=0 still trims: {names:?}"
    );
    assert!(sc.term().success());
}
