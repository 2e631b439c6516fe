//! The `walship` command line (SPEC.md "CLI").
//!
//! Exit status: 0 ok, 1 the operation failed, 2 bad usage or bad config.
//! Every command but `serve` and `init` finds the sidecar and the data
//! directory from `--config F` (default `./walship.toml` when it exists),
//! or from `--addr` / `--data-dir`.

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
    /// After `serve` refused a log that got shorter: record the lost seqs, move the head past them (offline).
    Repair {
        /// Accept that the missing entries are gone: record the range, move
        /// the head past it, and have every target that lacked them resynced
        /// from the acting primary when the sidecar starts.
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
        Command::Serve => {
            let cfg = match &cli.config {
                Some(p) => Config::load(p).map_err(|e| fail(2, format!("{}: {e}", p.display())))?,
                None => {
                    // The embedded default, under WALSHIP_DATA_DIR when set;
                    // the environment's listen and token apply too.
                    let cwd = std::env::current_dir()
                        .map_err(|e| fail(1, format!("reading the current directory: {e}")))?;
                    let mut cfg =
                        match std::env::var_os("WALSHIP_DATA_DIR").filter(|v| !v.is_empty()) {
                            Some(d) => Config::embedded_in(&cwd.join(d)),
                            None => Config::embedded_default(&cwd),
                        };
                    cfg.apply_env(|name| std::env::var(name).ok());
                    if let Some(f) = cfg.make_s3_secret()? {
                        eprintln!(
                            "walship: the S3 API's secret access key (access key id \"walship\") is in {}",
                            f.display()
                        );
                    }
                    let problems = cfg.sidecar_problems();
                    if !problems.is_empty() {
                        return Err(Error::Config { problems }.into());
                    }
                    cfg
                }
            };
            crate::server::serve(cfg).await?;
            Ok(())
        }
        Command::Init { dir, force } => init(dir, *force),
        Command::CheckConfig { file } => check_config(file),
        Command::Put { key, file, mode } => {
            let body = match file.as_deref() {
                None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    return Err(fail(
                        2,
                        format!(
                            "no FILE given and standard input is a terminal: pass a FILE (`walship put {key} FILE`), \
                             or pipe the data in (`... | walship put {key}`, or `-` to type it, ending with Ctrl-D)"
                        ),
                    ));
                }
                None => read_stdin()?,
                Some(p) if p == Path::new("-") => read_stdin()?,
                Some(p) => std::fs::read(p)
                    .map_err(|e| fail(1, format!("reading {}: {e}", p.display())))?,
            };
            let v = write(&cli, reqwest::Method::PUT, key, Some(body), mode.as_deref()).await?;
            if !cli.json {
                println!("seq {} acked by {} ({})", v.seq, join(&v.acked_by), v.mode);
            }
            Ok(())
        }
        Command::Delete { key, mode } => {
            let v = write(&cli, reqwest::Method::DELETE, key, None, mode.as_deref()).await?;
            if !cli.json {
                println!("deleted at seq {} acked by {}", v.seq, join(&v.acked_by));
            }
            Ok(())
        }
        Command::Get {
            key,
            read_preference,
        } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let mut r = c.req(reqwest::Method::GET, &object_path(key)?);
            if let Some(p) = read_preference {
                r = r.query(&[("read_preference", p)]);
            }
            let resp = check(r.send().await.map_err(|err| unreachable(&e.addr, err))?).await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (served_by, seq, content_type) = (
                header("x-walship-served-by"),
                header("x-walship-seq").and_then(|s| s.parse::<u64>().ok()),
                header("content-type"),
            );
            let bytes = resp
                .bytes()
                .await
                .map_err(|err| fail(1, format!("reading the answer: {err}")))?;
            if cli.json {
                // The value (as text when it is UTF-8; a binary one is only
                // flagged: `get` without --json writes its bytes) and where
                // it came from.
                let value = std::str::from_utf8(&bytes).ok();
                let mut out = serde_json::json!({
                    "key": key,
                    "seq": seq,
                    "served_by": served_by,
                    "size": bytes.len(),
                    "content_type": content_type,
                });
                match value {
                    Some(v) => out["value"] = serde_json::json!(v),
                    None => out["value_is_binary"] = serde_json::json!(true),
                }
                println!("{out}");
            } else {
                std::io::stdout()
                    .write_all(&bytes)
                    .map_err(|err| fail(1, format!("writing to standard output: {err}")))?;
            }
            Ok(())
        }
        Command::List {
            prefix,
            after,
            limit,
        } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let mut keys: Vec<ListedKey> = Vec::new();
            let mut after = after.clone().unwrap_or_default();
            let mut more = false;
            loop {
                let want = limit.map_or(1000, |l| l.saturating_sub(keys.len()).clamp(1, 1000));
                let r = c.req(reqwest::Method::GET, "/v1/objects").query(&[
                    ("prefix", prefix.clone().unwrap_or_default()),
                    ("after", after.clone()),
                    ("limit", want.to_string()),
                ]);
                let v: ListAnswer =
                    answer(r.send().await.map_err(|err| unreachable(&e.addr, err))?).await?;
                keys.extend(v.keys);
                match v.next_after {
                    Some(n) if limit.is_none_or(|l| keys.len() < l) => after = n,
                    Some(_) => {
                        more = true;
                        break;
                    }
                    None => break,
                }
            }
            let next_after = keys.last().filter(|_| more).map(|k| k.key.clone());
            if cli.json {
                print_json(&ListAnswer {
                    keys,
                    truncated: more,
                    next_after,
                })?;
            } else {
                println!("{:<8} {:>10}  KEY", "SEQ", "SIZE");
                for k in &keys {
                    println!("{:<8} {:>10}  {}", k.seq, k.size, k.key);
                }
                if let Some(last) = next_after {
                    println!("(more keys: --after {last})");
                }
            }
            Ok(())
        }
        Command::Status => {
            let e = endpoints(&cli)?;
            let report = status_report(&e).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", status_text(&report));
            }
            Ok(())
        }
        Command::Pause { target } | Command::Resume { target } => {
            let action = if matches!(cli.command, Command::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let path = format!(
                "/v1/targets/{}/{action}",
                url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
            );
            let v: StateAnswer = answer(
                c.req(reqwest::Method::POST, &path)
                    .send()
                    .await
                    .map_err(|err| unreachable(&e.addr, err))?,
            )
            .await?;
            if cli.json {
                print_json(&v)?;
            } else {
                println!("{target}: {}", state_name(v.state));
            }
            Ok(())
        }
        Command::Log { from, limit } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(f) = from {
                q.push(("from", f.to_string()));
            }
            let v: LogAnswer = match c
                .req(reqwest::Method::GET, "/v1/log")
                .query(&q)
                .send()
                .await
            {
                Ok(resp) => answer(resp).await?,
                Err(err) if err.is_connect() => {
                    say_offline(&e, "reading", "");
                    let storage = open_offline(&e.data_dir)?;
                    let first = crate::storage::LogStorage::bounds(&storage)?
                        .map(|(f, _)| f)
                        .unwrap_or(1);
                    crate::server::log_json(&storage, from.unwrap_or(first).max(1), *limit)?
                }
                Err(err) => return Err(unreachable(&e.addr, err)),
            };
            if cli.json {
                print_json(&v)?;
            } else {
                println!(
                    "{:>10}  {:<24}  {:<6}  {:>10}  {:<6}  KEY",
                    "SEQ", "TIME", "OP", "SIZE", "CRC"
                );
                let mut bad = 0;
                for e in &v.entries {
                    let r = &e.row;
                    bad += usize::from(!r.crc_ok);
                    println!(
                        "{:>10}  {:<24}  {:<6}  {:>10}  {:<6}  {}",
                        r.seq,
                        if r.crc_ok { e.time.as_str() } else { "?" },
                        r.op,
                        r.size,
                        if r.crc_ok { "ok" } else { "BAD" },
                        r.key
                    );
                    if let Some(err) = &r.error {
                        println!("            {err}");
                    }
                }
                println!("(log keeps seq {} to {})", v.first, v.head);
                if bad > 0 {
                    return Err(fail(
                        1,
                        format!(
                            "{bad} corrupt entr{} shown above",
                            if bad == 1 { "y" } else { "ies" }
                        ),
                    ));
                }
            }
            Ok(())
        }
        Command::Replay {
            target,
            from,
            since,
            execute,
        } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let mut q: Vec<(&str, String)> = vec![("dry_run", (!execute).to_string())];
            match (from, since) {
                (Some(f), _) => q.push(("from", f.to_string())),
                (None, Some(s)) => q.push(("since", s.clone())),
                (None, None) => return Err(fail(2, "replay needs --from SEQ or --since TIME")),
            }
            let path = format!("/v1/targets/{}/replay", enc(target));
            let plan: ReplayPlan = answer(
                c.req(reqwest::Method::POST, &path)
                    .query(&q)
                    .send()
                    .await
                    .map_err(|err| unreachable(&e.addr, err))?,
            )
            .await?;
            if cli.json {
                print_json(&plan)?;
            } else {
                println!(
                    "{} {}: seq {} to {}: {} entries, {} bytes, {} distinct keys",
                    if plan.executed {
                        "replaying"
                    } else {
                        "plan for"
                    },
                    plan.target,
                    plan.from,
                    plan.to,
                    plan.entries,
                    plan.bytes,
                    plan.keys
                );
                if !plan.executed {
                    println!(
                        "nothing changed; add --execute to move the cursor back and ship again"
                    );
                }
            }
            if plan.executed {
                wait_for_target(
                    &c,
                    &e,
                    target,
                    |row| row.cursor >= plan.to,
                    plan.from.saturating_sub(1),
                    plan.to,
                )
                .await?;
            }
            Ok(())
        }
        Command::Resync { target, no_wait } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let path = format!("/v1/targets/{}/resync", enc(target));
            let v: StateAnswer = answer(
                c.req(reqwest::Method::POST, &path)
                    .send()
                    .await
                    .map_err(|err| unreachable(&e.addr, err))?,
            )
            .await?;
            if !cli.json {
                println!(
                    "resyncing {target} from the acting primary; it ships from seq {} afterwards",
                    v.from.map_or_else(|| "?".to_string(), |f| f.to_string())
                );
            }
            if !no_wait {
                wait_for_target(
                    &c,
                    &e,
                    target,
                    |row| row.state != crate::status::TargetState::Syncing,
                    0,
                    0,
                )
                .await?;
                if !cli.json {
                    println!("{target}: resync done");
                }
            }
            if cli.json {
                print_json(&v)?;
            }
            Ok(())
        }
        Command::Restore {
            to,
            as_of,
            seq,
            prefix,
            execute,
        } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let mut q: Vec<(&str, String)> =
                vec![("to", to.clone()), ("execute", execute.to_string())];
            if let Some(s) = seq {
                q.push(("seq", s.to_string()));
            }
            if let Some(t) = as_of {
                q.push(("as_of", t.clone()));
            }
            if let Some(p) = prefix {
                q.push(("prefix", p.clone()));
            }
            let plan: crate::restore::RestorePlan = match c
                .req(reqwest::Method::POST, "/v1/restore")
                .query(&q)
                .send()
                .await
            {
                Ok(resp) => answer(resp).await?,
                Err(err) if err.is_connect() => {
                    let Some(cfg) = &e.cfg else {
                        return Err(fail(
                            2,
                            format!(
                                "no sidecar answered at {} and no config names the primary to read from; pass --config",
                                e.addr
                            ),
                        ));
                    };
                    say_offline(&e, "reading", "");
                    let storage: std::sync::Arc<dyn crate::storage::LogStorage> =
                        std::sync::Arc::new(open_offline(&e.data_dir)?);
                    let point = match (seq, as_of) {
                        (Some(s), _) => *s,
                        (None, Some(t)) => crate::restore::seq_as_of(
                            storage.as_ref(),
                            crate::server::parse_time(t)?,
                        )?,
                        (None, None) => crate::storage::LogStorage::bounds(storage.as_ref())?
                            .map(|(_, h)| h)
                            .unwrap_or(0),
                    };
                    let dest = crate::restore::destination(cfg, to)?;
                    let primary = crate::target::build_store(&cfg.primary)?;
                    crate::restore::restore(
                        storage,
                        primary,
                        dest,
                        crate::restore::RestoreRequest {
                            seq: point,
                            prefix: prefix.clone().unwrap_or_default(),
                            execute: *execute,
                        },
                    )
                    .await?
                }
                Err(err) => return Err(unreachable(&e.addr, err)),
            };
            if cli.json {
                print_json(&plan)?;
            } else {
                println!(
                    "{} as of seq {}: {} objects, {} bytes; {} keys absent then{}",
                    if plan.executed {
                        "restored"
                    } else {
                        "plan: restore"
                    },
                    plan.seq,
                    plan.objects,
                    plan.bytes,
                    plan.absent,
                    if plan.executed {
                        ""
                    } else {
                        " (nothing written; pass --execute)"
                    }
                );
                if !plan.unknown.is_empty() {
                    println!(
                        "{} keys skipped: their state then is no longer in the log (e.g. {})",
                        plan.unknown.len(),
                        plan.unknown
                            .iter()
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Ok(())
        }
        Command::Repair { accept_loss } => {
            let e = endpoints(&cli)?;
            repair(&e, *accept_loss, cli.json)
        }
        Command::Verify { target } => {
            let e = endpoints(&cli)?;
            let c = Client::connect(&e).await?;
            let mut r = c.req(reqwest::Method::GET, "/v1/verify");
            if let Some(t) = target {
                r = r.query(&[("target", t)]);
            }
            let report: VerifyReport = match r.send().await {
                Ok(resp) => {
                    let spinner = indicatif::ProgressBar::new_spinner()
                        .with_message("verifying (the sidecar compares every key)");
                    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                    let out = answer(resp).await;
                    spinner.finish_and_clear();
                    out?
                }
                Err(err) if err.is_connect() => {
                    say_offline(&e, "verifying", "");
                    offline_verify(&e, target.as_deref()).await?
                }
                Err(err) => return Err(unreachable(&e.addr, err)),
            };
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", verify_text(&report));
            }
            if report.ok {
                Ok(())
            } else {
                Err(fail(1, "verify found problems (listed above)"))
            }
        }
        Command::Conflicts { action } => conflicts(&cli, action.as_ref()).await,
        Command::Cursors => {
            let e = endpoints(&cli)?;
            let report = cursors_report(&e).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", cursors_table(&report));
            }
            Ok(())
        }
    }
}

async fn conflicts(cli: &Cli, action: Option<&ConflictsAction>) -> Result<(), Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    match action {
        None | Some(ConflictsAction::List) => {
            let list: Vec<ConflictRecord> =
                match c.req(reqwest::Method::GET, "/v1/conflicts").send().await {
                    Ok(resp) => answer::<ConflictsAnswer>(resp).await?.conflicts,
                    Err(err) if err.is_connect() => {
                        say_offline(&e, "reading", "");
                        let storage = open_offline(&e.data_dir)?;
                        crate::apply::list_conflicts(&storage)?
                    }
                    Err(err) => return Err(unreachable(&e.addr, err)),
                };
            if cli.json {
                print_json(&ConflictsAnswer { conflicts: list })?;
            } else {
                print!("{}", conflicts_table(&list));
            }
            Ok(())
        }
        Some(ConflictsAction::Resolve { id, keep }) => {
            let resp = c
                .req(
                    reqwest::Method::POST,
                    &format!("/v1/conflicts/{id}/resolve"),
                )
                .json(&serde_json::json!({ "keep": keep }))
                .send()
                .await
                .map_err(|err| unreachable(&e.addr, err))?;
            let v: ResolvedAnswer = answer(resp).await?;
            if cli.json {
                print_json(&v)?;
            } else {
                println!(
                    "conflict {id} resolved: {} on {} keeps the {} version",
                    v.resolved.key,
                    v.resolved.target,
                    match v.kept {
                        Keep::Primary => "primary",
                        Keep::Replica => "replica",
                    }
                );
            }
            Ok(())
        }
    }
}

/// The manual conflict queue as a table.
pub fn conflicts_table(list: &[ConflictRecord]) -> String {
    if list.is_empty() {
        return "no open conflicts\n".into();
    }
    let mut out = format!(
        "{:>5} {:<16} {:<32} {:>8} {:<24} {:<24}\n",
        "ID", "TARGET", "KEY", "SEQ", "PRIMARY (ours)", "REPLICA (target's)"
    );
    let side = |v: &crate::conflict::VersionInfo| {
        let when = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.ts_ms),
        );
        format!("{}B {when}", v.size)
    };
    for r in list {
        out.push_str(&format!(
            "{:>5} {:<16} {:<32} {:>8} {:<24} {:<24}\n",
            r.id,
            r.target,
            r.key,
            r.seq,
            side(&r.primary),
            side(&r.replica)
        ));
    }
    out
}

/// A put or delete through the sidecar; prints the answer with `--json`.
async fn write(
    cli: &Cli,
    method: reqwest::Method,
    key: &str,
    body: Option<Vec<u8>>,
    mode: Option<&str>,
) -> Result<WriteAnswer, Failure> {
    let e = endpoints(cli)?;
    let c = Client::connect(&e).await?;
    let mut r = c.req(method, &object_path(key)?);
    if let Some(b) = body {
        r = r.body(b);
    }
    if let Some(m) = mode {
        r = r.query(&[("mode", m)]);
    }
    let v: WriteAnswer = answer(r.send().await.map_err(|err| unreachable(&e.addr, err))?).await?;
    if cli.json {
        print_json(&v)?;
    }
    Ok(v)
}

fn join(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// A state as SPEC.md spells it (`active`, `syncing`, …).
fn state_name(s: crate::status::TargetState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| fail(1, format!("reading standard input: {e}")))?;
    Ok(buf)
}

fn init(dir: &Path, force: bool) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(1, format!("creating {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| fail(1, format!("resolving {}: {e}", dir.display())))?;
    let path = dir.join("walship.toml");
    if path.exists() && !force {
        return Err(fail(
            1,
            format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
        ));
    }
    std::fs::write(&path, init_template(&dir))
        .map_err(|e| fail(1, format!("writing {}: {e}", path.display())))?;
    println!(
        "wrote {}; start it with: walship serve --config {}",
        path.display(),
        path.display()
    );
    Ok(())
}

fn check_config(file: &Path) -> Result<(), Failure> {
    match Config::load(file) {
        Ok(cfg) => {
            let s3 = cfg
                .s3
                .as_ref()
                .map(|s| {
                    format!(
                        ", S3 API on {} with {} bucket(s)",
                        s.listen,
                        s.buckets.len()
                    )
                })
                .unwrap_or_default();
            println!(
                "{}: ok ({} mode, primary {}, {} replica(s){s3})",
                file.display(),
                cfg.replication.mode.as_str(),
                cfg.primary.name,
                cfg.targets.len()
            );
            Ok(())
        }
        Err(Error::Config { problems }) => Err(fail(
            2,
            problems
                .iter()
                .map(|p| format!("{}: {p}", file.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        Err(e) => Err(fail(2, format!("{}: {e}", file.display()))),
    }
}

/// Asks the running sidecar; when none answers, reads the data directory.
async fn cursors_report(e: &Endpoints) -> Result<CursorsReport, Failure> {
    let c = Client::connect(e).await?;
    match c.req(reqwest::Method::GET, "/v1/cursors").send().await {
        Ok(resp) => answer(resp).await,
        Err(err) if err.is_connect() => {
            say_offline(e, "reading", "");
            offline_cursors(&e.data_dir)
        }
        Err(err) => Err(unreachable(&e.addr, err)),
    }
}

/// Asks the running sidecar; when none answers, builds what the data
/// directory can tell (no live health or metrics).
async fn status_report(e: &Endpoints) -> Result<StatusReport, Failure> {
    let c = Client::connect(e).await?;
    match c.req(reqwest::Method::GET, "/v1/status").send().await {
        Ok(resp) => answer(resp).await,
        Err(err) if err.is_connect() => {
            say_offline(e, "reading", ": no live health or metrics");
            let storage = open_offline(&e.data_dir)?;
            let cursors = crate::status::offline_report(&storage)?;
            let retained = crate::log::offline_retained_bytes(&storage)?;
            drop(storage);
            Ok(StatusReport::offline(
                cursors,
                e.mode.clone(),
                e.cfg.as_ref().map(|c| c.replication.enable_failover),
                retained,
                std::path::absolute(&e.data_dir)
                    .unwrap_or_else(|_| e.data_dir.clone())
                    .display()
                    .to_string(),
            ))
        }
        Err(err) => Err(unreachable(&e.addr, err)),
    }
}

/// `walship status` as text.
pub fn status_text(s: &StatusReport) -> String {
    let cursors = CursorsReport {
        head: s.head,
        targets: s.targets.clone(),
        offline: s.offline,
    };
    let mut out = cursors_table(&cursors);
    let f = &s.failover;
    out.push_str(&format!(
        "\nmode: {}    acting primary: {} (configured: {})    failover: {}    failovers: {}    failbacks: {}\n",
        s.mode,
        f.acting_primary,
        f.configured_primary,
        if f.enabled { "on" } else { "off" },
        f.failovers,
        f.failbacks
    ));
    out.push_str(&format!(
        "log: {} bytes kept; truncation held back by: {}\n",
        s.log_retained_bytes,
        s.truncation_held_by
            .as_deref()
            .unwrap_or("nobody (every target is caught up)")
    ));
    let m = &s.metrics;
    out.push_str(&format!(
        "writes: {} to primary, {} replicated, {} failed    conflicts: {} detected, {} resolved, {} open\n",
        m.writes_to_primary, m.writes_replicated, m.writes_failed, m.conflicts_detected, m.conflicts_resolved, s.open_conflicts
    ));
    for (name, rate) in &m.success_rate {
        let avg = m
            .average_replication_time_ms
            .get(name)
            .copied()
            .unwrap_or(0.0);
        out.push_str(&format!(
            "  {name}: success rate {:.3}, average replication {avg:.1} ms\n",
            rate
        ));
    }
    out
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

/// Polls the cursors report until `done` holds for `target`, with a
/// progress bar on a terminal (cursor from `lo` to `hi`, or resync text).
async fn wait_for_target(
    c: &Client,
    e: &Endpoints,
    target: &str,
    done: impl Fn(&crate::status::TargetRow) -> bool,
    lo: u64,
    hi: u64,
) -> Result<(), Failure> {
    let bar = if hi > lo {
        indicatif::ProgressBar::new(hi - lo)
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    // A resync has no length to show (it copies what the primary lists):
    // a spinner and its progress text, not a bar stuck at 0/0.
    let template = if hi > lo {
        "{spinner} {bar:40} {pos}/{len} {msg}"
    } else {
        "{spinner} {msg}"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let report: CursorsReport = answer(
            c.req(reqwest::Method::GET, "/v1/cursors")
                .send()
                .await
                .map_err(|err| unreachable(&e.addr, err))?,
        )
        .await?;
        let row = report
            .targets
            .iter()
            .find(|t| t.name == target)
            .ok_or_else(|| fail(1, format!("{target} is no longer in the cursors report")))?;
        if hi > lo {
            bar.set_position(row.cursor.saturating_sub(lo).min(hi - lo));
        }
        bar.set_message(row.progress.clone().unwrap_or_default());
        bar.tick();
        if done(row) {
            bar.finish_and_clear();
            return Ok(());
        }
        if row.state == crate::status::TargetState::Failed {
            bar.finish_and_clear();
            return Err(fail(
                1,
                format!(
                    "{target} failed: {}",
                    row.error.as_deref().unwrap_or("see `walship cursors`")
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `walship verify` as text: a summary and the first differences.
pub fn verify_text(r: &VerifyReport) -> String {
    let mut out = format!(
        "log: {} entries checked, {} corrupt\n",
        r.entries_checked,
        r.corrupt.len()
    );
    for c in r.corrupt.iter().take(20) {
        out.push_str(&format!("  seq {}: {}\n", c.seq, c.error));
    }
    for t in &r.targets {
        out.push_str(&format!(
            "{}: {} keys checked, {} pending (not yet shipped), {} different\n",
            t.name,
            t.keys_checked,
            t.pending,
            t.differences.len()
        ));
        for d in t.differences.iter().take(20) {
            out.push_str(&format!(
                "  {} (seq {}): {}: {}\n",
                d.key, d.seq, d.problem, d.detail
            ));
        }
        if t.differences.len() > 20 {
            out.push_str(&format!(
                "  … and {} more (--json lists all)\n",
                t.differences.len() - 20
            ));
        }
    }
    out.push_str(if r.ok { "ok\n" } else { "PROBLEMS FOUND\n" });
    out
}

/// `walship repair [--accept-loss]`, offline (sled's lock refuses it while
/// a sidecar has the data dir open).
fn repair(e: &Endpoints, accept_loss: bool, json: bool) -> Result<(), Failure> {
    let storage = open_offline(&e.data_dir)?;
    let primary = match &e.cfg {
        Some(c) => Some(c.primary.name.clone()),
        None => crate::status::offline_primary(&storage)?,
    };
    let log_head = crate::storage::LogStorage::bounds(&storage)?
        .map(|(_, h)| h)
        .unwrap_or(0);
    let mark = crate::storage::LogStorage::head_mark(&storage);
    if !accept_loss {
        let what = match mark {
            Ok(Some(m)) if m.acked > log_head => format!(
                "the log ends at seq {log_head} but seqs up to {} were acknowledged: {}..={} are lost",
                m.acked,
                log_head + 1,
                m.acked
            ),
            Err(err) => err.to_string(),
            Ok(_) => format!("the log is whole (head {log_head}); nothing to repair"),
        };
        return Err(fail(
            2,
            format!("{what}. Nothing was changed; pass --accept-loss to record the loss and go on"),
        ));
    }
    match crate::log::repair(&storage, primary.as_deref())? {
        None => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "repaired": false, "head": log_head })
                );
            } else {
                println!("the log is whole (head {log_head}); nothing to repair");
            }
        }
        Some(r) => {
            if json {
                println!("{}", serde_json::json!({ "repaired": true, "lost": r }));
            } else if r.lost_from > r.lost_to {
                println!(
                    "the head record was missing or damaged; it now says the log's head, {}",
                    r.head
                );
            } else {
                println!(
                    "recorded seqs {}..={} as lost; the head is {} and the next write gets seq {}. \
                     Every target that had not applied them is resynced from the acting primary \
                     when walship serve starts",
                    r.lost_from,
                    r.lost_to,
                    r.head,
                    r.head + 1
                );
            }
        }
    }
    Ok(())
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

/// Verify without a sidecar: the log from the data directory, the targets
/// from the config's URLs (without a config only the crc check runs).
async fn offline_verify(e: &Endpoints, only: Option<&str>) -> Result<VerifyReport, Failure> {
    let storage: std::sync::Arc<dyn crate::storage::LogStorage> =
        std::sync::Arc::new(open_offline(&e.data_dir)?);
    let keys = crate::replicator::latest_keys(storage.as_ref())?;
    let mut targets = Vec::new();
    match &e.cfg {
        Some(cfg) => {
            for (_, t) in cfg.all_targets() {
                if only.is_some_and(|n| n != t.name) {
                    continue;
                }
                targets.push(crate::replicator::VerifyTarget {
                    name: t.name.clone(),
                    store: crate::target::build_store(t)?,
                    cursor: storage.cursor(&t.name)?.unwrap_or(0),
                });
            }
            if let Some(n) = only
                && targets.is_empty()
            {
                return Err(Error::UnknownTarget(n.to_string()).into());
            }
        }
        None => eprintln!(
            "no config: only the log's crc is checked (pass --config to compare the targets)"
        ),
    }
    let bar = indicatif::ProgressBar::new(keys.len() as u64 * targets.len() as u64);
    let b = bar.clone();
    let progress: crate::replicator::Progress =
        std::sync::Arc::new(move |done, _| b.set_position(done));
    let report = crate::replicator::verify(storage, &keys, &targets, progress).await?;
    bar.finish_and_clear();
    Ok(report)
}

fn offline_cursors(data_dir: &Path) -> Result<CursorsReport, Failure> {
    if !data_dir.join("log").exists() {
        return Err(fail(
            1,
            format!(
                "no walship log in {} (pass --data-dir or --config)",
                data_dir.display()
            ),
        ));
    }
    let storage = crate::storage::SledStorage::open(data_dir, 16 << 20)?;
    Ok(crate::status::offline_report(&storage)?)
}

fn ser<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The cursors table as `walship cursors` prints it.
pub fn cursors_table(r: &CursorsReport) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<12} {:<9} {:<8} {:>10} {:>10} {:>11} {:>11} {:>9}\n",
        "NAME",
        "ROLE",
        "REGION",
        "HEALTH",
        "STATE",
        "CURSOR",
        "HEAD",
        "LAG_ENTRIES",
        "LAG_BYTES",
        "LAG_MS"
    );
    for t in &r.targets {
        out.push_str(&format!(
            "{:<16} {:<12} {:<12} {:<9} {:<8} {:>10} {:>10} {:>11} {:>11} {:>9}\n",
            t.name,
            ser(&t.role),
            t.region,
            ser(&t.health),
            ser(&t.state),
            t.cursor,
            r.head,
            t.lag_entries,
            t.lag_bytes,
            t.lag_ms
        ));
    }
    for t in &r.targets {
        if let Some(e) = &t.error {
            out.push_str(&format!("{}: {e}\n", t.name));
        }
    }
    out
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
