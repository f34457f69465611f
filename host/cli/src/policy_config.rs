//! `--policy-config KEY=VALUE`: a policy component's `config` table on the command line, the
//! same table `{ wasm = "...", config = { ... } }` gives it in a job's TOML.

/// Parse one `KEY=VALUE` (the value may contain `=`; the key may not be empty).
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// A component spec for `wasm` with the pairs as its config (each value a string, as `init`
/// receives every value).
pub fn spec(wasm: &std::path::Path, pairs: &[(String, String)]) -> cairn::policy::PolicySpec {
    pairs
        .iter()
        .fold(cairn::policy::PolicySpec::new(wasm), |spec, (k, v)| {
            spec.with(k, v.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_pair("n=3"), Ok(("n".into(), "3".into())));
        assert_eq!(parse_pair("q=a=b"), Ok(("q".into(), "a=b".into())));
        assert_eq!(parse_pair(" k =v"), Ok(("k".into(), "v".into())));
        assert!(
            parse_pair("n")
                .unwrap_err()
                .contains("'n' is not KEY=VALUE")
        );
        assert!(parse_pair("=3").is_err());
    }
}
