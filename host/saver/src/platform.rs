//! The platform file: the operator's last word over every tenant's config.
//!
//! A training platform runs many tenants' jobs; the sandbox keeps a tenant's *policy* from
//! hurting the host, and this file keeps a tenant's *configuration* from doing so. It is read
//! before any tenant config (named by `CAIRN_PLATFORM` or `--platform`), and a tenant config that
//! asks for more than it allows is refused at load, naming both values:
//!
//! ```toml
//! [sandbox.ceiling]        # the most a tenant may ask for, key by key (every [sandbox] key)
//! memory_limit_mib = 256
//! [sandbox.default]        # what a tenant gets for a key it does not set (within the ceiling)
//! memory_limit_mib = 64
//!
//! [storage]                # where a tenant may keep checkpoints ({tenant}: the tenant's id)
//! folders = ["/srv/cairn/{tenant}"]       # [checkpoint] folder, as a local path
//! remotes = ["s3://ckpts/{tenant}"]       # [remote] url, and a folder given as a URL
//!
//! [policies]               # which components a tenant may load
//! folders = ["/srv/cairn/policies", "/srv/cairn/{tenant}/policies"]
//! digests = ["blake3:…"]                  # components allowed wherever they are
//! max_component_mib = 32
//! python_callables = false                # (the Python package's in-process callables)
//! on_error = ["fail", "skip"]
//! ```
//!
//! Locations are compared normalised, so no spelling escapes a prefix: scheme and bucket (host)
//! exactly, path segments after percent-decoding and resolving `.` and `..`, and for local paths
//! the real path (symlinks followed, for as much of the path as exists). A key left out of
//! `[storage]` or `[policies]` does not restrict; a list given, even empty, does. Credentials and
//! endpoints come only from the operator's environment: a tenant URL may hold neither a user part
//! (`s3://key:secret@bucket`) nor a query (`?endpoint=`).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use cairn_policy::{OnError, SandboxConfig};
use serde::Deserialize;

use crate::config::ConfigError;

/// The environment variable naming the platform file.
pub const PLATFORM_ENV: &str = "CAIRN_PLATFORM";
/// The environment variable holding the tenant's id (`{tenant}` in the platform file).
pub const TENANT_ENV: &str = "CAIRN_TENANT";

/// The platform file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformFile {
    #[serde(default)]
    sandbox: SandboxSection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    policies: PoliciesSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxSection {
    ceiling: Option<toml::Table>,
    default: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    folders: Option<Vec<String>>,
    remotes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesSection {
    folders: Option<Vec<String>>,
    digests: Option<Vec<String>>,
    max_component_mib: Option<u64>,
    python_callables: Option<bool>,
    on_error: Option<Vec<OnError>>,
}

/// A checked platform file, with `{tenant}` filled in.
#[derive(Clone, Debug)]
pub struct Platform {
    file: String,
    tenant: String,
    ceiling: Option<SandboxConfig>,
    ceiling_keys: Vec<String>,
    defaults: Option<SandboxConfig>,
    default_keys: Vec<String>,
    folders: Option<Vec<Location>>,
    remotes: Option<Vec<Location>>,
    policy_folders: Option<Vec<PathBuf>>,
    digests: Option<Vec<String>>,
    max_component_bytes: Option<u64>,
    python_callables: bool,
    on_error: Option<Vec<OnError>>,
}

impl Platform {
    /// The platform `CAIRN_PLATFORM` names, for the tenant `CAIRN_TENANT` (or `tenant`, which
    /// takes precedence), or `None` when no platform file is configured.
    pub fn from_env(tenant: Option<&str>) -> Result<Option<Platform>, ConfigError> {
        let Some(path) = std::env::var_os(PLATFORM_ENV) else {
            return Ok(None);
        };
        let env_tenant = std::env::var(TENANT_ENV).ok();
        Platform::load(Path::new(&path), tenant.or(env_tenant.as_deref())).map(Some)
    }

    /// Read the platform file at `path` for `tenant` (needed when the file says `{tenant}`).
    pub fn load(path: &Path, tenant: Option<&str>) -> Result<Platform, ConfigError> {
        let text = crate::config::read_text(path)?;
        Platform::parse(&text, &path.display().to_string(), tenant)
    }

    /// Check `text` (the platform file `file`) for `tenant`.
    pub fn parse(text: &str, file: &str, tenant: Option<&str>) -> Result<Platform, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            location: String::new(),
            message,
        };
        let raw: PlatformFile = toml::from_str(text).map_err(|e| err(e.message().to_owned()))?;
        let needs_tenant = text.contains("{tenant}");
        let tenant = match tenant {
            Some(t) => check_tenant(t).map_err(err)?,
            None if needs_tenant => {
                return Err(err(format!(
                    "the platform file uses {{tenant}}, but no tenant is named: set {TENANT_ENV} (or --tenant)"
                )));
            }
            None => String::new(),
        };
        let fill = |s: &String| s.replace("{tenant}", &tenant);
        let sandbox = |key: &str, table: &Option<toml::Table>| -> Result<_, ConfigError> {
            let Some(table) = table else {
                return Ok((None, Vec::new()));
            };
            let keys = table.keys().cloned().collect();
            let config = SandboxConfig::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| err(format!("sandbox.{key}: {}", e.message())))?;
            Ok((Some(config), keys))
        };
        let (ceiling, ceiling_keys) = sandbox("ceiling", &raw.sandbox.ceiling)?;
        let (defaults, default_keys) = sandbox("default", &raw.sandbox.default)?;
        let locations = |key: &str, list: &Option<Vec<String>>| -> Result<_, ConfigError> {
            list.as_ref()
                .map(|l| {
                    l.iter()
                        .map(|p| Location::parse(&fill(p)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| err(format!("storage.{key}: {e}")))
                })
                .transpose()
        };
        let platform = Platform {
            file: file.to_owned(),
            folders: locations("folders", &raw.storage.folders)?,
            remotes: locations("remotes", &raw.storage.remotes)?,
            policy_folders: raw.policies.folders.as_ref().map(|l| {
                l.iter()
                    .map(|p| real_path(&lexical(Path::new(&fill(p)))))
                    .collect()
            }),
            digests: raw
                .policies
                .digests
                .map(|d| d.iter().map(|s| s.to_ascii_lowercase()).collect()),
            max_component_bytes: raw
                .policies
                .max_component_mib
                .map(|m| m.saturating_mul(1 << 20)),
            python_callables: raw.policies.python_callables.unwrap_or(true),
            on_error: raw.policies.on_error,
            tenant,
            ceiling,
            ceiling_keys,
            defaults,
            default_keys,
        };
        platform.check_defaults_within_ceiling().map_err(err)?;
        Ok(platform)
    }

    /// The tenant's id.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// May tenants hand the Python package in-process callables (unsandboxed)?
    pub fn allows_python_callables(&self) -> bool {
        self.python_callables
    }

    fn check_defaults_within_ceiling(&self) -> Result<(), String> {
        let set = |k: &str| self.default_keys.iter().any(|d| d == k);
        match self
            .defaults
            .as_ref()
            .and_then(|d| self.above_ceiling(d, &set))
        {
            Some(msg) => Err(format!("sandbox.default: {msg}")),
            None => Ok(()),
        }
    }

    /// The first key of `sandbox` (among those `set`) above the ceiling, as a sentence.
    fn above_ceiling(&self, sandbox: &SandboxConfig, set: &dyn Fn(&str) -> bool) -> Option<String> {
        let ceiling = self.ceiling.as_ref()?;
        let capped = |k: &str| self.ceiling_keys.iter().any(|c| c == k);
        sandbox
            .limits()
            .into_iter()
            .zip(ceiling.limits())
            .find(|(v, c)| set(v.key) && capped(v.key) && v.above(*c))
            .map(|(v, c)| {
                let shown = |l: cairn_policy::Limit| match l.bound() {
                    Some(n) => n.to_string(),
                    None => "0 (no limit)".to_owned(),
                };
                format!(
                    "{} = {} is above the platform's ceiling of {} ({})",
                    v.key,
                    shown(v),
                    shown(c),
                    self.file
                )
            })
    }

    /// Apply the platform to a tenant's checked config: fill the `[sandbox]` keys the tenant
    /// left out from the platform's defaults, then refuse anything the platform does not allow.
    /// `sandbox_set` tells which `[sandbox]` keys the tenant wrote; `at` locates a key.
    pub(crate) fn apply(
        &self,
        config: &mut crate::Config,
        sandbox_set: &dyn Fn(&str) -> bool,
        at: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if let Some(defaults) = &self.defaults {
            let from_platform = |k: &str| self.default_keys.iter().any(|d| d == k);
            config
                .sandbox
                .fill_unset_from(defaults, &|k| sandbox_set(k) || !from_platform(k));
        }
        if let Some(msg) = self.above_ceiling(&config.sandbox, &|_| true) {
            let key = msg
                .split(' ')
                .next()
                .unwrap_or("memory_limit_mib")
                .to_owned();
            return Err(at(&format!("sandbox.{key}"), msg));
        }
        if let Some(allowed) = &self.on_error
            && !allowed.contains(&config.sandbox.on_error)
        {
            return Err(at(
                "sandbox.on_error",
                format!(
                    "sandbox.on_error = \"{}\" is not allowed by the platform ({}); allowed: {}",
                    on_error_name(config.sandbox.on_error),
                    self.file,
                    allowed
                        .iter()
                        .map(|o| format!("\"{}\"", on_error_name(*o)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Is the checkpoint folder (a local path, already rendered) inside an allowed prefix?
    pub fn check_folder(&self, folder: &str) -> Result<(), String> {
        let place = Location::parse(folder)?;
        let allowed = match &place {
            Location::Local(_) => &self.folders,
            Location::Store { .. } => &self.remotes,
        };
        self.check_inside(&place, allowed, "checkpoint.folder", folder)
    }

    /// Is the remote store URL inside an allowed prefix?
    pub fn check_remote(&self, url: &str) -> Result<(), String> {
        let place = Location::parse(url)?;
        self.check_inside(&place, &self.remotes, "remote.url", url)
    }

    fn check_inside(
        &self,
        place: &Location,
        allowed: &Option<Vec<Location>>,
        key: &str,
        written: &str,
    ) -> Result<(), String> {
        let Some(allowed) = allowed else {
            return Ok(());
        };
        if allowed.iter().any(|prefix| place.is_inside(prefix)) {
            return Ok(());
        }
        let list: Vec<String> = allowed.iter().map(|l| l.to_string()).collect();
        Err(format!(
            "{key} '{written}' ({place}) is outside what the platform allows for tenant '{}': {} ({})",
            self.tenant,
            if list.is_empty() {
                "nothing".to_owned()
            } else {
                list.join(", ")
            },
            self.file
        ))
    }

    /// May the component at `path`, whose BLAKE3 digest is `digest` and size `len`, be loaded?
    pub fn check_component(&self, path: &Path, digest: &str, len: u64) -> Result<(), String> {
        if let Some(max) = self.max_component_bytes
            && len > max
        {
            return Err(format!(
                "policy component {} is {:.1} MiB, more than the platform's max_component_mib of {} ({})",
                path.display(),
                len as f64 / (1 << 20) as f64,
                max >> 20,
                self.file
            ));
        }
        if self.policy_folders.is_none() && self.digests.is_none() {
            return Ok(());
        }
        let real = real_path(&lexical(
            &std::path::absolute(path).unwrap_or(path.to_path_buf()),
        ));
        let in_folder = self
            .policy_folders
            .iter()
            .flatten()
            .any(|f| real.starts_with(f));
        let by_digest = self
            .digests
            .iter()
            .flatten()
            .any(|d| d == &format!("blake3:{digest}"));
        if in_folder || by_digest {
            return Ok(());
        }
        Err(format!(
            "policy component {} is neither in a folder the platform allows nor one of its allowed digests (blake3:{digest}) ({})",
            path.display(),
            self.file
        ))
    }
}

fn on_error_name(o: OnError) -> &'static str {
    match o {
        OnError::Fail => "fail",
        OnError::Skip => "skip",
        OnError::Save => "save",
    }
}

/// A tenant id is a path segment and a bucket-prefix segment: nothing that could climb out.
fn check_tenant(t: &str) -> Result<String, String> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && t != "."
        && t != "..";
    if ok {
        Ok(t.to_owned())
    } else {
        Err(format!(
            "tenant id '{t}' must be 1 to 64 letters, digits, '-', '_' or '.' (and not '.' or '..')"
        ))
    }
}

/// A storage location, normalised for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    /// A local path: absolute, `.`/`..` resolved, symlinks followed where the path exists.
    Local(PathBuf),
    /// A store URL: scheme, bucket (or host), and path segments (percent-decoded, `.`/`..`
    /// resolved). `file://` URLs are local paths.
    Store {
        scheme: String,
        bucket: String,
        segments: Vec<String>,
    },
}

impl Location {
    fn parse(written: &str) -> Result<Location, String> {
        let Some((scheme, rest)) = written.split_once("://") else {
            let absolute = std::path::absolute(written)
                .map_err(|e| format!("'{written}' cannot be made absolute: {e}"))?;
            return Ok(Location::Local(real_path(&lexical(&absolute))));
        };
        let scheme = scheme.to_ascii_lowercase();
        if rest.contains('?') || rest.contains('#') {
            return Err(format!(
                "'{written}' has a query or fragment; endpoints and credentials come from the operator's environment"
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(format!(
                "'{written}' carries credentials; they come from the operator's environment"
            ));
        }
        if scheme == "file" {
            let path = percent_decode(path)?;
            let path = if authority.is_empty() || authority == "localhost" {
                format!("/{path}")
            } else {
                format!("{authority}/{path}")
            };
            return Location::parse(&path);
        }
        let mut segments: Vec<String> = Vec::new();
        for raw in path.split('/') {
            match percent_decode(raw)?.as_str() {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s.to_owned()),
            }
        }
        Ok(Location::Store {
            scheme: match scheme.as_str() {
                "s3a" => "s3".to_owned(),
                "azure" | "abfs" => "az".to_owned(),
                s => s.to_owned(),
            },
            bucket: percent_decode(authority)?.to_ascii_lowercase(),
            segments,
        })
    }

    fn is_inside(&self, prefix: &Location) -> bool {
        match (self, prefix) {
            (Location::Local(p), Location::Local(q)) => p.starts_with(q),
            (
                Location::Store {
                    scheme,
                    bucket,
                    segments,
                },
                Location::Store {
                    scheme: s2,
                    bucket: b2,
                    segments: g2,
                },
            ) => scheme == s2 && bucket == b2 && segments.starts_with(g2),
            _ => false,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Store {
                scheme,
                bucket,
                segments,
            } => {
                write!(f, "{scheme}://{bucket}")?;
                for s in segments {
                    write!(f, "/{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// `%XX` escapes decoded; a `/` spelled `%2F` is refused (it would hide a segment boundary).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(format!("'{s}' has a malformed %-escape"));
            };
            if b == b'/' || b == b'\\' || b == 0 {
                return Err(format!("'{s}' spells a separator or NUL as a %-escape"));
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' decodes to something that is not UTF-8"))
}

/// `path` with `.` and `..` resolved lexically (a `..` at the root stays at the root).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The real path of the longest existing ancestor of `path` (symlinks followed), with the rest
/// of `path` appended: a folder that does not exist yet is judged by where it would be created.
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside(place: &str, prefix: &str) -> bool {
        Location::parse(place)
            .unwrap()
            .is_inside(&Location::parse(prefix).unwrap())
    }

    #[test]
    fn store_locations_compare_normalised() {
        assert!(inside("s3://shared/a/ckpt", "s3://shared/a"));
        assert!(inside("s3://shared/a", "s3://shared/a/"));
        assert!(inside("S3://Shared/a/./x", "s3://shared/a"));
        assert!(!inside("s3://shared/a/../b/x", "s3://shared/a"));
        assert!(!inside("s3://shared/a/%2e%2e/b", "s3://shared/a"));
        assert!(
            !inside("s3://shared/ab", "s3://shared/a"),
            "segments, not strings"
        );
        assert!(!inside("gs://shared/a", "s3://shared/a"));
        assert!(!inside("s3://other/a", "s3://shared/a"));
        assert!(inside("s3a://shared/a/x", "s3://shared/a"));
        assert!(Location::parse("s3://shared/a%2fb").is_err());
        assert!(Location::parse("s3://k:s@shared/a").is_err());
        assert!(Location::parse("s3://shared/a?endpoint=http://evil").is_err());
    }

    #[test]
    fn local_locations_follow_symlinks_and_dots() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::os::unix::fs::symlink(&b, a.join("link")).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        assert!(inside(&s(&a.join("new/ckpts")), &s(&a)));
        assert!(!inside(&s(&a.join("../b/x")), &s(&a)));
        assert!(
            !inside(&s(&a.join("link/x")), &s(&a)),
            "a symlink out of the prefix"
        );
        assert!(inside(&format!("file://{}", s(&a.join("x"))), &s(&a)));
        assert!(!inside(&format!("file://{}/%2e%2e/b", s(&a)), &s(&a)));
    }

    #[test]
    fn tenant_ids_cannot_climb() {
        for bad in ["", "..", ".", "a/b", "a b", "x%2f"] {
            assert!(check_tenant(bad).is_err(), "{bad:?}");
        }
        assert!(check_tenant("team-7.prod").is_ok());
    }
}
