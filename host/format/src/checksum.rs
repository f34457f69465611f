//! A checkpoint file's CRC-64/NVME, computed while the file is written.
//!
//! Why while writing: a sharded save publishes each shard's checksum in its record, and reading
//! the file back to compute it was a second pass over every shard on the save path. The bytes
//! are in cache as they are written, so summing them there costs a fraction of that pass.
//!
//! Why segments: the `.pt` writer writes a large record's local header before its CRC-32 is known
//! and patches it afterwards, so those headers are summed once patched ([`FileSum::hole`],
//! [`FileSum::fill`]), and the segments are joined in file order with the CRC's combine
//! operation. CRC-64/NVME is S3's own full-object checksum (`x-amz-checksum-crc64nvme`).

use std::io::{self, Write};

use crc_fast::{CrcAlgorithm, Digest, checksum, checksum_combine};

const ALGORITHM: CrcAlgorithm = CrcAlgorithm::Crc64Nvme;

/// One stretch of the file, in order.
enum Segment {
    /// Bytes already summed.
    Summed { crc: u64, len: u64 },
    /// Bytes to be patched before the sum is known (a header whose CRC-32 comes later).
    Hole { len: u64 },
}

/// The CRC-64/NVME of bytes written in order, some of which are patched afterwards.
pub struct FileSum {
    segments: Vec<Segment>,
    digest: Digest,
    /// Bytes in `digest` since the last segment was closed.
    open: u64,
}

impl Default for FileSum {
    fn default() -> FileSum {
        FileSum {
            segments: Vec::new(),
            digest: Digest::new(ALGORITHM),
            open: 0,
        }
    }
}

impl FileSum {
    /// Sum `bytes`, which follow everything summed so far.
    pub fn update(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
        self.open += bytes.len() as u64;
    }

    /// `len` bytes come next whose content is known only later; returns the hole's index for
    /// [`FileSum::fill`].
    pub fn hole(&mut self, len: u64) -> usize {
        self.close();
        self.segments.push(Segment::Hole { len });
        self.segments.len() - 1
    }

    /// The final content of hole `index`.
    pub fn fill(&mut self, index: usize, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        if !matches!(self.segments.get(index), Some(Segment::Hole { len: l }) if *l == len) {
            return Err(io::Error::other(format!(
                "the checksum has no hole {index} of {len} bytes"
            )));
        }
        self.segments[index] = Segment::Summed {
            crc: checksum(ALGORITHM, bytes),
            len,
        };
        Ok(())
    }

    /// The CRC-64/NVME of everything summed, in order (an error if a hole was never filled).
    pub fn finish(mut self) -> io::Result<u64> {
        self.close();
        let mut total: Option<u64> = None;
        for segment in &self.segments {
            let (crc, len) = match *segment {
                Segment::Summed { crc, len } => (crc, len),
                Segment::Hole { len } => {
                    return Err(io::Error::other(format!(
                        "a {len}-byte stretch of the file was never summed"
                    )));
                }
            };
            total = Some(match total {
                None => crc,
                Some(before) => checksum_combine(ALGORITHM, before, crc, len),
            });
        }
        Ok(total.unwrap_or_else(|| checksum(ALGORITHM, b"")))
    }

    fn close(&mut self) {
        if self.open > 0 {
            self.segments.push(Segment::Summed {
                crc: self.digest.finalize_reset(),
                len: std::mem::take(&mut self.open),
            });
        }
    }
}

/// A writer that sums everything written through it, when given a [`FileSum`] (it passes the
/// bytes on either way, so one writer chain serves saves that need the sum and saves that do not).
pub struct Summing<'s, W> {
    inner: W,
    sum: Option<&'s mut FileSum>,
    /// Bytes still to pass unsummed: the current hole.
    skip: u64,
}

impl<'s, W: Write> Summing<'s, W> {
    pub fn new(inner: W, sum: Option<&'s mut FileSum>) -> Self {
        Summing {
            inner,
            sum,
            skip: 0,
        }
    }

    /// The next `len` bytes written are patched later: they become a hole of the sum, whose
    /// index is returned for [`FileSum::fill`] (`None` when not summing).
    pub fn hole(&mut self, len: u64) -> Option<usize> {
        let sum = self.sum.as_deref_mut()?;
        self.skip = len;
        Some(sum.hole(len))
    }
}

impl<W: Write> Write for Summing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(sum) = self.sum.as_deref_mut() {
            let skipped = self.skip.min(n as u64);
            self.skip -= skipped;
            sum.update(&buf[skipped as usize..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_filled_holes_sum_to_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = checksum(ALGORITHM, &data);
        let mut sum = FileSum::default();
        sum.update(&data[..10]);
        let hole = sum.hole(30);
        sum.update(&data[40..70_000]);
        sum.update(&data[70_000..]);
        sum.fill(hole, &data[10..40]).unwrap();
        assert_eq!(sum.finish().unwrap(), whole);
        // The check value of CRC-64/NVME.
        let mut sum = FileSum::default();
        sum.update(b"123456789");
        assert_eq!(sum.finish().unwrap(), 0xae8b_1486_0a79_9888);
    }

    #[test]
    fn an_unfilled_or_mismatched_hole_is_an_error() {
        let mut sum = FileSum::default();
        let hole = sum.hole(4);
        assert!(sum.fill(hole, b"12345").is_err());
        assert!(sum.fill(hole + 1, b"1234").is_err());
        assert!(sum.finish().is_err());
    }

    #[test]
    fn a_summing_writer_sums_what_passes_and_leaves_holes_for_patches() {
        let mut out = Vec::new();
        let mut sum = FileSum::default();
        let mut w = Summing::new(&mut out, Some(&mut sum));
        w.write_all(b"1234").unwrap();
        let hole = w.hole(1).unwrap();
        w.write_all(b"x6789").unwrap();
        assert_eq!(out, b"1234x6789");
        // "x" is patched to "5" in the file: the sum is of the patched bytes.
        sum.fill(hole, b"5").unwrap();
        assert_eq!(sum.finish().unwrap(), 0xae8b_1486_0a79_9888);
        let mut plain = Vec::new();
        let mut w = Summing::new(&mut plain, None);
        assert_eq!(w.hole(3), None);
        w.write_all(b"abc").unwrap();
        assert_eq!(plain, b"abc");
    }
}
