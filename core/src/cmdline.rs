//! The command line of the binaries configured from the environment (ztunnel, waypoint): like upstream ztunnel they
//! take no flags, only `version` / `--version` and `help` / `--help`, plus the run forms a binary accepts for
//! compatibility (upstream's charts start ztunnel as `ztunnel proxy ztunnel`). Anything else is refused with a
//! message, rather than ignored, so a typo in a pod spec's `args` is seen at start.

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmdline {
    /// No arguments: run.
    Run,
    /// Print this and exit 0 (`version`, `--version`, `-V`, `help`, `--help`, `-h`).
    Print(String),
    /// Exit non-zero with this message.
    Refuse(String),
}

/// Reads `args` (without the program name) for the binary `name`; `about` says how it is configured and `run_forms`
/// lists argument lists that also mean "run".
pub fn parse<I: IntoIterator<Item = String>>(
    name: &str,
    about: &str,
    run_forms: &[&[&str]],
    args: I,
) -> Cmdline {
    let args: Vec<String> = args.into_iter().collect();
    if run_forms.iter().any(|form| form.iter().eq(args.iter())) {
        return Cmdline::Run;
    }
    match args.as_slice() {
        [] => Cmdline::Run,
        [one] if matches!(one.as_str(), "version" | "--version" | "-V") => {
            Cmdline::Print(format!("{name} {}", env!("CARGO_PKG_VERSION")))
        }
        [one] if matches!(one.as_str(), "help" | "--help" | "-h") => Cmdline::Print(format!(
            "{name} {}\n{about}\n\nusage: {name} [version|help]",
            env!("CARGO_PKG_VERSION")
        )),
        _ => Cmdline::Refuse(format!(
            "{name} takes no arguments (got {:?}): {about}; `{name} help` says more",
            args
        )),
    }
}

/// [`parse`] on the process's arguments; prints and exits for anything but [`Cmdline::Run`].
pub fn handle(name: &str, about: &str, run_forms: &[&[&str]]) {
    match parse(name, about, run_forms, std::env::args().skip(1)) {
        Cmdline::Run => {}
        Cmdline::Print(text) => {
            println!("{text}");
            std::process::exit(0);
        }
        Cmdline::Refuse(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Cmdline {
        parse(
            "ztunnel",
            "configured from the environment",
            &[&["proxy", "ztunnel"]],
            args.iter().map(|a| a.to_string()),
        )
    }

    #[test]
    fn version_help_and_refusal() {
        assert_eq!(p(&[]), Cmdline::Run);
        assert_eq!(p(&["proxy", "ztunnel"]), Cmdline::Run);
        for v in ["version", "--version", "-V"] {
            assert_eq!(
                p(&[v]),
                Cmdline::Print(format!("ztunnel {}", env!("CARGO_PKG_VERSION")))
            );
        }
        match p(&["--help"]) {
            Cmdline::Print(t) => assert!(
                t.contains("usage: ztunnel") && t.contains("environment"),
                "{t}"
            ),
            other => panic!("{other:?}"),
        }
        match p(&["proxy", "waypoint"]) {
            Cmdline::Refuse(m) => assert!(
                m.contains("takes no arguments") && m.contains("proxy"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(p(&["--version", "x"]), Cmdline::Refuse(_)));
    }
}
