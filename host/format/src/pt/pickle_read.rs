//! A pickle reader that *interprets* `data.pkl` instead of executing it.
//!
//! The VM builds a graph of nodes in an arena (so `BINPUT`/`BINGET` aliasing and later
//! `APPENDS`/`SETITEMS` on a memoized container behave as in Python), then turns the graph into
//! a [`Value`] tree. Globals are never imported or called: the few that torch checkpoints rely on
//! (tensor rebuilds, `OrderedDict`, `_codecs.encode`) are recognised; anything else becomes an
//! [`Object`] recipe that the writer re-emits unchanged. Globals that exist to run code
//! (`os.system`, `builtins.eval`, `subprocess.*`, ...) are refused outright.
//!
//! Limits keep hostile input bounded: every allocation is checked against the remaining input,
//! the memo and the arena are capped, and the tree built from the graph has a node budget that
//! counts `BINGET` duplication (a "billion laughs" pickle fails fast) and a depth limit.

use std::collections::HashMap;

use crate::state_dict::{Construct, DType, Dict, DictKind, Key, Object, Storage, Tensor, Value};

/// Bounds for one unpickling.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum nodes in the output tree, counting each duplication by `BINGET`.
    pub max_nodes: usize,
    /// Maximum nesting depth of the output tree.
    pub max_depth: usize,
    /// Maximum bytes of strings, bytes, names and shapes in the output tree, counting each
    /// duplication by `BINGET` (one memoized string fetched a million times is refused).
    pub max_bytes: usize,
}

impl Limits {
    /// Limits scaled to the pickle's size: generous for real checkpoints, small for tiny input.
    pub fn for_input(len: usize) -> Limits {
        Limits {
            max_nodes: (1 << 20).max(len.saturating_mul(4)),
            max_depth: 400,
            max_bytes: (64usize << 20).saturating_add(len.saturating_mul(4)),
        }
    }
}

/// Why a pickle was rejected; `offset` is the byte where the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (data.pkl byte {offset})")]
pub struct PickleError {
    /// Byte offset of the failing opcode.
    pub offset: usize,
    /// What is wrong, in words.
    pub message: String,
}

/// Supplies the storage behind a persistent id `('storage', <type>, key, location, numel)`.
pub trait StorageSource {
    /// The storage for `key`, holding `numel` elements of `dtype`, or why it cannot be had.
    fn storage(&mut self, key: &str, dtype: DType, numel: u64) -> Result<Storage, String>;
}

type Id = usize;

/// Elements a tensor view may address (2^48: a petabyte of bytes). Larger shapes only come
/// from hostile files, e.g. stride-0 views that would expand to exabytes when densified.
const MAX_TENSOR_NUMEL: u64 = 1 << 48;

#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict {
        kind: DictKind,
        items: Vec<(Id, Id)>,
        state: Option<Id>,
    },
    Set {
        frozen: bool,
        items: Vec<Id>,
    },
    Global {
        module: String,
        name: String,
    },
    Object {
        module: String,
        name: String,
        construct: Construct2,
        state: Option<Id>,
        list_items: Vec<Id>,
        dict_items: Vec<(Id, Id)>,
    },
    Storage {
        dtype: DType,
        key: String,
        numel: u64,
    },
    Tensor {
        storage: Id,
        offset: u64,
        shape: Vec<u64>,
        stride: Vec<u64>,
        requires_grad: bool,
        parameter: bool,
    },
}

impl Node {
    /// Bytes a conversion of this node copies (not counting its children).
    fn heap_size(&self) -> usize {
        match self {
            Node::Str(s) => s.len(),
            Node::Bytes(b) | Node::BigInt(b) => b.len(),
            Node::Global { module, name } | Node::Object { module, name, .. } => {
                module.len() + name.len()
            }
            Node::Tensor { shape, stride, .. } => 8 * (shape.len() + stride.len()),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Construct2 {
    Global,
    Reduce(Vec<Id>),
    NewObj(Vec<Id>),
}

/// Unpickle `data` into a tree; storages come from `source`.
pub fn unpickle(data: &[u8], source: &mut dyn StorageSource) -> Result<Value, PickleError> {
    let limits = Limits::for_input(data.len());
    let mut vm = Vm {
        data,
        pos: 0,
        op_at: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        max_arena: limits.max_nodes,
    };
    let root = vm.run()?;
    let mut conv = Converter {
        nodes: &vm.nodes,
        source,
        storages: HashMap::new(),
        budget: limits.max_nodes,
        bytes_left: limits.max_bytes,
        max_depth: limits.max_depth,
        active: vec![false; vm.nodes.len()],
        offset: vm.pos,
    };
    conv.value(root, 0)
}

/// Modules whose globals run code or touch the system; a checkpoint never needs them.
const REFUSED_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "sys",
    "subprocess",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pty",
    "code",
    "codeop",
    "pickle",
    "_pickle",
    "marshal",
    "ctypes",
    "signal",
    "multiprocessing",
    "webbrowser",
    "operator",
    "functools",
    "io",
    "_io",
    "pathlib",
    "tempfile",
    "urllib",
    "http",
    "platform",
    "commands",
    "popen2",
    "asyncio",
    "threading",
    "_thread",
    "inspect",
    "types",
    "torch.hub",
    "torch.jit",
    "torch._ops",
    "torch.ops",
];

/// The only `builtins` that are data constructors rather than code runners.
const SAFE_BUILTINS: &[&str] = &[
    "set",
    "frozenset",
    "complex",
    "bytearray",
    "bytes",
    "slice",
    "range",
    "object",
    "list",
    "dict",
    "tuple",
    "int",
    "float",
    "str",
    "bool",
];

fn refused(module: &str, name: &str) -> bool {
    let top = module.split('.').next().unwrap_or(module);
    if module == "builtins" || module == "__builtin__" {
        return !SAFE_BUILTINS.contains(&name);
    }
    REFUSED_MODULES
        .iter()
        .any(|m| module == *m || top == *m || module.starts_with(&format!("{m}.")))
}

fn dtype_of_storage(class: &str) -> Option<DType> {
    Some(match class {
        "DoubleStorage" => DType::F64,
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    max_arena: usize,
}

type R<T> = Result<T, PickleError>;

impl<'a> Vm<'a> {
    fn err<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.op_at,
            message: message.into(),
        })
    }

    fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return self.err(format!("truncated: needs {n} bytes, {remaining} left"));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u64> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as u64)
    }

    fn u32(&mut self) -> R<u64> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
    }

    fn u64(&mut self) -> R<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("truncated: a text argument has no end of line");
        };
        let s = self.take(n as u64 + 1)?;
        match std::str::from_utf8(&s[..n]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("a text argument is not UTF-8"),
        }
    }

    fn utf8(&mut self, n: u64) -> R<Node> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Node::Str(s.to_owned())),
            Err(_) => self.err("a string is not valid UTF-8"),
        }
    }

    fn push(&mut self, node: Node) -> R<()> {
        if self.nodes.len() >= self.max_arena {
            return self.err("too many objects");
        }
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
        Ok(())
    }

    fn pop(&mut self) -> R<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        Ok(self.stack.pop().unwrap_or_default())
    }

    fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return self.err("MARK missing");
        };
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn memo_put(&mut self, key: u64) -> R<()> {
        let id = self.top()?;
        if self.memo.len() >= self.max_arena && !self.memo.contains_key(&key) {
            return self.err("memo too large");
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> R<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.err(format!("memo entry {key} is read before it is written")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<()> {
        if refused(module, name) {
            return self.err(format!(
                "refers to {module}.{name}, which can run code; cairn does not load such pickles"
            ));
        }
        self.push(Node::Global {
            module: module.to_owned(),
            name: name.to_owned(),
        })
    }

    fn run(&mut self) -> R<Id> {
        loop {
            self.op_at = self.pos;
            let op = self.byte()?;
            if op == b'.' {
                let root = self.pop()?;
                return Ok(root);
            }
            self.step(op)?;
        }
    }

    fn step(&mut self, op: u8) -> R<()> {
        match op {
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    return self.err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                self.u64()?; // FRAME: a length hint only
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let id = self.top()?;
                self.stack.push(id);
            }
            b'N' => self.push(Node::None)?,
            0x88 => self.push(Node::Bool(true))?,
            0x89 => self.push(Node::Bool(false))?,
            b'J' => {
                let b = self.take(4)?;
                self.push(Node::Int(
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                ))?
            }
            b'K' => {
                let v = self.byte()? as i64;
                self.push(Node::Int(v))?
            }
            b'M' => {
                let v = self.u16()? as i64;
                self.push(Node::Int(v))?
            }
            0x8a => {
                let n = self.byte()? as u64;
                let b = self.take(n)?;
                self.push(long_node(b))?
            }
            0x8b => {
                let n = self.u32()?;
                let b = self.take(n)?;
                self.push(long_node(b))?
            }
            b'I' => self.text_int()?,
            b'L' => self.text_long()?,
            b'G' => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                self.push(Node::Float(f64::from_be_bytes(a)))?
            }
            b'F' => {
                let line = self.line()?;
                match line.trim().parse::<f64>() {
                    Ok(x) => self.push(Node::Float(x))?,
                    Err(_) => return self.err(format!("bad float literal '{line}'")),
                }
            }
            b'X' => {
                let n = self.u32()?;
                let s = self.utf8(n)?;
                self.push(s)?
            }
            0x8c => {
                let n = self.byte()? as u64;
                let s = self.utf8(n)?;
                self.push(s)?
            }
            0x8d => {
                let n = self.u64()?;
                let s = self.utf8(n)?;
                self.push(s)?
            }
            b'V' => {
                let line = self.line()?;
                self.push(Node::Str(unescape_raw_unicode(line)))?
            }
            b'T' => {
                let n = self.u32()?;
                let b = self.take(n)?;
                self.push(Node::Str(b.iter().map(|&c| c as char).collect()))?
            }
            b'U' => {
                let n = self.byte()? as u64;
                let b = self.take(n)?;
                self.push(Node::Str(b.iter().map(|&c| c as char).collect()))?
            }
            b'S' => {
                let line = self.line()?;
                self.push(Node::Str(unquote_py2(line)))?
            }
            b'B' => {
                let n = self.u32()?;
                let b = self.take(n)?.to_vec();
                self.push(Node::Bytes(b))?
            }
            b'C' => {
                let n = self.byte()? as u64;
                let b = self.take(n)?.to_vec();
                self.push(Node::Bytes(b))?
            }
            0x8e => {
                let n = self.u64()?;
                let b = self.take(n)?.to_vec();
                self.push(Node::Bytes(b))?
            }
            0x96 => {
                let n = self.u64()?;
                let b = self.take(n)?.to_vec();
                self.push(Node::Bytes(b))?;
                let bytes = self.pop()?;
                self.push(Node::Tuple(vec![bytes]))?;
                let args = self.pop()?;
                self.push(object(
                    "builtins",
                    "bytearray",
                    Construct2::Reduce(vec![args]),
                ))?;
                self.fix_reduce_args()?;
            }
            b')' => self.push(Node::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Node::Tuple(items))?
            }
            b']' => self.push(Node::List(Vec::new()))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Node::List(items))?
            }
            b'}' => self.push(dict_node(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push(dict_node(pairs))?
            }
            0x8f => self.push(Node::Set {
                frozen: false,
                items: Vec::new(),
            })?,
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Node::Set {
                    frozen: true,
                    items,
                })?
            }
            b'a' => {
                let item = self.pop()?;
                let target = self.top()?;
                self.extend(target, vec![item])?
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.extend(target, items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                let target = self.top()?;
                self.set_items(target, pairs)?
            }
            b'p' => {
                let line = self.line()?;
                match line.parse::<u64>() {
                    Ok(k) => self.memo_put(k)?,
                    Err(_) => return self.err("bad PUT index"),
                }
            }
            b'q' => {
                let k = self.byte()? as u64;
                self.memo_put(k)?
            }
            b'r' => {
                let k = self.u32()?;
                self.memo_put(k)?
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.memo_put(k)?
            }
            b'g' => {
                let line = self.line()?;
                match line.parse::<u64>() {
                    Ok(k) => self.memo_get(k)?,
                    Err(_) => return self.err("bad GET index"),
                }
            }
            b'h' => {
                let k = self.byte()? as u64;
                self.memo_get(k)?
            }
            b'j' => {
                let k = self.u32()?;
                self.memo_get(k)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(module, name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.nodes[module], &self.nodes[name]) {
                    (Node::Str(m), Node::Str(n)) => {
                        let (m, n) = (m.clone(), n.clone());
                        self.global(&m, &n)?
                    }
                    _ => return self.err("STACK_GLOBAL needs two strings"),
                }
            }
            b'Q' => self.persistent_load()?,
            b'R' => self.reduce()?,
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let args = self.tuple_items(args)?;
                let (module, name) = self.global_name(cls)?;
                self.push(object(&module, &name, Construct2::NewObj(args)))?
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                let empty =
                    matches!(&self.nodes[kwargs], Node::Dict { items, .. } if items.is_empty());
                if !empty {
                    return self.err("NEWOBJ_EX with keyword arguments is not supported");
                }
                let args = self.tuple_items(args)?;
                let (module, name) = self.global_name(cls)?;
                self.push(object(&module, &name, Construct2::NewObj(args)))?
            }
            b'b' => self.build()?,
            b'i' => {
                let module = self.line()?;
                let name = self.line()?;
                if refused(module, name) {
                    return self.err(format!("refers to {module}.{name}, which can run code"));
                }
                let args = self.pop_mark()?;
                self.push(Node::Tuple(args))?;
                let args = self.pop()?;
                self.push(object(module, name, Construct2::Reduce(vec![args])))?;
                self.fix_reduce_args()?;
            }
            _ => return self.err(format!("unsupported pickle opcode 0x{op:02x}")),
        }
        Ok(())
    }

    /// `object()` above stores the args tuple's id; unwrap it into the tuple's items.
    fn fix_reduce_args(&mut self) -> R<()> {
        let id = self.top()?;
        let args = match &self.nodes[id] {
            Node::Object {
                construct: Construct2::Reduce(a),
                ..
            } if a.len() == 1 => a[0],
            _ => return Ok(()),
        };
        let items = self.tuple_items(args)?;
        if let Node::Object { construct, .. } = &mut self.nodes[id] {
            *construct = Construct2::Reduce(items);
        }
        Ok(())
    }

    fn text_int(&mut self) -> R<()> {
        let line = self.line()?;
        let node = match line {
            "00" => Node::Bool(false),
            "01" => Node::Bool(true),
            _ => match line.parse::<i64>() {
                Ok(i) => Node::Int(i),
                Err(_) => return self.err(format!("bad INT literal '{line}'")),
            },
        };
        self.push(node)
    }

    fn text_long(&mut self) -> R<()> {
        let line = self.line()?;
        match line.trim_end_matches('L').parse::<i64>() {
            Ok(i) => self.push(Node::Int(i)),
            Err(_) => self.err(format!("LONG literal '{line}' is out of range")),
        }
    }

    fn pairs(&self, items: Vec<Id>) -> R<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return self.err("odd number of items for a dict");
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn tuple_items(&self, id: Id) -> R<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(items) => Ok(items.clone()),
            _ => self.err("expected an argument tuple"),
        }
    }

    fn global_name(&self, id: Id) -> R<(String, String)> {
        match &self.nodes[id] {
            Node::Global { module, name } => Ok((module.clone(), name.clone())),
            _ => self.err("calls something that is not a global"),
        }
    }

    fn extend(&mut self, target: Id, new: Vec<Id>) -> R<()> {
        match &mut self.nodes[target] {
            Node::List(items) | Node::Set { items, .. } => items.extend(new),
            Node::Object { list_items, .. } => list_items.extend(new),
            _ => return self.err("APPEND to something that is not a list"),
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, new: Vec<(Id, Id)>) -> R<()> {
        match &mut self.nodes[target] {
            Node::Dict { items, .. } => items.extend(new),
            Node::Object { dict_items, .. } => dict_items.extend(new),
            _ => return self.err("SETITEM on something that is not a dict"),
        }
        Ok(())
    }

    fn build(&mut self) -> R<()> {
        let state = self.pop()?;
        let target = self.top()?;
        if let Node::Global { module, name } = &self.nodes[target] {
            let node = object(&module.clone(), &name.clone(), Construct2::Global);
            self.nodes[target] = node;
        }
        match &mut self.nodes[target] {
            Node::Dict { state: s, .. } | Node::Object { state: s, .. } => *s = Some(state),
            _ => return self.err("BUILD on an object that cannot take state"),
        }
        Ok(())
    }

    fn persistent_load(&mut self) -> R<()> {
        let pid = self.pop()?;
        let items = match &self.nodes[pid] {
            Node::Tuple(items) if items.len() == 5 => items.clone(),
            _ => {
                return self
                    .err("persistent id is not a 5-tuple ('storage', type, key, location, numel)");
            }
        };
        let parts: Vec<&Node> = items.iter().map(|&i| &self.nodes[i]).collect();
        let (class, key, numel) = match parts.as_slice() {
            [
                Node::Str(tag),
                Node::Global { module, name },
                Node::Str(key),
                _,
                Node::Int(numel),
            ] if tag == "storage" && module == "torch" => (name.clone(), key.clone(), *numel),
            _ => return self.err("persistent id is not a torch storage reference"),
        };
        let Some(dtype) = dtype_of_storage(&class) else {
            return self.err(format!("unsupported storage type torch.{class}"));
        };
        if numel < 0 {
            return self.err("negative storage size");
        }
        self.push(Node::Storage {
            dtype,
            key,
            numel: numel as u64,
        })
    }

    fn reduce(&mut self) -> R<()> {
        let args = self.pop()?;
        let func = self.pop()?;
        let args = self.tuple_items(args)?;
        let (module, name) = self.global_name(func)?;
        let node = self.apply(&module, &name, args)?;
        self.push(node)
    }

    /// The node a call of `module.name(*args)` stands for.
    fn apply(&self, module: &str, name: &str, args: Vec<Id>) -> R<Node> {
        let known = match (module, name) {
            ("collections", "OrderedDict") if args.is_empty() => Some(Node::Dict {
                kind: DictKind::Ordered,
                items: Vec::new(),
                state: None,
            }),
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Some(self.tensor(&args)?),
            ("torch._utils", "_rebuild_parameter") => self.parameter(&args)?,
            ("torch._tensor", "_rebuild_from_type_v2") => self.rebuild_from_type(&args)?,
            ("_codecs", "encode") => self.codecs_encode(&args),
            ("builtins" | "__builtin__", "bytes") if args.is_empty() => {
                Some(Node::Bytes(Vec::new()))
            }
            _ => None,
        };
        Ok(known.unwrap_or_else(|| object(module, name, Construct2::Reduce(args))))
    }

    fn int_arg(&self, id: Id) -> R<u64> {
        match &self.nodes[id] {
            Node::Int(i) if *i >= 0 => Ok(*i as u64),
            _ => self.err("a tensor size, stride or offset is not a non-negative int"),
        }
    }

    fn ints(&self, id: Id) -> R<Vec<u64>> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => {
                items.iter().map(|&i| self.int_arg(i)).collect()
            }
            _ => self.err("a tensor size or stride is not a tuple"),
        }
    }

    fn tensor(&self, args: &[Id]) -> R<Node> {
        if args.len() < 4 {
            return self.err("_rebuild_tensor needs (storage, offset, size, stride, ...)");
        }
        if !matches!(self.nodes[args[0]], Node::Storage { .. }) {
            return self.err("_rebuild_tensor's first argument is not a storage");
        }
        let requires_grad = matches!(args.get(4).map(|&i| &self.nodes[i]), Some(Node::Bool(true)));
        Ok(Node::Tensor {
            storage: args[0],
            offset: self.int_arg(args[1])?,
            shape: self.ints(args[2])?,
            stride: self.ints(args[3])?,
            requires_grad,
            parameter: false,
        })
    }

    fn parameter(&self, args: &[Id]) -> R<Option<Node>> {
        let Some(Node::Tensor {
            storage,
            offset,
            shape,
            stride,
            ..
        }) = args.first().map(|&i| &self.nodes[i])
        else {
            return Ok(None);
        };
        let requires_grad = matches!(args.get(1).map(|&i| &self.nodes[i]), Some(Node::Bool(true)));
        Ok(Some(Node::Tensor {
            storage: *storage,
            offset: *offset,
            shape: shape.clone(),
            stride: stride.clone(),
            requires_grad,
            parameter: true,
        }))
    }

    /// `_rebuild_from_type_v2(func, cls, args, state)`: a plain tensor with no Python state is
    /// just `func(*args)`; anything richer stays an object.
    fn rebuild_from_type(&self, args: &[Id]) -> R<Option<Node>> {
        let [func, cls, inner, state] = args else {
            return Ok(None);
        };
        let plain_cls = matches!(&self.nodes[*cls], Node::Global { module, name }
            if module == "torch" && name == "Tensor");
        let no_state = match &self.nodes[*state] {
            Node::None => true,
            Node::Dict { items, .. } => items.is_empty(),
            _ => false,
        };
        if !(plain_cls && no_state) {
            return Ok(None);
        }
        let (module, name) = self.global_name(*func)?;
        let inner = self.tuple_items(*inner)?;
        let node = self.apply(&module, &name, inner)?;
        Ok(matches!(node, Node::Tensor { .. }).then_some(node))
    }

    fn codecs_encode(&self, args: &[Id]) -> Option<Node> {
        let [text, encoding] = args else { return None };
        let (Node::Str(text), Node::Str(encoding)) = (&self.nodes[*text], &self.nodes[*encoding])
        else {
            return None;
        };
        if !matches!(encoding.as_str(), "latin1" | "latin-1" | "iso-8859-1") {
            return None;
        }
        let bytes: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(c as u32).ok()).collect();
        bytes.map(Node::Bytes)
    }
}

fn object(module: &str, name: &str, construct: Construct2) -> Node {
    Node::Object {
        module: module.to_owned(),
        name: name.to_owned(),
        construct,
        state: None,
        list_items: Vec::new(),
        dict_items: Vec::new(),
    }
}

fn dict_node(items: Vec<(Id, Id)>) -> Node {
    Node::Dict {
        kind: DictKind::Plain,
        items,
        state: None,
    }
}

/// A `LONG1`/`LONG4` payload: little-endian two's complement, of any (even non-minimal) width.
fn long_node(le: &[u8]) -> Node {
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xFF } else { 0 };
    let mut len = le.len();
    // Drop sign-extension bytes that do not change the value.
    while len > 1 && le[len - 1] == fill && (le[len - 2] & 0x80 != 0) == negative {
        len -= 1;
    }
    if len <= 8 {
        let mut a = [fill; 8];
        a[..len].copy_from_slice(&le[..len]);
        Node::Int(i64::from_le_bytes(a))
    } else {
        Node::BigInt(le[..len].to_vec())
    }
}

/// Protocol 0 `UNICODE`: raw-unicode-escape (`\u` + 4 hex digits, `\U` + 8 hex digits, everything else literal).
fn unescape_raw_unicode(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let width = match tail.as_bytes().get(1) {
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => 0,
        };
        let code = tail
            .get(2..2 + width)
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        match code.and_then(char::from_u32) {
            Some(c) if width > 0 => {
                out.push(c);
                rest = &tail[2 + width..];
            }
            _ => {
                out.push('\\');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Protocol 0 `STRING`: a quoted Python 2 literal; quotes are stripped, escapes kept simple.
fn unquote_py2(s: &str) -> String {
    let t = s.trim();
    let inner = t
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| t.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
        .unwrap_or(t);
    inner.replace("\\'", "'").replace("\\\\", "\\")
}

struct Converter<'n, 's> {
    nodes: &'n [Node],
    source: &'s mut dyn StorageSource,
    storages: HashMap<String, Storage>,
    budget: usize,
    bytes_left: usize,
    max_depth: usize,
    active: Vec<bool>,
    offset: usize,
}

impl Converter<'_, '_> {
    fn err<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.offset,
            message: message.into(),
        })
    }

    fn value(&mut self, id: Id, depth: usize) -> R<Value> {
        if depth > self.max_depth {
            return self.err(format!(
                "objects nest deeper than {} levels",
                self.max_depth
            ));
        }
        if self.budget == 0 {
            return self.err("expands to too many objects (shared references repeated too often)");
        }
        self.budget -= 1;
        let size = self.nodes[id].heap_size();
        if size > self.bytes_left {
            return self.err("expands to too much data (shared strings repeated too often)");
        }
        self.bytes_left -= size;
        if self.active[id] {
            return self.err("contains a reference cycle, which a checkpoint cannot hold");
        }
        self.active[id] = true;
        let v = self.convert(id, depth);
        self.active[id] = false;
        v
    }

    fn values(&mut self, ids: &[Id], depth: usize) -> R<Vec<Value>> {
        ids.iter().map(|&i| self.value(i, depth + 1)).collect()
    }

    fn convert(&mut self, id: Id, depth: usize) -> R<Value> {
        let nodes = self.nodes;
        Ok(match &nodes[id] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::BigInt(b) => Value::BigInt(b.clone()),
            Node::Float(x) => Value::Float(*x),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::List(items) => Value::List(self.values(items, depth)?),
            Node::Tuple(items) => Value::Tuple(self.values(items, depth)?),
            Node::Dict { kind, items, state } => self.dict(*kind, items, *state, depth)?,
            Node::Set { frozen, items } => {
                let items = self.values(items, depth)?;
                let name = if *frozen { "frozenset" } else { "set" };
                Value::Object(Box::new(plain_object(
                    "builtins",
                    name,
                    Construct::Reduce(vec![Value::List(items)]),
                )))
            }
            Node::Global { module, name } => {
                Value::Object(Box::new(plain_object(module, name, Construct::Global)))
            }
            Node::Object {
                module,
                name,
                construct,
                state,
                list_items,
                dict_items,
            } => {
                let construct = match construct {
                    Construct2::Global => Construct::Global,
                    Construct2::Reduce(a) => Construct::Reduce(self.values(a, depth)?),
                    Construct2::NewObj(a) => Construct::NewObj(self.values(a, depth)?),
                };
                let state = state.map(|s| self.value(s, depth + 1)).transpose()?;
                let list_items = self.values(list_items, depth)?;
                let dict_items = dict_items
                    .iter()
                    .map(|(k, v)| Ok((self.value(*k, depth + 1)?, self.value(*v, depth + 1)?)))
                    .collect::<R<Vec<_>>>()?;
                Value::Object(Box::new(Object {
                    module: module.clone(),
                    name: name.clone(),
                    construct,
                    state,
                    list_items,
                    dict_items,
                }))
            }
            Node::Storage { .. } => return self.err("a storage appears outside a tensor"),
            Node::Tensor {
                storage,
                offset,
                shape,
                stride,
                requires_grad,
                parameter,
            } => {
                let storage = self.storage(*storage)?;
                let t = Tensor {
                    storage,
                    storage_offset: *offset,
                    shape: shape.clone(),
                    stride: stride.clone(),
                    requires_grad: *requires_grad,
                    parameter: *parameter,
                };
                let numel = shape.iter().try_fold(1u64, |acc, &n| acc.checked_mul(n));
                if numel.is_none_or(|n| n > MAX_TENSOR_NUMEL) {
                    return self.err(format!(
                        "a tensor of shape {shape:?} has an absurd number of elements"
                    ));
                }
                if !super::view_fits(&t) {
                    return self.err(format!(
                        "a tensor of shape {shape:?} at offset {offset} does not fit its {}-element storage",
                        t.storage.numel()
                    ));
                }
                Value::Tensor(t)
            }
        })
    }

    fn storage(&mut self, id: Id) -> R<Storage> {
        let Node::Storage { dtype, key, numel } = &self.nodes[id] else {
            return self.err("a tensor's storage is not a storage");
        };
        if let Some(s) = self.storages.get(key) {
            if s.dtype() != *dtype {
                return self.err(format!(
                    "storage {key} is used as both {} and {dtype}",
                    s.dtype()
                ));
            }
            return Ok(s.clone());
        }
        let s = match self.source.storage(key, *dtype, *numel) {
            Ok(s) => s,
            Err(msg) => return self.err(msg),
        };
        self.storages.insert(key.clone(), s.clone());
        Ok(s)
    }

    fn dict(
        &mut self,
        kind: DictKind,
        items: &[(Id, Id)],
        state: Option<Id>,
        depth: usize,
    ) -> R<Value> {
        let mut d = Dict {
            kind,
            ..Dict::default()
        };
        let mut odd_keys = false;
        for (k, v) in items {
            let key = match &self.nodes[*k] {
                Node::Str(s) => Key::Str(s.clone()),
                Node::Int(i) => Key::Int(*i),
                _ => {
                    odd_keys = true;
                    break;
                }
            };
            let value = self.value(*v, depth + 1)?;
            d.entries.insert(key, value);
        }
        let state = state.map(|s| self.value(s, depth + 1)).transpose()?;
        if !odd_keys {
            d.state = state.map(Box::new);
            return Ok(Value::Dict(d));
        }
        // Keys cairn's model cannot hold (tuples, floats, ...): keep the mapping as an object
        // so it is written back as the same `dict()` + items.
        let dict_items = items
            .iter()
            .map(|(k, v)| Ok((self.value(*k, depth + 1)?, self.value(*v, depth + 1)?)))
            .collect::<R<Vec<_>>>()?;
        let (module, name) = match kind {
            DictKind::Plain => ("builtins", "dict"),
            DictKind::Ordered => ("collections", "OrderedDict"),
        };
        let mut o = plain_object(module, name, Construct::Reduce(Vec::new()));
        o.dict_items = dict_items;
        o.state = state;
        Ok(Value::Object(Box::new(o)))
    }
}

fn plain_object(module: &str, name: &str, construct: Construct) -> Object {
    Object {
        module: module.to_owned(),
        name: name.to_owned(),
        construct,
        state: None,
        list_items: Vec::new(),
        dict_items: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoStorage;
    impl StorageSource for NoStorage {
        fn storage(&mut self, key: &str, _: DType, _: u64) -> Result<Storage, String> {
            Err(format!("no record for storage {key}"))
        }
    }

    fn load(bytes: &[u8]) -> Result<Value, PickleError> {
        unpickle(bytes, &mut NoStorage)
    }

    #[test]
    fn memoized_list_sees_later_appends() {
        // [l, l] where l = [1] is filled after being memoized.
        let p = b"\x80\x02]q\x00(]q\x01K\x01ah\x01e.";
        // outer = [], put 0, mark, inner=[] put 1, 1, append → inner=[1], get 1, appends
        let v = load(p).unwrap();
        let one = Value::List(vec![Value::Int(1)]);
        assert_eq!(v, Value::List(vec![one.clone(), one]));
    }

    #[test]
    fn os_system_is_refused_without_running() {
        let p = b"cos\nsystem\n(X\x02\x00\x00\x00lstR.";
        let err = load(p).unwrap_err();
        assert!(err.message.contains("os.system"), "{err}");
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(load(p).is_err());
    }

    #[test]
    fn billion_laughs_hits_the_node_budget() {
        let mut p = b"\x80\x02]q\x00".to_vec();
        for i in 0..60u8 {
            p.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        p.push(b'.');
        let err = load(&p).unwrap_err();
        assert!(err.message.contains("too many"), "{err}");
    }

    #[test]
    fn a_big_string_fetched_many_times_hits_the_byte_budget() {
        let mut p = b"\x80\x02]q\x00(X\x00\x00\x10\x00".to_vec();
        p.extend(std::iter::repeat_n(b'a', 1 << 20));
        p.extend_from_slice(b"q\x01");
        for _ in 0..200_000 {
            p.extend_from_slice(b"h\x01");
        }
        p.extend_from_slice(b"e.");
        let err = load(&p).unwrap_err();
        assert!(err.message.contains("too much data"), "{err}");
    }

    #[test]
    fn cycles_are_errors() {
        let p = b"\x80\x02]q\x00h\x00a.";
        assert!(load(p).unwrap_err().message.contains("cycle"));
    }

    #[test]
    fn unknown_globals_become_objects() {
        let p = b"\x80\x02cdatetime\ntimedelta\nK\x01K\x02K\x03\x87R.";
        let Value::Object(o) = load(p).unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.module.as_str(), o.name.as_str()),
            ("datetime", "timedelta")
        );
        assert_eq!(
            o.construct,
            Construct::Reduce(vec![1.into(), 2.into(), 3.into()])
        );
    }

    #[test]
    fn codecs_encode_is_bytes_and_long1_is_int() {
        let p =
            b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00\xc3\xbfaX\x06\x00\x00\x00latin1\x86R.";
        assert_eq!(load(p).unwrap(), Value::Bytes(vec![0xFF, b'a']));
        let p = b"\x80\x02\x8a\x05\x00\x00\x00\x80\x00.";
        assert_eq!(load(p).unwrap(), Value::Int(1 << 31));
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        for p in [
            &b"\x80\x02X\xff\xff\xff\xff"[..],
            b"",
            b"\x80\x02",
            b"\x80\x02\xfe.",
            b"e.",
        ] {
            assert!(load(p).is_err());
        }
    }
}
