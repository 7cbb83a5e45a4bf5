//! Where weft's configuration comes from.
//!
//! Today: files, directories (recursively, `*.yaml`, `*.yml`, `*.json`) and stdin (`-`).
//! Tomorrow: watched directories and the Kubernetes API. Every source produces the same
//! [`weft_api::Parsed`]: typed resources plus diagnostics that name file and line.

use std::io::Read;
use std::path::{Path, PathBuf};

use weft_api::Parsed;

/// File extensions read from directories.
pub const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// A source could not be read at all (as opposed to holding bad configuration, which
/// becomes diagnostics).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist or cannot be read.
    #[error("cannot read {path}: {source} (does the path exist, and may this user read it?)")]
    Read {
        /// The path given.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// Stdin could not be read.
    #[error("cannot read stdin: {0}")]
    Stdin(std::io::Error),
}

/// Reads and parses every path: files, directories (recursively) and `-` for stdin.
pub fn load(paths: &[PathBuf]) -> Result<Parsed, LoadError> {
    let mut parsed = Parsed::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(LoadError::Stdin)?;
            parsed.extend(weft_api::parse_text("-", &text));
        } else {
            for file in files_under(path)? {
                parsed.extend(load_file(&file)?);
            }
        }
    }
    Ok(parsed)
}

/// Reads and parses one file.
pub fn load_file(path: &Path) -> Result<Parsed, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let name = path.to_string_lossy();
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            // Report, with the line, rather than refuse the whole run.
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let mut parsed = Parsed::default();
            parsed.diagnostics.push(
                weft_api::Diagnostic::new(weft_api::diag::codes::YAML_SYNTAX_ERROR, "the file is not UTF-8 text")
                    .at(weft_api::Origin { file: name.as_ref().into(), line }),
            );
            return Ok(parsed);
        }
    };
    Ok(weft_api::parse_text(&name, &text))
}

/// The configuration files at `path`: the file itself, or every `*.yaml|*.yml|*.json`
/// below a directory, in name order so results are stable.
pub fn files_under(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| LoadError::Read { path: dir.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Read { path: dir.clone(), source })?;
            let p = entry.path();
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n";

    #[test]
    fn reads_directories_recursively_in_order_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::create_dir_all(root.join("nested/deeper")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("b.yaml"), VS.replace("name: a", "name: b")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("nested/deeper/c.yml"), VS.replace("name: a", "name: c"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("nested/a.json"), r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"j"},"spec":{"hosts":["a"],"http":[{"route":[{"destination":{"host":"a"}}]}]}}"#).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("notes.txt"), "not: config").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join(".hidden.yaml"), "broken: [").unwrap_or_else(|e| panic!("{e}"));
        let parsed = load(&[root.to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = parsed.resources.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["b", "j", "c"]);
        assert!(parsed.diagnostics.iter().all(|d| !d.is_error()), "{:?}", parsed.diagnostics);
    }

    #[test]
    fn a_missing_path_is_named() {
        let err = load(&[PathBuf::from("/no/such/dir")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn non_utf8_is_a_diagnostic_with_a_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("x.yaml");
        std::fs::write(&file, b"a: 1\nb: \xff\n").unwrap_or_else(|e| panic!("{e}"));
        let parsed = load_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.diagnostics[0].origin.as_ref().map(|o| o.line), Some(2));
    }
}
