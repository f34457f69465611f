//! What a hostile input costs, measured where it cannot hide: in a child process, whose peak
//! resident memory the kernel reports when it is reaped (`wait4`'s `ru_maxrss`), unaffected by
//! the other tests of this process (see [`SPAWNER_TEST`]). Time is measured and printed, never
//! asserted tightly.

use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A finished child and what it cost.
#[derive(Debug)]
pub struct Measured {
    /// Its exit status and output.
    pub output: Output,
    /// Its peak resident memory (its own, not its children's), bytes.
    pub max_rss: u64,
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
    /// Whether the watchdog had to kill it.
    pub killed: bool,
}

impl Measured {
    /// Its stderr, as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Its stdout, as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// One line for the test log: `what: N MiB peak RSS, T s`.
    pub fn report(&self, what: &str) {
        eprintln!(
            "{what}: {:.1} MiB peak RSS, {:.2} s, {} bytes of stderr, {}",
            self.max_rss as f64 / (1 << 20) as f64,
            self.wall.as_secs_f64(),
            self.output.stderr.len(),
            self.output.status
        );
    }
}

/// Why not simply `wait4` on the command: Linux starts a process's `ru_maxrss` at the peak RSS
/// of the process it was spawned from (exec records the old address space's high-water mark),
/// and a test binary running many tests at once may have peaked at hundreds of MiB. So the
/// command is spawned by a *spawner*, this test binary started afresh (a few MiB), which
/// `wait4`s it and reports. Each test binary that measures declares, at its root:
///
/// ```ignore
/// #[test]
/// fn measure_spawner() {
///     cairn_testkit::measure::serve_spawner();
/// }
/// ```
pub const SPAWNER_TEST: &str = "measure_spawner";

/// The environment variable naming the spawner's request file.
const SPAWN_ENV: &str = "CAIRN_TEST_SPAWN";

/// Run `cmd` (stdin empty, stdout and stderr captured, its cwd and added environment kept),
/// killing it after `limit`, and measure it (through the spawner, see [`SPAWNER_TEST`]).
pub fn run_measured(cmd: &mut Command, limit: Duration) -> Measured {
    let dir = tempfile::tempdir().expect("a temp dir");
    let request = dir.path().join("request");
    let mut text = Vec::new();
    let mut field = |b: &[u8]| {
        text.extend_from_slice(&(b.len() as u64).to_le_bytes());
        text.extend_from_slice(b);
    };
    use std::os::unix::ffi::OsStrExt;
    field(cmd.get_program().as_bytes());
    field(
        cmd.get_current_dir()
            .map_or(&b"."[..], |d| d.as_os_str().as_bytes()),
    );
    field(&(limit.as_millis() as u64).to_le_bytes());
    let args: Vec<_> = cmd.get_args().collect();
    field(&(args.len() as u64).to_le_bytes());
    for a in args {
        field(a.as_bytes());
    }
    let envs: Vec<_> = cmd.get_envs().collect();
    field(&(envs.len() as u64).to_le_bytes());
    for (k, v) in envs {
        field(k.as_bytes());
        field(v.map_or(&b"\0unset"[..], |v| v.as_bytes()));
    }
    std::fs::write(&request, &text).expect("write the spawn request");
    let exe = std::env::current_exe().expect("the test binary");
    let spawner = Command::new(exe)
        .args([SPAWNER_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(SPAWN_ENV, &request)
        .stdin(Stdio::null())
        .output()
        .expect("start the spawner");
    let result = std::fs::read_to_string(dir.path().join("result")).unwrap_or_else(|_| {
        panic!(
            "the spawner ({SPAWNER_TEST} in this test binary) reported nothing: {}\n{}",
            String::from_utf8_lossy(&spawner.stdout),
            String::from_utf8_lossy(&spawner.stderr)
        )
    });
    let n: Vec<u64> = result
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let [status, max_rss, wall_ns, killed] = n[..] else {
        panic!("bad spawner result {result:?}")
    };
    Measured {
        output: Output {
            status: <ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(status as i32),
            stdout: std::fs::read(dir.path().join("stdout")).unwrap_or_default(),
            stderr: std::fs::read(dir.path().join("stderr")).unwrap_or_default(),
        },
        max_rss,
        wall: Duration::from_nanos(wall_ns),
        killed: killed != 0,
    }
}

/// The spawner's side of [`run_measured`]: in a process started as the spawner, run the
/// request, write the result and exit; otherwise return at once.
pub fn serve_spawner() {
    let Some(request) = std::env::var_os(SPAWN_ENV) else {
        return;
    };
    let request = std::path::PathBuf::from(request);
    let dir = request.parent().expect("the request's folder").to_owned();
    let bytes = std::fs::read(&request).expect("read the spawn request");
    let mut at = 0usize;
    let mut field = || {
        let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let f = bytes[at + 8..at + 8 + n].to_vec();
        at += 8 + n;
        f
    };
    let number = |f: Vec<u8>| u64::from_le_bytes(f.try_into().unwrap());
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let os = |f: Vec<u8>| OsString::from_vec(f);
    let mut cmd = Command::new(os(field()));
    cmd.current_dir(os(field())).env_remove(SPAWN_ENV);
    let limit = Duration::from_millis(number(field()));
    for _ in 0..number(field()) {
        cmd.arg(os(field()));
    }
    for _ in 0..number(field()) {
        let (k, v) = (os(field()), field());
        if v == b"\0unset" {
            cmd.env_remove(k);
        } else {
            cmd.env(k, os(v));
        }
    }
    let out = std::fs::File::create(dir.join("stdout")).unwrap();
    let err = std::fs::File::create(dir.join("stderr")).unwrap();
    cmd.stdout(out).stderr(err);
    let (status, max_rss, wall, killed) = spawn_and_wait(&mut cmd, limit);
    std::fs::write(
        dir.join("result"),
        format!(
            "{status} {max_rss} {} {}",
            wall.as_nanos(),
            u8::from(killed)
        ),
    )
    .unwrap();
    std::process::exit(0);
}

/// Spawn `cmd` (stdin empty), kill it after `limit`, and reap it with `wait4`: its raw wait
/// status, peak RSS in bytes, wall time, and whether it was killed.
// The child is reaped by `wait4` (which std's `Child::wait` cannot replace: it drops the
// resource usage), so clippy's check for a `wait` does not see it.
#[allow(clippy::zombie_processes)]
fn spawn_and_wait(cmd: &mut Command, limit: Duration) -> (i32, u64, Duration, bool) {
    let started = Instant::now();
    let child = cmd.stdin(Stdio::null()).spawn().expect("spawn the command");
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, killed) = (done.clone(), killed.clone());
        std::thread::spawn(move || {
            let step = Duration::from_millis(20);
            let mut waited = Duration::ZERO;
            while waited < limit {
                if done.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(step);
                waited += step;
            }
            if !done.load(Ordering::Acquire) {
                killed.store(true, Ordering::Release);
                // SAFETY: plain syscall on the child's pid, which is not reaped before `done`.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: wait4 fills `status` and `usage` for our own child.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    done.store(true, Ordering::Release);
    let wall = started.elapsed();
    let _ = watchdog.join();
    // SAFETY: filled by the successful wait4.
    let usage = unsafe { usage.assume_init() };
    (
        status,
        (usage.ru_maxrss as u64) << 10,
        wall,
        killed.load(Ordering::Acquire),
    )
}

/// The environment variable that tells a test binary it is the isolated child of a test.
const ISOLATED: &str = "CAIRN_TEST_ISOLATED";

/// Run the body of test `name` (its path inside the test binary, `module::test`) in a child
/// process of this test binary, and return what that child cost; in the child itself, run
/// `body` and return `None`. The child's assertions are the test's: it must exit successfully
/// (its output is shown otherwise), within `limit`.
///
/// ```ignore
/// #[test]
/// fn a_deep_answer_is_refused() {
///     let Some(cost) = isolated("depth::a_deep_answer_is_refused", || { ... }) else { return };
///     assert!(cost.max_rss < 300 << 20);
/// }
/// ```
pub fn isolated(name: &str, body: impl FnOnce()) -> Option<Measured> {
    if std::env::var(ISOLATED).is_ok_and(|v| v == name) {
        body();
        return None;
    }
    super::policies::rust_policy("every_n"); // builds them all, once, here
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED, name)
        // The parent built the policies; the child only needs their paths.
        .env(super::policies::BUILT_ENV, "1");
    let m = run_measured(&mut cmd, Duration::from_secs(600));
    assert!(
        m.output.status.success() && m.stdout().contains("1 passed"),
        "the isolated test {name} failed ({}):\n{}\n{}",
        m.output.status,
        m.stdout(),
        m.stderr()
    );
    m.report(name);
    Some(m)
}
