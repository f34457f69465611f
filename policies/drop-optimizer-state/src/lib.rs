//! Drop the optimizer state of parameters whose name starts with a configured prefix
//! (e.g. a frozen encoder): every entry below
//! `…/optimizers/<optimizer>/state/<parameter>/…` with `<parameter>` starting with `prefix`.
//! A `state` dict left empty is kept as an empty dict, as Composer's glob removal leaves it.

use std::sync::Mutex;

wit_bindgen::generate!({
    path: "../../wit",
    world: "cairn:policy/state-dict-filter",
    additional_derives: [PartialEq],
});

use cairn::policy::types::{Entry, Leaf, Segment};

static PREFIX: Mutex<String> = Mutex::new(String::new());

/// Where the optimizer-state dict of a path is, and whether the path's parameter matches.
fn optimizer_state(path: &[Segment], prefix: &str) -> Option<(usize, bool)> {
    (0..path.len().saturating_sub(3)).find_map(|i| match (&path[i], &path[i + 2], &path[i + 3]) {
        (Segment::Key(o), Segment::Key(s), param) if o == "optimizers" && s == "state" => {
            let name = match param {
                Segment::Key(k) => k.clone(),
                Segment::IntKey(k) => k.to_string(),
                Segment::Index(k) => k.to_string(),
            };
            Some((i + 3, name.starts_with(prefix)))
        }
        _ => None,
    })
}

struct DropOptimizerState;

impl Guest for DropOptimizerState {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut prefix = PREFIX.lock().map_err(|_| "state poisoned".to_string())?;
        for (key, value) in config {
            match key.as_str() {
                "prefix" if !value.is_empty() => *prefix = value,
                "prefix" => {
                    return Err(
                        "prefix must not be empty (that would drop all optimizer state)".into(),
                    );
                }
                other => {
                    return Err(format!(
                        "unknown config key '{other}' (this policy takes 'prefix')"
                    ));
                }
            }
        }
        if prefix.is_empty() {
            return Err("config key 'prefix' is required".into());
        }
        Ok(())
    }

    fn filter(state_dict: Vec<Entry>) -> Result<Vec<Entry>, String> {
        let prefix = PREFIX
            .lock()
            .map_err(|_| "state poisoned".to_string())?
            .clone();
        let mut kept = Vec::with_capacity(state_dict.len());
        // State dicts that lost entries, and whether any entry of theirs survived.
        let mut emptied: Vec<(Vec<Segment>, bool)> = Vec::new();
        for entry in state_dict {
            match optimizer_state(&entry.path, &prefix) {
                Some((param_at, drop)) => {
                    let parent = entry.path[..param_at].to_vec();
                    match emptied.iter_mut().find(|(p, _)| *p == parent) {
                        Some((_, survived)) => *survived |= !drop,
                        None => emptied.push((parent, !drop)),
                    }
                    if !drop {
                        kept.push(entry);
                    }
                }
                None => kept.push(entry),
            }
        }
        for (path, survived) in emptied {
            if !survived {
                kept.push(Entry {
                    path,
                    leaf: Leaf::EmptyDict,
                });
            }
        }
        Ok(kept)
    }
}

export!(DropOptimizerState);
