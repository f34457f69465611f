//! `.safetensors` checkpoints: tensors in the safetensors layout (header built and checked with
//! the `safetensors` crate), everything else in the header's `__metadata__`.
//!
//! safetensors holds only flat, named, contiguous tensors. To round-trip a whole checkpoint tree
//! the tree itself is stored as tagged JSON under `__metadata__["cairn.tree"]`, with each tensor
//! replaced by a reference to its entry; the entry names are the tensors' Composer paths
//! (`state/model/fc.weight`) so other safetensors readers see sensible names. A file without
//! `cairn.tree` (written by another tool) reads as a flat dict of its tensors. Views are written
//! densely (safetensors cannot share storage), so shared storages are not shared after a round
//! trip; the `.pt` format keeps that. Shared subtrees ([`Shared`]) stay shared.
//!
//! The tree is a flat table of nodes, children before parents (version 2), so reading it takes
//! one pass without recursion and a node can be used twice only if it is a shared handle;
//! files with the nested encoding cairn wrote before (version 1) still read.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Write};

use bytes::Bytes;
use indexmap::IndexMap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};
use serde_json::{Value as Json, json};

use crate::state_dict::{
    Construct, DType, Dict, DictKind, Key, MAX_DEPTH, Object, Shared, Tensor, Value,
};

/// The `__metadata__` key holding the tree.
pub const TREE_KEY: &str = "cairn.tree";

/// What is wrong with a safetensors file or tree (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The header or layout is invalid.
    #[error("is not a valid safetensors file: {0}")]
    Invalid(String),
    /// The stored tree is damaged.
    #[error("has a damaged '{TREE_KEY}' tree: {0}")]
    Tree(String),
    /// A tensor cannot be stored.
    #[error("cannot be written: {0}")]
    Unwritable(String),
    /// Writing failed.
    #[error("could not be written: {0}")]
    Io(io::Error),
}

// Not `#[from]`: the message includes the cause already (see `pt::PtError`).
impl From<io::Error> for SafetensorsError {
    fn from(e: io::Error) -> Self {
        SafetensorsError::Io(e)
    }
}

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

fn from_st(d: Dtype) -> Option<DType> {
    DType::ALL.into_iter().find(|x| to_st(*x) == d)
}

/// The bytes of a tensor's view, densely packed (zero-copy when already contiguous).
pub fn dense_bytes(t: &Tensor) -> Option<Bytes> {
    if let Some(b) = t.contiguous_bytes() {
        return Some(b);
    }
    if !crate::pt::view_fits(t) {
        return None;
    }
    let size = t.dtype().size();
    let src = t.storage.bytes();
    let mut out = Vec::with_capacity(t.nbytes() as usize);
    let mut index = vec![0u64; t.shape.len()];
    for _ in 0..t.numel() {
        let elem: u64 =
            t.storage_offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let at = elem as usize * size;
        out.extend_from_slice(&src[at..at + size]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(Bytes::from(out))
}

/// Tree → a flat table of tagged JSON nodes, children before parents, collecting tensors under
/// unique names. A flat table keeps the JSON two levels deep whatever the tree's depth (a
/// nested encoding trips JSON parsers' recursion limits), and lets a shared subtree be one
/// node that several parents name.
struct Encoder {
    nodes: Vec<Json>,
    tensors: Vec<(String, Tensor)>,
    names: HashSet<String>,
    shared: HashMap<usize, usize>,
}

impl Encoder {
    fn name(&mut self, path: &str) -> String {
        let mut name = path.to_owned();
        let mut n = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{path}#{n}");
            n += 1;
        }
        name
    }

    fn push(&mut self, node: Json) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Encode `v` (and what it holds); returns its node index. Recursion is bounded: the
    /// caller checked the tree's depth.
    fn value(&mut self, v: &Value, path: &str) -> usize {
        let child = |seg: &dyn std::fmt::Display| {
            if path.is_empty() {
                seg.to_string()
            } else {
                format!("{path}/{seg}")
            }
        };
        let node = match v {
            Value::None => Json::Null,
            Value::Bool(b) => json!(b),
            Value::Str(s) => json!(s),
            Value::Int(i) => json!(["int", i]),
            Value::BigInt(b) => json!(["bigint", hex::encode(b)]),
            Value::Float(x) => json!(["float", format!("{x:?}")]),
            Value::Bytes(b) => json!(["bytes", hex::encode(b)]),
            Value::List(items) => json!(["list", self.seq(items, path)]),
            Value::Tuple(items) => json!(["tuple", self.seq(items, path)]),
            Value::Dict(d) => {
                let kind = if d.kind == DictKind::Ordered {
                    "ordered"
                } else {
                    "plain"
                };
                let items: Vec<Json> = d
                    .entries
                    .iter()
                    .map(|(k, x)| {
                        let key = match k {
                            Key::Str(s) => json!(s),
                            Key::Int(i) => json!(i),
                        };
                        json!([key, self.value(x, &child(k))])
                    })
                    .collect();
                let state = d
                    .state
                    .as_ref()
                    .map_or(Json::Null, |s| json!(self.value(s, &child(&"__state__"))));
                json!(["dict", kind, items, state])
            }
            Value::Tensor(t) => {
                let name = self.name(path);
                self.tensors.push((name.clone(), t.clone()));
                json!(["tensor", name, t.requires_grad, t.parameter])
            }
            Value::Object(o) => self.object(o, path),
            Value::Shared(s) => {
                if let Some(&i) = self.shared.get(&s.id()) {
                    return i;
                }
                let inner = self.value(s.get(), path);
                let i = self.push(json!(["shared", inner]));
                self.shared.insert(s.id(), i);
                return i;
            }
        };
        self.push(node)
    }

    fn seq(&mut self, items: &[Value], path: &str) -> Vec<usize> {
        items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                self.value(
                    x,
                    &if path.is_empty() {
                        i.to_string()
                    } else {
                        format!("{path}/{i}")
                    },
                )
            })
            .collect()
    }

    fn object(&mut self, o: &Object, path: &str) -> Json {
        let construct = match &o.construct {
            Construct::Global => json!(["global"]),
            Construct::Reduce(a) => json!(["reduce", self.seq(a, path)]),
            Construct::NewObj(a) => json!(["newobj", self.seq(a, path)]),
        };
        let state = o
            .state
            .as_ref()
            .map_or(Json::Null, |s| json!(self.value(s, path)));
        let list = self.seq(&o.list_items, path);
        let dict: Vec<Json> = o
            .dict_items
            .iter()
            .map(|(k, v)| json!([self.value(k, path), self.value(v, path)]))
            .collect();
        json!(["object", o.module, o.name, construct, state, list, dict])
    }
}

/// Write `tree` as safetensors into `out`; returns bytes written.
pub fn write(tree: &Value, out: &mut impl Write) -> Result<u64, SafetensorsError> {
    tree.check_depth(MAX_DEPTH)
        .map_err(|e| SafetensorsError::Unwritable(format!("the tree {e}")))?;
    let mut enc = Encoder {
        nodes: Vec::new(),
        tensors: Vec::new(),
        names: HashSet::new(),
        shared: HashMap::new(),
    };
    let root = enc.value(tree, "");
    let json_tree = json!({"version": 2, "root": root, "nodes": enc.nodes});
    let mut infos = Vec::new();
    let mut payloads = Vec::new();
    let mut offset = 0usize;
    for (name, t) in &enc.tensors {
        let bytes = dense_bytes(t).ok_or_else(|| {
            SafetensorsError::Unwritable(format!("tensor '{name}' reaches past its storage"))
        })?;
        let info = TensorInfo {
            dtype: to_st(t.dtype()),
            shape: t.shape.iter().map(|&d| d as usize).collect(),
            data_offsets: (offset, offset + bytes.len()),
        };
        offset += bytes.len();
        infos.push((name.clone(), info));
        payloads.push(bytes);
    }
    let meta = HashMap::from([(TREE_KEY.to_owned(), json_tree.to_string())]);
    let metadata = Metadata::new(Some(meta), infos)
        .map_err(|e| SafetensorsError::Unwritable(e.to_string()))?;
    let mut header =
        serde_json::to_vec(&metadata).map_err(|e| SafetensorsError::Unwritable(e.to_string()))?;
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut w = BufWriter::with_capacity(1 << 20, out);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for p in &payloads {
        w.write_all(p)?;
    }
    w.flush()?;
    Ok(8 + header.len() as u64 + offset as u64)
}

/// Read a safetensors file held in `data`; tensors share `data`'s memory.
pub fn read(data: &Bytes) -> Result<Value, SafetensorsError> {
    let invalid = |e: &dyn std::fmt::Display| SafetensorsError::Invalid(e.to_string());
    // Full validation (offsets contiguous, sizes match dtype × shape) by the crate.
    SafeTensors::deserialize(data).map_err(|e| invalid(&e))?;
    let (header_len, metadata) = SafeTensors::read_metadata(data).map_err(|e| invalid(&e))?;
    let base = 8 + header_len;
    let mut tensors = IndexMap::new();
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .ok_or_else(|| invalid(&"a tensor has no entry"))?;
        let dtype = from_st(info.dtype).ok_or_else(|| {
            invalid(&format!(
                "tensor '{name}' has unsupported dtype {:?}",
                info.dtype
            ))
        })?;
        let (start, end) = info.data_offsets;
        let bytes = data.slice(base + start..base + end);
        let shape = info.shape.iter().map(|&d| d as u64).collect();
        tensors.insert(name, Tensor::from_bytes(dtype, shape, bytes));
    }
    let tree = metadata.metadata().as_ref().and_then(|m| m.get(TREE_KEY));
    match tree {
        Some(text) => {
            // serde_json refuses nesting past 128 levels, so parsing cannot overflow the stack.
            let json: Json =
                serde_json::from_str(text).map_err(|e| SafetensorsError::Tree(e.to_string()))?;
            if json.is_object() {
                return read_table(&json, &tensors).map_err(SafetensorsError::Tree);
            }
            Decoder { tensors: &tensors }
                .value(&json, 0)
                .map_err(SafetensorsError::Tree)
        }
        None => {
            let mut d = Dict::new();
            for (name, t) in tensors {
                d.insert(name, t);
            }
            Ok(Value::Dict(d))
        }
    }
}

/// One decoded node of the table: taken by its one parent, or a shared handle any parent may
/// clone.
enum Slot {
    Value(Value),
    Shared(Shared),
    Taken,
}

/// Read the version-2 table: one forward pass, each node built from earlier ones.
fn read_table(json: &Json, tensors: &IndexMap<String, Tensor>) -> Res<Value> {
    if json.get("version").and_then(Json::as_u64) != Some(2) {
        return Err("unknown tree version".into());
    }
    let nodes = json
        .get("nodes")
        .and_then(Json::as_array)
        .ok_or("the tree has no node table")?;
    let root = json
        .get("root")
        .and_then(Json::as_u64)
        .ok_or("the tree has no root")? as usize;
    let mut slots: Vec<Slot> = Vec::with_capacity(nodes.len());
    let mut depths: Vec<usize> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let mut table = Table {
            slots: &mut slots,
            depths: &depths,
            at: i,
            deepest: None,
        };
        let (slot, depth) = table.node(node, tensors)?;
        if depth > MAX_DEPTH {
            return Err(format!("the tree nests deeper than {MAX_DEPTH} levels"));
        }
        slots.push(slot);
        depths.push(depth);
    }
    if root + 1 != slots.len() {
        return Err("the root is not the last node".into());
    }
    match slots.pop() {
        Some(Slot::Value(v)) => Ok(v),
        Some(Slot::Shared(s)) => Ok(Value::Shared(s)),
        _ => Err("the tree has no root".into()),
    }
}

/// Decoding node `at` of the table.
struct Table<'a> {
    slots: &'a mut Vec<Slot>,
    depths: &'a [usize],
    at: usize,
    /// The deepest child met so far.
    deepest: Option<usize>,
}

impl Table<'_> {
    /// The value of an earlier node, taken (or cloned, for a shared handle).
    fn take(&mut self, j: &Json) -> Res<Value> {
        let j = j.as_u64().ok_or("a node reference is not an index")? as usize;
        if j >= self.at {
            return Err(format!(
                "node {} refers to node {j}, which is not before it",
                self.at
            ));
        }
        self.deepest = self.deepest.max(Some(self.depths[j]));
        match std::mem::replace(&mut self.slots[j], Slot::Taken) {
            Slot::Value(v) => Ok(v),
            Slot::Shared(s) => {
                self.slots[j] = Slot::Shared(s.clone());
                Ok(Value::Shared(s))
            }
            Slot::Taken => Err(format!("node {j} is used twice but is not shared")),
        }
    }

    fn node(&mut self, j: &Json, tensors: &IndexMap<String, Tensor>) -> Res<(Slot, usize)> {
        let value = match j {
            Json::Null => Value::None,
            Json::Bool(b) => Value::Bool(*b),
            Json::String(s) => Value::Str(s.clone()),
            Json::Array(a) => {
                let tag = a.first().and_then(Json::as_str).ok_or("untagged node")?;
                if tag == "shared" {
                    let inner = self.take(a.get(1).ok_or("'shared' lacks its node")?)?;
                    let depth = self.deepest.unwrap_or(0);
                    return Ok((Slot::Shared(Shared::new(inner)), depth));
                }
                self.tagged(tag, a, tensors)?
            }
            other => return Err(format!("unexpected {other}")),
        };
        // A container is one level above its deepest child; leaves and empty ones are level 0.
        let depth = self.deepest.map_or(0, |d| d + 1);
        Ok((Slot::Value(value), depth))
    }

    fn tagged(&mut self, tag: &str, a: &[Json], tensors: &IndexMap<String, Tensor>) -> Res<Value> {
        decode_tagged(tag, a, tensors, &mut |j| self.take(j))
    }
}

/// The nested encoding (version 1) cairn wrote before the node table.
struct Decoder<'a> {
    tensors: &'a IndexMap<String, Tensor>,
}

type Res<T> = Result<T, String>;

impl Decoder<'_> {
    fn value(&self, j: &Json, depth: usize) -> Res<Value> {
        if depth > MAX_DEPTH {
            return Err("nests too deeply".into());
        }
        Ok(match j {
            Json::Null => Value::None,
            Json::Bool(b) => Value::Bool(*b),
            Json::String(s) => Value::Str(s.clone()),
            Json::Array(a) => self.tagged(a, depth)?,
            other => return Err(format!("unexpected {other}")),
        })
    }

    fn tagged(&self, a: &[Json], depth: usize) -> Res<Value> {
        let tag = a.first().and_then(Json::as_str).ok_or("untagged array")?;
        decode_tagged(tag, a, self.tensors, &mut |j| self.value(j, depth + 1))
    }
}

/// A tagged node of either encoding (`["dict", ...]`, `["object", ...]`, ...); `child` decodes a
/// child from its JSON: an index into the node table (version 2) or the nested value (version 1).
fn decode_tagged(
    tag: &str,
    a: &[Json],
    tensors: &IndexMap<String, Tensor>,
    child: &mut dyn FnMut(&Json) -> Res<Value>,
) -> Res<Value> {
    let s = |i: usize| {
        a.get(i)
            .and_then(Json::as_str)
            .ok_or(format!("'{tag}' lacks field {i}"))
    };
    let hex = |i: usize| s(i).and_then(|h| hex::decode(h).map_err(|e| e.to_string()));
    Ok(match tag {
        "int" => Value::Int(a.get(1).and_then(Json::as_i64).ok_or("bad int")?),
        "bigint" => Value::BigInt(hex(1)?),
        "float" => Value::Float(s(1)?.parse().map_err(|_| "bad float")?),
        "bytes" => Value::Bytes(hex(1)?),
        "list" => Value::List(children(a.get(1), child)?),
        "tuple" => Value::Tuple(children(a.get(1), child)?),
        "dict" => {
            let mut d = if a.get(1).and_then(Json::as_str) == Some("ordered") {
                Dict::ordered()
            } else {
                Dict::new()
            };
            for item in a
                .get(2)
                .and_then(Json::as_array)
                .ok_or("dict without items")?
            {
                let pair = item
                    .as_array()
                    .filter(|p| p.len() == 2)
                    .ok_or("bad dict item")?;
                let key = match &pair[0] {
                    Json::String(s) => Key::Str(s.clone()),
                    Json::Number(n) => Key::Int(n.as_i64().ok_or("bad int key")?),
                    _ => return Err("bad dict key".into()),
                };
                let value = child(&pair[1])?;
                d.entries.insert(key, value);
            }
            if let Some(state) = a.get(3).filter(|s| !s.is_null()) {
                d.state = Some(Box::new(child(state)?));
            }
            Value::Dict(d)
        }
        "tensor" => {
            let name = s(1)?;
            let mut t = tensors
                .get(name)
                .cloned()
                .ok_or(format!("tensor '{name}' is missing"))?;
            t.requires_grad = a.get(2).and_then(Json::as_bool).unwrap_or(false);
            t.parameter = a.get(3).and_then(Json::as_bool).unwrap_or(false);
            Value::Tensor(t)
        }
        "object" => {
            let c = a
                .get(3)
                .and_then(Json::as_array)
                .ok_or("bad object construct")?;
            let construct = match c.first().and_then(Json::as_str) {
                Some("global") => Construct::Global,
                Some("reduce") => Construct::Reduce(children(c.get(1), child)?),
                Some("newobj") => Construct::NewObj(children(c.get(1), child)?),
                _ => return Err("bad object construct".into()),
            };
            let state = match a.get(4) {
                None | Some(Json::Null) => None,
                Some(j) => Some(child(j)?),
            };
            let list_items = children(a.get(5), child)?;
            let dict_items = a
                .get(6)
                .and_then(Json::as_array)
                .ok_or("bad object items")?
                .iter()
                .map(|p| {
                    let p = p
                        .as_array()
                        .filter(|p| p.len() == 2)
                        .ok_or("bad object item")?;
                    Ok((child(&p[0])?, child(&p[1])?))
                })
                .collect::<Res<Vec<_>>>()?;
            Value::Object(Box::new(Object {
                module: s(1)?.to_owned(),
                name: s(2)?.to_owned(),
                construct,
                state,
                list_items,
                dict_items,
            }))
        }
        _ => return Err(format!("unknown tag '{tag}'")),
    })
}

/// A JSON list of children, decoded in order.
fn children(j: Option<&Json>, child: &mut dyn FnMut(&Json) -> Res<Value>) -> Res<Vec<Value>> {
    let items = j.and_then(Json::as_array).ok_or("expected a list")?;
    items.iter().map(child).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_other_writers_read_as_a_flat_dict() {
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &data).unwrap();
        let bytes = safetensors::serialize([("w", view)], None).unwrap();
        let back = read(&Bytes::from(bytes)).unwrap();
        let Some(Value::Tensor(t)) = back.get_path(&["w"]) else {
            panic!("{back:?}")
        };
        assert_eq!(t.shape, vec![2]);
        assert_eq!(&t.storage.bytes()[..], &data[..]);
    }

    /// Files from cairn before the node table (version 1: the tree nested in the JSON) still read,
    /// through the same tag decoding as the table.
    #[test]
    fn the_nested_tree_of_earlier_files_still_reads() {
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &data).unwrap();
        let tree = r#"["dict", "ordered", [
            ["w", ["tensor", "t0", true, false]],
            [3, ["tuple", [["int", -4], ["bytes", "0102"]]]],
            ["o", ["object", "m", "n", ["reduce", [["list", []]]], ["float", "0.5"], [], []]]
        ], null]"#;
        let meta = HashMap::from([(TREE_KEY.to_owned(), tree.to_owned())]);
        let bytes = safetensors::serialize([("t0", view)], Some(meta)).unwrap();
        let back = read(&Bytes::from(bytes)).unwrap();
        let Some(Value::Tensor(t)) = back.get_path(&["w"]) else {
            panic!("{back:?}")
        };
        assert!(t.requires_grad && !t.parameter);
        assert_eq!(&t.storage.bytes()[..], &data[..]);
        let Value::Dict(d) = &back else {
            panic!("{back:?}")
        };
        assert_eq!(
            d.entries.get(&Key::Int(3)),
            Some(&Value::Tuple(vec![
                Value::Int(-4),
                Value::Bytes(vec![1, 2])
            ]))
        );
        let Some(Value::Object(o)) = back.get_path(&["o"]) else {
            panic!("{back:?}")
        };
        assert_eq!((o.module.as_str(), o.name.as_str()), ("m", "n"));
        assert_eq!(o.construct, Construct::Reduce(vec![Value::List(vec![])]));
        assert_eq!(o.state, Some(Value::Float(0.5)));
    }

    #[test]
    fn strided_views_are_packed() {
        let t = Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let mut tr = t.clone();
        tr.stride = vec![1, 2];
        let b = dense_bytes(&tr).unwrap();
        let vals: Vec<f32> = b
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn tree_round_trips_through_metadata() {
        let tree = Value::Dict(
            Dict::new()
                .with(
                    "state",
                    Dict::new().with(
                        "model",
                        Dict::ordered().with("w", Tensor::from_f32(vec![2], &[1.0, 2.0])),
                    ),
                )
                .with("f", Value::Float(f64::NAN.copysign(1.0)))
                .with(
                    3,
                    Value::Tuple(vec![Value::Int(i64::MIN), Value::Bytes(vec![1, 2])]),
                ),
        );
        let mut buf = Vec::new();
        write(&tree, &mut buf).unwrap();
        let back = read(&Bytes::from(buf)).unwrap();
        let d = back.as_dict().unwrap();
        assert!(matches!(d.get("f"), Some(Value::Float(x)) if x.is_nan()));
        assert_eq!(
            back.get_path(&["state", "model", "w"]),
            tree.get_path(&["state", "model", "w"])
        );
        assert_eq!(back.get_path(&["3"]), tree.get_path(&["3"]));
    }
}
