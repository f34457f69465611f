//! Checkpoint files end to end: every dtype through every format, the committed `torch.save`
//! fixtures, hostile input, and mutation fuzzing of the zip and pickle readers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value as Json;

use std::io::Write;

use crate::container::{self, CheckpointFormat, Compression, Encoder};
use crate::pt::zip::{CrcWriter, Plan, crc_of, read_entries};
use crate::pt::{PtPlan, read_pt, verify_pt};
use crate::state_dict::{Construct, DType, Dict, Key, MAX_DEPTH, Object, Shared, Tensor, Value};
use crate::{
    ReadLimits, read_checkpoint, read_checkpoint_with, verify_checkpoint, write_checkpoint,
};

const EXTENSIONS: [&str; 13] = [
    "pt",
    "tar",
    "tar.gz",
    "tgz",
    "tar.bz2",
    "tar.lzma",
    "pt.gz",
    "pt.bz2",
    "pt.lz4",
    "pt.lzma",
    "pt.xz",
    "pt.zst",
    "safetensors",
];

fn tensor_of(dtype: DType, shape: Vec<u64>) -> Tensor {
    let n: u64 = shape.iter().product();
    let bytes: Vec<u8> = (0..n * dtype.size() as u64)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let bytes = if dtype == DType::Bool {
        bytes.iter().map(|b| b & 1).collect()
    } else {
        bytes
    };
    Tensor::from_bytes(dtype, shape, bytes)
}

/// A checkpoint-shaped tree with every dtype and every kind of value cairn models.
fn sample_tree() -> Value {
    let mut model = Dict::ordered();
    for d in DType::ALL {
        model.insert(format!("{}.weight", d.name()), tensor_of(d, vec![3, 2]));
    }
    let mut p = tensor_of(DType::F32, vec![2]);
    p.parameter = true;
    p.requires_grad = true;
    model.insert("param", p);
    let timedelta = Object {
        module: "datetime".into(),
        name: "timedelta".into(),
        construct: Construct::Reduce(vec![Value::Int(0), Value::Int(3), Value::Int(0)]),
        state: None,
        list_items: vec![],
        dict_items: vec![],
    };
    let state = Dict::new()
        .with("model", model)
        .with(
            "optimizers",
            Dict::new().with(
                "Adam",
                Dict::new().with("state", Dict::new().with(0, Dict::new().with("step", 3i64))),
            ),
        )
        .with(
            "timestamp",
            Dict::new().with("total_wct", Value::Object(Box::new(timedelta))),
        )
        .with("run_name", "run")
        .with(
            "meta",
            Value::Tuple(vec![
                Value::None,
                true.into(),
                1.5.into(),
                Value::Bytes(vec![0, 255]),
            ]),
        )
        .with("big", Value::Int(-(1 << 40)))
        .with("huge", Value::BigInt(vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
        .with("empty", Value::List(vec![]));
    Value::Dict(Dict::new().with("state", state).with(
        "rng",
        Value::List(vec![Value::Dict(Dict::new().with(Key::Int(1), "x"))]),
    ))
}

fn write_to(path: &Path, tree: &Value) -> u64 {
    let format = CheckpointFormat::from_name(&path.to_string_lossy()).unwrap();
    let mut f = File::create(path).unwrap();
    let n = write_checkpoint(path, format, tree, &mut f).unwrap();
    assert_eq!(
        n,
        std::fs::metadata(path).unwrap().len(),
        "{}",
        path.display()
    );
    n
}

/// The CRC-64/NVME computed while writing is the file's, in every format, with a record large
/// enough (over 8 MiB) that the `.pt` writer patches its header after the payload; a prebuilt
/// checkpoint's too.
#[test]
fn a_summed_write_gives_the_files_crc64_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = sample_tree();
    if let Value::Dict(d) = &mut tree {
        d.insert("large", tensor_of(DType::U8, vec![9 << 20]));
    }
    let of_file = |path: &Path| {
        crc_fast::checksum(
            crc_fast::CrcAlgorithm::Crc64Nvme,
            &std::fs::read(path).unwrap(),
        )
    };
    for ext in EXTENSIONS {
        let path = dir.path().join(format!("summed.{ext}"));
        let format = CheckpointFormat::from_name(&path.to_string_lossy()).unwrap();
        let mut f = File::create(&path).unwrap();
        let written = crate::write_checkpoint_summed(&path, format, &tree, &mut f).unwrap();
        drop(f);
        assert_eq!(
            written.bytes,
            std::fs::metadata(&path).unwrap().len(),
            "{ext}"
        );
        assert_eq!(written.crc64nvme, of_file(&path), "{ext}");
        verify_checkpoint(&path).unwrap();
    }
    let path = dir.path().join("prebuilt.pt");
    let prebuilt = crate::prebuilt::prebuilt_of(&tree);
    let mut f = File::create(&path).unwrap();
    let written =
        crate::write_prebuilt_summed(&path, CheckpointFormat::Pt, &prebuilt, None, &mut f).unwrap();
    drop(f);
    assert_eq!(written.crc64nvme, of_file(&path));
}

#[test]
fn every_dtype_round_trips_through_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let tree = sample_tree();
    for ext in EXTENSIONS {
        let path = dir.path().join(format!("ep1-ba2-rank0.{ext}"));
        write_to(&path, &tree);
        let back = read_checkpoint(&path).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert_eq!(back, tree, "{ext}");
        let report = verify_checkpoint(&path).unwrap();
        assert_eq!(report.summary.tensors, 11, "{ext}");
    }
}

#[test]
fn strided_views_round_trip_in_safetensors_as_dense_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let base = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut col = base.clone();
    col.shape = vec![2];
    col.stride = vec![3];
    col.storage_offset = 1;
    let tree = Value::Dict(Dict::new().with("col", col));
    let path = dir.path().join("w.safetensors");
    write_to(&path, &tree);
    let back = read_checkpoint(&path).unwrap();
    let Some(Value::Tensor(t)) = back.get_path(&["col"]) else {
        panic!()
    };
    assert_eq!(
        t.contiguous_bytes().unwrap().to_vec(),
        [2.0f32, 5.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>()
    );
}

#[test]
fn shared_storage_is_one_record_and_payloads_are_aligned() {
    let base = Tensor::from_f32(vec![4], &[1.0, 2.0, 3.0, 4.0]);
    let mut view = base.clone();
    view.shape = vec![2];
    view.stride = vec![1];
    view.storage_offset = 2;
    let tree = Value::Dict(
        Dict::new()
            .with("a", base)
            .with("b", view)
            .with("c", tensor_of(DType::I8, vec![5])),
    );
    let mut buf = Vec::new();
    PtPlan::new(&tree, "x").unwrap().write_to(&mut buf).unwrap();
    let entries = read_entries(&Bytes::from(buf.clone())).unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "x/data.pkl",
            "x/.format_version",
            "x/.storage_alignment",
            "x/byteorder",
            "x/data/0",
            "x/data/1",
            "x/version"
        ]
    );
    assert!(entries.iter().all(|e| e.data_offset % 64 == 0));
    let back = read_pt(&Bytes::from(buf)).unwrap();
    let d = back.as_dict().unwrap();
    let (Some(Value::Tensor(a)), Some(Value::Tensor(b))) = (d.get("a"), d.get("b")) else {
        panic!()
    };
    assert!(a.storage.same(&b.storage));
}

// ---------- the committed torch.save fixtures ----------

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1F) as i32;
    let mant = (bits & 0x3FF) as f64;
    sign * match exp {
        0 => mant * 2f64.powi(-24),
        31 => f64::INFINITY,
        e => (1.0 + mant / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Elements of a tensor view, as f64 (what the fixture description lists).
fn elements(t: &Tensor) -> Vec<f64> {
    let bytes = t.storage.bytes();
    let size = t.dtype().size();
    let mut out = Vec::new();
    let mut index = vec![0u64; t.shape.len()];
    for _ in 0..t.numel() {
        let e = t.storage_offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let b = &bytes[e as usize * size..(e as usize + 1) * size];
        out.push(match t.dtype() {
            DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
            DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::F16 => f16_to_f64(u16::from_le_bytes(b.try_into().unwrap())),
            DType::BF16 => {
                f32::from_bits((u16::from_le_bytes(b.try_into().unwrap()) as u32) << 16) as f64
            }
            DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I16 => i16::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I8 => b[0] as i8 as f64,
            DType::U8 | DType::Bool => b[0] as f64,
        });
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Compare a tree with the description `make_fixtures.py` wrote.
fn check(v: &Value, want: &Json, path: &str) {
    let kind = want["kind"].as_str().unwrap();
    assert_eq!(v.kind(), kind, "{path}");
    match (v, kind) {
        (Value::Tensor(t), _) => {
            assert_eq!(t.dtype().name(), want["dtype"], "{path}");
            assert_eq!(
                serde_json::to_value(&t.shape).unwrap(),
                want["shape"],
                "{path}"
            );
            assert_eq!(
                serde_json::to_value(&t.stride).unwrap(),
                want["stride"],
                "{path}"
            );
            assert_eq!(t.storage_offset, want["offset"].as_u64().unwrap(), "{path}");
            assert_eq!(t.parameter, want["parameter"].as_bool().unwrap(), "{path}");
            assert_eq!(
                t.requires_grad,
                want["requires_grad"].as_bool().unwrap(),
                "{path}"
            );
            let values: Vec<f64> = want["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let got = elements(t);
            assert_eq!(got.len(), values.len(), "{path}");
            for (g, w) in got.iter().zip(&values) {
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "{path}: {g} vs {w}"
                );
            }
        }
        (Value::Dict(d), _) => {
            let items = want["items"].as_object().unwrap();
            assert_eq!(d.len(), items.len(), "{path}");
            for (k, x) in &d.entries {
                check(x, &items[&k.to_string()], &format!("{path}/{k}"));
            }
        }
        (Value::List(items) | Value::Tuple(items), _) => {
            let want_items = want["items"].as_array().unwrap();
            assert_eq!(items.len(), want_items.len(), "{path}");
            for (i, (x, w)) in items.iter().zip(want_items).enumerate() {
                check(x, w, &format!("{path}/{i}"));
            }
        }
        (Value::Int(i), _) => assert_eq!(i.to_string(), want["value"].as_str().unwrap(), "{path}"),
        (Value::Float(x), _) => {
            let w = want["value"].as_str().unwrap();
            let w: f64 = if w == "inf" {
                f64::INFINITY
            } else {
                w.parse().unwrap()
            };
            assert_eq!(*x, w, "{path}");
        }
        (Value::Str(s), _) => assert_eq!(s, want["value"].as_str().unwrap(), "{path}"),
        (Value::Bool(b), _) => assert_eq!(Some(*b), want["value"].as_bool(), "{path}"),
        (Value::Bytes(b), _) => {
            assert_eq!(hex::encode(b), want["value"].as_str().unwrap(), "{path}")
        }
        _ => {}
    }
}

#[test]
fn torch_save_fixtures_read_as_torch_describes_them() {
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    for (name, want) in expected.as_object().unwrap() {
        let path = fixtures().join(format!("{name}.pt"));
        let tree = read_checkpoint(&path).unwrap_or_else(|e| panic!("{e}"));
        check(&tree, want, name);
        verify_checkpoint(&path).unwrap();
    }
}

#[test]
fn torch_views_keep_sharing_one_storage() {
    let tree = read_checkpoint(&fixtures().join("views.pt")).unwrap();
    let t = |k: &str| match tree.get_path(&[k]) {
        Some(Value::Tensor(t)) => t.clone(),
        _ => panic!("{k}"),
    };
    assert!(t("base").storage.same(&t("col").storage));
    assert!(t("base").storage.same(&t("t").storage));
    let mut buf = Vec::new();
    let plan = PtPlan::new(&tree, "v").unwrap();
    plan.write_to(&mut buf).unwrap();
    let summary = verify_pt(&Bytes::from(buf)).unwrap();
    assert_eq!((summary.tensors, summary.storages), (8, 5));
}

#[test]
fn unmodelled_objects_are_written_back_as_the_same_recipe() {
    let tree = read_checkpoint(&fixtures().join("objects.pt")).unwrap();
    let mut buf = Vec::new();
    PtPlan::new(&tree, "o").unwrap().write_to(&mut buf).unwrap();
    let back = read_pt(&Bytes::from(buf)).unwrap();
    assert_eq!(back, tree);
    let Some(Value::Object(td)) = tree.get_path(&["timedelta"]) else {
        panic!()
    };
    assert_eq!(
        td.construct,
        Construct::Reduce(vec![1.into(), 2.into(), 3.into()])
    );
    let module = read_checkpoint(&fixtures().join("module.pt")).unwrap();
    assert!(
        module.as_dict().unwrap().state.is_some(),
        "the module state dict's _metadata is kept"
    );
}

// ---------- hostile input ----------

/// A `.pt`-shaped zip from raw parts.
fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let plan = Plan::new(entries.iter().map(|(n, d)| (*n, d.len() as u64)));
    let mut out = Vec::new();
    let mut w = CrcWriter::new(&mut out);
    let mut crcs = Vec::new();
    for (i, (_, d)) in entries.iter().enumerate() {
        let crc = crc_of(&[d]);
        w.pad_to(plan.entries[i].header_offset).unwrap();
        w.put(&plan.local_header(i, crc)).unwrap();
        w.put(d).unwrap();
        crcs.push(crc);
    }
    w.put(&plan.trailer(&crcs)).unwrap();
    out
}

fn sample_pt() -> Vec<u8> {
    let mut buf = Vec::new();
    PtPlan::new(&sample_tree(), "s")
        .unwrap()
        .write_to(&mut buf)
        .unwrap();
    buf
}

fn error_of(bytes: Vec<u8>, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains(name), "error names the file: {err}");
    assert!(verify_checkpoint(&path).is_err());
    err
}

#[test]
fn truncated_files_are_errors() {
    let pt = sample_pt();
    for cut in [0, 1, 30, pt.len() / 2, pt.len() - 23, pt.len() - 1] {
        error_of(pt[..cut].to_vec(), "cut.pt");
    }
}

#[test]
fn a_flipped_storage_byte_fails_the_crc() {
    let mut pt = sample_pt();
    let entries = read_entries(&Bytes::from(pt.clone())).unwrap();
    let data0 = entries.iter().find(|e| e.name.ends_with("data/0")).unwrap();
    pt[data0.data_offset as usize] ^= 0xFF;
    let err = error_of(pt, "crc.pt");
    assert!(err.contains("CRC-32"), "{err}");
}

#[test]
fn a_pickle_calling_os_system_is_refused() {
    let pickle = b"\x80\x02cos\nsystem\nX\x0a\x00\x00\x00touch /tmp\x85R.";
    let err = error_of(
        make_zip(&[("a/data.pkl", pickle), ("a/version", b"3\n")]),
        "evil.pt",
    );
    assert!(err.contains("os.system"), "{err}");
    let pickle = b"\x80\x02csubprocess\nPopen\n)R.";
    let err = error_of(
        make_zip(&[("a/data.pkl", pickle), ("a/version", b"3\n")]),
        "evil2.pt",
    );
    assert!(err.contains("subprocess.Popen"), "{err}");
}

/// `_rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', numel), 0, (size,), (1,), False, OrderedDict())`
fn tensor_pickle(numel: u64, size: u64) -> Vec<u8> {
    let mut p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu".to_vec();
    p.extend_from_slice(b"\x8a\x09");
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"\x00tQK\x00\x8a\x09");
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(b"\x00\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR.");
    p
}

#[test]
fn absurd_storage_sizes_are_errors() {
    let ok = make_zip(&[
        ("a/data.pkl", &tensor_pickle(4, 4)),
        ("a/data/0", &[0u8; 16]),
        ("a/version", b"3\n"),
    ]);
    if let Err(e) = read_pt(&Bytes::from(ok)) {
        panic!("{e}");
    }
    let zip = make_zip(&[
        ("a/data.pkl", &tensor_pickle(1 << 60, 4)),
        ("a/data/0", &[0u8; 16]),
        ("a/version", b"3\n"),
    ]);
    let err = error_of(zip, "absurd.pt");
    assert!(err.contains("holds 16 bytes"), "{err}");
    let zip = make_zip(&[
        ("a/data.pkl", &tensor_pickle(4, 1 << 30)),
        ("a/data/0", &[0u8; 16]),
        ("a/version", b"3\n"),
    ]);
    let err = error_of(zip, "view.pt");
    assert!(err.contains("does not fit"), "{err}");
    let zip = make_zip(&[
        ("a/data.pkl", &tensor_pickle(4, 1 << 60)),
        ("a/data/0", &[0u8; 16]),
        ("a/version", b"3\n"),
    ]);
    let err = error_of(zip, "huge.pt");
    assert!(err.contains("absurd number of elements"), "{err}");
}

#[test]
fn names_are_not_trusted_when_reading() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.pt");
    write_to(&real, &sample_tree());
    for name in ["x.pt.foo", "x.tar.zst", "x.pt.gz", "x.safetensors"] {
        let path = dir.path().join(name);
        std::fs::copy(&real, &path).unwrap();
        let read = read_checkpoint_with(&path, &ReadLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read.tree, sample_tree(), "{name}");
        assert_eq!(read.report.format, CheckpointFormat::Pt, "{name}");
        let note = read.report.mismatch(&path).unwrap();
        assert!(
            note.contains(name) && note.contains("by its content"),
            "{note}"
        );
    }
    assert_eq!(verify_checkpoint(&real).unwrap().mismatch(&real), None);
}

#[test]
fn damaged_compressed_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for ext in [
        "pt.gz", "pt.zst", "pt.lz4", "pt.xz", "pt.lzma", "pt.bz2", "tar.gz",
    ] {
        let path = dir.path().join(format!("c.{ext}"));
        write_to(&path, &sample_tree());
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, bytes).unwrap();
        let err = read_checkpoint(&path).unwrap_err().to_string();
        assert!(err.contains("c."), "{ext}: {err}");
    }
}

// ---------- the name is only for writing ----------

#[test]
fn every_format_reads_under_any_name_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let tree = sample_tree();
    for ext in EXTENSIONS {
        let real = dir.path().join(format!("ep1.{ext}"));
        write_to(&real, &tree);
        let want = CheckpointFormat::from_name(&real.to_string_lossy()).unwrap();
        // A store object under the default `.pt` name, and a name with no extension.
        for name in ["renamed.pt", "latest-rank0"] {
            let path = dir.path().join(format!("{}-{name}", ext.replace('.', "_")));
            std::fs::copy(&real, &path).unwrap();
            let read = read_checkpoint_with(&path, &ReadLimits::default())
                .unwrap_or_else(|e| panic!("{ext} as {name}: {e}"));
            assert_eq!(read.tree, tree, "{ext} as {name}");
            // Composer's `.tar.lzma` is xz, which is how the content reads back.
            assert_eq!(read.report.format, want, "{ext} as {name}");
            assert_eq!(read.report.named, Some(CheckpointFormat::Pt));
            assert_eq!(
                read.report.mismatch(&path).is_some(),
                want != CheckpointFormat::Pt
            );
        }
    }
}

#[test]
fn a_link_is_named_by_its_target() {
    let dir = tempfile::tempdir().unwrap();
    write_to(&dir.path().join("ep1.pt.gz"), &sample_tree());
    let link = dir.path().join("latest-rank0.pt");
    std::os::unix::fs::symlink("ep1.pt.gz", &link).unwrap();
    let report = verify_checkpoint(&link).unwrap();
    assert_eq!(
        report.format,
        CheckpointFormat::CompressedPt(Compression::Gzip)
    );
    assert_eq!(report.named, Some(report.format));
    assert_eq!(report.mismatch(&link), None);
}

#[test]
fn only_regular_files_are_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ep1.pt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = read_checkpoint(&fifo).unwrap_err().to_string();
    assert!(err.contains("a FIFO"), "{err}");
    let err = read_checkpoint(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a device"), "{err}");
    let err = read_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(err.contains("a folder"), "{err}");
}

// ---------- decompression bombs ----------

/// `body` compressed with `c`.
fn compress(c: Compression, body: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(c, Vec::new()).unwrap();
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

/// `n` bytes of zeros after `head`, compressed with `c` in 16 MiB steps (never all in memory).
fn compressed_zeros(c: Compression, head: &[u8], n: u64) -> Vec<u8> {
    let mut e = Encoder::new(c, Vec::new()).unwrap();
    e.write_all(head).unwrap();
    let zeros = vec![0u8; 16 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(zeros.len() as u64) as usize;
        e.write_all(&zeros[..k]).unwrap();
        left -= k as u64;
    }
    e.finish().unwrap()
}

const ALL_COMPRESSIONS: [Compression; 6] = [
    Compression::Gzip,
    Compression::Bzip2,
    Compression::Lz4,
    Compression::Lzma,
    Compression::Xz,
    Compression::Zstd,
];

#[test]
fn zeros_and_text_are_refused_before_anything_is_staged() {
    let dir = tempfile::tempdir().unwrap();
    for c in ALL_COMPRESSIONS {
        for (what, bytes) in [
            ("zeros", compressed_zeros(c, b"", 8 << 20)),
            (
                "text",
                compress(c, &b"this is not a checkpoint\n".repeat(1000)),
            ),
        ] {
            let path = dir.path().join(format!("{what}.pt.{}", c.extension()));
            std::fs::write(&path, bytes).unwrap();
            // A cap far below what the stream holds: the structure check answers first.
            let limits = ReadLimits {
                max_expanded_bytes: 4096,
                ratio_floor_bytes: 4096,
                ..ReadLimits::default()
            };
            let start = Instant::now();
            let err = read_checkpoint_with(&path, &limits).unwrap_err();
            assert!(
                err.to_string()
                    .contains("holds neither a torch archive nor a tar"),
                "{c:?} {what}: {err}"
            );
            assert!(!err.is_limit(), "{err}");
            eprintln!("{c:?} {what}: refused in {:?}", start.elapsed());
        }
    }
}

#[test]
fn a_well_formed_start_does_not_buy_unbounded_expansion() {
    let dir = tempfile::tempdir().unwrap();
    let zip_head = b"PK\x03\x04\x14\x00\x00\x00\x00\x00";
    let tar_head = container::tar_header(1 << 30).unwrap();
    // Zeros behind a valid start, in every compressor: refused at the bound, with a floor of
    // 1 MiB here (the default 64 MiB floor is exercised below with zstd, which is fast to
    // write in a debug build).
    let limits = ReadLimits {
        ratio_floor_bytes: 1 << 20,
        ..ReadLimits::default()
    };
    for c in ALL_COMPRESSIONS {
        for (what, head) in [("pt", &zip_head[..]), ("tar", &tar_head[..])] {
            let bytes = compressed_zeros(c, head, 12 << 20);
            let path = dir.path().join(format!("bomb-{what}.{}", c.extension()));
            let allowed = limits.expansion_allowed(bytes.len() as u64);
            assert!(
                allowed < 12 << 20,
                "{c:?}: {} bytes compress too little",
                bytes.len()
            );
            std::fs::write(&path, bytes).unwrap();
            let err = read_checkpoint_with(&path, &limits).unwrap_err();
            assert!(err.is_limit(), "{c:?} {what}: {err}");
            let text = err.to_string();
            assert!(text.contains("decompression bomb"), "{text}");
        }
    }
    let bytes = compressed_zeros(Compression::Zstd, zip_head, 256 << 20);
    let path = dir.path().join("zeros-256m.pt.zst");
    let len = bytes.len();
    std::fs::write(&path, bytes).unwrap();
    let start = Instant::now();
    let err = read_checkpoint(&path).unwrap_err();
    assert!(err.to_string().contains("expands past 64 MiB"), "{err}");
    eprintln!(
        "a {len}-byte zstd bomb (256 MiB) refused at 64 MiB in {:?}",
        start.elapsed()
    );
}

#[test]
fn the_ratio_and_the_cap_both_bind_and_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    // A real checkpoint of 4 MiB of incompressible-looking floats, zstd-compressed.
    let values: Vec<f32> = (0..1u64 << 20)
        .map(|i| ((i * 7919) % 10007) as f32 * 1e-3)
        .collect();
    let tree = Value::Dict(Dict::new().with("w", Tensor::from_f32(vec![1 << 20], &values)));
    let path = dir.path().join("ep1.pt.zst");
    write_to(&path, &tree);
    assert_eq!(
        read_checkpoint(&path).unwrap(),
        tree,
        "the defaults read it"
    );
    let cap = ReadLimits {
        max_expanded_bytes: 1 << 20,
        ratio_floor_bytes: 0,
        ..ReadLimits::default()
    };
    let err = read_checkpoint_with(&path, &cap).unwrap_err();
    assert!(err.is_limit() && err.to_string().contains("1 MiB"), "{err}");
    let ratio = ReadLimits {
        max_expansion_ratio: 1,
        ratio_floor_bytes: 0,
        ..ReadLimits::default()
    };
    let err = read_checkpoint_with(&path, &ratio).unwrap_err();
    assert!(
        err.is_limit() && err.to_string().contains("at most 1x"),
        "{err}"
    );
    let pickle = ReadLimits {
        max_pickle_bytes: 64,
        ..ReadLimits::default()
    };
    let err = read_checkpoint_with(&path, &pickle).unwrap_err();
    assert!(
        err.is_limit() && err.to_string().contains("pickle (data.pkl)"),
        "{err}"
    );
    let st = dir.path().join("w.safetensors");
    write_to(&st, &tree);
    let err = read_checkpoint_with(&st, &pickle).unwrap_err();
    assert!(
        err.is_limit() && err.to_string().contains("safetensors header"),
        "{err}"
    );
}

// ---------- nesting and sharing ----------

/// A torch archive around `pickle` (protocol 2 header and STOP added), with `storages`.
fn pickle_file(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend_from_slice(body);
    pickle.push(b'.');
    let path = dir.join(name);
    std::fs::write(
        &path,
        make_zip(&[
            ("archive/data.pkl", &pickle),
            ("archive/byteorder", b"little"),
            ("archive/version", b"3\n"),
        ]),
    )
    .unwrap();
    path
}

/// Read `path` on a thread with a 1 MiB stack (half a spawned thread's default), so a reader
/// that recursed per level would overflow here first.
fn read_on_small_stack(path: PathBuf) -> Result<Value, String> {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || read_checkpoint(&path).map_err(|e| e.to_string()))
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_pickles_are_refused_whatever_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    let rep = |b: &[u8], k: usize| b.repeat(k);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("lists", [rep(b"]", n), rep(b"a", n - 1)].concat()),
        ("tuples", [rep(b"(", n), rep(b"t", n)].concat()),
        (
            "dicts",
            [rep(b"}X\x01\x00\x00\x00k", n), b"N".to_vec(), rep(b"s", n)].concat(),
        ),
        (
            "objects",
            [
                rep(b"ccollections\nCounter\n(", n),
                b"}".to_vec(),
                rep(b"tR", n),
            ]
            .concat(),
        ),
        (
            "sets",
            [rep(b"(", n), rep(b"\x91", n)].concat(), // FROZENSET nested
        ),
        (
            "dict-states",
            [rep(b"}", n), b"N".to_vec(), rep(b"b", n)].concat(), // BUILD state chains
        ),
    ];
    for (what, body) in cases {
        let path = pickle_file(dir.path(), &format!("deep-{what}.pt"), &body);
        let start = Instant::now();
        let err = read_on_small_stack(path).unwrap_err();
        assert!(
            err.contains("nests deeper than 100 levels"),
            "{what}: {err}"
        );
        eprintln!(
            "deep {what} ({} KiB): refused in {:?}",
            body.len() >> 10,
            start.elapsed()
        );
    }
    // Exactly at the limit still reads, on the same small stack.
    let ok = [
        rep(b"]", MAX_DEPTH),
        b"K\x01".to_vec(),
        rep(b"a", MAX_DEPTH),
    ]
    .concat();
    let v = read_on_small_stack(pickle_file(dir.path(), "deep-ok.pt", &ok)).unwrap();
    assert_eq!(v.depth(), MAX_DEPTH);
    let over = [
        rep(b"]", MAX_DEPTH + 1),
        b"K\x01".to_vec(),
        rep(b"a", MAX_DEPTH + 1),
    ]
    .concat();
    assert!(read_on_small_stack(pickle_file(dir.path(), "deep-over.pt", &over)).is_err());
}

#[test]
fn deep_trees_are_refused_by_every_writer_and_dropped_without_recursion() {
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(|| {
            let mut v = Value::Int(1);
            for i in 0..1_000_000 {
                v = match i % 3 {
                    0 => Value::List(vec![v]),
                    1 => Value::Dict(Dict::new().with("k", v)),
                    _ => Value::Tuple(vec![v]),
                };
            }
            assert!(v.check_depth(MAX_DEPTH).is_err());
            let err = PtPlan::new(&v, "x").err().unwrap().to_string();
            assert!(err.contains("more than 100 containers deep"), "{err}");
            let mut out = Vec::new();
            let err = crate::safetensors_io::write(&v, &mut out)
                .unwrap_err()
                .to_string();
            assert!(err.contains("more than 100 containers deep"), "{err}");
            drop(v);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// The pickle "billion laughs": L0 = [] (or {}), Li = [L(i-1), L(i-1)], each memoised.
fn laughs_pickle(levels: u32, dicts: bool) -> Vec<u8> {
    let put = |i: u32| [&b"r"[..], &i.to_le_bytes()].concat();
    let get = |i: u32| [&b"j"[..], &i.to_le_bytes()].concat();
    let mut p = b"}X\x06\x00\x00\x00laughs".to_vec();
    p.extend_from_slice(if dicts { b"}" } else { b"]" });
    p.extend(put(0));
    for i in 1..=levels {
        p.extend_from_slice(b"0");
        if dicts {
            p.extend_from_slice(b"}(X\x01\x00\x00\x00a");
            p.extend(get(i - 1));
            p.extend_from_slice(b"X\x01\x00\x00\x00b");
            p.extend(get(i - 1));
            p.extend_from_slice(b"u");
        } else {
            p.extend_from_slice(b"](");
            p.extend(get(i - 1));
            p.extend(get(i - 1));
            p.extend_from_slice(b"e");
        }
        p.extend(put(i));
    }
    p.extend_from_slice(b"s");
    p
}

#[test]
fn billion_laughs_read_and_write_back_as_small_graphs() {
    let dir = tempfile::tempdir().unwrap();
    for dicts in [false, true] {
        let levels = 60;
        let path = pickle_file(dir.path(), "laughs.pt", &laughs_pickle(levels, dicts));
        let start = Instant::now();
        let tree = read_on_small_stack(path.clone()).unwrap();
        assert_eq!(tree.depth(), levels as usize + 1);
        let mut tensors = 0;
        crate::count_tensors(&tree, &mut |_| tensors += 1);
        // Written back: once per level, then referenced (BINGET), as torch.save would.
        let out = dir.path().join("laughs-out.pt.zst");
        write_to(&out, &tree);
        let back = read_checkpoint(&out).unwrap();
        assert_eq!(back.depth(), levels as usize + 1);
        let plan = PtPlan::new(&back, "x").unwrap();
        assert!(plan.total_len() < 4096, "{} bytes", plan.total_len());
        let st = dir.path().join("laughs.safetensors");
        write_to(&st, &back);
        assert_eq!(read_checkpoint(&st).unwrap().depth(), levels as usize + 1);
        eprintln!(
            "laughs (dicts: {dicts}) read, written and read back in {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn one_large_value_referenced_many_times_is_written_once() {
    let big = Shared::new(Value::Bytes(vec![7u8; 8 << 20]));
    let refs: Vec<Value> = (0..10_000).map(|_| Value::Shared(big.clone())).collect();
    let tree = Value::Dict(Dict::new().with("aliases", Value::List(refs)));
    let dir = tempfile::tempdir().unwrap();
    for ext in ["pt", "pt.zst", "tar", "safetensors"] {
        let path = dir.path().join(format!("aliases.{ext}"));
        let bytes = write_to(&path, &tree);
        // 8 MiB once (safetensors stores bytes as hex: twice that), not 10,000 times.
        assert!(bytes < 17 << 20, "{ext}: {bytes} bytes");
        let back = read_checkpoint(&path).unwrap();
        let Some(Value::List(items)) = back.get_path(&["aliases"]) else {
            panic!()
        };
        let (Value::Shared(a), Value::Shared(b)) = (&items[0], &items[9_999]) else {
            panic!("{ext}: not shared ({})", items[0].kind())
        };
        assert!(a.same(b), "{ext}");
    }
}

#[test]
fn memoised_keys_and_strings_count_against_the_budget() {
    // One 256 KiB string, memoised, used as the key of 8,000 distinct dicts: 2 GiB of keys.
    let dir = tempfile::tempdir().unwrap();
    let mut p = b"]X\x00\x00\x04\x00".to_vec();
    p.extend(std::iter::repeat_n(b'K', 256 << 10));
    p.extend_from_slice(b"r\x00\x00\x00\x000(");
    for _ in 0..8_000 {
        p.extend_from_slice(b"}j\x00\x00\x00\x00Ns");
    }
    p.extend_from_slice(b"e");
    let path = pickle_file(dir.path(), "keys.pt", &p);
    let err = read_checkpoint(&path).unwrap_err();
    assert!(
        err.is_limit() && err.to_string().contains("too much data"),
        "{err}"
    );
}

// ---------- mutation fuzzing ----------

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, value, how) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at % bytes.len();
        match how % 4 {
            0 => bytes[i] = value,
            1 => bytes[i] ^= 1 << (value % 8),
            2 => bytes.truncate(i),
            _ => bytes.insert(i, value),
        }
    }
    bytes
}

/// The pickle of a small sample, for mutating in place inside a fixed zip.
fn sample_pickle_zip(pickle: &[u8]) -> Vec<u8> {
    make_zip(&[
        ("a/data.pkl", pickle),
        ("a/data/0", &[0u8; 64]),
        ("a/data/1", &[1u8; 8]),
        ("a/version", b"3\n"),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_archives_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let data = Bytes::from(mutate(sample_pt(), &edits));
        let start = Instant::now();
        let _ = read_pt(&data);
        let _ = verify_pt(&data);
        prop_assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn mutated_pickles_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let tree = read_checkpoint(&fixtures().join("composer_like.pt")).unwrap();
        let pickle = crate::pt::pickle_write::pickle(&tree).unwrap().bytes;
        let data = Bytes::from(sample_pickle_zip(&mutate(pickle, &edits)));
        let start = Instant::now();
        let _ = read_pt(&data);
        prop_assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn random_pickles_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut p = b"\x80\x02".to_vec();
        p.extend_from_slice(&bytes);
        let _ = read_pt(&Bytes::from(sample_pickle_zip(&p)));
    }

    /// Containers built, memoised, fetched again, nested and closed in random order: sharing,
    /// cycles, depth and the budgets are exercised together.
    #[test]
    fn random_memo_graphs_never_panic(ops in prop::collection::vec(0u8..14, 0..400)) {
        let mut p = b"\x80\x02".to_vec();
        for op in ops {
            match op {
                0 => p.push(b']'),
                1 => p.push(b'}'),
                2 => p.push(b'('),
                3 => p.push(b'a'),
                4 => p.push(b'e'),
                5 => p.push(b's'),
                6 => p.push(b'u'),
                7 => p.extend_from_slice(b"q\x00"),
                8 => p.extend_from_slice(b"h\x00"),
                9 => p.extend_from_slice(b"q\x01"),
                10 => p.extend_from_slice(b"h\x01"),
                11 => p.push(b't'),
                12 => p.extend_from_slice(b"K\x07"),
                _ => p.push(b'2'),
            }
        }
        p.push(b'.');
        let start = Instant::now();
        if let Ok(v) = read_pt(&Bytes::from(sample_pickle_zip(&p))) {
            // Whatever was read can be written and read back.
            prop_assert!(v.depth() <= MAX_DEPTH);
            let mut buf = Vec::new();
            PtPlan::new(&v, "r").unwrap().write_to(&mut buf).unwrap();
            let back = read_pt(&Bytes::from(buf)).unwrap();
            prop_assert_eq!(back.depth(), v.depth());
        }
        prop_assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn mutated_laughs_and_deep_pickles_never_panic(
        laughs in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let body = if laughs {
            laughs_pickle(30, edits.len() % 2 == 0)
        } else {
            [b"]".repeat(MAX_DEPTH), b"K\x01".to_vec(), b"a".repeat(MAX_DEPTH)].concat()
        };
        let mut p = b"\x80\x02".to_vec();
        p.extend_from_slice(&body);
        p.push(b'.');
        let data = Bytes::from(sample_pickle_zip(&mutate(p, &edits)));
        let start = Instant::now();
        let _ = read_pt(&data);
        prop_assert!(start.elapsed() < Duration::from_secs(2));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    /// Compressed and tar containers, damaged anywhere: an error or a tree, never a panic, and
    /// never more staged than the bound allows.
    #[test]
    fn mutated_compressed_and_tar_checkpoints_never_panic(
        which in 0usize..5,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let ext = ["pt.zst", "pt.gz", "tar", "tar.bz2", "pt.lz4"][which];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("m.{ext}"));
        write_to(&path, &sample_tree());
        let bytes = mutate(std::fs::read(&path).unwrap(), &edits);
        std::fs::write(&path, bytes).unwrap();
        let limits = ReadLimits { ratio_floor_bytes: 1 << 20, ..ReadLimits::default() };
        let start = Instant::now();
        match read_checkpoint_with(&path, &limits) {
            Ok(read) => prop_assert_eq!(read.tree, sample_tree()),
            Err(e) => prop_assert!(e.to_string().contains("m."), "{}", e),
        }
        prop_assert!(start.elapsed() < Duration::from_secs(5));
    }
}

// ---------- the CLI ----------

/// The binary under test; `CAIRN_BIN` overrides it (a shared target folder may hold another
/// branch's build by the time the tests run).
/// ZIP64 for real: one storage past 4 GiB, so sizes and offsets need the ZIP64 fields. Slow and
/// disk-hungry (~4.3 GB), so opt-in: `cargo test --release -- --ignored zip64`. Set
/// `CAIRN_ZIP64_OUT` to keep the file (e.g. to load it with torch).
#[test]
#[ignore]
fn zip64_archives_past_4_gib_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("CAIRN_ZIP64_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("big.pt"));
    let n = (4u64 << 30) + 4096;
    let mut bytes = vec![0u8; n as usize];
    bytes[n as usize - 1] = 7;
    let tree = Value::Dict(
        Dict::new()
            .with("big", Tensor::from_bytes(DType::U8, vec![n], bytes))
            .with("after", Tensor::from_f32(vec![2], &[1.0, 2.0])),
    );
    write_to(&path, &tree);
    let report = verify_checkpoint(&path).unwrap();
    assert_eq!(report.summary.tensors, 2);
    let back = read_checkpoint(&path).unwrap();
    assert_eq!(back.get_path(&["after"]), tree.get_path(&["after"]));
    let Some(Value::Tensor(big)) = back.get_path(&["big"]) else {
        panic!()
    };
    assert_eq!(big.storage.bytes()[n as usize - 1], 7);
}
