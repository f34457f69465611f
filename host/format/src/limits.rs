//! How much work reading one checkpoint file may cost, whoever wrote it.
//!
//! A checkpoint can come from anywhere (another tenant's job, a remote store, a filter's
//! output), so every read is bounded by the file's own size, never by what the file claims:
//!
//! - a compressed file may expand to at most `max_expansion_ratio` times its size (a ratio
//!   bound; below `ratio_floor_bytes` it does not apply, so small files of zeros still read)
//!   and never past `max_expanded_bytes` (an absolute cap); nothing past the bound is staged to
//!   disk, and the stream must start with the structure its container promises (a zip local
//!   header for a torch archive, a tar header for a tar) before anything is staged at all;
//! - the pickle (`data.pkl`) may be at most `max_pickle_bytes`, and reading it costs at most a
//!   node budget and a byte budget proportional to its length (shared references are kept
//!   shared, never expanded);
//! - trees nest at most [`crate::state_dict::MAX_DEPTH`] containers deep;
//! - zip records may not overlap, so checking every CRC reads each byte once.

/// Bounds for reading one checkpoint file. [`ReadLimits::default`] suits real checkpoints; a
/// caller that reads its own huge compressed checkpoints raises the caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// The most a compressed file may expand to, in bytes (default 256 GiB).
    pub max_expanded_bytes: u64,
    /// The most a compressed file may expand relative to its size (default 64: real
    /// checkpoints compress 1.1-1.5x, sparse ones ~10x; zeros compress ~30,000x).
    pub max_expansion_ratio: u64,
    /// Expansion allowed whatever the ratio (default 64 MiB), so a small compressed file of
    /// zeros (a test checkpoint, an untrained mask) still reads.
    pub ratio_floor_bytes: u64,
    /// The largest pickle (`data.pkl`) read, in bytes (default 32 MiB: `torch.save` spends
    /// ~340 bytes per parameter with its Adam state, so about 100,000 parameters; reading a
    /// hostile pickle costs at most ~16 bytes of memory per byte of it).
    pub max_pickle_bytes: u64,
}

/// Default [`ReadLimits::max_expanded_bytes`].
pub const DEFAULT_MAX_EXPANDED_BYTES: u64 = 256 << 30;
/// Default [`ReadLimits::max_expansion_ratio`].
pub const DEFAULT_MAX_EXPANSION_RATIO: u64 = 64;
/// Default [`ReadLimits::ratio_floor_bytes`].
pub const DEFAULT_RATIO_FLOOR_BYTES: u64 = 64 << 20;
/// Default [`ReadLimits::max_pickle_bytes`].
pub const DEFAULT_MAX_PICKLE_BYTES: u64 = 32 << 20;

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_expanded_bytes: DEFAULT_MAX_EXPANDED_BYTES,
            max_expansion_ratio: DEFAULT_MAX_EXPANSION_RATIO,
            ratio_floor_bytes: DEFAULT_RATIO_FLOOR_BYTES,
            max_pickle_bytes: DEFAULT_MAX_PICKLE_BYTES,
        }
    }
}

impl ReadLimits {
    /// The most a compressed file of `compressed` bytes may expand to.
    pub fn expansion_allowed(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_expansion_ratio)
            .max(self.ratio_floor_bytes)
            .min(self.max_expanded_bytes)
    }
}

/// `n` bytes in the largest binary unit that keeps it readable (`3 GiB`, `92 KiB`, `17 bytes`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let x = n as f64 / size as f64;
            return if x.fract() == 0.0 {
                format!("{x:.0} {unit}")
            } else {
                format!("{x:.1} {unit}")
            };
        }
    }
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expansion_bound_is_the_ratio_between_the_floor_and_the_cap() {
        let l = ReadLimits::default();
        assert_eq!(l.expansion_allowed(92 << 10), 64 << 20, "the floor");
        assert_eq!(l.expansion_allowed(1 << 30), 64 << 30, "the ratio");
        assert_eq!(l.expansion_allowed(1 << 40), 256 << 30, "the cap");
        assert_eq!(l.expansion_allowed(u64::MAX), 256 << 30);
    }

    #[test]
    fn sizes_read_like_a_person_would_write_them() {
        assert_eq!(human_bytes(3 << 30), "3 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(17), "17 bytes");
    }
}
