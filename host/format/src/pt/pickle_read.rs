//! A pickle reader that *interprets* `data.pkl` instead of executing it.
//!
//! The VM builds a graph of nodes in an arena (so `BINPUT`/`BINGET` aliasing and later
//! `APPENDS`/`SETITEMS` on a memoized container behave as in Python), then turns the graph into
//! a [`Value`] tree. Globals are never imported or called: the few that torch checkpoints rely on
//! (tensor rebuilds, `OrderedDict`, `_codecs.encode`) are recognised; anything else becomes an
//! [`Object`] recipe that the writer re-emits unchanged. Globals that exist to run code
//! (`os.system`, `builtins.eval`, `subprocess.*`, ...) are refused outright.
//!
//! The work of reading is bounded by the pickle's size, whatever its shape:
//! - every allocation is checked against the remaining input, and the arena holds at most one
//!   node per byte (no opcode makes two);
//! - a container or object that the pickle fetches again from its memo (`BINGET`) is converted
//!   once and becomes a [`Shared`] node in every place it appears, so a "billion laughs" pickle
//!   (each level a list holding the previous one twice) reads as a small graph, not 2^40 nodes;
//! - what is still copied (strings and other scalars fetched again, dict keys) counts against a
//!   node budget and a byte budget proportional to the pickle's length;
//! - nesting is limited to [`MAX_DEPTH`] containers, checked before each recursive step.

use std::collections::HashMap;

use crate::state_dict::{
    Construct, DType, Dict, DictKind, Key, MAX_DEPTH, Object, Shared, Storage, Tensor, Value,
};

/// Bounds for one unpickling, scaled to the pickle's length.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum values in the output tree (a shared subtree counts once per place it appears,
    /// as one node; a copied scalar counts each time).
    pub max_nodes: usize,
    /// Maximum bytes of strings, bytes, keys, names and shapes copied into the output tree,
    /// counting each copy: 8 MiB plus four times the pickle's length (one memoized string
    /// used as a million dict keys, or as the key of 300 nested dicts, is refused).
    pub max_bytes: usize,
}

impl Limits {
    /// Limits scaled to the pickle's size: generous for real checkpoints, small for tiny input.
    ///
    /// The object budget is a million, or one object per eight bytes of pickle if that is
    /// more. `torch.save` output stays inside it (a parameter with its Adam state is ~340
    /// bytes and ~80 objects; a dict entry with its memo opcodes at least 8 bytes; only a
    /// list of over a million small ints or `None`s could exceed it), while a hostile pickle
    /// (one object per byte, or one `BINGET` copy per two) is refused at an eighth of its
    /// length. Memory follows the budget: an arena node is 32 bytes, a stack slot 8, a tree
    /// value 88, so a pickle of `n` bytes takes at most about `16 n` (and 200 MiB for the
    /// million).
    pub fn for_input(len: usize) -> Limits {
        Limits {
            max_nodes: (1 << 20).max(len / 8),
            max_bytes: (8usize << 20).saturating_add(len.saturating_mul(4)),
        }
    }
}

/// What kind of fault stopped the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickleFault {
    /// The pickle is damaged or uses something cairn does not read.
    Damaged,
    /// It refers to something that can run code.
    Refused,
    /// It nests deeper than [`MAX_DEPTH`].
    TooDeep,
    /// It expands past the node or byte budget its length allows.
    TooLarge,
}

/// Why a pickle was rejected; `offset` is the byte where the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (data.pkl byte {offset})")]
pub struct PickleError {
    /// Byte offset of the failing opcode.
    pub offset: usize,
    /// What is wrong, in words.
    pub message: String,
    /// The kind of fault.
    pub fault: PickleFault,
}

/// Supplies the storage behind a persistent id `('storage', <type>, key, location, numel)`.
pub trait StorageSource {
    /// The storage for `key`, holding `numel` elements of `dtype`, or why it cannot be had.
    fn storage(&mut self, key: &str, dtype: DType, numel: u64) -> Result<Storage, String>;
}

type Id = usize;

/// Strings, bytes and ints at least this long are shared rather than copied when referenced
/// again.
const SHARE_BYTES: usize = 1024;

/// Nodes every arena starts with: immutable values pushed by reference, so a pickle of a
/// million `None`s allocates no nodes.
const NONE_ID: Id = 0;
const TRUE_ID: Id = 1;
const FALSE_ID: Id = 2;
const EMPTY_TUPLE_ID: Id = 3;

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
    /// A dict; a `BUILD` state is kept in [`Vm::dict_states`] (rare, and it would double the
    /// size of every node).
    Dict {
        kind: DictKind,
        items: Vec<(Id, Id)>,
    },
    Set {
        frozen: bool,
        items: Vec<Id>,
    },
    // Large, rarer nodes are boxed so the common ones (containers, strings) stay small.
    Global(Box<GlobalNode>),
    Object(Box<ObjectNode>),
    Storage(Box<StorageNode>),
    Tensor(Box<TensorNode>),
}

#[derive(Debug)]
struct GlobalNode {
    module: String,
    name: String,
}

#[derive(Debug)]
struct ObjectNode {
    module: String,
    name: String,
    construct: Construct2,
    state: Option<Id>,
    list_items: Vec<Id>,
    dict_items: Vec<(Id, Id)>,
}

#[derive(Debug)]
struct StorageNode {
    dtype: DType,
    key: String,
    numel: u64,
}

#[derive(Debug)]
struct TensorNode {
    storage: Id,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
    requires_grad: bool,
    parameter: bool,
}

impl Node {
    /// Bytes a conversion of this node copies (not counting its children).
    fn heap_size(&self) -> usize {
        match self {
            Node::Str(s) => s.len(),
            Node::Bytes(b) | Node::BigInt(b) => b.len(),
            Node::Global(g) => g.module.len() + g.name.len(),
            Node::Object(o) => o.module.len() + o.name.len(),
            Node::Tensor(t) => 8 * (t.shape.len() + t.stride.len()),
            _ => 0,
        }
    }

    /// What a second reference shares instead of copying: containers, objects, and strings,
    /// bytes and ints of at least [`SHARE_BYTES`]. Smaller scalars are copied (charged to the
    /// budget), so the small strings `torch.save` memoises (`"cpu"`, repeated names) stay plain
    /// values.
    fn shareable(&self) -> bool {
        match self {
            Node::List(_) | Node::Dict { .. } | Node::Set { .. } | Node::Object(_) => true,
            Node::Tuple(items) => !items.is_empty(),
            Node::Str(_) | Node::Bytes(_) | Node::BigInt(_) => self.heap_size() >= SHARE_BYTES,
            _ => false,
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
        nodes: vec![
            Node::None,
            Node::Bool(true),
            Node::Bool(false),
            Node::Tuple(Vec::new()),
        ],
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        dict_states: HashMap::new(),
        max_arena: limits.max_nodes,
    };
    let root = vm.run()?;
    let references = references(&vm.nodes, &vm.dict_states, root);
    let mut conv = Converter {
        nodes: &vm.nodes,
        dict_states: &vm.dict_states,
        references,
        shared: HashMap::new(),
        source,
        storages: HashMap::new(),
        budget: limits.max_nodes,
        bytes_left: limits.max_bytes,
        active: vec![false; vm.nodes.len()],
        offset: vm.pos,
    };
    let tree = conv.value(root, 0)?;
    // A shared subtree is checked for depth where it is first met; met again deeper, the
    // tree as a whole may still nest too deep. One linear pass over the graph settles it.
    if tree.check_depth(MAX_DEPTH).is_err() {
        return Err(conv.too_deep());
    }
    Ok(tree)
}

/// The values a node holds (its edges in the object graph).
fn edges(node: &Node, id: Id, dict_states: &HashMap<Id, Id>, out: &mut Vec<Id>) {
    match node {
        Node::List(items) | Node::Tuple(items) | Node::Set { items, .. } => {
            out.extend_from_slice(items)
        }
        Node::Dict { items, .. } => {
            out.extend(items.iter().flat_map(|&(k, v)| [k, v]));
            out.extend(dict_states.get(&id));
        }
        Node::Object(o) => {
            if let Construct2::Reduce(a) | Construct2::NewObj(a) = &o.construct {
                out.extend_from_slice(a);
            }
            out.extend(o.state);
            out.extend_from_slice(&o.list_items);
            out.extend(o.dict_items.iter().flat_map(|&(k, v)| [k, v]));
        }
        _ => {}
    }
}

/// How many references each node reachable from `root` has (saturating at 2: only "more than
/// one" matters), found without recursion.
fn references(nodes: &[Node], dict_states: &HashMap<Id, Id>, root: Id) -> Vec<u8> {
    let mut count = vec![0u8; nodes.len()];
    count[root] = 1;
    let mut pending = vec![root];
    let mut children = Vec::new();
    while let Some(id) = pending.pop() {
        children.clear();
        edges(&nodes[id], id, dict_states, &mut children);
        for &c in &children {
            if count[c] == 0 {
                pending.push(c);
            }
            count[c] = count[c].saturating_add(1).min(2);
        }
    }
    count
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
    /// `BUILD` states of dicts, by dict.
    dict_states: HashMap<Id, Id>,
    max_arena: usize,
}

type R<T> = Result<T, PickleError>;

impl<'a> Vm<'a> {
    fn err<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.op_at,
            message: message.into(),
            fault: PickleFault::Damaged,
        })
    }

    fn refuse<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.op_at,
            message: message.into(),
            fault: PickleFault::Refused,
        })
    }

    fn too_large<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.op_at,
            message: message.into(),
            fault: PickleFault::TooLarge,
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
            return self.too_large(format!(
                "holds more than {} objects, more than its length allows",
                self.max_arena
            ));
        }
        self.nodes.push(node);
        self.push_id(self.nodes.len() - 1)
    }

    /// Push an existing node (a singleton, a memo entry, a duplicate) on the stack, which is
    /// held to the same budget as the arena.
    fn push_id(&mut self, id: Id) -> R<()> {
        if self.stack.len() >= self.max_arena {
            return self.too_large(format!(
                "keeps more than {} objects on its stack, more than its length allows",
                self.max_arena
            ));
        }
        self.stack.push(id);
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
            return self.too_large("its memo grows past the objects its length allows");
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> R<()> {
        match self.memo.get(&key) {
            Some(&id) => self.push_id(id),
            None => self.err(format!("memo entry {key} is read before it is written")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<()> {
        if refused(module, name) {
            return self.refuse(format!(
                "refers to {module}.{name}, which can run code; cairn does not load such pickles"
            ));
        }
        self.push(Node::Global(Box::new(GlobalNode {
            module: module.to_owned(),
            name: name.to_owned(),
        })))
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
                self.push_id(id)?;
            }
            b'N' => self.push_id(NONE_ID)?,
            0x88 => self.push_id(TRUE_ID)?,
            0x89 => self.push_id(FALSE_ID)?,
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
            b')' => self.push_id(EMPTY_TUPLE_ID)?,
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
                let empty = matches!(&self.nodes[kwargs], Node::Dict { items, .. } if items.is_empty())
                    && !self.dict_states.contains_key(&kwargs);
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
                    return self.refuse(format!("refers to {module}.{name}, which can run code"));
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
            Node::Object(o) => match &o.construct {
                Construct2::Reduce(a) if a.len() == 1 => a[0],
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        let items = self.tuple_items(args)?;
        if let Node::Object(o) = &mut self.nodes[id] {
            o.construct = Construct2::Reduce(items);
        }
        Ok(())
    }

    fn text_int(&mut self) -> R<()> {
        let line = self.line()?;
        let singleton = match line {
            "00" => Some(FALSE_ID),
            "01" => Some(TRUE_ID),
            _ => None,
        };
        if let Some(id) = singleton {
            return self.push_id(id);
        }
        match line.parse::<i64>() {
            Ok(i) => self.push(Node::Int(i)),
            Err(_) => self.err(format!("bad INT literal '{line}'")),
        }
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
            Node::Global(g) => Ok((g.module.clone(), g.name.clone())),
            _ => self.err("calls something that is not a global"),
        }
    }

    fn extend(&mut self, target: Id, new: Vec<Id>) -> R<()> {
        match &mut self.nodes[target] {
            Node::List(items) | Node::Set { items, .. } => items.extend(new),
            Node::Object(o) => o.list_items.extend(new),
            _ => return self.err("APPEND to something that is not a list"),
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, new: Vec<(Id, Id)>) -> R<()> {
        match &mut self.nodes[target] {
            Node::Dict { items, .. } => items.extend(new),
            Node::Object(o) => o.dict_items.extend(new),
            _ => return self.err("SETITEM on something that is not a dict"),
        }
        Ok(())
    }

    fn build(&mut self) -> R<()> {
        let state = self.pop()?;
        let target = self.top()?;
        if let Node::Global(g) = &self.nodes[target] {
            let node = object(&g.module.clone(), &g.name.clone(), Construct2::Global);
            self.nodes[target] = node;
        }
        match &mut self.nodes[target] {
            Node::Dict { .. } => {
                self.dict_states.insert(target, state);
            }
            Node::Object(o) => o.state = Some(state),
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
                Node::Global(g),
                Node::Str(key),
                _,
                Node::Int(numel),
            ] if tag == "storage" && g.module == "torch" => (g.name.clone(), key.clone(), *numel),
            _ => return self.err("persistent id is not a torch storage reference"),
        };
        let Some(dtype) = dtype_of_storage(&class) else {
            return self.err(format!("unsupported storage type torch.{class}"));
        };
        if numel < 0 {
            return self.err("negative storage size");
        }
        self.push(Node::Storage(Box::new(StorageNode {
            dtype,
            key,
            numel: numel as u64,
        })))
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
        if !matches!(self.nodes[args[0]], Node::Storage(_)) {
            return self.err("_rebuild_tensor's first argument is not a storage");
        }
        let requires_grad = matches!(args.get(4).map(|&i| &self.nodes[i]), Some(Node::Bool(true)));
        Ok(Node::Tensor(Box::new(TensorNode {
            storage: args[0],
            offset: self.int_arg(args[1])?,
            shape: self.ints(args[2])?,
            stride: self.ints(args[3])?,
            requires_grad,
            parameter: false,
        })))
    }

    fn parameter(&self, args: &[Id]) -> R<Option<Node>> {
        let Some(Node::Tensor(t)) = args.first().map(|&i| &self.nodes[i]) else {
            return Ok(None);
        };
        let requires_grad = matches!(args.get(1).map(|&i| &self.nodes[i]), Some(Node::Bool(true)));
        Ok(Some(Node::Tensor(Box::new(TensorNode {
            storage: t.storage,
            offset: t.offset,
            shape: t.shape.clone(),
            stride: t.stride.clone(),
            requires_grad,
            parameter: true,
        }))))
    }

    /// `_rebuild_from_type_v2(func, cls, args, state)`: a plain tensor with no Python state is
    /// just `func(*args)`; anything richer stays an object.
    fn rebuild_from_type(&self, args: &[Id]) -> R<Option<Node>> {
        let [func, cls, inner, state] = args else {
            return Ok(None);
        };
        let plain_cls = matches!(&self.nodes[*cls], Node::Global(g)
            if g.module == "torch" && g.name == "Tensor");
        let no_state = match &self.nodes[*state] {
            Node::None => true,
            Node::Dict { items, .. } => items.is_empty() && !self.dict_states.contains_key(state),
            _ => false,
        };
        if !(plain_cls && no_state) {
            return Ok(None);
        }
        let (module, name) = self.global_name(*func)?;
        let inner = self.tuple_items(*inner)?;
        let node = self.apply(&module, &name, inner)?;
        Ok(matches!(node, Node::Tensor(_)).then_some(node))
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
    Node::Object(Box::new(ObjectNode {
        module: module.to_owned(),
        name: name.to_owned(),
        construct,
        state: None,
        list_items: Vec::new(),
        dict_items: Vec::new(),
    }))
}

fn dict_node(items: Vec<(Id, Id)>) -> Node {
    Node::Dict {
        kind: DictKind::Plain,
        items,
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
    dict_states: &'n HashMap<Id, Id>,
    /// References to each node (saturating at 2).
    references: Vec<u8>,
    /// Shareable nodes referenced more than once, once converted.
    shared: HashMap<Id, Shared>,
    source: &'s mut dyn StorageSource,
    storages: HashMap<String, Storage>,
    budget: usize,
    bytes_left: usize,
    active: Vec<bool>,
    offset: usize,
}

impl Converter<'_, '_> {
    fn fail(&self, fault: PickleFault, message: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.offset,
            message: message.into(),
            fault,
        }
    }

    fn err<T>(&self, message: impl Into<String>) -> R<T> {
        Err(self.fail(PickleFault::Damaged, message))
    }

    fn too_deep(&self) -> PickleError {
        self.fail(
            PickleFault::TooDeep,
            format!("nests deeper than {MAX_DEPTH} levels (dicts, lists, tuples or objects inside each other)"),
        )
    }

    /// Charge `n` bytes copied into the tree against the byte budget.
    fn charge(&mut self, n: usize) -> R<()> {
        if n > self.bytes_left {
            return Err(self.fail(
                PickleFault::TooLarge,
                "expands to too much data for its length (a memoised string or key repeated too often)",
            ));
        }
        self.bytes_left -= n;
        Ok(())
    }

    fn value(&mut self, id: Id, depth: usize) -> R<Value> {
        if depth > MAX_DEPTH {
            return Err(self.too_deep());
        }
        if self.budget == 0 {
            return Err(self.fail(
                PickleFault::TooLarge,
                "expands to too many objects for its length (memoised values repeated too often)",
            ));
        }
        self.budget -= 1;
        if let Some(s) = self.shared.get(&id) {
            return Ok(Value::Shared(s.clone()));
        }
        if self.active[id] {
            return self.err("contains a reference cycle, which a checkpoint cannot hold");
        }
        self.charge(self.nodes[id].heap_size())?;
        self.active[id] = true;
        let v = self.convert(id, depth);
        self.active[id] = false;
        let v = v?;
        if self.references[id] > 1 && self.nodes[id].shareable() {
            let s = Shared::new(v);
            self.shared.insert(id, s.clone());
            return Ok(Value::Shared(s));
        }
        Ok(v)
    }

    fn values(&mut self, ids: &[Id], depth: usize) -> R<Vec<Value>> {
        ids.iter().map(|&i| self.value(i, depth + 1)).collect()
    }

    fn pairs(&mut self, items: &[(Id, Id)], depth: usize) -> R<Vec<(Value, Value)>> {
        items
            .iter()
            .map(|&(k, v)| Ok((self.value(k, depth + 1)?, self.value(v, depth + 1)?)))
            .collect()
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
            Node::Dict { kind, items } => {
                let state = self.dict_states.get(&id).copied();
                self.dict(*kind, items, state, depth)?
            }
            Node::Set { frozen, items } => {
                // `set([...])`: the list sits one level below the set.
                let items = self.values(items, depth + 1)?;
                let name = if *frozen { "frozenset" } else { "set" };
                Value::Object(Box::new(plain_object(
                    "builtins",
                    name,
                    Construct::Reduce(vec![Value::List(items)]),
                )))
            }
            Node::Global(g) => Value::Object(Box::new(plain_object(
                &g.module,
                &g.name,
                Construct::Global,
            ))),
            Node::Object(o) => {
                let construct = match &o.construct {
                    Construct2::Global => Construct::Global,
                    Construct2::Reduce(a) => Construct::Reduce(self.values(a, depth)?),
                    Construct2::NewObj(a) => Construct::NewObj(self.values(a, depth)?),
                };
                let state = o.state.map(|s| self.value(s, depth + 1)).transpose()?;
                let list_items = self.values(&o.list_items, depth)?;
                let dict_items = self.pairs(&o.dict_items, depth)?;
                Value::Object(Box::new(Object {
                    module: o.module.clone(),
                    name: o.name.clone(),
                    construct,
                    state,
                    list_items,
                    dict_items,
                }))
            }
            Node::Storage(_) => return self.err("a storage appears outside a tensor"),
            Node::Tensor(t) => {
                let numel = t.shape.iter().try_fold(1u64, |acc, &n| acc.checked_mul(n));
                if numel.is_none_or(|n| n > MAX_TENSOR_NUMEL) {
                    return self.err(format!(
                        "a tensor of shape {:?} has an absurd number of elements",
                        t.shape
                    ));
                }
                let storage = self.storage(t.storage)?;
                let t = Tensor {
                    storage,
                    storage_offset: t.offset,
                    shape: t.shape.clone(),
                    stride: t.stride.clone(),
                    requires_grad: t.requires_grad,
                    parameter: t.parameter,
                };
                if !super::view_fits(&t) {
                    return self.err(format!(
                        "a tensor of shape {:?} at offset {} does not fit its {}-element storage",
                        t.shape,
                        t.storage_offset,
                        t.storage.numel()
                    ));
                }
                Value::Tensor(t)
            }
        })
    }

    fn storage(&mut self, id: Id) -> R<Storage> {
        let Node::Storage(s) = &self.nodes[id] else {
            return self.err("a tensor's storage is not a storage");
        };
        let (dtype, key, numel) = (s.dtype, &s.key, s.numel);
        if let Some(s) = self.storages.get(key) {
            if s.dtype() != dtype {
                return self.err(format!(
                    "storage {key} is used as both {} and {dtype}",
                    s.dtype()
                ));
            }
            return Ok(s.clone());
        }
        let s = match self.source.storage(key, dtype, numel) {
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
            // A key is copied into every dict that uses it: it counts like any copied string.
            self.charge(self.nodes[*k].heap_size())?;
            let value = self.value(*v, depth + 1)?;
            d.entries.insert(key, value);
        }
        if !odd_keys {
            d.state = state
                .map(|s| self.value(s, depth + 1))
                .transpose()?
                .map(Box::new);
            return Ok(Value::Dict(d));
        }
        // Keys cairn's model cannot hold (tuples, floats, ...): keep the mapping as an object
        // so it is written back as the same `dict()` + items.
        drop(d);
        let dict_items = self.pairs(items, depth)?;
        let state = state.map(|s| self.value(s, depth + 1)).transpose()?;
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
        let Value::List(items) = &v else { panic!() };
        let (Value::Shared(a), Value::Shared(b)) = (&items[0], &items[1]) else {
            panic!("{v:?}")
        };
        assert!(a.same(b), "one list, referenced twice");
        assert_eq!(a.get(), &Value::List(vec![Value::Int(1)]));
    }

    #[test]
    fn os_system_is_refused_without_running() {
        let p = b"cos\nsystem\n(X\x02\x00\x00\x00lstR.";
        let err = load(p).unwrap_err();
        assert!(err.message.contains("os.system"), "{err}");
        assert_eq!(err.fault, PickleFault::Refused);
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(load(p).is_err());
    }

    /// L0 = [], Li = [L(i-1), L(i-1)] (memoised): 2^60 nodes as a tree, 61 as a graph.
    fn laughs(levels: u8) -> Vec<u8> {
        let mut p = b"\x80\x02]q\x00".to_vec();
        for i in 0..levels {
            p.extend_from_slice(&[b'0', b']', b'(', b'h', i, b'h', i, b'e', b'q', i + 1]);
        }
        p.push(b'.');
        p
    }

    #[test]
    fn billion_laughs_reads_as_a_small_shared_graph() {
        let v = load(&laughs(60)).unwrap();
        // The root is memoised but referenced once: a plain list of two handles to one level.
        let Value::List(items) = &v else {
            panic!("{v:?}")
        };
        let (Value::Shared(a), Value::Shared(b)) = (&items[0], &items[1]) else {
            panic!()
        };
        assert!(a.same(b));
        assert_eq!(v.depth(), 60);
    }

    #[test]
    fn small_strings_fetched_again_are_copies_charged_to_the_budget() {
        // A 1000-byte string (below the sharing threshold) fetched 70,000 times: 70 MB of
        // copies from a 141 KB pickle, past the byte budget.
        let mut p = b"\x80\x02X\xe8\x03\x00\x00".to_vec();
        p.extend(std::iter::repeat_n(b'a', 1000));
        p.extend_from_slice(b"q\x00(");
        for _ in 0..70_000 {
            p.extend_from_slice(b"h\x00");
        }
        p.extend_from_slice(b"l.");
        match load(&p) {
            Ok(_) => panic!("70 MB of copies were read"),
            Err(err) => assert_eq!(err.fault, PickleFault::TooLarge, "{err}"),
        }
        // A large string fetched again is shared, not copied.
        let mut p = b"\x80\x02X\x00\x00\x01\x00".to_vec();
        p.extend(std::iter::repeat_n(b'a', 1 << 16));
        p.extend_from_slice(b"q\x00(");
        for _ in 0..70_000 {
            p.extend_from_slice(b"h\x00");
        }
        p.extend_from_slice(b"l.");
        let v = load(&p).map_err(|e| e.to_string()).unwrap();
        let Value::List(items) = &v else { panic!() };
        assert!(matches!(&items[69_999], Value::Shared(s) if s.get().kind() == "str"));
    }

    #[test]
    fn a_shared_subtree_met_again_deeper_counts_its_full_depth() {
        // S = 300 nested lists (memo 0); root = [S, [[...[S]...]] 150 deep]: each place is
        // fine where the reader first meets it, but the tree nests 451 deep.
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', 300));
        p.extend(std::iter::repeat_n(b'a', 299));
        p.extend_from_slice(b"q\x00]h\x00a");
        p.extend(std::iter::repeat_n(b']', 150));
        p.extend_from_slice(b"h\x00a");
        p.extend(std::iter::repeat_n(b'a', 150));
        p.push(b'.');
        let err = load(&p).unwrap_err();
        assert_eq!(err.fault, PickleFault::TooDeep, "{err}");
    }

    #[test]
    fn nesting_is_refused_past_the_limit_whatever_the_container() {
        for (open, close) in [(&b"]"[..], &b"a"[..]), (b"(", b"t"), (b"}N", b"s")] {
            for (n, ok) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false), (100_000, false)] {
                let mut p = b"\x80\x02".to_vec();
                if open == b"}N" {
                    // {None: {None: ... 1}}: key N, then the inner value.
                    for _ in 0..n {
                        p.extend_from_slice(b"}N");
                    }
                    p.extend_from_slice(b"K\x01");
                    p.extend(std::iter::repeat_n(b's', n));
                } else {
                    p.extend(std::iter::repeat_n(open[0], n));
                    p.extend_from_slice(b"K\x01");
                    p.extend(std::iter::repeat_n(close[0], n));
                }
                p.push(b'.');
                match load(&p) {
                    Ok(v) => assert!(ok, "{n}: {}", v.depth()),
                    Err(e) => {
                        assert!(!ok, "{n}: {e}");
                        assert_eq!(e.fault, PickleFault::TooDeep, "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn cycles_are_errors() {
        let p = b"\x80\x02]q\x00h\x00a.";
        assert!(load(p).unwrap_err().message.contains("cycle"));
    }

    #[test]
    fn unknown_globals_become_objects() {
        let p = b"\x80\x02cdatetime\ntimedelta\nK\x01K\x02K\x03\x87R.";
        let Value::Object(o) = &load(p).unwrap() else {
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
