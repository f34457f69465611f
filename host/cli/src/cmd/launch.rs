//! `cairn run --world-size N`: N rank processes on this machine, started as `torchrun` starts
//! them, so a sharded (or rank-0) run can be watched without a cluster.
//!
//! Each child is this same binary running `cairn run` with `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `NODE_RANK=0`, `MASTER_ADDR=127.0.0.1` and a free `MASTER_PORT` (what a
//! PyTorch script would read), and one run name for all of them (a generated one is chosen here
//! and passed as `RUN_NAME`, since each process would generate its own). Their stderr is relayed
//! line by line with a `[rank R]` prefix; their JSON summaries are collected and added up. As
//! under torchrun, when one rank fails the others are stopped (`SIGTERM`): a step that was in
//! flight then stays uncommitted, and `--resume` continues from the newest committed one.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use cairn::RunNameOrigin;

use crate::train::Job;

/// Most rank processes one machine is asked to start.
pub const MAX_WORLD_SIZE: u32 = 256;

/// What the parent passes on to every child.
pub struct ChildArgs {
    /// The operator's platform file (`cairn --platform FILE run ...`), passed on.
    pub platform: Option<std::path::PathBuf>,
    /// `cairn run`'s own arguments, without `--world-size`.
    pub args: Vec<String>,
    /// Print the aggregate as JSON.
    pub json: bool,
}

/// Start `world_size` ranks of `job` and wait for all of them.
pub fn launch(job: &Job, world_size: u32, child: ChildArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=MAX_WORLD_SIZE).contains(&world_size),
        "--world-size must be between 1 and {MAX_WORLD_SIZE}, not {world_size}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("cannot find a free port for MASTER_PORT")?;
    let exe = std::env::current_exe().context("cannot find the cairn binary to start the ranks")?;
    let started = Instant::now();
    let mut children = Vec::new();
    for rank in 0..world_size {
        let mut cmd = Command::new(&exe);
        if let Some(platform) = &child.platform {
            cmd.arg("--platform").arg(platform);
        }
        cmd.arg("run")
            .args(&child.args)
            .arg("--json")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_WORLD_SIZE", world_size.to_string())
            .env("NODE_RANK", "0")
            .env("GROUP_RANK", "0")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if job.saver.run_name_origin == RunNameOrigin::Generated {
            cmd.env("RUN_NAME", &job.saver.run_name);
        }
        let mut process = cmd
            .spawn()
            .with_context(|| format!("cannot start rank {rank}"))?;
        eprintln!("cairn: rank {rank} is process {}", process.id());
        let stderr = process.stderr.take().expect("piped stderr");
        let relay = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[rank {rank}] {line}");
            }
        });
        let mut stdout = process.stdout.take().expect("piped stdout");
        let collect = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        children.push(Rank {
            rank,
            process,
            relay: Some(relay),
            collect: Some(collect),
            status: None,
        });
    }
    wait_all(&mut children);
    let wall = started.elapsed().as_secs_f64();
    let summaries: Vec<Option<Value>> = children
        .iter_mut()
        .map(|c| {
            let text = c
                .collect
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            if let Some(relay) = c.relay.take() {
                let _ = relay.join();
            }
            serde_json::from_str(text.trim()).ok()
        })
        .collect();
    let statuses: Vec<String> = children
        .iter()
        .map(|c| describe(c.status.expect("waited")))
        .collect();
    let failed: Vec<u32> = children
        .iter()
        .filter(|c| !c.status.expect("waited").success())
        .map(|c| c.rank)
        .collect();
    let bytes: u64 = summaries
        .iter()
        .flatten()
        .map(|s| s["bytes"].as_u64().unwrap_or(0))
        .sum();
    let saves: u64 = summaries
        .iter()
        .flatten()
        .map(|s| s["saves"].as_u64().unwrap_or(0))
        .sum();
    let commits = summaries
        .first()
        .and_then(|s| s.as_ref())
        .map(|s| s["commits"].clone())
        .unwrap_or(Value::Null);
    let aggregate = json!({
        "world_size": world_size,
        "ranks": summaries,
        "exit_status": statuses,
        "failed_ranks": failed,
        "saves": saves,
        "bytes": bytes,
        "wall_seconds": wall,
        "aggregate_throughput_mb_s": if wall > 0.0 { bytes as f64 / 1e6 / wall } else { 0.0 },
        "commits": commits,
    });
    print_aggregate(&aggregate, child.json)?;
    if failed.is_empty() {
        return Ok(());
    }
    let first = failed[0] as usize;
    anyhow::bail!(
        "{} of {world_size} ranks failed (rank {} {}); the others were stopped, and a step in flight stays uncommitted",
        failed.len(),
        failed[0],
        statuses[first]
    )
}

struct Rank {
    rank: u32,
    process: Child,
    relay: Option<std::thread::JoinHandle<()>>,
    collect: Option<std::thread::JoinHandle<String>>,
    status: Option<ExitStatus>,
}

/// Wait for every rank; the first to fail has the others stopped, as torchrun's agent does.
fn wait_all(children: &mut [Rank]) {
    let mut stopping = false;
    while children.iter().any(|c| c.status.is_none()) {
        for c in children.iter_mut().filter(|c| c.status.is_none()) {
            if let Ok(Some(status)) = c.process.try_wait() {
                c.status = Some(status);
                if !status.success() {
                    stopping = true;
                }
            }
        }
        if stopping {
            for c in children.iter().filter(|c| c.status.is_none()) {
                // SAFETY: a plain signal to a child this process started and has not reaped.
                unsafe {
                    libc::kill(c.process.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "ok".to_owned(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

fn print_aggregate(a: &Value, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, a)?;
        writeln!(out)?;
        return Ok(());
    }
    let ranks = a["ranks"].as_array().cloned().unwrap_or_default();
    for (rank, (summary, status)) in ranks
        .iter()
        .zip(a["exit_status"].as_array().into_iter().flatten())
        .enumerate()
    {
        let line = match summary {
            Value::Null => format!("no summary; {}", status.as_str().unwrap_or("?")),
            s => format!(
                "{} saves, {:.1} MB, latest {}; {}",
                s["saves"],
                s["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                s["latest"].as_str().unwrap_or("-"),
                status.as_str().unwrap_or("?")
            ),
        };
        writeln!(out, "{:<18} {line}", format!("rank {rank}"))?;
    }
    writeln!(
        out,
        "{:<18} {} saves, {:.1} MB in {:.2} s ({:.0} MB/s across ranks)",
        "all ranks",
        a["saves"],
        a["bytes"].as_f64().unwrap_or(0.0) / 1e6,
        a["wall_seconds"].as_f64().unwrap_or(0.0),
        a["aggregate_throughput_mb_s"].as_f64().unwrap_or(0.0)
    )?;
    if let Some(c) = a["commits"].as_object() {
        writeln!(
            out,
            "{:<18} {} committed, {} not committed (rank 0); {} ms from the last shard to the manifest (median {} ms)",
            "steps",
            c.get("committed").and_then(Value::as_u64).unwrap_or(0),
            c.get("failed").and_then(Value::as_u64).unwrap_or(0),
            c.get("latency_ms_max").and_then(Value::as_u64).unwrap_or(0),
            c.get("latency_ms_median")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        )?;
    }
    Ok(())
}
