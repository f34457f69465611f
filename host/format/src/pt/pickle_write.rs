//! Pickle writer for `data.pkl`: protocol 2, restricted to the opcodes and globals that
//! `torch.load(weights_only=True)` accepts (reference checkpoint-io.md §5), so a file cairn
//! writes loads in the strictest mode PyTorch has.
//!
//! Tensors become `torch._utils._rebuild_tensor_v2` calls whose storage is a `BINPERSID`
//! reference `('storage', torch.<T>Storage, key, 'cpu', numel)`; the storages themselves are
//! collected (one per distinct buffer, in first-seen order) for the caller to write as records.
//! The memo is used only for [`Shared`] subtrees, as `torch.save` uses it for an object it has
//! already written: the first occurrence is followed by `BINPUT`, every later one is a
//! `BINGET`, so a value referenced a thousand times is written once and `torch.load` gives back
//! one object (both opcodes are on the weights-only unpickler's list).

use std::collections::HashMap;

use crate::state_dict::{
    Construct, DType, DepthError, Dict, DictKind, Key, MAX_DEPTH, Object, Shared, Storage, Tensor,
    Value,
};

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const GLOBAL: u8 = b'c';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const NEWOBJ: u8 = 0x81;
const BUILD: u8 = b'b';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const EMPTY_TUPLE: u8 = b')';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';

/// Items per `APPENDS`/`SETITEMS` batch, as CPython's pickler does.
const BATCH: usize = 1000;

/// A tree the pickle writer refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// A tensor view does not fit its storage.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The tree nests deeper than a reader would accept.
    #[error("the tree {0}, more than cairn and its readers accept")]
    Depth(#[from] DepthError),
}

/// A tensor whose view does not fit its storage (it would fail to load in torch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tensor '{path}' ({dtype}, shape {shape:?}, offset {offset}) reaches past the end of its {numel}-element storage"
)]
pub struct ViewError {
    /// Path of the tensor in the tree.
    pub path: String,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its storage offset.
    pub offset: u64,
    /// Elements in the storage.
    pub numel: usize,
}

/// The pickle and the storages it references, in key order (`data/0`, `data/1`, ...).
pub struct Pickled {
    /// `data.pkl` bytes.
    pub bytes: Vec<u8>,
    /// Storages by key.
    pub storages: Vec<Storage>,
}

/// Pickle `tree` as `torch.save` would. Trees deeper than [`MAX_DEPTH`] are refused before a
/// byte is written (the writer recurses once per level).
pub fn pickle(tree: &Value) -> Result<Pickled, WriteError> {
    tree.check_depth(MAX_DEPTH)?;
    let mut w = Writer::default();
    w.out.extend_from_slice(&[PROTO, 2]);
    w.value(tree)?;
    w.out.push(STOP);
    Ok(Pickled {
        bytes: w.out,
        storages: w.storages,
    })
}

/// torch's legacy storage class for a dtype; `torch.load` maps it back to the dtype.
pub fn storage_class(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "DoubleStorage",
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
    }
}

#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    storages: Vec<Storage>,
    keys: HashMap<usize, usize>,
    path: Vec<String>,
    /// Memo index of every shared subtree already written, by identity.
    memo: HashMap<usize, u32>,
}

impl Writer {
    fn value(&mut self, v: &Value) -> Result<(), ViewError> {
        match v {
            Value::Dict(d) => self.dict(d)?,
            Value::List(items) => {
                self.out.push(EMPTY_LIST);
                self.batched(items.iter().enumerate(), APPENDS, |w, (i, item)| {
                    w.child(i.to_string(), item)
                })?;
            }
            Value::Tuple(items) => self.tuple(items)?,
            Value::Tensor(t) => self.tensor(t)?,
            Value::Int(i) => self.int(*i),
            Value::BigInt(b) => self.long(b),
            Value::Float(x) => {
                self.out.push(BINFLOAT);
                self.out.extend_from_slice(&x.to_be_bytes());
            }
            Value::Bool(b) => self.out.push(if *b { NEWTRUE } else { NEWFALSE }),
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => self.bytes(b),
            Value::None => self.out.push(NONE),
            Value::Object(o) => self.object(o)?,
            Value::Shared(s) => self.shared(s)?,
        }
        Ok(())
    }

    /// The first time: the subtree, then `BINPUT`; afterwards `BINGET` of that memo entry.
    fn shared(&mut self, s: &Shared) -> Result<(), ViewError> {
        if let Some(&index) = self.memo.get(&s.id()) {
            self.memo_op(BINGET, LONG_BINGET, index);
            return Ok(());
        }
        self.value(s.get())?;
        let index = self.memo.len() as u32;
        self.memo.insert(s.id(), index);
        self.memo_op(BINPUT, LONG_BINPUT, index);
        Ok(())
    }

    fn memo_op(&mut self, short: u8, long: u8, index: u32) {
        match u8::try_from(index) {
            Ok(i) => self.out.extend_from_slice(&[short, i]),
            Err(_) => {
                self.out.push(long);
                self.out.extend_from_slice(&index.to_le_bytes());
            }
        }
    }

    fn child(&mut self, seg: String, v: &Value) -> Result<(), ViewError> {
        self.path.push(seg);
        let r = self.value(v);
        self.path.pop();
        r
    }

    /// Emit items in `MARK ... op` batches; `each` writes one item.
    fn batched<I, T>(
        &mut self,
        items: I,
        op: u8,
        mut each: impl FnMut(&mut Self, T) -> Result<(), ViewError>,
    ) -> Result<(), ViewError>
    where
        I: Iterator<Item = T>,
    {
        let mut items = items.peekable();
        while items.peek().is_some() {
            self.out.push(MARK);
            for item in items.by_ref().take(BATCH) {
                each(self, item)?;
            }
            self.out.push(op);
        }
        Ok(())
    }

    fn dict(&mut self, d: &Dict) -> Result<(), ViewError> {
        match d.kind {
            DictKind::Plain => self.out.push(EMPTY_DICT),
            DictKind::Ordered => {
                self.global("collections", "OrderedDict");
                self.out.extend_from_slice(&[EMPTY_TUPLE, REDUCE]);
            }
        }
        self.batched(d.entries.iter(), SETITEMS, |w, (k, v)| {
            w.key(k);
            w.child(k.to_string(), v)
        })?;
        if let Some(state) = &d.state {
            self.value(state)?;
            self.out.push(BUILD);
        }
        Ok(())
    }

    fn key(&mut self, k: &Key) {
        match k {
            Key::Str(s) => self.str(s),
            Key::Int(i) => self.int(*i),
        }
    }

    fn tuple(&mut self, items: &[Value]) -> Result<(), ViewError> {
        let op = match items.len() {
            0 => EMPTY_TUPLE,
            1 => TUPLE1,
            2 => TUPLE2,
            3 => TUPLE3,
            _ => {
                self.out.push(MARK);
                TUPLE
            }
        };
        for (i, item) in items.iter().enumerate() {
            self.child(i.to_string(), item)?;
        }
        self.out.push(op);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(GLOBAL);
        for part in [module, name] {
            self.out.extend_from_slice(part.as_bytes());
            self.out.push(b'\n');
        }
    }

    fn str(&mut self, s: &str) {
        self.out.push(BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// `bytes` the way protocol 2 pickles them: `_codecs.encode(<latin-1 text>, 'latin1')`.
    fn bytes(&mut self, b: &[u8]) {
        self.global("_codecs", "encode");
        let text: String = b.iter().map(|&c| c as char).collect();
        self.str(&text);
        self.str("latin1");
        self.out.extend_from_slice(&[TUPLE2, REDUCE]);
    }

    fn int(&mut self, i: i64) {
        if (0..=0xFF).contains(&i) {
            self.out.extend_from_slice(&[BININT1, i as u8]);
        } else if (0..=0xFFFF).contains(&i) {
            self.out.push(BININT2);
            self.out.extend_from_slice(&(i as u16).to_le_bytes());
        } else if i32::try_from(i).is_ok() {
            self.out.push(BININT);
            self.out.extend_from_slice(&(i as i32).to_le_bytes());
        } else {
            self.long(&minimal_twos_complement(i));
        }
    }

    fn long(&mut self, le: &[u8]) {
        if le.len() < 256 {
            self.out.extend_from_slice(&[LONG1, le.len() as u8]);
        } else {
            self.out.push(LONG4);
            self.out.extend_from_slice(&(le.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(le);
    }

    fn bool(&mut self, b: bool) {
        self.out.push(if b { NEWTRUE } else { NEWFALSE });
    }

    fn int_tuple(&mut self, items: &[u64]) {
        let values: Vec<Value> = items.iter().map(|&x| Value::Int(x as i64)).collect();
        // Integers cannot fail the view check.
        let _ = self.tuple(&values);
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[EMPTY_TUPLE, REDUCE]);
    }

    fn tensor(&mut self, t: &Tensor) -> Result<(), ViewError> {
        self.check_view(t)?;
        if t.parameter {
            self.global("torch._utils", "_rebuild_parameter");
            self.out.push(MARK);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(MARK);
        self.storage_ref(&t.storage);
        self.int(t.storage_offset as i64);
        self.int_tuple(&t.shape);
        self.int_tuple(&t.stride);
        self.bool(t.requires_grad && !t.parameter);
        self.empty_ordered_dict();
        self.out.extend_from_slice(&[TUPLE, REDUCE]);
        if t.parameter {
            self.bool(t.requires_grad);
            self.empty_ordered_dict();
            self.out.extend_from_slice(&[TUPLE, REDUCE]);
        }
        Ok(())
    }

    fn storage_ref(&mut self, s: &Storage) {
        let next = self.storages.len();
        let key = *self.keys.entry(s.id()).or_insert(next);
        if key == next {
            self.storages.push(s.clone());
        }
        self.out.push(MARK);
        self.str("storage");
        self.global("torch", storage_class(s.dtype()));
        self.str(&key.to_string());
        self.str("cpu");
        self.int(s.numel() as i64);
        self.out.extend_from_slice(&[TUPLE, BINPERSID]);
    }

    fn check_view(&self, t: &Tensor) -> Result<(), ViewError> {
        let numel = t.storage.numel();
        if super::view_fits(t) {
            return Ok(());
        }
        Err(ViewError {
            path: self.path.join("/"),
            dtype: t.dtype(),
            shape: t.shape.clone(),
            offset: t.storage_offset,
            numel,
        })
    }

    fn object(&mut self, o: &Object) -> Result<(), ViewError> {
        self.global(&o.module, &o.name);
        match &o.construct {
            Construct::Global => {}
            Construct::Reduce(args) => {
                self.tuple(args)?;
                self.out.push(REDUCE);
            }
            Construct::NewObj(args) => {
                self.tuple(args)?;
                self.out.push(NEWOBJ);
            }
        }
        self.batched(o.list_items.iter(), APPENDS, |w, item| w.value(item))?;
        self.batched(o.dict_items.iter(), SETITEMS, |w, (k, v)| {
            w.value(k)?;
            w.value(v)
        })?;
        if let Some(state) = &o.state {
            self.value(state)?;
            self.out.push(BUILD);
        }
        Ok(())
    }
}

/// The shortest little-endian two's-complement form of `i` (pickle's `LONG1` payload).
fn minimal_twos_complement(i: i64) -> Vec<u8> {
    let mut bytes = i.to_le_bytes().to_vec();
    while bytes.len() > 1 {
        let last = bytes[bytes.len() - 1];
        let sign_of_prev = bytes[bytes.len() - 2] & 0x80;
        if (last == 0 && sign_of_prev == 0) || (last == 0xFF && sign_of_prev != 0) {
            bytes.pop();
        } else {
            break;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_is_minimal_like_cpython() {
        assert_eq!(minimal_twos_complement(1 << 31), vec![0, 0, 0, 0x80, 0]);
        assert_eq!(
            minimal_twos_complement(-(1 << 31) - 1),
            vec![0xFF, 0xFF, 0xFF, 0x7F, 0xFF]
        );
        assert_eq!(minimal_twos_complement(i64::MAX).len(), 8);
        assert_eq!(minimal_twos_complement(-1), vec![0xFF]);
    }

    #[test]
    fn shared_storages_get_one_key() {
        let t = Tensor::from_f32(vec![2], &[1.0, 2.0]);
        let mut view = t.clone();
        view.shape = vec![1];
        view.stride = vec![1];
        view.storage_offset = 1;
        let other = Tensor::from_f32(vec![1], &[3.0]);
        let tree = Value::List(vec![t.into(), view.into(), other.into()]);
        let p = pickle(&tree).unwrap();
        assert_eq!(p.storages.len(), 2);
    }

    #[test]
    fn out_of_bounds_views_are_refused() {
        let mut t = Tensor::from_f32(vec![2], &[1.0, 2.0]);
        t.storage_offset = 1;
        let tree = Value::Dict(Dict::new().with("w", t));
        let Err(WriteError::View(err)) = pickle(&tree) else {
            panic!()
        };
        assert_eq!(err.path, "w");
    }

    #[test]
    fn only_weights_only_opcodes_are_used_for_strings() {
        let p = pickle(&Value::from("héllo")).unwrap();
        assert_eq!(p.bytes[2], BINUNICODE);
        assert_eq!(*p.bytes.last().unwrap(), STOP);
    }
}
