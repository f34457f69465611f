//! Class 2: amplification through aliases. Each `alias` counts the bytes of the value it names
//! against `max_filter_string_bytes`, so no answer multiplies a large value: the attack is
//! refused with `too-large` before anything is copied, and the state dict offered to a filter
//! is itself capped by the host memory its flattened form takes (every entry carries its path).

use super::*;

/// A state dict with one `mib` MiB tensor and a tuple holding `mib` MiB of bytes.
fn heavy_tree(mib: usize) -> Value {
    Value::Dict(
        Dict::new()
            .with(
                "big",
                Tensor::from_bytes(
                    cairn_format::DType::U8,
                    vec![(mib << 20) as u64],
                    vec![1u8; mib << 20],
                ),
            )
            .with(
                "blob",
                Value::Tuple(vec![Value::Bytes(vec![2u8; mib << 20])]),
            )
            .with("n", 1),
    )
}

#[test]
fn aliases_of_a_big_tensor_are_refused_at_the_byte_cap() {
    let Some(cost) = common::measure::isolated(
        "bounds::aliases::aliases_of_a_big_tensor_are_refused_at_the_byte_cap",
        || {
            let tree = heavy_tree(8);
            // 256 and 10 000 references to an 8 MiB tensor: 2 GiB and 78 GiB of checkpoint.
            for aliases in [256, 10_000] {
                let sandbox = SandboxConfig {
                    fuel_per_call: 0,
                    timeout_ms: 10_000,
                    ..SandboxConfig::default()
                };
                let err = filter("alias-flood", aliases, &sandbox)
                    .apply(&tree)
                    .unwrap_err();
                assert_eq!(err.kind(), "too-large", "{err}");
                let msg = err.to_string();
                assert!(
                    msg.contains("aliased values")
                        && msg.contains("[sandbox] max_filter_string_bytes")
                        && msg.contains("alias/[7]"),
                    "{msg}"
                );
            }
            // Seven fit in the default 64 MiB: one shared tensor, referred to eight times.
            let out = filter("alias-flood", 7, &SandboxConfig::default())
                .apply(&tree)
                .unwrap();
            let Some(Value::Shared(first)) = out.get_path(&["alias", "0"]) else {
                panic!("{out:?}")
            };
            let Some(Value::Shared(big)) = out.get_path(&["big"]) else {
                panic!()
            };
            assert!(first.same(big));
        },
    ) else {
        return;
    };
    // The tree (8 + 8 MiB), its flattened copy of handles, and the filter's own instance.
    assert!(cost.max_rss < 300 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn aliases_of_an_opaque_value_are_refused_before_they_are_copied() {
    let Some(cost) = common::measure::isolated(
        "bounds::aliases::aliases_of_an_opaque_value_are_refused_before_they_are_copied",
        || {
            let tree = heavy_tree(8);
            // 200 aliases of an 8 MiB tuple were 1.7 GB of checkpoint and 3.3 GB of RSS.
            let err = filter("alias-opaque", 200, &SandboxConfig::default())
                .apply(&tree)
                .unwrap_err();
            assert_eq!(err.kind(), "too-large", "{err}");
            // A small cap stops a few aliases of a small value too.
            let tight = SandboxConfig {
                max_filter_string_bytes: MIB,
                ..SandboxConfig::default()
            };
            let err = filter("alias-opaque", 3, &tight)
                .apply(&heavy_tree(1))
                .unwrap_err();
            assert_eq!(err.kind(), "too-large", "{err}");
            // Within the cap, each alias is the same value.
            let out = filter("alias-opaque", 5, &SandboxConfig::default())
                .apply(&tree)
                .unwrap();
            assert_eq!(out.get_path(&["alias", "4"]), out.get_path(&["blob"]));
        },
    ) else {
        return;
    };
    assert!(cost.max_rss < 300 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn a_state_dict_that_flattens_to_gigabytes_is_refused_before_the_call() {
    let Some(cost) = common::measure::isolated(
        "bounds::aliases::a_state_dict_that_flattens_to_gigabytes_is_refused_before_the_call",
        || {
            // 300 nested dicts under one 64 KiB key each (the reader shares such keys), then
            // 1 000 leaves: every leaf's path is 19 MiB, 19 GiB in all.
            let key = "k".repeat(64 << 10);
            let mut v = Value::Dict((0..1000).fold(Dict::new(), |d, i| d.with(format!("{i}"), i)));
            for _ in 0..300 {
                v = Value::Dict(Dict::new().with(key.as_str(), v));
            }
            let tree = Value::Dict(Dict::new().with("bomb", v));
            for transfer_mib in [128, 16] {
                let sandbox = SandboxConfig {
                    max_transfer_mib: transfer_mib,
                    ..SandboxConfig::default()
                };
                let err = filter("identity", 0, &sandbox).apply(&tree).unwrap_err();
                assert_eq!(err.kind(), "too-large", "{err}");
                let msg = err.to_string();
                assert!(
                    msg.contains(&format!("more than {transfer_mib} MiB of host memory"))
                        && msg.contains("[sandbox] max_transfer_mib"),
                    "{msg}"
                );
                assert!(msg.len() < 1_500, "{} bytes", msg.len());
            }
        },
    ) else {
        return;
    };
    assert!(cost.max_rss < 400 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn aliases_stay_references_all_the_way_to_the_file() {
    let Some(cost) = common::measure::isolated(
        "bounds::aliases::aliases_stay_references_all_the_way_to_the_file",
        || {
            // Seven aliases of an 8 MiB tensor and five of an 8 MiB tuple (in separate answers):
            // each file holds the value once, and reads back with one shared node.
            let dir = tempfile::tempdir().unwrap();
            let write = |tree: &Value, name: &str| {
                let path = dir.path().join(name);
                let mut file = std::fs::File::create(&path).unwrap();
                let format = cairn_format::format_of(&path).unwrap();
                let bytes = cairn_format::write_checkpoint(&path, format, tree, &mut file);
                (path, bytes.unwrap())
            };
            for (mode, aliases) in [("alias-flood", 7), ("alias-opaque", 5)] {
                let out = filter(mode, aliases, &SandboxConfig::default())
                    .apply(&heavy_tree(8))
                    .unwrap();
                for name in ["out.pt", "out.safetensors"] {
                    // The same file as without the aliases, give or take their entries.
                    let (_, alone) = write(&heavy_tree(8), &format!("alone-{name}"));
                    let (path, bytes) = write(&out, name);
                    assert!(
                        bytes < alone + 64 * 1024,
                        "{mode} {name}: {bytes} bytes, {alone} without aliases"
                    );
                    // Read back, every place names one value: a shared subtree, or (a tensor
                    // read from a torch archive) tensors over one storage.
                    let back = cairn_format::read_checkpoint(&path).unwrap();
                    let last = (aliases - 1).to_string();
                    let (a, b) = (
                        back.get_path(&["alias", "0"]).unwrap(),
                        back.get_path(&["alias", &last]).unwrap(),
                    );
                    let same = match (a, b) {
                        (Value::Shared(a), Value::Shared(b)) => a.same(b),
                        (Value::Tensor(a), Value::Tensor(b)) => a.storage.same(&b.storage),
                        _ => false,
                    };
                    assert!(same, "{mode} {name}: {} and {}", a.kind(), b.kind());
                }
            }
        },
    ) else {
        return;
    };
    assert!(cost.max_rss < 300 * MIB, "{} bytes", cost.max_rss);
}
