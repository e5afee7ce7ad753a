//! Running WASI preview 1 programs in wasmtime: one engine per process, compiled modules
//! cached in memory and on disk by content id, a deny-by-default WASI context per run, and
//! every way a run can end turned into a value (an exit code or a structured failure).
//!
//! Time limits and cancellation ride on epoch interruption: a ticker thread bumps the epoch
//! every [`EPOCH_TICK`], and each store yields to the async executor at every tick, so the
//! `select!` in [`Runtime::run`] sees a cancellation or a deadline within one tick even in
//! a guest that never calls the host.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::proto::{Failure, FailureKind};
use tokio_util::sync::CancellationToken;
use wasmtime::{Engine, InstancePre, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use tracing::Instrument as _;

use crate::capture::Capture;
use crate::error::{Error, Result};

/// How often the epoch advances: the granularity of timeouts and cancellation.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Compiled modules kept in memory.
const MEMORY_CACHE_ENTRIES: usize = 64;
/// Most table elements a guest may grow to.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// What a guest's store holds: its WASI context and its limits.
pub struct Guest {
    wasi: WasiP1Ctx,
    limits: GuestLimits,
}

/// Memory and table limits of one guest; remembers whether the memory limit was hit, so a
/// failed growth is reported as MEMORY_LIMIT rather than as whatever trap follows.
struct GuestLimits {
    max_memory: usize,
    memory_limit_hit: bool,
}

/// Raised when a guest asks for more memory than its limit.
#[derive(Debug, thiserror::Error)]
#[error("the program tried to grow its memory to {desired} bytes, past its limit of {limit} bytes")]
struct MemoryLimitExceeded {
    desired: usize,
    limit: usize,
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.max_memory,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A directory the guest sees.
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// Everything one run needs.
pub struct RunRequest {
    pub entrypoint: String,
    /// The arguments, `argv[0]` included.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub memory_limit: u64,
    pub timeout: Duration,
    pub cancel: CancellationToken,
    pub stdout: Capture,
    pub stderr: Capture,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The program returned (0) or called `proc_exit(n)`.
    Exited(i32),
    /// It did not run to its end.
    Failed(Failure),
}

/// How guest instances get their memory, tables and stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// mmap and munmap per instance: no up-front reservation (tests, tools).
    OnDemand,
    /// Slots reserved once and reused, with copy-on-write memory images: instantiation
    /// costs microseconds instead of a round of mmap/mprotect/munmap calls. Room for
    /// `instances` live guests at a time (the executor's slots, plus a margin for runs
    /// that are ending).
    Pooling { instances: u32 },
}

/// A digest of the engine's compatibility hash, fed through SHA-256 so that it is the
/// same in every process and build of the same wasmtime and settings (std's hashers are
/// not promised to be).
fn fingerprint(engine: &Engine) -> String {
    use sha2::Digest as _;
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0 // only the digest is read
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The pool's shape. Each memory slot reserves the wasm32 address space (4 GiB plus
/// guards) of virtual memory, not RAM; guests keep their per-job limit through
/// [`GuestLimits`]. Per-module counts are generous so that multi-memory or multi-table
/// modules still instantiate.
fn pooling_config(instances: u32) -> wasmtime::PoolingAllocationConfig {
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_core_instances(instances)
        .total_stacks(instances)
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(2))
        .max_memories_per_module(2)
        .max_tables_per_module(4)
        .table_elements(MAX_TABLE_ELEMENTS)
        // Below this, resetting a memory for reuse is a memset rather than an madvise:
        // cheaper for the small guests that dominate job counts.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 16);
    pool
}

/// A module compiled and linked against WASI, ready to instantiate.
pub type Program = InstancePre<Guest>;

/// A program from [`Runtime::get_or_compile`].
pub struct Compiled {
    pub program: Program,
    /// The module's size if it was compiled now; None if it came from the cache.
    pub compiled_bytes: Option<u64>,
    /// When compiled now: the native code as `Module::serialize` made it here (what a pool
    /// of executors shares), if it could be serialized.
    pub serialized: Option<Vec<u8>>,
}

/// The executor's wasmtime engine, linker and module cache.
pub struct Runtime {
    engine: Engine,
    /// What a compiled module must have been compiled for to load here (see
    /// [`Runtime::engine_fingerprint`]).
    fingerprint: String,
    linker: Linker<Guest>,
    cache_dir: PathBuf,
    /// Compiled programs by content id, with insertion order for eviction.
    programs: Mutex<(HashMap<String, Program>, VecDeque<String>)>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Sets up the engine (async, epoch interruption, no threads) and starts the epoch
    /// ticker; compiled modules are cached under `cache_dir`.
    pub fn new(cache_dir: &Path, allocation: Allocation) -> Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        // wasmtime is built without its `threads` feature, so shared memories and atomics
        // wait/notify are rejected at compile time: guests are single-threaded.
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if let Allocation::Pooling { instances } = allocation {
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
                pooling_config(instances),
            ));
        }
        let engine = Engine::new(&config).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |guest: &mut Guest| &mut guest.wasi)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| Error::io(format!("creating {}", cache_dir.display()), e))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("shoal-epoch-ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| Error::io("starting the epoch ticker", e))?;
        let fingerprint = fingerprint(&engine);
        Ok(Arc::new(Runtime {
            engine,
            fingerprint,
            linker,
            cache_dir: cache_dir.to_owned(),
            programs: Mutex::new((HashMap::new(), VecDeque::new())),
            ticker_stop,
        }))
    }

    /// The program `key` (a content id): from the cache in memory or on disk, or else
    /// compiled from the bytes `fetch` returns, then cached. Says which it was.
    pub async fn get_or_compile<F, Fut>(
        self: &Arc<Self>,
        key: &str,
        fetch: F,
    ) -> Result<Compiled, Failure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, Failure>>,
    {
        if let Some(program) = self.cached(key) {
            return Ok(Compiled {
                program,
                compiled_bytes: None,
                serialized: None,
            });
        }
        let bytes = fetch().await?;
        let size = bytes.len() as u64;
        let span = tracing::info_span!("compile", module_bytes = size);
        let (program, serialized) = self.compile(key, bytes).instrument(span).await?;
        Ok(Compiled {
            program,
            compiled_bytes: Some(size),
            serialized,
        })
    }

    /// What a module compiled elsewhere must match to load into this engine: a digest of
    /// wasmtime's compatibility hash (its version, compiler settings and target features),
    /// the same on every executor of the same build and settings. Hex, 32 characters.
    pub fn engine_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Loads `serialized`, a module compiled for `key` by another executor, and caches it
    /// here like one compiled here.
    ///
    /// # Safety
    ///
    /// `serialized` is native code that runs as this process: the caller must know it was
    /// produced by `Module::serialize` of a trusted executor (wasmtime checks that it was
    /// compiled for this engine, not what it does).
    #[allow(unsafe_code)]
    pub unsafe fn load_compiled(&self, key: &str, serialized: &[u8]) -> Result<Program, String> {
        // SAFETY: the caller vouches for the bytes (see above).
        let module = unsafe { Module::deserialize(&self.engine, serialized) }
            .map_err(|e| format!("it does not load: {}", error_chain(&e)))?;
        let program = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| format!("it does not link: {}", error_chain(&e)))?;
        self.store_on_disk(key, serialized);
        self.remember(key, program.clone());
        Ok(program)
    }

    /// The compiled program for `cid` if it is cached in memory or on disk.
    pub fn cached(&self, cid: &str) -> Option<Program> {
        if let Some(program) = self.lock_programs().0.get(cid) {
            return Some(program.clone());
        }
        let path = self.cache_path(cid);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `Module::serialize` into the cache directory the
        // operator gave this executor (its own, or one shared only with executors of the
        // same trust, `--module-cache`), and wasmtime checks that it matches this engine's
        // configuration (the engine hash is also part of the file name).
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize_file(&self.engine, &path) };
        match module.map(|m| self.linker.instantiate_pre(&m)) {
            Ok(Ok(program)) => {
                self.remember(cid, program.clone());
                Some(program)
            }
            _ => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Compiles and links `bytes` (the program `cid`), caching the result. An invalid
    /// module or a link error is a structured failure.
    async fn compile(
        self: &Arc<Self>,
        cid: &str,
        bytes: Vec<u8>,
    ) -> Result<(Program, Option<Vec<u8>>), Failure> {
        let this = self.clone();
        let cid = cid.to_owned();
        // The caller's span (compile, within the execution's) goes along to the thread.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| this.compile_blocking(&cid, &bytes)))
            .await
            .map_err(|e| {
                Failure::new(
                    FailureKind::Internal,
                    format!("compilation task failed: {e}"),
                )
            })?
    }

    fn compile_blocking(
        &self,
        cid: &str,
        bytes: &[u8],
    ) -> Result<(Program, Option<Vec<u8>>), Failure> {
        let module = Module::new(&self.engine, bytes).map_err(|e| {
            Failure::new(
                FailureKind::InvalidModule,
                format!(
                    "the program is not a valid WebAssembly module: {}",
                    error_chain(&e)
                ),
            )
        })?;
        let program = self.linker.instantiate_pre(&module).map_err(|e| {
            Failure::new(
                FailureKind::LinkError,
                format!("the program cannot be linked: {}", error_chain(&e)),
            )
        })?;
        let serialized = module
            .serialize()
            .inspect_err(
                |error| tracing::warn!(cid, %error, "cannot serialise the compiled module"),
            )
            .ok();
        if let Some(serialized) = &serialized {
            self.store_on_disk(cid, serialized);
        }
        self.remember(cid, program.clone());
        Ok((program, serialized))
    }

    /// Writes a serialized module to the disk cache (best effort: a failure costs a
    /// compile later, nothing else).
    fn store_on_disk(&self, cid: &str, serialized: &[u8]) {
        let path = self.cache_path(cid);
        // Named apart from every other writer: executors may share the directory.
        let temp = path.with_extension(format!("{}.tmp", uuid::Uuid::now_v7().simple()));
        if std::fs::write(&temp, serialized)
            .and_then(|()| std::fs::rename(&temp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&temp);
            tracing::warn!(cid, "cannot write the compiled module to the disk cache");
        }
    }

    fn lock_programs(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashMap<String, Program>, VecDeque<String>)> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, cid: &str, program: Program) {
        let mut guard = self.lock_programs();
        let (programs, order) = &mut *guard;
        if programs.insert(cid.to_owned(), program).is_none() {
            order.push_back(cid.to_owned());
        }
        while order.len() > MEMORY_CACHE_ENTRIES {
            if let Some(oldest) = order.pop_front() {
                programs.remove(&oldest);
            }
        }
    }

    fn cache_path(&self, cid: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.cache_dir
            .join(format!("{cid}-{:016x}.cwasm", hasher.finish()))
    }

    /// Runs `program` to its end, a failure, its timeout or its cancellation.
    pub async fn run(&self, program: &Program, request: RunRequest) -> RunOutcome {
        match self.run_inner(program, request).await {
            Ok(outcome) => outcome,
            Err(failure) => RunOutcome::Failed(failure),
        }
    }

    async fn run_inner(
        &self,
        program: &Program,
        request: RunRequest,
    ) -> Result<RunOutcome, Failure> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(&request.argv)
            .envs(&request.env)
            .stdout(request.stdout.clone())
            .stderr(request.stderr.clone());
        for preopen in &request.preopens {
            let perms = if preopen.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&preopen.host, &preopen.guest, perms)
                .map_err(|e| {
                    Failure::new(
                        FailureKind::Internal,
                        format!("cannot mount {}: {}", preopen.guest, error_chain(&e)),
                    )
                })?;
        }
        let guest = Guest {
            wasi: builder.build_p1(),
            limits: GuestLimits {
                max_memory: usize::try_from(request.memory_limit).unwrap_or(usize::MAX),
                memory_limit_hit: false,
            },
        };
        let mut store = Store::new(&self.engine, guest);
        store.limiter(|guest| &mut guest.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let entrypoint = request.entrypoint.clone();
        let call = async {
            let instance = program.instantiate_async(&mut store).await?;
            if entrypoint != "_start"
                && let Some(init) = instance.get_func(&mut store, "_initialize")
            {
                // A reactor module must be initialised before any other export is called.
                init.typed::<(), ()>(&store)?
                    .call_async(&mut store, ())
                    .await?;
            }
            let Some(func) = instance.get_func(&mut store, &entrypoint) else {
                return Err(wasmtime::Error::new(EntryPointError(format!(
                    "the module exports no function named `{entrypoint}`"
                ))));
            };
            let typed = func.typed::<(), ()>(&store).map_err(|e| {
                wasmtime::Error::new(EntryPointError(format!(
                    "the entry point `{entrypoint}` must take no parameters and return nothing: {e}"
                )))
            })?;
            typed.call_async(&mut store, ()).await
        };
        let result = tokio::select! {
            result = call => result,
            _ = request.cancel.cancelled() => {
                return Ok(RunOutcome::Failed(Failure::new(FailureKind::Cancelled, "cancelled while running")));
            }
            _ = tokio::time::sleep(request.timeout) => {
                return Ok(RunOutcome::Failed(Failure::new(
                    FailureKind::Timeout,
                    format!("the program ran longer than its timeout of {}", shoal::spec::units::format_duration(request.timeout)),
                )));
            }
        };
        let memory_limit_hit = store.data().limits.memory_limit_hit;
        Ok(match result {
            Ok(()) => RunOutcome::Exited(0),
            Err(error) => classify(&error, memory_limit_hit),
        })
    }
}

/// A missing or mistyped entry point: a link error, never a success.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct EntryPointError(String);

fn classify(error: &wasmtime::Error, memory_limit_hit: bool) -> RunOutcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return RunOutcome::Exited(exit.0);
    }
    let message = error_chain(error);
    let kind = if memory_limit_hit || error.downcast_ref::<MemoryLimitExceeded>().is_some() {
        FailureKind::MemoryLimit
    } else if error.downcast_ref::<EntryPointError>().is_some() {
        FailureKind::LinkError
    } else if error.downcast_ref::<Trap>().is_some() {
        FailureKind::Trap
    } else {
        // Errors raised by WASI host calls also abort the guest; report them as traps with
        // their message, since the program cannot continue.
        FailureKind::Trap
    };
    RunOutcome::Failed(Failure::new(kind, message))
}

/// An error with its causes, on one line. Multi-line parts (wasm backtraces) are left to
/// the executor's log: a failure message is for people scanning a job listing.
fn error_chain(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.contains('\n') {
            tracing::debug!(detail = %text, "guest error detail");
            continue;
        }
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        return error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    //! Every way a guest can end, driven by the `.wat` fixtures the end-to-end tests also
    //! use, against the runtime alone: the failure kind and what its message names.

    use super::*;

    /// A fixture from `tests/fixtures`, compiled to WebAssembly.
    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(format!("{name}.wat"));
        wat::parse_file(&path).expect("the fixture compiles")
    }

    /// Compiles `bytes` and runs them with the request `configure` shapes; the compile's
    /// failure, or how the run ended.
    async fn run(
        bytes: Vec<u8>,
        configure: impl FnOnce(&mut RunRequest),
    ) -> Result<RunOutcome, Failure> {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime =
            Runtime::new(&dir.path().join("modules"), Allocation::OnDemand).expect("a runtime");
        let compiled = runtime
            .get_or_compile("fixture", || async { Ok(bytes) })
            .await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut request = RunRequest {
            entrypoint: "_start".into(),
            argv: vec!["program".into()],
            env: Vec::new(),
            preopens: Vec::new(),
            memory_limit: 64 << 20,
            timeout: Duration::from_secs(60),
            cancel: CancellationToken::new(),
            stdout: Capture::new(&dir.path().join("stdout"), 1 << 20, wake.clone()),
            stderr: Capture::new(&dir.path().join("stderr"), 1 << 20, wake),
        };
        configure(&mut request);
        Ok(runtime.run(&compiled.program, request).await)
    }

    /// Asserts a failure of `kind` whose message contains `detail`.
    fn assert_failed(outcome: Result<RunOutcome, Failure>, kind: FailureKind, detail: &str) {
        let failure = match outcome {
            Err(failure) | Ok(RunOutcome::Failed(failure)) => failure,
            Ok(other) => panic!("expected {kind:?}, the guest ended with {other:?}"),
        };
        assert_eq!(failure.kind(), kind, "{}", failure.message);
        assert!(
            failure.message.contains(detail),
            "{detail:?} not in {:?}",
            failure.message
        );
    }

    #[tokio::test]
    async fn exit_codes_are_the_guests() {
        let exits = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 7))))"#;
        let exits = wat::parse_str(exits).expect("wat");
        assert_eq!(run(exits, |_| {}).await, Ok(RunOutcome::Exited(7)));
        let returns =
            wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
                .expect("wat");
        assert_eq!(run(returns, |_| {}).await, Ok(RunOutcome::Exited(0)));
    }

    #[tokio::test]
    async fn traps_are_trap() {
        assert_failed(
            run(fixture("trap"), |_| {}).await,
            FailureKind::Trap,
            "unreachable",
        );
        assert_failed(
            run(fixture("recurse"), |_| {}).await,
            FailureKind::Trap,
            "stack",
        );
    }

    #[tokio::test]
    async fn modules_that_cannot_start_are_link_or_module_errors() {
        assert_failed(
            run(fixture("noentry"), |_| {}).await,
            FailureKind::LinkError,
            "_start",
        );
        assert_failed(
            run(fixture("noentry"), |r| r.entrypoint = "nope".into()).await,
            FailureKind::LinkError,
            "nope",
        );
        assert_failed(
            run(fixture("badimport"), |_| {}).await,
            FailureKind::LinkError,
            "launch_missiles",
        );
        assert_failed(
            run(b"this is not webassembly".to_vec(), |_| {}).await,
            FailureKind::InvalidModule,
            "not a valid",
        );
        // Shared memories need threads, which guests do not get.
        assert_failed(
            run(fixture("threads"), |_| {}).await,
            FailureKind::InvalidModule,
            "shared",
        );
    }

    #[tokio::test]
    async fn limits_end_a_guest_with_their_own_kinds() {
        assert_failed(
            run(fixture("membomb"), |r| r.memory_limit = 4 << 20).await,
            FailureKind::MemoryLimit,
            "memory",
        );
        assert_failed(
            run(fixture("spin"), |r| r.timeout = Duration::from_millis(300)).await,
            FailureKind::Timeout,
            "timeout",
        );
    }

    /// A cancel stops a guest spinning in a loop (`job stop` promises within 100 ms): the
    /// run ends CANCELLED, timed from the cancel to the run's end. The guest says it is
    /// spinning first (a byte on stdout), so the cancel lands in the loop, not before the
    /// start. The bound asserted is generous, for a loaded machine; without epoch
    /// interruption the guest would spin on to its 60 s timeout. B8' in the benchmarks
    /// reports the figure itself.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_cancel_stops_a_spinning_guest_at_once() {
        let says_then_spins = r#"(module
            (import "wasi_snapshot_preview1" "fd_write"
              (func $write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "\08\00\00\00\01\00\00\00s")
            (func (export "_start")
              (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
              (loop $forever (br $forever))))"#;
        let bytes = wat::parse_str(says_then_spins).expect("wat");
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime =
            Runtime::new(&dir.path().join("modules"), Allocation::OnDemand).expect("a runtime");
        let compiled = runtime
            .get_or_compile("spinner", || async { Ok(bytes) })
            .await
            .expect("compiles");
        let wake = Arc::new(tokio::sync::Notify::new());
        let stdout = Capture::new(&dir.path().join("stdout"), 1 << 20, wake.clone());
        let cancel = CancellationToken::new();
        let request = RunRequest {
            entrypoint: "_start".into(),
            argv: vec!["spinner".into()],
            env: Vec::new(),
            preopens: Vec::new(),
            memory_limit: 64 << 20,
            timeout: Duration::from_secs(60),
            cancel: cancel.clone(),
            stdout: stdout.clone(),
            stderr: Capture::new(&dir.path().join("stderr"), 1 << 20, wake.clone()),
        };
        let program = compiled.program;
        let run = tokio::spawn(async move { runtime.run(&program, request).await });
        tokio::time::timeout(Duration::from_secs(60), async {
            while stdout.totals().0 == 0 {
                wake.notified().await;
            }
        })
        .await
        .expect("the guest starts and says so");
        let cancelled = std::time::Instant::now();
        cancel.cancel();
        let outcome = run.await.expect("the run");
        let took = cancelled.elapsed();
        assert_failed(Ok(outcome), FailureKind::Cancelled, "");
        assert!(
            took < Duration::from_secs(1),
            "the guest ran on {took:?} after the cancel"
        );
    }
}
