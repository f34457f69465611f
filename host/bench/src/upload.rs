//! `cairn-bench upload`: upload throughput of cairn's uploader against a plain single-stream
//! upload of the same file to the same store.
//!
//! Three contenders, each run `--runs` times, medians reported:
//!
//! * `cairn` — [`Uploader`] as the saver uses it (multipart, parallel parts, HEAD confirmation),
//!   timed from `enqueue` to `finish`.
//! * `single-put` — one object_store `put` of the whole file (read into memory first, timed
//!   together), the simplest correct upload.
//! * `aws s3 cp` — the AWS CLI, if `aws` is on `PATH` (it reads the same `AWS_*` variables).
//!
//! The store URL is read like any other (`s3://bucket/prefix` with `AWS_ENDPOINT_URL`...);
//! objects are written under `<prefix>/cairn-bench/` and deleted afterwards.
//!
//! Recorded 2026-11-28 on the 2-core dev VM (load average 4–6 from other builds), release build,
//! 512 MiB random file, s3s-fs 0.14.1 on loopback, `--server-pid` given, medians of 3:
//!
//! ```text
//! cairn        4.48 s  114.2 MiB/s  client CPU 0.71 s  server CPU 3.66 s
//! single-put   3.07 s  167.0 MiB/s  client CPU 0.83 s  server CPU 1.85 s   cairn/single-put 0.68x
//! aws s3 cp    6.17 s   82.9 MiB/s  client CPU 1.89 s  server CPU 3.56 s   cairn/aws s3 cp  1.38x
//! ```
//!
//! On loopback the two cores are shared by client and server, and s3s-fs completes a multipart
//! upload by re-reading, re-hashing and rewriting every part into the final file, so any multipart
//! upload (cairn's, the AWS CLI's) costs the server twice the work of one `PUT`. cairn uses less
//! client CPU than either contender; its advantage over a single stream — parallel parts, bounded
//! memory (a single `PUT` holds the whole file in memory), per-part retries — shows on real
//! networks, where one connection's bandwidth is the limit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use object_store::{ObjectStoreExt, PutPayload};

use cairn::remote::{RemoteStore, UploadJob, UploadOptions, Uploader};

const MIB: usize = 1024 * 1024;

/// Arguments of `cairn bench upload`.
#[derive(Debug, Args)]
pub struct BenchUploadArgs {
    /// Store to upload to, e.g. s3://bucket/prefix (endpoint and credentials from AWS_* variables).
    #[arg(long, env = "CAIRN_BENCH_URL")]
    url: String,
    /// Size of the random test file, in MiB (ignored with --file).
    #[arg(long, default_value_t = 512)]
    size_mib: usize,
    /// Upload this file instead of a generated one.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Runs per contender; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// cairn: smallest multipart part, in MiB.
    #[arg(long, default_value_t = 8)]
    part_size_mib: usize,
    /// cairn: parts in flight per upload.
    #[arg(long, default_value_t = 4)]
    part_concurrency: usize,
    /// Directory for the generated file (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Process id of a local server (e.g. s3s-fs): also report the server's CPU seconds per
    /// contender, since on one machine the server's work competes with the client's.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Skip `aws s3 cp` even if it is on PATH.
    #[arg(long)]
    no_aws: bool,
}

/// Run the benchmark and print one line per contender and the ratios.
pub fn run(args: BenchUploadArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let store = RemoteStore::from_url(&args.url)?;
    // Fail on a wrong endpoint or credentials before generating hundreds of MiB.
    store.check_access(Duration::from_secs(60))?;
    let mut generated = None;
    let (path, size) = match &args.file {
        Some(file) => {
            let size = std::fs::metadata(file)
                .with_context(|| format!("cannot read '{}'", file.display()))?
                .len();
            (file.clone(), size)
        }
        None => {
            let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            let path = dir.join(format!("cairn-bench-{}.bin", std::process::id()));
            let file = generated.insert(TempFile(path.clone()));
            write_random(&file.0, args.size_mib * MIB)?;
            (path, (args.size_mib * MIB) as u64)
        }
    };
    let aws = !args.no_aws && aws_available();
    println!(
        "uploading {:.0} MiB to {} ({} runs each; cairn: parts ≥ {} MiB, {} in flight)",
        size as f64 / MIB as f64,
        args.url,
        args.runs,
        args.part_size_mib,
        args.part_concurrency
    );

    let mut cairn = Sample::default();
    let mut single = Sample::default();
    let mut awscli = Sample::default();
    let server = args.server_pid;
    for run in 0..args.runs {
        cairn.measure(server, || time_cairn(&store, &args, &path, run))?;
        single.measure(server, || time_single_put(&store, &path, run))?;
        if aws {
            awscli.measure(server, || time_aws(&store, &args.url, &path, run))?;
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for run in 0..args.runs {
            for who in ["cairn", "single-put", "aws-cli"] {
                let key = store.key(&bench_name(who, run))?;
                let _ = store.object_store().delete(&key).await;
            }
        }
        anyhow::Ok(())
    })?;

    let mib = size as f64 / MIB as f64;
    let report = |label: &str, sample: &mut Sample| -> f64 {
        let m = median(&mut sample.wall);
        let server_cpu = if server.is_some() {
            format!("  server CPU {:>5.2} s", median(&mut sample.server_cpu))
        } else {
            String::new()
        };
        println!(
            "{label:<12} median {m:>7.2} s  {:>8.1} MiB/s  client CPU {:>5.2} s{server_cpu}   (runs: {})",
            mib / m,
            median(&mut sample.client_cpu),
            sample
                .wall
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        m
    };
    let c = report("cairn", &mut cairn);
    let s = report("single-put", &mut single);
    println!("ratio cairn / single-put throughput: {:.2}x", s / c);
    if aws {
        let a = report("aws s3 cp", &mut awscli);
        println!("ratio cairn / aws s3 cp throughput: {:.2}x", a / c);
    } else {
        println!("aws s3 cp: skipped (not on PATH or --no-aws)");
    }
    drop(generated);
    Ok(ExitCode::SUCCESS)
}

/// Wall-clock and CPU seconds of each run of one contender.
#[derive(Default)]
struct Sample {
    wall: Vec<f64>,
    client_cpu: Vec<f64>,
    server_cpu: Vec<f64>,
}

impl Sample {
    /// Run `f` (which returns its wall-clock seconds) and record the CPU time it cost this process
    /// and its children (the `aws` CLI), and the server if its pid is known.
    fn measure(
        &mut self,
        server: Option<u32>,
        f: impl FnOnce() -> anyhow::Result<f64>,
    ) -> anyhow::Result<()> {
        let (client0, server0) = (client_cpu(), server.map(process_cpu));
        let wall = f()?;
        self.wall.push(wall);
        self.client_cpu.push(client_cpu() - client0);
        if let (Some(pid), Some(before)) = (server, server0) {
            self.server_cpu.push(process_cpu(pid) - before);
        }
        Ok(())
    }
}

/// CPU seconds used by this process and its waited-for children.
fn client_cpu() -> f64 {
    let of = |who| {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        cairn_cli::rusage::rusage(who).map_or(0.0, |u| secs(u.ru_utime) + secs(u.ru_stime))
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

/// CPU seconds used so far by process `pid` (Linux `/proc/PID/stat`), 0 if unreadable.
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: `sysconf` has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The generated file, removed however the benchmark ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bench_name(who: &str, run: usize) -> String {
    format!("cairn-bench/{who}-{run}.bin")
}

fn time_cairn(
    store: &RemoteStore,
    args: &BenchUploadArgs,
    path: &Path,
    run: usize,
) -> anyhow::Result<f64> {
    let options = UploadOptions {
        overwrite: true,
        part_size_min: args.part_size_mib * MIB,
        part_concurrency: args.part_concurrency,
        ..UploadOptions::default()
    };
    let uploader = Uploader::new(store.clone(), options)?;
    let start = Instant::now();
    uploader.enqueue(UploadJob {
        local_path: path.to_path_buf(),
        object_name: bench_name("cairn", run),
        latest_pointer: None,
        sequence: run as u64,
    })?;
    let report = uploader.finish();
    let seconds = start.elapsed().as_secs_f64();
    if let Some(failure) = report.failures.first() {
        bail!("{failure}");
    }
    Ok(seconds)
}

fn time_single_put(store: &RemoteStore, path: &Path, run: usize) -> anyhow::Result<f64> {
    let runtime = tokio::runtime::Runtime::new()?;
    let key = store.key(&bench_name("single-put", run))?;
    let start = Instant::now();
    let data = std::fs::read(path)?;
    runtime
        .block_on(store.object_store().put(&key, PutPayload::from(data)))
        .with_context(|| format!("single put of '{key}' to '{}' failed", store.url()))?;
    Ok(start.elapsed().as_secs_f64())
}

fn time_aws(store: &RemoteStore, url: &str, path: &Path, run: usize) -> anyhow::Result<f64> {
    let key = store.key(&bench_name("aws-cli", run))?;
    let bucket = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("");
    let target = format!("s3://{bucket}/{key}");
    let start = Instant::now();
    let out = Command::new("aws")
        .args(["s3", "cp", "--only-show-errors"])
        .arg(path)
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .context("cannot run 'aws'")?;
    if !out.status.success() {
        bail!(
            "aws s3 cp to '{target}' failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(start.elapsed().as_secs_f64())
}

fn aws_available() -> bool {
    let child = Command::new("aws")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return false,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Incompressible bytes (xorshift64*), written in 8 MiB blocks and fsynced.
fn write_random(path: &Path, len: usize) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut block = vec![0u8; 8 * MIB];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(block.len());
        file.write_all(&block[..n])?;
        left -= n;
    }
    file.sync_all()?;
    Ok(())
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}
