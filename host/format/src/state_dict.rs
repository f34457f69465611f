//! The state-dict model: the tree a checkpoint holds.
//!
//! A Composer checkpoint is a pickled Python object tree: dicts (plain and `OrderedDict`), lists,
//! tuples, tensors, scalars, strings, bytes, `None`, and a few objects cairn does not model
//! (`datetime.timedelta`, numpy arrays, `TorchVersion`). [`Value`] mirrors that tree closely
//! enough that a checkpoint read by cairn and written back loads in PyTorch as the same objects.
//!
//! Tensors keep their bytes in [`Storage`], a reference-counted buffer: tensors that share a
//! storage in PyTorch share one `Storage` here (compared by identity), so the writer can emit
//! one record for both, exactly as `torch.save` does.
//!
//! A subtree that appears in several places is a [`Shared`] node, held once: the reader makes one
//! where a pickle fetches a memoised container or object again (`BINGET`), and the writer emits
//! it once and then refers to it (`BINPUT`/`BINGET`, as `torch.save` writes an object it has seen
//! before), so a graph never turns into a tree whose size an attacker chooses (the pickle
//! "billion laughs").
//!
//! Trees are at most [`MAX_DEPTH`] containers deep: the reader refuses deeper pickles and the
//! writers deeper trees ([`Value::check_depth`]), so every recursive walk of a tree is bounded;
//! dropping a tree never recurses (see `impl Drop for Value`), whatever built it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use indexmap::IndexMap;

/// A dict key. Python allows any hashable key; checkpoints use strings and (for optimizer
/// state) integers, so those are the two cairn models.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A `str` key.
    Str(String),
    /// An `int` key, e.g. the parameter index in `optimizer.state_dict()['state']`.
    Int(i64),
}

impl fmt::Display for Key {
    /// Python's `str(key)`: the form Composer uses when it flattens paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Str(s) => f.write_str(s),
            Key::Int(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key::Str(s.to_owned())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Str(s)
    }
}

impl From<i64> for Key {
    fn from(i: i64) -> Self {
        Key::Int(i)
    }
}

/// Which Python mapping type a [`Dict`] came from; kept so a round trip preserves it
/// (`model.state_dict()` is an `OrderedDict`, most other levels are plain dicts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DictKind {
    /// `dict`
    #[default]
    Plain,
    /// `collections.OrderedDict`
    Ordered,
}

/// An insertion-ordered mapping, as Python dicts are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dict {
    /// Plain `dict` or `OrderedDict`.
    pub kind: DictKind,
    /// The entries, in insertion order.
    pub entries: IndexMap<Key, Value>,
    /// Instance attributes set by a pickle `BUILD` (e.g. the `_metadata` that
    /// `nn.Module.state_dict()` attaches to its `OrderedDict`), kept so a round trip restores them.
    pub state: Option<Box<Value>>,
}

impl Dict {
    /// An empty plain dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty `OrderedDict`.
    pub fn ordered() -> Self {
        Dict {
            kind: DictKind::Ordered,
            ..Dict::default()
        }
    }

    /// Insert or replace `key`, keeping its position when it already exists.
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> &mut Self {
        self.entries.insert(key.into(), value.into());
        self
    }

    /// Builder form of [`Dict::insert`].
    pub fn with(mut self, key: impl Into<Key>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value under a string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(&Key::Str(key.to_owned()))
    }

    /// Mutable access to the value under a string key.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.entries.get_mut(&Key::Str(key.to_owned()))
    }

    /// Remove a key, keeping the order of the others.
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        self.entries.shift_remove(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the dict has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How many containers (dicts, lists, tuples, objects) may enclose a node: the reader refuses
/// deeper pickles and the writers deeper trees, so a tree cairn writes is one it can read back,
/// and every recursive walk of a tree stays far inside a thread's stack (a level of the pickle
/// reader and writer takes ~5 KiB of stack in a debug build; 100 levels fit in a quarter of a
/// 2 MiB thread stack). Real checkpoints nest about ten levels (a Composer checkpoint's
/// `state/optimizers/Adam/state/0/exp_avg` is six); `Shared` nodes do not count (they cannot
/// nest directly, see [`Shared::new`]). The same bound applies to what a state-dict filter
/// component may answer (`cairn-policy`), so cairn never writes a tree it refuses to read back.
pub const MAX_DEPTH: usize = 100;

/// A tree nested deeper than [`MAX_DEPTH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nests more than {limit} containers deep (a dict, list, tuple or object inside another)")]
pub struct DepthError {
    /// The limit that was exceeded.
    pub limit: usize,
}

/// One node of a checkpoint tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Value {
    /// `dict` / `OrderedDict`
    Dict(Dict),
    /// `list`
    List(Vec<Value>),
    /// `tuple` (a leaf for `ignore_keys`, as in Composer)
    Tuple(Vec<Value>),
    /// `torch.Tensor` or `torch.nn.Parameter`
    Tensor(Tensor),
    /// `int` within 64 bits
    Int(i64),
    /// `int` beyond 64 bits, as little-endian two's-complement bytes (pickle's `LONG1` form)
    BigInt(Vec<u8>),
    /// `float`
    Float(f64),
    /// `bool`
    Bool(bool),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `None`
    #[default]
    None,
    /// An object cairn does not model, kept as the recipe that rebuilds it.
    Object(Box<Object>),
    /// A subtree that appears in more than one place (one Python object referenced twice).
    Shared(Shared),
}

/// A subtree held once and referenced from several places of a tree; clones share it.
///
/// It is how a checkpoint keeps Python's object identity: `torch.save` writes an object it has
/// already written as a reference to the first copy (a pickle memo `BINGET`), and `torch.load`
/// gives back the same object in both places. cairn's reader turns such a reference to a
/// container or object into a `Shared`, its writers emit the subtree once and refer to it, and
/// `cairn inspect` lists it once. Equality compares the contents; [`Shared::same`] compares
/// identity.
#[derive(Clone)]
pub struct Shared(Arc<Value>);

impl Shared {
    /// Share `value`. A `Shared` of a `Shared` is the same handle (no chain of handles, so a
    /// walk descends one container per two steps at most).
    pub fn new(value: Value) -> Shared {
        if let Value::Shared(s) = &value {
            return s.clone();
        }
        Shared(Arc::new(value))
    }

    /// The shared subtree.
    pub fn get(&self) -> &Value {
        &self.0
    }

    /// True when both handles name the same subtree.
    pub fn same(&self, other: &Shared) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A stable identity while the subtree lives, for writers that emit it once.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// A mutable subtree, copied first when another handle still shares it (copy on write:
    /// editing one place of a tree never changes another behind the caller's back).
    pub fn make_mut(&mut self) -> &mut Value {
        Arc::make_mut(&mut self.0)
    }
}

impl fmt::Debug for Shared {
    /// The kind and identity only: printing the contents at every place would be exponential
    /// for a graph that shares shared subtrees (use [`Shared::get`] to print one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Shared({}@{:#x})", self.get().kind(), self.id())
    }
}

impl PartialEq for Shared {
    /// The same subtree, or equal contents.
    fn eq(&self, other: &Shared) -> bool {
        self.same(other) || self.get() == other.get()
    }
}

/// A placeholder left behind when [`Value`]'s drop takes a shared subtree out of its handle.
static EMPTY: LazyLock<Arc<Value>> = LazyLock::new(|| Arc::new(Value::None));

impl Drop for Value {
    /// Without this, dropping a tree recurses once per level, and a tree thousands of levels
    /// deep (built from a hostile filter's answer, say) overflows the stack. The children of a
    /// container are moved to a heap stack instead, so every node is dropped childless.
    fn drop(&mut self) {
        if !has_children(self) {
            return;
        }
        let mut pending = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut v) = pending.pop() {
            take_children(&mut v, &mut pending);
        }
    }
}

/// Does dropping `v` drop other values? (Leaves and empty containers return at once.)
fn has_children(v: &Value) -> bool {
    match v {
        Value::Dict(d) => !d.entries.is_empty() || d.state.is_some(),
        Value::List(items) | Value::Tuple(items) => !items.is_empty(),
        Value::Object(_) | Value::Shared(_) => true,
        _ => false,
    }
}

/// Move the values `v` owns onto `out`, leaving `v` childless.
fn take_children(v: &mut Value, out: &mut Vec<Value>) {
    match v {
        Value::Dict(d) => {
            out.extend(d.entries.drain(..).map(|(_, x)| x));
            if let Some(s) = d.state.take() {
                out.push(*s);
            }
        }
        Value::List(items) | Value::Tuple(items) => out.append(items),
        Value::Object(o) => {
            if let Construct::Reduce(args) | Construct::NewObj(args) = &mut o.construct {
                out.append(args);
            }
            out.extend(o.state.take());
            out.append(&mut o.list_items);
            for (k, x) in o.dict_items.drain(..) {
                out.push(k);
                out.push(x);
            }
        }
        Value::Shared(s) => {
            let arc = std::mem::replace(&mut s.0, EMPTY.clone());
            // Only the last handle owns the subtree; earlier ones just let go.
            out.extend(Arc::into_inner(arc));
        }
        _ => {}
    }
}

impl Value {
    /// The kind names of the CLI contract (`cairn inspect --json`); a shared subtree has the
    /// kind of what it holds.
    pub fn kind(&self) -> &'static str {
        match self.resolved() {
            Value::Dict(_) => "dict",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Tensor(_) => "tensor",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::None => "none",
            Value::Object(_) => "object",
            Value::Shared(_) => unreachable!("resolved() never returns a Shared"),
        }
    }

    /// This node, or the subtree a [`Value::Shared`] holds.
    pub fn resolved(&self) -> &Value {
        match self {
            Value::Shared(s) => s.get(),
            v => v,
        }
    }

    /// The dict inside (through a shared handle too), if this is one.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self.resolved() {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The dict inside, by value, if this is one. (`Value` implements `Drop`, so a pattern
    /// cannot move a dict out of it; this can.) A shared dict is copied if others still
    /// share it.
    pub fn into_dict(mut self) -> Option<Dict> {
        match &mut self {
            Value::Dict(d) => Some(std::mem::take(d)),
            Value::Shared(s) => s.make_mut().as_dict_mut().map(std::mem::take),
            _ => None,
        }
    }

    /// The items of a list, by value, if this is one (see [`Value::into_dict`]).
    pub fn into_list(mut self) -> Option<Vec<Value>> {
        match &mut self {
            Value::List(items) => Some(std::mem::take(items)),
            Value::Shared(s) => match s.make_mut() {
                Value::List(items) => Some(std::mem::take(items)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The dict inside, mutably, if this is one (not through a shared handle: use
    /// [`Shared::make_mut`] to edit a shared subtree deliberately).
    pub fn as_dict_mut(&mut self) -> Option<&mut Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Walk `path` (string keys / list indices) down from this node, through shared subtrees.
    pub fn get_path(&self, path: &[&str]) -> Option<&Value> {
        let mut node = self;
        for seg in path {
            node = match node.resolved() {
                Value::Dict(d) => d.entries.iter().find(|(k, _)| k.to_string() == *seg)?.1,
                Value::List(l) => l.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Call `f` on every tensor of the tree, wherever it sits (dict values and `BUILD` state,
    /// list and tuple items, the arguments, state and items of an [`Object`]), so a caller can
    /// re-point storages, as a save behind training does when it copies them into staging.
    ///
    /// A shared subtree is re-pointed once and stays shared: every handle to it ends up naming
    /// the same new subtree, so the file written from the result keeps the aliasing.
    pub fn for_each_tensor_mut(&mut self, f: &mut dyn FnMut(&mut Tensor)) {
        self.tensors_mut(f, &mut HashMap::new());
    }

    fn tensors_mut(&mut self, f: &mut dyn FnMut(&mut Tensor), done: &mut HashMap<usize, Shared>) {
        match self {
            Value::Shared(s) => {
                let id = s.id();
                if let Some(new) = done.get(&id) {
                    *s = new.clone();
                    return;
                }
                let mut inner = s.get().clone();
                inner.tensors_mut(f, done);
                let new = Shared::new(inner);
                done.insert(id, new.clone());
                *s = new;
            }
            Value::Tensor(t) => f(t),
            Value::Dict(d) => {
                d.entries.values_mut().for_each(|v| v.tensors_mut(f, done));
                if let Some(s) = &mut d.state {
                    s.tensors_mut(f, done);
                }
            }
            Value::List(items) | Value::Tuple(items) => {
                items.iter_mut().for_each(|v| v.tensors_mut(f, done));
            }
            Value::Object(o) => {
                if let Construct::Reduce(args) | Construct::NewObj(args) = &mut o.construct {
                    args.iter_mut().for_each(|v| v.tensors_mut(f, done));
                }
                o.state
                    .iter_mut()
                    .chain(&mut o.list_items)
                    .for_each(|v| v.tensors_mut(f, done));
                for (k, v) in &mut o.dict_items {
                    k.tensors_mut(f, done);
                    v.tensors_mut(f, done);
                }
            }
            Value::Int(_)
            | Value::BigInt(_)
            | Value::Float(_)
            | Value::Bool(_)
            | Value::Str(_)
            | Value::Bytes(_)
            | Value::None => {}
        }
    }

    /// The values this node holds directly, in writing order (dict keys are not values).
    pub fn children(&self) -> Vec<&Value> {
        match self {
            Value::Dict(d) => d.entries.values().chain(d.state.as_deref()).collect(),
            Value::List(items) | Value::Tuple(items) => items.iter().collect(),
            Value::Object(o) => {
                let args = match &o.construct {
                    Construct::Reduce(a) | Construct::NewObj(a) => &a[..],
                    Construct::Global => &[],
                };
                let mut out: Vec<&Value> = args.iter().collect();
                out.extend(o.state.iter());
                out.extend(o.list_items.iter());
                for (k, x) in &o.dict_items {
                    out.push(k);
                    out.push(x);
                }
                out
            }
            Value::Shared(s) => vec![s.get()],
            _ => Vec::new(),
        }
    }

    /// How many containers deep the tree is: 0 for a leaf or an empty container, else one
    /// more than its deepest child; a shared handle adds nothing. Computed without recursion
    /// and visiting each shared subtree once, so it is linear in the size of the graph.
    pub fn depth(&self) -> usize {
        let mut memo: HashMap<usize, usize> = HashMap::new();
        // Post-order over (node, children-visited?) with an explicit stack.
        let mut stack: Vec<(&Value, bool)> = vec![(self, false)];
        let mut results: Vec<usize> = Vec::new();
        while let Some((v, expanded)) = stack.pop() {
            if let Value::Shared(s) = v
                && let Some(&d) = memo.get(&s.id())
            {
                results.push(d);
                continue;
            }
            let children = v.children();
            if !expanded {
                stack.push((v, true));
                for c in children.iter().rev() {
                    stack.push((c, false));
                }
                continue;
            }
            let deepest = (0..children.len())
                .map(|_| results.pop().unwrap_or(0))
                .max();
            let d = match (v, deepest) {
                (Value::Shared(s), d) => {
                    let d = d.unwrap_or(0);
                    memo.insert(s.id(), d);
                    d
                }
                (_, Some(d)) => d + 1,
                (_, None) => 0,
            };
            results.push(d);
        }
        results.pop().unwrap_or(0)
    }

    /// `Ok` when the tree nests at most `limit` containers deep (see [`Value::depth`]); a
    /// writer checks this first so its own recursion is bounded.
    pub fn check_depth(&self, limit: usize) -> Result<(), DepthError> {
        if self.depth() <= limit {
            Ok(())
        } else {
            Err(DepthError { limit })
        }
    }
}

impl From<Shared> for Value {
    fn from(s: Shared) -> Self {
        Value::Shared(s)
    }
}

impl From<Dict> for Value {
    fn from(d: Dict) -> Self {
        Value::Dict(d)
    }
}
impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

/// The element types cairn reads and writes; the names are torch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.float64`
    F64,
    /// `torch.float32`
    F32,
    /// `torch.float16`
    F16,
    /// `torch.bfloat16`
    BF16,
    /// `torch.int64`
    I64,
    /// `torch.int32`
    I32,
    /// `torch.int16`
    I16,
    /// `torch.int8`
    I8,
    /// `torch.uint8`
    U8,
    /// `torch.bool`
    Bool,
}

impl DType {
    /// Every dtype, for tables and tests.
    pub const ALL: [DType; 10] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// torch's name without the `torch.` prefix (`float32`), as `cairn inspect` prints it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// Parse a name printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor's bytes. Clones share the buffer; identity (not content) decides whether two
/// tensors share a storage, as it does in PyTorch.
#[derive(Clone, Debug)]
pub struct Storage(Arc<StorageInner>);

#[derive(Debug)]
struct StorageInner {
    dtype: DType,
    bytes: Bytes,
}

impl Storage {
    /// A storage over `bytes` (little-endian elements of `dtype`). `bytes` may be a `Vec`, a
    /// memory map or any other owner: no copy is made.
    pub fn new(dtype: DType, bytes: impl Into<Bytes>) -> Self {
        Storage(Arc::new(StorageInner {
            dtype,
            bytes: bytes.into(),
        }))
    }

    /// Element type of the storage.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.bytes.len() / self.0.dtype.size()
    }

    /// True when both handles name the same buffer.
    pub fn same(&self, other: &Storage) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A stable identity for deduplicating storages while writing.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl PartialEq for Storage {
    /// Equal content, whether or not shared: what a round-trip test wants to compare.
    fn eq(&self, other: &Self) -> bool {
        self.same(other) || (self.dtype() == other.dtype() && self.bytes() == other.bytes())
    }
}

/// A tensor: a view (shape, stride, offset, in elements) into a [`Storage`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The storage the view reads.
    pub storage: Storage,
    /// Offset of the first element, in elements.
    pub storage_offset: u64,
    /// Size of each dimension.
    pub shape: Vec<u64>,
    /// Step between elements of each dimension, in elements.
    pub stride: Vec<u64>,
    /// `requires_grad` as pickled.
    pub requires_grad: bool,
    /// True for a `torch.nn.Parameter` (rebuilt through `_rebuild_parameter`).
    pub parameter: bool,
}

impl Tensor {
    /// A contiguous tensor that owns a fresh storage.
    pub fn from_bytes(dtype: DType, shape: Vec<u64>, bytes: impl Into<Bytes>) -> Self {
        let stride = contiguous_stride(&shape);
        Tensor {
            storage: Storage::new(dtype, bytes),
            storage_offset: 0,
            shape,
            stride,
            requires_grad: false,
            parameter: false,
        }
    }

    /// A contiguous float32 tensor from values.
    pub fn from_f32(shape: Vec<u64>, values: &[f32]) -> Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(DType::F32, shape, bytes)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// Number of elements of the view.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of the view (`numel × element size`), as `cairn inspect` reports it.
    pub fn nbytes(&self) -> u64 {
        self.numel() * self.dtype().size() as u64
    }

    /// True when the view is dense and row-major over its storage from its offset.
    pub fn is_contiguous(&self) -> bool {
        self.stride == contiguous_stride(&self.shape)
    }

    /// The bytes of a contiguous view, without copying; `None` for strided views or views
    /// that run past the end of their storage.
    pub fn contiguous_bytes(&self) -> Option<Bytes> {
        if !self.is_contiguous() {
            return None;
        }
        let size = self.dtype().size() as u64;
        let start = self.storage_offset.checked_mul(size)?;
        let end = start.checked_add(self.nbytes())?;
        let bytes = self.storage.bytes();
        (end <= bytes.len() as u64).then(|| bytes.slice(start as usize..end as usize))
    }
}

/// Row-major strides for `shape`, in elements.
pub fn contiguous_stride(shape: &[u64]) -> Vec<u64> {
    let mut stride = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1].max(1);
    }
    stride
}

/// A Python object cairn does not model, kept as the pickle recipe that rebuilds it, so a
/// checkpoint written back rebuilds the same object (`datetime.timedelta(days, seconds, us)`,
/// `numpy.core.multiarray._reconstruct(...)` + state, `TorchVersion('2.5.1')`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Module of the callable or class (`GLOBAL` first half), e.g. `datetime`.
    pub module: String,
    /// Its name (`GLOBAL` second half), e.g. `timedelta`.
    pub name: String,
    /// How the global was used.
    pub construct: Construct,
    /// The argument of a `BUILD` applied afterwards (`__setstate__` / `__dict__` update).
    pub state: Option<Value>,
    /// Items appended with `APPEND(S)` after construction (list subclasses).
    pub list_items: Vec<Value>,
    /// Items set with `SETITEM(S)` after construction (dict subclasses).
    pub dict_items: Vec<(Value, Value)>,
}

/// How an [`Object`]'s global is turned into the object.
#[derive(Clone, Debug, PartialEq)]
pub enum Construct {
    /// The global itself is the value (a class or function reference).
    Global,
    /// `REDUCE`: the global called with this argument tuple.
    Reduce(Vec<Value>),
    /// `NEWOBJ`: `cls.__new__(cls, *args)`.
    NewObj(Vec<Value>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_strides_are_row_major() {
        assert_eq!(contiguous_stride(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_stride(&[]), Vec::<u64>::new());
        assert_eq!(contiguous_stride(&[5]), vec![1]);
    }

    #[test]
    fn storages_compare_by_identity_for_sharing_and_content_for_equality() {
        let a = Storage::new(DType::F32, vec![0u8; 8]);
        let b = Storage::new(DType::F32, vec![0u8; 8]);
        assert!(!a.same(&b));
        assert_eq!(a, b);
        assert!(a.same(&a.clone()));
        assert_eq!(a.numel(), 2);
    }

    #[test]
    fn contiguous_bytes_respects_offset_and_rejects_overruns() {
        let mut t = Tensor::from_f32(vec![2], &[1.0, 2.0]);
        assert_eq!(t.contiguous_bytes().unwrap().len(), 8);
        t.storage_offset = 1;
        assert!(t.contiguous_bytes().is_none());
        t.shape = vec![1];
        t.stride = vec![1];
        assert_eq!(&t.contiguous_bytes().unwrap()[..], &2.0f32.to_le_bytes());
    }

    #[test]
    fn every_tensor_is_visited_wherever_it_sits() {
        let t = || Value::Tensor(Tensor::from_f32(vec![1], &[1.0]));
        let object = Object {
            module: "m".into(),
            name: "n".into(),
            construct: Construct::Reduce(vec![t()]),
            state: Some(t()),
            list_items: vec![t()],
            dict_items: vec![(Value::from("k"), t())],
        };
        let mut dict = Dict::new().with("a", t());
        dict.state = Some(Box::new(t()));
        let mut tree = Value::List(vec![
            Value::Dict(dict),
            Value::Tuple(vec![t(), Value::Int(3)]),
            Value::Object(Box::new(object)),
        ]);
        let mut seen = 0;
        tree.for_each_tensor_mut(&mut |t| {
            t.requires_grad = true;
            seen += 1;
        });
        assert_eq!(seen, 7);
        let mut all = true;
        crate::count_tensors(&tree, &mut |t| all &= t.requires_grad);
        assert!(all);
    }

    #[test]
    fn paths_walk_dict_keys_and_list_indices() {
        let v = Value::Dict(
            Dict::new()
                .with("a", Value::List(vec![Value::Int(1), Value::Int(2)]))
                .with(7, "seven"),
        );
        assert_eq!(v.get_path(&["a", "1"]), Some(&Value::Int(2)));
        assert_eq!(v.get_path(&["7"]), Some(&Value::from("seven")));
        assert_eq!(v.get_path(&["b"]), None);
    }
}
