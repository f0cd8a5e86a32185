//! `docs/ARCHITECTURE.md` stays true about the crate map: its dependency table lists every
//! crate of both cargo workspaces with exactly the Storemesh crates its manifest depends on.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Crate name → its Storemesh dependencies (normal `[dependencies]`), for every member of the
/// workspace whose root manifest is `workspace`.
fn manifests(workspace: &Path) -> BTreeMap<String, Vec<String>> {
    let root: toml::Table =
        toml::from_str(&std::fs::read_to_string(workspace.join("Cargo.toml")).unwrap()).unwrap();
    let members = root["workspace"]["members"].as_array().unwrap();
    let mut crates = BTreeMap::new();
    for member in members {
        let path = workspace.join(member.as_str().unwrap()).join("Cargo.toml");
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = manifest["package"]["name"].as_str().unwrap().to_owned();
        let mut dependencies: Vec<String> = manifest
            .get("dependencies")
            .and_then(toml::Value::as_table)
            .map(|table| {
                table
                    .keys()
                    .filter(|key| key.starts_with("storemesh-"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        dependencies.sort();
        crates.insert(name, dependencies);
    }
    crates
}

/// The table between the `crate-dependencies` markers: crate → dependencies.
fn documented() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo().join("docs/ARCHITECTURE.md")).unwrap();
    let start = text
        .find("<!-- crate-dependencies:start -->")
        .expect("the start marker");
    let end = text
        .find("<!-- crate-dependencies:end -->")
        .expect("the end marker");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    text[start..end]
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = ticked(cells[1]).remove(0);
            let mut dependencies = ticked(cells[3]);
            dependencies.sort();
            (name, dependencies)
        })
        .collect()
}

#[test]
fn the_crate_map_lists_every_crate_with_its_dependencies() {
    let mut actual = manifests(&repo());
    actual.extend(
        manifests(&repo().join("edge-functions"))
            .into_iter()
            // The runtime's test fixtures are not part of the product's map.
            .filter(|(name, _)| !name.starts_with("edge-fixture-")),
    );
    let documented = documented();
    let wrong: Vec<String> = actual
        .iter()
        .filter(|(name, dependencies)| documented.get(*name) != Some(dependencies))
        .map(|(name, dependencies)| {
            format!(
                "{name}: the manifests say {dependencies:?}, the map says {:?}",
                documented.get(name)
            )
        })
        .chain(
            documented
                .keys()
                .filter(|name| !actual.contains_key(*name))
                .map(|name| format!("{name}: in the map but no such crate")),
        )
        .collect();
    assert!(
        wrong.is_empty(),
        "docs/ARCHITECTURE.md's crate table is out of date:\n{}",
        wrong.join("\n")
    );
}
