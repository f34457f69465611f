//! Reading, writing and verifying checkpoint files of every supported format — the entry points
//! the saver and the CLI use. The format is chosen from the file name ([`CheckpointFormat`]).
//!
//! Writes stream: the pickle is built in memory, tensor bytes go from their storages to the
//! file (or the compressor) without a whole-archive buffer. Reads memory-map the file; a
//! compressed file is first decompressed into an unlinked temporary file (disk, not RAM, holds
//! the expanded bytes, so a decompression bomb cannot exhaust memory) and that is mapped.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::container::{self, CheckpointFormat, Compression, Encoder};
use crate::error::FormatError;
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

/// Write `tree` as a checkpoint of `format` into the already-open `out` (from its current
/// position). `path` is the final name: it sets the archive prefix and names the file in
/// errors. Returns the bytes written. The caller fsyncs and renames.
pub fn write_checkpoint(
    path: &Path,
    format: CheckpointFormat,
    tree: &Value,
    out: &mut File,
) -> Result<u64, FormatError> {
    if format == CheckpointFormat::Safetensors {
        return write_safetensors(path, tree, out);
    }
    let plan = PtPlan::new(tree, &archive_name(path, format)).map_err(pt_err(path))?;
    write_plan(path, format, &plan, out)
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
    if format == CheckpointFormat::Safetensors {
        let tree = prebuilt.tree().map_err(|e| FormatError::Pt {
            path: path.to_owned(),
            error: PtError::Pickle(e),
        })?;
        return write_safetensors(path, &tree, out);
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
    write_plan(path, format, &plan, out)
}

fn write_safetensors(path: &Path, tree: &Value, out: &mut File) -> Result<u64, FormatError> {
    safetensors_io::write(tree, out).map_err(|error| FormatError::Safetensors {
        path: path.to_owned(),
        error,
    })
}

/// Stream a planned torch archive into `out` in `format`'s container (not safetensors).
fn write_plan(
    path: &Path,
    format: CheckpointFormat,
    plan: &PtPlan,
    out: &mut File,
) -> Result<u64, FormatError> {
    let start = out.stream_position().map_err(write_err(path))?;
    match format {
        CheckpointFormat::Pt => return plan.write_to_file(out).map_err(write_err(path)),
        CheckpointFormat::CompressedPt(c) => compressed(out, c, |w| plan.write_to(w).map(drop)),
        CheckpointFormat::Tar(c) => {
            let body = |w: &mut dyn Write| write_tar(plan, w);
            match c {
                None => {
                    let mut w = BufWriter::with_capacity(1 << 20, &mut *out);
                    body(&mut w).and_then(|_| w.flush())
                }
                Some(c) => compressed(out, c, body),
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
    out: &mut File,
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

/// Decompress into an unlinked temporary file and map it.
fn decompress(path: &Path, c: Compression) -> Result<Bytes, FormatError> {
    let src = File::open(path).map_err(read_err(path))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_path = std::env::temp_dir().join(format!(".cairn-unpack-{}-{n}", std::process::id()));
    let mut tmp = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(read_err(&tmp_path))?;
    let _ = std::fs::remove_file(&tmp_path);
    let damaged = |e: io::Error| FormatError::Container {
        path: path.to_owned(),
        message: format!("{} decompression failed ({e})", c.extension()),
    };
    let mut reader =
        container::decoder(c, io::BufReader::with_capacity(1 << 20, src)).map_err(damaged)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(damaged)?;
        if n == 0 {
            break;
        }
        tmp.write_all(&buf[..n]).map_err(read_err(&tmp_path))?;
    }
    map(&tmp).map_err(read_err(path))
}

/// The bytes of the torch archive inside any non-safetensors checkpoint.
fn pt_bytes(path: &Path, format: CheckpointFormat) -> Result<Bytes, FormatError> {
    if path.is_dir() {
        return Err(read_err(path)(io::Error::other(
            "it is a folder, not a checkpoint file",
        )));
    }
    let whole = match format {
        CheckpointFormat::Pt | CheckpointFormat::Tar(None) | CheckpointFormat::Safetensors => {
            map(&File::open(path).map_err(read_err(path))?).map_err(read_err(path))?
        }
        CheckpointFormat::CompressedPt(c) | CheckpointFormat::Tar(Some(c)) => decompress(path, c)?,
    };
    if !matches!(format, CheckpointFormat::Tar(_)) {
        return Ok(whole);
    }
    let (at, size) = container::find_tar_member(&whole).map_err(|e| FormatError::Container {
        path: path.to_owned(),
        message: format!("its tar cannot be read ({e})"),
    })?;
    Ok(whole.slice(at as usize..(at + size) as usize))
}

/// Read a checkpoint of any supported format, chosen by `path`'s extension.
pub fn read_checkpoint(path: &Path) -> Result<Value, FormatError> {
    let format = format_of(path)?;
    let data = pt_bytes(path, format)?;
    if format == CheckpointFormat::Safetensors {
        return safetensors_io::read(&data).map_err(|error| FormatError::Safetensors {
            path: path.to_owned(),
            error,
        });
    }
    pt::read_pt(&data).map_err(pt_err(path))
}

/// What [`verify_checkpoint`] found in a sound checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file's format.
    pub format: CheckpointFormat,
    /// Size of the file on disk.
    pub file_bytes: u64,
    /// What the torch archive holds (for safetensors: tensors and bytes only).
    pub summary: PtSummary,
}

/// Full integrity check: the container decompresses, the zip structure and every CRC are
/// sound, the pickle parses, and every storage record is present with the declared size.
pub fn verify_checkpoint(path: &Path) -> Result<VerifyReport, FormatError> {
    let format = format_of(path)?;
    let file_bytes = std::fs::metadata(path).map_err(read_err(path))?.len();
    let data = pt_bytes(path, format)?;
    let summary = if format == CheckpointFormat::Safetensors {
        let tree = safetensors_io::read(&data).map_err(|error| FormatError::Safetensors {
            path: path.to_owned(),
            error,
        })?;
        let mut s = PtSummary::default();
        pt::count_tensors(&tree, &mut |t| {
            s.tensors += 1;
            s.storages += 1;
            s.storage_bytes += t.nbytes();
        });
        s
    } else {
        pt::verify_pt(&data).map_err(pt_err(path))?
    };
    Ok(VerifyReport {
        format,
        file_bytes,
        summary,
    })
}
