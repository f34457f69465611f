//! Embeds the policy templates (`policies/templates/{rust,python,js}`) and cairn's WIT package for
//! `cairn policy new`: every file a template holds, except what a build in the template folder may
//! have left there, so a developer's `npm ci` never ends up inside the binary.

use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Build outputs and caches that never belong to a template.
const SKIP: [&str; 7] = [
    "node_modules",
    "target",
    ".venv",
    "__pycache__",
    "checkpoints",
    "wit",
    "Cargo.lock",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let templates = manifest.join("../../policies/templates");
    println!("cargo:rerun-if-changed={}", templates.display());
    let mut code = String::from(
        "/// (language, path inside the project, contents)\npub static TEMPLATE_FILES: &[(&str, &str, &[u8])] = &[\n",
    );
    for lang in ["rust", "python", "js"] {
        let root = templates.join(lang);
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        files.sort();
        for (relative, path) in files {
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(
                code,
                "    ({lang:?}, {relative:?}, include_bytes!({:?})),",
                path.display().to_string()
            )
            .unwrap();
        }
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("templates.rs");
    std::fs::write(out, code).unwrap();
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if SKIP.contains(&name.as_str()) || name.ends_with(".wasm") {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            walk(root, &path, out);
        } else {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((relative, path));
        }
    }
}
