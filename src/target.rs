//! Building a target's object store from its URL and options.
//!
//! Invariant: one request to a target is bounded by its
//! `sync_timeout_seconds`. object_store's HTTP clients retry internally for
//! minutes by default; here their client timeout and retry budget are set to
//! that bound, and walship's own `max_retry_attempts` / `retry_delay_seconds`
//! backoff (in `shipper`) sits on top.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::config::{TargetConfig, TargetUrl};
use crate::error::{Error, Result};

/// Checks one `[...options]` entry for a target URL.
pub fn check_option(url: &TargetUrl, key: &str, value: &str) -> std::result::Result<(), String> {
    match url {
        TargetUrl::Memory => Err("memory:// takes no options".into()),
        TargetUrl::File(_) => match key {
            "fsync" => parse_bool(value).map(|_| ()),
            _ => Err("unknown option for file:// (the only one is fsync = \"true\" | \"false\")".into()),
        },
        TargetUrl::S3 { .. } => AmazonS3ConfigKey::from_str(key)
            .map(|_| ())
            .map_err(|_| "unknown option for s3:// (see object_store's AmazonS3ConfigKey: endpoint, region, allow_http, access_key_id, …)".into()),
        TargetUrl::Gcs { .. } => GoogleConfigKey::from_str(key)
            .map(|_| ())
            .map_err(|_| "unknown option for gs:// (see object_store's GoogleConfigKey)".into()),
        TargetUrl::Azure { .. } => AzureConfigKey::from_str(key)
            .map(|_| ())
            .map_err(|_| "unknown option for az:// (see object_store's AzureConfigKey: account_name, access_key, use_emulator, …)".into()),
    }
}

fn parse_bool(v: &str) -> std::result::Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// Builds the object store of a target.
pub fn build_store(t: &TargetConfig) -> Result<Arc<dyn ObjectStore>> {
    let bad = |what: String| Error::Config {
        problems: vec![format!("target {}: {what}", t.name)],
    };
    let url = TargetUrl::parse(&t.url).map_err(&bad)?;
    let timeout = Duration::from_secs_f64(t.sync_timeout_seconds);
    let client = ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout.min(Duration::from_secs(5)));
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: timeout,
    };
    let with_prefix = |store: Arc<dyn ObjectStore>, prefix: &str| -> Arc<dyn ObjectStore> {
        if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        }
    };
    let opt_err = |k: &str, e: String| bad(format!("options.{k}: {e}"));
    Ok(match url {
        TargetUrl::Memory => Arc::new(InMemory::new()),
        TargetUrl::File(path) => {
            let mut fsync = true;
            for (k, v) in &t.options {
                check_option(&TargetUrl::File(path.clone()), k, v).map_err(|e| opt_err(k, e))?;
                fsync = parse_bool(v).map_err(|e| opt_err(k, e))?;
            }
            std::fs::create_dir_all(&path).map_err(|e| {
                Error::io(
                    format!("creating directory {} of target {}", path.display(), t.name),
                    e,
                )
            })?;
            let fs = LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| Error::target(&t.name, e))?
                .with_automatic_cleanup(true)
                .with_fsync(fsync);
            Arc::new(crate::localdir::LocalDir::new(fs, fsync))
        }
        TargetUrl::S3 { bucket, prefix } => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_client_options(client)
                .with_retry(retry);
            for (k, v) in &t.options {
                let key = AmazonS3ConfigKey::from_str(k).map_err(|e| opt_err(k, e.to_string()))?;
                b = b.with_config(key, v);
            }
            with_prefix(
                Arc::new(b.build().map_err(|e| Error::target(&t.name, e))?),
                &prefix,
            )
        }
        TargetUrl::Gcs { bucket, prefix } => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&bucket)
                .with_client_options(client)
                .with_retry(retry);
            for (k, v) in &t.options {
                let key = GoogleConfigKey::from_str(k).map_err(|e| opt_err(k, e.to_string()))?;
                b = b.with_config(key, v);
            }
            with_prefix(
                Arc::new(b.build().map_err(|e| Error::target(&t.name, e))?),
                &prefix,
            )
        }
        TargetUrl::Azure { container, prefix } => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(&container)
                .with_client_options(client)
                .with_retry(retry);
            for (k, v) in &t.options {
                let key = AzureConfigKey::from_str(k).map_err(|e| opt_err(k, e.to_string()))?;
                b = b.with_config(key, v);
            }
            with_prefix(
                Arc::new(b.build().map_err(|e| Error::target(&t.name, e))?),
                &prefix,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> TargetConfig {
        crate::config::Config::from_toml(&format!(
            "[primary]\nname = \"p\"\nurl = \"memory://\"\n[[targets]]\nname = \"t\"\nurl = \"{url}\""
        ))
        .expect("config")
        .targets
        .remove(0)
    }

    #[test]
    fn options_are_checked_per_scheme() {
        let s3 = TargetUrl::S3 {
            bucket: "b".into(),
            prefix: String::new(),
        };
        assert!(check_option(&s3, "endpoint", "http://127.0.0.1:1").is_ok());
        assert!(check_option(&s3, "allow_http", "true").is_ok());
        assert!(
            check_option(&s3, "endpont", "x")
                .unwrap_err()
                .contains("unknown option for s3")
        );
        let f = TargetUrl::File("/tmp".into());
        assert!(check_option(&f, "fsync", "false").is_ok());
        assert!(check_option(&f, "fsync", "maybe").is_err());
        assert!(check_option(&TargetUrl::Memory, "x", "y").is_err());
    }

    #[tokio::test]
    async fn file_and_s3_stores_build() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(&crate::config::file_url(&dir.path().join("t")));
        let store = build_store(&t).expect("file store");
        store.put(&"a/b".into(), "x".into()).await.expect("put");
        assert_eq!(std::fs::read(dir.path().join("t/a/b")).expect("file"), b"x");
        let mut s3 = target("s3://bucket/prefix");
        s3.options
            .insert("endpoint".into(), "http://127.0.0.1:9".into());
        s3.options.insert("region".into(), "us-east-1".into());
        s3.options.insert("access_key_id".into(), "a".into());
        s3.options.insert("secret_access_key".into(), "b".into());
        build_store(&s3).expect("s3 store builds without network");
    }
}
