//! Reading, writing and verifying checkpoint files of every supported format — the entry points
//! the saver and the CLI use. A write's format is chosen from the file name
//! ([`CheckpointFormat`]); a read's from the file's leading bytes, whatever its name says (a
//! store may hold a `.pt.gz` under a `.pt` name, a `latest` link may name a compressed file).
//!
//! Writes stream: the pickle is built in memory, tensor bytes go from their storages to the
//! file (or the compressor) without a whole-archive buffer. Reads memory-map the file; a
//! compressed file is first decompressed into an unlinked temporary file (disk, not RAM, holds
//! the expanded bytes), within the bounds of [`ReadLimits`], and that is mapped. Reading and
//! verifying are one pass: every read checks every CRC, record and the pickle.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::checksum::{FileSum, Summing};
use crate::container::{self, CheckpointFormat, Compression, Encoder, Inner, Outer};
use crate::error::FormatError;
use crate::limits::{ReadLimits, human_bytes};
use crate::prebuilt::Prebuilt;
use crate::pt::{self, PtError, PtPlan, PtSummary};
use crate::safetensors_io;
use crate::state_dict::Value;

fn pt_err(path: &Path) -> impl Fn(PtError) -> FormatError + '_ {
    move |error| match error {
        PtError::Io(error) => FormatError::Write {
            path: path.to_owned(),
            error,
        },
        error => FormatError::Pt {
            path: path.to_owned(),
            error,
        },
    }
}

fn write_err(path: &Path) -> impl Fn(io::Error) -> FormatError + '_ {
    move |error| FormatError::Write {
        path: path.to_owned(),
        error,
    }
}

fn read_err(path: &Path) -> impl Fn(io::Error) -> FormatError + '_ {
    move |error| FormatError::Read {
        path: path.to_owned(),
        error,
    }
}

/// The format `path`'s name selects.
pub fn format_of(path: &Path) -> Result<CheckpointFormat, FormatError> {
    CheckpointFormat::from_name(&path.to_string_lossy())
}

/// The archive prefix torch.save would use: the file's stem for a path, `archive` for a stream
/// (Composer pipes compressed `.pt` through a compressor), `composer_states` inside a tar.
fn archive_name(path: &Path, format: CheckpointFormat) -> String {
    match format {
        CheckpointFormat::Pt => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "archive".into()),
        CheckpointFormat::Tar(_) => "composer_states".into(),
        _ => "archive".into(),
    }
}

/// What a summed write produced: its size and the file's CRC-64/NVME, computed as it was
/// written (a sharded save's record carries it; see [`write_checkpoint_summed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub crc64nvme: u64,
}

/// Write `tree` as a checkpoint of `format` into the already-open `out` (from its current
/// position). `path` is the final name: it sets the archive prefix and names the file in
/// errors. Returns the bytes written. The caller fsyncs and renames.
pub fn write_checkpoint(
    path: &Path,
    format: CheckpointFormat,
    tree: &Value,
    out: &mut File,
) -> Result<u64, FormatError> {
    write_tree(path, format, tree, out, None)
}

/// [`write_checkpoint`], also computing the CRC-64/NVME of what it writes in the same pass (no
/// reading back): the file's, when `out` starts empty, as a save's temporary file does.
pub fn write_checkpoint_summed(
    path: &Path,
    format: CheckpointFormat,
    tree: &Value,
    out: &mut File,
) -> Result<Written, FormatError> {
    let mut sum = FileSum::default();
    let bytes = write_tree(path, format, tree, out, Some(&mut sum))?;
    finish(path, bytes, sum)
}

fn write_tree(
    path: &Path,
    format: CheckpointFormat,
    tree: &Value,
    out: &mut File,
    sum: Option<&mut FileSum>,
) -> Result<u64, FormatError> {
    if format == CheckpointFormat::Safetensors {
        return write_safetensors(path, tree, out, sum);
    }
    let plan = PtPlan::new(tree, &archive_name(path, format)).map_err(pt_err(path))?;
    write_plan(path, format, &plan, out, sum)
}

/// Write a checkpoint whose pickle was made elsewhere ([`Prebuilt`]) into the already-open
/// `out`, as [`write_checkpoint`] writes a tree: the pickle verbatim and the records streamed
/// from their memory. `archive` is the zip's folder for a plain `.pt` (`archive` is what
/// `torch.save` names it when given a file object, as Composer does; `None`: the file's stem, as
/// for a path); tars and compressed files use Composer's own names. A `.safetensors` name reads
/// the pickle into a tree first (that format has no pickle).
pub fn write_prebuilt(
    path: &Path,
    format: CheckpointFormat,
    prebuilt: &Prebuilt,
    archive: Option<&str>,
    out: &mut File,
) -> Result<u64, FormatError> {
    write_pickled(path, format, prebuilt, archive, out, None)
}

/// [`write_prebuilt`], also computing the CRC-64/NVME of what it writes in the same pass (the
/// file's, when `out` starts empty).
pub fn write_prebuilt_summed(
    path: &Path,
    format: CheckpointFormat,
    prebuilt: &Prebuilt,
    archive: Option<&str>,
    out: &mut File,
) -> Result<Written, FormatError> {
    let mut sum = FileSum::default();
    let bytes = write_pickled(path, format, prebuilt, archive, out, Some(&mut sum))?;
    finish(path, bytes, sum)
}

fn write_pickled(
    path: &Path,
    format: CheckpointFormat,
    prebuilt: &Prebuilt,
    archive: Option<&str>,
    out: &mut File,
    sum: Option<&mut FileSum>,
) -> Result<u64, FormatError> {
    if format == CheckpointFormat::Safetensors {
        let tree = prebuilt.tree().map_err(|e| FormatError::Pt {
            path: path.to_owned(),
            error: PtError::Pickle(e),
        })?;
        return write_safetensors(path, &tree, out, sum);
    }
    let name = match (format, archive) {
        (CheckpointFormat::Pt, Some(name)) => name.to_owned(),
        _ => archive_name(path, format),
    };
    let plan = PtPlan::from_pickled(
        prebuilt.pickle().to_vec(),
        prebuilt.records().to_vec(),
        &name,
    );
    write_plan(path, format, &plan, out, sum)
}

fn finish(path: &Path, bytes: u64, sum: FileSum) -> Result<Written, FormatError> {
    let crc64nvme = sum.finish().map_err(write_err(path))?;
    Ok(Written { bytes, crc64nvme })
}

fn write_safetensors(
    path: &Path,
    tree: &Value,
    out: &mut File,
    sum: Option<&mut FileSum>,
) -> Result<u64, FormatError> {
    safetensors_io::write(tree, &mut Summing::new(&mut *out, sum)).map_err(|error| {
        FormatError::Safetensors {
            path: path.to_owned(),
            error,
        }
    })
}

fn write_plan(
    path: &Path,
    format: CheckpointFormat,
    plan: &PtPlan,
    out: &mut File,
    sum: Option<&mut FileSum>,
) -> Result<u64, FormatError> {
    let start = out.stream_position().map_err(write_err(path))?;
    match format {
        CheckpointFormat::Pt => return plan.write_to_file(out, sum).map_err(write_err(path)),
        CheckpointFormat::CompressedPt(c) => compressed(Summing::new(&mut *out, sum), c, |w| {
            plan.write_to(w).map(drop)
        }),
        CheckpointFormat::Tar(c) => {
            let body = |w: &mut dyn Write| write_tar(plan, w);
            let summing = Summing::new(&mut *out, sum);
            match c {
                None => {
                    let mut w = BufWriter::with_capacity(1 << 20, summing);
                    body(&mut w).and_then(|_| w.flush())
                }
                Some(c) => compressed(summing, c, body),
            }
        }
        CheckpointFormat::Safetensors => Err(io::Error::other(
            "a safetensors file has no torch archive to write",
        )),
    }
    .map_err(write_err(path))?;
    let end = out.stream_position().map_err(write_err(path))?;
    Ok(end - start)
}

fn compressed(
    out: impl Write,
    c: Compression,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let buffered = BufWriter::with_capacity(1 << 20, out);
    let mut enc = Encoder::new(c, buffered)?;
    body(&mut enc)?;
    enc.finish()?.flush()
}

fn write_tar(plan: &PtPlan, w: &mut dyn Write) -> io::Result<()> {
    let size = plan.total_len();
    w.write_all(&container::tar_header(size)?)?;
    plan.write_to(&mut *w)?;
    w.write_all(&container::tar_trailer(size))
}

/// Memory-map a file as shared bytes.
fn map(file: &File) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; cairn never writes a checkpoint while reading it. A file
    // truncated by another process underneath would fault, as with any mmap reader.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(map))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An open checkpoint file: only a regular file is opened (a FIFO would block the open, a
/// device would read forever), and it is named in every error.
struct Source<'p> {
    path: &'p Path,
    file: File,
    len: u64,
}

impl<'p> Source<'p> {
    fn open(path: &'p Path) -> Result<Source<'p>, FormatError> {
        let meta = std::fs::metadata(path).map_err(read_err(path))?;
        let kind = meta.file_type();
        let not_a_file = |what: &str| {
            read_err(path)(io::Error::other(format!(
                "it is {what}, not a checkpoint file"
            )))
        };
        if kind.is_dir() {
            return Err(not_a_file("a folder"));
        }
        if !kind.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            return Err(not_a_file(what));
        }
        let file = File::open(path).map_err(read_err(path))?;
        Ok(Source {
            path,
            file,
            len: meta.len(),
        })
    }

    /// The first [`container::HEAD_LEN`] bytes (fewer for a shorter file), read without
    /// moving the file's position.
    fn head(&self) -> Result<Vec<u8>, FormatError> {
        use std::os::unix::fs::FileExt;
        let mut head = vec![0u8; container::HEAD_LEN];
        let mut got = 0;
        while got < head.len() {
            match self.file.read_at(&mut head[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(self.path)(e)),
            }
        }
        head.truncate(got);
        Ok(head)
    }
}

/// Decompress `src` into an unlinked temporary file and map it, checking the stream's
/// structure and its size as it comes: the first bytes out must be a zip local header or a tar
/// header (else nothing is staged), and staging stops at the bound `limits` allows for a file
/// of this size. Returns what the stream holds and its bytes.
fn decompress(
    src: &Source,
    c: Compression,
    limits: &ReadLimits,
) -> Result<(Inner, Bytes), FormatError> {
    let path = src.path;
    let damaged = |e: io::Error| FormatError::Container {
        path: path.to_owned(),
        message: format!("{} decompression failed ({e})", c.extension()),
    };
    let file = src.file.try_clone().map_err(read_err(path))?;
    let mut reader =
        container::decoder(c, io::BufReader::with_capacity(1 << 20, file)).map_err(damaged)?;
    let mut head = Vec::with_capacity(container::HEAD_LEN);
    (&mut reader)
        .take(container::HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(damaged)?;
    let Some(inner) = container::detect_inner(&head) else {
        return Err(FormatError::Container {
            path: path.to_owned(),
            message: format!(
                "it is {} data that holds neither a torch archive nor a tar (it starts with {})",
                c.extension(),
                show_bytes(&head)
            ),
        });
    };
    let allowed = limits.expansion_allowed(src.len);
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_path = std::env::temp_dir().join(format!(".cairn-unpack-{}-{n}", std::process::id()));
    let mut tmp = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(read_err(&tmp_path))?;
    let _ = std::fs::remove_file(&tmp_path);
    tmp.write_all(&head).map_err(read_err(&tmp_path))?;
    let mut staged = head.len() as u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // Never ask for more than one byte past the bound: what is staged stays within it.
        let room = allowed.saturating_add(1).saturating_sub(staged);
        let want = (buf.len() as u64).min(room).max(1);
        let n = reader.read(&mut buf[..want as usize]).map_err(damaged)?;
        if n == 0 {
            break;
        }
        if staged + n as u64 > allowed {
            return Err(FormatError::Limit {
                path: path.to_owned(),
                message: format!(
                    "expands past {} when decompressed ({}), more than cairn reads from a {} file \
                     (at most {}x its size, and {} in all); it looks like a decompression bomb",
                    human_bytes(allowed),
                    c.extension(),
                    human_bytes(src.len),
                    limits.max_expansion_ratio,
                    human_bytes(limits.max_expanded_bytes)
                ),
            });
        }
        tmp.write_all(&buf[..n]).map_err(read_err(&tmp_path))?;
        staged += n as u64;
    }
    Ok((inner, map(&tmp).map_err(read_err(path))?))
}

/// Up to 16 leading bytes, for an error message: printable ASCII as is, the rest as `\xNN`.
fn show_bytes(b: &[u8]) -> String {
    if b.is_empty() {
        return "nothing (it is empty)".into();
    }
    let mut out = String::from("'");
    for &c in b.iter().take(16) {
        if c.is_ascii_graphic() || c == b' ' {
            out.push(c as char);
        } else {
            out.push_str(&format!("\\x{c:02x}"));
        }
    }
    out.push('\'');
    out
}

/// What a read found: the tree, what it held, and what its name said.
#[derive(Debug)]
pub struct CheckpointRead {
    /// The checkpoint's content.
    pub tree: Value,
    /// What the file is (by its content), what its name says, and what it holds.
    pub report: VerifyReport,
}

/// Read a checkpoint of any supported format, chosen by its content, with the default
/// [`ReadLimits`], verifying it as it is read.
pub fn read_checkpoint(path: &Path) -> Result<Value, FormatError> {
    Ok(read_checkpoint_with(path, &ReadLimits::default())?.tree)
}

/// Read and verify a checkpoint in one pass: the container is chosen by the file's leading
/// bytes (the name is used only to write; a mismatch is reported in
/// [`VerifyReport::named`]), compressed data is checked and bounded as it is staged, every zip
/// CRC and storage record is checked, and the pickle is read within `limits`.
pub fn read_checkpoint_with(
    path: &Path,
    limits: &ReadLimits,
) -> Result<CheckpointRead, FormatError> {
    let src = Source::open(path)?;
    let head = src.head()?;
    let Some(outer) = container::detect(&head, src.len) else {
        return Err(unrecognised(path, &head));
    };
    let named = named_format(path);
    let (format, data) = match outer {
        Outer::Zip => (
            CheckpointFormat::Pt,
            map(&src.file).map_err(read_err(path))?,
        ),
        Outer::Tar => (
            CheckpointFormat::Tar(None),
            map(&src.file).map_err(read_err(path))?,
        ),
        Outer::Safetensors => {
            // The JSON header holds the tree: it is bounded like a pickle.
            let header = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
            if header > limits.max_pickle_bytes {
                return Err(FormatError::Limit {
                    path: path.to_owned(),
                    message: format!(
                        "is refused: its safetensors header is {}, more than the {} cairn reads",
                        human_bytes(header),
                        human_bytes(limits.max_pickle_bytes)
                    ),
                });
            }
            let data = map(&src.file).map_err(read_err(path))?;
            let tree = safetensors_io::read(&data).map_err(|error| FormatError::Safetensors {
                path: path.to_owned(),
                error,
            })?;
            let mut summary = PtSummary::default();
            let mut seen = std::collections::HashSet::new();
            pt::count_tensors(&tree, &mut |t| {
                summary.tensors += 1;
                if seen.insert(t.storage.id()) {
                    summary.storages += 1;
                    summary.storage_bytes += t.storage.bytes().len() as u64;
                }
            });
            let report = VerifyReport {
                format: CheckpointFormat::Safetensors,
                named,
                file_bytes: src.len,
                summary,
            };
            return Ok(CheckpointRead { tree, report });
        }
        Outer::Compressed(c) => match decompress(&src, c, limits)? {
            (Inner::Zip, data) => (CheckpointFormat::CompressedPt(c), data),
            (Inner::Tar, data) => (CheckpointFormat::Tar(Some(c)), data),
        },
    };
    let data = if let CheckpointFormat::Tar(_) = format {
        let (at, size) = container::find_tar_member(&data).map_err(|e| FormatError::Container {
            path: path.to_owned(),
            message: format!("its tar cannot be read ({e})"),
        })?;
        data.slice(at as usize..(at + size) as usize)
    } else {
        data
    };
    let (tree, summary) = pt::read_pt_with(&data, limits).map_err(pt_err(path))?;
    let report = VerifyReport {
        format,
        named,
        file_bytes: src.len,
        summary,
    };
    Ok(CheckpointRead { tree, report })
}

/// The format the name of the file (a link's target, if `path` is a link) selects, if any.
fn named_format(path: &Path) -> Option<CheckpointFormat> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let name = real.file_name()?.to_string_lossy().into_owned();
    CheckpointFormat::from_name(&name).ok()
}

fn unrecognised(path: &Path, head: &[u8]) -> FormatError {
    let legacy = head.first() == Some(&0x80);
    let message = if legacy {
        "it looks like the legacy (pre-1.6) torch.save format, which cairn does not read".into()
    } else {
        format!(
            "its first bytes ({}) match no format cairn reads (a torch zip, a tar, safetensors, \
             or gzip, bzip2, xz, lzma, lz4 or zstd data)",
            show_bytes(head)
        )
    };
    FormatError::Unrecognised {
        path: path.to_owned(),
        message,
    }
}

/// What [`verify_checkpoint`] found in a sound checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file's format, from its content.
    pub format: CheckpointFormat,
    /// The format its name selects (`None`: the name selects none, e.g. `x.pt.foo`); it differs
    /// from `format` when a file was renamed or a store holds it under another name.
    pub named: Option<CheckpointFormat>,
    /// Size of the file on disk.
    pub file_bytes: u64,
    /// What the torch archive holds (for safetensors: tensors and bytes only).
    pub summary: PtSummary,
}

impl VerifyReport {
    /// One sentence when the name and the content disagree, `None` when they agree.
    pub fn mismatch(&self, path: &Path) -> Option<String> {
        match self.named {
            Some(named) if named == self.format => None,
            Some(named) => Some(format!(
                "{} is named like a {named} checkpoint but holds a {} one; it was read by its content",
                path.display(),
                self.format
            )),
            None => Some(format!(
                "{}'s name selects no checkpoint format; it was read by its content as {}",
                path.display(),
                self.format
            )),
        }
    }
}

/// Full integrity check with the default [`ReadLimits`]: the container decompresses, the zip
/// structure and every CRC are sound, the pickle parses, and every storage record is present
/// with the declared size.
pub fn verify_checkpoint(path: &Path) -> Result<VerifyReport, FormatError> {
    verify_checkpoint_with(path, &ReadLimits::default())
}

/// [`verify_checkpoint`] within `limits` (the same single pass as [`read_checkpoint_with`]).
pub fn verify_checkpoint_with(
    path: &Path,
    limits: &ReadLimits,
) -> Result<VerifyReport, FormatError> {
    Ok(read_checkpoint_with(path, limits)?.report)
}
