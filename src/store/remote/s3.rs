//! The S3 backend: requests signed with AWS Signature V4 (rusty-s3, as presigned URLs) and sent
//! through reqwest, so every S3-compatible service works alike. Credentials come the way every
//! S3 tool takes them — `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`),
//! else the `~/.aws/credentials` profile `AWS_PROFILE` names (default `default`) — and are never
//! logged, printed or shown to the fetcher.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// Reads (with the client's read timeout).
    client: reqwest::Client,
    /// Writes (without it: each watches its own progress against `stall`).
    upload: reqwest::Client,
    stall: Duration,
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
    /// The bucket at `location`, read through `client` and written through `upload` (a client
    /// without a read timeout); a write fails once nothing moves for `stall`.
    pub fn new(location: &Location, client: reqwest::Client, upload: reqwest::Client, stall: Duration) -> Result<S3> {
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
            upload,
            stall,
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

impl S3 {
    /// Sends a write, failing it once neither a byte of its body went out nor its answer came
    /// for `stall`: a long upload that progresses goes on.
    async fn send_watched(
        &self,
        request: reqwest::RequestBuilder,
        progress: &Progress,
        key: &str,
    ) -> Result<reqwest::Response> {
        let sending = request.send();
        tokio::pin!(sending);
        let tick = (self.stall / 4).min(Duration::from_secs(1));
        loop {
            tokio::select! {
                sent = &mut sending => {
                    // Without its URL: a presigned one carries a signature, and `PUT key` names it.
                    return sent
                        .map_err(reqwest::Error::without_url)
                        .with_context(|| format!("{}: PUT {key}", self.shown));
                }
                () = tokio::time::sleep(tick) => {
                    if progress.idle() >= self.stall {
                        bail!(
                            "{}: PUT {key}: stalled: nothing sent or answered for {} s",
                            self.shown,
                            self.stall.as_secs_f32()
                        );
                    }
                }
            }
        }
    }
}

/// When an upload last moved: the last piece of its body the connection took.
struct Progress {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn moved(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// What a write sends, ready to be sent again.
enum Source {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

/// The size of the pieces a body is sent in (each one is progress).
const PIECE: usize = 64 * 1024;

impl Source {
    /// The body of one try, in pieces, each noted in `progress` as the connection takes it.
    async fn stream(&self, progress: Arc<Progress>) -> Result<reqwest::Body> {
        use tokio::io::AsyncReadExt;
        /// What is left to send.
        enum Rest {
            Bytes(Arc<Vec<u8>>, usize),
            File(tokio::fs::File, PathBuf),
        }
        let rest = match self {
            Source::Bytes(bytes) => Rest::Bytes(bytes.clone(), 0),
            Source::File(path) => Rest::File(
                tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?,
                path.clone(),
            ),
        };
        let pieces = futures_util::stream::unfold(Some(rest), move |rest| {
            let progress = progress.clone();
            async move {
                let piece = match rest? {
                    Rest::Bytes(bytes, at) if at < bytes.len() => {
                        let end = (at + PIECE).min(bytes.len());
                        Ok((bytes[at..end].to_vec(), Rest::Bytes(bytes, end)))
                    }
                    Rest::Bytes(..) => return None,
                    Rest::File(mut file, path) => {
                        let mut piece = vec![0; PIECE];
                        match file.read(&mut piece).await {
                            Ok(0) => return None,
                            Ok(n) => {
                                piece.truncate(n);
                                Ok((piece, Rest::File(file, path)))
                            }
                            Err(e) => Err(std::io::Error::new(
                                e.kind(),
                                format!("cannot read {}: {e}", path.display()),
                            )),
                        }
                    }
                };
                progress.moved();
                Some(match piece {
                    Ok((piece, next)) => (Ok(piece), Some(next)),
                    // The error ends the body (and the request).
                    Err(e) => (Err(e), None),
                })
            }
        });
        Ok(reqwest::Body::wrap_stream(pieces))
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
            let mut request = self.upload.put(url).header(reqwest::header::CONTENT_LENGTH, len);
            // Garage 2.5 stalled the request after an empty PUT on the same kept-alive
            // connection until the client's read timeout: an empty object gets a connection
            // of its own.
            if len == 0 {
                request = request.header(reqwest::header::CONNECTION, "close");
            }
            // Bytes are held once (each try sends them again); a file is opened again for
            // each try.
            let body = match body {
                Body::Bytes(bytes) => Source::Bytes(Arc::new(bytes)),
                Body::File(path) => Source::File(path),
            };
            let mut pauses = RETRY_PAUSES.iter();
            loop {
                let attempt = request
                    .try_clone()
                    .ok_or_else(|| anyhow!("{}: PUT {key}: the request cannot be sent again", self.shown))?;
                let progress = Arc::new(Progress::new());
                let attempt = attempt.body(body.stream(progress.clone()).await?);
                let response = self.send_watched(attempt, &progress, key).await?;
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
            upload: reqwest::Client::new(),
            stall: Duration::from_secs(1),
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

    /// A server that takes one request's body `piece` bytes at a time, `pause` apart (after
    /// `wait` before the first), then answers 200; returns how many body bytes it took.
    fn serve_slowly(piece: usize, pause: Duration, wait: Duration) -> (String, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read a header");
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().expect("a length");
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            std::thread::sleep(wait);
            let (mut taken, mut buf) = (0, vec![0; piece]);
            while taken < len {
                let n = (len - taken).min(piece);
                if reader.read_exact(&mut buf[..n]).is_err() {
                    return taken;
                }
                taken += n;
                std::thread::sleep(pause);
            }
            let _ = (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            taken
        });
        (url, handle)
    }

    #[test]
    fn an_upload_longer_than_the_stall_timeout_goes_on_while_it_moves() {
        // 64 MiB taken at ~16 MiB/s: four seconds, twice the stall timeout, never idle for it.
        let (url, server) = serve_slowly(1 << 20, Duration::from_millis(60), Duration::ZERO);
        let mut s3 = bucket(&url);
        s3.stall = Duration::from_secs(2);
        let started = Instant::now();
        put(&s3, Body::Bytes(vec![7; 64 << 20])).expect("a slow upload that moves succeeds");
        assert!(
            started.elapsed() > s3.stall,
            "the upload was not slow: {:?}",
            started.elapsed()
        );
        assert_eq!(server.join().expect("the server"), 64 << 20);
    }

    #[test]
    fn an_upload_that_stops_moving_fails_after_the_stall_timeout() {
        // The server reads nothing for 8 s: once the socket buffers are full, nothing moves.
        let (url, server) = serve_slowly(1 << 20, Duration::ZERO, Duration::from_secs(8));
        let s3 = bucket(&url);
        let started = Instant::now();
        let err = put(&s3, Body::Bytes(vec![7; 64 << 20])).expect_err("a stalled upload fails");
        assert!(format!("{err:#}").contains("stalled"), "{err:#}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "gave up after {:?}",
            started.elapsed()
        );
        let _ = server.join();
    }

    #[test]
    fn a_write_refused_is_not_sent_again() {
        let (url, server) = serve(vec![403]);
        let err = put(&bucket(&url), Body::Bytes(b"x".to_vec())).expect_err("403 is final");
        assert!(format!("{err:#}").contains("HTTP 403"), "{err:#}");
        assert_eq!(server.join().expect("the server").len(), 1);
    }
}
