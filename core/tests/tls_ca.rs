//! CSR → LocalCa → WorkloadCert round trips, and the CA directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::signer::{CsrSigner, SignError};
use ambit_core::tls::{self, TlsError, WorkloadCert};

#[tokio::test]
async fn csr_round_trip_through_the_signer_trait() {
    let ca: Arc<dyn CsrSigner> = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let identity = Identity::new("cluster.local", "ns1", "sa1");
    let (key, csr) = tls::generate_csr(&identity).unwrap();
    let chain = ca
        .sign(&csr, &identity, Duration::from_secs(7200))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf + root");
    for pem in &chain {
        assert_eq!(
            pem.matches("BEGIN CERTIFICATE").count(),
            1,
            "one certificate per string"
        );
    }
    let cert = WorkloadCert::from_istio_chain(&chain, &key).unwrap();
    assert_eq!(cert.identity(), &identity);
    assert_eq!(cert.chain_pem().len(), 1);
    assert_eq!(cert.roots_pem(), vec![chain[1].clone()]);
    assert!(!cert.is_expired());
    let now = SystemTime::now();
    assert!(cert.not_before() < now && cert.not_after() > now + Duration::from_secs(7000));
    assert_eq!(cert.serial_hex().len() % 2, 0);
    assert!(cert.serial_hex().len() >= 16);

    // A signer refuses identities outside its trust domain.
    let foreign = Identity::new("other.local", "ns1", "sa1");
    let (_, csr) = tls::generate_csr(&foreign).unwrap();
    assert!(matches!(
        ca.sign(&csr, &foreign, Duration::from_secs(60)).await,
        Err(SignError::Invalid(_))
    ));
}

#[test]
fn key_must_match_leaf() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let identity = Identity::new("cluster.local", "ns1", "sa1");
    let (_, csr) = tls::generate_csr(&identity).unwrap();
    let (other_key, _) = tls::generate_csr(&identity).unwrap();
    let chain = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        WorkloadCert::from_istio_chain(&chain, &other_key),
        Err(TlsError::InvalidKey(_))
    ));
}

#[test]
fn root_bundle_may_hold_several_roots() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let other = LocalCa::generate("cluster.local").unwrap();
    let identity = Identity::new("cluster.local", "ns1", "sa1");
    let (key, csr) = tls::generate_csr(&identity).unwrap();
    let mut chain = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    let bundle = format!("{}{}", chain[1], other.root_pem());
    chain[1] = bundle;
    let cert = WorkloadCert::from_istio_chain(&chain, &key).unwrap();
    assert_eq!(cert.roots_pem(), vec![ca.root_pem(), other.root_pem()]);
}

#[test]
fn leaf_without_spiffe_san_is_refused() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let (chain, key) = ca
        .issue_server_cert(&["x.example".to_owned()], &[], Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        WorkloadCert::from_istio_chain(&chain, &key),
        Err(TlsError::NoSpiffeIdentity)
    ));
}

#[test]
fn load_or_create_twice_gives_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let first = LocalCa::load_or_create(&dir, "cluster.local").unwrap();
    for name in [
        "root-cert.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
    ] {
        assert!(dir.join(name).is_file(), "{name}");
    }
    let second = LocalCa::load_or_create(&dir, "cluster.local").unwrap();
    assert_eq!(first.root_pem(), second.root_pem());
    // A leaf from the reloaded CA chains to the first one's root.
    let identity = Identity::new("cluster.local", "a", "b");
    let cert = second
        .issue_workload(&identity, Duration::from_secs(60))
        .unwrap();
    assert_eq!(cert.roots_pem(), vec![first.root_pem()]);
}

#[test]
fn an_existing_empty_dir_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(tmp.path(), "cluster.local").unwrap();
    let second = LocalCa::load_or_create(tmp.path(), "cluster.local").unwrap();
    assert_eq!(first.root_pem(), second.root_pem());
}

#[test]
fn a_non_empty_dir_without_a_ca_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("unrelated"), "x").unwrap();
    assert!(LocalCa::load_or_create(tmp.path(), "cluster.local").is_err());
}

#[test]
fn concurrent_creators_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let roots: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    LocalCa::load_or_create(&dir, "cluster.local")
                        .unwrap()
                        .root_pem()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(roots.iter().all(|r| r == &roots[0]));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary directories are cleaned up: {leftovers:?}"
    );
}

#[tokio::test]
async fn plugged_in_intermediate_ca_is_used_in_chains() {
    // root -> intermediate (the signing CA), laid out like Istio's plug-in CA directory.
    let root_dir = tempfile::tempdir().unwrap();
    let root = LocalCa::load_or_create(root_dir.path(), "cluster.local").unwrap();
    let (inter_cert, inter_key) = intermediate(root_dir.path());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("root-cert.pem"), root.root_pem()).unwrap();
    std::fs::write(tmp.path().join("ca-cert.pem"), &inter_cert).unwrap();
    std::fs::write(tmp.path().join("ca-key.pem"), &inter_key).unwrap();
    std::fs::write(
        tmp.path().join("cert-chain.pem"),
        format!("{inter_cert}{}", root.root_pem()),
    )
    .unwrap();
    let ca = LocalCa::load_or_create(tmp.path(), "cluster.local").unwrap();
    let identity = Identity::new("cluster.local", "a", "b");
    let (key, csr) = tls::generate_csr(&identity).unwrap();
    let chain = ca
        .sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1], inter_cert);
    assert_eq!(chain[2], root.root_pem());
    let cert = WorkloadCert::from_istio_chain(&chain, &key).unwrap();
    assert_eq!(cert.chain_pem().len(), 2);
    // Handshake with a workload whose leaf the root signs directly: the intermediate is sent and verified.
    let peer_id = Identity::new("cluster.local", "a", "peer");
    let peer = Arc::new(
        root.issue_workload(&peer_id, Duration::from_secs(60))
            .unwrap(),
    );
    let cert = Arc::new(cert);
    for backend in tls::TlsBackend::all() {
        let acceptor = tls::TlsAcceptor::new(cert.clone(), *backend).unwrap();
        let connector = tls::TlsConnector::new(peer.clone(), *backend).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let expected = identity.clone();
        let (s, c) = tokio::join!(
            acceptor.accept(a),
            connector.connect(b, std::slice::from_ref(&expected))
        );
        assert_eq!(
            s.unwrap().peer_identity(),
            Some(peer_id.clone()),
            "{backend}"
        );
        assert_eq!(
            c.unwrap().peer_identity(),
            Some(identity.clone()),
            "{backend}"
        );
    }
}

/// An intermediate CA signed by the root stored in `root_dir`, as (cert PEM, key PEM).
fn intermediate(root_dir: &std::path::Path) -> (String, String) {
    let root_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(root_dir.join("ca-key.pem")).unwrap())
            .unwrap();
    let root_cert = std::fs::read_to_string(root_dir.join("ca-cert.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root_cert, root_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

// ----- a plug-in CA directory with broken files -----

const CA_FILES: [&str; 4] = [
    "root-cert.pem",
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
];

/// A plug-in CA directory (root → intermediate, the intermediate signing) in a directory of its own, and the
/// files' text by name.
fn plugged_in_dir() -> (tempfile::TempDir, Vec<(&'static str, String)>) {
    let root_dir = tempfile::tempdir().unwrap();
    let root = LocalCa::load_or_create(root_dir.path(), "cluster.local").unwrap();
    let (inter_cert, inter_key) = intermediate(root_dir.path());
    let files = vec![
        ("root-cert.pem", root.root_pem()),
        ("ca-cert.pem", inter_cert.clone()),
        ("ca-key.pem", inter_key),
        ("cert-chain.pem", format!("{inter_cert}{}", root.root_pem())),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    // It loads as it is.
    LocalCa::load_or_create(dir.path(), "cluster.local").unwrap();
    (dir, files)
}

/// The directory's entries, with each file's bytes (a symlink or directory as what it is).
fn snapshot(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!(
                    "symlink to {}",
                    std::fs::read_link(&path).unwrap().display()
                )
            } else if meta.is_dir() {
                "directory".to_owned()
            } else {
                std::fs::read_to_string(&path).unwrap()
            };
            (e.file_name().to_string_lossy().into_owned(), what)
        })
        .collect();
    out.sort();
    out
}

/// `LocalCa::load_or_create` on `dir` fails (no panic) with a message naming `file` and the directory, and leaves
/// the directory as it was: no new root generated in place of a broken one.
fn assert_refused(dir: &std::path::Path, file: &str, case: &str, wanted: &str) -> String {
    let before = snapshot(dir);
    let result = std::panic::catch_unwind(|| LocalCa::load_or_create(dir, "cluster.local"));
    let err = match result {
        Err(_) => panic!("{file}, {case}: load_or_create panicked"),
        Ok(Ok(ca)) => panic!("{file}, {case}: loaded, root {}", ca.root_pem()),
        Ok(Err(e)) => e.to_string(),
    };
    assert!(
        err.contains(file),
        "{file}, {case}: does not name it: {err}"
    );
    assert!(
        err.contains(&dir.display().to_string()),
        "{file}, {case}: does not name the directory: {err}"
    );
    assert!(
        err.contains(wanted),
        "{file}, {case}: no {wanted:?} in: {err}"
    );
    assert!(!err.contains('\n'), "{file}, {case}: not one line: {err}");
    assert_eq!(
        snapshot(dir),
        before,
        "{file}, {case}: the directory changed"
    );
    err
}

/// Half of a PEM: its BEGIN line and the first half of its body, no END line.
fn truncated(pem: &str) -> String {
    pem[..pem.len() / 2].to_owned()
}

/// A PEM whose base64 body still decodes but to other bytes: characters in the middle of the body replaced.
fn corrupt(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    let mid = lines.len() / 2;
    let line = &lines[mid];
    lines[mid] = "A".repeat(line.len());
    lines.join("\n") + "\n"
}

#[test]
fn unreadable_ca_files_are_start_errors_naming_the_file() {
    // Root is not stopped by permission bits, so "unreadable" is made as a directory where the file should be,
    // or a symlink to nothing.
    for file in CA_FILES {
        let (dir, _) = plugged_in_dir();
        let path = dir.path().join(file);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_refused(dir.path(), file, "a directory", "Is a directory");

        std::fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere.pem"), &path).unwrap();
        assert_refused(dir.path(), file, "a dangling symlink", "nowhere.pem");
    }
}

#[test]
fn truncated_or_corrupt_ca_files_are_start_errors_naming_the_file() {
    for file in CA_FILES {
        let (dir, files) = plugged_in_dir();
        let good = files.iter().find(|(n, _)| *n == file).unwrap().1.clone();
        let path = dir.path().join(file);
        let key = file == "ca-key.pem";
        // What the message says past the file's name: a key file's PEM or key error, a certificate file's.
        let says = |cert: &'static str| if key { "ca-key.pem: " } else { cert };
        // The right kind of PEM in the wrong file: a certificate where the key should be, and the other way.
        let swapped = if key {
            files[1].1.clone()
        } else {
            files[2].1.clone()
        };
        for (case, text, wanted) in [
            ("empty", String::new(), says("holds no certificate")),
            (
                "not PEM",
                "this is not a PEM file\n".to_owned(),
                says("holds no certificate"),
            ),
            (
                "truncated",
                truncated(&good),
                says("missing section end marker"),
            ),
            // The body decodes to bytes that are no certificate (or key): found by parsing, not by the PEM.
            ("corrupt base64 body", corrupt(&good), says("")),
            (
                "the wrong kind of PEM",
                swapped,
                says("holds no certificate"),
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            assert_refused(dir.path(), file, case, wanted);
        }
    }
}

#[test]
fn a_key_that_does_not_match_the_signing_cert_is_refused() {
    let (dir, _) = plugged_in_dir();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), other.serialize_pem()).unwrap();
    assert_refused(
        dir.path(),
        "ca-key.pem",
        "another key",
        "does not match ca-cert.pem",
    );
    // A key of another algorithm: the same.
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), ed25519.serialize_pem()).unwrap();
    assert_refused(
        dir.path(),
        "ca-key.pem",
        "a key of another algorithm",
        "does not match ca-cert.pem",
    );
}
