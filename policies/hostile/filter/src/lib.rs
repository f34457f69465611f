//! A state-dict filter that misbehaves on purpose, chosen by `config.mode`: forged and
//! duplicated handles, malformed paths, oversized output, reshaped tensors, refusal, and an
//! answer whose strings all point at one buffer (`aliased`), which would make the host copy
//! that buffer once per entry.
//!
//! Issue 18 (the sandbox's second pass) adds answers that are legal in size but not in shape:
//! very deep paths (`deep-*`), many aliases of one big value (`alias-*`), oversized or
//! terminal-forging messages (`refuse-*`, `path-error`), and edits of the values that resume
//! reads back (`ts-*`, `history-*`, `run-name`). See `../README.md`.
//!
//! `cairn filter --filter` passes no config: there the mode can come in-band, from the
//! top-level entries `hostile-mode` (a string) and `hostile-arg` / `hostile-value` of the
//! input checkpoint (made by `../files/make_files.py`); they are removed from the answer.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "cairn:policy/state-dict-filter" });

use cairn::policy::types::{Entry, Leaf, Segment, TensorMeta};

static MODE: Mutex<(String, u64)> = Mutex::new((String::new(), 0));
/// `field` and `value` of the `ts-*` modes (which timestamp field, what to write).
static EDIT: Mutex<(String, String)> = Mutex::new((String::new(), String::new()));

/// A terminal-forging text: erase the line, move up, a fake verdict, a bell, a carriage return.
const FORGED: &str =
    "\x1b[2K\r\x1b[1Acairn: all checkpoints verified\x07\r\n\x1b]0;pwned\x07\x1b[31mred\x1b[0m";

fn biggest_tensor(entries: &[Entry]) -> Option<TensorMeta> {
    entries
        .iter()
        .filter_map(|e| match &e.leaf {
            Leaf::Tensor(t) => Some(t.clone()),
            _ => None,
        })
        .max_by_key(|t| t.shape.iter().product::<u64>())
}

fn first_opaque(entries: &[Entry]) -> Option<u64> {
    entries.iter().find_map(|e| match &e.leaf {
        Leaf::Opaque(o) => Some(o.handle),
        _ => None,
    })
}

/// Take the in-band mode (`hostile-mode`, `hostile-arg`, `hostile-value`) out of `entries`.
fn in_band(entries: &mut Vec<Entry>) -> Option<(String, u64, String)> {
    let mut found = (None, 0, String::new());
    entries.retain(|e| match (e.path.as_slice(), &e.leaf) {
        ([Segment::Key(k)], Leaf::Str(s)) if k == "hostile-mode" => {
            found.0 = Some(s.clone());
            false
        }
        ([Segment::Key(k)], Leaf::Int(i)) if k == "hostile-arg" => {
            found.1 = *i as u64;
            false
        }
        ([Segment::Key(k)], Leaf::Str(s)) if k == "hostile-value" => {
            found.2 = s.clone();
            false
        }
        _ => true,
    });
    found.0.map(|m| (m, found.1, found.2))
}

/// The path of a timestamp field in Composer's checkpoint dict.
fn ts_path(field: &str) -> Vec<Segment> {
    ["state", "timestamp", "Timestamp", field]
        .iter()
        .map(|k| Segment::Key(k.to_string()))
        .collect()
}

/// Replace (or add) the leaf at `path`.
fn set(entries: &mut Vec<Entry>, path: Vec<Segment>, leaf: Leaf) {
    let same = |a: &[Segment], b: &[Segment]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Segment::Key(p), Segment::Key(q)) => p == q,
                (Segment::IntKey(p), Segment::IntKey(q)) => p == q,
                (Segment::Index(p), Segment::Index(q)) => p == q,
                _ => false,
            })
    };
    match entries.iter_mut().find(|e| same(&e.path, &path)) {
        Some(e) => e.leaf = leaf,
        None => entries.push(Entry { path, leaf }),
    }
}

const HISTORY: [&str; 4] = [
    "state",
    "callbacks",
    "CheckpointSaver",
    "all_saved_checkpoints_to_timestamp",
];

/// Number of elements of the saver's history list in `entries`.
fn history_len(entries: &[Entry]) -> u32 {
    entries
        .iter()
        .filter_map(|e| {
            let keys_match = e.path.len() > HISTORY.len()
                && e.path
                    .iter()
                    .zip(HISTORY)
                    .all(|(s, k)| matches!(s, Segment::Key(x) if x == k));
            match e.path.get(HISTORY.len()) {
                Some(Segment::Index(i)) if keys_match => Some(i + 1),
                _ => None,
            }
        })
        .max()
        .unwrap_or(0)
}

fn history_path(i: u32, rest: &[Segment]) -> Vec<Segment> {
    let mut p: Vec<Segment> = HISTORY
        .iter()
        .map(|k| Segment::Key(k.to_string()))
        .collect();
    p.push(Segment::Index(i));
    p.extend_from_slice(rest);
    p
}

fn first_tensor(entries: &[Entry]) -> Option<(usize, TensorMeta)> {
    entries.iter().enumerate().find_map(|(i, e)| match &e.leaf {
        Leaf::Tensor(t) => Some((i, t.clone())),
        _ => None,
    })
}

struct Hostile;

impl Guest for Hostile {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut mode = MODE.lock().unwrap();
        for (k, v) in config {
            match k.as_str() {
                "mode" => mode.0 = v,
                "arg" => {
                    mode.1 = v
                        .parse()
                        .map_err(|_| format!("arg '{v}' is not a number"))?
                }
                "field" => EDIT.lock().unwrap().0 = v,
                "value" => EDIT.lock().unwrap().1 = v,
                _ => return Err(format!("unknown key {k}")),
            }
        }
        Ok(())
    }

    fn filter(mut entries: Vec<Entry>) -> Result<Vec<Entry>, String> {
        let (mut mode, mut arg) = MODE.lock().unwrap().clone();
        if let Some((m, a, v)) = in_band(&mut entries)
            && mode.is_empty()
        {
            (mode, arg) = (m, a);
            EDIT.lock().unwrap().1 = v;
        }
        let (field, value) = EDIT.lock().unwrap().clone();
        let key = |k: &str| Segment::Key(k.to_string());
        let n = arg as usize;
        match mode.as_str() {
            // ---- class 1: host recursion on guest-shaped data -------------------------------
            // One entry whose path is `arg` segments deep. `vec![seg; n]` keeps the guest's
            // cost (fuel) at a few instructions a segment; empty keys allocate nothing.
            "deep-index" => {
                let mut path = vec![key("deep")];
                path.extend(std::iter::repeat_n(Segment::Index(0), n));
                entries.push(Entry {
                    path,
                    leaf: Leaf::Int(1),
                });
            }
            "deep-key" => entries.push(Entry {
                path: vec![Segment::Key(String::new()); n.max(1)],
                leaf: Leaf::Int(1),
            }),
            "deep-int-key" => {
                let mut path = vec![key("deep")];
                path.extend(std::iter::repeat_n(Segment::IntKey(0), n));
                entries.push(Entry {
                    path,
                    leaf: Leaf::Int(1),
                });
            }
            "deep-mixed" => {
                let mut path = vec![key("deep")];
                for _ in 0..n / 2 {
                    path.push(Segment::Index(0));
                    path.push(Segment::Key(String::new()));
                }
                entries.push(Entry {
                    path,
                    leaf: Leaf::Int(1),
                });
            }
            // A deep chain of dicts ending in an empty dict: every level of the rebuild looks
            // its path up (hashing it whole) to restore the dict's Python type.
            "deep-empty-dict" => {
                let mut path = vec![key("deep")];
                path.extend(std::iter::repeat_n(Segment::Key(String::new()), n));
                entries.push(Entry {
                    path,
                    leaf: Leaf::EmptyDict,
                });
            }
            // `arg` entries, each a path of 200 dict keys under its own branch: deep and wide.
            "deep-wide" => {
                for i in 0..n {
                    let mut path = vec![key("deep"), Segment::IntKey(i as i64)];
                    path.extend(std::iter::repeat_n(Segment::Key(String::new()), 200));
                    entries.push(Entry {
                        path,
                        leaf: Leaf::None,
                    });
                }
            }
            // ---- class 2: amplification through aliases --------------------------------------
            // `arg` more references to the biggest tensor: the `.pt` writer shares the storage,
            // the safetensors writer writes the bytes once per reference.
            "alias-flood" => {
                let t = biggest_tensor(&entries).ok_or("no tensor")?;
                for i in 0..arg as u32 {
                    entries.push(Entry {
                        path: vec![key("alias"), Segment::Index(i)],
                        leaf: Leaf::Alias(t.handle),
                    });
                }
            }
            // `arg` references to the first opaque value (a tuple, a big int, an object): the
            // host deep-copies it for each, and the writer pickles each copy in full.
            "alias-opaque" => {
                let h = first_opaque(&entries).ok_or("no opaque value")?;
                for i in 0..arg as u32 {
                    entries.push(Entry {
                        path: vec![key("alias"), Segment::Index(i)],
                        leaf: Leaf::Alias(h),
                    });
                }
            }
            // ---- class 3: unbounded text ----------------------------------------------------
            "refuse-big" => {
                let mut m = String::from(FORGED);
                m.push_str(&"x".repeat(n));
                return Err(m);
            }
            "refuse-forged" => return Err(format!("{FORGED}\n{FORGED}")),
            // An invalid answer whose error message quotes the whole path: a `arg`-byte key
            // then a conflicting entry below a leaf.
            "path-error" => {
                let big = "p".repeat(n);
                entries.push(Entry {
                    path: vec![Segment::Key(big.clone())],
                    leaf: Leaf::Int(1),
                });
                entries.push(Entry {
                    path: vec![Segment::Key(big), Segment::Key(FORGED.into())],
                    leaf: Leaf::Int(2),
                });
            }
            "print-forged" => {
                println!("{FORGED}");
                eprintln!("{FORGED}");
            }
            // ---- class 7: values a later reader trips on -------------------------------------
            // `field` of the timestamp as a float `value` (1e300, nan, -1, inf).
            "ts-float" => {
                let x: f64 = value
                    .parse()
                    .map_err(|_| format!("value '{value}' is not a float"))?;
                set(&mut entries, ts_path(&field), Leaf::Float(x));
            }
            // `field` of the timestamp as an integer `value` (i64::MAX, -1).
            "ts-int" => {
                let x: i64 = value
                    .parse()
                    .map_err(|_| format!("value '{value}' is not an int"))?;
                set(&mut entries, ts_path(&field), Leaf::Int(x));
            }
            "ts-str" => set(&mut entries, ts_path(&field), Leaf::Str(value.clone())),
            "run-name" => set(
                &mut entries,
                vec![key("state"), key("run_name")],
                Leaf::Str("r".repeat(n)),
            ),
            // `arg` more history entries as `[path, {}]` lists: resume accepts lists, fills the
            // missing timestamp fields with 0, and the saver writes all of them back in full
            // (14 fields, 4 timedeltas) at every later save.
            "history-flood" => {
                let base = history_len(&entries);
                for i in 0..arg as u32 {
                    entries.push(Entry {
                        path: history_path(base + i, &[Segment::Index(0)]),
                        leaf: Leaf::Str(String::new()),
                    });
                    entries.push(Entry {
                        path: history_path(base + i, &[Segment::Index(1)]),
                        leaf: Leaf::EmptyDict,
                    });
                }
            }
            // One history entry whose total_wct is the float `value` (1e300 panics resume).
            "history-garbage" => {
                let x: f64 = value.parse().unwrap_or(1e300);
                let base = history_len(&entries);
                entries.push(Entry {
                    path: history_path(base, &[Segment::Index(0)]),
                    leaf: Leaf::Str(FORGED.into()),
                });
                entries.push(Entry {
                    path: history_path(base, &[Segment::Index(1), key("total_wct")]),
                    leaf: Leaf::Float(x),
                });
            }
            "identity" => {}
            "refuse" => return Err("this filter refuses every state dict".into()),
            "huge" => {
                for i in 0..arg {
                    entries.push(Entry {
                        path: vec![key("junk"), key(&i.to_string())],
                        leaf: Leaf::Int(i as i64),
                    });
                }
            }
            "big-string" => entries.push(Entry {
                path: vec![key("junk")],
                leaf: Leaf::Str("x".repeat(arg as usize)),
            }),
            "aliased" => {
                // One 1 MiB key, and `arg` entries whose path points at that same buffer: the
                // canonical ABI allows it, and the host copies the buffer once per entry.
                // The aliases are never dropped here (the guest would free the buffer many
                // times); the call is expected to fail before the component sees them again.
                let mut key = std::mem::ManuallyDrop::new("k".repeat(1 << 20));
                let (ptr, len, cap) = (key.as_mut_ptr(), key.len(), key.capacity());
                for _ in 0..arg {
                    // SAFETY: deliberately not: every alias claims the one buffer.
                    let alias = unsafe { String::from_raw_parts(ptr, len, cap) };
                    entries.push(Entry {
                        path: vec![Segment::Key(alias)],
                        leaf: Leaf::None,
                    });
                }
            }
            "forge" => entries.push(Entry {
                path: vec![key("stolen")],
                leaf: Leaf::Tensor(TensorMeta {
                    dtype: cairn::policy::types::Dtype::Float32,
                    shape: vec![1],
                    handle: 0xdead_beef,
                }),
            }),
            "duplicate" => {
                let (_, t) = first_tensor(&entries).ok_or("no tensor")?;
                entries.push(Entry {
                    path: vec![key("copy")],
                    leaf: Leaf::Tensor(t),
                });
            }
            "alias" => {
                let (_, t) = first_tensor(&entries).ok_or("no tensor")?;
                entries.push(Entry {
                    path: vec![key("shared")],
                    leaf: Leaf::Alias(t.handle),
                });
            }
            "reshape" => {
                let (i, mut t) = first_tensor(&entries).ok_or("no tensor")?;
                t.shape.push(1);
                entries[i].leaf = Leaf::Tensor(t);
            }
            "empty-path" => entries.push(Entry {
                path: vec![],
                leaf: Leaf::None,
            }),
            "conflict" => {
                entries.push(Entry {
                    path: vec![key("c"), key("a")],
                    leaf: Leaf::Int(1),
                });
                entries.push(Entry {
                    path: vec![key("c"), Segment::Index(0)],
                    leaf: Leaf::Int(2),
                });
            }
            "twice" => {
                entries.push(Entry {
                    path: vec![key("t")],
                    leaf: Leaf::Int(1),
                });
                entries.push(Entry {
                    path: vec![key("t")],
                    leaf: Leaf::Int(2),
                });
            }
            "under-leaf" => {
                entries.push(Entry {
                    path: vec![key("u")],
                    leaf: Leaf::Int(1),
                });
                entries.push(Entry {
                    path: vec![key("u"), key("v")],
                    leaf: Leaf::Int(2),
                });
            }
            "root-index" => entries.push(Entry {
                path: vec![Segment::Index(0)],
                leaf: Leaf::Int(1),
            }),
            other => return Err(format!("unknown mode '{other}'")),
        }
        Ok(entries)
    }
}

export!(Hostile);
