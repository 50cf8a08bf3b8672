//! The fetcher's doors to the world, module `cab`: HTTP to the hosts its island names, and
//! output entries under `out/`. Both are the host's work, so the sandbox holds whatever the
//! guest does: every URL the guest opens is checked against the allow-list, every byte
//! downloaded and unpacked is counted against its limit, and credentials are added here, out
//! of the guest's sight, each host's own to its requests only.
//!
//! Redirects are the server's choice, not the guest's: they are followed to any host, as curl
//! -L and Nix follow them (release downloads cross hosts all the time), at most 20 of them,
//! never from https to plain http, and without credentials once they leave the credentials'
//! host. Proxies come from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their
//! lowercase forms), as curl reads them; TLS trusts the system's roots (or `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` in their place) and the Mozilla roots built into cab.
//!
//! Besides the output tree, a run has one *scratch* file outside `out/`: append-only, readable
//! at any offset, counted against the unpacked limit. The git fetcher spools a pack there so
//! that resolving deltas needs random access, not memory.
//!
//! Every function returns an `i32` (`scratch_append` an `i64` offset): non-negative on
//! success (a handle where one is made), negative on failure. The reason is kept in [`HostState::error`] and becomes the run's
//! error message if the guest gives up; the guest only learns *that* it failed.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::{Caller, Linker, ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use super::conditional::Seen;
use super::credentials::Credentials;
use super::output::Output;
use super::progress::Progress;
use super::wasi::read;

/// The guest called `proc_exit` with this code.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the fetcher exited with code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Keeps the guest's HTTP behind the hash FIFO: a request waits until every line the guest
/// has written so far has been read and looked up. A line naming a stored tree then stops the
/// run before the request goes out, so an unchanged island costs one round trip, not the
/// first bytes of a download.
pub struct FifoBarrier {
    written: std::sync::atomic::AtomicU64,
    processed: tokio::sync::watch::Sender<u64>,
}

impl FifoBarrier {
    /// A barrier with nothing written yet.
    pub fn new() -> Arc<FifoBarrier> {
        Arc::new(FifoBarrier {
            written: Default::default(),
            processed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The guest wrote `lines` more lines to the FIFO.
    pub fn wrote(&self, lines: u64) {
        self.written.fetch_add(lines, std::sync::atomic::Ordering::SeqCst);
    }

    /// The reader has handled one more line (after passing on what it found).
    pub fn processed_one(&self) {
        self.processed.send_modify(|n| *n += 1);
    }

    /// Waits until every line written so far has been handled.
    async fn wait(&self) {
        let target = self.written.load(std::sync::atomic::Ordering::SeqCst);
        // The common case (every body chunk of a download): nothing left to process, and no
        // timer to set up.
        if *self.processed.borrow() >= target {
            return;
        }
        let mut rx = self.processed.subscribe();
        // Bounded: if the reader is gone, the run is ending anyway.
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= target)).await;
    }
}

/// The realizer's HTTP clients, each made on first use. A client that verifies TLS loads the
/// machine's root certificates, reading and parsing ~150 files (3 ms here), and cab's own: a
/// stored island never needs it, and a plain-HTTP server (a local forge or mirror) gets a
/// client without it. Both honour the proxy variables (reqwest reads them as curl does).
pub struct Clients {
    plain: OnceLock<reqwest::Client>,
    tls: OnceLock<reqwest::Client>,
    connect_timeout: Duration,
}

impl Clients {
    /// Clients that give up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Clients {
        Clients {
            plain: OnceLock::new(),
            tls: OnceLock::new(),
            connect_timeout,
        }
    }

    /// The client for `url`'s scheme.
    fn for_url(&self, url: &reqwest::Url) -> Result<reqwest::Client> {
        let tls = url.scheme() == "https";
        let cell = if tls { &self.tls } else { &self.plain };
        if let Some(client) = cell.get() {
            return Ok(client.clone());
        }
        // Redirects are followed by hand, each one checked against the island's hosts.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("cab/", env!("CARGO_PKG_VERSION")));
        if tls {
            // The system's roots (or SSL_CERT_FILE/SSL_CERT_DIR in their place, for a corporate
            // CA) are the platform verifier's; Mozilla's are added to them.
            let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .filter_map(|der| reqwest::Certificate::from_der(der).ok());
            builder = builder.tls_certs_merge(bundled);
        } else {
            // Never used for TLS: no roots to load.
            builder = builder.tls_certs_only([]);
        }
        let client = builder.build().context("cannot set up HTTP")?;
        Ok(cell.get_or_init(|| client).clone())
    }
}

/// Where a run's HTTP may go, and what it may say there.
pub struct Access {
    /// The hosts the guest may open URLs on.
    pub hosts: Vec<String>,
    /// Credentials, each sent to its own host.
    pub credentials: Arc<Credentials>,
    /// The island is a GitLab project: its hosts take tokens as GitLab does.
    pub gitlab: bool,
}

/// HTTP on the guest's behalf.
pub struct Http {
    clients: Arc<Clients>,
    access: Access,
    responses: HashMap<i32, (reqwest::Response, Pending)>,
    next_handle: i32,
    /// Bytes of response bodies handed to the guest.
    pub downloaded: u64,
    /// A server answered 404 or 410 (what was asked for does not exist).
    pub not_found: bool,
    max_download: u64,
    stall: Duration,
    barrier: Arc<FifoBarrier>,
    /// Nanoseconds spent waiting for answers and body chunks from servers.
    waited: Arc<AtomicU64>,
    /// The identities of responses the guest asked for, with their validators.
    seen: Seen,
}

/// The last chunk received, and how much of it the guest has taken.
#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    at: usize,
}

impl Http {
    /// HTTP limited to `hosts`.
    pub fn new(
        clients: Arc<Clients>,
        access: Access,
        max_download: u64,
        stall: Duration,
        barrier: Arc<FifoBarrier>,
        waited: Arc<AtomicU64>,
        seen: Seen,
    ) -> Http {
        Http {
            clients,
            access,
            responses: HashMap::new(),
            next_handle: 1,
            downloaded: 0,
            not_found: false,
            max_download,
            stall,
            barrier,
            waited,
            seen,
        }
    }

    /// The guest may open only URLs on the hosts its island names.
    fn check_host(&self, url: &reqwest::Url) -> Result<()> {
        check_scheme(url)?;
        let host = bare_host(url);
        if !self.access.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            bail!(
                "{url}: host `{host}` is not one this island names (allowed: {})",
                self.access.hosts.join(", ")
            );
        }
        Ok(())
    }

    async fn open(&mut self, method: &str, url: &str, headers: &str, body: Vec<u8>) -> Result<i32> {
        self.barrier.wait().await;
        let mut url = reqwest::Url::parse(url).with_context(|| format!("bad URL `{url}`"))?;
        let mut method =
            reqwest::Method::from_bytes(method.as_bytes()).with_context(|| format!("bad method `{method}`"))?;
        let mut body = Some(body);
        // The guest chooses only the first URL; where the server sends it from there is the
        // server's choice, followed as curl -L and Nix follow it (see `redirect`).
        self.check_host(&url)?;
        let first = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.clients.for_url(&url)?.request(method.clone(), url.clone());
            for line in headers.lines().filter(|l| !l.trim().is_empty()) {
                let (name, value) = line
                    .split_once(':')
                    .with_context(|| format!("bad header line `{line}`"))?;
                if name.trim().eq_ignore_ascii_case("authorization") {
                    bail!("the fetcher may not set Authorization itself");
                }
                request = request.header(name.trim(), value.trim());
            }
            // Each host's own credentials, looked up again at every hop: a redirect never
            // carries one host's secret to another.
            let host = bare_host(&url);
            let access = &self.access;
            let gitlab = access.gitlab && access.hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
            if let Some(authorization) = access.credentials.authorization(host, gitlab) {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            if let Some(b) = &body
                && !b.is_empty()
            {
                request = request.body(b.clone());
            }
            let asked = Instant::now();
            let response = tokio::time::timeout(self.stall, request.send()).await;
            count_wait(&self.waited, asked);
            let response = response
                .map_err(|_| anyhow!("{url}: no response within {:?} (raise --stall-timeout)", self.stall))?
                .with_context(|| format!("request to {url} failed"))?;
            if response.status().is_redirection()
                && let Some(location) = response.headers().get(reqwest::header::LOCATION)
            {
                let next = redirect(&url, location)?;
                tracing::debug!("redirect {url} -> {next}");
                // As browsers and curl do: 303, and 301/302 after POST, become GET without a body.
                let status = response.status().as_u16();
                if status == 303 || (matches!(status, 301 | 302) && method == reqwest::Method::POST) {
                    method = reqwest::Method::GET;
                    body = None;
                }
                url = next;
                continue;
            }
            if matches!(response.status().as_u16(), 404 | 410) {
                self.not_found = true;
            }
            let handle = self.next_handle;
            self.next_handle += 1;
            self.responses.insert(handle, (response, Default::default()));
            return Ok(handle);
        }
        bail!("{first}: redirected {MAX_REDIRECTS} times without reaching a document (a redirect loop?)")
    }

    async fn read(&mut self, handle: i32, max: usize, progress: &Progress) -> Result<Vec<u8>> {
        // A line the guest wrote after the headers (its download's identity) is looked up
        // before any of the body: a stored tree stops the download there.
        self.barrier.wait().await;
        let stall = self.stall;
        let Some((response, pending)) = self.responses.get_mut(&handle) else {
            bail!("no open response {handle}")
        };
        if pending.at == pending.data.len() {
            let url = response.url().clone();
            let asked = Instant::now();
            let chunk = tokio::time::timeout(stall, response.chunk()).await;
            count_wait(&self.waited, asked);
            let chunk = chunk
                .map_err(|_| anyhow!("{url}: the server sent nothing for {stall:?} (raise --stall-timeout)"))?
                .with_context(|| format!("{url}: the download broke off"))?;
            match chunk {
                None => {
                    tracing::debug!("{url}: the response ended");
                    return Ok(Vec::new());
                }
                Some(bytes) => {
                    self.downloaded += bytes.len() as u64;
                    progress.downloaded(bytes.len() as u64);
                    if self.downloaded > self.max_download {
                        return Err(super::OverLimit::error(format!(
                            "{url}: more than {} bytes downloaded: over the download limit (raise --max-download)",
                            self.max_download
                        )));
                    }
                    *pending = Pending {
                        data: bytes.to_vec(),
                        at: 0,
                    };
                }
            }
        }
        let n = max.min(pending.data.len() - pending.at);
        let out = pending.data[pending.at..pending.at + n].to_vec();
        pending.at += n;
        Ok(out)
    }
}

/// How many redirects one request follows, as many as Firefox and Chrome (curl follows 50).
const MAX_REDIRECTS: usize = 20;

/// Only http and https.
fn check_scheme(url: &reqwest::Url) -> Result<()> {
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{url}: only http and https are allowed");
    }
    Ok(())
}

/// A URL's host without an IPv6 literal's brackets, as islands name hosts.
fn bare_host(url: &reqwest::Url) -> &str {
    url.host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Where a redirect from `url` leads: any http or https URL on any host, since release
/// downloads move across hosts all the time (GitHub release assets to their storage, mirror
/// networks, CDNs), but never from https down to plain http, which would hand the rest of the
/// exchange to anyone on the path.
fn redirect(url: &reqwest::Url, location: &reqwest::header::HeaderValue) -> Result<reqwest::Url> {
    let location = location
        .to_str()
        .with_context(|| format!("{url}: unreadable redirect"))?;
    let next = url
        .join(location)
        .with_context(|| format!("{url}: bad redirect to `{location}`"))?;
    check_scheme(&next).with_context(|| format!("{url} redirects to {next}"))?;
    if url.scheme() == "https" && next.scheme() == "http" {
        bail!("{url} redirects to {next}: from https down to plain http, which cab refuses");
    }
    Ok(next)
}

/// Adds the time since `since` to a run's time spent waiting for servers.
fn count_wait(waited: &AtomicU64, since: Instant) {
    waited.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// The guest's memory limit, and whether the guest ran into it: a run that traps after that
/// failed for want of memory (raise --max-memory), which a trap alone does not say.
pub struct MemoryLimit {
    limits: StoreLimits,
    /// Whether a growth past the limit was refused.
    pub hit: bool,
}

impl MemoryLimit {
    /// At most `bytes` of linear memory; growing past it traps.
    pub fn new(bytes: usize) -> MemoryLimit {
        MemoryLimit {
            limits: StoreLimitsBuilder::new()
                .memory_size(bytes)
                .trap_on_grow_failure(true)
                .build(),
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.hit = true;
        }
        allowed
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

/// Everything one run of the fetcher owns. Dropped as a whole when the run ends or is stopped,
/// which closes every connection and the FIFO's write end.
pub struct HostState {
    /// The guest's memory limit.
    pub limits: MemoryLimit,
    /// argv.
    pub args: Vec<Vec<u8>>,
    /// The FIFO's write end: the guest's standard output.
    pub fifo: Option<File>,
    /// Counts the lines written to the FIFO, for [`FifoBarrier`].
    pub barrier: Arc<FifoBarrier>,
    /// The output tree.
    pub output: Output,
    /// HTTP on the guest's behalf.
    pub http: Http,
    /// The first host-side failure, reported if the guest then fails.
    pub error: Option<anyhow::Error>,
    /// Progress reporting.
    pub progress: Progress,
    /// When the run started (the guest's monotonic clock).
    pub started: Instant,
    stderr_line: Vec<u8>,
    /// The last lines the guest wrote to standard error, for error messages.
    pub stderr_tail: Vec<String>,
    label: String,
}

impl HostState {
    /// State for one run.
    pub fn new(
        args: Vec<Vec<u8>>,
        fifo: File,
        output: Output,
        http: Http,
        limits: MemoryLimit,
        progress: Progress,
        label: &str,
    ) -> Self {
        HostState {
            limits,
            args,
            fifo: Some(fifo),
            barrier: http.barrier.clone(),
            output,
            http,
            error: None,
            progress,
            started: Instant::now(),
            stderr_line: Vec::new(),
            stderr_tail: Vec::new(),
            label: label.to_owned(),
        }
    }

    /// Takes guest standard error: each line goes to the log.
    pub fn stderr(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' || self.stderr_line.len() > 4096 {
                let line = String::from_utf8_lossy(&self.stderr_line).into_owned();
                tracing::info!("{}: {line}", self.label);
                if self.stderr_tail.len() == 8 {
                    self.stderr_tail.remove(0);
                }
                self.stderr_tail.push(line);
                self.stderr_line.clear();
            } else {
                self.stderr_line.push(b);
            }
        }
    }

    fn fail(&mut self, error: anyhow::Error) -> i32 {
        tracing::debug!("{}: host call failed: {error:#}", self.label);
        if self.error.is_none() {
            self.error = Some(error);
        }
        -1
    }

    fn settle<T>(&mut self, result: Result<T>, ok: impl FnOnce(T) -> i32) -> i32 {
        match result {
            Ok(v) => ok(v),
            Err(e) => self.fail(e),
        }
    }
}

fn text(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String> {
    let bytes = read(caller, ptr, len).context("pointer outside the fetcher's memory")?;
    String::from_utf8(bytes).context("not UTF-8")
}

fn bytes(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    read(caller, ptr, len).context("pointer outside the fetcher's memory")
}

/// Adds module `cab` to the linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    type P8 = (i32, i32, i32, i32, i32, i32, i32, i32);
    linker.func_wrap_async(
        "cab",
        "http_open",
        |mut c: Caller<'_, HostState>, (mp, ml, up, ul, hp, hl, bp, bl): P8| {
            Box::new(async move {
                let args = (|| {
                    Ok((
                        text(&mut c, mp, ml)?,
                        text(&mut c, up, ul)?,
                        text(&mut c, hp, hl)?,
                        bytes(&mut c, bp, bl)?,
                    ))
                })();
                let result = match args {
                    Ok((method, url, headers, body)) => {
                        tracing::debug!("fetcher: {method} {url}");
                        c.data_mut().http.open(&method, &url, &headers, body).await
                    }
                    Err(e) => Err(e),
                };
                c.data_mut().settle(result, |h| h)
            })
        },
    )?;
    linker.func_wrap(
        "cab",
        "http_status",
        |mut c: Caller<'_, HostState>, handle: i32| -> i32 {
            match c.data().http.responses.get(&handle) {
                Some((r, _)) => r.status().as_u16() as i32,
                None => c.data_mut().fail(anyhow!("no open response {handle}")),
            }
        },
    )?;
    linker.func_wrap_async(
        "cab",
        "http_read",
        |mut c: Caller<'_, HostState>, (handle, ptr, len): (i32, i32, i32)| {
            Box::new(async move {
                let state = c.data_mut();
                let progress = state.progress.clone();
                let result = state.http.read(handle, len.max(0) as usize, &progress).await;
                match result {
                    Ok(data) => {
                        if super::wasi::write(&mut c, ptr, &data) {
                            data.len() as i32
                        } else {
                            c.data_mut()
                                .fail(anyhow!("http_read: buffer outside the fetcher's memory"))
                        }
                    }
                    Err(e) => c.data_mut().fail(e),
                }
            })
        },
    )?;
    linker.func_wrap(
        "cab",
        "http_identity",
        |mut c: Caller<'_, HostState>, handle: i32, ptr: i32, len: i32| -> i32 {
            let identity = match c.data().http.responses.get(&handle) {
                Some((r, _)) => super::conditional::identity(r).map(|(identity, validator)| {
                    c.data().http.seen.push(identity.clone(), validator);
                    identity
                }),
                None => return c.data_mut().fail(anyhow!("no open response {handle}")),
            };
            match identity {
                None => 0,
                Some(id) if (len.max(0) as usize) < id.len() => c
                    .data_mut()
                    .fail(anyhow!("http_identity: a buffer of {len} bytes is too small")),
                Some(id) if super::wasi::write(&mut c, ptr, id.as_bytes()) => id.len() as i32,
                Some(_) => c
                    .data_mut()
                    .fail(anyhow!("http_identity: buffer outside the fetcher's memory")),
            }
        },
    )?;
    linker.func_wrap(
        "cab",
        "http_close",
        |mut c: Caller<'_, HostState>, handle: i32| -> i32 {
            match c.data_mut().http.responses.remove(&handle) {
                Some(_) => 0,
                None => c.data_mut().fail(anyhow!("no open response {handle}")),
            }
        },
    )?;
    linker.func_wrap(
        "cab",
        "out_mkdir",
        |mut c: Caller<'_, HostState>, p: i32, l: i32| -> i32 {
            let result = bytes(&mut c, p, l).and_then(|path| c.data_mut().output.mkdir(&path));
            c.data_mut().settle(result, |()| 0)
        },
    )?;
    linker.func_wrap(
        "cab",
        "out_create",
        |mut c: Caller<'_, HostState>, p: i32, l: i32, exec: i32| -> i32 {
            let result = bytes(&mut c, p, l).and_then(|path| c.data_mut().output.create(&path, exec != 0));
            if result.is_ok() {
                c.data().progress.file();
            }
            c.data_mut().settle(result, |h| h)
        },
    )?;
    linker.func_wrap(
        "cab",
        "out_write",
        |mut c: Caller<'_, HostState>, h: i32, p: i32, l: i32| -> i32 {
            let result = bytes(&mut c, p, l).and_then(|data| c.data_mut().output.write(h, &data));
            c.data_mut().settle(result, |()| 0)
        },
    )?;
    linker.func_wrap("cab", "out_close", |mut c: Caller<'_, HostState>, h: i32| -> i32 {
        let result = c.data_mut().output.close(h);
        c.data_mut().settle(result, |()| 0)
    })?;
    linker.func_wrap(
        "cab",
        "out_symlink",
        |mut c: Caller<'_, HostState>, p: i32, l: i32, tp: i32, tl: i32| -> i32 {
            let result = bytes(&mut c, p, l)
                .and_then(|path| Ok((path, bytes(&mut c, tp, tl)?)))
                .and_then(|(path, target)| c.data_mut().output.symlink(&path, &target));
            c.data_mut().settle(result, |()| 0)
        },
    )?;
    linker.func_wrap(
        "cab",
        "out_copy",
        |mut c: Caller<'_, HostState>, fp: i32, fl: i32, p: i32, l: i32| -> i32 {
            let result = bytes(&mut c, fp, fl)
                .and_then(|from| Ok((from, bytes(&mut c, p, l)?)))
                .and_then(|(from, path)| c.data_mut().output.copy(&from, &path));
            c.data_mut().settle(result, |()| 0)
        },
    )?;
    linker.func_wrap(
        "cab",
        "scratch_append",
        |mut c: Caller<'_, HostState>, p: i32, l: i32| -> i64 {
            let result = bytes(&mut c, p, l).and_then(|data| c.data_mut().output.scratch_append(&data));
            match result {
                Ok(offset) => offset as i64,
                Err(e) => c.data_mut().fail(e) as i64,
            }
        },
    )?;
    linker.func_wrap(
        "cab",
        "scratch_read",
        |mut c: Caller<'_, HostState>, offset: i64, p: i32, l: i32| -> i32 {
            let result = c.data_mut().output.scratch_read(offset, l.max(0) as usize);
            match result {
                Ok(data) if super::wasi::write(&mut c, p, &data) => data.len() as i32,
                Ok(_) => c
                    .data_mut()
                    .fail(anyhow!("scratch_read: buffer outside the fetcher's memory")),
                Err(e) => c.data_mut().fail(e),
            }
        },
    )?;
    linker.func_wrap(
        "cab",
        "out_set_root",
        |mut c: Caller<'_, HostState>, p: i32, l: i32| -> i32 {
            let result = bytes(&mut c, p, l).and_then(|path| c.data_mut().output.set_root(&path));
            c.data_mut().settle(result, |()| 0)
        },
    )?;
    Ok(())
}
