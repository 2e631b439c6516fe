//! The sidecar's HTTP API (SPEC.md "HTTP API").
//!
//! Invariant: a request that is rejected (bad key, body over
//! `max_object_bytes`, malformed query, missing token) gets a 4xx with
//! `{"error": "..."}` and reaches neither the log nor any target. A write
//! that misses its quorum gets 504 with the seq and the acks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;

use crate::api::{
    ConflictsAnswer, ErrorAnswer, ListAnswer, ListedKey, LogAnswer, LogEntryRow, ResolvedAnswer,
    StateAnswer, WriteAnswer,
};
use crate::config::{Config, Mode, ReadPreference};
use crate::conflict::Keep;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::replicator::{ReplayFrom, Replicator};
use crate::status::TargetState;

#[derive(Clone)]
struct App {
    rep: Arc<Replicator>,
    token: Option<Arc<str>>,
    max_body: usize,
}

/// An error as an HTTP answer.
struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidKey { .. } | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::QuorumTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::ShuttingDown | Error::LogReopened => StatusCode::SERVICE_UNAVAILABLE,
        Error::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::UnknownTarget(_) | Error::UnknownAction(_) | Error::UnknownConflict(_) => {
            StatusCode::NOT_FOUND
        }
        Error::NoFreshTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::StateRefused(_)
        | Error::ResolveRefused(_)
        | Error::KeyContended { .. }
        | Error::KeyDoesNotFit { .. } => StatusCode::CONFLICT,
        Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        Error::Target { .. } => StatusCode::BAD_GATEWAY,
        // A full data_dir met below the committer's check (a cursor or a
        // replay's record that sled could not write) is still a full disk:
        // 507, which the client retries once space is freed, not a 500.
        e if e.is_disk_full() => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let body = match &self.0 {
            Error::QuorumTimeout {
                seq,
                acked,
                required,
                acked_by,
            } => ErrorAnswer {
                seq: Some(*seq),
                acked: Some(*acked),
                required: Some(*required),
                acked_by: Some(acked_by.clone()),
                ..ErrorAnswer::new(self.0.to_string())
            },
            e => ErrorAnswer::new(e.to_string()),
        };
        (status, axum::Json(body)).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(Error::BadRequest(msg.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    read_preference: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

fn key_of(path: Result<Path<String>, PathRejection>) -> Result<Key, ApiError> {
    let Path(raw) = path.map_err(|e| bad(format!("bad key in the path: {}", e.body_text())))?;
    Ok(Key::parse(&raw)?)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| bad(format!("malformed query: {}", e.body_text())))
}

fn mode_of(q: WriteQuery) -> Result<Option<Mode>, ApiError> {
    q.mode
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError)
}

fn read_preference(q: &ReadQuery) -> Result<Option<ReadPreference>, ApiError> {
    Ok(q.read_preference.as_deref().map(str::parse).transpose()?)
}

async fn put_object(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(path)?;
    let mode = mode_of(query(q)?)?;
    let too_large = |size: usize| {
        ApiError(Error::TooLarge {
            size,
            max: app.max_body,
        })
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > app.max_body
    {
        return Err(too_large(len));
    }
    let value = axum::body::to_bytes(body, app.max_body)
        .await
        .map_err(|_| too_large(app.max_body + 1))?;
    let mut meta = crate::object::ObjectMeta::of(&value);
    meta.content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ack = app.rep.put_object(&key, value, meta, None, mode).await?;
    Ok(axum::Json(WriteAnswer::from(ack)).into_response())
}

/// Content-Type and ETag of the key's newest version, as the log knows it.
fn object_headers(h: &mut HeaderMap, info: Option<&crate::storage::KeyInfo>) {
    let Some(m) = info.and_then(|i| i.meta.as_deref()) else {
        return;
    };
    if let Some(v) = m
        .content_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        h.insert(header::CONTENT_TYPE, v);
    }
    if !m.etag.is_empty()
        && let Ok(v) = HeaderValue::from_str(&m.quoted_etag())
    {
        h.insert(header::ETAG, v);
    }
}

async fn delete_object(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<WriteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_of(path)?;
    let mode = mode_of(query(q)?)?;
    let ack = app.rep.delete(&key, mode).await?;
    Ok(axum::Json(WriteAnswer::from(ack)).into_response())
}

fn read_headers(served_by: &str, seq: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(served_by) {
        h.insert("x-walship-served-by", v);
    }
    if let Some(seq) = seq {
        h.insert("x-walship-seq", HeaderValue::from(seq));
    }
    h
}

fn not_found(key: &Key) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorAnswer::new(format!(
            "no object under key {:?}",
            key.as_str()
        ))),
    )
        .into_response()
}

async fn get_object(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_of(path)?;
    let pref = read_preference(&query(q)?)?;
    let read = app.rep.get(&key, pref).await?;
    let mut headers = read_headers(&read.served_by, read.seq);
    match read.found {
        Some(bytes) => {
            object_headers(&mut headers, read.info.as_ref());
            Ok((headers, bytes).into_response())
        }
        None => Ok((headers, not_found(&key)).into_response()),
    }
}

async fn head_object(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_of(path)?;
    let pref = read_preference(&query(q)?)?;
    let read = app.rep.head_object(&key, pref).await?;
    let mut h = read_headers(&read.served_by, read.seq);
    match read.found {
        Some(meta) => {
            object_headers(&mut h, read.info.as_ref());
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
            Ok((StatusCode::OK, h).into_response())
        }
        None => Ok((StatusCode::NOT_FOUND, h).into_response()),
    }
}

async fn list_objects(
    State(app): State<App>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 100_000 {
        return Err(bad("limit must be between 1 and 100000"));
    }
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after.unwrap_or_default();
    let mut keys = app.rep.list(&prefix, &after, limit + 1).await?;
    let truncated = keys.len() > limit;
    keys.truncate(limit);
    let next_after = if truncated {
        keys.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    let keys = keys
        .into_iter()
        .map(|(key, i)| ListedKey {
            key,
            seq: i.seq,
            size: i.size,
        })
        .collect();
    Ok(axum::Json(ListAnswer {
        keys,
        truncated,
        next_after,
    })
    .into_response())
}

async fn cursors(State(app): State<App>) -> Result<Response, ApiError> {
    Ok(axum::Json(app.rep.cursors()?).into_response())
}

async fn status(State(app): State<App>) -> Result<Response, ApiError> {
    Ok(axum::Json(app.rep.status()?).into_response())
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if !app.rep.config().replication.enable_metrics {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(ErrorAnswer::new(
                "metrics are off (replication.enable_metrics = false)",
            )),
        )
            .into_response();
    }
    // OpenMetrics only for a client that asks for it; Prometheus text
    // 0.0.4 otherwise (SPEC: HTTP API).
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = app.rep.metrics_text();
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::text_004(&text),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionQuery {
    from: Option<u64>,
    since: Option<String>,
    dry_run: Option<bool>,
}

/// Parses a point in time: RFC 3339 (`2026-11-26T10:00:00Z`), unix ms, or
/// a duration ago (`10m`, `2h 30m`).
pub fn parse_time(s: &str) -> Result<u64> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| Error::BadRequest(format!("{s:?} is too large for unix milliseconds")));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(crate::log::now_ms().saturating_sub(d.as_millis() as u64));
    }
    Err(Error::BadRequest(format!(
        "cannot read the time {s:?}: use RFC 3339 (2026-11-26T10:00:00Z), unix milliseconds, or a duration ago (10m, 2h)"
    )))
}

async fn target_action(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ActionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((name, action)) =
        path.map_err(|e| bad(format!("bad target path: {}", e.body_text())))?;
    let q = query(q)?;
    if action != "replay" && (q.from.is_some() || q.since.is_some() || q.dry_run.is_some()) {
        return Err(bad("from, since and dry_run belong to /replay"));
    }
    let state = match action.as_str() {
        "pause" => app.rep.pause(&name).await?,
        "resume" => app.rep.resume(&name).await?,
        "resync" => {
            let from = app.rep.start_resync(&name).await?;
            return Ok(axum::Json(StateAnswer {
                target: name,
                state: TargetState::Syncing,
                from: Some(from),
            })
            .into_response());
        }
        "replay" => {
            let from = match (q.from, q.since.as_deref()) {
                (Some(seq), None) => ReplayFrom::Seq(seq),
                (None, Some(t)) => ReplayFrom::Since(parse_time(t)?),
                _ => return Err(bad("replay needs exactly one of ?from=SEQ or ?since=TIME")),
            };
            let plan = app
                .rep
                .replay(&name, from, !q.dry_run.unwrap_or(false))
                .await?;
            return Ok(axum::Json(plan).into_response());
        }
        other => {
            return Err(ApiError(Error::UnknownAction(format!(
                "no target action {other:?}; use pause, resume, resync or replay"
            ))));
        }
    };
    Ok(axum::Json(StateAnswer {
        target: name,
        state,
        from: None,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/log` and `walship log --json`: the entries from `from` up to
/// `upto`. A running sidecar passes its durable head: a group the
/// committer has put in the storage but not yet made durable, or one whose
/// sync failed and that the reopen has not yet taken back, was not
/// acknowledged, and is not in the log it answers for. Offline, `u64::MAX`:
/// what an open of the data directory finds.
pub fn log_json(
    storage: &dyn crate::storage::LogStorage,
    from: u64,
    limit: usize,
    upto: u64,
) -> Result<LogAnswer> {
    let rows = crate::log::inspect_to(storage, from, upto, limit)?;
    let (first, head) = storage.bounds()?.unwrap_or((1, 0));
    let head = head.min(upto);
    let entries = rows
        .into_iter()
        .map(|row| LogEntryRow {
            time: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(row.ts_ms),
            )
            .to_string(),
            row,
        })
        .collect();
    Ok(LogAnswer {
        first,
        head,
        entries,
    })
}

async fn log(
    State(app): State<App>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 100_000 {
        return Err(bad("limit must be between 1 and 100000"));
    }
    let from = q.from.unwrap_or(app.rep.log().first()).max(1);
    let storage = app.rep.log().storage().clone();
    let head = app.rep.log().head();
    let v = tokio::task::spawn_blocking(move || log_json(storage.as_ref(), from, limit, head))
        .await
        .map_err(|e| ApiError(Error::io("reading the log", std::io::Error::other(e))))??;
    Ok(axum::Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    target: Option<String>,
}

async fn verify(
    State(app): State<App>,
    q: Result<Query<VerifyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let report = app.rep.verify(q.target.as_deref()).await?;
    Ok(axum::Json(report).into_response())
}

async fn conflicts(State(app): State<App>) -> Result<Response, ApiError> {
    let list = app.rep.conflicts()?;
    Ok(axum::Json(ConflictsAnswer { conflicts: list }).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveQuery {
    keep: Option<String>,
}

/// `POST /v1/conflicts/{id}/resolve` with `?keep=primary|replica` or the
/// body `{"keep": "primary"|"replica"}`.
async fn conflict_action(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ResolveQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path((id, action)) =
        path.map_err(|e| bad(format!("bad conflict path: {}", e.body_text())))?;
    if action != "resolve" {
        return Err(ApiError(Error::UnknownAction(format!(
            "no conflict action {action:?}; the only one is resolve"
        ))));
    }
    let id: u64 = id
        .parse()
        .map_err(|_| bad(format!("conflict id {id:?} is not a number")))?;
    let from_query = query(q)?.keep;
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: ResolveQuery = serde_json::from_slice(&body).map_err(|e| {
            bad(format!(
                "the body must be {{\"keep\": \"primary\"|\"replica\"}}: {e}"
            ))
        })?;
        v.keep
    };
    let keep = match (from_query, from_body) {
        (Some(k), None) | (None, Some(k)) => k,
        (Some(a), Some(b)) if a == b => a,
        (Some(_), Some(_)) => return Err(bad("keep given twice, differently")),
        (None, None) => {
            return Err(bad(
                "say which version to keep: ?keep=primary or ?keep=replica",
            ));
        }
    };
    let keep: Keep = keep.parse().map_err(bad)?;
    let rec = app.rep.resolve_conflict(id, keep).await?;
    Ok(axum::Json(ResolvedAnswer {
        resolved: rec,
        kept: keep,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreQuery {
    to: String,
    seq: Option<u64>,
    as_of: Option<String>,
    prefix: Option<String>,
    execute: Option<bool>,
}

/// `POST /v1/restore?to=URL&seq=N|as_of=TIME[&prefix=P][&execute=true]`.
async fn restore(
    State(app): State<App>,
    q: Result<Query<RestoreQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let seq = match (q.seq, &q.as_of) {
        (Some(_), Some(_)) => return Err(bad("give seq or as_of, not both")),
        (Some(s), None) => s,
        (None, Some(t)) => {
            let ts = parse_time(t)?;
            crate::restore::seq_as_of(app.rep.log().storage().as_ref(), ts, app.rep.log().head())?
        }
        (None, None) => app.rep.log().head(),
    };
    let plan = app
        .rep
        .restore(
            &q.to,
            crate::restore::RestoreRequest {
                seq,
                prefix: q.prefix.unwrap_or_default(),
                execute: q.execute.unwrap_or(false),
            },
        )
        .await?;
    Ok(axum::Json(plan).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<App>) -> Response {
    if app.rep.draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(ErrorAnswer::new(
                "walship is draining before it exits; it takes no writes",
            )),
        )
            .into_response();
    }
    if let Some(why) = app.rep.log().refusing_writes() {
        // Not ready for writes: a write failed and the log has not
        // reopened from disk yet (it retries by itself).
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(ErrorAnswer::new(format!(
                "the log refuses writes until it reopens from disk, which it retries by itself: {why}"
            ))),
        )
            .into_response();
    }
    if app.rep.primary_reachable().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(ErrorAnswer::new("the acting primary does not answer")),
        )
            .into_response()
    }
}

async fn fallback() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorAnswer::new(
            "no such endpoint; see SPEC.md for the HTTP API",
        )),
    )
        .into_response()
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    // Probes need no token (Kubernetes sends none); everything else does.
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    if let Some(token) = app.token.as_ref().filter(|_| !probe) {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t.as_bytes() == token.as_bytes());
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(ErrorAnswer::new("missing or wrong token: send \"Authorization: Bearer <token>\" with the token from auth_token_file")),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The HTTP API over a replicator.
pub fn router(rep: Arc<Replicator>, token: Option<String>) -> Router {
    let app = App {
        max_body: rep.config().max_object_bytes as usize,
        rep,
        token: token.map(Arc::from),
    };
    Router::new()
        .route(
            "/v1/objects/{*key}",
            get(get_object)
                .head(head_object)
                .put(put_object)
                .delete(delete_object),
        )
        .route("/v1/objects", get(list_objects))
        .route("/v1/cursors", get(cursors))
        .route("/v1/status", get(status))
        .route("/v1/log", get(log))
        .route("/v1/verify", get(verify))
        .route(
            "/v1/targets/{name}/{action}",
            axum::routing::post(target_action),
        )
        .route("/v1/restore", axum::routing::post(restore))
        .route("/v1/conflicts", get(conflicts))
        .route(
            "/v1/conflicts/{id}/{action}",
            axum::routing::post(conflict_action),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

/// Reads the bearer token named by the config, if any.
pub fn load_token(cfg: &Config) -> Result<Option<String>> {
    let Some(path) = &cfg.auth_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading auth_token_file {}", path.display()), e))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Error::Config {
            problems: vec![format!("auth_token_file: {} is empty", path.display())],
        });
    }
    Ok(Some(token))
}

/// Runs the sidecar until SIGTERM or SIGINT, then stops taking writes,
/// drains shipping for `shutdown_grace_seconds`, persists cursors and
/// returns.
pub async fn serve(cfg: Config) -> Result<()> {
    let token = load_token(&cfg)?;
    let addr: SocketAddr = cfg.listen.parse().map_err(|_| Error::Config {
        problems: vec![format!("listen: {:?} is not an address", cfg.listen)],
    })?;
    let grace = Duration::from_secs_f64(cfg.shutdown_grace_seconds);
    let rep = Replicator::open(cfg).await?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::io(
            format!("listening on {addr} (is another sidecar running there?)"),
            e,
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listen address", e))?;
    tracing::info!(addr = %local, "walship serving");
    let stop = tokio_util::sync::CancellationToken::new();
    let limits = Limits {
        max_connections: rep.config().max_connections,
        header_timeout: Duration::from_secs_f64(rep.config().request_header_timeout_seconds),
    };
    let server = {
        let stop = stop.clone();
        let app = router(rep.clone(), token);
        tokio::spawn(serve_connections(listener, app, limits, stop))
    };
    let s3_server = match rep.config().s3.clone() {
        None => None,
        Some(s3) => {
            let addr: SocketAddr = s3.listen.parse().map_err(|_| Error::Config {
                problems: vec![format!("s3.listen: {:?} is not an address", s3.listen)],
            })?;
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::io(
                    format!(
                        "listening on {addr} for the S3 API (is another sidecar running there?)"
                    ),
                    e,
                )
            })?;
            let svc = crate::s3::service(rep.clone(), &s3, stop.clone())?;
            let app = crate::s3::router(svc, rep.clone());
            tracing::info!(addr = %addr, buckets = s3.buckets.len(), "walship serving the S3 API");
            Some(tokio::spawn(serve_connections(
                listener,
                app,
                limits,
                stop.clone(),
            )))
        }
    };
    notify_systemd("READY=1");
    wait_for_signal().await;
    notify_systemd("STOPPING=1");
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "stopping: no new writes, draining shipping (a second SIGTERM or SIGINT exits at once)"
    );
    let result = tokio::select! {
        r = rep.shutdown(grace) => r,
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting now; targets behind catch up from the log after restart");
            rep.persist_cursors()
        }
    };
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(s3) = s3_server {
        let _ = tokio::time::timeout(Duration::from_secs(5), s3).await;
    }
    match &result {
        Ok(()) => tracing::info!("cursors persisted; bye"),
        Err(e) => tracing::error!(error = %e, "shutdown could not persist everything"),
    }
    result
}

/// Tells systemd (a `Type=notify` unit: `$NOTIFY_SOCKET`) how the sidecar
/// is: `READY=1` once it serves, `STOPPING=1` when it drains. Without the
/// variable, nothing. A socket name starting with `@` is abstract.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify systemd through NOTIFY_SOCKET");
    }
}

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
}

/// Accepts connections while fewer than `max_connections` are open (the
/// rest wait in the kernel's accept queue), cuts off a client that has not
/// sent its headers within `header_timeout` or stalls its body that long,
/// and on `stop` lets open requests finish.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stop: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.header_timeout,
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (sock, _) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(sock), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /v1/log` answers for the log up to its durable head. The
    /// committer puts a group in sled before its sync (see `storage`), so
    /// until that sync works, or the reopen after a failed one takes the
    /// group back, the storage holds entries nobody was told of: made to
    /// happen here by putting one there as the committer does. They are not
    /// listed; offline, with no sidecar, what an open finds is.
    #[tokio::test]
    async fn the_log_answer_ends_at_the_durable_head() {
        let (_dir, storage, log) = crate::log::testing::with_a_group_not_yet_durable().await;
        let seqs = |a: &LogAnswer| a.entries.iter().map(|e| e.row.seq).collect::<Vec<_>>();

        let live = log_json(storage.as_ref(), 1, 100, log.head()).expect("log");
        assert_eq!(seqs(&live), [1, 2, 3], "only what was acknowledged");
        assert_eq!(live.head, 3);
        let offline = log_json(storage.as_ref(), 1, 100, u64::MAX).expect("log");
        assert_eq!(seqs(&offline), [1, 2, 3, 4]);
    }

    #[test]
    fn a_full_disk_is_507_however_it_is_met() {
        assert_eq!(
            status_of(&Error::DiskFull("full".into())),
            StatusCode::INSUFFICIENT_STORAGE
        );
        // sled's ENOSPC while persisting a cursor or a replay's record
        let sled_full = Error::storage(
            "persisting a cursor",
            std::path::Path::new("/d"),
            sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        );
        assert_eq!(status_of(&sled_full), StatusCode::INSUFFICIENT_STORAGE);
        let io_full = Error::io(
            "staging an upload part",
            std::io::Error::from_raw_os_error(libc::EDQUOT),
        );
        assert_eq!(status_of(&io_full), StatusCode::INSUFFICIENT_STORAGE);
        // any other sled I/O failure stays a 500
        let eio = Error::storage(
            "persisting a cursor",
            std::path::Path::new("/d"),
            sled::Error::Io(std::io::Error::from_raw_os_error(libc::EIO)),
        );
        assert_eq!(status_of(&eio), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
