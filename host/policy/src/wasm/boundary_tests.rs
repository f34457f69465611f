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
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// What the host sends, returned unchanged, rebuilds the same tree.
    #[test]
    fn state_dicts_round_trip(tree in root()) {
        let (entries, issued) = flatten(&tree).unwrap();
        let back = rebuild(entries, &issued, CAPS).unwrap();
        prop_assert_eq!(back, tree);
    }

    /// Arbitrary filter output never panics the host.
    #[test]
    fn random_filter_output_never_panics(
        tree in root(),
        out in proptest::collection::vec((proptest::collection::vec(segment(), 0..4), wit_leaf()), 0..12),
    ) {
        let (_, issued) = flatten(&tree).unwrap();
        let entries = out.into_iter().map(|(path, leaf)| wit::Entry { path, leaf }).collect();
        let _ = rebuild(entries, &issued, CAPS);
    }

    /// Dropping any subset of entries yields a tree or an error, and a tree only holds
    /// values that were sent.
    #[test]
    fn dropping_entries_never_panics(tree in root(), mask in proptest::collection::vec(any::<bool>(), 64)) {
        let (entries, issued) = flatten(&tree).unwrap();
        let kept: Vec<_> = entries.into_iter().enumerate().filter(|(i, _)| mask[i % 64]).map(|(_, e)| e).collect();
        let n = kept.len();
        let back = rebuild(kept, &issued, CAPS).unwrap();
        prop_assert!(crate::globs::flatten(&back).len() >= n.min(1));
    }
}

#[test]
fn non_dict_roots_are_an_error_not_a_panic() {
    assert!(flatten(&Value::Int(1)).is_err());
}
