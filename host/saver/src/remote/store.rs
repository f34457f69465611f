//! Which object store a URL names, and the key under which an object name lives in it.
//!
//! A URL has two parts: the store (a bucket, a container, a local directory, an in-memory map) and
//! an optional path that is a *prefix* for every object name. `s3://ckpts/runs/a` with object name
//! `ep1.pt` stores the key `runs/a/ep1.pt` in bucket `ckpts`. Keys are always bucket-relative, which
//! is what Composer writes into its `.symlink` objects, so a pointer written by cairn is readable by
//! Composer's loader and the other way round.
//!
//! `file://` URLs are the embedded default (`file://./remote`, relative to the working directory):
//! the whole path is the store's root directory, there is no prefix, and every write is fsynced so
//! a "remote" copy on local disk is as durable as one in a bucket.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use object_store::{ObjectStore, ObjectStoreExt};

/// Why a URL could not be turned into a store, or an object name into a key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL has no `scheme://` part or names a scheme cairn cannot store to.
    #[error("remote URL '{url}' is not supported: {}", unsupported_reason(.url))]
    UnsupportedUrl {
        /// The URL as given.
        url: String,
    },
    /// `s3://`, `gs://` and `az://` need a bucket (container) name.
    #[error("remote URL '{url}' names no bucket")]
    MissingBucket {
        /// The URL as given.
        url: String,
    },
    /// The path part of the URL is not a valid object-key prefix.
    #[error("remote URL '{url}' has an invalid path: {reason}")]
    InvalidPrefix {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The local directory of a `file://` URL could not be created or opened.
    #[error("cannot use local directory '{}' for remote URL '{url}': {source}", dir.display())]
    LocalDirectory {
        /// The URL as given.
        url: String,
        /// The directory it names.
        dir: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The object-store client rejected its configuration (credentials, endpoint, region...).
    #[error(
        "cannot configure the store for remote URL '{url}': {}",
        super::error_chain(.source)
    )]
    Configure {
        /// The URL as given.
        url: String,
        /// The object store's own error.
        source: object_store::Error,
    },
    /// The store did not answer, or refused, a probe request (credentials, endpoint, bucket).
    #[error("cannot reach remote URL '{url}': {reason}")]
    Unreachable {
        /// The URL as given.
        url: String,
        /// The store's own error, or the time bound that passed.
        reason: String,
    },
    /// An object name cannot be used as a key (empty, `..`, empty segments...).
    #[error("'{name}' is not a valid object name in remote URL '{url}': {reason}")]
    InvalidObjectName {
        /// The URL of the store.
        url: String,
        /// The object name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// HTTP client knobs for network stores. The defaults suit real clouds; tests shorten them so a
/// fault shows up in seconds rather than minutes.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Retries of one HTTP request on 5xx, throttling and connection errors, with exponential
    /// backoff and jitter (object_store's own retry loop). Kept under 5 minutes in total so
    /// request signatures do not expire mid-retry.
    pub retry: RetryConfig,
    /// Bound on one HTTP request. It must cover one multipart part on the slowest link you
    /// expect: 300 s lets a 64 MiB part go through at ~220 KiB/s.
    pub request_timeout: Duration,
    /// Bound on establishing one TCP/TLS connection.
    pub connect_timeout: Duration,
    /// For `s3://`: read the `AWS_*` variables from this list instead of the process environment.
    /// The variables mean exactly the same; this lets tests and embedders run several stores with
    /// different endpoints in one process without mutating the (process-global) environment.
    pub env: Option<Vec<(String, String)>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 10,
                retry_timeout: Duration::from_secs(180),
            },
            request_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            env: None,
        }
    }
}

/// An object store named by a URL, plus the key prefix from the URL's path. Cheap to clone: clones
/// share one client (and, for `memory://`, one map).
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
    url: String,
    /// Whether `PutMode::Create` is honoured by this store (S3 with `If-None-Match`, GCS, Azure,
    /// local disk, memory). All supported stores do; kept as a field so a store that does not is
    /// handled by a HEAD check rather than silently overwriting.
    conditional_create: bool,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.url)
            .field("store", &self.inner.to_string())
            .finish()
    }
}

impl RemoteStore {
    /// The store a URL names, with default client options. See [`RemoteStore::from_url_with`].
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with(url, &StoreOptions::default())
    }

    /// The store a URL names.
    ///
    /// * `file://DIR` — a local directory (created if missing), relative to the working directory
    ///   unless absolute (`file:///abs/dir`); writes are fsynced.
    /// * `memory://[PREFIX]` — a fresh in-memory store (for tests; clones share it).
    /// * `s3://BUCKET[/PREFIX]` — reads `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` and `AWS_ALLOW_HTTP` from the
    ///   environment as the AWS tools do; always path-style requests, which every S3-compatible
    ///   server understands (virtual-hosted style needs wildcard DNS).
    /// * `gs://BUCKET[/PREFIX]` — `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`...
    /// * `az://CONTAINER[/PREFIX]` — `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`...
    pub fn from_url_with(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        check_url(url)?;
        let (scheme, rest) = url.split_once("://").expect("check_url found the scheme");
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "file" => Self::local(url, rest),
            "memory" => Ok(Self {
                inner: Arc::new(InMemory::new()),
                prefix: parse_prefix(url, rest)?,
                url: url.to_string(),
                conditional_create: true,
            }),
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" => {
                let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                let client = client_options(options);
                let aws_env: Vec<(String, String)> = match &options.env {
                    Some(vars) => vars.clone(),
                    None => std::env::vars().collect(),
                };
                let configure = |source| StoreError::Configure {
                    url: url.to_string(),
                    source,
                };
                let inner: Arc<dyn ObjectStore> = match scheme.as_str() {
                    "s3" | "s3a" => Arc::new(
                        aws_builder(&aws_env)
                            .with_bucket_name(bucket)
                            .with_virtual_hosted_style_request(false)
                            .with_retry(options.retry.clone())
                            .with_client_options(client)
                            .build()
                            .map_err(configure)?,
                    ),
                    "gs" => Arc::new(
                        GoogleCloudStorageBuilder::from_env()
                            .with_bucket_name(bucket)
                            .with_retry(options.retry.clone())
                            .with_client_options(client)
                            .build()
                            .map_err(configure)?,
                    ),
                    _ => Arc::new(
                        MicrosoftAzureBuilder::from_env()
                            .with_container_name(bucket)
                            .with_retry(options.retry.clone())
                            .with_client_options(client)
                            .build()
                            .map_err(configure)?,
                    ),
                };
                Ok(Self {
                    inner,
                    prefix: parse_prefix(url, path)?,
                    url: url.to_string(),
                    conditional_create: true,
                })
            }
            _ => unreachable!("check_url accepts only the schemes served here"),
        }
    }

    /// A store around an existing object_store client (a custom store, or a test wrapper around
    /// a real one). `url` is only used in messages; `prefix` is joined to every object name.
    pub fn from_object_store(
        inner: Arc<dyn ObjectStore>,
        url: &str,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            inner,
            prefix: parse_prefix(url, prefix)?,
            url: url.to_string(),
            conditional_create: true,
        })
    }

    fn local(url: &str, path: &str) -> Result<Self, StoreError> {
        let dir = PathBuf::from(local_dir(path));
        let local_error = |source| StoreError::LocalDirectory {
            url: url.to_string(),
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(local_error)?;
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| StoreError::Configure {
                url: url.to_string(),
                source,
            })?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self {
            inner: Arc::new(fs),
            prefix: None,
            url: url.to_string(),
            conditional_create: true,
        })
    }

    /// Probe the store once (a HEAD of a key that need not exist), so bad credentials, a wrong
    /// endpoint or a missing bucket are reported before training starts rather than at the first
    /// upload. Composer does the same with a marker object at `INIT`; a HEAD writes nothing.
    /// Synchronous and bounded by `limit`; call it from the CLI, not from async code.
    pub fn check_access(&self, limit: Duration) -> Result<(), StoreError> {
        let probe = self.key(".cairn-access-check")?;
        let unreachable = |reason: String| StoreError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        // The timer must be created inside the runtime, hence the async block.
        let head =
            runtime.block_on(async { tokio::time::timeout(limit, self.inner.head(&probe)).await });
        match head {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(unreachable(super::error_chain(&e))),
            Err(_) => Err(unreachable(format!(
                "no answer within {:.1} s",
                limit.as_secs_f64()
            ))),
        }
    }

    /// The URL this store was made from, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object-store client, addressed with bucket-relative keys (see [`RemoteStore::key`]).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Whether `PutMode::Create` is enforced by the store itself.
    pub fn supports_conditional_create(&self) -> bool {
        self.conditional_create
    }

    /// The bucket-relative key of an object name: the URL's prefix joined with the name. A leading
    /// `/` in the name is ignored, as Composer does.
    pub fn key(&self, name: &str) -> Result<ObjectPath, StoreError> {
        let relative = object_name(name).map_err(|reason| StoreError::InvalidObjectName {
            url: self.url.clone(),
            name: name.to_string(),
            reason,
        })?;
        Ok(match &self.prefix {
            None => relative,
            Some(prefix) => prefix.parts().chain(relative.parts()).collect(),
        })
    }
}

/// The URL schemes [`RemoteStore::from_url_with`] serves.
pub const SCHEMES: [&str; 8] = ["file", "memory", "s3", "s3a", "gs", "az", "azure", "abfs"];

/// The scheme of a location written as a URL, lower-cased, whether or not cairn serves it:
/// `scheme://...` with an RFC 3986 scheme (`gcs://b` → `gcs`), or Databricks' `dbfs:/...`.
/// `None` for a local path (`runs/ckpt`, `/abs`, `C:\dir`, `{run_name}/checkpoints`).
pub fn url_scheme(location: &str) -> Option<String> {
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("dbfs:/") {
        return Some("dbfs".to_owned());
    }
    let (scheme, _) = lower.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then(|| scheme.to_owned())
}

/// Whether a file in a `file://` store (or a folder mirrored from one) is the file store's staging
/// file of an upload, `NAME#DIGITS`: `object_store` writes an object there and renames it to NAME
/// once complete, so one left behind is an upload a killed process was in, never an object (the
/// store's listings and reads skip it too, as S3 hides a multipart upload in progress).
pub fn is_staging_file(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a `folder` (or any location) names a store rather than a local path: it has a scheme
/// cairn can store to. Composer treats such a `folder` by writing checkpoints to a local temporary
/// directory and uploading each one.
pub fn is_remote_url(location: &str) -> bool {
    url_scheme(location).is_some_and(|s| SCHEMES.contains(&s.as_str()))
}

/// Check a store URL without building a client or touching the disk (what a config load may
/// do): a scheme cairn serves, a bucket where one is needed, a valid key prefix.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    let unsupported = || StoreError::UnsupportedUrl {
        url: url.to_string(),
    };
    if !is_remote_url(url) {
        return Err(unsupported());
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(unsupported)?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            if local_dir(rest).is_empty() {
                return Err(StoreError::InvalidPrefix {
                    url: url.to_string(),
                    reason: "it names no directory".to_string(),
                });
            }
        }
        "memory" => {
            parse_prefix(url, rest)?;
        }
        _ => {
            let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::MissingBucket {
                    url: url.to_string(),
                });
            }
            parse_prefix(url, path)?;
        }
    }
    Ok(())
}

/// Why a URL is not one cairn serves, naming what it serves (and `gs://` for the common `gcs://`).
fn unsupported_reason(url: &str) -> String {
    let supported = "cairn serves file://DIR, memory://, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX and az://CONTAINER/PREFIX";
    match url_scheme(url).as_deref() {
        None => format!("it has no scheme:// part; {supported}"),
        Some("gcs") => format!(
            "Google Cloud Storage is written gs://, not gcs:// (gs://{}); {supported}",
            url.split_once("://").map_or("", |(_, rest)| rest)
        ),
        Some(scheme) => format!("cairn does not store to {scheme}:// ({supported})"),
    }
}

/// The directory a `file://` URL's path names: `./remote` → `./remote`, `/abs` → `/abs`,
/// `localhost/abs` → `/abs`.
fn local_dir(path: &str) -> &str {
    path.strip_prefix("localhost")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path)
}

/// The key of an object name relative to a store URL, by the rules [`RemoteStore::key`] applies
/// (a leading `/` ignored, as Composer does; no empty, `.` or `..` segments), or why it is not
/// one. A config load renders its name templates through this.
pub fn object_name(name: &str) -> Result<ObjectPath, String> {
    let trimmed = name.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err("it is empty".to_string());
    }
    let relative = ObjectPath::parse(trimmed).map_err(|e| e.to_string())?;
    if relative
        .parts()
        .any(|p| p.as_ref() == "." || p.as_ref() == "..")
    {
        return Err("it contains '.' or '..' segments".to_string());
    }
    Ok(relative)
}

fn parse_prefix(url: &str, path: &str) -> Result<Option<ObjectPath>, StoreError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    ObjectPath::parse(trimmed)
        .map(Some)
        .map_err(|e| StoreError::InvalidPrefix {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

/// `AmazonS3Builder::from_env`, over an explicit list: every `AWS_*` variable object_store knows
/// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`/`AWS_DEFAULT_REGION`...) is applied; others are ignored.
fn aws_builder(vars: &[(String, String)]) -> AmazonS3Builder {
    vars.iter().filter(|(k, _)| k.starts_with("AWS_")).fold(
        AmazonS3Builder::new(),
        |builder, (k, v)| match k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            Ok(key) => builder.with_config(key, v),
            Err(_) => builder,
        },
    )
}

fn client_options(options: &StoreOptions) -> ClientOptions {
    // `with_client_options` replaces the client options the builder read from the variables, so
    // `AWS_ALLOW_HTTP` is applied here rather than through the builder.
    let allow_http = match &options.env {
        Some(vars) => vars
            .iter()
            .find(|(k, _)| k == "AWS_ALLOW_HTTP")
            .map(|(_, v)| v.clone()),
        None => std::env::var("AWS_ALLOW_HTTP").ok(),
    }
    .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    ClientOptions::new()
        .with_timeout(options.request_timeout)
        .with_connect_timeout(options.connect_timeout)
        .with_allow_http(allow_http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_are_name_hash_digits() {
        for name in ["ep1.pt#1", "latest-rank0.pt.symlink#12"] {
            assert!(is_staging_file(name), "{name}");
        }
        for name in ["ep1.pt", "ep1.pt#", "ep#1.pt", "a#b", "ep1.pt#1a"] {
            assert!(!is_staging_file(name), "{name}");
        }
    }

    #[test]
    fn memory_url_prefix_is_joined_to_names() {
        let store = RemoteStore::from_url("memory://runs/a/").unwrap();
        assert_eq!(store.key("ep1.pt").unwrap().as_ref(), "runs/a/ep1.pt");
        assert_eq!(
            store.key("/sub/ep1.pt").unwrap().as_ref(),
            "runs/a/sub/ep1.pt"
        );
        let bare = RemoteStore::from_url("memory://").unwrap();
        assert_eq!(bare.key("ep1.pt").unwrap().as_ref(), "ep1.pt");
    }

    #[test]
    fn bad_urls_and_names_are_one_sentence_naming_the_url() {
        let err = RemoteStore::from_url("ftp://host/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'ftp://host/x'"), "{err}");
        let err = RemoteStore::from_url("no-scheme").unwrap_err().to_string();
        assert!(err.contains("'no-scheme'"), "{err}");
        let err = RemoteStore::from_url("s3:///x").unwrap_err().to_string();
        assert!(err.contains("names no bucket"), "{err}");
        let store = RemoteStore::from_url("memory://p").unwrap();
        for bad in ["", "/", "a//b", "a/../b"] {
            let err = store.key(bad).unwrap_err().to_string();
            assert!(err.contains("memory://p"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn access_check_passes_on_a_working_store_and_fails_on_a_dead_endpoint() {
        RemoteStore::from_url("memory://x")
            .unwrap()
            .check_access(Duration::from_secs(5))
            .unwrap();
        // A loopback port with nothing listening: refused at once, reported with the URL.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let options = StoreOptions {
            retry: RetryConfig {
                max_retries: 1,
                ..StoreOptions::default().retry
            },
            env: Some(vec![
                (
                    "AWS_ENDPOINT_URL".into(),
                    format!("http://127.0.0.1:{port}"),
                ),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_ACCESS_KEY_ID".into(), "k".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
            ]),
            ..StoreOptions::default()
        };
        let store = RemoteStore::from_url_with("s3://bucket/p", &options).unwrap();
        let err = store
            .check_access(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot reach remote URL 's3://bucket/p'"),
            "{err}"
        );
    }

    #[test]
    fn file_url_creates_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/remote");
        let url = format!("file://{}", dir.display());
        let store = RemoteStore::from_url(&url).unwrap();
        assert!(dir.is_dir());
        assert_eq!(store.key("a/b.pt").unwrap().as_ref(), "a/b.pt");
    }

    #[test]
    fn remote_urls_are_told_from_local_paths() {
        for url in [
            "s3://b/p",
            "S3://b",
            "gs://b",
            "az://c/p",
            "file://./remote",
            "memory://",
        ] {
            assert!(is_remote_url(url), "{url}");
        }
        for path in [
            "runs/ckpt",
            "/abs/dir",
            "C:\\dir",
            "ftp://x",
            "{run_name}/checkpoints",
        ] {
            assert!(!is_remote_url(path), "{path}");
        }
    }

    #[test]
    fn schemes_cairn_does_not_serve_are_told_from_local_paths() {
        for (location, scheme) in [
            ("gcs://bucket/ckpts", Some("gcs")),
            ("oci://b/p", Some("oci")),
            ("dbfs:/Volumes/x", Some("dbfs")),
            ("DBFS:/x", Some("dbfs")),
            ("wandb://project", Some("wandb")),
            ("sftp://host/p", Some("sftp")),
            ("S3://b", Some("s3")),
            ("runs/ckpt", None),
            ("a/b://c", None),
            ("{run_name}://x", None),
            ("C:\\dir", None),
        ] {
            assert_eq!(url_scheme(location).as_deref(), scheme, "{location}");
        }
        let err = check_url("gcs://bucket/ckpts").unwrap_err().to_string();
        assert!(
            err.contains("gs://bucket/ckpts") && err.contains("s3://"),
            "{err}"
        );
        let err = check_url("dbfs:/Volumes/x").unwrap_err().to_string();
        assert!(err.contains("dbfs://") && err.contains("gs://"), "{err}");
        for bad in ["file://", "s3://", "s3:///x", "memory://a//b"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        for good in [
            "file://./remote",
            "file:///abs",
            "memory://",
            "s3://b/p",
            "az://c",
        ] {
            check_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn s3_url_reads_bucket_and_prefix() {
        let store = RemoteStore::from_url("s3://bucket/runs/x").unwrap();
        assert_eq!(store.key("ep1.pt").unwrap().as_ref(), "runs/x/ep1.pt");
    }
}
