//! The S3 backend: requests signed with AWS Signature V4 (rusty-s3, as presigned URLs) and sent
//! through reqwest, so every S3-compatible service works alike. Credentials come the way every
//! S3 tool takes them — `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`),
//! else the `~/.aws/credentials` profile `AWS_PROFILE` names (default `default`) — and are never
//! logged, printed or shown to the fetcher.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::backend::{Backend, Body, BoxFuture, get_object, head_object};

/// What S3 says when it has no such object (a missing key, with the rights to list the
/// bucket; without them it says 403, which is a failure to report).
const S3_ABSENT: &[u16] = &[404];

/// Statuses that mean "not now" rather than "no": S3's `SlowDown` is a 503, and Garage answers
/// 503 while its database is locked by many writes at once (pushing a 10k-entry tree hit it).
/// A write turned away so is tried again after each of [`RETRY_PAUSES`].
const TRANSIENT: &[u16] = &[429, 500, 502, 503, 504];

/// The pauses before each further try of a write turned away for now (3.75 s in all).
const RETRY_PAUSES: &[Duration] = &[
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// An S3 bucket.
pub struct S3 {
    bucket: Bucket,
    credentials: Credentials,
    client: reqwest::Client,
    /// Keys are stored under this prefix (empty, or ending in `/`).
    prefix: String,
    shown: String,
}

/// What `s3://BUCKET[/PREFIX]?endpoint=URL&region=R&profile=P&style=path|virtual` says.
#[derive(Debug, PartialEq, Eq)]
pub struct Location {
    /// The bucket's name.
    pub bucket: String,
    /// A key prefix inside it.
    pub prefix: String,
    /// The service's endpoint (AWS's for the region when absent).
    pub endpoint: String,
    /// The region (`AWS_REGION`, else `us-east-1`).
    pub region: String,
    /// Which credentials profile to read.
    pub profile: Option<String>,
    /// Path-style URLs (the default: what every S3-compatible service answers).
    pub path_style: bool,
}

impl Location {
    /// Parses an `s3://` remote URL.
    pub fn parse(url: &str) -> Result<Location> {
        let rest = url.strip_prefix("s3://").context("an S3 remote starts with s3://")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            bail!("`{url}` names no bucket (s3://BUCKET?endpoint=…)");
        }
        let prefix = prefix.trim_matches('/');
        let mut location = Location {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint: String::new(),
            region: std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
            profile: None,
            path_style: true,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "endpoint" => location.endpoint = value,
                "region" => location.region = value,
                "profile" => location.profile = Some(value),
                "style" => {
                    location.path_style = match value.as_str() {
                        "path" => true,
                        "virtual" => false,
                        other => bail!("`{url}`: style must be path or virtual, not `{other}`"),
                    }
                }
                other => bail!("`{url}`: unknown setting `{other}` (endpoint, region, profile, style)"),
            }
        }
        if location.endpoint.is_empty() {
            location.endpoint = format!("https://s3.{}.amazonaws.com", location.region);
        }
        Ok(location)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The credentials the environment gives, then the shared credentials file's profile.
fn credentials(profile: Option<&str>) -> Result<Credentials> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if profile.is_none()
        && let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(match var("AWS_SESSION_TOKEN") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        });
    }
    let profile = profile
        .map(str::to_owned)
        .or_else(|| var("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))
        .context(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or HOME for ~/.aws/credentials",
        )?;
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set and {} cannot be read",
            file.display()
        )
    })?;
    let fields =
        profile_fields(&text, &profile).with_context(|| format!("{} has no profile [{profile}]", file.display()))?;
    let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let (Some(key), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) else {
        bail!(
            "profile [{profile}] in {} lacks aws_access_key_id or aws_secret_access_key",
            file.display()
        );
    };
    Ok(match get("aws_session_token") {
        Some(token) => Credentials::new_with_token(key, secret, token),
        None => Credentials::new(key, secret),
    })
}

/// The `key = value` lines of `[profile]` in an INI-style credentials file.
fn profile_fields(text: &str, profile: &str) -> Option<Vec<(String, String)>> {
    let mut fields = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if fields.is_some() {
                break;
            }
            if section.trim() == profile {
                fields = Some(Vec::new());
            }
            continue;
        }
        if let Some(fields) = &mut fields
            && let Some((k, v)) = line.split_once('=')
        {
            fields.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    fields
}

impl S3 {
    /// The bucket at `location`, reached through `client`.
    pub fn new(location: &Location, client: reqwest::Client) -> Result<S3> {
        let endpoint = reqwest::Url::parse(&location.endpoint)
            .with_context(|| format!("the S3 endpoint `{}` is not a URL", location.endpoint))?;
        let style = if location.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, location.bucket.clone(), location.region.clone())
            .map_err(|e| anyhow!("bucket `{}` at {}: {e}", location.bucket, location.endpoint))?;
        let shown = format!("s3://{}/{} at {}", location.bucket, location.prefix, location.endpoint);
        Ok(S3 {
            bucket,
            credentials: credentials(location.profile.as_deref())?,
            client,
            prefix: location.prefix.clone(),
            shown,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A signed GET (or HEAD) of `key`, and how messages name it.
    fn read(&self, method: reqwest::Method, key: &str) -> (reqwest::RequestBuilder, String) {
        let full = self.key(key);
        let request = if method == reqwest::Method::HEAD {
            let url = self.bucket.head_object(Some(&self.credentials), &full).sign(SIGNED_FOR);
            self.client.head(url)
        } else {
            let url = self.bucket.get_object(Some(&self.credentials), &full).sign(SIGNED_FOR);
            self.client.get(url)
        };
        (request, format!("{method} {key}"))
    }

    /// What the service said, for an error message.
    async fn failure(&self, what: &str, response: reqwest::Response) -> anyhow::Error {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let code = between(&body, "<Code>", "</Code>").unwrap_or_default();
        let message = between(&body, "<Message>", "</Message>").unwrap_or_default();
        let hint = match (status.as_u16(), code) {
            (403, _) | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") | (_, "AccessDenied") => {
                " (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile, and the key's rights on the bucket)"
            }
            (_, "NoSuchBucket") => " (create the bucket, or fix the remote URL)",
            _ => "",
        };
        anyhow!("{}: {what}: HTTP {status} {code} {message}{hint}", self.shown)
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

impl Backend for S3 {
    fn describe(&self) -> &str {
        &self.shown
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let (request, what) = self.read(reqwest::Method::GET, key);
            let shown = format!("{}: {what}", self.shown);
            get_object(request, &shown, S3_ABSENT, async |r| self.failure(&what, r).await).await
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (request, what) = self.read(reqwest::Method::HEAD, key);
            let shown = format!("{}: {what}", self.shown);
            head_object(request, &shown, S3_ABSENT, async |r| self.failure(&what, r).await).await
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let full = self.key(key);
            let url = self.bucket.put_object(Some(&self.credentials), &full).sign(SIGNED_FOR);
            let len = body.len()?;
            let mut request = self.client.put(url).header(reqwest::header::CONTENT_LENGTH, len);
            // Garage 2.5 stalled the request after an empty PUT on the same kept-alive
            // connection until the client's read timeout: an empty object gets a connection
            // of its own.
            if len == 0 {
                request = request.header(reqwest::header::CONNECTION, "close");
            }
            // Bytes go into the request once (each try clones it, sharing them); a file is
            // opened again for each try.
            let (request, file) = match body {
                Body::Bytes(bytes) => (request.body(bytes), None),
                Body::File(path) => (request, Some(path)),
            };
            let mut pauses = RETRY_PAUSES.iter();
            loop {
                let mut attempt = request
                    .try_clone()
                    .ok_or_else(|| anyhow!("{}: PUT {key}: the request cannot be sent again", self.shown))?;
                if let Some(path) = &file {
                    let file = tokio::fs::File::open(path)
                        .await
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    attempt = attempt.body(reqwest::Body::from(file));
                }
                // Without its URL: a presigned one carries a signature, and `PUT key` names it.
                let response = attempt
                    .send()
                    .await
                    .map_err(reqwest::Error::without_url)
                    .with_context(|| format!("{}: PUT {key}", self.shown))?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                match pauses.next() {
                    Some(pause) if TRANSIENT.contains(&status.as_u16()) => {
                        tracing::debug!(%status, key, "the remote turned a write away for now; trying again");
                        drop(response);
                        tokio::time::sleep(*pause).await;
                    }
                    _ => return Err(self.failure(&format!("PUT {key}"), response).await),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Each request a test server saw: its method and body.
    type Seen = Vec<(String, Vec<u8>)>;

    /// A one-bucket server on loopback that answers each request with the next of `statuses`,
    /// and returns every request it saw.
    fn serve(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in statuses {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
                let (mut method, mut len) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("read a header");
                    if method.is_empty() {
                        method = line.split(' ').next().unwrap_or_default().to_owned();
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().expect("a length");
                    }
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).expect("read the body");
                seen.push((method, body));
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                (&stream).write_all(answer.as_bytes()).expect("answer");
            }
            seen
        });
        (url, handle)
    }

    fn bucket(url: &str) -> S3 {
        let location = Location::parse(&format!("s3://b?endpoint={url}&region=r")).expect("a location");
        let endpoint = reqwest::Url::parse(url).expect("a URL");
        S3 {
            bucket: Bucket::new(endpoint, UrlStyle::Path, "b".to_owned(), "r".to_owned()).expect("a bucket"),
            credentials: Credentials::new("key", "secret"),
            client: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
            prefix: location.prefix,
            shown: "s3://b/".to_owned(),
        }
    }

    fn put(s3: &S3, body: Body) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(s3.put("blobs/x", body))
    }

    #[test]
    fn a_write_turned_away_for_now_is_sent_again_whole() {
        let (url, server) = serve(vec![503, 503, 200]);
        put(&bucket(&url), Body::Bytes(b"twelve bytes".to_vec())).expect("the third try succeeds");
        let seen = server.join().expect("the server");
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(m, b)| m == "PUT" && b == b"twelve bytes"), "{seen:?}");

        let path = std::env::temp_dir().join(format!("cab-s3-retry-{}", std::process::id()));
        std::fs::write(&path, b"from a file").expect("write");
        let (url, server) = serve(vec![500, 200]);
        let result = put(&bucket(&url), Body::File(path.clone()));
        let _ = std::fs::remove_file(&path);
        result.expect("the second try succeeds");
        let seen = server.join().expect("the server");
        assert_eq!(
            seen.iter().map(|(_, b)| b.as_slice()).collect::<Vec<_>>(),
            [b"from a file"; 2]
        );
    }

    #[test]
    fn a_write_refused_is_not_sent_again() {
        let (url, server) = serve(vec![403]);
        let err = put(&bucket(&url), Body::Bytes(b"x".to_vec())).expect_err("403 is final");
        assert!(format!("{err:#}").contains("HTTP 403"), "{err:#}");
        assert_eq!(server.join().expect("the server").len(), 1);
    }
}
