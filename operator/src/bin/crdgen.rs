//! Writes the CRD YAML generated from `operator/src/crd/` (one module per kind) into `crds/` (one file per
//! CRD), or with `--check` compares it with what is there and exits 1 listing the differences.
//!
//! Usage: `cargo run -p sigil-operator --bin crdgen [-- [--check] [--dir DIR]]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use sigil_operator::crd::{diff_files, generated_files, is_generated_file_name};

const USAGE: &str = "usage: crdgen [--check] [--dir DIR]   (default DIR: the repository's crds/)";

fn default_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("crds");
    dir.canonicalize().unwrap_or(dir)
}

fn read_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_generated_file_name(&name) {
            let text =
                std::fs::read_to_string(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
            files.insert(name, text);
        }
    }
    Ok(files)
}

fn run() -> anyhow::Result<ExitCode> {
    let mut check = false;
    let mut dir = default_dir();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => dir = PathBuf::from(args.next().context(USAGE)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let expected = generated_files()?;
    let actual = read_dir(&dir)?;
    let differences = diff_files(&expected, &actual);
    if check {
        if differences.is_empty() {
            println!("crdgen: {} CRDs in {} are up to date", expected.len(), dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        for difference in &differences {
            eprintln!("crdgen: {}/{difference}", dir.display());
        }
        eprintln!("crdgen: run `cargo run -p sigil-operator --bin crdgen` to regenerate");
        return Ok(ExitCode::FAILURE);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in &expected {
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.contents).with_context(|| format!("writing {}", path.display()))?;
        println!("crdgen: wrote {}", path.display());
    }
    for name in actual.keys().filter(|name| !expected.iter().any(|f| &f.name == *name)) {
        let path = dir.join(name);
        std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        println!("crdgen: removed stale {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crdgen: {e:#}");
            ExitCode::from(2)
        }
    }
}
