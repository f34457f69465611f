//! A checkpoint whose pickle was made elsewhere: `data.pkl` from Python's own pickler (run the
//! way `torch.save` runs it, in cairn's Python package) and the storage records it references,
//! as bytes cairn streams without copying.
//!
//! Writing it verbatim is what makes arbitrary objects in a training state (numpy arrays,
//! timedeltas, enums, metric states, ...) load back from `torch.load` exactly as `torch.save`
//! would have written them: the pickle *is* torch's. Reading it into a [`Value`] tree is only
//! needed when something must look inside (a filter, or a safetensors file).

use std::collections::HashSet;

use bytes::Bytes;

use crate::pt::pickle_read::{self, PickleError, StorageSource};
use crate::state_dict::{DType, Storage, Value};

/// `data.pkl` and its `data/<key>` records, in the order they are written.
#[derive(Clone, Debug)]
pub struct Prebuilt {
    pickle: Vec<u8>,
    records: Vec<(String, Bytes)>,
}

/// A record list that cannot be written as a torch archive.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrebuiltError {
    /// Two records share a key.
    #[error("storage key '{0}' is given twice")]
    DuplicateKey(String),
    /// A key that is not a plain record name (torch uses decimal numbers).
    #[error(
        "storage key {0:?} is not a record name (letters, digits and '_' only, as torch's keys are)"
    )]
    BadKey(String),
}

impl Prebuilt {
    /// `pickle` with its records; keys must be unique plain names (they become zip entry names,
    /// so `../x` must never get through).
    pub fn new(pickle: Vec<u8>, records: Vec<(String, Bytes)>) -> Result<Prebuilt, PrebuiltError> {
        let mut seen = HashSet::with_capacity(records.len());
        for (key, _) in &records {
            let plain =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return Err(PrebuiltError::BadKey(key.clone()));
            }
            if !seen.insert(key.as_str()) {
                return Err(PrebuiltError::DuplicateKey(key.clone()));
            }
        }
        Ok(Prebuilt { pickle, records })
    }

    /// The records' bytes, to be re-pointed (a save behind training copies them into staging);
    /// the keys stay as checked.
    pub fn storages_mut(&mut self) -> impl Iterator<Item = &mut Bytes> {
        self.records.iter_mut().map(|(_, bytes)| bytes)
    }

    /// The `data.pkl` bytes.
    pub fn pickle(&self) -> &[u8] {
        &self.pickle
    }

    /// The records, in file order.
    pub fn records(&self) -> &[(String, Bytes)] {
        &self.records
    }

    /// Bytes of storage data.
    pub fn storage_bytes(&self) -> u64 {
        self.records.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// Split into the pickle and the records.
    pub fn into_parts(self) -> (Vec<u8>, Vec<(String, Bytes)>) {
        (self.pickle, self.records)
    }

    /// The checkpoint as a tree, its tensors sharing the records' memory (for a filter, or a
    /// format that needs the tree). Fails like reading a damaged file would: a pickle cairn's
    /// reader refuses, or a record whose size is not what the pickle declares.
    pub fn tree(&self) -> Result<Value, PickleError> {
        let mut source = Records(&self.records);
        pickle_read::unpickle(&self.pickle, &mut source)
    }
}

/// The records as a [`StorageSource`] for the unpickler.
struct Records<'a>(&'a [(String, Bytes)]);

impl StorageSource for Records<'_> {
    fn storage(&mut self, key: &str, dtype: DType, numel: u64) -> Result<Storage, String> {
        let Some((_, bytes)) = self.0.iter().find(|(k, _)| k == key) else {
            return Err(format!("storage record 'data/{key}' is missing"));
        };
        if numel.checked_mul(dtype.size() as u64) != Some(bytes.len() as u64) {
            return Err(format!(
                "storage record 'data/{key}' holds {} bytes, but the pickle declares {numel} {dtype} elements",
                bytes.len()
            ));
        }
        Ok(Storage::new(dtype, bytes.clone()))
    }
}

/// `tree` pickled elsewhere, as cairn's Python package hands a checkpoint over (for tests).
#[cfg(test)]
pub(crate) fn prebuilt_of(tree: &Value) -> Prebuilt {
    let pickled = crate::pt::pickle_write::pickle(tree).unwrap();
    let records = pickled
        .storages
        .iter()
        .enumerate()
        .map(|(k, s)| (k.to_string(), s.bytes().clone()))
        .collect();
    Prebuilt::new(pickled.bytes, records).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_dict::{Dict, Tensor};

    fn sample() -> (Value, Prebuilt) {
        let tree = Value::Dict(
            Dict::new()
                .with("w", Tensor::from_f32(vec![2], &[1.0, 2.0]))
                .with("n", Value::Int(3)),
        );
        let prebuilt = prebuilt_of(&tree);
        (tree, prebuilt)
    }

    #[test]
    fn the_tree_comes_back_from_pickle_and_records() {
        let (tree, prebuilt) = sample();
        assert_eq!(prebuilt.tree().unwrap(), tree);
        assert_eq!(prebuilt.storage_bytes(), 8);
    }

    #[test]
    fn records_of_the_wrong_size_or_missing_are_named() {
        let (_, prebuilt) = sample();
        let (pickle, _) = prebuilt.into_parts();
        let short = Prebuilt::new(
            pickle.clone(),
            vec![("0".into(), Bytes::from_static(b"1234"))],
        );
        let err = short.unwrap().tree().unwrap_err().to_string();
        assert!(err.contains("'data/0' holds 4 bytes"), "{err}");
        let err = Prebuilt::new(pickle, vec![])
            .unwrap()
            .tree()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'data/0' is missing"), "{err}");
    }

    #[test]
    fn written_in_every_container_it_reads_back_as_the_tree() {
        let (tree, prebuilt) = sample();
        let dir = tempfile::tempdir().unwrap();
        for ext in ["pt", "tar", "tar.gz", "pt.zst", "pt.lz4", "safetensors"] {
            let path = dir.path().join(format!("ck.{ext}"));
            let format = crate::format_of(&path).unwrap();
            let mut file = std::fs::File::create(&path).unwrap();
            let n = crate::write_prebuilt(&path, format, &prebuilt, Some("archive"), &mut file)
                .unwrap();
            assert_eq!(n, std::fs::metadata(&path).unwrap().len(), "{ext}");
            assert_eq!(crate::read_checkpoint(&path).unwrap(), tree, "{ext}");
        }
        // The pickle is written as given, under the folder asked for.
        let pt = std::fs::read(dir.path().join("ck.pt")).unwrap();
        let needle = b"archive/data.pkl";
        assert!(pt.windows(needle.len()).any(|w| w == needle));
        assert!(
            pt.windows(prebuilt.pickle().len())
                .any(|w| w == prebuilt.pickle())
        );
    }

    #[test]
    fn keys_must_be_unique_plain_names() {
        let rec = |k: &str| (k.to_owned(), Bytes::new());
        assert_eq!(
            Prebuilt::new(vec![], vec![rec("0"), rec("0")]).unwrap_err(),
            PrebuiltError::DuplicateKey("0".into())
        );
        for bad in ["", "../x", "a/b", "0 "] {
            assert_eq!(
                Prebuilt::new(vec![], vec![rec(bad)]).unwrap_err(),
                PrebuiltError::BadKey(bad.into())
            );
        }
    }
}
