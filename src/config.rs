//! The config file (TOML) of SPEC.md, its defaults and its validation.
//!
//! Invariant: a [`Config`] returned by [`Config::from_toml`] or
//! [`Config::load`] has passed [`Config::problems`]: unique target names,
//! at least one replica, a sane `min_sync_replicas`, positive timeouts,
//! known URL schemes and known store options. Unknown keys are rejected by
//! serde (`deny_unknown_fields`), so a typo never silently becomes a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many targets a write waits for (SPEC guarantee 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every replica that is not paused or removed.
    Sync,
    /// `min_sync_replicas` replicas.
    SemiSync,
    /// No replica: the durable append and the acting primary.
    #[default]
    Async,
}

impl Mode {
    /// The name used in the config, the API and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::SemiSync => "semi_sync",
            Mode::Async => "async",
        }
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "sync" => Ok(Mode::Sync),
            "semi_sync" => Ok(Mode::SemiSync),
            "async" => Ok(Mode::Async),
            other => Err(Error::BadRequest(format!(
                "unknown mode {other:?}; use sync, semi_sync or async"
            ))),
        }
    }
}

/// Where reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadPreference {
    /// The acting primary.
    #[default]
    Primary,
    /// A healthy replica, read replicas first, else the primary.
    Secondary,
    /// A healthy target within 15 ms of the fastest.
    Nearest,
    /// Any healthy target.
    Any,
}

impl FromStr for ReadPreference {
    type Err = Error;
    fn from_str(s: &str) -> Result<ReadPreference> {
        match s {
            "primary" => Ok(ReadPreference::Primary),
            "secondary" => Ok(ReadPreference::Secondary),
            "nearest" => Ok(ReadPreference::Nearest),
            "any" => Ok(ReadPreference::Any),
            other => Err(Error::BadRequest(format!(
                "unknown read_preference {other:?}; use primary, secondary, nearest or any"
            ))),
        }
    }
}

/// What to do when a target holds a version this log did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConflictResolution {
    /// Newer timestamp wins.
    #[default]
    LastWriteWins,
    /// The version already there wins.
    FirstWriteWins,
    /// The acting primary's version wins.
    PrimaryWins,
    /// Merge both.
    Merge,
    /// Queue for a person.
    Manual,
}

/// The `[replication]` table (the seed's `ReplicationConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Default: `async`.
    pub mode: Mode,
    /// `semi_sync` only. Default: 1. Minimum: 1.
    pub min_sync_replicas: usize,
    /// Default: `primary`.
    pub read_preference: ReadPreference,
    /// Default: `last_write_wins`.
    pub conflict_resolution: ConflictResolution,
    /// Default: true.
    pub enable_health_checks: bool,
    /// Default: 30.0. Must be > 0.
    pub health_check_interval_seconds: f64,
    /// Lag past which a target is `degraded`. Default: 5000.0.
    pub max_replication_lag_ms: f64,
    /// Default: true.
    pub enable_failover: bool,
    /// Default: true.
    pub enable_metrics: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            mode: Mode::Async,
            min_sync_replicas: 1,
            read_preference: ReadPreference::Primary,
            conflict_resolution: ConflictResolution::LastWriteWins,
            enable_health_checks: true,
            health_check_interval_seconds: 30.0,
            max_replication_lag_ms: 5000.0,
            enable_failover: true,
            enable_metrics: true,
        }
    }
}

fn default_priority() -> u32 {
    1
}
fn default_sync_timeout() -> f64 {
    30.0
}
fn default_retries() -> u32 {
    3
}
fn default_retry_delay() -> f64 {
    1.0
}

/// A target (the seed's `ReplicaTarget`); `[primary]` takes the same fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Unique name: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// `s3://bucket/prefix`, `gs://…`, `az://container/prefix`,
    /// `file:///abs/path` or `memory://`.
    pub url: String,
    /// Free text, shown in `cursors`. Default: "".
    #[serde(default)]
    pub region: String,
    /// Failover order, lower first. Default: 1.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Serves reads, never promoted. Default: false.
    #[serde(default)]
    pub is_read_replica: bool,
    /// Bound of one request and of a write's wait. Default: 30.0. Must be > 0.
    #[serde(default = "default_sync_timeout")]
    pub sync_timeout_seconds: f64,
    /// Failures in a row before the target is marked unhealthy; shipping
    /// keeps retrying after that, with capped backoff. Default: 3.
    #[serde(default = "default_retries")]
    pub max_retry_attempts: u32,
    /// Base of the exponential backoff. Default: 1.0. Minimum: 0.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_seconds: f64,
    /// Handed to the object_store builder (`endpoint`, `allow_http`, …);
    /// for `file://`, `fsync = "false"` turns off fsync of each object.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./walship-data")
}
fn default_listen() -> String {
    "127.0.0.1:7600".into()
}
fn default_max_object_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_retention() -> f64 {
    86400.0
}
fn default_max_log_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}
fn default_grace() -> f64 {
    30.0
}
fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> f64 {
    10.0
}
fn default_cache() -> u64 {
    32 * 1024 * 1024
}

/// The whole config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The log, cursors, conflict records. Default: `./walship-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// HTTP API address. Default: `127.0.0.1:7600`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// When set, every request needs `Authorization: Bearer <token>`.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// Larger bodies get 413. Default: 16 MiB.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Entries are kept at least this long. Default: 86400.
    #[serde(default = "default_retention")]
    pub retention_seconds: f64,
    /// Past this the target holding truncation back is resynced. Default: 10 GiB.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// On SIGTERM, how long shipping may drain. Default: 30. Minimum: 0.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: f64,
    /// sled's page cache. Default: 32 MiB (sled's own 1 GiB default lets
    /// the process grow to hundreds of MiB on a large log; the resident
    /// size of a sidecar shipping a million-entry backlog is about 140 MiB
    /// at 32 MiB, measured in `benches/backlog.rs`).
    #[serde(default = "default_cache")]
    pub log_cache_bytes: u64,
    /// A `listen` outside loopback without `auth_token_file` is refused
    /// unless this is true. Default: false.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// HTTP connections served at once; more wait in the accept queue.
    /// Default: 1024. Minimum: 1.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client that has not sent its request headers, or stalls its body,
    /// this long is cut off. Default: 10. Between 1 ms and 1 year.
    #[serde(default = "default_header_timeout")]
    pub request_header_timeout_seconds: f64,
    /// The `[replication]` table.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// The primary store.
    pub primary: TargetConfig,
    /// The replicas.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// The S3 front door (`[s3]`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

/// The `[s3]` table: an S3 endpoint over the same log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// S3 API address. Default: `127.0.0.1:7602`.
    #[serde(default = "default_s3_listen")]
    pub listen: String,
    /// The access key id clients sign with. Default: `walship`.
    #[serde(default = "default_access_key_id")]
    pub access_key_id: String,
    /// A file holding the secret access key (trailing whitespace ignored).
    /// `WALSHIP_S3_SECRET_ACCESS_KEY` may give the secret instead.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// The secret from `WALSHIP_S3_SECRET_ACCESS_KEY` (never in the file).
    #[serde(skip)]
    pub secret_from_env: Option<String>,
    /// The region clients sign for and GetBucketLocation answers.
    /// Default: `us-east-1`.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Whether CreateBucket makes a bucket (kept in `data_dir`) and
    /// DeleteBucket removes an empty one. Default: false.
    #[serde(default)]
    pub allow_create_bucket: bool,
    /// The buckets clients name, each mapped to a key prefix.
    #[serde(default)]
    pub buckets: Vec<S3Bucket>,
}

/// One `[[s3.buckets]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Bucket {
    /// The bucket name clients use.
    pub name: String,
    /// The walship key prefix it maps to. Default: `NAME/`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// This bucket's writes use this mode (else `[replication] mode`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// This bucket's reads use this preference.
    #[serde(default)]
    pub read_preference: Option<ReadPreference>,
}

impl S3Bucket {
    /// The key prefix: `prefix`, or `NAME/`.
    pub fn key_prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("{}/", self.name))
    }
}

fn default_s3_listen() -> String {
    "127.0.0.1:7602".into()
}

fn default_access_key_id() -> String {
    "walship".into()
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

/// Whether `name` is a bucket name S3 accepts: 3–63 characters of
/// lowercase letters, digits, `.` and `-`, starting and ending with a
/// letter or digit, no `..`, not an IP address.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// Problems of an `[s3]` table, one line each, naming the field.
pub fn s3_problems(s3: &S3Config, p: &mut Vec<String>) {
    if s3.listen.parse::<SocketAddr>().is_err() {
        p.push(format!(
            "s3.listen: {:?} is not an address like 127.0.0.1:7602",
            s3.listen
        ));
    }
    if s3.access_key_id.is_empty()
        || s3
            .access_key_id
            .chars()
            .any(|c| c.is_whitespace() || c == '/')
    {
        p.push(format!(
            "s3.access_key_id: {:?} must be non-empty, without spaces or '/'",
            s3.access_key_id
        ));
    }
    if s3.secret_access_key_file.is_none() && s3.secret_from_env.is_none() {
        p.push(crate::s3::NO_SECRET.into());
    }
    if s3.region.is_empty()
        || !s3
            .region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        p.push(format!(
            "s3.region: {:?} must be a region name like us-east-1",
            s3.region
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, b) in s3.buckets.iter().enumerate() {
        let field = format!("s3.buckets[{i}]");
        if !valid_bucket_name(&b.name) {
            p.push(format!(
                "{field}.name: {:?} is not an S3 bucket name (3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit)",
                b.name
            ));
        }
        if !names.insert(b.name.as_str()) {
            p.push(format!("{field}.name: bucket {:?} is given twice", b.name));
        }
        let prefix = b.key_prefix();
        if let Some(why) = prefix_problem(&prefix) {
            p.push(format!("{field}.prefix: {prefix:?} {why}"));
        }
        for (j, other) in s3.buckets.iter().enumerate().take(i) {
            let theirs = other.key_prefix();
            if prefix.starts_with(&theirs) || theirs.starts_with(&prefix) {
                p.push(format!(
                    "{field}.prefix: {prefix:?} overlaps s3.buckets[{j}]'s {theirs:?}; a key would be in two buckets, so give each bucket a prefix of its own"
                ));
            }
        }
    }
}

/// Why `prefix` cannot be a bucket's key prefix, if it cannot.
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        return None;
    }
    if prefix.starts_with('/') {
        return Some("must not start with '/'");
    }
    if prefix.split('/').any(|s| s == "..") {
        return Some("must not hold a '..' segment");
    }
    if prefix.chars().any(|c| c.is_control()) {
        return Some("must not hold control characters");
    }
    if prefix.len() > 512 {
        return Some("is longer than 512 bytes");
    }
    None
}

/// A target URL, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    /// `memory://`: in this process only, for tests and trials.
    Memory,
    /// `file:///abs/path`.
    File(PathBuf),
    /// `s3://bucket/prefix`.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix inside it ("" for none).
        prefix: String,
    },
    /// `gs://bucket/prefix`.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// `az://container/prefix`.
    Azure {
        /// Container.
        container: String,
        /// Key prefix.
        prefix: String,
    },
}

impl TargetUrl {
    /// Parses a target URL; the error says which schemes exist.
    pub fn parse(url: &str) -> std::result::Result<TargetUrl, String> {
        let u = url::Url::parse(url).map_err(|e| format!("not a URL ({e}): {url:?}"))?;
        let bucket = || -> std::result::Result<(String, String), String> {
            let b = u.host_str().unwrap_or("").to_string();
            if b.is_empty() {
                return Err(format!(
                    "{url:?} names no bucket; write {}://BUCKET/PREFIX",
                    u.scheme()
                ));
            }
            Ok((b, u.path().trim_matches('/').to_string()))
        };
        match u.scheme() {
            "memory" => Ok(TargetUrl::Memory),
            "file" => {
                if u.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(format!("{url:?} has a host; write file:///absolute/path"));
                }
                let p = u.to_file_path().map_err(|()| {
                    format!("{url:?} is not an absolute path; write file:///absolute/path")
                })?;
                Ok(TargetUrl::File(p))
            }
            "s3" | "s3a" => bucket().map(|(bucket, prefix)| TargetUrl::S3 { bucket, prefix }),
            "gs" => bucket().map(|(bucket, prefix)| TargetUrl::Gcs { bucket, prefix }),
            "az" | "azure" | "abfs" => {
                bucket().map(|(container, prefix)| TargetUrl::Azure { container, prefix })
            }
            other => Err(format!(
                "unknown scheme {other:?}; use s3://, gs://, az://, file:///abs/path or memory://"
            )),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// This is the sidecar's view of a file (`serve` and `check-config`):
    /// relative paths are taken from the file's directory, the environment
    /// (`WALSHIP_LISTEN`, `WALSHIP_DATA_DIR`, `WALSHIP_AUTH_TOKEN_FILE`)
    /// wins over the file, and on top of [`Config::problems`] it refuses
    /// what only hurts a sidecar: a `memory://` primary (it forgets every
    /// acknowledged write at restart) and an `auth_token_file` that does
    /// not exist.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| Error::Config {
            problems: vec![describe_toml_error(&text, &e)],
        })?;
        cfg.apply_env(|name| std::env::var(name).ok());
        let base = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.resolve_relative(base);
        let mut problems = cfg.problems();
        problems.extend(cfg.sidecar_problems());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(Error::Config { problems })
        }
    }

    /// The environment's values win over the file's (SPEC: Config file).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var("WALSHIP_LISTEN").filter(|v| !v.is_empty()) {
            self.listen = v;
        }
        if let Some(v) = var("WALSHIP_DATA_DIR").filter(|v| !v.is_empty()) {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("WALSHIP_AUTH_TOKEN_FILE").filter(|v| !v.is_empty()) {
            self.auth_token_file = Some(PathBuf::from(v));
        }
        if let Some(s3) = &mut self.s3 {
            if let Some(v) = var("WALSHIP_S3_LISTEN").filter(|v| !v.is_empty()) {
                s3.listen = v;
            }
            if let Some(v) = var("WALSHIP_S3_SECRET_ACCESS_KEY").filter(|v| !v.is_empty()) {
                s3.secret_from_env = Some(v);
            }
        }
    }

    /// Makes `data_dir` and `auth_token_file` absolute, taking relative
    /// ones from `base` (the config file's directory).
    pub fn resolve_relative(&mut self, base: &Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        if let Some(t) = &self.auth_token_file
            && t.is_relative()
        {
            self.auth_token_file = Some(base.join(t));
        }
        if let Some(s3) = &mut self.s3
            && let Some(f) = &s3.secret_access_key_file
            && f.is_relative()
        {
            s3.secret_access_key_file = Some(base.join(f));
        }
    }

    /// What a sidecar refuses on top of [`Config::problems`] (the library
    /// may run a `memory://` primary in tests and trials).
    pub fn sidecar_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if matches!(TargetUrl::parse(&self.primary.url), Ok(TargetUrl::Memory)) {
            p.push(
                "primary.url: a memory:// primary forgets every acknowledged write when the \
                 sidecar restarts; use a file://, s3://, gs:// or az:// store"
                    .into(),
            );
        }
        if let Some(t) = &self.auth_token_file
            && !t.is_file()
        {
            p.push(format!(
                "auth_token_file: {} does not exist (or is not a file); create it with the token, \
                 or remove auth_token_file",
                t.display()
            ));
        }
        if let Some(s3) = &self.s3
            && s3.secret_from_env.is_none()
            && let Some(f) = &s3.secret_access_key_file
        {
            match std::fs::read_to_string(f) {
                Ok(t) if t.trim().is_empty() => p.push(format!(
                    "s3.secret_access_key_file: {} is empty; write the secret access key in it",
                    f.display()
                )),
                Ok(_) => {}
                Err(e) => p.push(format!(
                    "s3.secret_access_key_file: {} cannot be read ({e}); create it with the secret, \
                     or set WALSHIP_S3_SECRET_ACCESS_KEY",
                    f.display()
                )),
            }
        }
        p
    }

    /// Parses and validates config text.
    pub fn from_toml(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Config {
            problems: vec![describe_toml_error(text, &e)],
        })?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(Error::Config { problems })
        }
    }

    /// Every problem of a parsed config, one line each, naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "listen: {:?} is not an address like 127.0.0.1:7600",
                self.listen
            ));
        }
        if self.max_object_bytes == 0 {
            p.push("max_object_bytes: must be at least 1".into());
        }
        if self.max_log_bytes == 0 {
            p.push("max_log_bytes: must be at least 1".into());
        }
        duration("retention_seconds", self.retention_seconds, true, &mut p);
        duration(
            "shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            true,
            &mut p,
        );
        duration(
            "request_header_timeout_seconds",
            self.request_header_timeout_seconds,
            false,
            &mut p,
        );
        if self.max_connections == 0 {
            p.push("max_connections: must be at least 1".into());
        }
        if let Some(s3) = &self.s3 {
            s3_problems(s3, &mut p);
            if s3.listen == self.listen {
                p.push(format!(
                    "s3.listen: {:?} is the HTTP API's listen too; give the S3 API an address of its own",
                    s3.listen
                ));
            }
        }
        if let Ok(addr) = self.listen.parse::<SocketAddr>()
            && !addr.ip().is_loopback()
            && self.auth_token_file.is_none()
            && !self.allow_unauthenticated
        {
            p.push(format!(
                "listen: {addr} is reachable from other hosts but no auth_token_file is set; \
                 set auth_token_file, listen on 127.0.0.1, or set allow_unauthenticated = true"
            ));
        }
        let r = &self.replication;
        duration(
            "replication.health_check_interval_seconds",
            r.health_check_interval_seconds,
            false,
            &mut p,
        );
        if !(r.max_replication_lag_ms >= 1.0 && r.max_replication_lag_ms <= YEAR_SECONDS * 1000.0) {
            p.push(format!(
                "replication.max_replication_lag_ms: must be between 1 ms and 1 year, got {}",
                show(r.max_replication_lag_ms)
            ));
        }
        if r.min_sync_replicas == 0 {
            p.push("replication.min_sync_replicas: must be at least 1".into());
        }
        if self.targets.is_empty() {
            p.push("targets: no replica is configured; add at least one [[targets]] table".into());
        } else if r.min_sync_replicas > self.targets.len() {
            p.push(format!(
                "replication.min_sync_replicas: {} is more than the {} configured replica(s)",
                r.min_sync_replicas,
                self.targets.len()
            ));
        }
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        let mut urls: BTreeMap<String, String> = BTreeMap::new();
        for (field, t) in self.all_targets() {
            target_problems(&field, t, &mut p);
            let url = t.url.trim_end_matches('/').to_string();
            if url != "memory:" {
                if let Some(first) = urls.get(&url) {
                    p.push(format!(
                        "{field}.url: {:?} is also the url of {first}; two targets must be two stores",
                        t.url
                    ));
                } else {
                    urls.insert(url, field.clone());
                }
            }
            if let Some(first) = seen.get(t.name.as_str()) {
                p.push(format!(
                    "{field}.name: duplicate target name {:?} (also used by {first})",
                    t.name
                ));
            } else {
                seen.insert(&t.name, field.clone());
            }
        }
        p
    }

    /// The primary then each replica, with its field path for messages.
    pub fn all_targets(&self) -> impl Iterator<Item = (String, &TargetConfig)> {
        std::iter::once(("primary".to_string(), &self.primary)).chain(
            self.targets
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("targets[{i}]"), t)),
        )
    }

    /// The embedded default of `walship serve` without `--config`:
    /// everything under `base/walship-data`, a primary and two replicas as
    /// local directories.
    pub fn embedded_default(base: &Path) -> Config {
        Config::embedded_in(&base.join("walship-data"))
    }

    /// The embedded default with everything under `data` (the log in it,
    /// the three targets in `data/targets`).
    pub fn embedded_in(data: &Path) -> Config {
        let data = data.to_path_buf();
        let dir = |name: &str| TargetConfig {
            name: name.to_string(),
            url: file_url(&data.join("targets").join(name)),
            region: "local".into(),
            priority: 1,
            is_read_replica: false,
            sync_timeout_seconds: default_sync_timeout(),
            max_retry_attempts: default_retries(),
            retry_delay_seconds: default_retry_delay(),
            options: BTreeMap::new(),
        };
        let mut r2 = dir("replica-2");
        r2.priority = 2;
        Config {
            data_dir: data.clone(),
            listen: default_listen(),
            auth_token_file: None,
            max_object_bytes: default_max_object_bytes(),
            retention_seconds: default_retention(),
            max_log_bytes: default_max_log_bytes(),
            shutdown_grace_seconds: default_grace(),
            log_cache_bytes: default_cache(),
            allow_unauthenticated: false,
            max_connections: default_max_connections(),
            request_header_timeout_seconds: default_header_timeout(),
            replication: ReplicationConfig::default(),
            primary: dir("primary"),
            targets: vec![dir("replica-1"), r2],
            s3: Some(S3Config {
                listen: default_s3_listen(),
                access_key_id: default_access_key_id(),
                secret_access_key_file: Some(data.join("s3-secret")),
                secret_from_env: None,
                region: default_s3_region(),
                allow_create_bucket: false,
                buckets: vec![S3Bucket {
                    name: "results".into(),
                    prefix: None,
                    mode: None,
                    read_preference: None,
                }],
            }),
        }
    }

    /// For the embedded default: writes a random S3 secret to
    /// `s3.secret_access_key_file` when it does not exist yet (and no
    /// `WALSHIP_S3_SECRET_ACCESS_KEY` is given); the file it wrote.
    pub fn make_s3_secret(&self) -> Result<Option<PathBuf>> {
        let Some(s3) = &self.s3 else { return Ok(None) };
        let Some(f) = &s3.secret_access_key_file else {
            return Ok(None);
        };
        if s3.secret_from_env.is_some() || f.exists() {
            return Ok(None);
        }
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let secret: String = (0..40)
            .map(|_| {
                const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                A[rand::random_range(0..A.len())] as char
            })
            .collect();
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(f)
            .map_err(|e| Error::io(format!("creating the S3 secret {}", f.display()), e))?;
        file.write_all(format!("{secret}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format!("writing the S3 secret {}", f.display()), e))?;
        Ok(Some(f.clone()))
    }
}

/// `file://` URL of an absolute path.
pub fn file_url(path: &Path) -> String {
    url::Url::from_directory_path(path)
        .map(|u| u.to_string().trim_end_matches('/').to_string())
        .unwrap_or_else(|()| format!("file://{}", path.display()))
}

/// One year, the longest duration a config may give.
const YEAR_SECONDS: f64 = 365.0 * 86400.0;

/// A duration in seconds must be between 1 ms and 1 year (`zero_ok`: or
/// exactly 0, meaning "none"); NaN and infinities are refused.
fn duration(field: &str, v: f64, zero_ok: bool, p: &mut Vec<String>) {
    if (zero_ok && v == 0.0) || (0.001..=YEAR_SECONDS).contains(&v) {
        return;
    }
    let range = if zero_ok {
        "0 or between 0.001 (1 ms) and 31536000 (1 year)"
    } else {
        "between 0.001 (1 ms) and 31536000 (1 year)"
    };
    p.push(format!("{field}: must be {range} seconds, got {}", show(v)));
}

/// A number as a user wrote it: `1e308`, not 309 digits.
fn show(v: f64) -> String {
    if v.is_finite() && v != 0.0 && !(1e-6..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

fn target_problems(field: &str, t: &TargetConfig, p: &mut Vec<String>) {
    if t.name.is_empty()
        || !t
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        p.push(format!(
            "{field}.name: {:?} must be non-empty and use only letters, digits, '.', '_' and '-'",
            t.name
        ));
    }
    duration(
        &format!("{field}.sync_timeout_seconds"),
        t.sync_timeout_seconds,
        false,
        p,
    );
    duration(
        &format!("{field}.retry_delay_seconds"),
        t.retry_delay_seconds,
        true,
        p,
    );
    if t.max_retry_attempts == 0 {
        p.push(format!("{field}.max_retry_attempts: must be at least 1"));
    }
    match TargetUrl::parse(&t.url) {
        Err(e) => p.push(format!("{field}.url: {e}")),
        Ok(url) => {
            for (k, v) in &t.options {
                if let Err(e) = crate::target::check_option(&url, k, v) {
                    p.push(format!("{field}.options.{k}: {e}"));
                }
            }
        }
    }
}

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} ({snippet}): {msg}")
        }
        None => msg,
    }
}

/// The commented starting config of `walship init`, with its directories
/// under `base`.
pub fn init_template(base: &Path) -> String {
    let data = base.join("walship-data");
    let t = |n: &str| file_url(&data.join("targets").join(n));
    format!(
        r#"# walship config. Every key is shown with its default unless noted.
# Check it with: walship check-config walship.toml

data_dir = "{data}"          # the log, cursors, conflict records
listen = "127.0.0.1:7600"        # HTTP API; loopback by default
# auth_token_file = "token"      # when set, every request needs "Authorization: Bearer <token>"
max_object_bytes = 16777216      # larger bodies get 413
retention_seconds = 86400        # entries are kept at least this long
max_log_bytes = 10737418240      # past this, the target holding truncation back is resynced
shutdown_grace_seconds = 30      # on SIGTERM: stop taking writes, drain shipping this long, persist cursors
log_cache_bytes = 33554432       # sled's page cache
# allow_unauthenticated = false  # a listen outside loopback without auth_token_file is refused unless true
max_connections = 1024           # HTTP connections at once; more wait in the accept queue
request_header_timeout_seconds = 10  # a client that has not sent its headers (or stalls its body) this long is cut off
# Durations are between 0.001 (1 ms) and 31536000 (1 year); retention, grace and retry delay may be 0.

[replication]
mode = "async"                   # sync | semi_sync | async: how many replicas a write waits for
min_sync_replicas = 1            # semi_sync only
read_preference = "primary"      # primary | secondary | nearest | any
conflict_resolution = "last_write_wins"  # last_write_wins | first_write_wins | primary_wins | merge | manual
enable_health_checks = true
health_check_interval_seconds = 30.0
max_replication_lag_ms = 5000.0
enable_failover = true
enable_metrics = true

[primary]
name = "primary"
url = "{p}"   # s3://bucket/prefix, gs://…, az://container/prefix, file:///abs/path, memory://
region = "local"
# [primary.options]              # handed to the object_store builder, e.g. for S3-compatible stores:
# endpoint = "http://127.0.0.1:9000"
# allow_http = "true"
# region = "us-east-1"

[[targets]]
name = "replica-1"
url = "{r1}"
region = "local"
priority = 1                     # failover order, lower first
is_read_replica = false          # serves reads, never promoted
sync_timeout_seconds = 30.0      # bound of one request and of a write's wait
max_retry_attempts = 3           # failures in a row before the target is marked unhealthy
retry_delay_seconds = 1.0        # base of exponential backoff
# [targets.options]
# fsync = "false"                # file:// only: skip fsync of each object (faster, not durable)

[[targets]]
name = "replica-2"
url = "{r2}"
region = "local"
priority = 2

# The S3 API: every S3 client (boto3, the aws CLI, rclone, truthound) writes
# through walship. Off while this table is commented out.
# [s3]
# listen = "127.0.0.1:7602"
# access_key_id = "walship"
# secret_access_key_file = "s3-secret"   # or WALSHIP_S3_SECRET_ACCESS_KEY
# region = "us-east-1"
# allow_create_bucket = false            # true: CreateBucket makes a bucket (kept in data_dir)
#
# [[s3.buckets]]
# name = "results"                       # the bucket clients name
# prefix = "results/"                    # the walship key prefix it maps to (default "NAME/")
# mode = "semi_sync"                     # optional: this bucket's writes use this mode
# read_preference = "nearest"            # optional
"#,
        data = data.display(),
        p = t("primary"),
        r1 = t("replica-1"),
        r2 = t("replica-2"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [primary]
        name = "p"
        url = "memory://"
        [[targets]]
        name = "r1"
        url = "file:///tmp/walship-r1"
    "#;

    #[test]
    fn defaults_match_spec() {
        let c = Config::from_toml(GOOD).expect("valid");
        assert_eq!(c.replication.mode, Mode::Async);
        assert_eq!(c.replication.min_sync_replicas, 1);
        assert_eq!(c.replication.read_preference, ReadPreference::Primary);
        assert_eq!(c.listen, "127.0.0.1:7600");
        assert_eq!(c.max_object_bytes, 16_777_216);
        assert_eq!(c.targets[0].priority, 1);
        assert_eq!(c.targets[0].sync_timeout_seconds, 30.0);
        assert_eq!(c.targets[0].max_retry_attempts, 3);
    }

    #[test]
    fn template_and_embedded_default_are_valid() {
        let base = Path::new("/tmp/x");
        let t = init_template(base);
        Config::from_toml(&t).expect("template is valid");
        // Its [s3] example, uncommented, is valid too.
        let at = t.find("# [s3]").expect("an [s3] example");
        let on: String = t[at..]
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix("#")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&format!("{}{on}", &t[..at])).expect("the [s3] example is valid");
        let s3 = c.s3.expect("s3 on");
        assert_eq!(
            (s3.buckets[0].key_prefix().as_str(), s3.buckets[0].mode),
            ("results/", Some(Mode::SemiSync))
        );
        let d = Config::embedded_default(base);
        assert!(d.problems().is_empty(), "{:?}", d.problems());
        assert_eq!(d.targets.len(), 2);
        assert_eq!(
            TargetUrl::parse(&d.primary.url),
            Ok(TargetUrl::File(base.join("walship-data/targets/primary")))
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            TargetUrl::parse("s3://b/x/y"),
            Ok(TargetUrl::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            })
        );
        assert!(
            TargetUrl::parse("ftp://x")
                .unwrap_err()
                .contains("unknown scheme")
        );
        assert!(
            TargetUrl::parse("s3:///nobucket")
                .unwrap_err()
                .contains("no bucket")
        );
        assert!(
            TargetUrl::parse("file://host/x")
                .unwrap_err()
                .contains("file:///")
        );
    }

    fn problems_of(extra_top: &str, target_extra: &str) -> Vec<String> {
        let text = format!(
            "{extra_top}\n[primary]\nname = \"p\"\nurl = \"file:///tmp/walship-p\"\n\
             [[targets]]\nname = \"r1\"\nurl = \"file:///tmp/walship-r1\"\n{target_extra}\n"
        );
        match Config::from_toml(&text) {
            Ok(_) => Vec::new(),
            Err(Error::Config { problems }) => problems,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn durations_outside_one_ms_to_one_year_are_refused_naming_the_field() {
        for (top, target, field) in [
            (
                "",
                "sync_timeout_seconds = 1e308",
                "targets[0].sync_timeout_seconds",
            ),
            (
                "",
                "sync_timeout_seconds = 1e-300",
                "targets[0].sync_timeout_seconds",
            ),
            (
                "",
                "sync_timeout_seconds = nan",
                "targets[0].sync_timeout_seconds",
            ),
            (
                "",
                "sync_timeout_seconds = inf",
                "targets[0].sync_timeout_seconds",
            ),
            (
                "",
                "retry_delay_seconds = 1e-300",
                "targets[0].retry_delay_seconds",
            ),
            (
                "shutdown_grace_seconds = 1e20",
                "",
                "shutdown_grace_seconds",
            ),
            ("retention_seconds = -1", "", "retention_seconds"),
            (
                "request_header_timeout_seconds = 0",
                "",
                "request_header_timeout_seconds",
            ),
            (
                "[replication]\nhealth_check_interval_seconds = 1e300",
                "",
                "replication.health_check_interval_seconds",
            ),
            (
                "[replication]\nmax_replication_lag_ms = 0.0001",
                "",
                "replication.max_replication_lag_ms",
            ),
        ] {
            let p = problems_of(top, target);
            assert_eq!(p.len(), 1, "{top} {target}: {p:?}");
            assert!(p[0].starts_with(&format!("{field}: ")), "{p:?}");
        }
        // The edges are fine, and 0 where it means "none".
        assert_eq!(
            problems_of("", "sync_timeout_seconds = 0.001"),
            Vec::<String>::new()
        );
        assert_eq!(
            problems_of("", "sync_timeout_seconds = 31536000"),
            Vec::<String>::new()
        );
        assert_eq!(
            problems_of(
                "retention_seconds = 0\nshutdown_grace_seconds = 0",
                "retry_delay_seconds = 0"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_open_listen_needs_a_token_or_allow_unauthenticated() {
        let p = problems_of("listen = \"0.0.0.0:7600\"", "");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("listen: ") && p[0].contains("auth_token_file"),
            "{p:?}"
        );
        assert!(
            problems_of(
                "listen = \"0.0.0.0:7600\"\nallow_unauthenticated = true",
                ""
            )
            .is_empty()
        );
        assert!(problems_of("listen = \"[::1]:7600\"", "").is_empty());
    }

    #[test]
    fn two_targets_on_one_store_are_refused() {
        let text = "[primary]\nname = \"p\"\nurl = \"s3://b/x\"\n\
                    [[targets]]\nname = \"r1\"\nurl = \"s3://b/x/\"\n";
        let Err(Error::Config { problems }) = Config::from_toml(text) else {
            panic!("accepted two targets on one store");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("targets[0].url: ") && problems[0].contains("primary"));
    }

    #[test]
    fn load_takes_paths_from_the_files_directory_and_refuses_what_hurts_a_sidecar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "data_dir = \"data\"\nauth_token_file = \"token\"\n\
             [primary]\nname = \"p\"\nurl = \"memory://\"\n\
             [[targets]]\nname = \"r1\"\nurl = \"file:///tmp/walship-r1\"\n",
        )
        .expect("write");
        let Err(Error::Config { problems }) = Config::load(&file) else {
            panic!("a memory primary and a missing token file were accepted");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("primary.url: "), "{problems:?}");
        assert!(
            problems[1].starts_with("auth_token_file: ")
                && problems[1].contains(&dir.path().join("token").display().to_string()),
            "{problems:?}"
        );
        std::fs::write(dir.path().join("token"), "t\n").expect("write");
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(&file, text.replace("memory://", "file:///tmp/walship-p")).expect("write");
        let c = Config::load(&file).expect("valid");
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.auth_token_file, Some(dir.path().join("token")));
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let mut c = Config::from_toml(GOOD).expect("valid");
        c.apply_env(|name| match name {
            "WALSHIP_LISTEN" => Some("127.0.0.1:9999".into()),
            "WALSHIP_DATA_DIR" => Some("/tmp/elsewhere".into()),
            _ => None,
        });
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/elsewhere"));
        assert_eq!(c.auth_token_file, None);
    }

    #[test]
    fn an_s3_table_is_checked_field_by_field() {
        let good = "[s3]\nsecret_access_key_file = \"s\"\n[[s3.buckets]]\nname = \"results\"\nmode = \"sync\"\n";
        assert_eq!(problems_of("", good), Vec::<String>::new());
        let bad = "[s3]\nlisten = \"nowhere\"\naccess_key_id = \"a b\"\nregion = \"us east\"\n\
                   [[s3.buckets]]\nname = \"Bad_Name\"\n\
                   [[s3.buckets]]\nname = \"results\"\nprefix = \"/abs\"\n\
                   [[s3.buckets]]\nname = \"results\"\nprefix = \"data/\"\n\
                   [[s3.buckets]]\nname = \"more\"\nprefix = \"data/more/\"\n";
        let p = problems_of("", bad);
        for want in [
            "s3.listen:",
            "s3.access_key_id:",
            "s3.secret_access_key_file: not set",
            "s3.region:",
            "s3.buckets[0].name:",
            "s3.buckets[1].prefix: \"/abs\" must not start with '/'",
            "s3.buckets[2].name: bucket \"results\" is given twice",
            "s3.buckets[3].prefix: \"data/more/\" overlaps s3.buckets[2]",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(want)),
                "{want:?} missing from {p:#?}"
            );
        }
        // A message broken across source lines reads as one sentence.
        for l in &p {
            assert!(!l.contains("  "), "a run of spaces in {l:?}");
        }
        let unknown = problems_of("", "[s3]\nsecret_access_key_file = \"s\"\nbukets = 1\n");
        assert!(unknown.iter().any(|l| l.contains("bukets")), "{unknown:?}");
    }

    #[test]
    fn the_s3_secret_and_listen_come_from_the_environment() {
        let mut c = Config::from_toml(GOOD).expect("valid");
        c.s3 = Some(S3Config {
            listen: default_s3_listen(),
            access_key_id: default_access_key_id(),
            secret_access_key_file: None,
            secret_from_env: None,
            region: default_s3_region(),
            allow_create_bucket: false,
            buckets: vec![],
        });
        assert!(
            c.problems()
                .iter()
                .any(|p| p.starts_with("s3.secret_access_key_file"))
        );
        c.apply_env(|name| match name {
            "WALSHIP_S3_LISTEN" => Some("127.0.0.1:9998".into()),
            "WALSHIP_S3_SECRET_ACCESS_KEY" => Some("from-env".into()),
            _ => None,
        });
        let s3 = c.s3.as_ref().expect("s3");
        assert_eq!(
            (s3.listen.as_str(), s3.secret_from_env.as_deref()),
            ("127.0.0.1:9998", Some("from-env"))
        );
        assert_eq!(c.problems(), Vec::<String>::new());
    }
}
