//! The platform file (issue 16): the operator's ceilings, defaults and confinement, applied to
//! every tenant's config at load. Every refusal names the key, both values or the allowed
//! places, and happens before anything is written; a well-behaved tenant runs unchanged.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_testkit as common;

struct Platform {
    _dir: tempfile::TempDir,
    root: PathBuf,
    file: PathBuf,
}

/// A platform whose tenants keep checkpoints under `<root>/tenants/{tenant}` and
/// `memory://shared/{tenant}`, load components from `<root>/policies` (plus one digest), and may
/// raise memory to 256 MiB (64 by default).
fn platform(extra: &str) -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    fs::create_dir_all(root.join("policies")).unwrap();
    fs::create_dir_all(root.join("tenants")).unwrap();
    let file = root.join("platform.toml");
    fs::write(
        &file,
        format!(
            r#"[sandbox.ceiling]
memory_limit_mib = 256
fuel_per_call = 100_000_000
timeout_ms = 1000
[sandbox.default]
memory_limit_mib = 64
[storage]
folders = ["{root}/tenants/{{tenant}}"]
remotes = ["memory://shared/{{tenant}}"]
[policies]
folders = ["{root}/policies"]
max_component_mib = 8
on_error = ["fail", "skip"]
{extra}"#,
            root = root.display()
        ),
    )
    .unwrap();
    Platform {
        _dir: dir,
        root,
        file,
    }
}

fn cairn(p: &Platform, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(&p.root)
        .env("CAIRN_CACHE_DIR", p.root.join("cache"))
        .env("CAIRN_PLATFORM", &p.file)
        .env_remove("CAIRN_TENANT")
        .args(args)
        .output()
        .unwrap()
}

/// A tenant job: checkpoints in `folder`, uploads to `url`, and `extra` TOML (`[checkpoint]` keys
/// first; a `[sandbox]` table after them), saving every 2 batches unless `extra` says otherwise.
fn job(p: &Platform, name: &str, folder: &str, url: &str, extra: &str) -> String {
    let path = p.root.join(format!("{name}.toml"));
    let interval = if extra.contains("save_interval") {
        ""
    } else {
        "save_interval = \"2ba\"\n"
    };
    fs::write(
        &path,
        format!(
            "run_name = \"{name}\"\n[remote]\nurl = \"{url}\"\n[train]\nmax_duration = \"4ba\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n[checkpoint]\nfolder = \"{folder}\"\n{interval}{extra}\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn tenant_folder(p: &Platform, tenant: &str) -> String {
    p.root.join("tenants").join(tenant).display().to_string()
}

fn refused(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should be refused: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    err
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_well_behaved_tenant_runs_unchanged_and_gets_the_platforms_defaults() {
    let p = platform("");
    let folder = tenant_folder(&p, "a");
    let a = job(&p, "a", &folder, "memory://shared/a", "");
    let out = ok(&cairn(
        &p,
        &["run", "--config", &a, "--tenant", "a", "--json"],
    ));
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["saves"], 2, "{summary}");
    assert_eq!(
        files_under(Path::new(&folder))
            .iter()
            .filter(|f| f.starts_with("ep"))
            .count(),
        2
    );
    // The default applies where the tenant is silent: a Python policy needs ~13 MiB, so a
    // platform default of 8 MiB makes it fail to start, naming the limit.
    let q = platform("");
    fs::write(
        &q.file,
        fs::read_to_string(&q.file)
            .unwrap()
            .replace("memory_limit_mib = 64", "memory_limit_mib = 8"),
    )
    .unwrap();
    if let Some(py) = common::python_policy() {
        let local = q.root.join("policies/every_n_py.wasm");
        fs::copy(py, &local).unwrap();
        // The Python component is ~18 MB: above max_component_mib 8.
        let cfg = format!("save_interval = {{ wasm = \"{}\" }}", local.display());
        let b = job(&q, "b", &tenant_folder(&q, "b"), "memory://shared/b", &cfg);
        refused(
            &cairn(&q, &["run", "--config", &b, "--tenant", "b"]),
            &["max_component_mib of 8"],
        );
    }
}

/// Tenant `a` setting each `(key, value)` is refused, naming the key, the `ceiling`, its own file
/// and line and the platform file.
fn refused_above_ceilings(p: &Platform, cases: &[(&str, &str, &str)]) {
    let folder = tenant_folder(p, "a");
    for (key, value, ceiling) in cases {
        let a = job(
            p,
            "a",
            &folder,
            "memory://shared/a",
            &format!("[sandbox]\n{key} = {value}"),
        );
        let err = refused(
            &cairn(p, &["run", "--config", &a, "--tenant", "a"]),
            &[&format!("{key} = {value}"), ceiling, "platform.toml"],
        );
        assert!(err.contains("a.toml:"), "the tenant's file and line: {err}");
    }
}

#[test]
fn a_limit_one_above_its_ceiling_is_refused_naming_both_values() {
    let p = platform("");
    let folder = tenant_folder(&p, "a");
    refused_above_ceilings(
        &p,
        &[
            ("memory_limit_mib", "257", "256"),
            ("fuel_per_call", "100000001", "100000000"),
            ("fuel_per_call", "0", "100000000"),
            ("timeout_ms", "0", "1000"),
        ],
    );
    let a = job(
        &p,
        "a",
        &folder,
        "memory://shared/a",
        "[sandbox]\nmemory_limit_mib = 256",
    );
    ok(&cairn(&p, &["run", "--config", &a, "--tenant", "a"]));
    let a = job(
        &p,
        "a2",
        &tenant_folder(&p, "a2"),
        "memory://shared/a2",
        "[sandbox]\non_error = \"save\"",
    );
    refused(
        &cairn(&p, &["run", "--config", &a, "--tenant", "a2"]),
        &["on_error = \"save\" is not allowed", "\"fail\", \"skip\""],
    );
    assert!(
        files_under(&p.root.join("tenants"))
            .iter()
            .all(|t| t != "a2"),
        "nothing written"
    );
}

#[test]
fn no_spelling_of_a_place_escapes_the_tenants_prefix() {
    let p = platform("");
    let a = tenant_folder(&p, "a");
    let b = tenant_folder(&p, "b");
    fs::create_dir_all(&b).unwrap();
    fs::create_dir_all(&a).unwrap();
    std::os::unix::fs::symlink(&b, Path::new(&a).join("link")).unwrap();
    let cases = [
        (
            b.clone(),
            "memory://shared/a".to_owned(),
            "checkpoint.folder",
        ),
        (
            format!("{a}/../b/x"),
            "memory://shared/a".to_owned(),
            "checkpoint.folder",
        ),
        (
            format!("{a}/link/ckpts"),
            "memory://shared/a".to_owned(),
            "checkpoint.folder",
        ),
        (
            format!("file://{a}/%2e%2e/b"),
            "memory://shared/a".to_owned(),
            "checkpoint.folder",
        ),
        (
            "relative/ckpts".to_owned(),
            "memory://shared/a".to_owned(),
            "checkpoint.folder",
        ),
        (a.clone(), "memory://shared/b".to_owned(), "remote.url"),
        (a.clone(), "memory://shared/a/../b".to_owned(), "remote.url"),
        (
            a.clone(),
            "memory://shared/a/%2e%2e/b".to_owned(),
            "remote.url",
        ),
        (a.clone(), "memory://shared/ab".to_owned(), "remote.url"),
        (a.clone(), "memory://k:s@shared/a".to_owned(), "credentials"),
        (
            "memory://shared/b/ckpts".to_owned(),
            "memory://shared/a".to_owned(),
            "checkpoint.folder",
        ),
    ];
    for (folder, url, needle) in cases {
        let cfg = job(&p, "a", &folder, &url, "");
        let err = refused(
            &cairn(&p, &["run", "--config", &cfg, "--tenant", "a"]),
            &[needle],
        );
        // Refused by the platform, or earlier by the store's own rules (no `..` in a key).
        let by_store = err.contains("invalid path");
        assert!(
            err.contains("tenant 'a'") || by_store || needle == "credentials",
            "{folder} {url}: {err}"
        );
        let sim = cairn(&p, &["simulate", "--config", &cfg, "--tenant", "a"]);
        assert!(
            !sim.status.success(),
            "simulate refuses it too: {folder} {url}"
        );
    }
    assert_eq!(
        files_under(Path::new(&b)),
        Vec::<String>::new(),
        "b's folder untouched"
    );
    let climbing = job(
        &p,
        "a",
        &a,
        "memory://shared/a",
        "latest_filename = \"../../latest.pt\"",
    );
    refused(
        &cairn(&p, &["run", "--config", &climbing, "--tenant", "a"]),
        &["checkpoint.latest_filename", ".."],
    );
}

#[test]
fn components_come_only_from_allowed_places_or_digests() {
    let p = platform("");
    let folder = tenant_folder(&p, "a");
    let built = common::rust_policy("every_n");
    let elsewhere = p.root.join("every_n.wasm");
    fs::copy(&built, &elsewhere).unwrap();
    let cfg = |path: &Path| {
        format!(
            "save_interval = {{ wasm = \"{}\", config = {{ n = 2 }} }}",
            path.display()
        )
    };
    let a = job(&p, "a", &folder, "memory://shared/a", &cfg(&elsewhere));
    refused(
        &cairn(&p, &["run", "--config", &a, "--tenant", "a"]),
        &[
            "checkpoint.save_interval",
            "neither in a folder the platform allows",
            "blake3:",
        ],
    );
    // The same file in the allowed folder, or anywhere once its digest is allowed.
    let allowed = p.root.join("policies/every_n.wasm");
    fs::copy(&built, &allowed).unwrap();
    let a = job(&p, "a", &folder, "memory://shared/a", &cfg(&allowed));
    ok(&cairn(&p, &["run", "--config", &a, "--tenant", "a"]));
    let digest = blake3::hash(&fs::read(&built).unwrap())
        .to_hex()
        .to_string();
    let q = platform(&format!("digests = [\"blake3:{digest}\"]"));
    let elsewhere = q.root.join("every_n.wasm");
    fs::copy(&built, &elsewhere).unwrap();
    let a = job(
        &q,
        "a",
        &tenant_folder(&q, "a"),
        "memory://shared/a",
        &cfg(&elsewhere),
    );
    ok(&cairn(&q, &["run", "--config", &a, "--tenant", "a"]));
    // A symlink into the allowed folder from outside does not make an outside file allowed.
    let outside = p.root.join("outside.wasm");
    fs::copy(&built, &outside).unwrap();
    let link = p.root.join("policies/link.wasm");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let a = job(&p, "a", &folder, "memory://shared/a", &cfg(&link));
    refused(
        &cairn(&p, &["run", "--config", &a, "--tenant", "a"]),
        &["neither in a folder"],
    );
}

#[test]
fn tenants_in_one_process_stay_apart() {
    let p = platform("");
    let a_folder = tenant_folder(&p, "a");
    let a = job(&p, "a", &a_folder, "memory://shared/a", "");
    ok(&cairn(&p, &["run", "--config", &a, "--tenant", "a"]));
    let before: Vec<(String, Vec<u8>)> = files_under(Path::new(&a_folder))
        .into_iter()
        .map(|f| {
            let bytes = fs::read(Path::new(&a_folder).join(&f)).unwrap_or_default();
            (f, bytes)
        })
        .collect();
    // Tenant b's config names a's folder, with overwrite and retention that would delete a's work.
    let b = job(
        &p,
        "b",
        &a_folder,
        "memory://shared/b",
        "overwrite = true\nnum_checkpoints_to_keep = 0",
    );
    let fresh = job(&p, "c", &tenant_folder(&p, "c"), "memory://shared/c", "");
    refused(
        &cairn(
            &p,
            &[
                "run", "--config", &fresh, "--config", &b, "--tenant", "c", "--tenant", "b",
            ],
        ),
        &["b.toml", "checkpoint.folder", "tenant 'b'"],
    );
    let after: Vec<(String, Vec<u8>)> = files_under(Path::new(&a_folder))
        .into_iter()
        .map(|f| {
            let bytes = fs::read(Path::new(&a_folder).join(&f)).unwrap_or_default();
            (f, bytes)
        })
        .collect();
    assert_eq!(before, after, "a's checkpoints are untouched");
    // Each tenant confined to its own prefix, side by side.
    let b = job(&p, "b", &tenant_folder(&p, "b"), "memory://shared/b", "");
    ok(&cairn(
        &p,
        &[
            "run", "--config", &fresh, "--config", &b, "--tenant", "c", "--tenant", "b",
        ],
    ));
    refused(
        &cairn(
            &p,
            &["run", "--config", &fresh, "--config", &b, "--tenant", "c"],
        ),
        &["tenant 'c'"],
    );
    refused(&cairn(&p, &["run", "--config", &fresh]), &["CAIRN_TENANT"]);
}

#[test]
fn the_sandbox_bounds_of_issue_18_have_ceilings_and_defaults() {
    let p = platform("");
    let text = fs::read_to_string(&p.file).unwrap();
    fs::write(
        &p.file,
        text.replace(
            "timeout_ms = 1000\n",
            "timeout_ms = 1000\nmax_message_bytes = 4096\nmax_log_bytes_per_run = 4194304\nmax_component_mib = 64\ncompile_timeout_ms = 1800000\ncompile_memory_mib = 4096\n",
        )
        .replace(
            "memory_limit_mib = 64\n",
            "memory_limit_mib = 64\ncompile_timeout_ms = 1\n",
        ),
    )
    .unwrap();
    let folder = tenant_folder(&p, "a");
    // One above the ceiling, or 0 where 0 switches the bound off: refused, naming both values.
    refused_above_ceilings(
        &p,
        &[
            ("max_message_bytes", "4097", "4096"),
            ("max_log_bytes_per_run", "0", "4194304"),
            ("max_component_mib", "65", "64"),
            ("compile_timeout_ms", "0", "1800000"),
            ("compile_memory_mib", "4097", "4096"),
        ],
    );
    // The platform's default compile deadline (1 ms) reaches the compile worker of a tenant that
    // is silent about it, in `cairn run` and in `cairn policy check --config`.
    let every_n = p.root.join("policies/every_n.wasm");
    fs::copy(common::rust_policy("every_n"), &every_n).unwrap();
    let interval = format!(
        "save_interval = {{ wasm = \"{}\", config = {{ n = 2 }} }}",
        every_n.display()
    );
    let silent = job(&p, "a", &folder, "memory://shared/a", &interval);
    refused(
        &cairn(&p, &["run", "--config", &silent, "--tenant", "a"]),
        &["every_n.wasm", "deadline of 1 ms", "compile_timeout_ms"],
    );
    let check = |config: &str| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .current_dir(&p.root)
            .env("CAIRN_CACHE_DIR", p.root.join("cache"))
            .env("CAIRN_PLATFORM", &p.file)
            .env("CAIRN_TENANT", "a")
            .args([
                "policy",
                "check",
                &every_n.to_string_lossy(),
                "--config",
                config,
            ])
            .output()
            .unwrap()
    };
    refused(&check(&silent), &["deadline of 1 ms"]);
    // A tenant's own value within the ceiling stands.
    let own = job(
        &p,
        "a",
        &folder,
        "memory://shared/a",
        &format!("{interval}\n[sandbox]\ncompile_timeout_ms = 1800000"),
    );
    ok(&check(&own));
    ok(&cairn(&p, &["run", "--config", &own, "--tenant", "a"]));
    assert_eq!(
        files_under(Path::new(&folder))
            .iter()
            .filter(|f| f.starts_with("ep"))
            .count(),
        2
    );
}
