//! `ambit-cni`: the chained CNI plugin (see [`ambit_cni::plugin`]).

use std::io::{Read, Write};

fn main() {
    // Runtimes exec plugins without arguments; `--version` and `help` are for people and the image test.
    ambit_core::cmdline::handle(
        "ambit-cni",
        "a chained CNI plugin, run by the container runtime with CNI_COMMAND and the network configuration on stdin",
        &[],
    );
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => ambit_cni::plugin::run(
            |k| std::env::var(k).ok(),
            &stdin,
            ambit_cni::plugin::AGENT_TIMEOUT,
        ),
        Err(e) => ambit_cni::plugin::Outcome {
            stdout: ambit_cni::plugin::CniError::new(
                ambit_cni::plugin::code::DECODE,
                "cannot read stdin",
                e.to_string(),
            )
            .to_json("1.0.0"),
            stderr: String::new(),
            exit_code: 1,
        },
    };
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    std::process::exit(outcome.exit_code);
}
