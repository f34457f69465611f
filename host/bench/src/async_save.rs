//! `cairn-bench async-save`: what a save costs training with `async_save` against a synchronous
//! save, the way `cairn run` saves (its synthetic model with Adam state, the real saver, durable
//! writes, a save at every event, `latest` and retention), the two modes interleaved in one run
//! so that the noise of a shared 2-core machine hits both alike.
//!
//! Each repetition runs a synchronous phase and an async phase (their order alternates): `saves`
//! saves, each after `train_seconds` of simulated training (one optimizer step, then sleep, as
//! `cairn run --seconds-per-batch` does; the training of a GPU job leaves the host's cores to
//! the writer in the same way), then `fit_end` and `close`. It reports the median time a save
//! held training in each mode and their ratio (issue 14's target: async ≤ 10% of synchronous),
//! each phase's wall time, and what the snapshot copy costs: staged into reused buffers with one
//! and with two threads, and into fresh memory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use cairn::policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};
use cairn::{CheckpointSaver, Config, StagingPool, Taken};
use cairn_cli::train::SyntheticModel;

/// Arguments of `cairn-bench async-save`.
#[derive(Debug, clap::Args)]
pub struct AsyncSaveArgs {
    /// The model's weights in MiB, as `cairn run --model-mib` (the state holds three times that:
    /// weights and Adam's two moments).
    #[arg(long, default_value_t = 1024.0)]
    model_mib: f64,
    /// Saves per phase.
    #[arg(long, default_value_t = 4)]
    saves: u64,
    /// Repetitions (each one synchronous phase and one async phase).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds of simulated training before each save.
    #[arg(long, default_value_t = 5.0)]
    train_seconds: f64,
    /// Folder to write into (it must have room for two checkpoints of the state).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// One phase's figures.
#[derive(Debug, Default)]
struct Phase {
    /// Seconds each save held training.
    blocked: Vec<f64>,
    /// Of which waiting for the previous save.
    waited: Vec<f64>,
    /// Seconds from each decision to save to its durable rename.
    durable: Vec<f64>,
    /// Bytes of each checkpoint.
    bytes: Vec<u64>,
    /// The phase's wall time: training, saves, `fit_end` and `close`.
    wall: f64,
}

pub fn run(args: AsyncSaveArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("{} cannot be created", args.dir.display()))?;
    anyhow::ensure!(
        args.saves > 0 && args.reps > 0,
        "--saves and --reps must be positive"
    );
    eprintln!(
        "building a {} MiB model with Adam state ...",
        args.model_mib
    );
    let mut model = SyntheticModel::new(args.model_mib, 0);
    let state_bytes: u64 = model.storage_sizes().iter().sum();
    let gb = state_bytes as f64 / 1e9;
    let (mut sync, mut behind) = (Phase::default(), Phase::default());
    let mut walls = (Vec::new(), Vec::new());
    let mut batch = 0;
    for rep in 1..=args.reps {
        let order = if rep % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        let mut line = format!("rep {rep}:");
        for async_save in order {
            let p = phase(&mut model, &args, async_save, &mut batch)?;
            let (label, figures) = if async_save {
                ("async blocked", &p.blocked)
            } else {
                ("sync save", &p.blocked)
            };
            line += &format!(
                "  {label} {} s, wall {:.1} s;",
                figures
                    .iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                p.wall
            );
            let (all, wall) = if async_save {
                (&mut behind, &mut walls.1)
            } else {
                (&mut sync, &mut walls.0)
            };
            wall.push(p.wall);
            all.blocked.extend(p.blocked);
            all.waited.extend(p.waited);
            all.durable.extend(p.durable);
            all.bytes.extend(p.bytes);
        }
        println!("{line}");
    }
    let med = |xs: &[f64]| median(&mut xs.to_vec());
    let (s, b) = (med(&sync.blocked), med(&behind.blocked));
    println!(
        "state: {gb:.2} GB ({} MiB of fp32 weights + Adam exp_avg/exp_avg_sq), checkpoint {:.2} GB, {} saves per phase, {} reps, {:.1} s of training before each save, dir {}",
        args.model_mib,
        sync.bytes.first().copied().unwrap_or(0) as f64 / 1e9,
        args.saves,
        args.reps,
        args.train_seconds,
        args.dir.display()
    );
    println!("median synchronous save (training blocked): {s:.3} s");
    println!(
        "median async save, training blocked:        {b:.3} s (of which waiting for the previous save {:.3} s) = {:.1}% of synchronous",
        med(&behind.waited),
        100.0 * b / s
    );
    println!(
        "median async save, decision to durable:     {:.3} s (synchronous: {:.3} s)",
        med(&behind.durable),
        med(&sync.durable)
    );
    let (ws, wa) = (med(&walls.0), med(&walls.1));
    println!(
        "median phase wall time: synchronous {ws:.1} s, async {wa:.1} s (async / synchronous {:.2})",
        wa / ws
    );
    snapshot_bandwidth(&model, state_bytes)?;
    Ok(ExitCode::SUCCESS)
}

/// One phase: a fresh saver and folder, `saves` saves each after `train_seconds` of training,
/// then `fit_end` and `close`.
fn phase(
    model: &mut SyntheticModel,
    args: &AsyncSaveArgs,
    async_save: bool,
    batch: &mut u64,
) -> anyhow::Result<Phase> {
    let folder = args.dir.join(if async_save {
        "bench-async"
    } else {
        "bench-sync"
    });
    let _ = std::fs::remove_dir_all(&folder);
    let text = format!(
        "run_name = \"bench\"\n[checkpoint]\nfolder = {:?}\nsave_interval = \"1ba\"\nnum_checkpoints_to_keep = 1\nremote_file_name = false\nasync_save = {async_save}\n",
        folder.display().to_string()
    );
    let config = Config::parse(&text, "async-save bench", &args.dir)?;
    let mut saver = CheckpointSaver::new(&config)?;
    saver.reserve_staging(model.storage_sizes())?;
    let mut now = Timestamp {
        batch: *batch,
        ..Timestamp::default()
    };
    saver.fit_start(&now)?;
    let max = MaxDuration::new(Time::batches(i64::MAX / 2)).expect("positive");
    let mut p = Phase::default();
    let started = Instant::now();
    let mut completed = Vec::new();
    for _ in 0..args.saves {
        let step = Instant::now();
        let previous = now;
        now = now.to_next_batch(1, 0, Duration::ZERO);
        model.train_step(now.batch);
        std::thread::sleep(
            Duration::from_secs_f64(args.train_seconds).saturating_sub(step.elapsed()),
        );
        let state = TrainingState {
            timestamp: now,
            previous_timestamp: Some(previous),
            max_duration: max,
            dataloader_len: None,
            run_name: "bench",
            ranks: Ranks::default(),
            metrics: &[],
        };
        match saver.on_event(&state, Event::Batch, || Ok(model.snapshot(1)))? {
            Some(Taken::Written(s)) => {
                p.blocked.push(s.blocked_seconds);
                p.waited.push(s.waited_seconds);
                completed.push(s);
            }
            Some(Taken::Staged(s)) => {
                p.blocked.push(s.blocked_seconds);
                p.waited.push(s.waited_seconds);
            }
            None => anyhow::bail!("the interval did not save at batch {}", now.batch),
        }
        completed.extend(saver.take_completed());
    }
    saver.fit_end()?;
    saver.close()?;
    completed.extend(saver.take_completed());
    p.wall = started.elapsed().as_secs_f64();
    for w in saver.take_warnings() {
        eprintln!("warning: {w}");
    }
    p.durable = completed.iter().map(|s| s.seconds).collect();
    p.bytes = completed.iter().map(|s| s.bytes).collect();
    *batch = now.batch;
    let _ = std::fs::remove_dir_all(&folder);
    Ok(p)
}

/// The snapshot's copy alone: into reused staging with one and with two threads (interleaved),
/// and into fresh memory (the page faults a pool avoids).
fn snapshot_bandwidth(model: &SyntheticModel, state_bytes: u64) -> anyhow::Result<()> {
    let gb = state_bytes as f64 / 1e9;
    let tree =
        || cairn::build_checkpoint(model.snapshot(1), &Timestamp::default(), "b", &[], false);
    let over = |e: cairn::TooLarge| anyhow::anyhow!("{} bytes over the budget", e.need);
    let mut reused = [Vec::new(), Vec::new()];
    let mut pools = [StagingPool::new(u64::MAX), StagingPool::new(u64::MAX)];
    for (threads, pool) in pools.iter_mut().enumerate() {
        pool.set_copy_threads(threads + 1);
        pool.reserve(model.storage_sizes()).map_err(over)?;
    }
    for _ in 0..5 {
        for (threads, pool) in pools.iter_mut().enumerate() {
            let mut t = tree();
            let started = Instant::now();
            pool.stage(&mut t).map_err(over)?;
            reused[threads].push(started.elapsed().as_secs_f64());
        }
    }
    drop(pools);
    let mut fresh = Vec::new();
    for _ in 0..2 {
        let mut pool = StagingPool::new(u64::MAX);
        let mut t = tree();
        let started = Instant::now();
        pool.stage(&mut t).map_err(over)?;
        fresh.push(started.elapsed().as_secs_f64());
    }
    let (one, two) = (median(&mut reused[0]), median(&mut reused[1]));
    println!(
        "snapshot copy of {gb:.2} GB into reused staging: 1 thread {one:.3} s = {:.2} GB/s, 2 threads {two:.3} s = {:.2} GB/s; into fresh memory {:.3} s = {:.2} GB/s",
        gb / one,
        gb / two,
        median(&mut fresh),
        gb / median(&mut fresh)
    );
    Ok(())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        f64::NAN
    } else {
        xs[xs.len() / 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Where `cairn-bench async-save` writes.
    fn folders(dir: &Path) -> [PathBuf; 2] {
        [dir.join("bench-sync"), dir.join("bench-async")]
    }

    #[test]
    fn a_tiny_run_measures_both_modes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let args = AsyncSaveArgs {
            model_mib: 1.0,
            saves: 2,
            reps: 2,
            train_seconds: 0.0,
            dir: dir.path().to_owned(),
        };
        assert_eq!(run(args).unwrap(), ExitCode::SUCCESS);
        for f in folders(dir.path()) {
            assert!(!f.exists(), "{} was left behind", f.display());
        }
    }
}
