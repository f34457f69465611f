//! `cairn run`: the main job. A simulated training run — a synthetic model with Adam state, a
//! fake step time and a decreasing loss — that fires Composer's checkpoint events through the
//! real saver.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use cairn::policy::{Event, PolicyHost, Ranks, TrainingState};
use cairn::{CheckpointSaver, RunNameOrigin, SavedCheckpoint, Taken};

use crate::train::{EMBEDDED_DEFAULT, Events, Job, SyntheticModel, TrainerSpec, synthetic_loss};

/// Arguments of `cairn run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job's TOML config; without it, the embedded default runs. Given several times, the
    /// jobs run concurrently in this process (one per tenant), sharing one WebAssembly engine.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Continue from the newest complete checkpoint in the folder, if there is one.
    #[arg(long)]
    resume: bool,
    /// Size of the synthetic model's weights in MiB (overrides `train.model_mib`).
    #[arg(long, value_name = "MIB")]
    model_mib: Option<f64>,
    /// Simulated seconds per batch (overrides `train.seconds_per_batch`).
    #[arg(long, value_name = "S")]
    seconds_per_batch: Option<f64>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Under a platform file: the tenant each `--config` belongs to, once per `--config` in the
    /// same order (or once for all) [default: $CAIRN_TENANT].
    #[arg(long, value_name = "ID")]
    tenant: Vec<String>,
    /// Print the job's TOML (the embedded default without --config) and exit without running.
    #[arg(long)]
    print_config: bool,
    /// Start N rank processes on this machine, as `torchrun --nproc-per-node N` does (RANK,
    /// LOCAL_RANK, WORLD_SIZE, ... set for each), and add up their summaries.
    #[arg(long, value_name = "N")]
    world_size: Option<u32>,
}

/// What a run did, for the summary.
#[derive(Debug, Default, Serialize)]
struct Summary {
    run_name: String,
    /// This process's global rank: only rank 0 writes a (non-sharded) checkpoint.
    rank: u32,
    /// How many ranks the run has.
    world_size: u32,
    /// Every rank writes its own shard, and rank 0 commits each step.
    sharded: bool,
    resumed_from: Option<String>,
    batches: u64,
    saves: usize,
    bytes: u64,
    save_seconds: f64,
    throughput_mb_s: f64,
    /// Whether saves were written behind training (`[checkpoint] async_save`).
    async_save: bool,
    /// Seconds training was held by saves: all of each save when synchronous; with `async_save`
    /// the snapshot (the copy into staging) and any wait for the previous save.
    blocked_seconds: f64,
    /// The part of `blocked_seconds` spent waiting for the previous save to be written.
    waited_seconds: f64,
    /// The staging buffers of `async_save`.
    staging: Option<StagingSummary>,
    /// Until the last checkpoint event: what training itself took (uploads run beside it).
    training_seconds: f64,
    /// Including the wait for uploads at the end.
    wall_seconds: f64,
    latest: Option<String>,
    folder: String,
    warnings: Vec<String>,
    uploads: Option<UploadSummary>,
    /// Sharded, rank 0: the steps it committed.
    commits: Option<CommitSummary>,
    policies: Vec<PolicySummary>,
    /// Batches per second from the first event to the last (set-up excluded): the job's pace.
    batches_per_second: f64,
    /// The whole process's peak resident memory when this job ended (every job of a
    /// multi-tenant run shares the process): shows that misbehaving policies left the host
    /// bounded.
    process_peak_rss_bytes: Option<u64>,
}

/// What one WebAssembly policy of the job cost (per-tenant accounting).
#[derive(Debug, Default, Serialize)]
struct PolicySummary {
    policy: String,
    calls: u64,
    errors: u64,
    fuel: u64,
    seconds: f64,
    peak_memory_bytes: u64,
    reinstantiations: u64,
}

/// The commits of a sharded run (global rank 0).
#[derive(Debug, Default, Serialize)]
struct CommitSummary {
    committed: usize,
    failed: usize,
    /// Milliseconds from the last rank's record to the manifest: the largest, and the median.
    latency_ms_max: u64,
    latency_ms_median: u64,
    failures: Vec<String>,
}

/// What `async_save`'s staging did.
#[derive(Debug, Default, Serialize)]
struct StagingSummary {
    /// The staging buffer's size.
    pool_bytes: u64,
    /// Allocations of it: 1 when it was reused by every save.
    allocations: u64,
    /// Tensor bytes copied, over all saves.
    staged_bytes: u64,
    /// Seconds the copies took.
    copy_seconds: f64,
    /// `staged_bytes / copy_seconds`: the memory bandwidth the snapshots got.
    copy_gb_s: f64,
}

/// The uploads of a run.
#[derive(Debug, Default, Serialize)]
struct UploadSummary {
    uploaded: usize,
    failed: usize,
    bytes: u64,
    seconds: f64,
    throughput_mb_s: f64,
    failures: Vec<String>,
    remote_latest: Vec<(String, String)>,
}

/// Run `cairn run`.
pub fn run(args: RunArgs, platform: Option<&Path>) -> Result<()> {
    if args.print_config {
        return print_config(&args.config);
    }
    refuse_duplicates(&args.config)?;
    if let Some(n) = args.world_size {
        return launch_ranks(&args, n, platform);
    }
    let mut configs = if args.config.is_empty() {
        eprintln!("cairn: running the embedded demo job (`cairn run --print-config` shows it)");
        vec![Job::embedded_default()]
    } else {
        let tenants = tenants(&args)?;
        args.config
            .iter()
            .zip(tenants)
            .map(|(p, tenant)| {
                let platform = platform
                    .map(|f| cairn::Platform::load(f, tenant.as_deref()))
                    .transpose()?;
                Job::load(p, platform.as_ref())
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    for config in &mut configs {
        apply_overrides(config, &args)?;
    }
    refuse_shared_folders(&configs)?;
    // One policy runtime for the process: every job shares its engine, epoch ticker and compile
    // cache, while each job's components get their own stores and limits.
    let host = super::policy_host();
    if let [config] = configs.as_slice() {
        let summary = train(config, &host, args.resume, true)?;
        print_summary(&summary, args.json)?;
        return upload_outcome(&summary);
    }
    // Several tenants' jobs in one process: each on its own thread with its own saver.
    let results: Vec<Result<Summary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|c| scope.spawn(|| train(c, &host, args.resume, false)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the job panicked")))
            })
            .collect()
    });
    let mut failed = Vec::new();
    for (job, result) in configs.iter().zip(results) {
        let run_name = &job.saver.run_name;
        match result {
            Ok(summary) => {
                print_summary(&summary, args.json)?;
                if let Err(e) = upload_outcome(&summary) {
                    eprintln!(
                        "cairn: job {run_name}: {}",
                        cairn::remote::error_chain(e.as_ref())
                    );
                    failed.push(run_name.clone());
                }
            }
            Err(e) => {
                eprintln!(
                    "cairn: job {run_name}: {}",
                    cairn::remote::error_chain(e.as_ref())
                );
                failed.push(run_name.clone());
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} failed: {}",
        failed.len(),
        crate::plural::count(configs.len() as u64, "job", "jobs"),
        failed.join(", ")
    );
    Ok(())
}

/// `--world-size N`: one job, N rank processes.
fn launch_ranks(args: &RunArgs, world_size: u32, platform: Option<&Path>) -> Result<()> {
    anyhow::ensure!(
        args.config.len() <= 1,
        "--world-size runs one job as several ranks; give at most one --config"
    );
    let mut job = match args.config.first() {
        Some(path) => {
            let tenant = tenants(args)?.into_iter().next().flatten();
            let platform = platform
                .map(|f| cairn::Platform::load(f, tenant.as_deref()))
                .transpose()?;
            Job::load(path, platform.as_ref())?
        }
        None => Job::embedded_default(),
    };
    apply_overrides(&mut job, args)?;
    let mut child = Vec::new();
    for t in &args.tenant {
        child.extend(["--tenant".to_owned(), t.clone()]);
    }
    for c in &args.config {
        child.push("--config".to_owned());
        child.push(c.display().to_string());
    }
    if args.resume {
        child.push("--resume".to_owned());
    }
    if let Some(m) = args.model_mib {
        child.extend(["--model-mib".to_owned(), m.to_string()]);
    }
    if let Some(s) = args.seconds_per_batch {
        child.extend(["--seconds-per-batch".to_owned(), s.to_string()]);
    }
    crate::cmd::launch::launch(
        &job,
        world_size,
        crate::cmd::launch::ChildArgs {
            platform: platform.map(Path::to_path_buf),
            args: child,
            json: args.json,
        },
    )
}

/// The tenant of each `--config`: `--tenant` once per config, once for all, or `$CAIRN_TENANT`.
fn tenants(args: &RunArgs) -> Result<Vec<Option<String>>> {
    let n = args.config.len();
    Ok(match args.tenant.as_slice() {
        [] => vec![super::simulate::tenant_env(); n],
        [one] => vec![Some(one.clone()); n],
        many if many.len() == n => many.iter().cloned().map(Some).collect(),
        many => anyhow::bail!(
            "--tenant is given {} times for {}: give it once, or once per --config in the same order",
            many.len(),
            crate::plural::count(n as u64, "config", "configs")
        ),
    })
}

/// `--print-config`: the text of each job file, or of the embedded default.
fn print_config(files: &[PathBuf]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if files.is_empty() {
        out.write_all(EMBEDDED_DEFAULT.as_bytes())?;
    }
    for file in files {
        let text = cairn::config::read_text(file)?;
        if files.len() > 1 {
            writeln!(out, "# {}", file.display())?;
        }
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// The same file twice would be two jobs writing one folder: a mistake, refused before anything
/// runs.
fn refuse_duplicates(files: &[PathBuf]) -> Result<()> {
    let mut seen: Vec<(PathBuf, &PathBuf)> = Vec::new();
    for file in files {
        let key = file.canonicalize().unwrap_or_else(|_| file.clone());
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            anyhow::bail!(
                "--config {} is given twice (as {} and {}): each job needs a config of its own",
                file.display(),
                first.display(),
                file.display()
            );
        }
        seen.push((key, file));
    }
    Ok(())
}

/// Two jobs of one process saving into one folder would rotate and resume each other's
/// checkpoints.
fn refuse_shared_folders(jobs: &[Job]) -> Result<()> {
    let ranks = Ranks::from_env();
    let mut seen: Vec<(PathBuf, &str)> = Vec::new();
    for job in jobs {
        let c = &job.saver;
        let vars = cairn::Vars {
            run_name: &c.run_name,
            ranks,
            timestamp: None,
        };
        let folder = PathBuf::from(c.folder.render(&vars));
        let key = std::path::absolute(&folder).unwrap_or(folder);
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == key) {
            anyhow::bail!(
                "jobs {other} and {} both save into {}: give each job its own checkpoint.folder",
                c.run_name,
                key.display()
            );
        }
        seen.push((key, &c.run_name));
    }
    Ok(())
}

/// Say where a job writes before it writes anything.
fn announce(job: &Job, saver: &CheckpointSaver, prefix: &str) {
    let c = &job.saver;
    let per_checkpoint = job.train.model_mib * 3.0 * (1 << 20) as f64 / 1e6;
    let keep = match c.num_checkpoints_to_keep {
        n if n < 0 => "keeps every checkpoint".to_owned(),
        0 => "keeps none locally".to_owned(),
        1 => "keeps the newest".to_owned(),
        n => format!("keeps the newest {n}"),
    };
    let upload = match saver.upload_url() {
        Some(url) => format!(", uploaded to {url}"),
        None => String::new(),
    };
    eprintln!(
        "{prefix}{}: checkpoints of ~{per_checkpoint:.0} MB go to {} ({keep}){upload}",
        c.run_name,
        saver.folder().display(),
    );
}

/// A run whose uploads failed, or whose steps were not committed, did not do its job, even though
/// every local checkpoint is fine.
fn upload_outcome(s: &Summary) -> Result<()> {
    if let Some(c) = &s.commits
        && c.failed > 0
    {
        anyhow::bail!(
            "{} of {} steps were not committed; latest names the newest committed one (first failure: {})",
            c.failed,
            c.failed + c.committed,
            c.failures.first().map_or("unknown", String::as_str)
        );
    }
    match &s.uploads {
        Some(u) if u.failed > 0 => anyhow::bail!(
            "{} of {} uploads failed; the local checkpoints are intact (first failure: {})",
            u.failed,
            u.failed + u.uploaded,
            u.failures.first().map_or("unknown", String::as_str)
        ),
        _ => Ok(()),
    }
}

/// The command-line flags that override `[train]`.
fn apply_overrides(config: &mut Job, args: &RunArgs) -> Result<()> {
    if let Some(mib) = args.model_mib {
        anyhow::ensure!(
            mib > 0.0 && mib.is_finite(),
            "--model-mib must be a positive number, not {mib}"
        );
        config.train.model_mib = mib;
    }
    if let Some(s) = args.seconds_per_batch {
        anyhow::ensure!(
            s >= 0.0 && s.is_finite(),
            "--seconds-per-batch must be a non-negative number, not {s}"
        );
        config.train.seconds_per_batch = s;
    }
    Ok(())
}

fn train(job: &Job, host: &PolicyHost, resume: bool, interactive: bool) -> Result<Summary> {
    let config = &job.saver;
    // Composer's `Trainer` refuses `autoresume` without a run name for the same reason.
    anyhow::ensure!(
        !(resume && config.run_name_origin == RunNameOrigin::Generated),
        "--resume needs the run's name: set run_name in the config or RUN_NAME in the environment (without one each run gets a new generated name, here {}, so there is nothing to resume)",
        config.run_name
    );
    let mut saver = CheckpointSaver::with_host(config, host)?;
    announce(
        job,
        &saver,
        if interactive {
            "cairn: "
        } else {
            "cairn: job "
        },
    );
    match train_with(&mut saver, job, resume, interactive) {
        Ok(summary) => Ok(summary),
        Err(e) => {
            close_after_error(&mut saver);
            Err(e)
        }
    }
}

/// Training stopped with an error: finish the uploads in flight (Composer's `post_close`), so the
/// store holds every checkpoint that was saved and the remote `latest` names the newest one
/// confirmed, and say what became of them. The error itself is reported by the caller.
fn close_after_error(saver: &mut CheckpointSaver) {
    match saver.close() {
        Ok(Some(report)) => eprintln!(
            "cairn: training stopped; the uploads in flight were finished first ({} ok, {} failed)",
            report.uploaded, report.failed
        ),
        Ok(None) => {}
        Err(e) => eprintln!("cairn: training stopped, and closing the saver failed too: {e}"),
    }
}

fn train_with(
    saver: &mut CheckpointSaver,
    job: &Job,
    resume: bool,
    interactive: bool,
) -> Result<Summary> {
    let started = Instant::now();
    let (config, t) = (&job.saver, &job.train);
    // Sharded, each rank holds its part of the model (as FSDP shards it), with its own values.
    let ranks = Ranks::from_env();
    let mut model = match config.sharded {
        true => SyntheticModel::new(
            t.model_mib / f64::from(ranks.world_size.max(1)),
            t.seed.wrapping_add(u64::from(ranks.rank)),
        ),
        false => SyntheticModel::new(t.model_mib, t.seed),
    };
    let mut summary = Summary {
        run_name: config.run_name.clone(),
        rank: Ranks::from_env().rank,
        world_size: Ranks::from_env().world_size,
        sharded: config.sharded,
        folder: saver.folder().display().to_string(),
        ..Summary::default()
    };
    summary.async_save = saver.is_async();
    let spec = TrainerSpec {
        max_duration: t.max_duration,
        batches_per_epoch: t.batches_per_epoch,
        samples_per_batch: t.samples_per_batch,
        tokens_per_batch: t.tokens_per_batch,
        batch_duration: Duration::from_secs_f64(t.seconds_per_batch),
        epochs_per_iteration: t.epochs_per_iteration,
    };
    let mut start = Default::default();
    if resume && let Some(point) = saver.resume()? {
        for (path, why) in &point.skipped {
            eprintln!(
                "cairn: skipped damaged checkpoint {}: {why}",
                path.display()
            );
        }
        eprintln!(
            "cairn: resuming from {} (epoch {}, batch {}): {}",
            point.path.display(),
            point.timestamp.epoch,
            point.timestamp.batch,
            point.reason
        );
        model.restore(&point.path, &point.tree)?;
        spec.check_resume(&point.timestamp)
            .map_err(|reason| cairn::Error::Resume {
                path: point.path.clone(),
                reason,
            })?;
        start = point.timestamp;
        summary.resumed_from = Some(point.path.display().to_string());
    }
    // The staging buffers' pages are faulted in now rather than by the first save.
    saver.reserve_staging(model.storage_sizes())?;
    saver.fit_start(&start).map_err(|e| match e {
        cairn::Error::FutureCheckpoint { .. } if !resume => anyhow::Error::new(e)
            .context("this folder holds an earlier run; to continue it, add --resume"),
        e => e.into(),
    })?;
    let progress = Progress::new(&spec, &start, interactive, &config.run_name);
    let mut metrics = vec![("loss".to_owned(), 0.0)];
    let loop_started = Instant::now();
    for tick in Events::resume(spec.clone(), start) {
        if tick.event == Event::Batch {
            model.train_step(tick.timestamp.batch);
            std::thread::sleep(spec.batch_duration);
            summary.batches += 1;
            metrics[0].1 = synthetic_loss(tick.timestamp.batch);
            progress.batch(tick.timestamp.batch, metrics[0].1);
        }
        let state = TrainingState {
            timestamp: tick.timestamp,
            previous_timestamp: tick.previous,
            max_duration: spec.max_duration,
            dataloader_len: Some(spec.batches_per_epoch),
            run_name: &config.run_name,
            ranks: Ranks::from_env(),
            metrics: &metrics,
        };
        let taken = saver.on_event(&state, tick.event, || {
            Ok(model.snapshot(t.samples_per_batch))
        })?;
        match taken {
            Some(Taken::Written(s)) => summary.saved(&s, false, &progress),
            Some(Taken::Staged(s)) => {
                summary.blocked_seconds += s.blocked_seconds;
                summary.waited_seconds += s.waited_seconds;
                progress.staged(&s);
            }
            None => {}
        }
        for s in saver.take_completed() {
            summary.saved(&s, true, &progress);
        }
        for w in saver.take_warnings() {
            progress.warn(&w);
            summary.warnings.push(w);
        }
    }
    summary.training_seconds = started.elapsed().as_secs_f64();
    let looped = loop_started.elapsed().as_secs_f64();
    if looped > 0.0 {
        summary.batches_per_second = summary.batches as f64 / looped;
    }
    summary.policies = saver
        .policy_stats()
        .into_iter()
        .map(|(policy, st)| PolicySummary {
            policy,
            calls: st.calls,
            errors: st.errors,
            fuel: st.fuel,
            seconds: st.time.as_secs_f64(),
            peak_memory_bytes: st.peak_memory,
            reinstantiations: st.reinstantiations,
        })
        .collect();
    // Failed uploads still leave a run worth summarising (the local checkpoints are intact);
    // `upload_outcome` turns them into the exit status.
    match saver.fit_end() {
        Ok(_) | Err(cairn::Error::UploadsFailed(_)) | Err(cairn::Error::StepsNotCommitted(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let report = saver.close()?;
    if config.sharded && summary.rank == 0 {
        let c = saver.commit_report();
        let mut latencies: Vec<u64> = c.committed.iter().map(|s| s.latency_ms).collect();
        latencies.sort_unstable();
        summary.commits = Some(CommitSummary {
            committed: c.committed.len(),
            failed: c.failed.len(),
            latency_ms_max: latencies.last().copied().unwrap_or(0),
            latency_ms_median: latencies.get(latencies.len() / 2).copied().unwrap_or(0),
            failures: c.failed.iter().map(|f| f.to_string()).collect(),
        });
    }
    for s in saver.take_completed() {
        summary.saved(&s, true, &progress);
    }
    progress.finish();
    summary.staging = saver.staging_stats().map(|st| StagingSummary {
        pool_bytes: st.capacity_bytes,
        allocations: st.allocations,
        staged_bytes: st.bytes,
        copy_seconds: st.copy_seconds,
        copy_gb_s: if st.copy_seconds > 0.0 {
            st.bytes as f64 / 1e9 / st.copy_seconds
        } else {
            0.0
        },
    });
    for w in saver.take_warnings() {
        summary.warnings.push(w);
    }
    summary.uploads = report.map(|r| UploadSummary {
        uploaded: r.uploaded,
        failed: r.failed,
        bytes: r.bytes,
        seconds: r.seconds,
        throughput_mb_s: r.throughput() / 1e6,
        failures: r.failures.iter().map(|f| f.to_string()).collect(),
        remote_latest: r.pointers.clone(),
    });
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.process_peak_rss_bytes = peak_rss_bytes();
    if summary.save_seconds > 0.0 {
        summary.throughput_mb_s = summary.bytes as f64 / 1e6 / summary.save_seconds;
    }
    summary.latest = saver.latest_path().and_then(|l| {
        cairn::resolve_latest(&l)
            .ok()
            .flatten()
            .map(|t| format!("{} -> {}", l.display(), t.display()))
    });
    Ok(summary)
}

impl Summary {
    /// A checkpoint is durable: count it. `behind`: it was written behind training, and the
    /// time it held training was counted when it was staged.
    fn saved(&mut self, s: &SavedCheckpoint, behind: bool, progress: &Progress) {
        self.saves += 1;
        self.bytes += s.bytes;
        self.save_seconds += s.seconds;
        if !behind {
            self.blocked_seconds += s.blocked_seconds;
            self.waited_seconds += s.waited_seconds;
        }
        progress.saved(s);
    }
}

/// The process's peak resident set size so far, where the platform reports it: `VmHWM` of
/// `/proc/self/status`, which belongs to this program's own address space. Not `getrusage`'s
/// `ru_maxrss`: Linux starts it at the forking process's resident size, so a `cairn run` started
/// by a large parent (a test harness, a Python trainer) would report the parent's size.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
}

impl Progress {
    fn new(
        spec: &TrainerSpec,
        start: &cairn::policy::Timestamp,
        interactive: bool,
        run_name: &str,
    ) -> Progress {
        if !interactive || !std::io::stderr().is_terminal() {
            let prefix = if interactive {
                String::new()
            } else {
                format!("[{run_name}] ")
            };
            return Progress { bar: None, prefix };
        }
        let total = match spec.max_duration.unit {
            cairn::policy::CountUnit::Epoch => {
                spec.max_duration.value as u64 * spec.batches_per_epoch
            }
            cairn::policy::CountUnit::Batch => spec.max_duration.value as u64,
            _ => 0,
        };
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} batches  {msg}",
            )
            .expect("static template"),
        );
        bar.set_position(start.batch);
        Progress {
            bar: Some(bar),
            prefix: String::new(),
        }
    }

    fn batch(&self, batch: u64, loss: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(batch);
            bar.set_message(format!("loss {loss:.4}"));
        }
    }

    fn saved(&self, s: &SavedCheckpoint) {
        let (bytes, seconds) = (s.bytes as f64 / 1e6, s.seconds);
        self.line(format!(
            "{prefix}saved {} at {} ({bytes:.1} MB in {seconds:.2} s, {:.0} MB/s; training blocked {:.3} s)",
            s.path.display(),
            s.event,
            bytes / seconds.max(1e-9),
            s.blocked_seconds,
            prefix = self.prefix
        ));
    }

    fn staged(&self, s: &cairn::StagedCheckpoint) {
        self.line(format!(
            "{prefix}staged {} at {} ({:.1} MB copied in {:.3} s; training blocked {:.3} s, of which {:.3} s waiting for the previous save); writing it behind training",
            s.path.display(),
            s.event,
            s.staged_bytes as f64 / 1e6,
            s.copy_seconds,
            s.blocked_seconds,
            s.waited_seconds,
            prefix = self.prefix
        ));
    }

    fn line(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn warn(&self, w: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("warning: {w}")),
            None => eprintln!("{}warning: {w}", self.prefix),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, s)?;
        writeln!(out)?;
        return Ok(());
    }
    let rank = match (s.sharded, s.rank) {
        (true, r) => Some((
            "rank",
            format!("{r} of {} (each rank writes its own shard)", s.world_size),
        )),
        (false, 0) => None,
        (false, r) => Some(("rank", format!("{r} (only rank 0 writes a checkpoint)"))),
    };
    let rows = [
        ("run", s.run_name.clone()),
        (
            "resumed from",
            s.resumed_from.clone().unwrap_or_else(|| "-".into()),
        ),
        ("batches trained", s.batches.to_string()),
        ("checkpoints saved", s.saves.to_string()),
        ("bytes written", format!("{:.1} MB", s.bytes as f64 / 1e6)),
        ("time saving", format!("{:.2} s", s.save_seconds)),
        (
            "training blocked",
            if s.async_save {
                format!(
                    "{:.2} s by saves (async_save: snapshots, and {:.2} s waiting for the previous save)",
                    s.blocked_seconds, s.waited_seconds
                )
            } else {
                format!("{:.2} s by saves (synchronous)", s.blocked_seconds)
            },
        ),
        (
            "save throughput",
            format!("{:.0} MB/s (durable: fsync + rename)", s.throughput_mb_s),
        ),
        (
            "training time",
            format!(
                "{:.2} s ({:.1} batches/s)",
                s.training_seconds, s.batches_per_second
            ),
        ),
        (
            "wall time",
            format!("{:.2} s (with the wait for uploads)", s.wall_seconds),
        ),
        ("folder", s.folder.clone()),
        ("latest", s.latest.clone().unwrap_or_else(|| "-".into())),
        (
            "process peak RSS",
            s.process_peak_rss_bytes.map_or_else(
                || "-".into(),
                |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
            ),
        ),
    ];
    for (k, v) in rows.into_iter().chain(rank) {
        writeln!(out, "{k:<18} {v}")?;
    }
    for p in &s.policies {
        let count = crate::plural::count;
        let line = format!(
            "{}, {}, {} fuel, {:.1} ms, peak memory {:.1} MiB, {}",
            count(p.calls, "call", "calls"),
            count(p.errors, "error", "errors"),
            p.fuel,
            p.seconds * 1e3,
            p.peak_memory_bytes as f64 / (1 << 20) as f64,
            count(p.reinstantiations, "fresh instance", "fresh instances")
        );
        writeln!(out, "{:<18} {}: {line}", "policy", p.policy)?;
    }
    if let Some(c) = &s.commits {
        writeln!(
            out,
            "{:<18} {} committed, {} not committed; {} ms from the last shard to the manifest (median {} ms)",
            "steps", c.committed, c.failed, c.latency_ms_max, c.latency_ms_median
        )?;
        for f in &c.failures {
            writeln!(out, "{:<18} {f}", "commit failure")?;
        }
    }
    if let Some(u) = &s.uploads {
        let line = format!(
            "{} ok, {} failed, {:.1} MB in {:.2} s ({:.0} MB/s)",
            u.uploaded,
            u.failed,
            u.bytes as f64 / 1e6,
            u.seconds,
            u.throughput_mb_s
        );
        writeln!(out, "{:<18} {line}", "uploads")?;
        for (pointer, key) in &u.remote_latest {
            writeln!(out, "{:<18} {pointer} -> {key}", "remote latest")?;
        }
        for f in &u.failures {
            writeln!(out, "{:<18} {f}", "upload failure")?;
        }
    }
    Ok(())
}
