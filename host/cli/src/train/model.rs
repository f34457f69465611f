//! The synthetic model `cairn run` trains: fp32 weights plus Adam's two moments with realistic
//! value distributions (weights N(0, 0.02), first moment N(0, 1e-3), second moment U(0, 1e-6)),
//! laid out as Composer lays out a model and its optimizer in a checkpoint.
//!
//! Training is deterministic: each batch applies an Adam update to a window of every tensor, so
//! the state really changes from save to save, and a run resumed from a checkpoint reaches the
//! same final state as an uninterrupted one.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use cairn::Snapshot;
use cairn::format::{DType, Dict, Key, Tensor, Value};

/// Elements per layer (4 MiB of fp32), like the peer benchmark's 4M-element tensors / 4.
const LAYER_ELEMS: usize = 1 << 20;
/// Elements of each tensor touched by one training step.
const WINDOW: usize = 4096;
// Adam's hyper-parameters as Python floats, as torch records them in `param_groups`.
const LR: f64 = 1e-3;
const BETAS: (f64, f64) = (0.9, 0.999);
const EPS: f64 = 1e-8;

/// A tensor's values. A snapshot borrows them without copying, as the Python package hands
/// PyTorch's storages to the saver by pointer; training writes through [`Arc::make_mut`], which
/// would copy only if a snapshot were still alive (the saver drops it, or its staged copy took
/// its place, before the save returns).
type Values = Arc<Vec<f32>>;

/// One parameter tensor and its Adam state.
struct Layer {
    name: String,
    shape: Vec<u64>,
    weight: Values,
    exp_avg: Values,
    exp_avg_sq: Values,
}

/// A model with Adam state, trained by [`SyntheticModel::train_step`].
pub struct SyntheticModel {
    layers: Vec<Layer>,
    step: u64,
    seed: u64,
}

/// splitmix64: a tiny, fast, well-mixed generator; the values only need to look like training
/// state (or, to a disk or compressor, like random data), and reproducibility across platforms
/// matters more than statistical perfection.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Two standard normals (Box–Muller).
    pub fn normal2(&mut self) -> (f32, f32) {
        let u1 = self.uniform().max(f32::MIN_POSITIVE);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f32::consts::TAU * u2;
        (r * t.cos(), r * t.sin())
    }
    /// Fill `out` with N(0, scale²) values.
    pub fn fill_normal(&mut self, out: &mut [f32], scale: f32) {
        for pair in out.chunks_mut(2) {
            let (a, b) = self.normal2();
            pair[0] = a * scale;
            if let Some(x) = pair.get_mut(1) {
                *x = b * scale;
            }
        }
    }
}

impl SyntheticModel {
    /// A model whose weights take `model_mib` MiB (the checkpoint holds about three times that).
    pub fn new(model_mib: f64, seed: u64) -> SyntheticModel {
        let mut left = ((model_mib * (1 << 20) as f64) / 4.0).max(1.0) as usize;
        let mut rng = SplitMix(seed);
        let mut layers = Vec::new();
        while left > 0 {
            let n = left.min(LAYER_ELEMS);
            left -= n;
            let i = layers.len();
            let shape = if n.is_multiple_of(1024) {
                vec![(n / 1024) as u64, 1024]
            } else {
                vec![n as u64]
            };
            let mut weight = vec![0f32; n];
            let mut exp_avg = vec![0f32; n];
            rng.fill_normal(&mut weight, 0.02);
            rng.fill_normal(&mut exp_avg, 1e-3);
            let exp_avg_sq = (0..n).map(|_| rng.uniform() * 1e-6).collect();
            layers.push(Layer {
                name: format!("layers.{i}.weight"),
                shape,
                weight: Arc::new(weight),
                exp_avg: Arc::new(exp_avg),
                exp_avg_sq: Arc::new(exp_avg_sq),
            });
        }
        SyntheticModel {
            layers,
            step: 0,
            seed,
        }
    }

    /// Bytes of the weights.
    pub fn weight_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.weight.len() as u64 * 4).sum()
    }

    /// The byte size of every storage [`SyntheticModel::snapshot`] hands over (for
    /// `reserve_staging`).
    pub fn storage_sizes(&self) -> Vec<u64> {
        self.layers
            .iter()
            .flat_map(|l| {
                let n = l.weight.len() as u64 * 4;
                // weight, Adam's step (a scalar tensor), exp_avg, exp_avg_sq
                [n, 4, n, n]
            })
            .collect()
    }

    /// One optimizer step after `batch`: an Adam update of a window of each tensor with a
    /// gradient derived from (seed, batch), so the same batch always does the same thing.
    pub fn train_step(&mut self, batch: u64) {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (BETAS.0 as f32, BETAS.1 as f32);
        let (lr, eps) = (LR as f32, EPS as f32);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let weight = Arc::make_mut(&mut layer.weight);
            let exp_avg = Arc::make_mut(&mut layer.exp_avg);
            let exp_avg_sq = Arc::make_mut(&mut layer.exp_avg_sq);
            let len = weight.len();
            let mut rng =
                SplitMix(self.seed ^ batch.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ i as u64);
            let start = (batch as usize).wrapping_mul(7919 * WINDOW) % len;
            for k in 0..WINDOW.min(len) {
                let j = (start + k) % len;
                let g = rng.normal2().0 * 1e-2;
                let m = b1 * exp_avg[j] + (1.0 - b1) * g;
                let v = b2 * exp_avg_sq[j] + (1.0 - b2) * g * g;
                exp_avg[j] = m;
                exp_avg_sq[j] = v;
                weight[j] -= lr * (m / c1) / ((v / c2).sqrt() + eps);
            }
        }
    }

    /// The checkpoint state: every tensor, borrowed without a copy (see [`Values`]), plus
    /// Composer's other `state` entries.
    pub fn snapshot(&self, batch_size: u64) -> Snapshot {
        let tensor = |shape: &[u64], v: &Values| {
            Value::Tensor(Tensor::from_bytes(DType::F32, shape.to_vec(), le_bytes(v)))
        };
        let mut model = Dict::ordered();
        let mut adam_state = Dict::new();
        for l in &self.layers {
            model.insert(l.name.as_str(), tensor(&l.shape, &l.weight));
            let step = Tensor::from_f32(vec![], &[self.step as f32]);
            adam_state.insert(
                l.name.as_str(),
                Dict::new()
                    .with("step", step)
                    .with("exp_avg", tensor(&l.shape, &l.exp_avg))
                    .with("exp_avg_sq", tensor(&l.shape, &l.exp_avg_sq)),
            );
        }
        // Composer saves optimizer state through torch's `get_optimizer_state_dict`, which keys
        // it by parameter name rather than by index.
        let params: Vec<Value> = self
            .layers
            .iter()
            .map(|l| Value::from(l.name.as_str()))
            .collect();
        let group = Dict::new()
            .with("lr", LR)
            .with(
                "betas",
                Value::Tuple(vec![Value::Float(BETAS.0), Value::Float(BETAS.1)]),
            )
            .with("eps", EPS)
            .with("weight_decay", 0.0)
            .with("amsgrad", false)
            .with("maximize", false)
            .with("foreach", Value::None)
            .with("capturable", false)
            .with("differentiable", false)
            .with("fused", Value::None)
            .with("params", Value::List(params));
        let adam = Dict::new()
            .with("state", adam_state)
            .with("param_groups", Value::List(vec![Value::Dict(group)]));
        let metadata = Dict::new()
            .with("device", "cpu")
            .with("precision", "fp32")
            .with("world_size", 1i64)
            .with("device_train_microbatch_size", batch_size as i64)
            .with("train_dataloader_batch_size", batch_size as i64);
        let state = Dict::new()
            .with("model", model)
            .with("optimizers", Dict::new().with("Adam", adam))
            .with("schedulers", Dict::new())
            .with("algorithms", Value::List(vec![]))
            .with("scaler", Dict::new())
            .with("rank_zero_seed", self.seed as i64)
            .with(
                "dataset_state",
                Dict::new()
                    .with("train", Value::None)
                    .with("eval", Dict::new()),
            )
            .with("integrations", Dict::new())
            .with("metadata", metadata);
        let rng = Dict::new()
            .with("cairn_seed", self.seed as i64)
            .with("step", self.step as i64);
        Snapshot {
            state,
            rng: Some(Value::List(vec![Value::Dict(rng)])),
        }
    }

    /// Load the weights, the Adam moments and the step count from a checkpoint this model
    /// wrote (`path` names it in errors). Every value is checked before it is used: a tensor of
    /// the wrong dtype or size, or a step count out of range (a filter may have set
    /// `rng/0/step` to anything), is a [`cairn::Error::Resume`] naming the file and the key.
    pub fn restore(&mut self, path: &Path, tree: &Value) -> Result<(), cairn::Error> {
        let bad = |reason: String| cairn::Error::Resume {
            path: path.to_owned(),
            reason,
        };
        let model = tree
            .get_path(&["state", "model"])
            .and_then(Value::as_dict)
            .ok_or_else(|| bad("the checkpoint has no state/model".into()))?;
        let adam = tree
            .get_path(&["state", "optimizers", "Adam", "state"])
            .and_then(Value::as_dict);
        for layer in self.layers.iter_mut() {
            let key = |k: &str| format!("state/model/{k}");
            read_into(
                model.get(&layer.name),
                Arc::make_mut(&mut layer.weight).as_mut_slice(),
                &key(&layer.name),
            )
            .map_err(bad)?;
            if let Some(s) = adam
                .and_then(|a| a.entries.get(&Key::from(layer.name.as_str())))
                .and_then(Value::as_dict)
            {
                let key = |k: &str| format!("state/optimizers/Adam/state/{}/{k}", layer.name);
                read_into(
                    s.get("exp_avg"),
                    Arc::make_mut(&mut layer.exp_avg).as_mut_slice(),
                    &key("exp_avg"),
                )
                .map_err(bad)?;
                read_into(
                    s.get("exp_avg_sq"),
                    Arc::make_mut(&mut layer.exp_avg_sq).as_mut_slice(),
                    &key("exp_avg_sq"),
                )
                .map_err(bad)?;
            }
        }
        if model.len() != self.layers.len() {
            return Err(bad(format!(
                "the checkpoint's model has {} tensors, this run's has {}",
                model.len(),
                self.layers.len()
            )));
        }
        self.step = match tree.get_path(&["rng", "0", "step"]).map(Value::resolved) {
            Some(Value::Int(n)) if (0..=cairn::MAX_COUNTER as i64).contains(n) => *n as u64,
            Some(Value::Int(n)) => {
                return Err(bad(format!(
                    "rng/0/step is {n}, outside 0..={}",
                    cairn::MAX_COUNTER
                )));
            }
            Some(other) => {
                return Err(bad(format!("rng/0/step is a {}, not an int", other.kind())));
            }
            None => self.step,
        };
        Ok(())
    }
}

fn read_into(v: Option<&Value>, out: &mut [f32], key: &str) -> Result<(), String> {
    let Some(Value::Tensor(t)) = v.map(Value::resolved) else {
        return Err(format!("the checkpoint has no tensor at {key}"));
    };
    let bytes = t
        .contiguous_bytes()
        .filter(|b| t.dtype() == DType::F32 && b.len() == out.len() * 4);
    let Some(bytes) = bytes else {
        return Err(format!(
            "{key} does not match this run's model (size or dtype)"
        ));
    };
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

/// The little-endian bytes of shared `f32` values: on a little-endian host the values' own
/// memory, borrowed; elsewhere a converted copy.
fn le_bytes(v: &Values) -> Bytes {
    #[cfg(target_endian = "little")]
    {
        Bytes::from_owner(LeBytes(Arc::clone(v)))
    }
    #[cfg(not(target_endian = "little"))]
    {
        Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }
}

/// `f32` values seen as their bytes (little-endian hosts only).
#[cfg(target_endian = "little")]
struct LeBytes(Values);

#[cfg(target_endian = "little")]
impl AsRef<[u8]> for LeBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `f32` has no padding and every byte of an initialized `f32` is an initialized
        // `u8`; the slice covers exactly the vector's elements, which the `Arc` keeps alive and
        // unchanged (writers go through `Arc::make_mut`) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 4) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_determinism() {
        let a = SyntheticModel::new(9.0, 7);
        assert_eq!(a.weight_bytes(), 9 << 20);
        assert_eq!(a.layers.len(), 3);
        let mut b = SyntheticModel::new(9.0, 7);
        let mut c = SyntheticModel::new(9.0, 7);
        for batch in 1..=5 {
            b.train_step(batch);
            c.train_step(batch);
        }
        assert_eq!(b.layers[2].weight, c.layers[2].weight);
        assert_ne!(a.layers[0].weight, b.layers[0].weight);
    }

    fn first_weight(snapshot: &Snapshot) -> Bytes {
        let tree = Value::Dict(snapshot.state.clone());
        match tree.get_path(&["model", "layers.0.weight"]) {
            Some(Value::Tensor(t)) => t.storage.bytes().clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snapshots_borrow_the_weights_and_never_see_later_steps() {
        let mut m = SyntheticModel::new(1.0, 5);
        let address = m.layers[0].weight.as_ptr() as usize;
        let held = m.snapshot(1);
        let bytes = first_weight(&held);
        assert_eq!(bytes.as_ptr() as usize, address, "no copy");
        let before = bytes.to_vec();
        // A step while a snapshot is alive writes elsewhere: the snapshot does not change.
        m.train_step(1);
        assert_eq!(first_weight(&held).to_vec(), before);
        assert_ne!(m.layers[0].weight.as_ptr() as usize, address);
        drop((held, bytes));
        // Once no snapshot holds them, steps write in place again.
        let address = m.layers[0].weight.as_ptr() as usize;
        m.train_step(2);
        assert_eq!(m.layers[0].weight.as_ptr() as usize, address);
        assert_eq!(
            m.storage_sizes().iter().sum::<u64>(),
            3 * m.weight_bytes() + 4
        );
    }

    #[test]
    fn snapshot_restore_round_trip() {
        let mut a = SyntheticModel::new(1.0, 3);
        a.train_step(1);
        let tree = cairn::build_checkpoint(a.snapshot(4), &Default::default(), "r", &[], false);
        let mut b = SyntheticModel::new(1.0, 99);
        b.restore(Path::new("t.pt"), &tree).unwrap();
        assert_eq!(b.layers[0].exp_avg_sq, a.layers[0].exp_avg_sq);
        assert_eq!(b.step, 1);
        let mut wrong = SyntheticModel::new(2.0, 3);
        let err = wrong
            .restore(Path::new("t.pt"), &tree)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.pt") && err.contains("state/model/"),
            "{err}"
        );
        for step in [Value::Int(-1), Value::Int(i64::MAX), Value::Float(1.0)] {
            let mut bad = tree.clone();
            let rng = bad.as_dict_mut().unwrap().get_mut("rng").unwrap();
            let Value::List(items) = rng else { panic!() };
            items[0].as_dict_mut().unwrap().insert("step", step.clone());
            let err = b.restore(Path::new("t.pt"), &bad).unwrap_err().to_string();
            assert!(err.contains("rng/0/step"), "{step:?}: {err}");
        }
    }
}
