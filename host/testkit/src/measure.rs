//! What a hostile input costs, measured where it cannot hide: in a child process, whose peak
//! resident memory the kernel reports when it is reaped (`wait4`'s `ru_maxrss`), unaffected by
//! the other tests of this process. Time is measured and printed, never asserted tightly.

use std::io::Read;
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

/// Run `cmd` (stdout and stderr captured), killing it after `limit`, and measure it.
// The child is reaped by `wait4` (which std's `Child::wait` cannot replace: it drops the
// resource usage), so clippy's check for a `wait` does not see it.
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command, limit: Duration) -> Measured {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let pid = child.id() as libc::pid_t;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
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
    let status = <ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(status);
    Measured {
        output: Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        },
        max_rss: (usage.ru_maxrss as u64) << 10,
        wall,
        killed: killed.load(Ordering::Acquire),
    }
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
