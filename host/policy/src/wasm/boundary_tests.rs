//! The host boundary under random input: random state dicts survive the trip through the
//! flattened form unchanged, and random filter outputs are either accepted or rejected with
//! an error — never a panic.

use cairn_format::state_dict::{Dict, DictKind, Key, Tensor, Value};

use super::bindings::types as wit;
use super::flat::{OutputCaps, flatten, rebuild};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        "[a-z./]{0,6}".prop_map(Key::Str),
        (-3i64..40).prop_map(Key::Int),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        (-1e6f64..1e6).prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        "[ -~]{0,8}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        Just(Value::None),
        (1u64..5, 1u64..4).prop_map(|(a, b)| Value::Tensor(Tensor::from_f32(
            vec![a, b],
            &vec![1.5; (a * b) as usize]
        ))),
        proptest::collection::vec(any::<i64>().prop_map(Value::Int), 0..3).prop_map(Value::Tuple),
        Just(Value::BigInt(vec![1, 2, 3, 4, 5, 6, 7, 8, 9])),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
            (
                proptest::collection::vec((key(), inner), 0..5),
                any::<bool>()
            )
                .prop_map(|(entries, ordered)| {
                    let mut d = if ordered {
                        Dict::ordered()
                    } else {
                        Dict::new()
                    };
                    for (k, v) in entries {
                        d.insert(k, v);
                    }
                    Value::Dict(d)
                }),
        ]
    })
}

fn root() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec((key(), tree()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(entries, ordered)| {
            let mut d = Dict {
                kind: if ordered {
                    DictKind::Ordered
                } else {
                    DictKind::Plain
                },
                ..Dict::new()
            };
            for (k, v) in entries {
                d.insert(k, v);
            }
            Value::Dict(d)
        })
}

fn segment() -> impl Strategy<Value = wit::Segment> {
    prop_oneof![
        "[a-c]{0,2}".prop_map(wit::Segment::Key),
        (-1i64..3).prop_map(wit::Segment::IntKey),
        (0u32..3).prop_map(wit::Segment::Index),
    ]
}

fn wit_leaf() -> impl Strategy<Value = wit::Leaf> {
    prop_oneof![
        any::<i64>().prop_map(wit::Leaf::Int),
        Just(wit::Leaf::None),
        Just(wit::Leaf::EmptyDict),
        Just(wit::Leaf::EmptyList),
        "[a-z]{0,4}".prop_map(wit::Leaf::Str),
        (0u64..8).prop_map(wit::Leaf::Alias),
        (0u64..8, proptest::collection::vec(0u64..5, 0..3)).prop_map(|(handle, shape)| {
            wit::Leaf::Tensor(wit::TensorMeta {
                dtype: wit::Dtype::Float32,
                shape,
                handle,
            })
        }),
        (0u64..8).prop_map(|handle| wit::Leaf::Opaque(wit::OpaqueMeta {
            kind: "tuple".into(),
            description: String::new(),
            handle
        })),
    ]
}

const CAPS: OutputCaps = OutputCaps {
    max_entries: 10_000,
    max_string_bytes: 1 << 20,
    max_offered_bytes: 64 << 20,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// What the host sends, returned unchanged, rebuilds the same tree.
    #[test]
    fn state_dicts_round_trip(tree in root()) {
        let (entries, issued) = flatten(&tree, CAPS).unwrap();
        let back = rebuild(entries, issued, CAPS).unwrap();
        prop_assert_eq!(back, tree);
    }

    /// Arbitrary filter output never panics the host.
    #[test]
    fn random_filter_output_never_panics(
        tree in root(),
        out in proptest::collection::vec((proptest::collection::vec(segment(), 0..4), wit_leaf()), 0..12),
    ) {
        let (_, issued) = flatten(&tree, CAPS).unwrap();
        let entries = out.into_iter().map(|(path, leaf)| wit::Entry { path, leaf }).collect();
        let _ = rebuild(entries, issued, CAPS);
    }

    /// Dropping any subset of entries yields a tree or an error, and a tree only holds
    /// values that were sent.
    #[test]
    fn dropping_entries_never_panics(tree in root(), mask in proptest::collection::vec(any::<bool>(), 64)) {
        let (entries, issued) = flatten(&tree, CAPS).unwrap();
        let kept: Vec<_> = entries.into_iter().enumerate().filter(|(i, _)| mask[i % 64]).map(|(_, e)| e).collect();
        let n = kept.len();
        let back = rebuild(kept, issued, CAPS).unwrap();
        prop_assert!(crate::globs::flatten(&back).len() >= n.min(1));
    }
}

#[test]
fn non_dict_roots_are_an_error_not_a_panic() {
    assert!(flatten(&Value::Int(1), CAPS).is_err());
}

/// Run `f` on a thread with a 128 KiB stack: a walk that recursed once per level of a path
/// thousands of levels deep would overflow it (and abort the test binary).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn entry(path: Vec<wit::Segment>, leaf: wit::Leaf) -> wit::Entry {
    wit::Entry { path, leaf }
}

fn small_tree() -> Value {
    Value::Dict(
        Dict::ordered()
            .with("w", Tensor::from_f32(vec![2, 2], &[1.0; 4]))
            .with("t", Value::Tuple(vec![Value::Bytes(vec![7; 1000])])),
    )
}

#[test]
fn a_path_deeper_than_the_reader_allows_is_refused_by_depth_without_recursion() {
    use cairn_format::MAX_DEPTH;
    let deep = |n: usize, seg: wit::Segment| {
        let mut path = vec![wit::Segment::Key("deep".into())];
        path.extend(std::iter::repeat_n(seg, n - 1));
        path
    };
    for seg in [
        wit::Segment::Index(0),
        wit::Segment::Key(String::new()),
        wit::Segment::IntKey(0),
    ] {
        // At the limit: rebuilt (and it is MAX_DEPTH containers deep).
        let (_, issued) = flatten(&small_tree(), CAPS).unwrap();
        let ok = rebuild(
            vec![entry(deep(MAX_DEPTH, seg.clone()), wit::Leaf::Int(1))],
            issued,
            CAPS,
        );
        assert!(ok.is_ok(), "{ok:?}");
        for n in [MAX_DEPTH + 1, 20_000, 1_000_000] {
            let seg = seg.clone();
            let err = on_small_stack(move || {
                let (_, issued) = flatten(&small_tree(), CAPS).unwrap();
                rebuild(vec![entry(deep(n, seg), wit::Leaf::Int(1))], issued, CAPS)
            })
            .unwrap_err();
            let super::flat::Refusal::TooDeep { entry, depth, path } = err else {
                panic!("{err:?}")
            };
            assert_eq!((entry, depth), (0, n));
            assert!(path.len() < 200 && path.contains("more segments"), "{path}");
        }
    }
}

#[test]
fn an_opaque_value_moved_deeper_counts_its_own_depth() {
    use cairn_format::MAX_DEPTH;
    // A tuple holding a list: 2 levels of its own.
    let tree =
        Value::Dict(Dict::new().with("t", Value::Tuple(vec![Value::List(vec![Value::Int(1)])])));
    let at = |n: usize| {
        let (entries, issued) = flatten(&tree, CAPS).unwrap();
        let wit::Leaf::Opaque(meta) = &entries[0].leaf else {
            panic!()
        };
        let path = vec![wit::Segment::Key(String::new()); n];
        rebuild(
            vec![entry(path, wit::Leaf::Opaque(meta.clone()))],
            issued,
            CAPS,
        )
    };
    assert!(at(MAX_DEPTH - 2).is_ok());
    assert!(matches!(
        at(MAX_DEPTH - 1),
        Err(super::flat::Refusal::TooDeep { depth, .. }) if depth == MAX_DEPTH + 1
    ));
}

#[test]
fn aliases_count_the_bytes_they_name_against_the_cap() {
    let caps = OutputCaps {
        max_string_bytes: 10_000,
        ..CAPS
    };
    let answer = |aliases: u32| {
        let (mut entries, issued) = flatten(&small_tree(), caps).unwrap();
        let handle = |i: usize| match &entries[i].leaf {
            wit::Leaf::Tensor(t) => t.handle,
            wit::Leaf::Opaque(o) => o.handle,
            _ => panic!(),
        };
        let (w, t) = (handle(0), handle(1));
        for i in 0..aliases {
            entries.push(entry(
                vec![wit::Segment::Key("a".into()), wit::Segment::Index(i)],
                wit::Leaf::Alias(if i % 2 == 0 { t } else { w }),
            ));
        }
        rebuild(entries, issued, caps)
    };
    // The tuple weighs ~1 KB, the tensor 16 bytes: nine aliases fit in 10 000 bytes...
    let ok = answer(9).unwrap();
    let aliased = ok.get_path(&["a", "0"]).unwrap();
    assert_eq!(aliased, ok.get_path(&["t"]).unwrap());
    // ... twenty do not, whatever their keys weigh.
    let err = answer(20).unwrap_err();
    let super::flat::Refusal::TooLarge { what, key } = err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "max_filter_string_bytes");
    assert!(
        what.contains("aliased values") && what.contains("a/[1"),
        "{what}"
    );
}

#[test]
fn dict_types_come_back_at_any_depth_in_linear_time() {
    // A chain of OrderedDicts 90 deep, an empty OrderedDict at the bottom: both keep their
    // type, found one segment at a time.
    let mut v = Value::Dict(Dict::ordered());
    for _ in 0..90 {
        v = Value::Dict(Dict::ordered().with("k", v));
    }
    let tree = Value::Dict(Dict::new().with("chain", v));
    let (entries, issued) = flatten(&tree, CAPS).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(rebuild(entries, issued, CAPS).unwrap(), tree);
}

#[test]
fn the_flattened_state_dict_is_capped_by_the_host_memory_it_takes() {
    // 300 dicts deep under one 64 KiB key each level would flatten to ~20 MB per leaf: the
    // walk stops at the cap instead of copying the path for every leaf.
    let key = "k".repeat(64 << 10);
    let mut v = Value::Dict((0..1000).fold(Dict::new(), |d, i| d.with(format!("{i}"), i)));
    for _ in 0..300 {
        v = Value::Dict(Dict::new().with(key.as_str(), v));
    }
    let tree = Value::Dict(Dict::new().with("bomb", v));
    let caps = OutputCaps {
        max_offered_bytes: 64 << 20,
        ..CAPS
    };
    let err = flatten(&tree, caps).unwrap_err();
    let super::flat::Refusal::TooLarge { what, key } = err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "max_transfer_mib");
    assert!(
        what.contains("64 MiB") && what.contains("by entry 3 "),
        "{what}"
    );
}

#[test]
fn flattening_a_deep_input_does_not_recurse_and_the_answer_cannot_keep_it() {
    // 5 000 nested lists (deeper than any reader allows; built here directly). The tree is
    // built and dropped on this thread: only the walks run on the small stack.
    let mut v = Value::Int(1);
    for _ in 0..5_000 {
        v = Value::List(vec![v]);
    }
    let tree = std::sync::Arc::new(Value::Dict(Dict::new().with("deep", v)));
    let shared = tree.clone();
    let err = on_small_stack(move || {
        let (entries, issued) = flatten(&shared, CAPS).unwrap();
        assert_eq!(entries[0].path.len(), 5_001);
        rebuild(entries, issued, CAPS)
    })
    .unwrap_err();
    assert!(
        matches!(err, super::flat::Refusal::TooDeep { depth: 5_001, .. }),
        "{err:?}"
    );
    drop(tree);
}
