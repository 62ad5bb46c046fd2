//! The manifest-directory source: multi-document `*.yaml`/`*.yml` files directly inside each directory (not in
//! sub-directories; hidden files are skipped), the same files a user would `kubectl apply`.
//!
//! Changes are noticed through inotify (`notify`) and, as a fallback, a slow poll; both only trigger a rescan,
//! debounced so an editor's burst of writes becomes one rescan. A rescan re-reads only files whose size or
//! modification time changed and reports the difference to the previous state as events.
//!
//! Bad input never loses state: a file with a YAML syntax error keeps every object it had before (reported with the
//! file and the index of the failing document); a well-formed document that is not a valid object keeps the last
//! good version of that object (when its kind, namespace and name can still be read).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ambit_core::drain::DrainWatcher;
use notify::Watcher;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{
    Document, Event, Object, ObjectKey, Source, SourceError, document_key, parse_document,
};

/// The state of one file as last read.
#[derive(Debug, Default)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    objects: BTreeMap<ObjectKey, Object>,
    errors: Vec<String>,
}

/// Everything read from the directories; [`ManifestState::rescan`] brings it up to date.
#[derive(Debug, Default)]
pub struct ManifestState {
    files: BTreeMap<PathBuf, FileState>,
    current: BTreeMap<ObjectKey, Object>,
}

impl ManifestState {
    /// Re-reads changed files of `dirs` and returns the events that turn the previous state into the new one.
    pub fn rescan(&mut self, dirs: &[PathBuf]) -> Vec<Event> {
        let mut seen = BTreeMap::new();
        for dir in dirs {
            for path in manifest_files(dir) {
                let prev = self.files.remove(&path).unwrap_or_default();
                if let Some(state) = load_file(&path, prev) {
                    seen.insert(path, state);
                }
            }
        }
        self.files = seen;
        let mut next: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        let mut owner: BTreeMap<ObjectKey, &Path> = BTreeMap::new();
        for (path, file) in &self.files {
            for (key, obj) in &file.objects {
                if let Some(first) = owner.insert(key.clone(), path) {
                    tracing::warn!(object = %key, file.first = %first.display(), file.winner = %path.display(),
                        "object defined in two files; the later file wins");
                }
                next.insert(key.clone(), obj.clone());
            }
        }
        let mut events = Vec::new();
        for key in self.current.keys() {
            if !next.contains_key(key) {
                events.push(Event::Delete(key.clone()));
            }
        }
        for (key, obj) in &next {
            if self.current.get(key) != Some(obj) {
                events.push(Event::Apply(obj.clone()));
            }
        }
        self.current = next;
        events
    }

    /// Current problems per file (for the debug endpoint).
    pub fn errors(&self) -> BTreeMap<String, Vec<String>> {
        self.files
            .iter()
            .filter(|(_, f)| !f.errors.is_empty())
            .map(|(p, f)| (p.display().to_string(), f.errors.clone()))
            .collect()
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.current.values()
    }
}

/// `*.yaml` / `*.yml` regular files directly in `dir`, sorted, hidden files excluded.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read manifest directory");
            return Vec::new();
        }
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.')
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && p.is_file()
        })
        .collect();
    out.sort();
    out
}

/// Reads one file unless its stamp is unchanged. `None` when the file vanished.
fn load_file(path: &Path, prev: FileState) -> Option<FileState> {
    let meta = std::fs::metadata(path).ok()?;
    let stamp = meta.modified().ok().map(|m| (m, meta.len()));
    if stamp.is_some() && stamp == prev.stamp {
        return Some(prev);
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read manifest; keeping its last good state");
            return Some(FileState {
                stamp,
                errors: vec![e.to_string()],
                ..prev
            });
        }
    };
    let (objects, errors) = parse_file(path, &text, &prev.objects);
    Some(FileState {
        stamp,
        objects,
        errors,
    })
}

/// Parses a multi-document YAML text. `prev` is the file's last good state, used for documents that fail.
fn parse_file(
    path: &Path,
    text: &str,
    prev: &BTreeMap<ObjectKey, Object>,
) -> (BTreeMap<ObjectKey, Object>, Vec<String>) {
    let mut values = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(de) {
            Ok(v) => values.push(v),
            Err(e) => {
                tracing::error!(file = %path.display(), doc.index = index, error = %e,
                    "manifest is not valid YAML; keeping the file's last good state");
                return (prev.clone(), vec![format!("document {index}: {e}")]);
            }
        }
    }
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let key = document_key(&value);
        match parse_document(value) {
            Ok(Document::Object(obj)) => {
                let key = obj.key();
                if objects.insert(key.clone(), obj).is_some() {
                    tracing::warn!(file = %path.display(), doc.index = index, object = %key,
                        "object appears twice in one file; the later document wins");
                }
            }
            Ok(Document::Unknown(api_version, kind)) => {
                tracing::info!(file = %path.display(), doc.index = index, api_version, kind, "ignoring unsupported kind");
            }
            Ok(Document::Empty) => {}
            Err(e) => {
                let kept = key.as_ref().and_then(|k| prev.get(k).map(|o| (k, o)));
                tracing::error!(file = %path.display(), doc.index = index, error = %e, kept.last_good = kept.is_some(),
                    "invalid manifest document");
                errors.push(format!("document {index}: {e}"));
                if let Some((k, o)) = kept {
                    objects.insert(k.clone(), o.clone());
                }
            }
        }
    }
    (objects, errors)
}

/// Watches one or more manifest directories.
pub struct ManifestSource {
    dirs: Vec<PathBuf>,
    debounce: Duration,
    poll: Duration,
    state: ManifestState,
}

impl ManifestSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        ManifestSource {
            dirs,
            debounce: Duration::from_millis(100),
            poll: Duration::from_secs(5),
            state: ManifestState::default(),
        }
    }

    /// Quiet time after a change before rescanning, and the fallback poll interval.
    pub fn with_timing(mut self, debounce: Duration, poll: Duration) -> Self {
        self.debounce = debounce;
        self.poll = poll;
        self
    }
}

#[async_trait::async_trait]
impl Source for ManifestSource {
    async fn run(
        mut self: Box<Self>,
        tx: mpsc::Sender<Event>,
        mut drain: DrainWatcher,
    ) -> Result<(), SourceError> {
        let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                // A full channel already holds a wake-up; nothing is lost.
                let _ = wake_tx.try_send(());
            }
        })
        .map_err(|source| SourceError::Watch {
            path: String::new(),
            source,
        })?;
        for dir in &self.dirs {
            if let Err(source) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                // Keep going: the poll still notices changes.
                tracing::warn!(dir = %dir.display(), error = %source, "cannot watch manifest directory; polling only");
            }
        }
        let initial = self.state.rescan(&self.dirs);
        tracing::info!(dirs = ?self.dirs, objects = self.state.current.len(), "manifests loaded");
        for ev in initial.into_iter().chain(std::iter::once(Event::InitDone)) {
            tx.send(ev).await.map_err(|_| SourceError::Closed)?;
        }
        let mut poll = tokio::time::interval(self.poll);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = drain.signaled() => return Ok(()),
                Some(()) = wake_rx.recv() => {
                    // Debounce: wait until the directory has been quiet for a moment.
                    loop {
                        tokio::select! {
                            Some(()) = wake_rx.recv() => continue,
                            _ = tokio::time::sleep(self.debounce) => break,
                        }
                    }
                }
                _ = poll.tick() => {}
            }
            let events = self.state.rescan(&self.dirs);
            if !events.is_empty() {
                tracing::info!(events = events.len(), "manifests changed");
            }
            for ev in events {
                tx.send(ev).await.map_err(|_| SourceError::Closed)?;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sources::Kind;

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\nspec: {nodeName: node1}\n---\n\
        apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";

    fn pod(name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Pod,
            namespace: "n".into(),
            name: name.into(),
        }
    }

    fn applied(events: &[Event]) -> Vec<ObjectKey> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::Apply(o) = e {
                    Some(o.key())
                } else {
                    None
                }
            })
            .collect()
    }

    /// Writes and makes sure the stamp changes even within the file system's time resolution.
    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let t = SystemTime::now() + Duration::from_secs(rand::random_range(1..1_000_000));
        f.set_modified(t).unwrap();
    }

    /// A kind the controller does not read is skipped with one INFO line naming it, where it is and its API
    /// version; the objects around it are read.
    #[test]
    fn an_unsupported_kind_is_skipped_with_an_info_line_naming_it() {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        let (objects, errors) = tracing::subscriber::with_default(subscriber, || {
            parse_file(Path::new("/m/pods.yaml"), PODS, &BTreeMap::new())
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            objects.keys().cloned().collect::<Vec<_>>(),
            [pod("a"), pod("b")]
        );
        let log = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "{log}");
        for part in [
            " INFO ",
            "ignoring unsupported kind",
            "file=/m/pods.yaml",
            "doc.index=2",
            "api_version=\"apps/v1\"",
            "kind=\"Deployment\"",
        ] {
            assert!(lines[0].contains(part), "no {part:?} in {log}");
        }
    }

    /// A `Write` into a shared buffer, for the log of one test.
    struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for LogSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn multi_document_files_become_events_and_removals_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        write(&dir.path().join("pods.yaml"), PODS);
        write(
            &dir.path().join("notes.txt"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: z}\n",
        );
        write(
            &dir.path().join(".hidden.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: y}\n",
        );
        let mut st = ManifestState::default();
        let ev = st.rescan(&dirs);
        assert_eq!(applied(&ev), vec![pod("a"), pod("b")]);
        assert!(
            st.rescan(&dirs).is_empty(),
            "an unchanged directory yields nothing"
        );

        write(
            &dir.path().join("pods.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\nspec: {nodeName: node2}\n",
        );
        let ev = st.rescan(&dirs);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0], Event::Delete(pod("a")));
        assert_eq!(applied(&ev), vec![pod("b")]);

        std::fs::remove_file(dir.path().join("pods.yaml")).unwrap();
        assert_eq!(st.rescan(&dirs), vec![Event::Delete(pod("b"))]);
    }

    #[test]
    fn syntax_error_keeps_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let file = dir.path().join("pods.yml");
        write(&file, PODS);
        let mut st = ManifestState::default();
        st.rescan(&dirs);
        write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n---\nkind: [unclosed\n",
        );
        assert!(st.rescan(&dirs).is_empty(), "a broken file changes nothing");
        let errors = st.errors();
        let msgs = errors.values().next().unwrap();
        assert!(msgs[0].starts_with("document 1"), "{msgs:?}");
        // Fixing the file applies the new content.
        write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n",
        );
        assert_eq!(st.rescan(&dirs), vec![Event::Delete(pod("b"))]);
        assert!(st.errors().is_empty());
    }

    #[test]
    fn invalid_document_keeps_that_objects_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let file = dir.path().join("pods.yaml");
        write(&file, PODS);
        let mut st = ManifestState::default();
        st.rescan(&dirs);
        // b gets a wrong field type, a changes: a is applied, b keeps its old state.
        write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\nspec: {nodeName: x}\n---\n\
            apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\nspec: {nodeName: [1]}\n",
        );
        let ev = st.rescan(&dirs);
        assert_eq!(applied(&ev), vec![pod("a")]);
        assert_eq!(ev.len(), 1);
        let b = st.objects().find(|o| o.key() == pod("b")).unwrap();
        let Object::Pod(b) = b else { panic!() };
        assert_eq!(b.spec.as_ref().unwrap().node_name.as_deref(), Some("node1"));
        assert!(st.errors().values().next().unwrap()[0].starts_with("document 1"));
    }

    #[test]
    fn empty_documents_are_skipped_and_non_mappings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        // Documents 0 and 2 are empty (a leading and a doubled `---`), 3 a scalar, 4 a list; 1 and 5 are pods.
        write(
            &dir.path().join("mixed.yaml"),
            "---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n---\n---\n\
            just a string\n---\n[1, 2]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\n---\n",
        );
        let mut st = ManifestState::default();
        let ev = st.rescan(&dirs);
        assert_eq!(applied(&ev), vec![pod("a"), pod("b")]);
        let errors = st.errors();
        let msgs = errors
            .values()
            .next()
            .expect("the non-mappings are reported");
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].starts_with("document 3"), "{msgs:?}");
        assert!(msgs[1].starts_with("document 4"), "{msgs:?}");
        // A file of nothing but separators is an empty file: no objects, no errors.
        write(&dir.path().join("mixed.yaml"), "---\n---\n");
        assert_eq!(
            st.rescan(&dirs),
            vec![Event::Delete(pod("a")), Event::Delete(pod("b"))]
        );
        assert!(st.errors().is_empty(), "{:?}", st.errors());
    }

    #[test]
    fn several_directories_merge() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        write(
            &d1.path().join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n",
        );
        write(
            &d2.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n",
        );
        let mut st = ManifestState::default();
        let ev = st.rescan(&[d1.path().to_path_buf(), d2.path().to_path_buf()]);
        assert_eq!(ev.len(), 2);
    }

    #[tokio::test]
    async fn source_sends_initial_state_then_init_done_then_changes() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("pods.yaml"), PODS);
        let (tx, mut rx) = mpsc::channel(16);
        let (trigger, watcher) = ambit_core::drain::new();
        let src = ManifestSource::new(vec![dir.path().to_path_buf()])
            .with_timing(Duration::from_millis(20), Duration::from_millis(200));
        let task = tokio::spawn(Box::new(src).run(tx, watcher));
        assert!(matches!(rx.recv().await, Some(Event::Apply(_))));
        assert!(matches!(rx.recv().await, Some(Event::Apply(_))));
        assert_eq!(rx.recv().await, Some(Event::InitDone));
        write(
            &dir.path().join("more.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n",
        );
        let ev = rx.recv().await.unwrap();
        assert!(matches!(ev, Event::Apply(Object::Namespace(_))), "{ev:?}");
        drop(rx);
        trigger.drain(Duration::from_secs(5)).await;
        let _ = task.await.unwrap();
    }
}
