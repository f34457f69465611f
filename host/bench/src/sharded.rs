//! `cairn-bench sharded`: aggregate save throughput of 1, 2, 4, ... ranks against a store, and the
//! commit's own latency (the last rank's record to the manifest).
//!
//! Method: a model of `--mib` MiB (weights plus Adam moments, as `cairn run` builds it) is split
//! across N ranks, each a thread with its own `CheckpointSaver` and explicit ranks (what
//! separate processes would do, without N copies of the model's set-up), each with its own local
//! folder (as on separate machines). All ranks start each step together (a barrier); a step's
//! time runs from there until global rank 0's commit of it returned: every shard written, fsync'd,
//! uploaded and confirmed, every record published, the manifest created and `latest` moved.
//! Aggregate throughput = the step's bytes over that time, median over `--steps`. The commit
//! latency is the manifest's own (`committed_unix_ms` minus the newest record's time), which
//! includes up to one poll interval (50 ms).

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use cairn::policy::{Event, PolicyHost, Ranks, Timestamp};
use cairn::{CheckpointSaver, Config};
use cairn_cli::train::SyntheticModel;

/// Arguments of `cairn-bench sharded`.
#[derive(Debug, Args)]
pub struct ShardedArgs {
    /// Store to commit through, e.g. s3://bucket/prefix (AWS_* variables as for uploads).
    #[arg(long, env = "CAIRN_BENCH_URL")]
    url: String,
    /// The whole model's weights in MiB (the state is three times that: weights and Adam moments).
    #[arg(long, default_value_t = 64.0)]
    mib: f64,
    /// Rank counts to measure, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    ranks: Vec<u32>,
    /// Steps per rank count; the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: u64,
}

pub fn run(args: ShardedArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile_dir()?;
    println!(
        "sharded saves of a {:.0} MiB model (x3 with Adam state) through {} ({} steps each)",
        args.mib, args.url, args.steps
    );
    for &world in &args.ranks {
        anyhow::ensure!(world >= 1, "--ranks must be at least 1");
        let run = format!("bench-{}-{world}", std::process::id());
        let (times, latencies, bytes) = measure(&args, &dir.join(&run), &run, world)?;
        let t = median(times);
        let l = median(latencies.iter().map(|&l| l as f64).collect());
        println!(
            "{world} rank(s): {:.1} MB per step, median {:.2} s to commit = {:.0} MB/s aggregate; commit latency median {:.0} ms (max {} ms)",
            bytes as f64 / 1e6,
            t,
            bytes as f64 / 1e6 / t,
            l,
            latencies.iter().max().unwrap_or(&0)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cairn-bench-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("create the benchmark folder")?;
    Ok(dir)
}

/// Per step: seconds to commit; per committed step: its latency; the bytes of one step.
fn measure(
    args: &ShardedArgs,
    dir: &std::path::Path,
    run: &str,
    world: u32,
) -> anyhow::Result<(Vec<f64>, Vec<u64>, u64)> {
    let host = Arc::new(PolicyHost::default());
    let barrier = Arc::new(Barrier::new(world as usize));
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let text = format!(
                "run_name = \"{run}\"\n[checkpoint]\nfolder = \"{}/rank{rank}\"\nsharded = true\nnum_checkpoints_to_keep = 1\ncommit_timeout_s = 600\nfilename = \"ba{{batch}}-rank{{rank}}.pt\"\nremote_file_name = \"{run}/ba{{batch}}-rank{{rank}}.pt\"\nlatest_remote_file_name = \"{run}/latest\"\n[remote]\nurl = \"{}\"\n",
                dir.display(),
                args.url
            );
            let (host, barrier) = (Arc::clone(&host), Arc::clone(&barrier));
            let (steps, mib) = (args.steps, args.mib / f64::from(world));
            std::thread::spawn(move || -> anyhow::Result<(Vec<f64>, Vec<u64>, u64)> {
                let config = Config::parse(&text, "bench.toml", std::path::Path::new("."))?;
                let ranks = Ranks {
                    rank,
                    local_rank: rank,
                    world_size: world,
                    local_world_size: world,
                    node_rank: 0,
                };
                let mut saver = CheckpointSaver::with_ranks(&config, &host, ranks)?;
                let model = SyntheticModel::new(mib, u64::from(rank));
                saver.fit_start(&Timestamp::default())?;
                let (mut times, mut bytes) = (Vec::new(), 0);
                let mut ts = Timestamp::default();
                for _ in 0..steps {
                    ts = ts.to_next_batch(1, 0, Duration::ZERO);
                    barrier.wait();
                    let started = Instant::now();
                    let saved = saver.save(&ts, Event::Batch, || Ok(model.snapshot(1)))?;
                    bytes = saved.as_ref().and_then(|s| s.written()).map_or(0, |s| s.bytes);
                    if rank == 0 {
                        let report = saver.wait_for_commits(None);
                        anyhow::ensure!(report.failed.is_empty(), "{:?}", report.failed);
                        times.push(started.elapsed().as_secs_f64());
                    }
                    barrier.wait();
                }
                saver.fit_end()?;
                let latencies = saver
                    .commit_report()
                    .committed
                    .iter()
                    .map(|c| c.latency_ms)
                    .collect();
                saver.close()?;
                Ok((times, latencies, bytes))
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| anyhow::anyhow!("a rank panicked"))??);
    }
    let bytes = results.iter().map(|r| r.2).sum();
    let (times, latencies, _) = results.swap_remove(0);
    Ok((times, latencies, bytes))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
