//! Writes the CRD YAML generated from `operator/src/crd/` (one module per kind) into `crds/` and, Helm-escaped,
//! into the `sigil-crds` chart's `templates/` (one file per CRD in each), or with `--check` compares both
//! with what is there and exits 1 listing the differences.
//!
//! Usage: `cargo run -p sigil-operator --bin crdgen [-- [--check] [--dir DIR] [--chart-dir DIR]]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use sigil_operator::crd::{
    CHART_TEMPLATES_DIR, GeneratedFile, chart_files, diff_files, generated_files, is_generated_file_name,
};

const USAGE: &str = "usage: crdgen [--check] [--dir DIR] [--chart-dir DIR]\n  \
                     default DIR: the repository's crds/; default chart DIR: the repository's charts/sigil-crds/templates/";

fn repo_path(relative: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
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

/// Checks one directory: true when it is up to date (the differences are printed otherwise).
fn check(dir: &Path, expected: &[GeneratedFile]) -> anyhow::Result<bool> {
    let differences = diff_files(expected, &read_dir(dir)?);
    if differences.is_empty() {
        println!("crdgen: {} CRDs in {} are up to date", expected.len(), dir.display());
        return Ok(true);
    }
    for difference in &differences {
        eprintln!("crdgen: {}/{difference}", dir.display());
    }
    Ok(false)
}

/// Writes the files of one directory and removes generated-looking files that no type generates any more.
fn write(dir: &Path, expected: &[GeneratedFile]) -> anyhow::Result<()> {
    let actual = read_dir(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in expected {
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.contents).with_context(|| format!("writing {}", path.display()))?;
        println!("crdgen: wrote {}", path.display());
    }
    for name in actual.keys().filter(|name| !expected.iter().any(|f| &f.name == *name)) {
        let path = dir.join(name);
        std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        println!("crdgen: removed stale {}", path.display());
    }
    Ok(())
}

fn run() -> anyhow::Result<ExitCode> {
    let mut check_only = false;
    let mut dir = repo_path("crds");
    let mut chart_dir = repo_path(CHART_TEMPLATES_DIR);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check_only = true,
            "--dir" => dir = PathBuf::from(args.next().context(USAGE)?),
            "--chart-dir" => chart_dir = PathBuf::from(args.next().context(USAGE)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let targets = [(dir, generated_files()?), (chart_dir, chart_files()?)];
    if check_only {
        let mut up_to_date = true;
        for (dir, expected) in &targets {
            up_to_date &= check(dir, expected)?;
        }
        if up_to_date {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("crdgen: run `cargo run -p sigil-operator --bin crdgen` to regenerate, and commit both directories");
        return Ok(ExitCode::FAILURE);
    }
    for (dir, expected) in &targets {
        write(dir, expected)?;
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
