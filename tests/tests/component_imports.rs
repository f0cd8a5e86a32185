//! The built edge functions import only what every Spin host provides: WASI 0.2 (the
//! interfaces the embedded runtime and Spin both give: cli, clocks, random, io, http) and
//! `fermyon:spin/variables@2.0.0`. Read from the component binaries themselves.
#![allow(clippy::unwrap_used)]

use wasmparser::{Parser, Payload};

/// Interfaces (without version) a component may import, and the version rule.
const WASI_0_2: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
];
const SPIN_VARIABLES: &str = "fermyon:spin/variables@2.0.0";

/// The top-level imports of a component binary.
fn component_imports(bytes: &[u8]) -> Vec<String> {
    let mut imports = Vec::new();
    let mut depth = 0_usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    imports.push(import.unwrap().name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    imports
}

/// The imports that are neither WASI 0.2 nor Spin variables.
fn disallowed(imports: &[String]) -> Vec<String> {
    imports
        .iter()
        .filter(|name| {
            if name.as_str() == SPIN_VARIABLES {
                return false;
            }
            let Some((interface, version)) = name.split_once('@') else {
                return true;
            };
            !(WASI_0_2.contains(&interface) && version.starts_with("0.2."))
        })
        .cloned()
        .collect()
}

fn built(crate_name: &str) -> Vec<u8> {
    let path = storemesh_edge::testing::fixture(crate_name).unwrap_or_else(|message| {
        panic!(
            "{message}\n(the edge functions: {})",
            storemesh_system_tests::EDGE_BUILD_COMMAND
        )
    });
    std::fs::read(&path).unwrap()
}

#[test]
fn edge_functions_import_only_wasi_0_2_and_spin_variables() {
    for name in ["upload-hook", "thumbnail", "images"] {
        let imports = component_imports(&built(name));
        assert!(
            imports
                .iter()
                .any(|import| import.starts_with("wasi:http/outgoing-handler@0.2.")),
            "{name} should call the mesh over wasi:http: {imports:?}"
        );
        let bad = disallowed(&imports);
        assert!(
            bad.is_empty(),
            "{name} imports {bad:?} (all imports: {imports:?})"
        );
    }
}

#[test]
fn the_check_catches_a_component_with_another_import() {
    // The runtime's fixture that imports an interface no Spin host gives.
    let imports = component_imports(&built("edge-fixture-bad-import"));
    assert!(!disallowed(&imports).is_empty(), "{imports:?}");
    // And the names it checks are the real ones (a sanity check on the parsing).
    let hello = component_imports(&built("edge-fixture-hello"));
    assert!(
        hello
            .iter()
            .any(|import| import.starts_with("wasi:io/streams@0.2.")),
        "{hello:?}"
    );
}
