//! Start-up and serving errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::files::FilesError;
use crate::manifest::ManifestError;
use crate::send::TlsSetupError;
use crate::variables::VariableError;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Variables(#[from] VariableError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Files(#[from] FilesError),
    /// Configuration that only the manifest can check (e.g. `edge.components.<id>`).
    #[error(transparent)]
    Config(#[from] storemesh_runtime::ConfigError),
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error(
        "component `{component}`: source {path} does not exist (build the edge functions first)"
    )]
    MissingSource { component: String, path: PathBuf },
    #[error("component `{component}`: cannot compile {path}: {message}")]
    Compile {
        component: String,
        path: PathBuf,
        message: String,
    },
    /// The component imports interfaces this runtime does not provide (all of them are named).
    #[error(
        "component `{component}` imports {} this runtime does not provide: {}; the edge runtime provides WASI 0.2 (cli, clocks, random, io, filesystem, http) and fermyon:spin/variables@2.0.0 only",
        if imports.len() == 1 { "an interface" } else { "interfaces" },
        imports.join(", ")
    )]
    UnsupportedImports {
        component: String,
        imports: Vec<String>,
    },
    /// Linking failed for another reason (e.g. a function signature mismatch).
    #[error("component `{component}` cannot be linked: {message}")]
    Link { component: String, message: String },
    #[error("component `{component}` is not a WASI HTTP component: {message}")]
    NotHttpComponent { component: String, message: String },
    #[error("no component `{0}` in this application")]
    UnknownComponent(String),
    #[error("component `{component}` cannot be instantiated: {message}")]
    Instantiate { component: String, message: String },
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}
