//! The state dict across the boundary: flattening a [`Value`] tree into WIT entries, and
//! checking and rebuilding what a filter returns (the rules are in `wit/policy.wit`).
//!
//! Nothing a component returns can make the host panic or exceed the caps: every path, handle
//! and size is checked, and any violation is an error that says which entry is at fault.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use super::bindings::types as wit;
use cairn_format::state_dict::{DType, Dict, DictKind, Key, Value};

/// One path segment, hashable (the generated WIT type is not).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Int(i64),
    Index(u32),
}

/// What flattening issued: the values behind handles, and the Python type of every dict.
#[derive(Debug, Default)]
pub struct Issued {
    /// Handle `h` names `values[h - 1]`.
    values: Vec<Value>,
    /// The Python type and pickle `BUILD` state of every dict of the input, by path: a dict
    /// the filter keeps (or returns as `empty-dict`) gets them back, since neither crosses
    /// the boundary (the `_metadata` torch attaches to a module's state dict, for one).
    dicts: HashMap<Vec<Seg>, (DictKind, Option<Box<Value>>)>,
}

impl Issued {
    /// Kind and state of the input dict at `segs`; a new dict is a plain `dict`.
    fn dict_type(&self, segs: &[Seg]) -> (DictKind, Option<Box<Value>>) {
        self.dicts
            .get(segs)
            .cloned()
            .unwrap_or((DictKind::Plain, None))
    }
}

fn remember(issued: &mut Issued, d: &Dict, segs: &[Seg]) {
    if d.kind != DictKind::Plain || d.state.is_some() {
        issued
            .dicts
            .insert(segs.to_vec(), (d.kind, d.state.clone()));
    }
}

/// Caps on what a filter may return.
#[derive(Clone, Copy, Debug)]
pub struct OutputCaps {
    /// Most entries.
    pub max_entries: u64,
    /// Most bytes of strings, keys and `bytes` values together.
    pub max_string_bytes: u64,
}

/// Flatten `tree` (whose root must be a dict) into entries, issuing handles for tensors and
/// opaque values.
pub fn flatten(tree: &Value) -> Result<(Vec<wit::Entry>, Issued), String> {
    let Value::Dict(root) = tree else {
        return Err(format!(
            "the state dict's root is a {}, not a dict",
            tree.kind()
        ));
    };
    let mut out = Vec::new();
    let mut issued = Issued::default();
    let mut path = Vec::new();
    let mut segs = Vec::new();
    walk_dict(root, &mut path, &mut segs, &mut out, &mut issued);
    Ok((out, issued))
}

fn walk_dict(
    d: &Dict,
    path: &mut Vec<wit::Segment>,
    segs: &mut Vec<Seg>,
    out: &mut Vec<wit::Entry>,
    issued: &mut Issued,
) {
    remember(issued, d, segs);
    for (k, v) in &d.entries {
        let (seg, s) = match k {
            Key::Str(s) => (wit::Segment::Key(s.clone()), Seg::Key(s.clone())),
            Key::Int(i) => (wit::Segment::IntKey(*i), Seg::Int(*i)),
        };
        path.push(seg);
        segs.push(s);
        walk(v, path, segs, out, issued);
        path.pop();
        segs.pop();
    }
}

fn walk(
    v: &Value,
    path: &mut Vec<wit::Segment>,
    segs: &mut Vec<Seg>,
    out: &mut Vec<wit::Entry>,
    issued: &mut Issued,
) {
    let mut issue = |v: &Value| {
        issued.values.push(v.clone());
        issued.values.len() as u64
    };
    let leaf = match v {
        Value::Dict(d) if d.is_empty() => {
            remember(issued, d, segs);
            wit::Leaf::EmptyDict
        }
        Value::Dict(d) => return walk_dict(d, path, segs, out, issued),
        Value::List(l) if l.is_empty() => wit::Leaf::EmptyList,
        Value::List(l) => {
            for (i, item) in l.iter().enumerate() {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                path.push(wit::Segment::Index(i));
                segs.push(Seg::Index(i));
                walk(item, path, segs, out, issued);
                path.pop();
                segs.pop();
            }
            return;
        }
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
    };
    out.push(wit::Entry {
        path: path.clone(),
        leaf,
    });
}

/// A node of the tree being rebuilt.
enum Node {
    Dict(IndexMap<Key, Node>),
    List(std::collections::BTreeMap<u32, Node>),
    Leaf(Value),
}

/// Check `entries` against the rules and the caps, and rebuild the tree.
pub fn rebuild(
    entries: Vec<wit::Entry>,
    issued: &Issued,
    caps: OutputCaps,
) -> Result<Value, String> {
    if entries.len() as u64 > caps.max_entries {
        return Err(format!(
            "{} entries, more than the limit of {} ([sandbox] max_filter_entries)",
            entries.len(),
            caps.max_entries
        ));
    }
    let mut string_bytes: u64 = 0;
    let mut used: HashSet<u64> = HashSet::new();
    let mut root: IndexMap<Key, Node> = IndexMap::new();
    for (n, entry) in entries.into_iter().enumerate() {
        for seg in &entry.path {
            if let wit::Segment::Key(k) = seg {
                string_bytes += k.len() as u64;
            }
        }
        match &entry.leaf {
            wit::Leaf::Str(s) => string_bytes += s.len() as u64,
            wit::Leaf::Bytes(b) => string_bytes += b.len() as u64,
            _ => {}
        }
        if string_bytes > caps.max_string_bytes {
            return Err(format!(
                "more than {} bytes of strings ([sandbox] max_filter_string_bytes)",
                caps.max_string_bytes
            ));
        }
        let at = || format!("entry {n} ({})", show_path(&entry.path));
        let value = leaf_value(&entry.leaf, issued, &mut used, &entry.path)
            .map_err(|e| format!("{}: {e}", at()))?;
        insert(&mut root, &entry.path, value).map_err(|e| format!("{}: {e}", at()))?;
    }
    let mut segs = Vec::new();
    Ok(Value::Dict(to_dict(root, &mut segs, issued)))
}

fn leaf_value(
    leaf: &wit::Leaf,
    issued: &Issued,
    used: &mut HashSet<u64>,
    path: &[wit::Segment],
) -> Result<Value, String> {
    let lookup = |h: u64| -> Result<&Value, String> {
        usize::try_from(h)
            .ok()
            .and_then(|h| h.checked_sub(1))
            .and_then(|i| issued.values.get(i))
            .ok_or_else(|| format!("handle {h} was not issued by cairn in this call"))
    };
    Ok(match leaf {
        wit::Leaf::Tensor(meta) => {
            let v = lookup(meta.handle)?;
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
            if !used.insert(meta.handle) {
                return Err(format!(
                    "handle {} is returned twice (use `alias` to share a value on purpose)",
                    meta.handle
                ));
            }
            v.clone()
        }
        wit::Leaf::Opaque(meta) => {
            let v = lookup(meta.handle)?;
            if matches!(v, Value::Tensor(_)) {
                return Err(format!(
                    "handle {} names a tensor, not an opaque value",
                    meta.handle
                ));
            }
            if !used.insert(meta.handle) {
                return Err(format!(
                    "handle {} is returned twice (use `alias` to share a value on purpose)",
                    meta.handle
                ));
            }
            v.clone()
        }
        wit::Leaf::Alias(h) => lookup(*h)?.clone(),
        wit::Leaf::Int(i) => Value::Int(*i),
        wit::Leaf::Float(f) => Value::Float(*f),
        wit::Leaf::Boolean(b) => Value::Bool(*b),
        wit::Leaf::Str(s) => Value::Str(s.clone()),
        wit::Leaf::Bytes(b) => Value::Bytes(b.clone()),
        wit::Leaf::None => Value::None,
        wit::Leaf::EmptyDict => {
            let segs: Vec<Seg> = path.iter().map(seg).collect();
            let (kind, state) = issued.dict_type(&segs);
            Value::Dict(Dict {
                kind,
                entries: IndexMap::new(),
                state,
            })
        }
        wit::Leaf::EmptyList => Value::List(Vec::new()),
    })
}

fn seg(s: &wit::Segment) -> Seg {
    match s {
        wit::Segment::Key(k) => Seg::Key(k.clone()),
        wit::Segment::IntKey(i) => Seg::Int(*i),
        wit::Segment::Index(i) => Seg::Index(*i),
    }
}

fn show_path(path: &[wit::Segment]) -> String {
    if path.is_empty() {
        return "the root".into();
    }
    path.iter()
        .map(|s| match s {
            wit::Segment::Key(k) => k.clone(),
            wit::Segment::IntKey(i) => i.to_string(),
            wit::Segment::Index(i) => format!("[{i}]"),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Put `value` at `path` under the root dict, creating containers on the way.
fn insert(
    root: &mut IndexMap<Key, Node>,
    path: &[wit::Segment],
    value: Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("the path is empty".into());
    };
    // Walk as a chain of "slots": the root dict, then a child node for each parent segment.
    let mut dict: Option<&mut IndexMap<Key, Node>> = Some(root);
    let mut list: Option<&mut std::collections::BTreeMap<u32, Node>> = None;
    for (i, s) in parents.iter().enumerate() {
        let next_is_index = matches!(path[i + 1], wit::Segment::Index(_));
        let fresh = || {
            if next_is_index {
                Node::List(Default::default())
            } else {
                Node::Dict(IndexMap::new())
            }
        };
        let child: &mut Node = match (s, dict.take(), list.take()) {
            (wit::Segment::Index(idx), None, Some(l)) => l.entry(*idx).or_insert_with(fresh),
            (wit::Segment::Key(_) | wit::Segment::IntKey(_), Some(d), None) => {
                d.entry(key(s)).or_insert_with(fresh)
            }
            _ => return Err(mismatch(&path[..i])),
        };
        match child {
            Node::Dict(d) => dict = Some(d),
            Node::List(l) => list = Some(l),
            Node::Leaf(_) => {
                return Err(format!(
                    "{} is a leaf and cannot have entries below it",
                    show_path(&path[..=i])
                ));
            }
        }
    }
    let slot = match (last, dict, list) {
        (wit::Segment::Index(idx), None, Some(l)) => match l.entry(*idx) {
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Node::Leaf(value)),
            std::collections::btree_map::Entry::Occupied(_) => return Err(taken(path)),
        },
        (wit::Segment::Key(_) | wit::Segment::IntKey(_), Some(d), None) => match d.entry(key(last))
        {
            indexmap::map::Entry::Vacant(v) => v.insert(Node::Leaf(value)),
            indexmap::map::Entry::Occupied(_) => return Err(taken(path)),
        },
        _ => return Err(mismatch(parents)),
    };
    let _ = slot;
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

fn to_dict(entries: IndexMap<Key, Node>, segs: &mut Vec<Seg>, issued: &Issued) -> Dict {
    let (kind, state) = issued.dict_type(segs);
    let mut dict = Dict {
        kind,
        entries: IndexMap::with_capacity(entries.len()),
        state,
    };
    for (k, node) in entries {
        segs.push(match &k {
            Key::Str(s) => Seg::Key(s.clone()),
            Key::Int(i) => Seg::Int(*i),
        });
        let v = to_value(node, segs, issued);
        segs.pop();
        dict.entries.insert(k, v);
    }
    dict
}

fn to_value(node: Node, segs: &mut Vec<Seg>, issued: &Issued) -> Value {
    match node {
        Node::Leaf(v) => v,
        Node::Dict(d) => Value::Dict(to_dict(d, segs, issued)),
        Node::List(l) => Value::List(
            l.into_iter()
                .map(|(i, n)| {
                    segs.push(Seg::Index(i));
                    let v = to_value(n, segs, issued);
                    segs.pop();
                    v
                })
                .collect(),
        ),
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
