//! The S3 listener's HTTP side: which operation a request is (for
//! `walship_s3_requests_total`), virtual-hosted bucket names, and the axum
//! handler around s3s that counts requests, refuses an `Authorization` that
//! is no AWS signature and closes connections a body may be left unread on.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use s3s::{S3Error, S3ErrorCode, S3Result};

use crate::replicator::Replicator;

use super::wire::err;

/// The S3 operations walship serves, for `walship_s3_requests_total`.
pub fn op_of(
    method: &http::Method,
    host: &str,
    path: &str,
    query: &str,
    copy: bool,
) -> &'static str {
    let has = |q: &str| {
        query
            .split('&')
            .any(|kv| kv == q || kv.starts_with(&format!("{q}=")))
    };
    let vhost = virtual_bucket(host).is_some();
    let rest = path.trim_start_matches('/');
    // Path style: "" (service), "bucket[/]" or "bucket/key".
    let (bucket, key) = if vhost {
        (true, !rest.is_empty())
    } else {
        match rest.split_once('/') {
            None => (!rest.is_empty(), false),
            Some((_, k)) => (true, !k.is_empty()),
        }
    };
    use http::Method as M;
    match (bucket, key) {
        (false, _) if *method == M::GET => "ListBuckets",
        (false, _) => "Other",
        (true, false) => match *method {
            M::GET if has("location") => "GetBucketLocation",
            M::GET if has("uploads") => "ListMultipartUploads",
            M::GET if has("list-type") => "ListObjectsV2",
            M::GET
                if query.is_empty()
                    || has("prefix")
                    || has("delimiter")
                    || has("marker")
                    || has("max-keys")
                    || has("encoding-type") =>
            {
                "ListObjects"
            }
            M::HEAD => "HeadBucket",
            M::PUT if query.is_empty() => "CreateBucket",
            M::DELETE if query.is_empty() => "DeleteBucket",
            M::POST if has("delete") => "DeleteObjects",
            _ => "Other",
        },
        (true, true) => match *method {
            M::PUT if has("partNumber") && has("uploadId") && copy => "UploadPartCopy",
            M::PUT if has("partNumber") && has("uploadId") => "UploadPart",
            M::PUT if copy => "CopyObject",
            M::PUT if query.is_empty() => "PutObject",
            M::GET if has("uploadId") => "ListParts",
            M::GET => "GetObject",
            M::HEAD => "HeadObject",
            M::DELETE if has("uploadId") => "AbortMultipartUpload",
            M::DELETE => "DeleteObject",
            M::POST if has("uploads") => "CreateMultipartUpload",
            M::POST if has("uploadId") => "CompleteMultipartUpload",
            _ => "Other",
        },
    }
}

/// The bucket named by a virtual-hosted-style `Host`
/// (`BUCKET.localhost[:port]` or `BUCKET.s3.localhost[:port]`).
pub fn virtual_bucket(host: &str) -> Option<&str> {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    for base in [".s3.localhost", ".localhost"] {
        if let Some(b) = name.strip_suffix(base)
            && !b.is_empty()
            && !b.contains(':')
        {
            return Some(b);
        }
    }
    None
}

/// Path-style addressing everywhere; virtual-hosted on `*.localhost`.
pub(super) struct Hosts;

impl s3s::host::S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        Ok(match virtual_bucket(host) {
            Some(b) => s3s::host::VirtualHost::new(host).with_bucket(b),
            None => s3s::host::VirtualHost::new(host),
        })
    }
}

/// The axum handler the S3 listener serves: s3s does the protocol;
/// this counts `walship_s3_requests_total{op,status}`, refuses an
/// `Authorization` that is no AWS signature, and closes connections whose
/// request body may be left unread (see `close_after`).
pub fn router(svc: s3s::service::S3Service, rep: Arc<Replicator>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state((svc, rep))
}

type FrontState = (s3s::service::S3Service, Arc<Replicator>);

async fn handle(
    axum::extract::State((svc, rep)): axum::extract::State<FrontState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let headers = req.headers().clone();
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let copy = headers.contains_key("x-amz-copy-source");
    let op = op_of(
        req.method(),
        &host,
        req.uri().path(),
        req.uri().query().unwrap_or(""),
        copy,
    );
    let mut resp = if foreign_auth(&headers) {
        xml_error(err(
            S3ErrorCode::AccessDenied,
            "the Authorization header is not an AWS signature; sign requests with AWS Signature V4",
        ))
    } else {
        // Without a length or chunking there is no body; s3s must be told
        // so (a wrapped body's size is not known to it).
        let has_body = headers.contains_key(http::header::CONTENT_LENGTH)
            || headers.contains_key(http::header::TRANSFER_ENCODING);
        let req = if has_body {
            req.map(s3s::Body::http_body_unsync)
        } else {
            req.map(|_| s3s::Body::empty())
        };
        match svc.call(req).await {
            Ok(r) => r.map(axum::body::Body::new),
            Err(e) => {
                tracing::error!(error = ?e, "the S3 request failed inside the protocol layer");
                xml_error(err(
                    S3ErrorCode::InternalError,
                    "the request failed inside the S3 protocol layer; see the sidecar's log",
                ))
            }
        }
    };
    if close_after(&headers, resp.status()) {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    rep.metrics()
        .s3_requests
        .get_or_create(&crate::metrics::S3Labels {
            op: op.to_string(),
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    resp
}

fn xml_error(e: S3Error) -> axum::response::Response {
    match e.to_http_response() {
        Ok(r) => r.map(axum::body::Body::new),
        Err(_) => http::Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(axum::body::Body::from("internal error"))
            .unwrap_or_default(),
    }
}

/// An `Authorization` header that is neither SigV4 nor SigV2 (a bearer
/// token, say): AccessDenied, not s3s's "invalid header".
fn foreign_auth(h: &HeaderMap) -> bool {
    h.get(http::header::AUTHORIZATION).is_some_and(|v| {
        let v = v.as_bytes();
        !(v.starts_with(b"AWS4-HMAC-SHA256 ") || v.starts_with(b"AWS "))
    })
}

/// Whether to close the connection after this answer: when its request's
/// body may be left unread (an error answered before or instead of reading
/// it), and when an empty body was announced with `Expect: 100-continue`
/// (no `100 Continue` is sent for it, and some clients then misread the
/// next answer on the same connection).
fn close_after(h: &HeaderMap, status: StatusCode) -> bool {
    let len = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = h.contains_key(http::header::TRANSFER_ENCODING);
    let expects = h
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let has_body = chunked || len.is_some_and(|n| n > 0);
    (expects && !has_body) || (has_body && (status.is_client_error() || status.is_server_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn operations_are_named_from_the_request() {
        let m =
            |method: Method, path: &str, q: &str| op_of(&method, "127.0.0.1:7602", path, q, false);
        assert_eq!(m(Method::GET, "/", ""), "ListBuckets");
        assert_eq!(m(Method::HEAD, "/results", ""), "HeadBucket");
        assert_eq!(
            m(Method::GET, "/results", "list-type=2&prefix=a"),
            "ListObjectsV2"
        );
        assert_eq!(m(Method::GET, "/results/", "prefix=a"), "ListObjects");
        assert_eq!(m(Method::GET, "/results", "location"), "GetBucketLocation");
        assert_eq!(m(Method::POST, "/results", "delete"), "DeleteObjects");
        assert_eq!(m(Method::PUT, "/results/a/b", ""), "PutObject");
        assert_eq!(
            op_of(&Method::PUT, "h", "/results/a", "", true),
            "CopyObject"
        );
        assert_eq!(
            m(Method::PUT, "/results/a", "partNumber=1&uploadId=x"),
            "UploadPart"
        );
        assert_eq!(
            m(Method::POST, "/results/a", "uploads"),
            "CreateMultipartUpload"
        );
        assert_eq!(
            m(Method::POST, "/results/a", "uploadId=x"),
            "CompleteMultipartUpload"
        );
        assert_eq!(
            m(Method::DELETE, "/results/a", "uploadId=x"),
            "AbortMultipartUpload"
        );
        assert_eq!(m(Method::GET, "/results/a", "uploadId=x"), "ListParts");
        assert_eq!(m(Method::GET, "/results/a", ""), "GetObject");
        assert_eq!(m(Method::HEAD, "/results/a", ""), "HeadObject");
        assert_eq!(m(Method::DELETE, "/results/a", ""), "DeleteObject");
        // Virtual-hosted: the path is the key.
        assert_eq!(
            op_of(&Method::GET, "results.localhost:7602", "/a", "", false),
            "GetObject"
        );
        assert_eq!(
            op_of(
                &Method::GET,
                "results.localhost:7602",
                "/",
                "list-type=2",
                false
            ),
            "ListObjectsV2"
        );
    }

    #[test]
    fn connections_close_after_unread_bodies_and_empty_expects() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let ok = StatusCode::OK;
        let bad = StatusCode::BAD_REQUEST;
        assert!(close_after(
            &h(&[("content-length", "0"), ("expect", "100-continue")]),
            ok
        ));
        assert!(!close_after(
            &h(&[("content-length", "5"), ("expect", "100-continue")]),
            ok
        ));
        assert!(close_after(&h(&[("content-length", "5")]), bad));
        assert!(close_after(
            &h(&[("transfer-encoding", "chunked")]),
            StatusCode::GATEWAY_TIMEOUT
        ));
        assert!(!close_after(&h(&[]), bad), "no body: nothing left unread");
        assert!(!close_after(&h(&[("content-length", "5")]), ok));
        assert!(foreign_auth(&h(&[("authorization", "Bearer x")])));
        assert!(!foreign_auth(&h(&[(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=a"
        )])));
        assert!(!foreign_auth(&h(&[("authorization", "AWS a:b")])));
        assert!(!foreign_auth(&h(&[])));
    }

    #[test]
    fn virtual_hosts_name_their_bucket() {
        assert_eq!(virtual_bucket("results.localhost:7602"), Some("results"));
        assert_eq!(virtual_bucket("results.s3.localhost"), Some("results"));
        assert_eq!(virtual_bucket("127.0.0.1:7602"), None);
        assert_eq!(virtual_bucket("localhost:7602"), None);
        assert_eq!(virtual_bucket("[::1]:7602"), None);
    }
}
