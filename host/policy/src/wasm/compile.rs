//! Compiling a component where a deadline can stop it.
//!
//! Cranelift cannot be interrupted in a thread, and a small component can keep it busy for
//! minutes or make it ask for tens of gigabytes (tens of thousands of locals live across
//! thousands of branches: SSA construction and register allocation grow with their product).
//! So a compilation runs in a child process that the host can kill: the *compile worker*. The
//! host writes the request (engine settings, the component's bytes, a path for the artifact)
//! to the worker's stdin, limits the child's memory (`RLIMIT_DATA`: heap and private writable
//! mappings, what Cranelift allocates) and CPU time (`RLIMIT_CPU`, a backstop), and kills it
//! at the wall-clock deadline. The worker compiles with an engine of the same settings and
//! writes the artifact, which the host then loads and stores in the compile cache, so only the
//! first load of a component ever pays (the warm path spawns nothing).
//!
//! The worker is a program the *embedding application* provides, since the library cannot
//! assume a `cairn` binary exists: the `cairn` CLI passes itself with a hidden subcommand
//! (`cairn __compile-worker`), the Python package `sys.executable -m cairn._compile`; either
//! calls [`serve_compile_worker`] and exits with its code. Without a worker
//! ([`PolicyHost::with_compile_worker`](super::PolicyHost::with_compile_worker) never called),
//! components compile in a thread of the host process, and **no deadline or memory limit
//! applies** to compilation; the size limit still does.
//!
//! The request on stdin (all integers little-endian): `CAIRNCW1`, the cairn-policy version
//! (u32 length + bytes), fuel and epoch flags (one byte each), the stack size in KiB (u32),
//! the artifact's path (u32 length + bytes), the component (u64 length + bytes). Exit status:
//! 0 compiled, 2 not a valid component (the reason on stderr), 3 a bad request, 4 the
//! compiler panicked. Anything the worker prints on stdout is ignored.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::engine::EngineSettings;
use super::text;

const MAGIC: &[u8; 8] = b"CAIRNCW1";

/// Exit status of a worker: the component is not valid WebAssembly.
const EXIT_INVALID: i32 = 2;
/// Exit status of a worker: the request could not be read (or came from another version).
const EXIT_BAD_REQUEST: i32 = 3;
/// Exit status of a worker: the compiler panicked.
const EXIT_PANIC: i32 = 4;

/// Most of a worker's stderr kept for an error message.
const MAX_WORKER_STDERR: usize = 64 << 10;

/// How to start a compile worker: a program, its arguments and environment, which together
/// run [`serve_compile_worker`] (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileWorker {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl CompileWorker {
    /// A worker started as `program`.
    pub fn new(program: impl Into<PathBuf>) -> CompileWorker {
        CompileWorker {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Builder: one more argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> CompileWorker {
        self.args.push(arg.into());
        self
    }

    /// Builder: one more environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> CompileWorker {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// Bounds of one compilation in a worker.
#[derive(Clone, Copy, Debug)]
pub struct CompileLimits {
    /// Wall-clock deadline; `None` = none.
    pub timeout: Option<Duration>,
    /// The worker's memory (`RLIMIT_DATA`), bytes; `None` = unlimited.
    pub memory_bytes: Option<u64>,
}

/// Why a compilation produced no artifact.
#[derive(Debug)]
pub enum CompileError {
    /// wasmtime refused the component (the reason, one line).
    Invalid(String),
    /// It ran past the deadline (or the CPU-time backstop) and was stopped.
    Timeout,
    /// It ran out of the memory it may use and was stopped.
    Memory,
    /// The worker could not be started or failed in another way, or the artifact could not be
    /// read or loaded (the reason, one line).
    Other(String),
}

/// Compile `wasm` for `engine` (made with `settings`): in `worker` under `limits`, or without
/// one in a thread of this process (no deadline, no memory limit). Returns wasmtime's artifact.
pub fn compile(
    engine: &wasmtime::Engine,
    settings: EngineSettings,
    wasm: Vec<u8>,
    worker: Option<&CompileWorker>,
    limits: CompileLimits,
) -> Result<Vec<u8>, CompileError> {
    match worker {
        Some(w) => in_worker(w, settings, &wasm, limits),
        None => in_thread(engine.clone(), wasm),
    }
}

/// Cranelift's recursion and a large component need more stack than some callers' threads
/// have (a job thread has 2 MiB).
const COMPILE_STACK: usize = 16 << 20;

fn in_thread(engine: wasmtime::Engine, wasm: Vec<u8>) -> Result<Vec<u8>, CompileError> {
    let thread = std::thread::Builder::new()
        .name("cairn-compile".into())
        .stack_size(COMPILE_STACK)
        .spawn(move || engine.precompile_component(&wasm))
        .map_err(|e| CompileError::Other(format!("cannot start a compile thread: {e}")))?;
    match thread.join() {
        Ok(result) => result.map_err(|e| CompileError::Invalid(crate::error::chain(&e))),
        Err(_) => Err(CompileError::Other("the compiler panicked".into())),
    }
}

/// Compile with an engine of `settings` (the worker's side); the error is one line.
fn precompile(settings: EngineSettings, wasm: &[u8]) -> Result<Vec<u8>, String> {
    let engine = wasmtime::Engine::new(&settings.config()).map_err(|e| crate::error::chain(&e))?;
    engine
        .precompile_component(wasm)
        .map_err(|e| crate::error::chain(&e))
}

fn in_worker(
    worker: &CompileWorker,
    settings: EngineSettings,
    wasm: &[u8],
    limits: CompileLimits,
) -> Result<Vec<u8>, CompileError> {
    let out = tempfile::Builder::new()
        .prefix("cairn-compile-")
        .suffix(".cwasm")
        .tempfile()
        .map_err(|e| CompileError::Other(format!("cannot create the artifact file: {e}")))?;
    let request = request(settings, out.path(), wasm);
    let mut cmd = Command::new(&worker.program);
    cmd.args(&worker.args)
        .envs(worker.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limit_child(&mut cmd, limits);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        CompileError::Other(format!(
            "cannot start the compile worker {}: {e}",
            worker.program.display()
        ))
    })?;
    // The request is written and stderr read on threads, so a worker that stops reading or
    // writes a lot cannot block the host past the deadline.
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(&request));
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_WORKER_STDERR as u64)
            .read_to_end(&mut buf);
        // Drain the rest so the worker never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let (status, timed_out) = wait(&mut child, started, limits.timeout);
    let _ = writer.join();
    let stderr = reader.join().unwrap_or_default();
    let said = text::tail_line(&String::from_utf8_lossy(&stderr), 2 << 10);
    let status = status.map_err(|e| CompileError::Other(format!("waiting for it: {e}")))?;
    if timed_out {
        return Err(CompileError::Timeout);
    }
    match status.code() {
        Some(0) => std::fs::read(out.path())
            .map_err(|e| CompileError::Other(format!("cannot read the artifact it wrote: {e}"))),
        Some(EXIT_INVALID) => Err(CompileError::Invalid(said)),
        Some(code) => Err(CompileError::Other(format!(
            "{} exited with status {code}{}",
            worker.program.display(),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ))),
        None => Err(killed(&status, &said, limits)),
    }
}

/// Wait for `child` until `timeout` after `started`; kill it there. Returns its status and
/// whether the deadline killed it.
fn wait(
    child: &mut std::process::Child,
    started: Instant,
    timeout: Option<Duration>,
) -> (std::io::Result<ExitStatus>, bool) {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Ok(status), false),
            Ok(None) => {}
            Err(e) => return (Err(e), false),
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            let _ = child.kill();
            return (child.wait(), true);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A worker ended by a signal: the CPU-time backstop, the memory limit, or a crash.
fn killed(status: &ExitStatus, said: &str, _limits: CompileLimits) -> CompileError {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(libc::SIGXCPU) | Some(libc::SIGKILL) => return CompileError::Timeout,
            // Rust aborts when an allocation fails, which is how the memory limit shows.
            Some(libc::SIGABRT)
                if _limits.memory_bytes.is_some()
                    && (said.contains("memory allocation") || said.is_empty()) =>
            {
                return CompileError::Memory;
            }
            Some(libc::SIGSEGV) | Some(libc::SIGBUS) if _limits.memory_bytes.is_some() => {
                return CompileError::Memory;
            }
            _ => {}
        }
    }
    CompileError::Other(format!(
        "the compile worker stopped abnormally ({status}){}",
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    ))
}

/// Apply `limits` in the child between `fork` and `exec`.
#[cfg(unix)]
fn limit_child(cmd: &mut Command, limits: CompileLimits) {
    use std::os::unix::process::CommandExt;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    // CPU seconds: the deadline on every core the parallel compiler may use, plus one. The
    // wall-clock deadline normally fires first; this stops a worker whose host is gone.
    let cpu = limits
        .timeout
        .map(|t| t.as_secs().saturating_add(1).saturating_mul(cores) + 1);
    let memory = limits.memory_bytes;
    // SAFETY: between fork and exec only async-signal-safe calls are made (setrlimit, prctl),
    // with values computed before the fork; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(bytes) = memory {
                let lim = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(secs) = cpu {
                let lim = libc::rlimit {
                    rlim_cur: secs as libc::rlim_t,
                    rlim_max: secs.saturating_add(1) as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_CPU, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Die with the host: a compile that outlives it serves no one.
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn limit_child(_cmd: &mut Command, _limits: CompileLimits) {}

fn request(settings: EngineSettings, out: &Path, wasm: &[u8]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let path = path_bytes(out);
    let mut r = Vec::with_capacity(wasm.len() + path.len() + 64);
    r.extend_from_slice(MAGIC);
    r.extend_from_slice(&(version.len() as u32).to_le_bytes());
    r.extend_from_slice(version);
    r.push(u8::from(settings.fuel));
    r.push(u8::from(settings.epoch));
    r.extend_from_slice(&(settings.stack_kib as u32).to_le_bytes());
    r.extend_from_slice(&(path.len() as u32).to_le_bytes());
    r.extend_from_slice(&path);
    r.extend_from_slice(&(wasm.len() as u64).to_le_bytes());
    r.extend_from_slice(wasm);
    r
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec()
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
fn path_from(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(
        bytes,
    ))
}

#[cfg(not(unix))]
fn path_from(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// A request as the worker reads it.
struct Request {
    settings: EngineSettings,
    out: PathBuf,
    wasm: Vec<u8>,
}

fn read_request(input: &mut impl Read) -> Result<Request, String> {
    let mut r = Reader(input);
    if &r.array::<8>()? != MAGIC {
        return Err("stdin does not hold a cairn compile request".into());
    }
    let n = u32::from_le_bytes(r.array()?);
    let version = r.bytes(u64::from(n))?;
    if version != env!("CARGO_PKG_VERSION").as_bytes() {
        return Err(format!(
            "the request comes from cairn-policy {}, this worker is {}",
            String::from_utf8_lossy(&version),
            env!("CARGO_PKG_VERSION")
        ));
    }
    let [fuel, epoch] = r.array()?;
    let stack_kib = u64::from(u32::from_le_bytes(r.array()?));
    let n = u32::from_le_bytes(r.array()?);
    let out = path_from(r.bytes(u64::from(n))?);
    let n = u64::from_le_bytes(r.array()?);
    let wasm = r.bytes(n)?;
    Ok(Request {
        settings: EngineSettings {
            fuel: fuel != 0,
            epoch: epoch != 0,
            stack_kib,
        },
        out,
        wasm,
    })
}

/// Reads the fields of a request.
struct Reader<'a, R: Read>(&'a mut R);

impl<R: Read> Reader<'_, R> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.0
            .read_exact(&mut b)
            .map_err(|_| "the request is cut short".to_owned())?;
        Ok(b)
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        (&mut *self.0)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| e.to_string())?;
        if v.len() as u64 != n {
            return Err("the request is cut short".into());
        }
        Ok(v)
    }
}

/// The compile worker's whole job (see the module doc): read one request on stdin, compile,
/// write the artifact where the request says. Returns the process's exit status; the caller
/// exits with it. Call it from the embedding application's worker entry point: the `cairn`
/// CLI's hidden `__compile-worker` subcommand, the Python package's `cairn._compile`.
pub fn serve_compile_worker() -> i32 {
    let fail = |code: i32, msg: &str| {
        let _ = writeln!(std::io::stderr(), "cairn compile worker: {msg}");
        code
    };
    let req = match read_request(&mut std::io::stdin().lock()) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_BAD_REQUEST, &e),
    };
    let compiled = std::panic::catch_unwind(|| precompile(req.settings, &req.wasm));
    match compiled {
        Ok(Ok(artifact)) => match std::fs::write(&req.out, artifact) {
            Ok(()) => 0,
            Err(e) => fail(
                EXIT_BAD_REQUEST,
                &format!("cannot write {}: {e}", req.out.display()),
            ),
        },
        Ok(Err(reason)) => fail(EXIT_INVALID, &reason),
        Err(_) => fail(EXIT_PANIC, "the compiler panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_written() {
        let s = EngineSettings {
            fuel: true,
            epoch: false,
            stack_kib: 512,
        };
        let r = request(s, Path::new("/tmp/a b/ç.cwasm"), b"\0asm\x0d\0\x01\0");
        let back = read_request(&mut r.as_slice()).unwrap();
        assert_eq!(back.settings, s);
        assert_eq!(back.out, Path::new("/tmp/a b/ç.cwasm"));
        assert_eq!(back.wasm, b"\0asm\x0d\0\x01\0");
        assert!(read_request(&mut &r[..r.len() - 1]).is_err(), "cut short");
        assert!(read_request(&mut &b"hello"[..]).is_err());
    }

    #[test]
    fn without_a_worker_a_thread_compiles() {
        let s = EngineSettings {
            fuel: false,
            epoch: false,
            stack_kib: 512,
        };
        let limits = CompileLimits {
            timeout: None,
            memory_bytes: None,
        };
        let engine = wasmtime::Engine::new(&s.config()).unwrap();
        let empty = b"\0asm\x0d\0\x01\0".to_vec();
        assert!(compile(&engine, s, empty, None, limits).is_ok());
        let cut = b"\0asm\x0d\0\x01\0\x01".to_vec();
        let err = compile(&engine, s, cut, None, limits).unwrap_err();
        assert!(matches!(err, CompileError::Invalid(_)), "{err:?}");
    }
}
