//! Reading checkpoint files someone else wrote, through every command that reads one
//! (`inspect`, `verify`, `filter`, `run --resume`): content decides the format whatever the
//! name, and hostile files (decompression bombs, deep or self-referencing pickles, values out
//! of range, a reader that closes the pipe) end in a named error with bounded memory, disk and
//! time. Each child's peak RSS comes from `wait4` (its own rusage), and its file writes are
//! capped with `RLIMIT_FSIZE`, so staging more than the bound would kill it with SIGXFSZ.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use cairn::format::{CheckpointFormat, Dict, Tensor, Value, read_checkpoint, write_checkpoint};
use serde_json::Value as Json;

const MIB: u64 = 1 << 20;

/// What a child did, with its own peak memory.
struct Measured {
    /// Exit code (`None`: killed by a signal).
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    /// The child's `VmHWM` (peak resident memory of its own address space, read from
    /// `/proc/<pid>/status` when it stops at exit), in MiB.
    max_rss_mib: f64,
    seconds: f64,
}

/// Run `cairn args` in `dir` with its temp folder inside `dir` and, if given, a cap on the size
/// of any file it writes.
///
/// Peak memory is `VmHWM` read at the child's exit: the child asks to be traced
/// (`PTRACE_TRACEME`), and the test stops it at `PTRACE_EVENT_EXIT`, when its address space is
/// still there. (`wait4`'s `ru_maxrss` would not do: Linux carries the forking process's peak
/// over into the child at exec, and the forking process is this test binary.) If tracing is
/// not allowed, `/proc` is polled every millisecond instead.
fn measured(dir: &Path, args: &[&str], max_file: Option<u64>) -> Measured {
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.current_dir(dir)
        .args(args)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limit = max_file.unwrap_or(libc::RLIM_INFINITY);
    // SAFETY: setrlimit and ptrace are async-signal-safe; nothing else runs between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: without it the parent falls back to polling.
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            Ok(())
        });
    }
    let start = Instant::now();
    // Reaped by `wait_traced` (waitpid on its pid), which `Child::wait` cannot do for a tracee.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            peak
        })
    };
    let (status, at_exit) = wait_traced(pid);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let polled = poll.join().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        max_rss_mib: at_exit.unwrap_or(0).max(polled) as f64 / 1024.0,
        seconds,
    }
}

/// `VmHWM` of a live process, in KiB.
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Wait for a child that may have asked to be traced: stop it at exit to read its `VmHWM`,
/// pass every other signal on. Returns its final wait status and the peak read at exit.
fn wait_traced(pid: i32) -> (i32, Option<u64>) {
    let mut peak = None;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
        if !libc::WIFSTOPPED(status) {
            return (status, peak);
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        let forward = if event == libc::PTRACE_EVENT_EXIT {
            peak = vm_hwm_kib(pid);
            0
        } else if sig == libc::SIGTRAP && event == 0 {
            // The stop after exec: ask for the exit stop from now on.
            // SAFETY: plain ptrace requests on our stopped tracee.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_SETOPTIONS,
                    pid,
                    0,
                    libc::PTRACE_O_TRACEEXIT as libc::c_long,
                );
            }
            0
        } else {
            sig
        };
        // SAFETY: resume our stopped tracee, delivering `forward` (0: none).
        unsafe {
            libc::ptrace(libc::PTRACE_CONT, pid, 0, forward as libc::c_long);
        }
    }
}

impl Measured {
    /// Exited by itself (no signal: not SIGXFSZ, not a stack overflow's SIGABRT/SIGSEGV).
    fn assert_exited(&self, what: &str) {
        assert!(
            self.signal.is_none() && !self.stderr.contains("panicked"),
            "{what}: signal {:?}; stderr: {}",
            self.signal,
            self.stderr
        );
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: exit {:?}, peak RSS {:.1} MiB, {:.2} s",
            self.code, self.max_rss_mib, self.seconds
        );
    }
}

/// A small full checkpoint (a model, a timestamp-less state) in the format `path`'s name selects.
fn write_small(path: &Path) {
    let model = Dict::ordered().with("w", Tensor::from_f32(vec![2], &[0.5, 1.5]));
    let tree = Value::Dict(
        Dict::new()
            .with("state", Dict::new().with("model", model))
            .with("rng", Value::List(vec![])),
    );
    write_tree(path, &tree);
}

fn write_tree(path: &Path, tree: &Value) {
    let format = CheckpointFormat::from_name(&path.to_string_lossy()).unwrap();
    let mut file = fs::File::create(path).unwrap();
    write_checkpoint(path, format, tree, &mut file).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------- the name is only for writing ----------

#[test]
fn a_compressed_file_under_another_name_reads_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_small(&d.join("ep1.pt.gz"));
    fs::copy(d.join("ep1.pt.gz"), d.join("renamed.pt")).unwrap();
    std::os::unix::fs::symlink("ep1.pt.gz", d.join("latest-rank0.pt")).unwrap();

    let m = measured(d, &["inspect", "--json", "renamed.pt"], None);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let json: Json = serde_json::from_str(&m.stdout).unwrap();
    assert_eq!(
        (json["format"].as_str(), json["named"].as_str()),
        (Some("pt.gz"), Some("pt"))
    );
    assert_eq!(
        m.stderr.trim(),
        "cairn: note: renamed.pt is named like a pt checkpoint but holds a pt.gz one; it was read by its content"
    );
    // A `latest` link is named by its target: nothing to note.
    let m = measured(d, &["inspect", "latest-rank0.pt"], None);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(
        m.stdout.starts_with("format: pt.gz, 2 entries"),
        "{}",
        m.stdout
    );
    assert_eq!(m.stderr, "");

    let m = measured(d, &["verify", "renamed.pt"], None);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(
        m.stdout.starts_with("ok renamed.pt (pt.gz,"),
        "{}",
        m.stdout
    );
    assert_eq!(m.stderr.lines().count(), 1, "one note: {}", m.stderr);

    let m = measured(
        d,
        &[
            "filter",
            "renamed.pt",
            "-o",
            "out.pt",
            "--ignore-keys",
            "rng",
        ],
        None,
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(m.stderr.contains("note: renamed.pt"), "{}", m.stderr);
    assert!(
        read_checkpoint(&d.join("out.pt"))
            .unwrap()
            .get_path(&["rng"])
            .is_none()
    );
}

/// Issue 17, item 1: `filename = "...pt.gz"` with the default `remote_file_name` (`...pt`)
/// puts gzip data under a `.pt` name in the store; resuming from it used to fail with "not a
/// zip archive".
#[test]
fn resume_from_a_store_whose_objects_are_compressed_under_pt_names() {
    let dir = tempfile::tempdir().unwrap();
    let job = |max: &str| {
        let text = format!(
            "run_name = \"z\"\n[checkpoint]\nfolder = \"z/ck\"\nfilename = \"ep{{epoch}}-ba{{batch}}-rank{{rank}}.pt.gz\"\nsave_interval = \"2ba\"\nnum_checkpoints_to_keep = 0\n[remote]\nurl = \"file://./remote\"\n[train]\nmax_duration = \"{max}\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n"
        );
        let path = dir.path().join(format!("z-{max}.toml"));
        fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let m = measured(
        dir.path(),
        &["run", "--config", &job("8ba"), "--json"],
        None,
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let object = dir.path().join("remote/z/checkpoints/ep1-ba8-rank0.pt");
    assert_eq!(
        &fs::read(&object).unwrap()[..2],
        b"\x1f\x8b",
        "gzip under a .pt name"
    );
    fs::remove_dir_all(dir.path().join("z")).unwrap();
    let m = measured(
        dir.path(),
        &["run", "--resume", "--config", &job("12ba"), "--json"],
        None,
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let summary: Json = serde_json::from_str(&m.stdout).unwrap();
    assert!(
        summary["resumed_from"]
            .as_str()
            .unwrap()
            .ends_with("ep1-ba8-rank0.pt"),
        "{summary}"
    );
    assert_eq!(summary["batches"], 4);
}

// ---------- decompression bombs ----------

/// `head` then zeros, `total` bytes in all, as concatenated zstd frames of 64 MiB each (so a
/// multi-GiB bomb takes two compressions to make).
fn zstd_bomb(head: &[u8], total: u64) -> Vec<u8> {
    let chunk = 64 * MIB;
    let mut first = head.to_vec();
    first.resize(chunk as usize, 0);
    let mut out = zstd::encode_all(&first[..], 1).unwrap();
    let rest = zstd::encode_all(&vec![0u8; chunk as usize][..], 1).unwrap();
    for _ in 1..total / chunk {
        out.extend_from_slice(&rest);
    }
    out
}

#[test]
fn decompression_bombs_are_refused_with_bounded_disk_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zip_start = b"PK\x03\x04\x14\x00\x00\x00\x00\x00";
    // 4 GiB behind a valid zip start (~130 KB), and 4 GiB of bare zeros.
    fs::write(d.join("bomb.pt.zst"), zstd_bomb(zip_start, 4 << 30)).unwrap();
    fs::write(d.join("zeros.pt.zst"), zstd_bomb(b"", 4 << 30)).unwrap();
    // No file may grow past 96 MiB: staging more than the 64 MiB bound would be killed.
    let cap = Some(96 * MIB);
    for (file, want) in [
        ("bomb.pt.zst", "decompression bomb"),
        ("zeros.pt.zst", "holds neither a torch archive nor a tar"),
    ] {
        for args in [
            vec!["verify", file],
            vec!["inspect", file],
            vec!["filter", file, "-o", "out.pt", "--ignore-keys", "x"],
        ] {
            let m = measured(d, &args, cap);
            m.report(&format!("{args:?}"));
            m.assert_exited(&format!("{args:?}"));
            assert_eq!(m.code, Some(1), "{args:?}");
            assert!(m.stderr.contains(want), "{args:?}: {}", m.stderr);
            assert!(m.max_rss_mib < 256.0, "{args:?}: {:.0} MiB", m.max_rss_mib);
            assert!(!d.join("out.pt").exists());
        }
    }
    // Tighter bounds from the command line bind too.
    fs::copy(d.join("bomb.pt.zst"), d.join("small.pt.zst")).unwrap();
    let m = measured(
        d,
        &[
            "verify",
            "small.pt.zst",
            "--expansion-floor-mib",
            "1",
            "--max-expansion-ratio",
            "2",
        ],
        Some(4 * MIB),
    );
    m.assert_exited("verify with tight bounds");
    assert!(m.stderr.contains("expands past 1 MiB"), "{}", m.stderr);
}

#[test]
fn resume_passes_over_a_bomb_named_like_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("b.toml");
    fs::write(
        &config,
        "run_name = \"b\"\n[checkpoint]\nfolder = \"ck\"\nsave_interval = \"2ba\"\noverwrite = true\nremote_file_name = false\n[train]\nmax_duration = \"2ba\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n",
    )
    .unwrap();
    fs::create_dir_all(d.join("ck")).unwrap();
    let zip_start = b"PK\x03\x04\x14\x00\x00\x00\x00\x00";
    fs::write(
        d.join("ck/ep9-ba99-rank0.pt"),
        zstd_bomb(zip_start, 2 << 30),
    )
    .unwrap();
    std::os::unix::fs::symlink("ep9-ba99-rank0.pt", d.join("ck/latest-rank0.pt")).unwrap();
    let m = measured(
        d,
        &["run", "--resume", "--config", s(&config)],
        Some(96 * MIB),
    );
    m.report("run --resume over a bomb");
    m.assert_exited("run --resume");
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(
        m.stderr.contains("skipped damaged checkpoint") && m.stderr.contains("decompression bomb"),
        "{}",
        m.stderr
    );
    assert!(m.max_rss_mib < 256.0, "{:.0} MiB", m.max_rss_mib);
}

// ---------- deep and self-referencing pickles ----------

/// A torch archive (STORED zip, CRCs and all) around `body` (PROTO 2 and STOP added).
fn pickle_file(path: &Path, body: &[u8]) {
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend_from_slice(body);
    pickle.push(b'.');
    let records: [(&str, &[u8]); 3] = [
        ("archive/data.pkl", &pickle),
        ("archive/byteorder", b"little"),
        ("archive/version", b"3\n"),
    ];
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in records {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let fields = |sig: u32, v: &mut Vec<u8>| {
            v.extend_from_slice(&sig.to_le_bytes());
            v.extend_from_slice(&20u16.to_le_bytes());
        };
        fields(0x0403_4b50, &mut out);
        for x in [0u16, 0, 0, 0] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in [crc, data.len() as u32, data.len() as u32] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        fields(0x0201_4b50, &mut central);
        for x in [20u16, 0, 0, 0, 0] {
            central.extend_from_slice(&x.to_le_bytes());
        }
        for x in [crc, data.len() as u32, data.len() as u32] {
            central.extend_from_slice(&x.to_le_bytes());
        }
        for x in [name.len() as u16, 0, 0, 0, 0] {
            central.extend_from_slice(&x.to_le_bytes());
        }
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for x in [0u16, 0, 3, 3] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    fs::write(path, out).unwrap();
}

#[test]
fn deep_pickles_are_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 100_000;
    let cases: [(&str, Vec<u8>); 3] = [
        ("lists", [b"]".repeat(n), b"a".repeat(n - 1)].concat()),
        (
            "dicts",
            [
                b"}X\x01\x00\x00\x00k".repeat(n),
                b"N".to_vec(),
                b"s".repeat(n),
            ]
            .concat(),
        ),
        ("tuples", [b"(".repeat(n), b"t".repeat(n)].concat()),
    ];
    for (what, body) in cases {
        let file = format!("deep-{what}.pt");
        pickle_file(
            &d.join(&file),
            &[b"}X\x04\x00\x00\x00deep".to_vec(), body, b"s".to_vec()].concat(),
        );
        for args in [
            vec!["inspect", file.as_str()],
            vec!["verify", file.as_str()],
            vec![
                "filter",
                file.as_str(),
                "-o",
                "out.pt",
                "--ignore-keys",
                "x",
            ],
        ] {
            let m = measured(d, &args, Some(64 * MIB));
            m.report(&format!("{what} {}", args[0]));
            m.assert_exited(&format!("{args:?}"));
            assert_eq!(m.code, Some(1));
            assert!(
                m.stderr.contains("nests deeper than 100 levels"),
                "{}",
                m.stderr
            );
            assert!(m.max_rss_mib < 256.0, "{:.0} MiB", m.max_rss_mib);
        }
    }
}

/// `{"laughs": L40}` where L0 = [] and Li = [L(i-1), L(i-1)], memoised: 2^40 lists as a tree.
fn laughs(levels: u32) -> Vec<u8> {
    let mut p = b"}X\x06\x00\x00\x00laughs]r\x00\x00\x00\x00".to_vec();
    for i in 1..=levels {
        p.extend_from_slice(b"0](j");
        p.extend_from_slice(&(i - 1).to_le_bytes());
        p.push(b'j');
        p.extend_from_slice(&(i - 1).to_le_bytes());
        p.extend_from_slice(b"er");
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b's');
    p
}

#[test]
fn a_billion_laughs_is_read_listed_and_written_as_a_small_graph() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pickle_file(&d.join("laughs.pt"), &laughs(40));
    let m = measured(d, &["inspect", "--json", "laughs.pt"], Some(64 * MIB));
    m.report("inspect laughs");
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let json: Json = serde_json::from_str(&m.stdout).unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        41,
        "one empty list and one shared entry per level"
    );
    assert!(entries.iter().filter(|e| e.get("shared").is_some()).count() == 40);
    let m = measured(
        d,
        &[
            "filter",
            "laughs.pt",
            "-o",
            "laughs-out.pt.zst",
            "--ignore-keys",
            "x",
        ],
        Some(64 * MIB),
    );
    m.report("filter laughs");
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(fs::metadata(d.join("laughs-out.pt.zst")).unwrap().len() < 4096);
    let m = measured(d, &["verify", "laughs-out.pt.zst"], None);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(m.max_rss_mib < 128.0, "{:.0} MiB", m.max_rss_mib);
}

#[test]
fn wide_pickles_are_refused_within_a_bounded_memory() {
    // One object per byte or two, 32 MiB of pickle (the default cap): each is refused at the
    // object budget (an eighth of its length), and memory stays a small multiple of the file.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = (32 << 20) - 64;
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "empty-lists",
            [b"(".to_vec(), b"]".repeat(n), b"l".to_vec()].concat(),
        ),
        (
            "nones",
            [b"(".to_vec(), b"N".repeat(n), b"l".to_vec()].concat(),
        ),
        (
            "copies",
            [
                b"K\x07q\x00(".to_vec(),
                b"h\x00".repeat(n / 2),
                b"l".to_vec(),
            ]
            .concat(),
        ),
        (
            "strings",
            [
                b"(".to_vec(),
                b"X\x03\x00\x00\x00abc".repeat(n / 8),
                b"l".to_vec(),
            ]
            .concat(),
        ),
    ];
    for (what, body) in cases {
        let file = format!("{what}.pt");
        pickle_file(&d.join(&file), &body);
        let m = measured(d, &["verify", &file], Some(64 * MIB));
        m.report(&format!("32 MiB of {what}"));
        m.assert_exited(what);
        assert_eq!(m.code, Some(1), "{what}");
        assert!(
            m.stderr.contains("more than its length allows")
                || m.stderr.contains("too many objects"),
            "{what}: {}",
            m.stderr
        );
        assert!(m.max_rss_mib < 512.0, "{what}: {:.0} MiB", m.max_rss_mib);
    }
    // Past the cap, the pickle is not parsed at all.
    let m = measured(d, &["verify", "nones.pt", "--max-pickle-mib", "16"], None);
    assert!(
        m.stderr
            .contains("its pickle (data.pkl) is 32.0 MiB, more than the 16 MiB"),
        "{}",
        m.stderr
    );
}

// ---------- values out of range ----------

/// Run 4 batches into `ck/`, then rewrite the latest checkpoint with `edit` applied.
fn run_then_edit(d: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let config = d.join("r.toml");
    fs::write(
        &config,
        "run_name = \"r\"\n[checkpoint]\nfolder = \"ck\"\nsave_interval = \"2ba\"\nremote_file_name = false\n[train]\nmax_duration = \"4ba\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n",
    )
    .unwrap();
    let m = measured(d, &["run", "--config", s(&config), "--json"], None);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let latest = fs::canonicalize(d.join("ck/latest-rank0.pt")).unwrap();
    let mut tree = read_checkpoint(&latest).unwrap();
    edit(&mut tree);
    // A new file renamed over the old one: the tree's tensors still map the old file.
    let edited = d.join("edited.pt");
    write_tree(&edited, &tree);
    fs::rename(&edited, &latest).unwrap();
    config
}

fn dict_at<'a>(tree: &'a mut Value, path: &[&str]) -> &'a mut Dict {
    let mut node = tree;
    for seg in path {
        node = match node {
            Value::Dict(d) => d.get_mut(seg).unwrap(),
            Value::List(l) => &mut l[seg.parse::<usize>().unwrap()],
            _ => panic!("{seg}"),
        };
    }
    node.as_dict_mut().unwrap()
}

#[test]
fn values_a_filter_may_write_are_range_checked_on_resume() {
    let cases: Vec<(&[&str], &str, Value, &str)> = vec![
        (
            &["state", "timestamp", "Timestamp"],
            "total_wct",
            Value::Float(1e300),
            "total_wct is beyond",
        ),
        (
            &["state", "timestamp", "Timestamp"],
            "epoch_wct",
            Value::Float(f64::NAN),
            "epoch_wct is NaN",
        ),
        (
            &["state", "timestamp", "Timestamp"],
            "batch",
            Value::Int(i64::MAX),
            "batch is 9223372036854775807",
        ),
        (
            &["state", "timestamp", "Timestamp"],
            "sample",
            Value::Int(-3),
            "sample is -3",
        ),
        (&["rng", "0"], "step", Value::Int(-1), "rng/0/step is -1"),
        (
            &["state", "timestamp", "Timestamp"],
            "batch_in_epoch",
            Value::Int(1000),
            "batch_in_epoch is 1000, past this run's 4 batches per epoch",
        ),
    ];
    for (at, key, value, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = run_then_edit(d, |tree| {
            dict_at(tree, at).insert(key, value.clone());
        });
        let m = measured(d, &["run", "--resume", "--config", s(&config)], None);
        m.report(&format!("resume with {key} = {value:?}"));
        m.assert_exited(key);
        assert!(m.stderr.contains(want), "{key}: {}", m.stderr);
        assert!(
            m.stderr.contains("cannot resume from"),
            "{key}: {}",
            m.stderr
        );
    }
}

// ---------- a closed pipe ----------

/// Start `cairn args`, read one line of its stdout, close the pipe, and wait.
fn read_one_line_then_close(dir: &Path, args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe is closed with most of the output unread.
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal(), err)
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 20,000 entries: far more output than a pipe buffers.
    let mut big = Dict::new();
    for i in 0..20_000 {
        big.insert(format!("key-{i:05}"), Value::Int(i));
    }
    write_tree(&d.join("big.pt"), &Value::Dict(big));
    for args in [
        vec!["inspect", "big.pt"],
        vec!["inspect", "--json", "big.pt"],
    ] {
        let (code, signal, err) = read_one_line_then_close(d, &args);
        assert_eq!(
            (code, signal, err.as_str()),
            (Some(0), None, ""),
            "{args:?}"
        );
    }
    // verify keeps checking after its reader left, and its status still reports the problem.
    fs::create_dir_all(d.join("many")).unwrap();
    for i in 0..1500 {
        write_small(&d.join(format!("many/ep{i}-ba{i}-rank0.pt")));
    }
    fs::write(d.join("many/ep999-ba999-rank0.pt"), b"not a checkpoint").unwrap();
    let (code, signal, err) = read_one_line_then_close(d, &["verify", "many"]);
    assert_eq!((code, signal), (Some(1), None), "{err}");
    assert!(
        err.contains("ep999-ba999-rank0.pt is not a checkpoint"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    let _ = std::io::stdout().flush();
}
