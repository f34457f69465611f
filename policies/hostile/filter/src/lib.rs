//! A state-dict filter that misbehaves on purpose, chosen by `config.mode`: forged and
//! duplicated handles, malformed paths, oversized output, reshaped tensors, refusal, and an
//! answer whose strings all point at one buffer (`aliased`), which would make the host copy
//! that buffer once per entry.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "cairn:policy/state-dict-filter" });

use cairn::policy::types::{Entry, Leaf, Segment, TensorMeta};

static MODE: Mutex<(String, u64)> = Mutex::new((String::new(), 0));

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
                _ => return Err(format!("unknown key {k}")),
            }
        }
        Ok(())
    }

    fn filter(mut entries: Vec<Entry>) -> Result<Vec<Entry>, String> {
        let (mode, arg) = MODE.lock().unwrap().clone();
        let key = |k: &str| Segment::Key(k.to_string());
        match mode.as_str() {
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
