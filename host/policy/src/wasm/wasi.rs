//! WASI for policy components: present (so ordinary toolchains link) but granting nothing.
//!
//! `WasiCtxBuilder::new()` already means no preopened directories, no environment, no
//! arguments and closed stdin; on top of that sockets and name lookup are switched off, the
//! clocks are fixed and randomness is a fixed sequence, so a policy's answer depends only on
//! its inputs and `cairn simulate` predicts `cairn run`. Standard output and error go to
//! capped in-memory buffers that the host drains into its log after every call.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// The wall-clock time every policy sees: 2000-01-01T00:00:00Z, forever.
pub const FIXED_WALL_CLOCK: Duration = Duration::from_secs(946_684_800);

struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        FIXED_WALL_CLOCK
    }
}

struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A fixed pseudo-random sequence (xorshift from a constant seed): random enough for hash
/// seeds and the like, identical in every run.
fn seeded_bytes() -> Vec<u8> {
    let mut x: u64 = 0x6361_6972_6e21_5eed;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A deny-all WASI context whose stdout/stderr write into `stdout`/`stderr`.
pub fn deny_all(stdout: &CappedOutput, stderr: &CappedOutput) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        .secure_random(Deterministic::new(seeded_bytes()))
        .insecure_random(Deterministic::new(seeded_bytes()))
        .insecure_random_seed(0x63_6169_726e)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

#[derive(Debug, Default)]
struct Buf {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

/// An output stream that keeps at most `cap` bytes and silently counts the rest: a chatty
/// guest must not fail (Rust's `println!` panics on a write error) nor fill the host's memory.
#[derive(Clone, Debug, Default)]
pub struct CappedOutput(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    buf: Mutex<Buf>,
    /// Set by every write: lets the drain after each call skip the lock when the guest
    /// printed nothing, which is almost always.
    written: AtomicBool,
}

impl CappedOutput {
    /// A buffer keeping at most `cap` bytes until drained.
    pub fn new(cap: usize) -> CappedOutput {
        CappedOutput(Arc::new(Shared {
            buf: Mutex::new(Buf {
                cap,
                ..Buf::default()
            }),
            written: AtomicBool::new(false),
        }))
    }

    fn push(&self, data: &[u8]) {
        let mut b = self.0.buf.lock().unwrap_or_else(|p| p.into_inner());
        self.0.written.store(true, Ordering::Release);
        let room = b.cap.saturating_sub(b.bytes.len());
        let take = room.min(data.len());
        b.bytes.extend_from_slice(&data[..take]);
        b.dropped += (data.len() - take) as u64;
    }

    /// Take what was written since the last drain, and how many bytes were dropped.
    pub fn drain(&self) -> (String, u64) {
        // A plain load first: the swap's locked instruction is only paid when there is output.
        if !self.0.written.load(Ordering::Relaxed) || !self.0.written.swap(false, Ordering::Acquire)
        {
            return (String::new(), 0);
        }
        let mut b = self.0.buf.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&b.bytes).into_owned();
        b.bytes.clear();
        (text, std::mem::take(&mut b.dropped))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_counted() {
        let out = CappedOutput::new(4);
        out.push(b"hello world");
        assert_eq!(out.drain(), ("hell".to_string(), 7));
        assert_eq!(out.drain(), (String::new(), 0));
    }
}
