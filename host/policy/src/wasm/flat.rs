//! The state dict across the boundary: flattening a [`Value`] tree into WIT entries, and
//! checking and rebuilding what a filter returns (the rules are in `wit/policy.wit`).
//!
//! Nothing a component returns can make the host panic, recurse or exceed the caps:
//!
//! - **Depth.** An answer may nest at most [`MAX_DEPTH`] containers deep (the bound the
//!   checkpoint reader applies, so cairn never writes what it refuses to read back); an entry's
//!   path length is checked before anything else is done with it, and both walks here use a
//!   heap stack, never recursion.
//! - **Size.** Entries and bytes are capped (`max_filter_entries`, `max_filter_string_bytes`),
//!   and an `alias` counts the bytes of the value it names against them; the flattened form
//!   offered to the component is capped by the host memory it takes (`max_transfer_mib`: every
//!   entry carries its whole path).
//! - **Sharing.** A value several entries name (a `tensor`/`opaque` and its `alias`es) becomes
//!   one [`Shared`] subtree that every place refers to: nothing is copied, and the writers emit
//!   it once and refer to it (as `torch.save` does an object it has already written), so an
//!   alias is a reference from the answer all the way to the file.
//! - **Work.** Each entry costs the length of its path: the Python type of a dict the filter
//!   keeps is found through a trie of the input's containers, one segment at a time, never by
//!   hashing the path so far at every level.
//!
//! Any violation is a [`Refusal`] naming the entry at fault, with the guest's keys escaped and
//! shortened (see `text.rs`).

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;

use super::bindings::types as wit;
use super::text;
use cairn_format::MAX_DEPTH;
use cairn_format::state_dict::{DType, Dict, DictKind, Key, Shared, Value};

/// One path segment, hashable (the generated WIT type is not).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Int(i64),
    Index(u32),
}

/// A container of the input, as a node of the trie its paths form; the root dict is node 0.
type NodeId = u32;

/// What flattening issued: the values behind handles, and the input's containers with the
/// Python type of every dict that is not a plain `dict`.
#[derive(Debug, Default)]
pub struct Issued {
    /// Handle `h` names `values[h - 1]`.
    values: Vec<Value>,
    /// The input's containers: (parent, segment) → child.
    children: HashMap<(NodeId, Seg), NodeId>,
    /// The Python type and pickle `BUILD` state of the input's dicts that have either, by
    /// node: a dict the filter keeps (or returns as `empty-dict`) gets them back, since neither
    /// crosses the boundary (the `_metadata` torch attaches to a module's state dict, for one).
    dict_types: HashMap<NodeId, (DictKind, Option<Box<Value>>)>,
    /// Nodes so far (the next node's id).
    nodes: NodeId,
}

impl Issued {
    fn node(&mut self, parent: NodeId, seg: Seg) -> NodeId {
        self.nodes += 1;
        self.children.insert((parent, seg), self.nodes);
        self.nodes
    }

    fn remember(&mut self, node: NodeId, d: &Dict) {
        if d.kind != DictKind::Plain || d.state.is_some() {
            self.dict_types.insert(node, (d.kind, d.state.clone()));
        }
    }

    /// The input container at `seg` below `parent`, if there was one.
    fn child(&self, parent: Option<NodeId>, seg: &wit::Segment) -> Option<NodeId> {
        let parent = parent?;
        self.children.get(&(parent, to_seg(seg))).copied()
    }

    /// A new dict with the type and state of the input's dict at `node` (a plain `dict` if
    /// there was none). Each input dict is rebuilt at most once, so its state is moved.
    fn dict(&mut self, node: Option<NodeId>) -> Dict {
        let (kind, state) = node
            .and_then(|n| self.dict_types.remove(&n))
            .unwrap_or((DictKind::Plain, None));
        Dict {
            kind,
            entries: IndexMap::new(),
            state,
        }
    }
}

/// Caps on what crosses the boundary.
#[derive(Clone, Copy, Debug)]
pub struct OutputCaps {
    /// Most entries of an answer.
    pub max_entries: u64,
    /// Most bytes of an answer's strings, keys and `bytes` values, plus the size of every
    /// value an `alias` names.
    pub max_string_bytes: u64,
    /// Most host memory the flattened state dict offered to the component may take.
    pub max_offered_bytes: u64,
}

/// Why a state dict could not cross, or an answer could not be used.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// It breaks a rule of `wit/policy.wit` (the sentence says which entry and how).
    Invalid(String),
    /// Entry `entry`, at `path`, would nest `depth` containers deep (or more).
    TooDeep {
        /// The entry's position in the answer.
        entry: usize,
        /// Its path, escaped and shortened.
        path: String,
        /// How deep it would nest.
        depth: usize,
    },
    /// Over a cap: `what` says which and by how much, `key` names the `[sandbox]` setting.
    TooLarge {
        /// What is too large (a phrase).
        what: String,
        /// The `[sandbox]` key that sets the cap.
        key: &'static str,
    },
}

/// Host bytes of one entry's frame and of one path segment in the flattened form.
const ENTRY_BYTES: u64 = std::mem::size_of::<wit::Entry>() as u64;
const SEGMENT_BYTES: u64 = std::mem::size_of::<wit::Segment>() as u64;

/// A container being walked by [`flatten`].
enum Walk<'a> {
    Dict(NodeId, indexmap::map::Iter<'a, Key, Value>),
    List(NodeId, std::iter::Enumerate<std::slice::Iter<'a, Value>>),
}

/// Flatten `tree` (whose root must be a dict) into entries, issuing handles for tensors and
/// opaque values. Walks with a heap stack, and stops once the entries would take more than
/// `caps.max_offered_bytes` of host memory (each entry holds a copy of its whole path).
pub fn flatten(tree: &Value, caps: OutputCaps) -> Result<(Vec<wit::Entry>, Issued), Refusal> {
    let Value::Dict(root) = tree else {
        return Err(Refusal::Invalid(format!(
            "the state dict's root is a {}, not a dict",
            tree.kind()
        )));
    };
    let mut out = Vec::new();
    let mut issued = Issued::default();
    issued.remember(0, root);
    let mut path: Vec<wit::Segment> = Vec::new();
    let mut path_bytes: u64 = 0;
    let mut offered: u64 = 0;
    let mut stack = vec![Walk::Dict(0, root.entries.iter())];
    while let Some(top) = stack.last_mut() {
        let next = match top {
            Walk::Dict(node, it) => it.next().map(|(k, v)| {
                let seg = match k {
                    Key::Str(s) => wit::Segment::Key(s.clone()),
                    Key::Int(i) => wit::Segment::IntKey(*i),
                };
                (*node, seg, v)
            }),
            Walk::List(node, it) => it
                .next()
                .map(|(i, v)| (*node, wit::Segment::Index(index(i)), v)),
        };
        let Some((parent, seg, v)) = next else {
            stack.pop();
            if !stack.is_empty() {
                path_bytes -= seg_bytes(path.pop().as_ref());
            }
            continue;
        };
        path_bytes += seg_bytes(Some(&seg));
        path.push(seg);
        let leaf = match v {
            Value::Dict(d) if !d.is_empty() => {
                let node = issued.node(parent, to_seg(path.last().expect("pushed")));
                issued.remember(node, d);
                stack.push(Walk::Dict(node, d.entries.iter()));
                continue;
            }
            Value::List(l) if !l.is_empty() => {
                let node = issued.node(parent, to_seg(path.last().expect("pushed")));
                stack.push(Walk::List(node, l.iter().enumerate()));
                continue;
            }
            Value::Dict(d) => {
                let node = issued.node(parent, to_seg(path.last().expect("pushed")));
                issued.remember(node, d);
                wit::Leaf::EmptyDict
            }
            Value::List(_) => wit::Leaf::EmptyList,
            other => leaf(other, &mut issued.values),
        };
        offered += ENTRY_BYTES
            + SEGMENT_BYTES * path.len() as u64
            + path_bytes
            + match &leaf {
                wit::Leaf::Str(s) => s.len() as u64,
                wit::Leaf::Bytes(b) => b.len() as u64,
                wit::Leaf::Tensor(t) => 8 * t.shape.len() as u64,
                wit::Leaf::Opaque(o) => (o.kind.len() + o.description.len()) as u64,
                _ => 0,
            };
        if offered > caps.max_offered_bytes {
            return Err(Refusal::TooLarge {
                what: format!(
                    "the state dict offered to it: flattened (every entry carries its whole path) it would take more than {} of host memory by entry {} ({})",
                    text::human_bytes(caps.max_offered_bytes),
                    out.len(),
                    show_path(&path)
                ),
                key: "max_transfer_mib",
            });
        }
        out.push(wit::Entry {
            path: path.clone(),
            leaf,
        });
        path_bytes -= seg_bytes(path.pop().as_ref());
    }
    Ok((out, issued))
}

/// The leaf `v` becomes (not a dict or list), issuing a handle when it is one.
fn leaf(v: &Value, values: &mut Vec<Value>) -> wit::Leaf {
    let mut issue = |v: &Value| {
        values.push(v.clone());
        values.len() as u64
    };
    match v {
        Value::Tensor(t) => wit::Leaf::Tensor(wit::TensorMeta {
            dtype: wit_dtype(t.dtype()),
            shape: t.shape.clone(),
            handle: issue(v),
        }),
        Value::Int(i) => wit::Leaf::Int(*i),
        Value::Float(f) => wit::Leaf::Float(*f),
        Value::Bool(b) => wit::Leaf::Boolean(*b),
        Value::Str(s) => wit::Leaf::Str(s.clone()),
        Value::Bytes(b) => wit::Leaf::Bytes(b.clone()),
        Value::None => wit::Leaf::None,
        Value::Tuple(items) => wit::Leaf::Opaque(wit::OpaqueMeta {
            kind: "tuple".into(),
            description: format!("tuple of {}", items.len()),
            handle: issue(v),
        }),
        Value::BigInt(_) => wit::Leaf::Opaque(wit::OpaqueMeta {
            kind: "int".into(),
            description: "int beyond 64 bits".into(),
            handle: issue(v),
        }),
        Value::Object(o) => wit::Leaf::Opaque(wit::OpaqueMeta {
            kind: "object".into(),
            description: format!("{}.{}", o.module, o.name),
            handle: issue(v),
        }),
        // A subtree referenced from several places stays one opaque value (its handle keeps it
        // shared), so a filter never sees it expanded once per place.
        Value::Shared(s) => wit::Leaf::Opaque(wit::OpaqueMeta {
            kind: "shared".into(),
            description: format!("shared {}", s.get().kind()),
            handle: issue(v),
        }),
        Value::Dict(_) | Value::List(_) => unreachable!("containers are walked, not leaves"),
    }
}

fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn seg_bytes(s: Option<&wit::Segment>) -> u64 {
    match s {
        Some(wit::Segment::Key(k)) => k.len() as u64,
        _ => 0,
    }
}

/// A node of the tree being rebuilt; containers remember which input container sits at their
/// path, if any, to get its Python type back.
enum Node {
    Dict(IndexMap<Key, Node>, Option<NodeId>),
    List(BTreeMap<u32, Node>),
    Leaf(Value),
}

/// Check `entries` against the rules and the caps, and rebuild the tree.
pub fn rebuild(
    entries: Vec<wit::Entry>,
    mut issued: Issued,
    caps: OutputCaps,
) -> Result<Value, Refusal> {
    if entries.len() as u64 > caps.max_entries {
        return Err(Refusal::TooLarge {
            what: format!(
                "{} entries, more than the limit of {}",
                entries.len(),
                caps.max_entries
            ),
            key: "max_filter_entries",
        });
    }
    let mut handles = Handles::new(&entries, issued.values.len());
    let mut bytes: u64 = 0;
    let mut root: IndexMap<Key, Node> = IndexMap::new();
    for (n, entry) in entries.into_iter().enumerate() {
        let at = || format!("entry {n} ({})", show_path(&entry.path));
        if entry.path.len() > MAX_DEPTH {
            return Err(Refusal::TooDeep {
                entry: n,
                path: show_path(&entry.path),
                depth: entry.path.len(),
            });
        }
        for seg in &entry.path {
            if let wit::Segment::Key(k) = seg {
                bytes += k.len() as u64;
            }
        }
        // A value behind a handle nests (and weighs) what it holds: measured before it is
        // placed, once per handle.
        let inner = match handle_of(&entry.leaf) {
            Some(h) => {
                let (depth, size) = handles
                    .measure(h, &issued.values)
                    .map_err(|e| Refusal::Invalid(format!("{}: {e}", at())))?;
                if matches!(entry.leaf, wit::Leaf::Alias(_)) {
                    bytes += size;
                }
                depth
            }
            None => 0,
        };
        match &entry.leaf {
            wit::Leaf::Str(s) => bytes += s.len() as u64,
            wit::Leaf::Bytes(b) => bytes += b.len() as u64,
            _ => {}
        }
        if entry.path.len() + inner > MAX_DEPTH {
            return Err(Refusal::TooDeep {
                entry: n,
                path: show_path(&entry.path),
                depth: entry.path.len() + inner,
            });
        }
        if bytes > caps.max_string_bytes {
            return Err(Refusal::TooLarge {
                what: format!(
                    "more than {} of strings, keys, bytes and aliased values by {}",
                    text::human_bytes(caps.max_string_bytes),
                    at()
                ),
                key: "max_filter_string_bytes",
            });
        }
        let value = leaf_value(&entry.leaf, &mut issued, &mut handles, &entry.path)
            .map_err(|e| Refusal::Invalid(format!("{}: {e}", at())))?;
        insert(&mut root, &entry.path, value, &issued)
            .map_err(|e| Refusal::Invalid(format!("{}: {e}", at())))?;
    }
    Ok(assemble(root, &mut issued))
}

/// How the answer uses each handle: how many places name it (as `tensor`/`opaque` or
/// `alias`), which were already returned as `tensor`/`opaque`, and the depth and size of each
/// value named, measured once.
struct Handles {
    places: HashMap<u64, u32>,
    returned: std::collections::HashSet<u64>,
    measured: HashMap<u64, (usize, u64)>,
}

impl Handles {
    fn new(entries: &[wit::Entry], issued: usize) -> Handles {
        let mut places = HashMap::new();
        for e in entries {
            if let Some(h) = handle_of(&e.leaf)
                && usize::try_from(h).is_ok_and(|h| h >= 1 && h <= issued)
            {
                *places.entry(h).or_insert(0u32) += 1;
            }
        }
        Handles {
            places,
            returned: Default::default(),
            measured: HashMap::new(),
        }
    }

    /// Depth and bytes of the value behind `h`.
    fn measure(&mut self, h: u64, values: &[Value]) -> Result<(usize, u64), String> {
        if let Some(m) = self.measured.get(&h) {
            return Ok(*m);
        }
        let m = measure(lookup(values, h)?);
        self.measured.insert(h, m);
        Ok(m)
    }
}

fn handle_of(leaf: &wit::Leaf) -> Option<u64> {
    match leaf {
        wit::Leaf::Tensor(t) => Some(t.handle),
        wit::Leaf::Opaque(o) => Some(o.handle),
        wit::Leaf::Alias(h) => Some(*h),
        _ => None,
    }
}

fn lookup(values: &[Value], h: u64) -> Result<&Value, String> {
    usize::try_from(h)
        .ok()
        .and_then(|h| h.checked_sub(1))
        .and_then(|i| values.get(i))
        .ok_or_else(|| format!("handle {h} was not issued by cairn in this call"))
}

/// How many containers deep `v` nests (as [`MAX_DEPTH`] counts: [`Value::depth`]) and how many
/// bytes it holds (strings, keys, bytes, tensor data, and 8 per node; a shared subtree once),
/// without recursion.
fn measure(v: &Value) -> (usize, u64) {
    let mut bytes = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<&Value> = vec![v];
    while let Some(v) = stack.pop() {
        bytes += 8;
        match v {
            Value::Shared(s) => {
                if seen.insert(s.id()) {
                    stack.push(s.get());
                }
                continue;
            }
            Value::Dict(d) => {
                bytes += d
                    .entries
                    .keys()
                    .map(|k| match k {
                        Key::Str(s) => s.len() as u64,
                        Key::Int(_) => 0,
                    })
                    .sum::<u64>();
            }
            Value::Tensor(t) => bytes += t.nbytes(),
            Value::Str(s) => bytes += s.len() as u64,
            Value::Bytes(b) | Value::BigInt(b) => bytes += b.len() as u64,
            _ => {}
        }
        stack.extend(v.children());
    }
    (v.depth(), bytes)
}

fn leaf_value(
    leaf: &wit::Leaf,
    issued: &mut Issued,
    handles: &mut Handles,
    path: &[wit::Segment],
) -> Result<Value, String> {
    Ok(match leaf {
        wit::Leaf::Tensor(meta) => {
            // Resolved: a handle placed before may already be the shared subtree (`place`).
            let v = lookup(&issued.values, meta.handle)?.resolved();
            let Value::Tensor(t) = v else {
                return Err(format!(
                    "handle {} names a {}, not a tensor",
                    meta.handle,
                    v.kind()
                ));
            };
            if wit_dtype(t.dtype()) != meta.dtype || t.shape != meta.shape {
                return Err(format!(
                    "tensor {} was returned with another dtype or shape ({:?} {:?}, issued as {} {:?})",
                    meta.handle,
                    meta.dtype,
                    meta.shape,
                    t.dtype(),
                    t.shape
                ));
            }
            returned_once(handles, meta.handle)?;
            place(issued, handles, meta.handle)
        }
        wit::Leaf::Opaque(meta) => {
            let v = lookup(&issued.values, meta.handle)?.resolved();
            if matches!(v, Value::Tensor(_)) {
                return Err(format!(
                    "handle {} names a tensor, not an opaque value",
                    meta.handle
                ));
            }
            returned_once(handles, meta.handle)?;
            place(issued, handles, meta.handle)
        }
        wit::Leaf::Alias(h) => {
            lookup(&issued.values, *h)?;
            place(issued, handles, *h)
        }
        wit::Leaf::Int(i) => Value::Int(*i),
        wit::Leaf::Float(f) => Value::Float(*f),
        wit::Leaf::Boolean(b) => Value::Bool(*b),
        wit::Leaf::Str(s) => Value::Str(s.clone()),
        wit::Leaf::Bytes(b) => Value::Bytes(b.clone()),
        wit::Leaf::None => Value::None,
        wit::Leaf::EmptyDict => {
            // The input's dict at this path, found one segment at a time.
            let mut node = Some(0);
            for s in path {
                node = issued.child(node, s);
            }
            Value::Dict(issued.dict(node))
        }
        wit::Leaf::EmptyList => Value::List(Vec::new()),
    })
}

fn returned_once(handles: &mut Handles, h: u64) -> Result<(), String> {
    if handles.returned.insert(h) {
        Ok(())
    } else {
        Err(format!(
            "handle {h} is returned twice (use `alias` to share a value on purpose)"
        ))
    }
}

/// The value behind a (checked) handle for one of the places that name it: moved out when it
/// is the only one; else one [`Shared`] subtree that every place refers to, so an `alias`
/// stays a reference all the way to the file (`torch.save` writes a shared object once, then
/// refers to it; the safetensors writer keeps it once too).
fn place(issued: &mut Issued, handles: &mut Handles, h: u64) -> Value {
    let i = (h - 1) as usize;
    let places = handles
        .places
        .get(&h)
        .copied()
        .expect("counted in Handles::new");
    if places == 1 {
        return std::mem::take(&mut issued.values[i]);
    }
    let slot = &mut issued.values[i];
    if !matches!(slot, Value::Shared(_)) {
        *slot = Value::Shared(Shared::new(std::mem::take(slot)));
    }
    slot.clone()
}

fn to_seg(s: &wit::Segment) -> Seg {
    match s {
        wit::Segment::Key(k) => Seg::Key(k.clone()),
        wit::Segment::IntKey(i) => Seg::Int(*i),
        wit::Segment::Index(i) => Seg::Index(*i),
    }
}

/// A path as an error shows it: keys escaped and cut to 64 bytes, and only both ends of a
/// long path (under 1 KiB in all).
fn show_path(path: &[wit::Segment]) -> String {
    const ENDS: usize = 4;
    const KEY: usize = 64;
    if path.is_empty() {
        return "the root".into();
    }
    let show = |s: &wit::Segment| match s {
        wit::Segment::Key(k) => text::one_line(k, KEY),
        wit::Segment::IntKey(i) => i.to_string(),
        wit::Segment::Index(i) => format!("[{i}]"),
    };
    if path.len() <= 2 * ENDS + 1 {
        return path.iter().map(show).collect::<Vec<_>>().join("/");
    }
    let head: Vec<String> = path[..ENDS].iter().map(show).collect();
    let tail: Vec<String> = path[path.len() - ENDS..].iter().map(show).collect();
    format!(
        "{}/…{} more segments…/{}",
        head.join("/"),
        path.len() - 2 * ENDS,
        tail.join("/")
    )
}

/// Put `value` at `path` under the root dict, creating containers on the way.
fn insert(
    root: &mut IndexMap<Key, Node>,
    path: &[wit::Segment],
    value: Value,
    issued: &Issued,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("the path is empty".into());
    };
    // Walk as a chain of "slots": the root dict, then a child node for each parent segment;
    // `origin` follows the input's container at the same path, while there is one.
    let mut dict: Option<&mut IndexMap<Key, Node>> = Some(root);
    let mut list: Option<&mut BTreeMap<u32, Node>> = None;
    let mut origin: Option<NodeId> = Some(0);
    for (i, s) in parents.iter().enumerate() {
        let next_is_index = matches!(path[i + 1], wit::Segment::Index(_));
        let here = issued.child(origin, s);
        let fresh = || {
            if next_is_index {
                Node::List(BTreeMap::new())
            } else {
                Node::Dict(IndexMap::new(), here)
            }
        };
        let child: &mut Node = match (s, dict.take(), list.take()) {
            (wit::Segment::Index(idx), None, Some(l)) => l.entry(*idx).or_insert_with(fresh),
            (wit::Segment::Key(_) | wit::Segment::IntKey(_), Some(d), None) => {
                d.entry(key(s)).or_insert_with(fresh)
            }
            _ => return Err(mismatch(&path[..i])),
        };
        origin = here;
        match child {
            Node::Dict(d, _) => dict = Some(d),
            Node::List(l) => list = Some(l),
            Node::Leaf(_) => {
                return Err(format!(
                    "{} is a leaf and cannot have entries below it",
                    show_path(&path[..=i])
                ));
            }
        }
    }
    match (last, dict, list) {
        (wit::Segment::Index(idx), None, Some(l)) => match l.entry(*idx) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Node::Leaf(value));
            }
            std::collections::btree_map::Entry::Occupied(_) => return Err(taken(path)),
        },
        (wit::Segment::Key(_) | wit::Segment::IntKey(_), Some(d), None) => match d.entry(key(last))
        {
            indexmap::map::Entry::Vacant(v) => {
                v.insert(Node::Leaf(value));
            }
            indexmap::map::Entry::Occupied(_) => return Err(taken(path)),
        },
        _ => return Err(mismatch(parents)),
    }
    Ok(())
}

fn key(s: &wit::Segment) -> Key {
    match s {
        wit::Segment::Key(k) => Key::Str(k.clone()),
        wit::Segment::IntKey(i) => Key::Int(*i),
        wit::Segment::Index(i) => Key::Int(i64::from(*i)),
    }
}

fn mismatch(parent: &[wit::Segment]) -> String {
    format!(
        "{} is used both as a dict (key segments) and as a list (index segments), or a list at the root",
        show_path(parent)
    )
}

fn taken(path: &[wit::Segment]) -> String {
    format!(
        "{} appears twice, or is both a leaf and a container",
        show_path(path)
    )
}

/// A container being assembled by [`assemble`], with the key it goes under in its parent.
enum Build {
    Dict(Option<Key>, Dict, indexmap::map::IntoIter<Key, Node>),
    List(
        Option<Key>,
        Vec<Value>,
        std::collections::btree_map::IntoValues<u32, Node>,
    ),
}

/// Turn the rebuilt nodes into a [`Value`] tree, bottom up, with a heap stack (the depth was
/// checked entry by entry, but no walk here recurses on it anyway).
fn assemble(root: IndexMap<Key, Node>, issued: &mut Issued) -> Value {
    let mut stack = vec![Build::Dict(None, issued.dict(Some(0)), root.into_iter())];
    loop {
        let top = stack.last_mut().expect("the root is popped last");
        let next = match top {
            Build::Dict(_, _, rest) => rest.next().map(|(k, n)| (Some(k), n)),
            Build::List(_, _, rest) => rest.next().map(|n| (None, n)),
        };
        let (key, value) = match next {
            Some((k, Node::Leaf(v))) => (k, v),
            Some((k, Node::Dict(d, origin))) => {
                stack.push(Build::Dict(k, issued.dict(origin), d.into_iter()));
                continue;
            }
            Some((k, Node::List(l))) => {
                stack.push(Build::List(k, Vec::with_capacity(l.len()), l.into_values()));
                continue;
            }
            None => match stack.pop().expect("not empty") {
                Build::Dict(k, d, _) => (k, Value::Dict(d)),
                Build::List(k, items, _) => (k, Value::List(items)),
            },
        };
        // `value` is finished: it goes into the container on top (or is the whole tree).
        match stack.last_mut() {
            None => return value,
            Some(Build::Dict(_, d, _)) => {
                d.entries
                    .insert(key.expect("a dict's children have keys"), value);
            }
            Some(Build::List(_, items, _)) => items.push(value),
        }
    }
}

fn wit_dtype(d: DType) -> wit::Dtype {
    match d {
        DType::F64 => wit::Dtype::Float64,
        DType::F32 => wit::Dtype::Float32,
        DType::F16 => wit::Dtype::Float16,
        DType::BF16 => wit::Dtype::Bfloat16,
        DType::I64 => wit::Dtype::Int64,
        DType::I32 => wit::Dtype::Int32,
        DType::I16 => wit::Dtype::Int16,
        DType::I8 => wit::Dtype::Int8,
        DType::U8 => wit::Dtype::Uint8,
        DType::Bool => wit::Dtype::Bool,
    }
}
