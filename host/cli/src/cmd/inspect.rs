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
//! - `none` and empty `dict`/`list`: nothing more.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value as Json, json};

use cairn::format::state_dict::Construct;
use cairn::format::{Object, Value, format_of, read_checkpoint};

/// Arguments of `cairn inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint file.
    file: PathBuf,
    /// Print JSON: {"format":..., "entries":[...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = format_of(&args.file)?;
    let tree = read_checkpoint(&args.file)?;
    let mut entries = Vec::new();
    leaves(&tree, &mut Vec::new(), &mut entries);
    if args.json {
        println!("{}", json!({"format": format.name(), "entries": entries}));
    } else {
        print_table(format.name(), &entries);
    }
    Ok(ExitCode::SUCCESS)
}

fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Json>) {
    match v {
        Value::Dict(d) if !d.is_empty() => {
            for (k, x) in &d.entries {
                path.push(k.to_string());
                leaves(x, path, out);
                path.pop();
            }
        }
        Value::List(items) if !items.is_empty() => {
            for (i, x) in items.iter().enumerate() {
                path.push(i.to_string());
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => out.push(entry(path.join("/"), v)),
    }
}

fn entry(path: String, v: &Value) -> Json {
    let mut e = json!({"path": path, "kind": v.kind()});
    let extra = match v {
        Value::Tensor(t) => {
            json!({"dtype": t.dtype().name(), "shape": t.shape, "nbytes": t.nbytes()})
        }
        Value::Int(i) => json!({ "value": i }),
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

fn print_table(format: &str, entries: &[Json]) {
    println!(
        "format: {format}, {}",
        crate::plural::count(entries.len() as u64, "entry", "entries")
    );
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| {
                e.get(k)
                    .map(|v| v.to_string().trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let detail = match s("kind").as_str() {
                "tensor" => format!("{} {}", s("dtype"), s("shape")),
                "object" => s("type"),
                "tuple" => format!("len {}", s("len")),
                _ => s("value"),
            };
            let size = e.get("nbytes").map(|n| n.to_string()).unwrap_or_default();
            [s("path"), s("kind"), detail, size]
        })
        .collect();
    let width = |i: usize, title: &str| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let (w0, w1, w2) = (
        width(0, "PATH"),
        width(1, "KIND"),
        width(2, "DETAIL").min(60),
    );
    println!("{:w0$}  {:w1$}  {:w2$}  BYTES", "PATH", "KIND", "DETAIL");
    for [path, kind, detail, size] in rows {
        let detail: String = detail.chars().take(60).collect();
        println!("{path:w0$}  {kind:w1$}  {detail:w2$}  {size}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn::format::{Dict, Tensor};

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
        let mut out = Vec::new();
        leaves(&tree, &mut Vec::new(), &mut out);
        let paths: Vec<_> = out
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(paths, ["state/model/fc.weight", "rng/0", "rng/1"]);
        assert_eq!(out[0]["nbytes"], 8);
        assert_eq!(out[1]["kind"], "dict");
    }
}
