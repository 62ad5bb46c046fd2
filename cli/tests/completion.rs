//! `ambit completion <shell>`: the scripts load in a real bash and complete subcommands and flags; every shell's
//! script names the subcommands; a closed pipe is not a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

fn script(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["completion", shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash's completion function offers for the words of `line` (the last one being completed).
fn bash_complete(line: &[&str]) -> Vec<String> {
    let words = line
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let program = format!(
        "source <(\"$AMBIT\" completion bash) && COMP_WORDS=({words}) && COMP_CWORD={} && \
         COMP_LINE=\"${{COMP_WORDS[*]}}\" && COMP_POINT=${{#COMP_LINE}} && _ambit ambit \"${{COMP_WORDS[-1]}}\" \
         \"${{COMP_WORDS[-2]}}\" && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        line.len() - 1
    );
    let out = Command::new("bash")
        .args(["-c", &program])
        .env("AMBIT", env!("CARGO_BIN_EXE_ambit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let subs = bash_complete(&["ambit", "way"]);
    assert_eq!(subs, ["waypoint"], "{subs:?}");
    let all = bash_complete(&["ambit", ""]);
    for s in [
        "local",
        "authz",
        "ztunnel-config",
        "waypoint",
        "analyze",
        "proxy-status",
        "dashboard",
        "precheck",
        "completion",
    ] {
        assert!(all.iter().any(|w| w == s), "{s} missing from {all:?}");
    }
    let flags = bash_complete(&["ambit", "waypoint", "apply", "--enr"]);
    assert_eq!(flags, ["--enroll-namespace"], "{flags:?}");
}

#[test]
fn every_shell_names_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let text = script(shell);
        for s in ["waypoint", "analyze", "ztunnel-config", "proxy-status"] {
            assert!(text.contains(s), "{shell} script lacks {s}");
        }
    }
}

#[test]
fn a_closed_pipe_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["completion", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
