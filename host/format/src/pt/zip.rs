//! The ZIP container of a `.pt` file: STORED entries, each payload 64-byte aligned, ZIP64 when
//! a size or offset needs it — the layout PyTorch's `PyTorchStreamWriter` (miniz) produces.
//!
//! The writer is planned before a byte is written: with STORED entries every size is known, so
//! every offset is too. That lets a tar header carry the exact archive size, and lets tensor bytes
//! go from their storages to the file with one `write_all` each (no staging copy).
//! The reader works on one contiguous buffer (a memory map or a decompressed temp file) and
//! returns zero-copy slices of it; it trusts nothing: every offset and size is bounds-checked.

use std::io::{self, Write};

use bytes::Bytes;

/// Payload alignment torch uses (`kFieldAlignment`), so `mmap=True` loads aligned tensors.
pub const ALIGNMENT: u64 = 64;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const LOCAL_HEADER_LEN: u64 = 30;
const CENTRAL_HEADER_LEN: u64 = 46;
const EOCD_LEN: u64 = 22;
const ZIP64_EOCD_LEN: u64 = 56;
const ZIP64_LOCATOR_LEN: u64 = 20;
const U32_MAX: u64 = 0xFFFF_FFFF;
/// DOS date 1980-01-01, time 00:00: a fixed stamp keeps output reproducible.
const DOS_DATE: u16 = (1 << 5) | 1;

/// One entry of a planned archive: its name, size and where its header and payload go.
#[derive(Clone, Debug)]
pub struct PlannedEntry {
    /// Full entry name, e.g. `ep1/data/0`.
    pub name: String,
    /// Payload size in bytes.
    pub size: u64,
    /// Offset of the local header from the archive start.
    pub header_offset: u64,
    /// Offset of the payload (a multiple of [`ALIGNMENT`]).
    pub data_offset: u64,
}

impl PlannedEntry {
    fn zip64_size(&self) -> bool {
        self.size >= U32_MAX
    }

    /// Bytes of the local header, up to the payload.
    fn local_header(&self, crc: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity((self.data_offset - self.header_offset) as usize);
        let mut extra = Vec::new();
        if self.zip64_size() {
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&16u16.to_le_bytes());
            extra.extend_from_slice(&self.size.to_le_bytes());
            extra.extend_from_slice(&self.size.to_le_bytes());
        }
        let pad = self.data_offset - self.header_offset - LOCAL_HEADER_LEN - self.name.len() as u64;
        let filler = pad - extra.len() as u64 - 4;
        extra.extend_from_slice(b"FB");
        extra.extend_from_slice(&(filler as u16).to_le_bytes());
        extra.resize(extra.len() + filler as usize, b'Z');
        let size32 = if self.zip64_size() {
            U32_MAX as u32
        } else {
            self.size as u32
        };
        put32(&mut h, LOCAL_SIG);
        put16(&mut h, version_needed(self.zip64_size()));
        put16(&mut h, name_flags(&self.name));
        put16(&mut h, 0); // STORED
        put16(&mut h, 0);
        put16(&mut h, DOS_DATE);
        put32(&mut h, crc);
        put32(&mut h, size32);
        put32(&mut h, size32);
        put16(&mut h, self.name.len() as u16);
        put16(&mut h, extra.len() as u16);
        h.extend_from_slice(self.name.as_bytes());
        h.extend_from_slice(&extra);
        h
    }

    /// Length of [`PlannedEntry::central_header`], without building it.
    fn central_len(&self) -> u64 {
        let fields = 2 * self.zip64_size() as u64 + (self.header_offset >= U32_MAX) as u64;
        let extra = if fields > 0 { 4 + 8 * fields } else { 0 };
        CENTRAL_HEADER_LEN + self.name.len() as u64 + extra
    }

    fn central_header(&self, crc: u32) -> Vec<u8> {
        let big_offset = self.header_offset >= U32_MAX;
        let mut extra = Vec::new();
        if self.zip64_size() || big_offset {
            let mut body = Vec::new();
            if self.zip64_size() {
                body.extend_from_slice(&self.size.to_le_bytes());
                body.extend_from_slice(&self.size.to_le_bytes());
            }
            if big_offset {
                body.extend_from_slice(&self.header_offset.to_le_bytes());
            }
            put16(&mut extra, 1);
            put16(&mut extra, body.len() as u16);
            extra.extend_from_slice(&body);
        }
        let zip64 = !extra.is_empty();
        let size32 = self.size.min(U32_MAX) as u32;
        let mut h = Vec::new();
        put32(&mut h, CENTRAL_SIG);
        put16(&mut h, version_needed(zip64));
        put16(&mut h, version_needed(zip64));
        put16(&mut h, name_flags(&self.name));
        put16(&mut h, 0);
        put16(&mut h, 0);
        put16(&mut h, DOS_DATE);
        put32(&mut h, crc);
        put32(&mut h, size32);
        put32(&mut h, size32);
        put16(&mut h, self.name.len() as u16);
        put16(&mut h, extra.len() as u16);
        put16(&mut h, 0); // comment
        put16(&mut h, 0); // disk
        put16(&mut h, 0); // internal attributes
        put32(&mut h, 0); // external attributes
        put32(&mut h, self.header_offset.min(U32_MAX) as u32);
        h.extend_from_slice(self.name.as_bytes());
        h.extend_from_slice(&extra);
        h
    }
}

fn version_needed(zip64: bool) -> u16 {
    if zip64 { 45 } else { 20 }
}

/// Bit 11 (names are UTF-8) when a name is not plain ASCII, so Python's `zipfile` decodes it.
fn name_flags(name: &str) -> u16 {
    if name.is_ascii() { 0 } else { 1 << 11 }
}

fn put16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Where every entry goes, computed from names and sizes alone.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The entries in file order.
    pub entries: Vec<PlannedEntry>,
    /// Offset where the central directory starts (= end of the last payload).
    pub central_offset: u64,
}

impl Plan {
    /// Lay out entries of the given names and sizes, in order.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Plan {
        let mut cursor = 0u64;
        let mut planned = Vec::new();
        for (name, size) in entries {
            let mut start = cursor + LOCAL_HEADER_LEN + name.len() as u64 + 4;
            if size >= U32_MAX {
                start += 20;
            }
            let data_offset = start.div_ceil(ALIGNMENT) * ALIGNMENT;
            planned.push(PlannedEntry {
                name: name.to_owned(),
                size,
                header_offset: cursor,
                data_offset,
            });
            cursor = data_offset + size;
        }
        Plan {
            entries: planned,
            central_offset: cursor,
        }
    }

    /// Size of the central directory and end records.
    fn trailer_len(&self) -> u64 {
        let central: u64 = self.entries.iter().map(PlannedEntry::central_len).sum();
        let zip64 = self.needs_zip64_end(central);
        central
            + EOCD_LEN
            + if zip64 {
                ZIP64_EOCD_LEN + ZIP64_LOCATOR_LEN
            } else {
                0
            }
    }

    fn needs_zip64_end(&self, central_len: u64) -> bool {
        self.entries.len() >= 0xFFFF || self.central_offset >= U32_MAX || central_len >= U32_MAX
    }

    /// Total archive size in bytes.
    pub fn total_len(&self) -> u64 {
        self.central_offset + self.trailer_len()
    }

    /// The local header of entry `i`, with its CRC.
    pub fn local_header(&self, i: usize, crc: u32) -> Vec<u8> {
        self.entries[i].local_header(crc)
    }

    /// Byte offset of the CRC field within entry `i`'s local header, for patching it in place.
    pub fn crc_field_offset(&self, i: usize) -> u64 {
        self.entries[i].header_offset + 14
    }

    /// The central directory and end records, given every entry's CRC.
    pub fn trailer(&self, crcs: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for (e, crc) in self.entries.iter().zip(crcs) {
            out.extend_from_slice(&e.central_header(*crc));
        }
        let central_len = out.len() as u64;
        let count = self.entries.len() as u64;
        if self.needs_zip64_end(central_len) {
            let eocd64_offset = self.central_offset + central_len;
            put32(&mut out, ZIP64_EOCD_SIG);
            out.extend_from_slice(&(ZIP64_EOCD_LEN - 12).to_le_bytes());
            put16(&mut out, 45);
            put16(&mut out, 45);
            put32(&mut out, 0);
            put32(&mut out, 0);
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&central_len.to_le_bytes());
            out.extend_from_slice(&self.central_offset.to_le_bytes());
            put32(&mut out, ZIP64_LOCATOR_SIG);
            put32(&mut out, 0);
            out.extend_from_slice(&eocd64_offset.to_le_bytes());
            put32(&mut out, 1);
        }
        put32(&mut out, EOCD_SIG);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put16(&mut out, count.min(0xFFFF) as u16);
        put16(&mut out, count.min(0xFFFF) as u16);
        put32(&mut out, central_len.min(U32_MAX) as u32);
        put32(&mut out, self.central_offset.min(U32_MAX) as u32);
        put16(&mut out, 0);
        out
    }
}

/// A writer that counts bytes and folds CRC-32 into the same pass.
pub struct CrcWriter<'w, W: Write + ?Sized> {
    inner: &'w mut W,
    /// Bytes written so far.
    pub written: u64,
}

impl<'w, W: Write + ?Sized> CrcWriter<'w, W> {
    /// Wrap `inner`.
    pub fn new(inner: &'w mut W) -> Self {
        CrcWriter { inner, written: 0 }
    }

    /// The writer beneath.
    pub fn get_mut(&mut self) -> &mut W {
        self.inner
    }

    /// Write `buf` and count it.
    pub fn put(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Write zero bytes until `offset`.
    pub fn pad_to(&mut self, offset: u64) -> io::Result<()> {
        let gap = offset.saturating_sub(self.written);
        self.put(&vec![0u8; gap as usize])
    }

    #[cfg(test)]
    /// Write a payload and return its CRC-32, hashing in 8 MiB chunks so the bytes are still
    /// in cache when they are written.
    pub fn put_payload(&mut self, parts: &[&[u8]]) -> io::Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        for part in parts {
            for chunk in part.chunks(8 << 20) {
                hasher.update(chunk);
                self.put(chunk)?;
            }
        }
        Ok(hasher.finalize())
    }
}

/// CRC-32 of a payload made of parts.
pub fn crc_of(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// What is wrong with an archive, in words for the user (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    /// No end-of-central-directory record.
    #[error("is not a zip archive (no end-of-central-directory record; truncated?)")]
    NoEnd,
    /// A structure runs past the end of the data.
    #[error("is truncated: {0} runs past the end of the file")]
    Truncated(String),
    /// A structure has the wrong signature.
    #[error("is corrupt: {0}")]
    Corrupt(String),
    /// An entry is compressed; torch writes only STORED entries.
    #[error("has a compressed entry '{0}' (method {1}); torch archives store entries uncompressed")]
    Compressed(String, u16),
    /// An entry's bytes do not match its CRC-32.
    #[error(
        "fails the CRC-32 check of entry '{name}' (stored {stored:08x}, computed {computed:08x})"
    )]
    Crc {
        /// Entry name.
        name: String,
        /// CRC in the central directory.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
}

/// One entry found in an archive.
#[derive(Clone, Debug)]
pub struct ZipEntry {
    /// Entry name.
    pub name: String,
    /// CRC-32 from the central directory.
    pub crc: u32,
    /// Payload offset within the archive.
    #[cfg_attr(not(test), allow(dead_code))]
    pub data_offset: u64,
    /// Payload bytes.
    pub data: Bytes,
}

impl ZipEntry {
    /// Check the payload against its CRC-32.
    pub fn check_crc(&self) -> Result<(), ZipError> {
        let computed = crc32fast::hash(&self.data);
        if computed == self.crc {
            Ok(())
        } else {
            Err(ZipError::Crc {
                name: self.name.clone(),
                stored: self.crc,
                computed,
            })
        }
    }
}

fn slice(data: &[u8], at: u64, len: u64, what: &str) -> Result<std::ops::Range<usize>, ZipError> {
    let end = at.checked_add(len).filter(|e| *e <= data.len() as u64);
    match end {
        Some(end) => Ok(at as usize..end as usize),
        None => Err(ZipError::Truncated(what.to_owned())),
    }
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The central directory's location, from the (ZIP64) end records.
struct End {
    count: u64,
    central_offset: u64,
    central_len: u64,
}

fn find_end(data: &[u8]) -> Result<End, ZipError> {
    let len = data.len();
    if len < EOCD_LEN as usize {
        return Err(ZipError::NoEnd);
    }
    let lowest = len.saturating_sub(EOCD_LEN as usize + 0xFFFF);
    let at = (lowest..=len - EOCD_LEN as usize)
        .rev()
        .find(|&i| u32_at(data, i) == EOCD_SIG)
        .ok_or(ZipError::NoEnd)?;
    let mut end = End {
        count: u16_at(data, at + 10) as u64,
        central_len: u32_at(data, at + 12) as u64,
        central_offset: u32_at(data, at + 16) as u64,
    };
    let locator = at.checked_sub(ZIP64_LOCATOR_LEN as usize);
    if let Some(loc) = locator.filter(|&l| u32_at(data, l) == ZIP64_LOCATOR_SIG) {
        let eocd64 = u64_at(data, loc + 8);
        let r = slice(data, eocd64, ZIP64_EOCD_LEN, "the ZIP64 end record")?;
        if u32_at(data, r.start) != ZIP64_EOCD_SIG {
            return Err(ZipError::Corrupt("bad ZIP64 end record signature".into()));
        }
        end.count = u64_at(data, r.start + 32);
        end.central_len = u64_at(data, r.start + 40);
        end.central_offset = u64_at(data, r.start + 48);
    }
    Ok(end)
}

/// Sizes and offset of a central entry after applying its ZIP64 extra field.
fn apply_zip64(extra: &[u8], size: &mut u64, csize: &mut u64, offset: &mut u64) {
    let mut i = 0;
    while i + 4 <= extra.len() {
        let id = u16_at(extra, i);
        let n = u16_at(extra, i + 2) as usize;
        let body = &extra[(i + 4).min(extra.len())..(i + 4 + n).min(extra.len())];
        if id == 1 {
            let mut fields = body.chunks_exact(8).map(|c| u64_at(c, 0));
            for field in [size, csize, offset] {
                if *field == U32_MAX {
                    match fields.next() {
                        Some(v) => *field = v,
                        None => return,
                    }
                }
            }
            return;
        }
        i += 4 + n;
    }
}

/// Read every entry of the archive in `data` (no CRC check; see [`ZipEntry::check_crc`]).
///
/// Records may not overlap (a zip writer never makes them overlap): a central directory whose
/// many entries all point at one large payload would otherwise make checking every CRC read
/// that payload once per entry, work the file's size does not bound.
pub fn read_entries(data: &Bytes) -> Result<Vec<ZipEntry>, ZipError> {
    let end = find_end(data)?;
    let dir = slice(
        data,
        end.central_offset,
        end.central_len,
        "the central directory",
    )?;
    if end.count > end.central_len / CENTRAL_HEADER_LEN {
        return Err(ZipError::Corrupt(format!(
            "{} entries cannot fit in a {}-byte central directory",
            end.count, end.central_len
        )));
    }
    let mut entries = Vec::with_capacity(end.count as usize);
    let mut spans = Vec::with_capacity(end.count as usize);
    let mut at = dir.start as u64;
    for _ in 0..end.count {
        let (entry, header, next) = read_central(data, at, dir.end as u64)?;
        spans.push((
            header,
            entry.data_offset + entry.data.len() as u64,
            entries.len(),
        ));
        entries.push(entry);
        at = next;
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(ZipError::Corrupt(format!(
                "entries '{}' and '{}' overlap",
                entries[a].name, entries[b].name
            )));
        }
    }
    Ok(entries)
}

/// The entry whose central header is at `at`, where its local header starts, and where the
/// next central header starts.
fn read_central(data: &Bytes, at: u64, dir_end: u64) -> Result<(ZipEntry, u64, u64), ZipError> {
    let h = slice(data, at, CENTRAL_HEADER_LEN, "a central directory header")?;
    if h.end as u64 > dir_end || u32_at(data, h.start) != CENTRAL_SIG {
        return Err(ZipError::Corrupt("bad central directory header".into()));
    }
    let d = &data[h.clone()];
    let method = u16_at(d, 10);
    let crc = u32_at(d, 16);
    let mut csize = u32_at(d, 20) as u64;
    let mut size = u32_at(d, 24) as u64;
    let (name_len, extra_len, comment_len) = (u16_at(d, 28), u16_at(d, 30), u16_at(d, 32));
    let mut offset = u32_at(d, 42) as u64;
    let name_r = slice(data, h.end as u64, name_len as u64, "an entry name")?;
    let name = String::from_utf8_lossy(&data[name_r.clone()]).into_owned();
    let extra_r = slice(data, name_r.end as u64, extra_len as u64, "an extra field")?;
    apply_zip64(&data[extra_r.clone()], &mut size, &mut csize, &mut offset);
    if method != 0 {
        return Err(ZipError::Compressed(name, method));
    }
    if csize != size {
        return Err(ZipError::Corrupt(format!(
            "entry '{name}' has mismatched sizes"
        )));
    }
    let data_offset = local_data_offset(data, offset, &name)?;
    let r = slice(data, data_offset, size, &format!("entry '{name}'"))?;
    let next = extra_r.end as u64 + comment_len as u64;
    let entry = ZipEntry {
        name,
        crc,
        data_offset,
        data: data.slice(r),
    };
    Ok((entry, offset, next))
}

fn local_data_offset(data: &[u8], offset: u64, name: &str) -> Result<u64, ZipError> {
    let what = format!("the local header of '{name}'");
    let h = slice(data, offset, LOCAL_HEADER_LEN, &what)?;
    if u32_at(data, h.start) != LOCAL_SIG {
        return Err(ZipError::Corrupt(format!("bad local header for '{name}'")));
    }
    let name_len = u16_at(data, h.start + 26) as u64;
    let extra_len = u16_at(data, h.start + 28) as u64;
    Ok(h.end as u64 + name_len + extra_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let plan = Plan::new(entries.iter().map(|(n, d)| (*n, d.len() as u64)));
        let mut out = Vec::new();
        let mut w = CrcWriter::new(&mut out);
        let mut crcs = Vec::new();
        for (i, (_, d)) in entries.iter().enumerate() {
            let crc = crc_of(&[d]);
            w.pad_to(plan.entries[i].header_offset).unwrap();
            w.put(&plan.local_header(i, crc)).unwrap();
            assert_eq!(w.written, plan.entries[i].data_offset);
            crcs.push(w.put_payload(&[d]).unwrap());
        }
        w.put(&plan.trailer(&crcs)).unwrap();
        assert_eq!(out.len() as u64, plan.total_len());
        out
    }

    #[test]
    fn round_trip_with_aligned_payloads() {
        let bytes = build(&[
            ("a/data.pkl", b"hello"),
            ("a/data/0", &[7u8; 100]),
            ("a/version", b"3\n"),
        ]);
        let entries = read_entries(&Bytes::from(bytes)).unwrap();
        assert_eq!(entries.len(), 3);
        for e in &entries {
            assert_eq!(e.data_offset % ALIGNMENT, 0);
            e.check_crc().unwrap();
        }
        assert_eq!(&entries[1].data[..], &[7u8; 100]);
    }

    #[test]
    fn flipped_payload_byte_fails_crc() {
        let mut bytes = build(&[("a/x", b"payload")]);
        let at = Plan::new([("a/x", 7)]).entries[0].data_offset as usize;
        bytes[at] ^= 1;
        let entries = read_entries(&Bytes::from(bytes)).unwrap();
        assert!(matches!(entries[0].check_crc(), Err(ZipError::Crc { .. })));
    }

    #[test]
    fn overlapping_entries_are_refused() {
        let mut bytes = build(&[("a/x", &[1u8; 300]), ("a/y", b"tail")]);
        // Point the second central entry's local-header offset at the first local header.
        let plan = Plan::new([("a/x", 300), ("a/y", 4)]);
        let second = plan.central_offset as usize + plan.entries[0].central_len() as usize;
        bytes[second + 42..second + 46].copy_from_slice(&0u32.to_le_bytes());
        let err = read_entries(&Bytes::from(bytes)).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = build(&[("a/x", b"payload"), ("a/y", &[1u8; 300])]);
        for cut in [0, 10, 100, bytes.len() - 1] {
            assert!(
                read_entries(&Bytes::from(bytes[..cut].to_vec())).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn large_entries_get_zip64_fields() {
        let plan = Plan::new([("a/data/0", 5u64 << 30), ("a/version", 2)]);
        assert!(plan.entries[1].header_offset > U32_MAX);
        let trailer = plan.trailer(&[0, 0]);
        // The ZIP64 end record and locator precede the classic end record.
        assert_eq!(plan.total_len(), plan.central_offset + trailer.len() as u64);
        for e in &plan.entries {
            assert_eq!(e.central_len(), e.central_header(0).len() as u64);
        }
        let header = plan.local_header(0, 0);
        assert_eq!(header.len() as u64, plan.entries[0].data_offset);
        assert_eq!(plan.entries[0].data_offset % ALIGNMENT, 0);
    }
}
