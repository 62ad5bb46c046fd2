//! Replays every checked-in corpus input (and every fixed crash kept in `artifacts/`) through its target, so a
//! finding stays fixed under the normal `cargo test`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ambit_fuzz::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.is_file()
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    });
    files.sort();
    files
}

#[test]
fn every_corpus_input_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut total = 0;
    for t in TARGETS {
        let corpus = root.join("corpus").join(t.name);
        let mut files = inputs(&corpus);
        assert!(
            !files.is_empty(),
            "corpus {} is missing or empty: run `cargo run -p ambit-fuzz --bin make-seeds`",
            corpus.display()
        );
        files.extend(inputs(&root.join("artifacts").join(t.name)));
        let started = std::time::Instant::now();
        let count = files.len();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            total += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (t.run)(&data))) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{} {}: {msg}", t.name, f.display()));
            }
        }
        eprintln!("{}: {count} inputs in {:?}", t.name, started.elapsed());
    }
    assert!(
        failures.is_empty(),
        "{} of {total} inputs panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("replayed {total} inputs over {} targets", TARGETS.len());
}

#[test]
fn every_target_has_a_libfuzzer_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/Cargo.toml"))
            .unwrap_or_else(|e| panic!("fuzz/targets/Cargo.toml: {e}"));
    for t in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "fuzz/targets/Cargo.toml has no [[bin]] for {}",
            t.name
        );
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("targets/bin/{}.rs", t.name));
        let src =
            std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            src.contains(&format!("ambit_fuzz::{}", t.name)),
            "{} does not call its target",
            bin.display()
        );
    }
}
