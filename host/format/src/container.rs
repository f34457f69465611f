//! Which on-disk format a checkpoint name selects, following Composer's extension rules
//! (reference composer-checkpointing.md §7.1), plus the compressors and the tar wrapper.
//!
//! Composer shells out to `gzip`, `lz4`, `zstd`, ...; cairn does the same work in-process with
//! crates, producing the formats those tools write (gzip, bzip2, the lz4 *frame* format, the
//! `.lzma` "alone" format, xz, zstd frames with checksums), so either side can read the other's
//! files.

use std::fmt;
use std::io::{self, Read, Write};

use crate::error::{FormatError, NameError};

/// A compressor for `.pt.<ext>` files and the compressed tar variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip (`.gz`, `.tgz`)
    Gzip,
    /// bzip2 (`.bz2`)
    Bzip2,
    /// lz4 frame format (`.lz4`)
    Lz4,
    /// raw `.lzma` ("alone") format, as the `lzma` tool writes
    Lzma,
    /// xz (`.xz`; also `.tar.lzma`, which Python's tarfile writes as xz)
    Xz,
    /// zstd, multi-threaded (`.zst`)
    Zstd,
}

impl Compression {
    /// The `.pt.<ext>` suffix for this compressor.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Bzip2 => "bz2",
            Compression::Lz4 => "lz4",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Zstd => "zst",
        }
    }

    fn from_extension(ext: &str) -> Option<Compression> {
        Some(match ext {
            "gz" => Compression::Gzip,
            "bz2" => Compression::Bzip2,
            "lz4" => Compression::Lz4,
            "lzma" => Compression::Lzma,
            "xz" => Compression::Xz,
            "zst" => Compression::Zstd,
            _ => return None,
        })
    }
}

/// The format a checkpoint file name selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// A plain `torch.save` zip (`.pt`, or any name Composer does not classify).
    Pt,
    /// A tar holding `composer_states.pt`, optionally compressed.
    Tar(Option<Compression>),
    /// A `torch.save` zip piped through a compressor (`.pt.gz`, ...).
    CompressedPt(Compression),
    /// A safetensors file (cairn's addition, for weights-only checkpoints).
    Safetensors,
}

impl CheckpointFormat {
    /// Classify a checkpoint name (a file name or path) as Composer does: the compressed-pt
    /// check first (an unknown compressor is an error, Composer's `CompressorNotFound`), then
    /// tar (a tar name without a valid tar suffix is an error), else a plain `.pt`.
    /// Case-sensitive, like Composer. `.safetensors` is cairn's own addition.
    pub fn from_name(name: &str) -> Result<CheckpointFormat, FormatError> {
        let parts: Vec<&str> = name.split('.').collect();
        let err = |reason: String| {
            FormatError::Name(NameError {
                name: name.to_owned(),
                reason,
            })
        };
        let n = parts.len();
        if n >= 2 && parts[n - 1] == "safetensors" {
            return Ok(CheckpointFormat::Safetensors);
        }
        if n >= 2 && parts[n - 2] == "pt" && parts[n - 1] != "symlink" {
            let ext = parts[n - 1];
            return match Compression::from_extension(ext) {
                Some(c) => Ok(CheckpointFormat::CompressedPt(c)),
                None if ext == "lzo" => Err(err(
                    "asks for lzop compression ('.pt.lzo'), which cairn does not provide; use .pt.lz4 or .pt.zst".into(),
                )),
                None => Err(err(format!(
                    "asks for an unknown compressor '.{ext}' (known: .pt.gz, .pt.bz2, .pt.lz4, .pt.lzma, .pt.xz, .pt.zst)"
                ))),
            };
        }
        let tar_like = n >= 2 && (parts[n - 2..].contains(&"tar") || parts[n - 1] == "tgz");
        if !tar_like {
            return Ok(CheckpointFormat::Pt);
        }
        let compression = match (parts[n - 2], parts[n - 1]) {
            (_, "tar") => None,
            ("tar", "gz") | (_, "tgz") => Some(Compression::Gzip),
            ("tar", "bz2") => Some(Compression::Bzip2),
            ("tar", "lzma") => Some(Compression::Xz),
            _ => {
                return Err(err(
                    "does not end with a valid tarfile extension (.tar, .tar.gz, .tgz, .tar.bz2, .tar.lzma)".into(),
                ));
            }
        };
        Ok(CheckpointFormat::Tar(compression))
    }

    /// A short name for the format, as `cairn inspect` reports it.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointFormat::Pt => "pt",
            CheckpointFormat::Safetensors => "safetensors",
            CheckpointFormat::Tar(None) => "tar",
            CheckpointFormat::Tar(Some(Compression::Gzip)) => "tar.gz",
            CheckpointFormat::Tar(Some(Compression::Bzip2)) => "tar.bz2",
            CheckpointFormat::Tar(Some(_)) => "tar.lzma",
            CheckpointFormat::CompressedPt(c) => match c {
                Compression::Gzip => "pt.gz",
                Compression::Bzip2 => "pt.bz2",
                Compression::Lz4 => "pt.lz4",
                Compression::Lzma => "pt.lzma",
                Compression::Xz => "pt.xz",
                Compression::Zstd => "pt.zst",
            },
        }
    }
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compressing writer that must be [`Encoder::finish`]ed (dropping it loses the trailer).
pub enum Encoder<W: Write> {
    /// gzip
    Gzip(flate2::write::GzEncoder<W>),
    /// bzip2
    Bzip2(bzip2::write::BzEncoder<W>),
    /// lz4 frame
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    /// xz or lzma-alone
    Xz(liblzma::write::XzEncoder<W>),
    /// zstd
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Start compressing into `w`.
    pub fn new(c: Compression, w: W) -> io::Result<Encoder<W>> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
            Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                w,
                bzip2::Compression::default(),
            )),
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
                Encoder::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, w))
            }
            Compression::Lzma => {
                let opts = liblzma::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
                let stream =
                    liblzma::stream::Stream::new_lzma_encoder(&opts).map_err(io::Error::other)?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(w, stream))
            }
            Compression::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(w, 6)),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, 3)?;
                e.include_checksum(true)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                e.multithread(threads as u32)?;
                Encoder::Zstd(e)
            }
        })
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(io::Error::other),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    fn inner(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(e) => e,
            Encoder::Bzip2(e) => e,
            Encoder::Lz4(e) => e,
            Encoder::Xz(e) => e,
            Encoder::Zstd(e) => e,
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}

/// A decompressing reader for `c`.
pub fn decoder<'a, R: Read + 'a>(c: Compression, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(r)),
        Compression::Lzma => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
        }
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// The member a Composer tar holds.
pub const TAR_MEMBER: &str = "composer_states.pt";

/// The 512-byte tar header for a `composer_states.pt` member of `size` bytes.
///
/// Composer's tar (Python `tarfile.add(tmpdir, arcname='')`) also holds a directory entry
/// named `''` for its temporary folder. It carries nothing a reader needs and an empty member
/// name trips some tar tools, so cairn writes only the member; Composer's loader extracts the
/// tar and opens `composer_states.pt`, which works either way. The header is GNU-format so
/// members past 8 GiB get a binary size field.
pub fn tar_header(size: u64) -> io::Result<[u8; 512]> {
    let mut h = tar::Header::new_gnu();
    h.set_path(TAR_MEMBER)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    h.set_mtime(now);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// Bytes after a member of `size` bytes: padding to 512 and the two zero end blocks.
pub fn tar_trailer(size: u64) -> Vec<u8> {
    let pad = (512 - size % 512) % 512;
    vec![0u8; pad as usize + 1024]
}

/// Where `composer_states.pt` lies inside an uncompressed tar held in `data`: (offset, size).
pub fn find_tar_member(data: &[u8]) -> io::Result<(u64, u64)> {
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?;
        let name = path.to_string_lossy();
        if name.trim_start_matches("./") == TAR_MEMBER {
            let (at, size) = (entry.raw_file_position(), entry.size());
            if at
                .checked_add(size)
                .is_none_or(|end| end > data.len() as u64)
            {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar member is truncated",
                ));
            }
            return Ok((at, size));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("the tar holds no {TAR_MEMBER}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckpointFormat::*;
    use Compression::*;

    /// The table of reference §7.1, row by row.
    #[test]
    fn composer_classification_table() {
        let ok = [
            ("ep1.pt", Pt),
            ("ep1", Pt),
            ("a.b/ep1", Pt),
            ("dir.tar/ep1.pt", Pt),
            ("ep1.tar", Tar(None)),
            ("ep1.tar.gz", Tar(Some(Gzip))),
            ("ep1.tgz", Tar(Some(Gzip))),
            ("ep1.tar.bz2", Tar(Some(Bzip2))),
            ("ep1.tar.lzma", Tar(Some(Xz))),
            ("ep1.pt.gz", CompressedPt(Gzip)),
            ("ep1.pt.bz2", CompressedPt(Bzip2)),
            ("ep1.pt.lz4", CompressedPt(Lz4)),
            ("ep1.pt.lzma", CompressedPt(Lzma)),
            ("ep1.pt.xz", CompressedPt(Xz)),
            ("ep1.pt.zst", CompressedPt(Zstd)),
            ("latest.pt.symlink", Pt),
            ("ep1.PT.lz4", Pt),
            ("ep1.TAR", Pt),
            ("w.safetensors", Safetensors),
        ];
        for (name, want) in ok {
            assert_eq!(CheckpointFormat::from_name(name).unwrap(), want, "{name}");
        }
        let bad_tar = ["ep1.tar.xz", "ep1.tar.zst", "x.tar.pt", "x.tar.foo"];
        for name in bad_tar {
            let e = CheckpointFormat::from_name(name).unwrap_err().to_string();
            assert!(e.contains("valid tarfile extension"), "{name}: {e}");
        }
        for name in ["ep1.pt.foo", "x.pt.tar", "ep1.pt.tgz", "ep1.pt.lzo"] {
            let e = CheckpointFormat::from_name(name).unwrap_err().to_string();
            assert!(e.contains("compress"), "{name}: {e}");
        }
    }

    #[test]
    fn every_compressor_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Gzip, Bzip2, Lz4, Lzma, Xz, Zstd] {
            let mut e = Encoder::new(c, Vec::new()).unwrap();
            e.write_all(&data).unwrap();
            let packed = e.finish().unwrap();
            let mut back = Vec::new();
            decoder(c, &packed[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn lzma_is_the_alone_format_and_lz4_a_frame() {
        let mut e = Encoder::new(Lzma, Vec::new()).unwrap();
        e.write_all(b"x").unwrap();
        let packed = e.finish().unwrap();
        assert_eq!(
            packed[0], 0x5d,
            "lzma-alone starts with the properties byte"
        );
        let mut e = Encoder::new(Lz4, Vec::new()).unwrap();
        e.write_all(b"x").unwrap();
        assert_eq!(&e.finish().unwrap()[..4], &[0x04, 0x22, 0x4d, 0x18]);
    }

    #[test]
    fn tar_member_is_found() {
        let body = b"hello";
        let mut tar = tar_header(body.len() as u64).unwrap().to_vec();
        tar.extend_from_slice(body);
        tar.extend_from_slice(&tar_trailer(body.len() as u64));
        assert_eq!(tar.len() % 512, 0);
        let (at, size) = find_tar_member(&tar).unwrap();
        assert_eq!(&tar[at as usize..(at + size) as usize], body);
        assert!(find_tar_member(&tar[..514]).is_err());
    }
}
