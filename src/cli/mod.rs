//! The `walship` command line (SPEC.md "CLI").
//!
//! Exit status: 0 ok, 1 the operation failed, 2 bad usage or bad config.
//! Every command but `serve` and `init` finds the sidecar and the data
//! directory from `--config F` (default `./walship.toml` when it exists),
//! or from `--addr` / `--data-dir`.
//!
//! One file per command group (`serve`, `objects`, `targets`, `logs`,
//! `conflicts`); this one holds the arguments, the dispatch, and what
//! every command shares: finding the sidecar, asking it, reading answers.

use crate::api::{
    ConflictsAnswer, ListAnswer, ListedKey, LogAnswer, ResolvedAnswer, StateAnswer, WriteAnswer,
};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, init_template};
use crate::conflict::{ConflictRecord, Keep};
use crate::error::Error;
use crate::replicator::{ReplayPlan, VerifyReport};
use crate::status::{CursorsReport, StatusReport};

mod conflicts;
mod logs;
mod objects;
mod serve;
mod targets;

pub use conflicts::conflicts_table;
pub use logs::verify_text;
pub use targets::{cursors_table, status_text};

/// walship: a durable write-ahead-log replicator.
#[derive(Debug, Parser)]
#[command(name = "walship", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: ./walship.toml when it exists).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Address of a running sidecar (default: the config's `listen`).
    #[arg(long, global = true)]
    pub addr: Option<String>,
    /// Data directory, for reading the log when no sidecar runs (default: the config's `data_dir`).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines as `text` (default) or `json` (one JSON object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// File holding the sidecar's bearer token (else WALSHIP_TOKEN, else the config's auth_token_file).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How `walship` writes its log lines (standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (without --config: the embedded default, local directories under ./walship-data, the HTTP API on 127.0.0.1:7600 and the S3 API on 127.0.0.1:7602 with bucket "results").
    Serve,
    /// Write a commented walship.toml to start from.
    Init {
        /// Directory to write it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite an existing walship.toml.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config file without starting (exit 2 on problems).
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Store an object: the contents of FILE, or standard input with `-` or no FILE.
    Put {
        /// Object key.
        key: String,
        /// File to upload (`-` for standard input).
        file: Option<PathBuf>,
        /// Override the replication mode for this write: sync, semi_sync or async.
        #[arg(long)]
        mode: Option<String>,
    },
    /// Print an object to standard output.
    Get {
        /// Object key.
        key: String,
        /// primary, secondary, nearest or any.
        #[arg(long)]
        read_preference: Option<String>,
    },
    /// Delete an object (a log entry like a put).
    Delete {
        /// Object key.
        key: String,
        /// Override the replication mode for this write.
        #[arg(long)]
        mode: Option<String>,
    },
    /// List keys with their latest seq, in key order: every key (page by page) unless --limit.
    List {
        /// Key prefix.
        prefix: Option<String>,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
        /// At most this many keys (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Per target: role, region, health, state, cursor, head and lag.
    Cursors,
    /// The cursors table plus mode, failover state, metrics summary, conflicts.
    Status,
    /// Stop shipping to a target; it keeps its cursor and sync stops waiting for it.
    /// Refused (exit 2) while the target is being resynced.
    Pause {
        /// Target name.
        target: String,
    },
    /// Ship to a paused (or failed) target again, from its cursor.
    /// Refused (exit 2) while the target is being resynced; it ships by itself after.
    Resume {
        /// Target name.
        target: String,
    },
    /// Copy everything from the acting primary to a target, then ship from the log.
    Resync {
        /// Target name.
        target: String,
        /// Return at once instead of showing progress until it is done.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move a target's cursor back and ship again (after it lost data). Prints the plan unless --execute.
    Replay {
        /// Target name.
        target: String,
        /// First seq to ship again.
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        from: Option<u64>,
        /// Ship again everything appended since TIME (RFC 3339, unix ms, or a duration ago such as 10m).
        #[arg(long)]
        since: Option<String>,
        /// Do it (without this flag only the plan is printed and nothing changes).
        #[arg(long)]
        execute: bool,
    },
    /// Check every entry's crc, then compare targets with the latest version of every key.
    Verify {
        /// Only this target.
        target: Option<String>,
    },
    /// The manual conflict queue: list it, or resolve one conflict.
    Conflicts {
        /// list (the default) or resolve.
        #[command(subcommand)]
        action: Option<ConflictsAction>,
    },
    /// Write the objects as they stood at a point (the log's versions, the acting primary's for keys unchanged since) into another store. Prints the plan unless --execute.
    Restore {
        /// The store to write into (s3://, gs://, az://, file:///abs/path), not a configured target.
        #[arg(long)]
        to: String,
        /// As of this time (RFC 3339, unix ms, or a duration ago such as 10m); default: now.
        #[arg(long, conflicts_with = "seq")]
        as_of: Option<String>,
        /// As of this seq.
        #[arg(long)]
        seq: Option<u64>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Do it (without this flag only the plan is printed and nothing changes).
        #[arg(long)]
        execute: bool,
    },
    /// After `serve` refused its log (shorter than its head record, or the record missing or damaged): says what it found and changes nothing; with --accept-loss, moves on (offline).
    Repair {
        /// Accept that the missing entries are gone: record the range, move
        /// the head past it, and have every target that lacked them resynced
        /// from the acting primary when the sidecar starts. With the head
        /// record missing or damaged over an intact log: write it anew from
        /// the log's head.
        #[arg(long)]
        accept_loss: bool,
    },
    /// The log's entries: seq, time, op, key, size, crc ok.
    Log {
        /// First seq (default: the oldest kept).
        #[arg(long)]
        from: Option<u64>,
        /// How many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `walship conflicts …`.
#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// Every open conflict: id, key, target, both versions.
    List,
    /// Keep one version: `primary` (the acting primary's; for a conflict on
    /// the acting primary, this log's) or `replica` (the target's).
    ///
    /// Refused (409, exit 2) when the target's version changed since the
    /// record (the record then shows the new one: look again with `walship
    /// conflicts`), or while the target is being resynced (the copy settles
    /// the conflict).
    Resolve {
        /// The conflict id (from `walship conflicts`).
        id: u64,
        /// primary or replica.
        #[arg(long)]
        keep: crate::conflict::Keep,
    },
}

/// A failed command: the message and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// 1: the operation failed; 2: bad usage or config.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Config { .. } | Error::InvalidKey { .. } | Error::BadRequest(_) => 2,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Where the client commands look.
struct Endpoints {
    cfg: Option<Config>,
    mode: Option<String>,
    addr: String,
    data_dir: PathBuf,
    token: Option<String>,
    /// The address came from the config (so the sidecar there must be
    /// that config's).
    addr_from_config: bool,
}

fn endpoints(cli: &Cli) -> Result<Endpoints, Failure> {
    let cfg_path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("walship.toml")).filter(|p| p.exists()),
    };
    let cfg = match &cfg_path {
        Some(p) => Some(Config::load(p).map_err(|e| fail(2, format!("{}: {e}", p.display())))?),
        None => None,
    };
    let addr = cli
        .addr
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.listen.clone()))
        .unwrap_or_else(|| "127.0.0.1:7600".into());
    let data_dir = cli
        .data_dir
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("walship-data"));
    let token = if let Ok(t) = std::env::var("WALSHIP_TOKEN")
        && !t.trim().is_empty()
    {
        Some(t.trim().to_string())
    } else if let Some(f) = &cli.token_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| fail(2, format!("reading --token-file {}: {e}", f.display())))?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    } else {
        match &cfg {
            Some(c) => crate::server::load_token(c)?,
            None => None,
        }
    };
    let addr_from_config = cli.addr.is_none() && cfg.is_some();
    let mode = cfg
        .as_ref()
        .map(|c| c.replication.mode.as_str().to_string());
    Ok(Endpoints {
        cfg,
        mode,
        addr,
        data_dir,
        token,
        addr_from_config,
    })
}

struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client for the sidecar at the endpoints' address. When that
    /// address came from a config, the sidecar answering there must serve
    /// that config's data_dir: another sidecar holding the port is refused,
    /// naming both (one that does not answer is left to the caller).
    async fn connect(e: &Endpoints) -> Result<Client, Failure> {
        let c = Client::new(e);
        let Some(cfg) = e.cfg.as_ref().filter(|_| e.addr_from_config) else {
            return Ok(c);
        };
        let Ok(resp) = c.req(reqwest::Method::GET, "/v1/status").send().await else {
            return Ok(c);
        };
        if !resp.status().is_success() {
            return Ok(c);
        }
        let Ok(s) = resp.json::<StatusReport>().await else {
            return Ok(c);
        };
        let ours = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
        let same = |a: &Path, b: &Path| {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        };
        if !s.data_dir.is_empty() && !same(Path::new(&s.data_dir), &ours) {
            return Err(fail(
                2,
                format!(
                    "the sidecar at {} serves data_dir {} (sidecar_id {}), not this config's data_dir {}; \
                     another sidecar holds that address (or this one was started with another data_dir). Pass --addr to reach this config's sidecar, or \
                     --config for that one",
                    e.addr,
                    s.data_dir,
                    s.sidecar_id,
                    ours.display()
                ),
            ));
        }
        Ok(c)
    }

    fn new(e: &Endpoints) -> Client {
        let base = if e.addr.starts_with("http://") || e.addr.starts_with("https://") {
            e.addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", e.addr)
        };
        Client {
            base,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            token: e.token.clone(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

/// The API path of a key, checked first so a bad key fails here (exit 2)
/// and not as a confusing answer from the server.
fn object_path(key: &str) -> Result<String, Failure> {
    crate::key::Key::parse(key)?;
    let mut out = String::from("/v1/objects/");
    for (i, seg) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(
            &url::form_urlencoded::byte_serialize(seg.as_bytes())
                .collect::<String>()
                .replace('+', "%20"),
        );
    }
    Ok(out)
}

/// Turns a non-2xx answer into a failure carrying the server's message.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, Failure> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    let code = if status.is_client_error() && status != reqwest::StatusCode::NOT_FOUND {
        2
    } else {
        1
    };
    Err(fail(code, format!("{status}: {msg}")))
}

/// Tells standard error that the command reads the data dir itself.
fn say_offline(e: &Endpoints, verb: &str, extra: &str) {
    eprintln!(
        "no sidecar answered at {}; {verb} {} directly (offline, read-only{extra})",
        e.addr,
        e.data_dir.display()
    );
}

/// A successful answer's JSON body (see `check` for the others).
async fn answer<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, Failure> {
    let resp = check(resp).await?;
    let url = resp.url().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|err| fail(1, format!("reading the answer: {err}")))?;
    serde_json::from_slice(&body).map_err(|err| {
        fail(
            1,
            format!(
                "reading the answer: {url} answered with a body this walship does not understand ({err}); \
                 is it a walship sidecar of the same version as this CLI?"
            ),
        )
    })
}

fn unreachable(addr: &str, e: reqwest::Error) -> Failure {
    fail(
        1,
        format!(
            "no sidecar answered at {addr} ({e}); start one with `walship serve` or pass --addr"
        ),
    )
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve => serve::serve(&cli).await,
        Command::Init { dir, force } => serve::init(dir, *force),
        Command::CheckConfig { file } => serve::check_config(file),
        Command::Put { key, file, mode } => objects::put(&cli, key, file, mode).await,
        Command::Delete { key, mode } => objects::delete(&cli, key, mode).await,
        Command::Get {
            key,
            read_preference,
        } => objects::get(&cli, key, read_preference).await,
        Command::List {
            prefix,
            after,
            limit,
        } => objects::list(&cli, prefix, after, limit).await,
        Command::Status => targets::status(&cli).await,
        Command::Cursors => targets::cursors(&cli).await,
        Command::Pause { target } => targets::set_state(&cli, target, "pause").await,
        Command::Resume { target } => targets::set_state(&cli, target, "resume").await,
        Command::Resync { target, no_wait } => targets::resync(&cli, target, no_wait).await,
        Command::Log { from, limit } => logs::log(&cli, from, limit).await,
        Command::Replay {
            target,
            from,
            since,
            execute,
        } => logs::replay(&cli, target, from, since, execute).await,
        Command::Restore {
            to,
            as_of,
            seq,
            prefix,
            execute,
        } => logs::restore(&cli, to, as_of, seq, prefix, execute).await,
        Command::Repair { accept_loss } => {
            let e = endpoints(&cli)?;
            logs::repair(&e, *accept_loss, cli.json)
        }
        Command::Verify { target } => logs::verify(&cli, target).await,
        Command::Conflicts { action } => conflicts::conflicts(&cli, action.as_ref()).await,
    }
}

fn join(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Prints `v` as one line of JSON (`--json`).
fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string(v).map_err(|err| fail(1, format!("encoding JSON: {err}")))?;
    println!("{text}");
    Ok(())
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn open_offline(data_dir: &Path) -> Result<crate::storage::SledStorage, Failure> {
    if !data_dir.join("log").exists() {
        return Err(fail(
            1,
            format!(
                "no walship log in {} (pass --data-dir or --config)",
                data_dir.display()
            ),
        ));
    }
    Ok(crate::storage::SledStorage::open(data_dir, 16 << 20)?)
}

fn ser<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflict::VersionInfo;

    #[test]
    fn conflict_times_show_milliseconds() {
        let v = |ts_ms| VersionInfo {
            etag: None,
            ts_ms,
            size: 3,
            origin: String::new(),
        };
        let rec = ConflictRecord {
            id: 1,
            key: "k".into(),
            target: "r1".into(),
            detected_ms: 0,
            seq: 2,
            op: "put".into(),
            primary: v(1_700_000_000_123),
            replica: v(1_700_000_000_456),
        };
        let t = conflicts_table(&[rec]);
        assert!(
            t.contains("2023-11-14T22:13:20.123Z") && t.contains(".456Z"),
            "{t}"
        );
    }
}
