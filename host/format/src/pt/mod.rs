//! `torch.save`'s file format (`.pt`): a ZIP64 archive of a pickle plus one record per storage.
//!
//! Writing is planned first ([`PtPlan`]): the pickle is built in memory (it is small), storages
//! are deduplicated by identity, and every record's offset is computed. Then tensor bytes are
//! streamed from their storages to the sink. Reading parses the zip over one buffer and
//! unpickles with [`pickle_read`], which never executes anything.

pub mod pickle_read;
pub mod pickle_write;
pub mod zip;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use crate::checksum::{FileSum, Summing};
use crate::limits::{ReadLimits, human_bytes};
use crate::state_dict::{DType, Storage, Tensor, Value};
use pickle_read::{PickleError, StorageSource};
use pickle_write::WriteError;
use zip::{CrcWriter, Plan, ZipEntry, ZipError};

/// What is wrong with a `.pt` (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub enum PtError {
    /// The zip container is damaged.
    #[error("{0}")]
    Zip(ZipError),
    /// The pickle is damaged or hostile, or reading it would exceed a bound.
    #[error("{}", pickle_message(.0))]
    Pickle(PickleError),
    /// The tree cannot be written (a tensor view past its storage, too deep).
    #[error("cannot be written: {0}")]
    View(WriteError),
    /// Not a zip-format torch file.
    #[error("is not a torch.save zip archive: {0}")]
    NotTorch(String),
    /// Reading it would exceed a [`ReadLimits`] bound.
    #[error("is refused: {0}")]
    Limit(String),
    /// Reading or writing failed.
    #[error("could not be written: {0}")]
    Io(io::Error),
}

fn pickle_message(e: &PickleError) -> String {
    use pickle_read::PickleFault;
    match e.fault {
        PickleFault::TooDeep | PickleFault::TooLarge => format!("is refused: its pickle {e}"),
        PickleFault::Damaged | PickleFault::Refused => format!("has an unreadable pickle: {e}"),
    }
}

// Conversions without `#[from]`: the message already includes the cause, and a `source()` would
// make `{:#}` printers repeat it.
impl From<ZipError> for PtError {
    fn from(e: ZipError) -> Self {
        PtError::Zip(e)
    }
}

impl From<PickleError> for PtError {
    fn from(e: PickleError) -> Self {
        PtError::Pickle(e)
    }
}

impl From<WriteError> for PtError {
    fn from(e: WriteError) -> Self {
        PtError::View(e)
    }
}

impl From<io::Error> for PtError {
    fn from(e: io::Error) -> Self {
        PtError::Io(e)
    }
}

/// True when every element a tensor view addresses lies inside its storage.
pub fn view_fits(t: &Tensor) -> bool {
    if t.shape.len() != t.stride.len() {
        return false;
    }
    if t.shape.contains(&0) {
        return true;
    }
    let numel = t.storage.numel() as u64;
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.storage_offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        });
    last.is_some_and(|last| last < numel)
}

/// A `.pt` ready to be written: the pickle, the storage records and where every record goes.
pub struct PtPlan {
    zip: Plan,
    pickle: Vec<u8>,
    /// The bytes of `data/<key>`, in file order.
    records: Vec<Bytes>,
}

/// Records after `data.pkl` and before the storages, as recent torch writes them.
const HEAD_RECORDS: [(&str, &[u8]); 3] = [
    (".format_version", b"1"),
    (".storage_alignment", b"64"),
    ("byteorder", b"little"),
];
const VERSION_RECORD: (&str, &[u8]) = ("version", b"3\n");

impl PtPlan {
    /// Pickle `tree` and lay out the archive; `archive_name` is the entry prefix (torch uses
    /// the file's stem).
    pub fn new(tree: &Value, archive_name: &str) -> Result<PtPlan, PtError> {
        let pickled = pickle_write::pickle(tree)?;
        let records = pickled
            .storages
            .iter()
            .enumerate()
            .map(|(key, s)| (key.to_string(), s.bytes().clone()))
            .collect();
        Ok(PtPlan::from_pickled(pickled.bytes, records, archive_name))
    }

    /// Lay out an archive around a pickle made elsewhere: `pickle` is `data.pkl` and `records`
    /// the `data/<key>` storages it references, in the order they are to appear (torch writes
    /// them in first-reference order). Nothing is checked or copied: the records' bytes are
    /// streamed as they are when the plan is written.
    pub fn from_pickled(
        pickle: Vec<u8>,
        records: Vec<(String, Bytes)>,
        archive_name: &str,
    ) -> PtPlan {
        let mut names: Vec<(String, u64)> =
            vec![(format!("{archive_name}/data.pkl"), pickle.len() as u64)];
        for (name, body) in HEAD_RECORDS {
            names.push((format!("{archive_name}/{name}"), body.len() as u64));
        }
        for (key, bytes) in &records {
            names.push((format!("{archive_name}/data/{key}"), bytes.len() as u64));
        }
        names.push((
            format!("{archive_name}/{}", VERSION_RECORD.0),
            VERSION_RECORD.1.len() as u64,
        ));
        let zip = Plan::new(names.iter().map(|(n, s)| (n.as_str(), *s)));
        PtPlan {
            zip,
            pickle,
            records: records.into_iter().map(|(_, bytes)| bytes).collect(),
        }
    }

    /// The archive's exact size in bytes.
    pub fn total_len(&self) -> u64 {
        self.zip.total_len()
    }

    /// Payload of record `i`, in file order.
    fn payload(&self, i: usize) -> &[u8] {
        let storages = 1 + HEAD_RECORDS.len();
        match i {
            0 => &self.pickle,
            i if i < storages => HEAD_RECORDS[i - 1].1,
            i if i < storages + self.records.len() => &self.records[i - storages],
            _ => VERSION_RECORD.1,
        }
    }

    /// Stream the archive into any writer; CRCs are computed just before each record.
    pub fn write_to<W: Write + ?Sized>(&self, sink: &mut W) -> io::Result<u64> {
        let mut w = CrcWriter::new(sink);
        let mut crcs = Vec::with_capacity(self.zip.entries.len());
        for (i, entry) in self.zip.entries.iter().enumerate() {
            let payload = self.payload(i);
            let crc = zip::crc_of(&[payload]);
            w.pad_to(entry.header_offset)?;
            w.put(&self.zip.local_header(i, crc))?;
            w.put(payload)?;
            crcs.push(crc);
        }
        w.put(&self.zip.trailer(&crcs))?;
        Ok(w.written)
    }

    /// Write the archive into `file` from its current position in one pass: a large record's
    /// CRC is folded into the write of its payload and patched into the local header afterwards
    /// (small records are hashed just before their header instead). Writeback of
    /// finished ranges is started while later tensors are still being copied, so the caller's
    /// final fsync has little left to wait for. With `sum`, the file's CRC-64 is computed in
    /// the same pass (the patched headers as holes, filled once patched).
    pub fn write_to_file(&self, file: &mut File, mut sum: Option<&mut FileSum>) -> io::Result<u64> {
        use std::io::Seek;
        let base = file.stream_position()?;
        let mut crcs = Vec::with_capacity(self.zip.entries.len());
        let mut patches = Vec::new();
        let mut writeback = Writeback::new(file, base);
        {
            let buffered = BufWriter::with_capacity(1 << 20, &mut *file);
            let mut summing = Summing::new(buffered, sum.as_deref_mut());
            let mut w = CrcWriter::new(&mut summing);
            for (i, entry) in self.zip.entries.iter().enumerate() {
                let payload = self.payload(i);
                w.pad_to(entry.header_offset)?;
                if payload.len() < CHUNK {
                    // Small: hash first (it stays in cache), write the final header, no patch.
                    let crc = zip::crc_of(&[payload]);
                    w.put(&self.zip.local_header(i, crc))?;
                    w.put(payload)?;
                    crcs.push(crc);
                    writeback.start(w.written);
                    continue;
                }
                let header = self.zip.local_header(i, 0);
                let hole = w.get_mut().hole(header.len() as u64);
                w.put(&header)?;
                patches.push((i, hole));
                let mut hasher = crc32fast::Hasher::new();
                for chunk in payload.chunks(CHUNK) {
                    hasher.update(chunk);
                    w.put(chunk)?;
                    if chunk.len() == CHUNK {
                        writeback.start(w.written);
                    }
                }
                crcs.push(hasher.finalize());
            }
            w.put(&self.zip.trailer(&crcs))?;
            summing.flush()?;
        }
        for (i, hole) in patches {
            file.write_all_at(&crcs[i].to_le_bytes(), base + self.zip.crc_field_offset(i))?;
            if let (Some(sum), Some(hole)) = (sum.as_deref_mut(), hole) {
                sum.fill(hole, &self.zip.local_header(i, crcs[i]))?;
            }
        }
        Ok(self.total_len())
    }
}

/// Payload bytes per write: large enough for few syscalls, small enough to stay in cache for
/// the CRC pass just before.
const CHUNK: usize = 8 << 20;
/// Start writeback once this much has been written since the last start.
const WRITEBACK_STEP: u64 = 64 << 20;

/// Starts asynchronous writeback (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) of what has been
/// written, so the disk works while the CPU copies. Only a hint: durability is the caller's
/// fsync. Bytes still in the `BufWriter` are not covered, which is harmless.
struct Writeback {
    fd: std::os::fd::RawFd,
    base: u64,
    started: u64,
}

impl Writeback {
    fn new(file: &File, base: u64) -> Writeback {
        use std::os::fd::AsRawFd;
        Writeback {
            fd: file.as_raw_fd(),
            base,
            started: 0,
        }
    }

    fn start(&mut self, written: u64) {
        if written < self.started + WRITEBACK_STEP {
            return;
        }
        let (offset, len) = (self.base + self.started, written - self.started);
        // SAFETY: a plain syscall on an open descriptor owned by the caller's File; errors are
        // ignored because this only schedules writeback.
        unsafe {
            libc::sync_file_range(
                self.fd,
                offset as i64,
                len as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = written;
    }
}

/// The entries of a torch archive, by name without the archive prefix.
struct Archive {
    records: HashMap<String, ZipEntry>,
}

impl Archive {
    fn open(data: &Bytes) -> Result<Archive, PtError> {
        if data.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) || data.starts_with(b"\x80\x02") {
            return Err(PtError::NotTorch(
                "it uses the legacy (pre-1.6) torch.save format, which cairn does not read".into(),
            ));
        }
        let entries = zip::read_entries(data)?;
        let Some(first) = entries.first() else {
            return Err(PtError::NotTorch("the archive is empty".into()));
        };
        let Some((prefix, _)) = first.name.split_once('/') else {
            return Err(PtError::NotTorch(format!(
                "its first entry '{}' is not in a folder",
                first.name
            )));
        };
        let prefix = format!("{prefix}/");
        let records = entries
            .into_iter()
            .filter_map(|e| Some((e.name.strip_prefix(&prefix)?.to_owned(), e)))
            .collect();
        Ok(Archive { records })
    }

    /// Every record must match its CRC-32 (cheap next to reading the bytes at all).
    fn check_crcs(&self) -> Result<(), PtError> {
        for entry in self.records.values() {
            entry.check_crc()?;
        }
        Ok(())
    }

    /// torch records the writer's byte order; cairn reads only little-endian data.
    fn check_byteorder(&self) -> Result<(), PtError> {
        match self.records.get("byteorder") {
            Some(e) if &e.data[..] != b"little" => Err(PtError::NotTorch(format!(
                "its storages are in '{}' byte order; cairn reads only little-endian checkpoints",
                String::from_utf8_lossy(&e.data)
            ))),
            _ => Ok(()),
        }
    }

    fn pickle(&self) -> Result<&ZipEntry, PtError> {
        self.check_byteorder()?;
        let entry = self
            .records
            .get("data.pkl")
            .ok_or_else(|| PtError::NotTorch("it has no data.pkl record".into()))?;
        Ok(entry)
    }
}

impl StorageSource for Archive {
    fn storage(&mut self, key: &str, dtype: DType, numel: u64) -> Result<Storage, String> {
        let name = format!("data/{key}");
        let Some(entry) = self.records.get(&name) else {
            return Err(format!("storage record '{name}' is missing"));
        };
        let want = numel.checked_mul(dtype.size() as u64);
        if want != Some(entry.data.len() as u64) {
            return Err(format!(
                "storage record '{name}' holds {} bytes, but the pickle declares {numel} {dtype} elements",
                entry.data.len()
            ));
        }
        Ok(Storage::new(dtype, entry.data.clone()))
    }
}

/// Read a `.pt` held in `data` (a memory map or buffer) with the default limits, checking it
/// fully (see [`read_pt_with`]); tensors share `data`'s memory.
#[cfg(test)]
pub fn read_pt(data: &Bytes) -> Result<Value, PtError> {
    Ok(read_pt_with(data, &ReadLimits::default())?.0)
}

/// What a full check of a `.pt` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtSummary {
    /// Zip entries checked (every CRC verified).
    pub records: usize,
    /// Tensors in the tree (one inside a shared subtree counts once).
    pub tensors: usize,
    /// Distinct storages referenced.
    pub storages: usize,
    /// Bytes of storage data.
    pub storage_bytes: u64,
}

/// Check every CRC, the records torch requires, and that the pickle parses with every storage
/// present at the declared size; the summary of what was found.
#[cfg(test)]
pub fn verify_pt(data: &Bytes) -> Result<PtSummary, PtError> {
    Ok(read_pt_with(data, &ReadLimits::default())?.1)
}

/// Read a `.pt` and check it in the same pass: every record's CRC-32, the records torch
/// requires (`version`, a little-endian `byteorder`), the pickle (within `limits`), and every
/// storage record present at the size the pickle declares. One pass over the bytes serves
/// both resume (which needs the tree) and verification (which needs the certainty).
pub fn read_pt_with(data: &Bytes, limits: &ReadLimits) -> Result<(Value, PtSummary), PtError> {
    let mut archive = Archive::open(data)?;
    archive.check_crcs()?;
    if !archive.records.contains_key("version") && !archive.records.contains_key(".data/version") {
        return Err(PtError::NotTorch("it has no version record".into()));
    }
    let pickle = archive.pickle()?.data.clone();
    if pickle.len() as u64 > limits.max_pickle_bytes {
        return Err(PtError::Limit(format!(
            "its pickle (data.pkl) is {}, more than the {} cairn reads",
            human_bytes(pickle.len() as u64),
            human_bytes(limits.max_pickle_bytes)
        )));
    }
    let tree = pickle_read::unpickle(&pickle, &mut archive)?;
    let mut summary = PtSummary {
        records: archive.records.len(),
        ..PtSummary::default()
    };
    let mut seen = HashMap::new();
    count_tensors(&tree, &mut |t| {
        summary.tensors += 1;
        seen.insert(t.storage.id(), t.storage.bytes().len() as u64);
    });
    summary.storages = seen.len();
    summary.storage_bytes = seen.values().sum();
    Ok((tree, summary))
}

/// Visit every tensor in a tree, including those inside unmodelled objects; a tensor inside a
/// shared subtree is visited once. Walks without recursion.
pub fn count_tensors(v: &Value, f: &mut dyn FnMut(&Tensor)) {
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        match v {
            Value::Tensor(t) => f(t),
            Value::Shared(s) if !seen.insert(s.id()) => {}
            _ => pending.extend(v.children().into_iter().rev()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_dict::Dict;

    fn sample() -> Value {
        let w = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut col = w.clone();
        col.shape = vec![2];
        col.stride = vec![3];
        col.storage_offset = 1;
        Value::Dict(
            Dict::new()
                .with("w", w)
                .with("col", col)
                .with("n", Value::Int(-5_000_000_000))
                .with("b", Value::Bytes(vec![0, 200, 255])),
        )
    }

    #[test]
    fn write_then_read_round_trips_and_shares_storage() {
        let plan = PtPlan::new(&sample(), "ckpt").unwrap();
        let mut buf = Vec::new();
        let n = plan.write_to(&mut buf).unwrap();
        assert_eq!(n, buf.len() as u64);
        let data = Bytes::from(buf);
        let back = read_pt(&data).unwrap();
        assert_eq!(back, sample());
        let d = back.as_dict().unwrap();
        let (Some(Value::Tensor(a)), Some(Value::Tensor(b))) = (d.get("w"), d.get("col")) else {
            panic!()
        };
        assert!(a.storage.same(&b.storage));
        let s = verify_pt(&data).unwrap();
        assert_eq!((s.tensors, s.storages, s.storage_bytes), (2, 1, 24));
    }

    #[test]
    fn file_writer_patches_crcs() {
        let plan = PtPlan::new(&sample(), "x").unwrap();
        let mut f = tempfile::tempfile().unwrap();
        plan.write_to_file(&mut f, None).unwrap();
        let mut expected = Vec::new();
        plan.write_to(&mut expected).unwrap();
        let mut got = vec![0u8; expected.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn big_endian_files_are_refused() {
        let entries: [(&str, &[u8]); 3] = [
            ("x/data.pkl", b"\x80\x02N."),
            ("x/byteorder", b"big"),
            ("x/version", b"3\n"),
        ];
        let plan = Plan::new(entries.iter().map(|(n, d)| (*n, d.len() as u64)));
        let mut buf = Vec::new();
        let mut w = CrcWriter::new(&mut buf);
        let mut crcs = Vec::new();
        for (i, (_, d)) in entries.iter().enumerate() {
            w.put(&plan.local_header(i, zip::crc_of(&[d]))).unwrap();
            crcs.push(w.put_payload(&[d]).unwrap());
        }
        w.put(&plan.trailer(&crcs)).unwrap();
        let err = read_pt(&Bytes::from(buf)).unwrap_err().to_string();
        assert!(err.contains("byte order"), "{err}");
    }

    #[test]
    fn missing_and_short_records_are_named() {
        let plan = PtPlan::new(&sample(), "x").unwrap();
        let mut buf = Vec::new();
        plan.write_to(&mut buf).unwrap();
        // Rename data/0 to data/9 (same length) and fix nothing else: the record is now missing.
        let pos = buf.windows(8).rposition(|w| w == b"x/data/0").unwrap();
        buf[pos + 7] = b'9';
        let err = read_pt(&Bytes::from(buf)).unwrap_err().to_string();
        assert!(err.contains("'data/0' is missing"), "{err}");
    }
}
