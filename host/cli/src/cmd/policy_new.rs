//! `cairn policy new NAME --lang rust|python|js`: a policy project a tenant can build, test and
//! check at once — "save every `n` batches", with unit tests of the decision, a `job.toml`, and a
//! `simulate.sh` that checks the built component against cairn's built-in interval.
//!
//! The templates live in `policies/templates/` (CI instantiates each through this command and
//! builds it); the project gets its own copy of cairn's `wit/policy.wit`, so it builds anywhere.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// cairn's WIT package, written into every new project.
const POLICY_WIT: &str = include_str!("../../../../wit/policy.wit");

/// A template's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

impl Lang {
    fn key(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The one command that builds the project, as its README documents it.
    fn build(self) -> &'static str {
        match self {
            Lang::Rust => "cargo build --release --target wasm32-wasip2",
            Lang::Python => {
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/componentize-py -d wit -w cairn:policy/save-interval componentize app -o {{name}}.wasm"
            }
            Lang::Js => "npm ci && npm run build",
        }
    }

    fn test(self) -> &'static str {
        match self {
            Lang::Rust => "cargo test",
            Lang::Python => "python3 -m unittest",
            Lang::Js => "npm test",
        }
    }
}

/// Write the `lang` template into `dir` (created; it must not exist or be empty) as project `name`.
pub fn create(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() {
        let empty = dir
            .read_dir()
            .with_context(|| format!("{} is not a folder", dir.display()))?
            .next()
            .is_none();
        ensure!(empty, "{} already exists and is not empty", dir.display());
    }
    let snake = name.replace('-', "_");
    let mut written = Vec::new();
    let files = TEMPLATE_FILES.iter().filter(|(l, _, _)| *l == lang.key());
    for (_, relative, bytes) in
        files.chain([&(lang.key(), "wit/policy.wit", POLICY_WIT.as_bytes())])
    {
        let path = dir.join(relative);
        let text = String::from_utf8_lossy(bytes)
            .replace("{{name_snake}}", &snake)
            .replace("{{name}}", name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if relative.ends_with(".sh") {
            set_executable(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// Run `cairn policy new`.
pub fn run(name: &str, lang: Lang, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let written = create(name, lang, &dir)?;
    let build = lang.build().replace("{{name}}", name);
    println!(
        "created {} ({} files): a {lang:?} save-interval policy that saves every n batches",
        dir.display(),
        written.len()
    );
    println!("next, in {}:", dir.display());
    println!("  {build}                # build the component");
    println!("  {}                # test the decision logic", lang.test());
    println!(
        "  ./simulate.sh                # cairn policy check + compare with the built-in \"3ba\""
    );
    println!("README.md says what each file is for.");
    Ok(())
}

/// A name that is a valid Cargo package, npm package and file name everywhere.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok || name.len() > 64 {
        bail!(
            "policy name '{name}' must start with a lowercase letter and use only lowercase letters, digits, '-' and '_' (at most 64)"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_a_complete_template() {
        for (lang, must) in [
            (
                Lang::Rust,
                [
                    "Cargo.toml",
                    "src/lib.rs",
                    "simulate.sh",
                    "job.toml",
                    "README.md",
                ],
            ),
            (
                Lang::Python,
                [
                    "app.py",
                    "policy.py",
                    "simulate.sh",
                    "job.toml",
                    "README.md",
                ],
            ),
            (
                Lang::Js,
                [
                    "app.js",
                    "package.json",
                    "simulate.sh",
                    "job.toml",
                    "README.md",
                ],
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let project = dir.path().join("p");
            let written = create("my-policy", lang, &project).unwrap();
            for file in must {
                assert!(project.join(file).is_file(), "{lang:?}: {file}");
            }
            assert!(project.join("wit/policy.wit").is_file());
            for path in written {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    !text.contains("{{"),
                    "placeholder left in {}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn names_and_folders_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "My", "1x", "a b", "a/b", "ü"] {
            assert!(
                create(bad, Lang::Rust, &dir.path().join("x")).is_err(),
                "{bad:?}"
            );
        }
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let e = create("ok", Lang::Rust, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not empty"), "{e}");
    }
}
