//! The built-in `ignore_keys`: Composer's glob rules (reference §8.2).
//!
//! Every node of the tree, interior and leaf, has a path: segments joined with `/`, dict keys
//! as `str(key)`, elements of non-empty lists by index; tuples, empty lists and empty dicts are
//! leaves. A pattern is matched with POSIX `fnmatch` against every path (`*` crosses `/`,
//! case-sensitive, no implicit prefix), and each match removes that node's whole subtree. Unlike
//! Composer, removal walks the tree by segments rather than re-splitting strings, so a key that
//! contains `/` is removed correctly instead of raising `KeyError`.

use std::collections::BTreeMap;

use regex::Regex;
use thiserror::Error;

use crate::error::PolicyError;
use crate::policy::{Filtered, KeyFilter};
#[cfg(test)]
use cairn_format::state_dict::Dict;
use cairn_format::state_dict::{Key, Value};

/// A glob that is not a valid pattern.
#[derive(Debug, Error)]
#[error("invalid ignore_keys pattern '{pattern}': {reason}")]
pub struct GlobError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

/// One `fnmatch` pattern.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    regex: Regex,
}

impl Glob {
    /// Compile `pattern` with Python's `fnmatch.translate` rules.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let regex = Regex::new(&translate(pattern)).map_err(|e| GlobError {
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Glob {
            pattern: pattern.to_owned(),
            regex,
        })
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Does the whole `path` match?
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

/// `fnmatch.translate`: `*` → `.*`, `?` → `.`, `[...]`/`[!...]` classes (a `]` right after the
/// opening bracket is literal; an unclosed `[` is a literal bracket), everything else literal.
fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("(?s)^");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
                re.push_str(".*");
            }
            '?' => re.push('.'),
            '[' => {
                let mut j = i;
                if chars.get(j) == Some(&'!') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    re.push_str(r"\[");
                    continue;
                }
                let mut body: String = chars[i..j].iter().collect();
                i = j + 1;
                let negate = body.starts_with('!');
                if negate {
                    body.remove(0);
                }
                let mut class = String::from(if negate { "[^" } else { "[" });
                for ch in body.chars() {
                    match ch {
                        '\\' | '[' | ']' | '&' | '~' | '|' | '^' => {
                            class.push('\\');
                            class.push(ch);
                        }
                        _ => class.push(ch),
                    }
                }
                class.push(']');
                re.push_str(&class);
            }
            _ => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    re
}

/// One segment of a node's path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Key(Key),
    Index(usize),
}

impl Segment {
    fn text(&self) -> String {
        match self {
            Segment::Key(k) => k.to_string(),
            Segment::Index(i) => i.to_string(),
        }
    }
}

/// Every node of `tree` with its path (the root is `""`), in depth-first order.
pub fn flatten(tree: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut |path, _| {
        out.push(join(path));
    });
    out
}

fn join(path: &[Segment]) -> String {
    path.iter().map(Segment::text).collect::<Vec<_>>().join("/")
}

fn walk(node: &Value, path: &mut Vec<Segment>, visit: &mut dyn FnMut(&[Segment], &Value)) {
    visit(path, node);
    match node {
        Value::Dict(d) => {
            for (k, v) in &d.entries {
                path.push(Segment::Key(k.clone()));
                walk(v, path, visit);
                path.pop();
            }
        }
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                walk(v, path, visit);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A `ignore_keys` glob list.
#[derive(Clone, Debug, Default)]
pub struct IgnoreGlobs {
    globs: Vec<Glob>,
}

impl IgnoreGlobs {
    /// Compile every pattern; the first invalid one is the error.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<IgnoreGlobs, GlobError> {
        let globs = patterns
            .iter()
            .map(|p| Glob::new(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(IgnoreGlobs { globs })
    }

    /// True when there is nothing to remove (`None` or `[]` in Composer).
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// Remove every node any pattern matches. Returns one warning per pattern that matched
    /// nothing, in Composer's words.
    pub fn apply(&self, tree: &mut Value) -> Vec<String> {
        let mut matched: Vec<Vec<Segment>> = Vec::new();
        let mut hits = vec![false; self.globs.len()];
        walk(tree, &mut Vec::new(), &mut |path, _| {
            if path.is_empty() {
                return;
            }
            let text = join(path);
            let mut any = false;
            for (g, hit) in self.globs.iter().zip(hits.iter_mut()) {
                if g.matches(&text) {
                    *hit = true;
                    any = true;
                }
            }
            if any {
                matched.push(path.to_vec());
            }
        });
        remove_paths(tree, &matched);
        self.globs
            .iter()
            .zip(hits)
            .filter(|(_, hit)| !hit)
            .map(|(g, _)| {
                format!(
                    "No parts from loaded checkpoint state_dict were ignored by load_ignore_key {}",
                    g.pattern()
                )
            })
            .collect()
    }
}

/// Remove `paths` from `node`: deeper removals first, then this level's, list indices from
/// the highest down so earlier removals do not shift later ones.
fn remove_paths(node: &mut Value, paths: &[Vec<Segment>]) {
    let mut remove_here = Vec::new();
    let mut recurse: BTreeMap<Segment, Vec<Vec<Segment>>> = BTreeMap::new();
    for p in paths {
        match p.as_slice() {
            [] => {}
            [only] => remove_here.push(only.clone()),
            [first, rest @ ..] => recurse
                .entry(first.clone())
                .or_default()
                .push(rest.to_vec()),
        }
    }
    for (seg, sub) in &recurse {
        if let Some(child) = child_mut(node, seg) {
            remove_paths(child, sub);
        }
    }
    remove_here.sort();
    remove_here.dedup();
    for seg in remove_here.into_iter().rev() {
        match (&mut *node, seg) {
            (Value::Dict(d), Segment::Key(k)) => {
                d.remove(&k);
            }
            (Value::List(l), Segment::Index(i)) if i < l.len() => {
                l.remove(i);
            }
            _ => {}
        }
    }
}

fn child_mut<'a>(node: &'a mut Value, seg: &Segment) -> Option<&'a mut Value> {
    match (node, seg) {
        (Value::Dict(d), Segment::Key(k)) => d.entries.get_mut(k),
        (Value::List(l), Segment::Index(i)) => l.get_mut(*i),
        _ => None,
    }
}

impl KeyFilter for IgnoreGlobs {
    fn filter(
        &mut self,
        mut tree: Value,
        warnings: &mut Vec<String>,
    ) -> Result<Filtered, PolicyError> {
        warnings.extend(self.apply(&mut tree));
        Ok(Filtered::Keep(tree))
    }

    fn describe(&self) -> String {
        let list: Vec<_> = self
            .globs
            .iter()
            .map(|g| format!("'{}'", g.pattern()))
            .collect();
        format!("[{}]", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::state_dict::Tensor;

    fn t() -> Value {
        Value::Tensor(Tensor::from_f32(vec![1], &[0.0]))
    }

    /// The input tree of reference §8.3.
    fn tree() -> Value {
        let model = Dict::ordered()
            .with("layer1.weight", t())
            .with("layer1.bias", t())
            .with("layer2.weight", t())
            .with("fc.weight", t());
        let adam = Dict::new()
            .with(
                "state",
                Dict::new()
                    .with(0, Dict::new().with("step", 1i64))
                    .with(1, Dict::new().with("step", 1i64)),
            )
            .with(
                "param_groups",
                Value::List(vec![Value::Dict(
                    Dict::new()
                        .with("lr", 0.1)
                        .with("params", Value::List(vec![Value::Int(0), Value::Int(1)])),
                )]),
            );
        let state = Dict::new()
            .with("model", model)
            .with("optimizers", Dict::new().with("Adam", adam))
            .with(
                "timestamp",
                Dict::new().with(
                    "Timestamp",
                    Dict::new().with("epoch", 1i64).with("batch", 2i64),
                ),
            )
            .with("rank_zero_seed", 42i64)
            .with(
                "callbacks",
                Dict::new().with(
                    "CheckpointSaver",
                    Dict::new().with("all_saved_checkpoints_to_timestamp", Value::List(vec![])),
                ),
            )
            .with("empty", Dict::new());
        let rng = |_| Value::Dict(Dict::new().with("python", 1i64).with("torch", t()));
        Value::Dict(
            Dict::new()
                .with("state", state)
                .with("rng", Value::List((0..2).map(rng).collect())),
        )
    }

    fn leaves(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        walk(v, &mut Vec::new(), &mut |path, node| {
            let leaf = match node {
                Value::Dict(d) => d.is_empty(),
                Value::List(l) => l.is_empty(),
                _ => true,
            };
            if leaf && !path.is_empty() {
                out.push(join(path));
            }
        });
        out
    }

    fn removed(patterns: &[&str]) -> (Vec<String>, Vec<String>) {
        let before = leaves(&tree());
        let mut after_tree = tree();
        let warnings = IgnoreGlobs::new(patterns).unwrap().apply(&mut after_tree);
        let after = leaves(&after_tree);
        let gone = before.into_iter().filter(|l| !after.contains(l)).collect();
        (gone, warnings)
    }

    #[test]
    fn composer_vectors() {
        let weights = ["state/model/layer1.weight", "state/model/layer2.weight"];
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (
                vec!["state/model/layer1.weight"],
                vec!["state/model/layer1.weight"],
            ),
            (vec!["state/model/layer*.weight"], weights.to_vec()),
            (vec!["state/model/layer?.weight"], weights.to_vec()),
            (
                vec!["state/model/[lf]*.weight"],
                vec![
                    "state/model/layer1.weight",
                    "state/model/layer2.weight",
                    "state/model/fc.weight",
                ],
            ),
            (vec!["state/model/[!l]*"], vec!["state/model/fc.weight"]),
            (vec!["rng/*/torch"], vec!["rng/0/torch", "rng/1/torch"]),
            (vec!["*/torch"], vec!["rng/0/torch", "rng/1/torch"]),
            (
                vec!["state/optimizers/Adam/state/0"],
                vec!["state/optimizers/Adam/state/0/step"],
            ),
            (
                vec!["state/optimizers/*/param_groups/0/lr"],
                vec!["state/optimizers/Adam/param_groups/0/lr"],
            ),
            (vec!["state/empty"], vec!["state/empty"]),
        ];
        for (patterns, want) in cases {
            let (gone, warnings) = removed(&patterns);
            assert_eq!(gone, want, "{patterns:?}");
            assert!(warnings.is_empty(), "{patterns:?}");
        }
    }

    #[test]
    fn interior_matches_remove_subtrees() {
        let mut v = tree();
        IgnoreGlobs::new(&["state/model/*"]).unwrap().apply(&mut v);
        assert_eq!(
            v.get_path(&["state", "model"]),
            Some(&Value::Dict(Dict::ordered()))
        );

        for p in ["state/model", "state/mod*"] {
            let mut v = tree();
            IgnoreGlobs::new(&[p]).unwrap().apply(&mut v);
            assert!(v.get_path(&["state", "model"]).is_none(), "{p}");
            assert!(v.get_path(&["state", "optimizers"]).is_some(), "{p}");
        }

        let mut v = tree();
        IgnoreGlobs::new(&["*weight"]).unwrap().apply(&mut v);
        assert!(!leaves(&v).iter().any(|l| l.ends_with("weight")));
        assert!(v.get_path(&["state", "model", "layer1.bias"]).is_some());
    }

    #[test]
    fn list_indices_are_removed_high_to_low() {
        let mut v = tree();
        IgnoreGlobs::new(&["rng/0"]).unwrap().apply(&mut v);
        assert!(matches!(v.get_path(&["rng"]), Some(Value::List(l)) if l.len() == 1));
        let mut v = tree();
        IgnoreGlobs::new(&["rng/0", "rng/1"]).unwrap().apply(&mut v);
        assert_eq!(v.get_path(&["rng"]), Some(&Value::List(vec![])));
        let mut v = tree();
        IgnoreGlobs::new(&["rng"]).unwrap().apply(&mut v);
        assert!(v.get_path(&["rng"]).is_none());
    }

    #[test]
    fn whole_tree_and_subtrees() {
        let mut v = tree();
        IgnoreGlobs::new(&["*"]).unwrap().apply(&mut v);
        assert_eq!(v, Value::Dict(Dict::new()), "the saver puts `state` back");

        let mut v = tree();
        IgnoreGlobs::new(&["state/*"]).unwrap().apply(&mut v);
        assert_eq!(v.get_path(&["state"]), Some(&Value::Dict(Dict::new())));
        assert!(matches!(v.get_path(&["rng"]), Some(Value::List(l)) if l.len() == 2));

        let mut v = tree();
        IgnoreGlobs::new(&["state/rank_zero_seed", "rng"])
            .unwrap()
            .apply(&mut v);
        assert!(
            v.get_path(&["state", "rank_zero_seed"]).is_none() && v.get_path(&["rng"]).is_none()
        );

        let mut v = tree();
        IgnoreGlobs::new(&["state/timestamp/Timestamp/epoch", "state/timestamp/*"])
            .unwrap()
            .apply(&mut v);
        assert_eq!(
            v.get_path(&["state", "timestamp"]),
            Some(&Value::Dict(Dict::new()))
        );
    }

    #[test]
    fn patterns_that_match_nothing_warn() {
        for p in [
            "state/nonexistent",
            "State/model",
            "state/model/",
            "/state/model",
        ] {
            let (gone, warnings) = removed(&[p]);
            assert!(gone.is_empty(), "{p}");
            assert_eq!(warnings.len(), 1, "{p}");
            assert!(warnings[0].ends_with(p));
        }
        let (gone, warnings) = removed(&[]);
        assert!(gone.is_empty() && warnings.is_empty());
    }

    #[test]
    fn flatten_lists_every_node() {
        let v = Value::Dict(
            Dict::new()
                .with("a", Value::List(vec![Value::Int(1)]))
                .with("e", Value::List(vec![])),
        );
        assert_eq!(flatten(&v), vec!["", "a", "a/0", "e"]);
    }

    #[test]
    fn fnmatch_translation() {
        let g = |p: &str, s: &str| Glob::new(p).unwrap().matches(s);
        assert!(g("a*c", "a/b/c"));
        assert!(g("[]]x", "]x"));
        assert!(g("[!]]x", "ax"));
        assert!(g("a[", "a["));
        assert!(!g("a.c", "abc"));
        assert!(g("a?c", "a.c"));
        assert!(g("[a-c]z", "bz"));
    }
}
