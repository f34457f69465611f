//! A small fault-injecting HTTP/1.1 proxy on loopback, in front of the real S3 server.
//!
//! It forwards bytes unchanged, but reads each client request's head (and `Content-Length` body)
//! so that it can act per request, not per connection — S3 clients keep connections alive, so a
//! per-connection fault would hit only the first request on each. Faults are armed by rules
//! ("the next N requests whose method and target match get fault F") or globally (hang).
//!
//! * [`Fault::Status`] — answer with that status and an S3 error body (`SlowDown` for 503,
//!   `InternalError` otherwise), then close the connection. The request never reaches the server.
//! * [`Fault::Drop`] — forward the head and half the body, then cut both connections: the client
//!   sees a connection closed mid-request, the server a truncated request.
//! * [`Fault::Hang`] — read the request and never answer, keeping the connection open.
//!
//! The proxy runs on its own runtime thread, so synchronous tests can drive it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// What to do to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    Drop,
    Hang,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// e.g. `"PUT"`
    pub method: Option<&'static str>,
    /// A substring of the request target, e.g. `"partNumber="` or `"uploads"`.
    pub target_contains: Option<&'static str>,
}

impl Match {
    pub fn any() -> Self {
        Self::default()
    }
    pub fn method(method: &'static str) -> Self {
        Self {
            method: Some(method),
            target_contains: None,
        }
    }
    pub fn parts() -> Self {
        Self {
            method: Some("PUT"),
            target_contains: Some("partNumber="),
        }
    }
    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.is_none_or(|m| m == method)
            && self.target_contains.is_none_or(|t| target.contains(t))
    }
}

#[derive(Debug)]
struct Rule {
    fault: Fault,
    remaining: usize,
    matcher: Match,
}

#[derive(Debug, Default)]
struct Plan {
    rules: Vec<Rule>,
    hang_all: bool,
    log: Vec<String>,
    injected: Vec<(Fault, String)>,
}

impl Plan {
    fn decide(&mut self, method: &str, target: &str) -> Option<Fault> {
        self.log.push(format!("{method} {target}"));
        let fault = if self.hang_all {
            Some(Fault::Hang)
        } else {
            self.rules
                .iter_mut()
                .find(|r| r.remaining > 0 && r.matcher.matches(method, target))
                .map(|r| {
                    r.remaining -= 1;
                    r.fault
                })
        };
        if let Some(f) = fault {
            self.injected.push((f, format!("{method} {target}")));
        }
        fault
    }
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    max_open: AtomicUsize,
}

/// The proxy; stops (dropping every connection) on drop.
pub struct FaultProxy {
    pub addr: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    counters: Arc<Counters>,
    runtime: Option<Runtime>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let plan = Arc::new(Mutex::new(Plan::default()));
        let counters = Arc::new(Counters::default());
        let (p, c) = (Arc::clone(&plan), Arc::clone(&counters));
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (p, c) = (Arc::clone(&p), Arc::clone(&c));
                tokio::spawn(async move {
                    let open = c.open.fetch_add(1, Ordering::SeqCst) + 1;
                    c.max_open.fetch_max(open, Ordering::SeqCst);
                    let _ = serve(client, upstream, p).await;
                    c.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            plan,
            counters,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `times` requests matching `matcher` get `fault`.
    pub fn inject(&self, fault: Fault, times: usize, matcher: Match) {
        self.plan.lock().unwrap().rules.push(Rule {
            fault,
            remaining: times,
            matcher,
        });
    }

    /// While on, every new request hangs.
    pub fn hang_all(&self, on: bool) {
        self.plan.lock().unwrap().hang_all = on;
    }

    /// Remove every rule that has not fired yet.
    pub fn clear(&self) {
        let mut plan = self.plan.lock().unwrap();
        plan.rules.clear();
        plan.hang_all = false;
    }

    /// Faults injected so far, with the request each hit.
    pub fn injected(&self) -> Vec<(Fault, String)> {
        self.plan.lock().unwrap().injected.clone()
    }

    /// Every request seen, as `METHOD target`.
    pub fn requests(&self) -> Vec<String> {
        self.plan.lock().unwrap().log.clone()
    }

    /// The most client connections open at once.
    pub fn max_open_connections(&self) -> usize {
        self.counters.max_open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Head {
    raw: Vec<u8>,
    method: String,
    target: String,
    content_length: u64,
    chunked: bool,
}

/// Read one request head from `client`, with `buf` holding bytes already read. `None` at a clean
/// end of stream.
async fn read_head(client: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> std::io::Result<Option<Head>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let raw: Vec<u8> = buf.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&raw).into_owned();
            let mut lines = text.split("\r\n");
            let mut first = lines.next().unwrap_or("").split(' ');
            let method = first.next().unwrap_or("").to_string();
            let target = first.next().unwrap_or("").to_string();
            let mut content_length = 0;
            let mut chunked = false;
            for line in lines {
                if let Some((name, value)) = line.split_once(':') {
                    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                    if name == "content-length" {
                        content_length = value.parse().unwrap_or(0);
                    } else if name == "transfer-encoding" && value.contains("chunked") {
                        chunked = true;
                    }
                }
            }
            return Ok(Some(Head {
                raw,
                method,
                target,
                content_length,
                chunked,
            }));
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Move `len` body bytes from `buf` + `client` to `sink` (or discard them when `sink` is None).
async fn pass_body(
    client: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
    mut len: u64,
    mut sink: Option<&mut OwnedWriteHalf>,
) -> std::io::Result<()> {
    let take = (buf.len() as u64).min(len) as usize;
    if let Some(s) = sink.as_deref_mut() {
        s.write_all(&buf[..take]).await?;
    }
    buf.drain(..take);
    len -= take as u64;
    let mut chunk = vec![0u8; 256 * 1024];
    while len > 0 {
        let want = (chunk.len() as u64).min(len) as usize;
        let n = client.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(s) = sink.as_deref_mut() {
            s.write_all(&chunk[..n]).await?;
        }
        len -= n as u64;
    }
    Ok(())
}

fn error_response(status: u16) -> Vec<u8> {
    let (reason, code) = match status {
        503 => ("Service Unavailable", "SlowDown"),
        500 => ("Internal Server Error", "InternalError"),
        _ => ("Error", "InternalError"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the cairn fault proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    plan: Arc<Mutex<Plan>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut client_r, client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let client_w = Arc::new(tokio::sync::Mutex::new(client_w));
    // Responses flow back unchanged.
    let back = {
        let client_w = Arc::clone(&client_w);
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let n = match server_r.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if client_w.lock().await.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_w.lock().await.shutdown().await;
        })
    };
    let result = async {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut client_r, &mut buf).await? {
            if head.chunked {
                // Not used by object_store; forward the rest of the connection untouched.
                server_w.write_all(&head.raw).await?;
                server_w.write_all(&buf).await?;
                tokio::io::copy(&mut client_r, &mut server_w).await?;
                return Ok(());
            }
            let fault = plan.lock().unwrap().decide(&head.method, &head.target);
            match fault {
                None => {
                    server_w.write_all(&head.raw).await?;
                    pass_body(
                        &mut client_r,
                        &mut buf,
                        head.content_length,
                        Some(&mut server_w),
                    )
                    .await?;
                }
                Some(Fault::Status(status)) => {
                    pass_body(&mut client_r, &mut buf, head.content_length, None).await?;
                    let mut w = client_w.lock().await;
                    w.write_all(&error_response(status)).await?;
                    w.shutdown().await?;
                    return Ok(());
                }
                Some(Fault::Drop) => {
                    server_w.write_all(&head.raw).await?;
                    let half = head.content_length / 2;
                    pass_body(&mut client_r, &mut buf, half, Some(&mut server_w)).await?;
                    return Ok(());
                }
                Some(Fault::Hang) => {
                    let _ = pass_body(&mut client_r, &mut buf, head.content_length, None).await;
                    // Hold the connection open until the proxy shuts down.
                    loop {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    back.abort();
    result
}
