//! A per-test working directory: configs, logs and captures. Removed when the test passes; kept and printed (with
//! the tail of every log in it) when it fails.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// How many trailing lines of each file [`TestDir::report`] prints.
const TAIL_LINES: usize = 60;

#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: Cell<bool>,
}

impl TestDir {
    /// Creates `<tmp>/ambit-e2e-<name>.XXXXXX`.
    pub fn new(name: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ambit-e2e-{name}."))
            .tempdir()
            .context("create the test directory")?;
        Ok(TestDir {
            path: dir.keep(),
            keep: Cell::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Keeps the directory after drop (the benchmark keeps its raw outputs).
    pub fn keep(&self) {
        self.keep.set(true);
    }

    /// Prints the directory and the tail of each text file in it to stderr, and keeps it.
    pub fn report(&self) {
        self.keep();
        eprintln!("==== test directory kept: {}", self.path.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            if bytes.is_empty() || file.extension().is_some_and(|e| e == "pcap") {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            eprintln!("---- {} (last {TAIL_LINES} lines)", file.display());
            eprintln!("{}", tail(&text, TAIL_LINES));
        }
        eprintln!("==== end of {}", self.path.display());
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.keep.get() {
            self.report();
        }
        if !self.keep.get() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    let mut start = trimmed.len();
    for _ in 0..n {
        match trimmed[..start].rfind('\n') {
            Some(i) => start = i,
            None => return trimmed,
        }
    }
    &trimmed[start + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn removed_on_success_kept_when_reported() {
        let d = TestDir::new("unit").unwrap();
        let p = d.path().to_path_buf();
        std::fs::write(d.join("x.log"), "hello\n").unwrap();
        drop(d);
        assert!(!p.exists());

        let d = TestDir::new("unit").unwrap();
        let p = d.path().to_path_buf();
        d.report();
        drop(d);
        assert!(p.exists());
        std::fs::remove_dir_all(p).unwrap();
    }
}
