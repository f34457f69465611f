//! Which on-disk format a checkpoint name selects, following Composer's extension rules
//! (reference composer-checkpointing.md §7.1), plus the compressors and the tar wrapper.
//!
//! Composer shells out to `gzip`, `lz4`, `zstd`, ...; cairn does the same work in-process with
//! crates, producing the formats those tools write (gzip, bzip2, the lz4 *frame* format, the
//! `.lzma` "alone" format, xz, zstd frames with checksums), so either side can read the other's
//! files.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

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
            // Composer's `.tar.lzma` is xz (Python's tarfile); the others only come from
            // reading by content.
            CheckpointFormat::Tar(Some(Compression::Xz)) => "tar.lzma",
            CheckpointFormat::Tar(Some(Compression::Lzma)) => "tar.lzma-alone",
            CheckpointFormat::Tar(Some(Compression::Lz4)) => "tar.lz4",
            CheckpointFormat::Tar(Some(Compression::Zstd)) => "tar.zst",
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

/// What a file's leading bytes say it is, before any decompression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outer {
    /// A zip archive (a torch `.pt`).
    Zip,
    /// An uncompressed tar.
    Tar,
    /// A safetensors file.
    Safetensors,
    /// A compressed stream; what it holds is known only once decompressed.
    Compressed(Compression),
}

/// What a decompressed stream's leading bytes say it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    /// A zip archive (a torch `.pt`).
    Zip,
    /// A tar.
    Tar,
}

/// Bytes [`detect`] and [`detect_inner`] want to see (a tar header is 512 bytes).
pub const HEAD_LEN: usize = 512;

/// The container a file's first bytes announce, whatever its name says; `file_len` is the
/// file's size (a safetensors header must fit in it). `None`: no format cairn reads.
///
/// Magic numbers: zip `PK\x03\x04` (or `PK\x05\x06`, an empty archive), gzip `1f 8b`, zstd
/// `28 b5 2f fd`, bzip2 `BZh1`..`BZh9`, xz `fd 37 7a 58 5a 00`, lz4 frame `04 22 4d 18`, tar
/// (or legacy `02 21 4c 18`), tar `ustar` at offset 257 or a valid header checksum,
/// safetensors a little-endian u64 header
/// length followed by `{`, and last (it has no magic) lzma-alone: a properties byte below 225,
/// a dictionary size between 4 KiB and 1.5 GiB, and a plausible size field.
pub fn detect(head: &[u8], file_len: u64) -> Option<Outer> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Some(Outer::Zip);
    }
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Some(Compression::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Compression::Xz)
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18])
        || head.starts_with(&[0x02, 0x21, 0x4c, 0x18])
    {
        // The lz4 frame format, or the legacy one (`lz4 -l`).
        Some(Compression::Lz4)
    } else {
        None
    };
    if let Some(c) = compression {
        return Some(Outer::Compressed(c));
    }
    if is_tar_header(head) {
        return Some(Outer::Tar);
    }
    if is_safetensors(head, file_len) {
        return Some(Outer::Safetensors);
    }
    if is_lzma_alone(head) {
        return Some(Outer::Compressed(Compression::Lzma));
    }
    None
}

/// What the first bytes of a decompressed stream hold, if it is something cairn reads.
pub fn detect_inner(head: &[u8]) -> Option<Inner> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Inner::Zip)
    } else if is_tar_header(head) {
        Some(Inner::Tar)
    } else {
        None
    }
}

/// A tar header: `ustar` at 257 (POSIX and GNU), or an old-style header whose checksum holds.
fn is_tar_header(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    // The checksum: the header's bytes summed with the checksum field read as spaces, stored
    // in octal. An all-zero block (the end of an archive) is not a header.
    let field = &head[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(text.trim_start(), 8) else {
        return false;
    };
    let sum: u32 = head[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    sum == stored && head[..100].iter().any(|&b| b != 0)
}

fn is_safetensors(head: &[u8], file_len: u64) -> bool {
    if head.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    n >= 2 && n.checked_add(8).is_some_and(|end| end <= file_len) && head[8] == b'{'
}

fn is_lzma_alone(head: &[u8]) -> bool {
    if head.len() < 13 || head[0] >= 225 {
        return false;
    }
    let dict = u32::from_le_bytes(head[1..5].try_into().unwrap_or_default());
    let size = u64::from_le_bytes(head[5..13].try_into().unwrap_or_default());
    (4096..=(3 << 29)).contains(&dict) && (size == u64::MAX || size < 1 << 48)
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

/// A decompressing reader for `c`. Every compressor's stream may be several members or frames
/// one after the other (as `cat a.gz b.gz` makes, and as the tools read them); all are read.
pub fn decoder<'a, R: BufRead + 'a>(c: Compression, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Lz4 => Box::new(Lz4Frames(lz4_flex::frame::FrameDecoder::new(r))),
        Compression::Lzma => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
        }
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// lz4 frames one after the other: `FrameDecoder` ends at the end of a frame, and reading on
/// starts the next; only the end of the input ends the stream (before, a second frame was
/// silently dropped).
struct Lz4Frames<R: BufRead>(lz4_flex::frame::FrameDecoder<R>);

impl<R: BufRead> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            if n > 0 || buf.is_empty() || self.0.get_mut().fill_buf()?.is_empty() {
                return Ok(n);
            }
        }
    }
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
    fn concatenated_members_are_all_read() {
        for c in [Gzip, Bzip2, Lz4, Xz, Zstd] {
            let mut packed = Vec::new();
            for part in [&b"first "[..], b"", b"second"] {
                let mut e = Encoder::new(c, Vec::new()).unwrap();
                e.write_all(part).unwrap();
                packed.extend(e.finish().unwrap());
            }
            let mut back = Vec::new();
            decoder(c, &packed[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, b"first second", "{c:?}");
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
    fn every_compressor_is_recognised_by_its_bytes() {
        for c in [Gzip, Bzip2, Lz4, Lzma, Xz, Zstd] {
            let mut e = Encoder::new(c, Vec::new()).unwrap();
            e.write_all(&[7u8; 600]).unwrap();
            let packed = e.finish().unwrap();
            let len = packed.len() as u64;
            assert_eq!(detect(&packed, len), Some(Outer::Compressed(c)), "{c:?}");
        }
        let tar = tar_header(5).unwrap();
        assert_eq!(detect(&tar, 1536), Some(Outer::Tar));
        assert_eq!(detect_inner(&tar), Some(Inner::Tar));
        let mut v7 = tar;
        v7[257..263].fill(0);
        v7[148..156].copy_from_slice(b"        ");
        let sum: u32 = v7.iter().map(|&b| b as u32).sum();
        v7[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        assert_eq!(
            detect_inner(&v7),
            Some(Inner::Tar),
            "an old-style header by checksum"
        );
        assert_eq!(detect(b"PK\x03\x04rest", 100), Some(Outer::Zip));
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(detect(&st, 10), Some(Outer::Safetensors));
        assert_eq!(detect(&st, 9), None, "a header past the end of the file");
        for junk in [&b""[..], b"\x80\x02}q\x00.", &[0u8; 512], b"hello world"] {
            assert_eq!(detect(junk, junk.len() as u64), None, "{junk:?}");
            assert_eq!(detect_inner(junk), None, "{junk:?}");
        }
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
