//! `cairn-bench save`: how fast cairn writes a durable `.pt`, measured against the disk (`dd`)
//! and against `torch.save`, interleaved in one run so the ~3x run-to-run noise of this kind
//! of machine affects all three alike.
//!
//! The state mirrors `shared/bench/peer/torch_save_bench.py`: fp32 weights in 4M-element
//! tensors plus Adam `exp_avg`/`exp_avg_sq` of the same shapes (Gaussian values, so neither the
//! disk nor a compressor can shortcut zeros) and a few scalars.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};

use cairn::format::{CheckpointFormat, DType, Dict, Tensor, Value, write_checkpoint};
use cairn_cli::train::SplitMix;

/// Arguments of `cairn bench save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Model parameters (fp32); the state holds three times as many floats.
    #[arg(long, default_value_t = 124_000_000)]
    params: u64,
    /// Folder to write into (it must have room for ~3 copies of the state).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Elements per tensor (torch's baseline script always uses 4Mi; with another value the
    /// torch.save comparison is skipped). Small values measure per-tensor overhead.
    #[arg(long, default_value_t = LAYER)]
    layer_elems: u64,
    /// Interleaved repetitions.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// A Python with torch, for the torch.save baseline (default: python3 if it imports torch).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// The peer script timing torch.save [default: host/bench/peer/torch_save_bench.py].
    #[arg(long)]
    torch_script: Option<PathBuf>,
}

const LAYER: u64 = 4 * 1024 * 1024;

/// `n` Gaussian floats × `scale`, as little-endian bytes: values that neither the disk nor a
/// compressor can shortcut.
fn gaussian(rng: &mut SplitMix, n: u64, scale: f32) -> Vec<u8> {
    let mut values = vec![0f32; n as usize];
    rng.fill_normal(&mut values, scale);
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The training state and its tensor bytes.
fn make_state(params: u64, layer: u64) -> (Value, u64) {
    let mut rng = SplitMix(0);
    let mut model = Dict::ordered();
    let mut opt_state = Dict::new();
    let mut left = params;
    let mut i = 0i64;
    while left > 0 {
        let k = left.min(layer.max(1));
        model.insert(
            format!("layer{i}.weight"),
            Tensor::from_bytes(DType::F32, vec![k], gaussian(&mut rng, k, 0.02)),
        );
        let moments = Dict::new()
            .with("step", Tensor::from_f32(vec![], &[10.0]))
            .with(
                "exp_avg",
                Tensor::from_bytes(DType::F32, vec![k], gaussian(&mut rng, k, 1e-3)),
            )
            .with(
                "exp_avg_sq",
                Tensor::from_bytes(DType::F32, vec![k], gaussian(&mut rng, k, 1e-6)),
            );
        opt_state.insert(i, moments);
        left -= k;
        i += 1;
    }
    let groups = Value::List(vec![Value::Dict(
        Dict::new()
            .with("lr", 1e-3)
            .with("betas", Value::Tuple(vec![0.9.into(), 0.999.into()]))
            .with("eps", 1e-8)
            .with("weight_decay", 0.0)
            .with("params", Value::List((0..i).map(Value::Int).collect())),
    )]);
    let opt = Dict::new()
        .with("state", opt_state)
        .with("param_groups", groups);
    let state = Dict::new()
        .with("model", model)
        .with("optimizers", Dict::new().with("Adam", opt))
        .with(
            "timestamp",
            Dict::new().with("epoch", 1i64).with("batch", 42i64),
        );
    let tree = Dict::new().with("state", state).with(
        "rng",
        Value::List(vec![Value::Dict(Dict::new().with("python", 0i64))]),
    );
    (Value::Dict(tree), params * 4 * 3)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        f64::NAN
    } else {
        xs[xs.len() / 2]
    }
}

pub fn run(args: SaveArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("{} cannot be created", args.dir.display()))?;
    eprintln!("building a {}-parameter state ...", args.params);
    let (tree, nbytes) = make_state(args.params, args.layer_elems);
    let gb = nbytes as f64 / 1e9;
    let src = args.dir.join("cairn-bench-dd-src.bin");
    write_dd_source(&src, &tree)?;
    let torch = if args.layer_elems == LAYER {
        find_torch_python(&args)
    } else {
        None
    };
    if torch.is_none() && args.layer_elems != LAYER {
        eprintln!(
            "--layer-elems differs from the torch script's 4Mi; skipping the torch.save baseline"
        );
    } else if torch.is_none() {
        eprintln!(
            "no python with torch found (use --torch-python); skipping the torch.save baseline"
        );
    }
    let (mut dd, mut cairn, mut torch_times) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=args.reps {
        let d = run_dd(&src, &args.dir.join("cairn-bench-dd-out.bin"), nbytes)?;
        let c = run_cairn(&tree, &args.dir.join("cairn-bench.pt"))?;
        let t = match &torch {
            Some(py) => run_torch(py, &args, nbytes)?,
            None => Vec::new(),
        };
        println!(
            "rep {rep}: dd {d:.2} s ({:.2} GB/s)  cairn {c:.2} s ({:.2} GB/s)  torch.save+fsync {}",
            gb / d,
            gb / c,
            t.iter()
                .map(|x| format!("{x:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        dd.push(d);
        cairn.push(c);
        torch_times.extend(t);
    }
    let _ = std::fs::remove_file(&src);
    let (d, c) = (median(&mut dd), median(&mut cairn));
    let tensors = args.params.div_ceil(args.layer_elems.max(1)) * 4;
    println!(
        "state: {gb:.2} GB fp32 (weights + Adam exp_avg/exp_avg_sq), {tensors} tensors, {} reps, dir {}",
        args.reps,
        args.dir.display()
    );
    println!("median dd bs=1M conv=fsync: {d:.2} s = {:.2} GB/s", gb / d);
    println!("median cairn .pt + fsync:   {c:.2} s = {:.2} GB/s", gb / c);
    println!("ratio cairn / dd:           {:.2}x", d / c);
    if !torch_times.is_empty() {
        let t = median(&mut torch_times);
        println!("median torch.save + fsync:  {t:.2} s = {:.2} GB/s", gb / t);
        println!("ratio cairn / torch.save:   {:.2}x", t / c);
    }
    Ok(ExitCode::SUCCESS)
}

/// dd's source: the state's own (random) bytes, so nothing can be deduplicated or skipped.
fn write_dd_source(path: &Path, tree: &Value) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        File::create(path).with_context(|| format!("{} cannot be created", path.display()))?,
    );
    cairn::format::count_tensors(tree, &mut |t| {
        let _ = f.write_all(t.storage.bytes());
    });
    f.flush()?;
    Ok(())
}

fn run_dd(src: &Path, dst: &Path, nbytes: u64) -> anyhow::Result<f64> {
    let count = nbytes.div_ceil(1 << 20);
    let start = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args([
            "bs=1M",
            &format!("count={count}"),
            "conv=fsync",
            "status=none",
        ])
        .status()
        .context("dd could not be started")?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(dst);
    if !status.success() {
        bail!("dd failed with {status}");
    }
    Ok(secs)
}

fn run_cairn(tree: &Value, path: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut file =
        File::create(path).with_context(|| format!("{} cannot be created", path.display()))?;
    write_checkpoint(path, CheckpointFormat::Pt, tree, &mut file)?;
    file.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    Ok(secs)
}

/// The peer script that times `torch.save` (shipped beside this benchmark).
fn torch_script(args: &SaveArgs) -> PathBuf {
    args.torch_script
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/torch_save_bench.py"))
}

fn find_torch_python(args: &SaveArgs) -> Option<PathBuf> {
    let script = torch_script(args);
    if !script.exists() {
        eprintln!("{} not found", script.display());
        return None;
    }
    let candidates = args
        .torch_python
        .iter()
        .cloned()
        .chain([PathBuf::from("python3")]);
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Run the peer script once (it saves three times) and return its `+fsync` times.
fn run_torch(py: &Path, args: &SaveArgs, _nbytes: u64) -> anyhow::Result<Vec<f64>> {
    let out = Command::new(py)
        .arg(torch_script(args))
        .env("PARAMS", args.params.to_string())
        .env("OUT_DIR", &args.dir)
        .output()
        .context("the torch.save baseline could not be started")?;
    if !out.status.success() {
        bail!(
            "the torch.save baseline failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split("+fsync ")
                .nth(1)?
                .split('s')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect())
}
