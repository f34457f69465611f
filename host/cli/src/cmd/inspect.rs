//! `cairn inspect FILE [--json]`: one entry per leaf of the checkpoint tree.
//!
//! Paths follow Composer's convention: `/` between segments, dict keys as `str(key)`, list
//! elements by index; non-empty dicts and lists are descended into, while empty dicts/lists,
//! tuples and everything else are leaves. Fields per kind (the JSON contract, additive only):
//! - every entry: `path`, `kind`;
//! - `tensor`: `dtype`, `shape`, `nbytes` (bytes of the view, numel × element size);
//! - `int`, `float`, `bool`, `str`: `value` (ints beyond 64 bits as a decimal string; a
//!   non-finite float as the string `nan`, `inf` or `-inf`);
//! - `bytes`: `nbytes`; `tuple`: `len`; `object`: `type` (`module.name`, e.g. `datetime.timedelta`);
//! - `none` and empty `dict`/`list`: nothing more;
//! - an int too long to print in decimal (over [`MAX_DECIMAL_BYTES`] bytes, ~2,500 digits):
//!   `value` null and `bits`, its width;
//! - a value that appears in several places (one Python object referenced twice, a
//!   [`Value::Shared`]): listed in full where it is first met, and elsewhere as one entry of
//!   its kind with `shared`, the path where it was first listed. So a file whose pickle
//!   references a list that references the previous list twice, forty times over, lists about
//!   eighty entries, not 2^40.
//!
//! A path longer than 4 KiB (absurd keys nested deep) is printed as its start, `…` and its end,
//! with `path_bytes` giving its real length.
//!
//! The JSON object also has `named`: the format the file's name selects (`null` if none); when
//! it differs from `format` (the content), a note says so on stderr.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value as Json, json};

use super::read::ReadArgs;
use crate::out::printable;
use cairn::format::state_dict::Construct;
use cairn::format::{Key, Object, Value};

/// Arguments of `cairn inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint file.
    file: PathBuf,
    /// Print JSON: {"format":..., "named":..., "entries":[...]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    read: ReadArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let read = args.read.read(&args.file)?;
    let format = read.report.format;
    let entries = leaves(&read.tree);
    let mut out = std::io::stdout().lock();
    if args.json {
        let named = read.report.named.map(|n| n.name());
        let doc = json!({"format": format.name(), "named": named, "entries": entries});
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, format.name(), &entries)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One segment of a path: a dict key or a list index.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a Key),
    Index(usize),
}

impl fmt::Display for Seg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) => write!(f, "{k}"),
            Seg::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Longest path printed whole, in bytes; a longer one (keys of megabytes nested hundreds deep
/// would make one path of gigabytes) is printed as its start, `…`, and its end, with
/// `path_bytes` giving its real length.
const MAX_PATH_BYTES: usize = 4096;

/// The current path as formatted segments, each formatted once when the walk enters it.
#[derive(Default)]
struct PathStack {
    parts: Vec<String>,
    /// Bytes of the path up to and including each part, with the `/` separators.
    lens: Vec<usize>,
}

impl PathStack {
    fn truncate(&mut self, depth: usize) {
        self.parts.truncate(depth);
        self.lens.truncate(depth);
    }

    fn push(&mut self, seg: Seg<'_>) {
        let part = seg.to_string();
        let len = match self.lens.last() {
            Some(n) => n + 1 + part.len(),
            None => part.len(),
        };
        self.parts.push(part);
        self.lens.push(len);
    }

    /// The path joined with `/`, shortened past [`MAX_PATH_BYTES`] (work bounded by that,
    /// not by the path): the text and, if shortened, the full length.
    fn text(&self) -> (String, Option<usize>) {
        let len = self.lens.last().copied().unwrap_or(0);
        if len <= MAX_PATH_BYTES {
            return (self.parts.join("/"), None);
        }
        let half = MAX_PATH_BYTES / 2;
        let mut head = String::new();
        'head: for (i, part) in self.parts.iter().enumerate() {
            let sep = (i > 0).then_some('/');
            for c in sep.into_iter().chain(part.chars()) {
                if head.len() >= half {
                    break 'head;
                }
                head.push(c);
            }
        }
        let mut tail: Vec<char> = Vec::new();
        let mut tail_len = 0;
        'tail: for (i, part) in self.parts.iter().enumerate().rev() {
            let sep = (i > 0).then_some('/');
            for c in part.chars().rev().chain(sep) {
                if tail_len >= half {
                    break 'tail;
                }
                tail_len += c.len_utf8();
                tail.push(c);
            }
        }
        let tail: String = tail.into_iter().rev().collect();
        (format!("{head}…{tail}"), Some(len))
    }
}

/// One entry per leaf, in depth-first order, walked with an explicit stack (no recursion
/// proportional to the tree's depth, and each key formatted once, never a whole path per
/// level); a shared subtree is listed once.
fn leaves(tree: &Value) -> Vec<Json> {
    let mut out = Vec::new();
    let mut first_seen: HashMap<usize, String> = HashMap::new();
    // (node, its depth, the segment that leads to it from its parent)
    let mut pending: Vec<(&Value, usize, Option<Seg<'_>>)> = vec![(tree, 0, None)];
    let mut path = PathStack::default();
    while let Some((v, depth, seg)) = pending.pop() {
        path.truncate(depth.saturating_sub(1));
        if let Some(seg) = seg {
            path.push(seg);
        }
        if let Value::Shared(s) = v {
            if let Some(first) = first_seen.get(&s.id()) {
                let mut e = entry(&path, s.get());
                if let Some(e) = e.as_object_mut() {
                    e.insert("shared".into(), json!(first));
                }
                out.push(e);
                continue;
            }
            first_seen.insert(s.id(), path.text().0);
        }
        match v.resolved() {
            Value::Dict(d) if !d.is_empty() => {
                for (k, x) in d.entries.iter().rev() {
                    pending.push((x, depth + 1, Some(Seg::Key(k))));
                }
            }
            Value::List(items) if !items.is_empty() => {
                for (i, x) in items.iter().enumerate().rev() {
                    pending.push((x, depth + 1, Some(Seg::Index(i))));
                }
            }
            leaf => out.push(entry(&path, leaf)),
        }
    }
    out
}

/// Ints longer than this many bytes are not turned into decimal (the conversion is quadratic;
/// CPython refuses `str()` of ints over 4,300 digits for the same reason).
const MAX_DECIMAL_BYTES: usize = 1024;

fn entry(path: &PathStack, v: &Value) -> Json {
    let (path, full_len) = path.text();
    let mut e = json!({"path": path, "kind": v.kind()});
    if let (Some(n), Some(e)) = (full_len, e.as_object_mut()) {
        e.insert("path_bytes".into(), json!(n));
    }
    let extra = match v {
        Value::Tensor(t) => {
            json!({"dtype": t.dtype().name(), "shape": t.shape, "nbytes": t.nbytes()})
        }
        Value::Int(i) => json!({ "value": i }),
        Value::BigInt(b) if b.len() > MAX_DECIMAL_BYTES => {
            json!({ "value": null, "bits": b.len() * 8 })
        }
        Value::BigInt(b) => json!({ "value": bigint_decimal(b) }),
        Value::Float(x) if x.is_finite() => json!({ "value": x }),
        Value::Float(x) => {
            json!({ "value": if x.is_nan() { "nan".to_owned() } else { format!("{x}") } })
        }
        Value::Bool(b) => json!({ "value": b }),
        Value::Str(s) => json!({ "value": s }),
        Value::Bytes(b) => json!({ "nbytes": b.len() }),
        Value::Tuple(items) => json!({ "len": items.len() }),
        Value::Object(o) => json!({ "type": object_type(o) }),
        _ => json!({}),
    };
    if let (Some(e), Json::Object(extra)) = (e.as_object_mut(), extra) {
        e.extend(extra);
    }
    e
}

/// The Python type an object stands for: the class for `NEWOBJ`, the array class for numpy's
/// `_reconstruct(ndarray, ...)`, else the callable's name.
fn object_type(o: &Object) -> String {
    if let (true, Construct::Reduce(args)) = (o.name == "_reconstruct", &o.construct)
        && let Some(Value::Object(cls)) = args.first()
        && cls.construct == Construct::Global
    {
        return format!("{}.{}", cls.module, cls.name);
    }
    format!("{}.{}", o.module, o.name)
}

/// Decimal text of a little-endian two's-complement integer of any width.
fn bigint_decimal(le: &[u8]) -> String {
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = le.to_vec();
    if negative {
        // Two's complement negate: invert, add one.
        let mut carry = 1u16;
        for b in &mut mag {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u16;
        for b in mag.iter_mut().rev() {
            let cur = (rem << 8) | *b as u16;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Widest a table column is padded to; longer cells run past it (and are not padded).
const MAX_COLUMN: usize = 60;

fn print_table(out: &mut impl Write, format: &str, entries: &[Json]) -> std::io::Result<()> {
    let count = crate::plural::count(entries.len() as u64, "entry", "entries");
    writeln!(out, "format: {format}, {count}")?;
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            // JSON-quoted text has its control characters escaped already; plain text is
            // escaped here, so no key or string from the file reaches the terminal raw.
            let s = |k: &str| match e.get(k) {
                Some(Json::String(text)) => printable(text).into_owned(),
                Some(Json::Null) if k == "value" => format!("<{}-bit int>", e["bits"]),
                Some(v) => printable(&v.to_string()).into_owned(),
                None => String::new(),
            };
            let mut detail = match s("kind").as_str() {
                "tensor" => format!("{} {}", s("dtype"), s("shape")),
                "object" => s("type"),
                "tuple" => format!("len {}", s("len")),
                _ => s("value"),
            };
            if e.get("shared").is_some() {
                detail = format!("shared with {}", s("shared"));
            }
            let size = e.get("nbytes").map(|n| n.to_string()).unwrap_or_default();
            [s("path"), s("kind"), detail, size]
        })
        .collect();
    let width = |i: usize, title: &str| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
            .clamp(title.len(), MAX_COLUMN)
    };
    let (w0, w1, w2) = (width(0, "PATH"), width(1, "KIND"), width(2, "DETAIL"));
    writeln!(
        out,
        "{}  {}  {}  BYTES",
        pad("PATH", w0),
        pad("KIND", w1),
        pad("DETAIL", w2)
    )?;
    for [path, kind, detail, size] in rows {
        let detail: String = detail.chars().take(MAX_COLUMN).collect();
        writeln!(
            out,
            "{}  {}  {}  {size}",
            pad(&path, w0),
            pad(&kind, w1),
            pad(&detail, w2)
        )?;
    }
    Ok(())
}

/// `s` followed by spaces up to `width` characters (a longer `s` is left as is). Done by hand:
/// a width taken from the data could exceed what `format!`'s `{:width$}` accepts.
fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = String::with_capacity(s.len() + width.saturating_sub(n));
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn::format::{Dict, Shared, Tensor};

    #[test]
    fn big_ints_print_in_decimal() {
        assert_eq!(
            bigint_decimal(&[5, 0, 0, 0, 0, 0, 0, 0, 1]),
            "18446744073709551621"
        );
        assert_eq!(bigint_decimal(&[0xFF]), "-1");
        assert_eq!(
            bigint_decimal(&[0, 0, 0, 0, 0, 0, 0, 0, 0xC0]),
            "-1180591620717411303424"
        );
    }

    #[test]
    fn leaves_follow_composer_paths() {
        let tree = Value::Dict(
            Dict::new()
                .with(
                    "state",
                    Dict::new().with(
                        "model",
                        Dict::ordered().with("fc.weight", Tensor::from_f32(vec![2], &[0.0, 1.0])),
                    ),
                )
                .with(
                    "rng",
                    Value::List(vec![Value::Dict(Dict::new()), Value::Tuple(vec![])]),
                ),
        );
        let out = leaves(&tree);
        let paths: Vec<_> = out
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(paths, ["state/model/fc.weight", "rng/0", "rng/1"]);
        assert_eq!(out[0]["nbytes"], 8);
        assert_eq!(out[1]["kind"], "dict");
    }

    #[test]
    fn shared_subtrees_are_listed_once() {
        // L0 = [1]; Li = [L(i-1), L(i-1)], 50 levels: 2^50 leaves as a tree.
        let mut level = Shared::new(Value::List(vec![Value::Int(1)]));
        for _ in 0..50 {
            level = Shared::new(Value::List(vec![level.clone().into(), level.into()]));
        }
        let tree = Value::Dict(Dict::new().with("laughs", Value::Shared(level)));
        let out = leaves(&tree);
        assert_eq!(out.len(), 51, "one leaf and one shared entry per level");
        let again = out.iter().find(|e| e["path"] == "laughs/1").unwrap();
        assert_eq!(again["kind"], "list");
        assert_eq!(again["shared"], "laughs/0");
    }

    #[test]
    fn a_deep_tree_is_walked_without_recursion() {
        let mut v = Value::Int(1);
        for _ in 0..200_000 {
            v = Value::List(vec![v]);
        }
        let out = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || leaves(&v).len())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(out, 1);
    }

    #[test]
    fn paths_of_absurd_length_are_shortened_not_built_per_leaf() {
        // 300 dicts deep, each under the same 64 KiB key, with 1,000 leaves at the bottom:
        // 19.7 MB per path, 19.7 GB if every leaf carried its path whole.
        let key = "k".repeat(64 << 10);
        let mut leaf = Dict::new();
        for i in 0..1000 {
            leaf.insert(format!("x{i}"), Value::Int(i));
        }
        let mut v = Value::Dict(leaf);
        for _ in 0..300 {
            v = Value::Dict(Dict::new().with(key.as_str(), v));
        }
        let out = leaves(&v);
        assert_eq!(out.len(), 1000);
        let path = out[999]["path"].as_str().unwrap();
        assert!(
            path.len() <= MAX_PATH_BYTES + 8 && path.ends_with("/x999"),
            "{}",
            path.len()
        );
        assert_eq!(out[999]["path_bytes"], 300 * ((64 << 10) + 1) + 4);
    }

    #[test]
    fn huge_ints_and_long_keys_do_not_stall_or_panic_the_table() {
        let tree = Value::Dict(
            Dict::new()
                .with("k".repeat(70_000).as_str(), Value::BigInt(vec![1; 1 << 20]))
                .with("a\x1b[2Jb", "x\ry"),
        );
        let start = std::time::Instant::now();
        let entries = leaves(&tree);
        assert_eq!(entries[0]["bits"], 8 << 20);
        let mut text = Vec::new();
        print_table(&mut text, "pt", &entries).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("<8388608-bit int>"), "{}", &text[..200]);
        assert!(
            text.contains("a\\x1b[2Jb") && text.contains("x\\ry"),
            "{text:.300}"
        );
        assert!(!text.contains('\x1b') && !text.contains('\r'));
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }
}
