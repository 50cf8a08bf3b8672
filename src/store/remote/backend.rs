//! Where a remote's objects live: one small trait over keyed byte objects, and its three
//! implementations — S3 (any S3-compatible service: Garage, AWS, R2, MinIO, Ceph), a plain
//! directory, and read-only HTTP (a CDN, or a bucket's website endpoint). Everything above
//! this trait (what the keys mean, what is verified) is the same whichever answers. The two
//! HTTP backends (S3 and read-only HTTP) read an answer's status here, one way.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::{Context, Result, anyhow, bail};

/// A boxed future, so that the trait stays usable as `dyn Backend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an upload sends.
#[derive(Debug)]
pub enum Body {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file, streamed.
    File(PathBuf),
}

impl Body {
    /// Its length in bytes.
    pub fn len(&self) -> Result<u64> {
        Ok(match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File(p) => std::fs::metadata(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .len(),
        })
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Keyed byte objects.
pub trait Backend: Send + Sync {
    /// Where the objects are, for messages (never with credentials).
    fn describe(&self) -> &str;

    /// The object at `key`, or `None` if there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    /// Whether there is an object at `key`.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Stores `body` at `key`, replacing what was there.
    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<()>>;
}

/// A directory holding objects as files (`file://DIR`): a remote for one machine's other
/// stores, for NFS, and for tests.
pub struct Directory {
    root: PathBuf,
    shown: String,
}

impl Directory {
    /// The objects under `root` (created when the first one is written).
    pub fn new(root: &Path) -> Directory {
        Directory {
            root: root.to_owned(),
            shown: format!("file://{}", root.display()),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty() || key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            bail!("bad object key `{key}`");
        }
        Ok(self.root.join(key))
    }
}

impl Backend for Directory {
    fn describe(&self) -> &str {
        &self.shown
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { Ok(tokio::fs::try_exists(self.path(key)?).await.unwrap_or(false)) })
    }

    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let ctx = || format!("cannot write {}", path.display());
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await.with_context(ctx)?;
            }
            // Whole or not at all, as every store write.
            let tmp = path.with_file_name(format!(
                ".{}.{}.tmp",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("object"),
                std::process::id()
            ));
            match body {
                Body::Bytes(bytes) => tokio::fs::write(&tmp, bytes).await.with_context(ctx)?,
                Body::File(from) => {
                    tokio::fs::copy(&from, &tmp).await.with_context(ctx)?;
                }
            }
            tokio::fs::rename(&tmp, &path).await.with_context(ctx)
        })
    }
}

/// Objects served over plain HTTP(S) GET, read-only: a CDN in front of a bucket, or a
/// bucket's website endpoint.
pub struct Http {
    base: reqwest::Url,
    client: reqwest::Client,
    shown: String,
}

impl Http {
    /// Objects under `base` (an http or https URL).
    pub fn new(base: &str, client: reqwest::Client) -> Result<Http> {
        let base = if base.ends_with('/') {
            base.to_owned()
        } else {
            format!("{base}/")
        };
        let url = reqwest::Url::parse(&base).with_context(|| format!("`{base}` is not a URL"))?;
        Ok(Http {
            shown: url.to_string(),
            base: url,
            client,
        })
    }

    fn url(&self, key: &str) -> Result<reqwest::Url> {
        self.base.join(key).with_context(|| format!("bad object key `{key}`"))
    }
}

impl Backend for Http {
    fn describe(&self) -> &str {
        &self.shown
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let url = self.url(key)?;
            let what = format!("GET {url}");
            get_object(self.client.get(url), &what, HTTP_ABSENT, async |r| {
                http_failure(&what, &r)
            })
            .await
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let url = self.url(key)?;
            let what = format!("HEAD {url}");
            head_object(self.client.head(url), &what, HTTP_ABSENT, async |r| {
                http_failure(&what, &r)
            })
            .await
        })
    }

    fn put<'a>(&'a self, key: &'a str, _body: Body) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { bail!("{}: an HTTP remote is read-only (cannot store {key})", self.shown) })
    }
}

/// What a plain HTTP server may say when it has no such object: 404, or 403 (a bucket's
/// website endpoint without public listing), or 410.
const HTTP_ABSENT: &[u16] = &[404, 403, 410];

/// A read-only HTTP remote's failure: the request and the status.
fn http_failure(what: &str, response: &reqwest::Response) -> anyhow::Error {
    anyhow!("{what}: HTTP {}", response.status().as_u16())
}

/// Sends a GET of one object (`what` names it in messages): its bytes when the answer is
/// 200, `None` when the status is one of `absent`, else the error `failed` makes of the
/// response. Every HTTP backend reads statuses this way; only what counts as absent and how a
/// failure is told differ.
pub(super) async fn get_object(
    request: reqwest::RequestBuilder,
    what: &str,
    absent: &[u16],
    failed: impl AsyncFnOnce(reqwest::Response) -> anyhow::Error,
) -> Result<Option<Vec<u8>>> {
    let Some(response) = send(request, what, absent, failed).await? else {
        return Ok(None);
    };
    let bytes = response
        .bytes()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| what.to_owned())?;
    Ok(Some(bytes.to_vec()))
}

/// Sends a HEAD of one object: whether it is there, with statuses read as [`get_object`]
/// reads them.
pub(super) async fn head_object(
    request: reqwest::RequestBuilder,
    what: &str,
    absent: &[u16],
    failed: impl AsyncFnOnce(reqwest::Response) -> anyhow::Error,
) -> Result<bool> {
    Ok(send(request, what, absent, failed).await?.is_some())
}

/// The response when it is 200, `None` when its status is one of `absent`.
async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    absent: &[u16],
    failed: impl AsyncFnOnce(reqwest::Response) -> anyhow::Error,
) -> Result<Option<reqwest::Response>> {
    // Errors without their URL: a presigned one carries a signature, and `what` names the
    // request.
    let response = request
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| what.to_owned())?;
    match response.status().as_u16() {
        200 => Ok(Some(response)),
        status if absent.contains(&status) => Ok(None),
        _ => Err(failed(response).await),
    }
}
