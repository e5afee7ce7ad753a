//! Compiled modules shared across a fleet: the first executor to compile a program uploads
//! the native code to the orchestrator's store and records it there, so every other
//! executor of the same engine loads it instead of compiling the program again.
//!
//! A compiled module is native code that runs as the executor that loads it, and nothing
//! short of compiling the program again can tell what it does. So sharing is opt-in and
//! scoped by a secret: executors started with the same `--module-share-key` sign what they
//! share (HMAC-SHA256 over the program's key, the engine and the bytes) and load only what
//! verifies against that key. The orchestrator keeps the index and the bytes but never the
//! key: a compromised orchestrator, or an executor outside the pool, can withhold or spoil an
//! artifact (the loader then compiles the program itself), not make anyone run its code.
//! Only executors run by one operator with one trust should share a key.

use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use shoal::net::auth::AuthChannel;
use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{CompiledModule, DownloadRequest, FindCompiledModuleRequest};

use crate::error::{Error, Result};
use crate::runtime::{Program, Runtime};

/// What a shared artifact starts with, before its tag.
const MAGIC: &[u8; 8] = b"SHOALMOD";
/// Bytes of the HMAC-SHA256 tag after the magic.
const TAG_BYTES: usize = 32;
/// The shortest key accepted, in bytes: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;
/// The largest artifact downloaded: it is held in memory until its seal is checked, so
/// this bounds what a spoiled record can cost (a compiled module is a few times its wasm's
/// size; a program whose artifact is larger is compiled here instead).
const MAX_ARTIFACT_BYTES: u64 = 256 << 20;
/// Longest the lookup and download of an artifact may take before this executor compiles
/// the program itself (a hung orchestrator must not hold staging for its whole timeout).
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The pool's key and the engine it seals for: signs artifacts and checks them.
#[derive(Clone)]
pub struct Seal {
    key: Vec<u8>,
    /// The index's engine key: the runtime's fingerprint and the key's public id, so pools
    /// with different keys (or engines) never overwrite each other's records.
    engine: String,
}

impl Seal {
    /// The seal of `key` (the contents of the `--module-share-key` file) for modules of
    /// the engine `fingerprint` names.
    pub fn new(key: Vec<u8>, fingerprint: &str) -> Result<Self> {
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::Config(format!(
                "the module share key must be at least {MIN_KEY_BYTES} bytes (it has {}); \
                 make one with `openssl rand -hex 32`",
                key.len()
            )));
        }
        let id = Sha256::new()
            .chain_update(b"shoal module share key id\0")
            .chain_update(&key)
            .finalize();
        let id: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Seal {
            key,
            engine: format!("{fingerprint}.{id}"),
        })
    }

    /// The engine key artifacts are recorded under.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// The MAC of an artifact for `program`: it binds the program, the engine and (fed by
    /// the caller) the bytes, so an artifact cannot pass for another program's or another
    /// engine's.
    fn mac(&self, program: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        let parts = [
            b"shoal compiled module v1".as_slice(),
            program.as_bytes(),
            self.engine.as_bytes(),
        ];
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    /// `serialized` (a module compiled for `program`) signed for the pool.
    pub fn seal(&self, program: &str, serialized: &[u8]) -> Vec<u8> {
        let mut mac = self.mac(program);
        mac.update(serialized);
        let tag = mac.finalize().into_bytes();
        let mut sealed = Vec::with_capacity(MAGIC.len() + TAG_BYTES + serialized.len());
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&tag);
        sealed.extend_from_slice(serialized);
        sealed
    }

    /// The module inside `sealed`, if it was sealed for `program` with this pool's key.
    pub fn open<'a>(
        &self,
        program: &str,
        sealed: &'a [u8],
    ) -> std::result::Result<&'a [u8], String> {
        let Some(rest) = sealed.strip_prefix(MAGIC.as_slice()) else {
            return Err("it is not a Shoal compiled module".into());
        };
        if rest.len() < TAG_BYTES {
            return Err("it is cut short".into());
        }
        let (tag, serialized) = rest.split_at(TAG_BYTES);
        let mut mac = self.mac(program);
        mac.update(serialized);
        mac.verify_slice(tag)
            .map_err(|_| "its signature does not verify against this executor's key".to_owned())?;
        Ok(serialized)
    }
}

/// One executor's membership of a sharing pool.
pub struct ModuleShare {
    seal: Seal,
    executors: ExecutorServiceClient<AuthChannel>,
    storage: StorageServiceClient<AuthChannel>,
    /// Where sealed artifacts are written before they are uploaded.
    dir: PathBuf,
}

impl ModuleShare {
    /// Joins the pool `seal` stands for, through the orchestrator behind `channel`.
    pub fn new(seal: Seal, channel: AuthChannel, dir: PathBuf) -> Self {
        ModuleShare {
            seal,
            executors: ExecutorServiceClient::new(channel.clone())
                .max_decoding_message_size(1 << 20),
            storage: StorageServiceClient::new(channel).max_decoding_message_size(16 << 20),
            dir,
        }
    }

    /// The program `program` (a content key), loaded from an artifact another executor of
    /// the pool recorded, if there is one that verifies and loads. Anything else (none
    /// recorded, the orchestrator unreachable, a spoiled artifact) is logged and answered
    /// with `None`: the caller compiles.
    pub async fn load(&self, runtime: &Arc<Runtime>, program: &str) -> Option<Program> {
        let request = FindCompiledModuleRequest {
            program: program.to_owned(),
            engine: self.seal.engine.clone(),
        };
        let mut executors = self.executors.clone();
        let lookup = executors.find_compiled_module(request);
        let artifact = match tokio::time::timeout(FETCH_TIMEOUT, lookup).await {
            Ok(Ok(found)) => found.into_inner().artifact,
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => return None,
            Ok(Err(status)) => {
                tracing::warn!(program, %status, "cannot look up a shared compiled module");
                return None;
            }
            Err(_) => {
                tracing::warn!(program, "no answer to the shared compiled module lookup");
                return None;
            }
        };
        let download = DownloadRequest {
            cid: artifact.clone(),
            path: String::new(),
            offset: 0,
        };
        let mut storage = self.storage.clone();
        let fetch = async move {
            let stream = storage.download(download).await?.into_inner();
            shoal::content::transfer::download_bytes(stream, MAX_ARTIFACT_BYTES).await
        };
        let sealed = match tokio::time::timeout(FETCH_TIMEOUT, fetch).await {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(error)) => {
                tracing::warn!(program, artifact, %error, "cannot fetch a shared compiled module");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    program,
                    artifact,
                    "fetching a shared compiled module took too long"
                );
                return None;
            }
        };
        // Checking the tag of a large module and loading it take a while: off the runtime.
        let (seal, runtime, key) = (self.seal.clone(), runtime.clone(), program.to_owned());
        let loaded = tokio::task::spawn_blocking(move || {
            let serialized = seal.open(&key, &sealed)?;
            // SAFETY: the bytes verified against the pool's key, so an executor holding it
            // produced them with `Module::serialize` for this program and engine.
            #[allow(unsafe_code)]
            unsafe {
                runtime.load_compiled(&key, serialized)
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the loading task failed: {e}")));
        match loaded {
            Ok(loaded) => {
                tracing::info!(program, artifact, "compiled module loaded from the fleet");
                Some(loaded)
            }
            Err(reason) => {
                tracing::warn!(
                    program,
                    artifact,
                    reason,
                    "a shared compiled module was refused"
                );
                None
            }
        }
    }

    /// Shares `serialized`, the module this executor just compiled for `program`, with the
    /// pool, in the background (the execution that compiled it does not wait): sealed,
    /// uploaded, recorded.
    pub fn publish(self: &Arc<Self>, program: &str, serialized: Vec<u8>) {
        let (share, program) = (self.clone(), program.to_owned());
        tokio::spawn(async move {
            match share.publish_now(&program, serialized).await {
                Ok(artifact) => tracing::info!(
                    program,
                    engine = share.seal.engine,
                    artifact,
                    "compiled module shared"
                ),
                Err(error) => tracing::warn!(program, %error, "cannot share a compiled module"),
            }
        });
    }

    async fn publish_now(&self, program: &str, serialized: Vec<u8>) -> Result<String> {
        let (seal, key) = (self.seal.clone(), program.to_owned());
        let dir = self.dir.clone();
        // Sealing and writing a large module take a while: off the runtime.
        let (temp, path) = tokio::task::spawn_blocking(move || -> Result<_> {
            let temp = tempfile::Builder::new()
                .prefix("share-")
                .tempdir_in(&dir)
                .map_err(|e| Error::io("creating a directory to share a module from", e))?;
            let path = temp.path().join("module.cwasm");
            std::fs::write(&path, seal.seal(&key, &serialized))
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            Ok((temp, path))
        })
        .await
        .map_err(|e| Error::Runtime(format!("the sealing task failed: {e}")))??;
        let uploaded = shoal::content::transfer::upload_path(
            &mut self.storage.clone(),
            &path,
            shoal::content::transfer::TreeBounds::LOCAL,
            None,
        )
        .await
        .map_err(|e| Error::Runtime(format!("uploading it: {e}")))?;
        drop(temp);
        let record = CompiledModule {
            program: program.to_owned(),
            engine: self.seal.engine.clone(),
            artifact: uploaded.cid.clone(),
        };
        self.executors
            .clone()
            .record_compiled_module(record)
            .await
            .map_err(|status| Error::Runtime(format!("recording it: {}", status.message())))?;
        Ok(uploaded.cid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &[u8], engine: &str) -> Seal {
        Seal::new(key.to_vec(), engine).expect("a long enough key")
    }

    /// What one pool seals, it opens; a byte flipped anywhere, another program's or
    /// engine's artifact, another pool's key or a cut-short artifact is refused.
    #[test]
    fn only_what_the_pool_sealed_for_the_program_opens() {
        let pool = seal(b"0123456789abcdef0123456789abcdef", "engine1");
        let module = b"\x7fELF pretend native code".repeat(10);
        let sealed = pool.seal("bafyprogram", &module);
        assert_eq!(pool.open("bafyprogram", &sealed), Ok(module.as_slice()));
        for at in [
            0,
            MAGIC.len(),
            MAGIC.len() + TAG_BYTES - 1,
            sealed.len() - 1,
        ] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 0x01;
            assert!(pool.open("bafyprogram", &flipped).is_err(), "byte {at}");
        }
        assert!(
            pool.open("bafyother", &sealed).is_err(),
            "another program's"
        );
        let other_engine = seal(b"0123456789abcdef0123456789abcdef", "engine2");
        assert!(other_engine.open("bafyprogram", &sealed).is_err());
        let other_pool = seal(b"fedcba9876543210fedcba9876543210", "engine1");
        assert!(other_pool.open("bafyprogram", &sealed).is_err());
        assert_ne!(
            other_pool.engine(),
            pool.engine(),
            "pools keep apart in the index"
        );
        assert!(
            pool.open("bafyprogram", &sealed[..MAGIC.len() + 3])
                .is_err()
        );
        assert!(pool.open("bafyprogram", b"").is_err());
    }

    /// A key too short to be a secret is a configuration error that says how to make one.
    #[test]
    fn a_short_key_is_refused() {
        let error = Seal::new(b"short".to_vec(), "e").err().expect("refused");
        assert!(error.to_string().contains("openssl rand"), "{error}");
    }
}
