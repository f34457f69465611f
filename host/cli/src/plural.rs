//! Counts in messages: "1 save", "2 saves".

/// `n` and the noun, singular for one.
pub fn count(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular() {
        assert_eq!(super::count(1u64, "save", "saves"), "1 save");
        assert_eq!(super::count(0u64, "save", "saves"), "0 saves");
        assert_eq!(super::count(2u64, "entry", "entries"), "2 entries");
    }
}
