//! `cairn-bench policy`: what a policy component costs next to the built-in interval,
//! measured in the same run — per call (with every limit on and off) and at start-up (compile
//! vs compile cache).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;

use cairn::policy::{
    CompileCache, CountUnit, Event, IntervalScheduler, MaxDuration, PolicyHost, PolicySpec, Ranks,
    RunInfo, SandboxConfig, SavePolicy, Time, Timestamp, TrainingState,
};

/// Subcommands of `cairn bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Per-call and start-up cost of save-interval components against the built-in interval.
    Policy {
        /// Save-interval components to measure (e.g. the Rust and the Python every-n).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Calls per measurement round.
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Measurement rounds (the median is reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Metrics in the state at every call (a policy reads them through `training`).
        #[arg(long, default_value_t = 4)]
        metrics: usize,
        /// Also measure fuel alone and the deadline alone, to show which limit costs what.
        #[arg(long)]
        breakdown: bool,
        /// A `KEY=VALUE` of the components' `config` table (repeatable); replaces the default
        /// `n=1000`, for components that take other keys.
        #[arg(long = "policy-config", alias = "config", value_name = "KEY=VALUE", value_parser = cairn_cli::policy_config::parse_pair)]
        config: Vec<(String, String)>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `cairn bench` subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Policy {
            files,
            calls,
            rounds,
            metrics,
            breakdown,
            config,
            json,
        } => {
            let options = Options {
                calls,
                rounds: rounds.max(1),
                metrics,
                breakdown,
                config,
            };
            bench_policy(&files, &options, json)
        }
    }
}

/// The state a trainer would pass: every counter moving, four metrics.
struct Workload {
    stamps: Vec<Timestamp>,
    metrics: Vec<(String, f64)>,
    max: MaxDuration,
}

impl Workload {
    fn new(calls: u64, metrics: usize) -> Workload {
        let mut stamps = Vec::with_capacity(calls as usize + 1);
        let mut ts = Timestamp::default();
        stamps.push(ts);
        for _ in 0..calls {
            ts = ts.to_next_batch(32, 32 * 2048, Duration::from_millis(120));
            stamps.push(ts);
        }
        Workload {
            stamps,
            metrics: ["loss", "accuracy", "lr", "grad_norm"]
                .iter()
                .cycle()
                .take(metrics)
                .enumerate()
                .map(|(i, n)| {
                    (
                        format!("{n}{}", if i < 4 { String::new() } else { i.to_string() }),
                        0.5,
                    )
                })
                .collect(),
            max: MaxDuration {
                value: i64::MAX / 2,
                unit: CountUnit::Batch,
            },
        }
    }

    /// Nanoseconds per `should_save` call: the median of `rounds` rounds.
    fn per_call(&self, policy: &mut dyn SavePolicy, rounds: usize) -> anyhow::Result<f64> {
        let samples = (0..rounds)
            .map(|_| self.round(policy))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(median(samples))
    }

    /// Medians of `a` and `b` and of their per-round ratio, with the rounds interleaved (and
    /// their order alternated) so that a noisy neighbour on the machine hits both alike.
    fn compare(
        &self,
        a: &mut dyn SavePolicy,
        b: &mut dyn SavePolicy,
        rounds: usize,
    ) -> anyhow::Result<(f64, f64, f64)> {
        let (mut xs, mut ys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            let (x, y) = if i % 2 == 0 {
                let x = self.round(a)?;
                (x, self.round(b)?)
            } else {
                let y = self.round(b)?;
                (self.round(a)?, y)
            };
            xs.push(x);
            ys.push(y);
            ratios.push(x / y);
        }
        Ok((median(xs), median(ys), median(ratios)))
    }

    /// Nanoseconds per call over one pass of the workload.
    fn round(&self, policy: &mut dyn SavePolicy) -> anyhow::Result<f64> {
        let start = Instant::now();
        for w in self.stamps.windows(2) {
            let state = TrainingState {
                timestamp: w[1],
                previous_timestamp: Some(w[0]),
                max_duration: self.max,
                dataloader_len: Some(1000),
                run_name: "bench",
                ranks: Ranks::default(),
                metrics: &self.metrics,
            };
            std::hint::black_box(policy.should_save(std::hint::black_box(&state), Event::Batch)?);
        }
        Ok(start.elapsed().as_nanos() as f64 / (self.stamps.len() - 1) as f64)
    }
}

/// One component's figures.
struct Row {
    name: String,
    /// Median ns per call with the default `[sandbox]` limits.
    on: f64,
    /// Median ns per call with every limit off.
    off: f64,
    /// Median of the per-round on/off ratios.
    overhead: f64,
    /// Load with an empty cache, ms.
    cold: f64,
    /// Median load from the cache, ms.
    warm: f64,
    /// With `--breakdown`: each limit alone, as a ratio to none.
    alone: Vec<(&'static str, f64)>,
}

/// The default sandbox with only one kind of limit left on.
fn single_limits() -> [(&'static str, SandboxConfig); 2] {
    let d = SandboxConfig::default();
    let none = SandboxConfig::unlimited();
    [
        (
            "fuel",
            SandboxConfig {
                fuel_per_call: d.fuel_per_call,
                init_fuel: d.init_fuel,
                ..none.clone()
            },
        ),
        (
            "deadline",
            SandboxConfig {
                timeout_ms: d.timeout_ms,
                init_timeout_ms: d.init_timeout_ms,
                ..none
            },
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quiet_host(dir: &std::path::Path) -> PolicyHost {
    PolicyHost::new(CompileCache::new(Some(dir.to_owned()))).with_log(Arc::new(|_: &str| {}))
}

/// What to measure, from the command line.
struct Options {
    calls: u64,
    rounds: usize,
    metrics: usize,
    breakdown: bool,
    config: Vec<(String, String)>,
}

/// `KEY=VALUE` of `--config`.
fn bench_policy(files: &[PathBuf], options: &Options, json: bool) -> anyhow::Result<ExitCode> {
    let Options {
        calls,
        rounds,
        metrics,
        breakdown,
        ..
    } = *options;
    let work = Workload::new(calls, metrics);
    let mut native = IntervalScheduler::new(Time::batches(1000)).expect("valid interval");
    let native_ns = work.per_call(&mut native, rounds)?;
    let mut rows = Vec::new();
    let run = RunInfo {
        run_name: "bench".into(),
        ranks: Ranks::default(),
    };
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spec = if options.config.is_empty() {
            PolicySpec::new(file).with("n", 1000)
        } else {
            options
                .config
                .iter()
                .fold(PolicySpec::new(file), |spec, (k, v)| {
                    spec.with(k, v.as_str())
                })
        };
        let cache_dir =
            std::env::temp_dir().join(format!("cairn-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache_dir);
        // Cold: a new process with an empty cache compiles the component.
        let start = Instant::now();
        let cold_host = quiet_host(&cache_dir);
        cold_host
            .save_policy(&spec, &SandboxConfig::default(), &run)
            .with_context(|| format!("loading {name}"))?;
        let cold = start.elapsed();
        // Warm: a new process (new engine) finds the artifact in the cache.
        let mut warm = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let host = quiet_host(&cache_dir);
            host.save_policy(&spec, &SandboxConfig::default(), &run)?;
            warm.push(ms(start.elapsed()));
        }
        let warm = median(warm);
        let host = quiet_host(&cache_dir);
        let mut limited = host.save_policy(&spec, &SandboxConfig::default(), &run)?;
        let mut unlimited = host.save_policy(&spec, &SandboxConfig::unlimited(), &run)?;
        let (on, off, overhead) = work.compare(&mut limited, &mut unlimited, rounds)?;
        let mut alone = Vec::new();
        if breakdown {
            for (limit, sandbox) in single_limits() {
                let mut p = host.save_policy(&spec, &sandbox, &run)?;
                let (_, _, ratio) = work.compare(&mut p, &mut unlimited, rounds)?;
                alone.push((limit, ratio));
            }
        }
        let _ = std::fs::remove_dir_all(&cache_dir);
        rows.push(Row {
            name,
            on,
            off,
            overhead,
            cold: ms(cold),
            warm,
            alone,
        });
    }
    if json {
        let value = serde_json::json!({
            "calls_per_round": calls,
            "rounds": rounds,
            "native_ns_per_call": native_ns,
            "components": rows.iter().map(|r| serde_json::json!({
                "file": r.name,
                "ns_per_call_limits_on": r.on,
                "ns_per_call_limits_off": r.off,
                "ratio_to_native": r.on / native_ns,
                "limits_overhead": r.overhead,
                "cold_start_ms": r.cold,
                "warm_start_ms": r.warm,
                "single_limit_overhead": r.alone.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "should-save, median of {rounds} interleaved rounds of {calls} calls, full state offered (two timestamps, the duration, {} metrics):",
        work.metrics.len()
    );
    println!(
        "{:<28} {:>14} {:>15} {:>10} {:>12}",
        "policy", "limits on (ns)", "limits off (ns)", "on/off", "vs built-in"
    );
    println!(
        "{:<28} {:>14.1} {:>15} {:>10} {:>12}",
        "built-in 1000ba", native_ns, "-", "-", "1.0x"
    );
    for r in &rows {
        println!(
            "{:<28} {:>14.1} {:>15.1} {:>9.2}x {:>11.1}x",
            r.name,
            r.on,
            r.off,
            r.overhead,
            r.on / native_ns
        );
    }
    for r in rows.iter().filter(|r| !r.alone.is_empty()) {
        let parts: Vec<String> = r
            .alone
            .iter()
            .map(|(k, v)| format!("{k} alone {v:.2}x"))
            .collect();
        println!("  {}: {}", r.name, parts.join(", "));
    }
    println!();
    println!(
        "{:<28} {:>18} {:>18}",
        "start (load+instantiate+init)", "cold: compile (ms)", "warm: cache (ms)"
    );
    for r in &rows {
        println!("{:<28} {:>18.1} {:>18.2}", r.name, r.cold, r.warm);
    }
    Ok(ExitCode::SUCCESS)
}
