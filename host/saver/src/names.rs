//! What each name template must be able to name, checked when the config is loaded.
//!
//! A template is rendered with sample values (a run at its start and one far into training) and
//! the result checked by the rules the saver and the store apply when they use it. A template
//! that cannot name a file or an object is refused before training starts, never after a
//! checkpoint was written (`remote_file_name = "./ckpts/ep{epoch}.pt"` used to be refused by the
//! store at the first upload).

use std::path::{Component, Path};
use std::time::Duration;

use cairn_format::CheckpointFormat;
use cairn_format::durable::TEMP_PREFIX;
use cairn_policy::{Ranks, Timestamp};

use crate::remote::store::object_name;
use crate::template::{Template, Vars};

/// A run at its start, and one far into training with multi-digit counters and clocks.
fn samples() -> [Timestamp; 2] {
    let far = Timestamp {
        iteration: 3,
        epoch: 123,
        batch: 45_678,
        sample: 1_461_696,
        token: 187_097_088,
        epoch_in_iteration: 2,
        token_in_iteration: 4096,
        batch_in_epoch: 77,
        sample_in_epoch: 2464,
        token_in_epoch: 315_392,
        total_wct: Duration::from_secs_f64(98_765.25),
        iteration_wct: Duration::from_secs_f64(321.5),
        epoch_wct: Duration::from_secs_f64(654.25),
        batch_wct: Duration::from_secs_f64(0.125),
    };
    [Timestamp::default(), far]
}

/// `template` rendered for each sample, with the leading `/` Composer strips removed.
fn rendered(template: &Template, run_name: &str) -> Vec<String> {
    samples()
        .iter()
        .map(|ts| {
            let vars = Vars {
                run_name,
                ranks: Ranks::default(),
                timestamp: Some(ts),
            };
            template.render(&vars).trim_start_matches('/').to_owned()
        })
        .collect()
}

/// A file name relative to the checkpoint folder (`filename`, `latest_filename`): not empty, a
/// file rather than a folder, no NUL, and no part that cairn's temporary-file cleanup would take
/// for its own leftovers.
pub(crate) fn check_file_name(template: &Template, run_name: &str) -> Result<(), String> {
    for name in rendered(template, run_name) {
        let problem = if name.is_empty() {
            Some("names no file".to_owned())
        } else if name.contains('\0') {
            Some("contains a NUL character".to_owned())
        } else if name.ends_with('/')
            || !matches!(
                Path::new(&name).components().next_back(),
                Some(Component::Normal(_))
            )
        {
            Some(format!(
                "renders as '{name}', which names a folder, not a file"
            ))
        } else if Path::new(&name)
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with(TEMP_PREFIX))
        {
            Some(format!(
                "renders as '{name}', whose '{TEMP_PREFIX}' prefix marks cairn's temporary files (removed at start)"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("'{template}' {problem}"));
        }
    }
    Ok(())
}

/// An object name relative to the store URL (`remote_file_name`; `latest_remote_file_name` with
/// `suffix = ".symlink"`), by the rules the store applies to every key.
pub(crate) fn check_object_name(
    template: &Template,
    run_name: &str,
    suffix: &str,
) -> Result<(), String> {
    for name in rendered(template, run_name) {
        let name = format!("{name}{suffix}");
        object_name(&name).map_err(|reason| {
            format!("'{template}' renders as '{name}', which is not a valid object name: {reason}")
        })?;
    }
    Ok(())
}

/// Composer's constructor check of every name that "looks like a compressed pt" (its last two
/// dot-parts are `pt` and something other than `symlink`): cairn must have that compressor.
pub(crate) fn check_compression(template: &Template) -> Result<(), String> {
    let source = template.source();
    let parts: Vec<&str> = source.split('.').collect();
    let n = parts.len();
    if n >= 2 && parts[n - 2] == "pt" && parts[n - 1] != "symlink" {
        CheckpointFormat::from_name(source).map_err(|e| match e {
            cairn_format::FormatError::Name(n) => format!("'{}' {}", n.name, n.reason),
            other => other.to_string(),
        })?;
    }
    Ok(())
}

/// The local `latest` link must never take the place of a checkpoint: `latest::swap` would
/// rename a link over the checkpoint it is meant to name.
pub(crate) fn check_latest_apart(
    latest: &Template,
    filename: &Template,
    run_name: &str,
) -> Result<(), String> {
    let vars = Vars {
        run_name,
        ranks: Ranks::default(),
        timestamp: None,
    };
    let (pattern, _) = filename.match_regex(&vars);
    let regex = regex::Regex::new(&pattern).map_err(|e| e.to_string())?;
    for name in rendered(latest, run_name) {
        if regex.is_match(&name) || rendered(filename, run_name).contains(&name) {
            return Err(format!(
                "'{latest}' renders as '{name}', which is also a checkpoint name of filename '{filename}'; the latest link would replace that checkpoint"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    #[test]
    fn file_names_must_name_a_file_in_the_folder() {
        for good in [
            "ep{epoch}.pt",
            "/latest-rank{rank}.pt",
            "sub/ep{epoch:03d}.pt",
            "../x.pt",
        ] {
            check_file_name(&t(good), "run").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, needle) in [
            ("/", "names no file"),
            ("x/", "names a folder"),
            (".", "names a folder"),
            ("a/..", "names a folder"),
            ("{run_name}", "names no file"),
            (".cairn-tmp.x.pt", "temporary"),
            ("a\0b.pt", "NUL"),
        ] {
            let e = check_file_name(&t(bad), "").unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn object_names_follow_the_store_rules_for_every_sample() {
        check_object_name(&t("{run_name}/ep{epoch}.pt"), "run", "").unwrap();
        check_object_name(&t("/{run_name}/latest.pt"), "run", ".symlink").unwrap();
        for bad in [
            "./ckpts/ep{epoch}.pt",
            "a//b.pt",
            "a/../b.pt",
            "",
            "ep{epoch:/<3}.pt",
        ] {
            let e = check_object_name(&t(bad), "run", "").unwrap_err();
            assert!(e.contains("not a valid object name"), "{bad}: {e}");
        }
    }

    #[test]
    fn compressed_names_need_a_compressor_cairn_has() {
        check_compression(&t("latest.pt.zst")).unwrap();
        check_compression(&t("latest.pt.symlink")).unwrap();
        check_compression(&t("latest.pt")).unwrap();
        assert!(check_compression(&t("latest.pt.lzo")).is_err());
        assert!(check_compression(&t("x.pt.rar")).is_err());
    }

    #[test]
    fn the_latest_link_never_shares_a_name_with_a_checkpoint() {
        let default = t("ep{epoch}-ba{batch}-rank{rank}.pt");
        check_latest_apart(&t("latest-rank{rank}.pt"), &default, "r").unwrap();
        check_latest_apart(&t("latest-ep{epoch}.pt"), &default, "r").unwrap();
        for bad in ["ep{epoch}-ba{batch}-rank{rank}.pt", "ep7-ba9-rank0.pt"] {
            assert!(check_latest_apart(&t(bad), &default, "r").is_err(), "{bad}");
        }
        assert!(check_latest_apart(&t("ckpt.pt"), &t("ckpt.pt"), "r").is_err());
    }
}
