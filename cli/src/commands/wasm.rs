//! `shoal wasm run`: run a WebAssembly program as a job.
//!
//! Flags may come before or after the program (`shoal wasm run prog.wasm -e K=V arg`);
//! everything after `--` goes to the program untouched.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use shoal::proto::{EntryKind, StatRequest};
use shoal::spec::{InputDocument, OutputDocument, ResourcesDocument, SpecDocument};

use super::sources::resolve_document;
use super::waiting::{WaitArgs, submit_and_wait};
use crate::client::{Target, connect};

#[derive(Debug, Subcommand)]
pub enum WasmCommand {
    /// Run a program: a local .wasm file or a CID, then its arguments.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The program, then its arguments. The program is a local .wasm file (sent unless the store has it), a
    /// CID of one in the store (or on the IPFS gateways), an HTTP(S) URL (pin it with
    /// `#sha256=HEX`) or an s3://bucket/key object.
    #[arg(required = true, value_name = "PROGRAM [ARGS]")]
    pub program_and_args: Vec<String>,
    /// Input data, `SRC[:TARGET]`: a local file or directory (sent unless the store has it), a CID, an HTTP(S)
    /// URL (pin it with `#sha256=HEX`), or s3://bucket/key, s3://bucket/prefix/ or
    /// s3://bucket/prefix/*.csv. Default target: /inputs for a directory, /inputs/NAME for a
    /// file (NAME: the file's name, the URL's last path segment — `download` for a URL
    /// without one, such as https://host/ — the S3 key's last part, and for a file CID the
    /// name it was stored with by `data put` or `data cp`, else (or when another input
    /// takes that name) the CID itself). TARGET must be an absolute path. `@FILE:TARGET`
    /// is a list of sources, one per line, for --shard TARGET.
    #[arg(short = 'i', long = "input", value_name = "SRC[:TARGET]")]
    pub inputs: Vec<String>,
    /// An output directory, NAME:PATH, published with the results under NAME. The default
    /// outputs:/outputs stays mounted beside those named here unless one of them is called
    /// `outputs` or mounted at /outputs, or --no-default-output is given. (`--output` is
    /// the old spelling.)
    #[arg(
        short = 'o',
        long = "output-mount",
        alias = "output",
        value_name = "NAME:PATH"
    )]
    pub outputs: Vec<String>,
    /// With -o, mount only the outputs named there, not also outputs:/outputs.
    #[arg(long)]
    pub no_default_output: bool,
    /// An environment variable, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub env: Vec<(String, String)>,
    /// The exported function to call (default _start).
    #[arg(long)]
    pub entry_point: Option<String>,
    /// Memory limit, e.g. 256MiB (default 512MiB).
    #[arg(long)]
    pub memory: Option<String>,
    /// Run timeout, e.g. 30s or 10m.
    #[arg(long)]
    pub timeout: Option<String>,
    /// How long to wait for an executor, e.g. 1h.
    #[arg(long)]
    pub queue_timeout: Option<String>,
    /// Executor label selector, e.g. region=eu or "arch in (x86_64)" (repeatable).
    #[arg(short = 's', long = "constraint")]
    pub constraints: Vec<String>,
    /// A label on the job, KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub labels: Vec<(String, String)>,
    /// A name for the job.
    #[arg(long)]
    pub name: Option<String>,
    /// Where results go: "default" (the orchestrator's store) or s3://bucket/prefix (the
    /// executor uploads them to prefix/JOB/EXECUTION/; `shoal job get` fetches them there).
    #[arg(long)]
    pub publisher: Option<String>,
    /// S3 endpoint for the s3:// inputs and publisher (an S3-compatible server), e.g.
    /// http://127.0.0.1:8333.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region for the s3:// inputs and publisher.
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Path-style addressing for the s3:// inputs and publisher.
    #[arg(long)]
    pub s3_path_style: bool,
    /// Fan out: run the program as N partitions, each with SHOAL_PARTITION_INDEX (0-based)
    /// and SHOAL_PARTITION_COUNT in its environment, its own attempts, logs and results
    /// (`shoal job get` lays them out as `partitions/<i>/`).
    #[arg(long, value_name = "N", group = "fanout", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,
    /// Fan out over the input mounted at TARGET: one partition per top-level entry of it
    /// (a directory's entries, an S3 prefix's objects and sub-prefixes, the URLs of an
    /// `-i @urls.txt:TARGET` list), listed when the job is submitted. Partition i sees only
    /// its entries, at TARGET/NAME.
    #[arg(long, value_name = "TARGET", group = "fanout")]
    pub shard: Option<String>,
    /// With --shard: K entries per partition (the last takes what is left).
    #[arg(long, value_name = "K", requires = "shard", value_parser = clap::value_parser!(u32).range(1..))]
    pub shard_size: Option<u32>,
    /// With --count or --shard: at most K partitions run at once.
    #[arg(long, value_name = "K", requires = "fanout", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: Option<u32>,
    /// With --count or --shard: a partition that fails for good lets the others run to
    /// their end (the job still ends FAILED, naming it) instead of cancelling them.
    #[arg(long, requires = "fanout")]
    pub allow_partial: bool,
    /// Print the job spec as YAML instead of submitting it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(target: &Target, command: WasmCommand) -> anyhow::Result<u8> {
    let WasmCommand::Run(args) = command;
    let mut document = document_from_flags(&args)?;
    if args.dry_run {
        crate::out!("{}", serde_yaml_ng::to_string(&document)?);
        return Ok(0);
    }
    // Before any connection: a mistyped path is the user's to fix, not the network's.
    check_program(&document.program)?;
    let mut clients = connect(target).await?;
    // Default targets for CIDs depend on whether they are files or directories.
    let mut taken: std::collections::HashSet<String> = document
        .inputs
        .iter()
        .map(|input| input.target.clone())
        .filter(|target| !target.is_empty())
        .collect();
    for (input, raw) in document.inputs.iter_mut().zip(&args.inputs) {
        if input.target.is_empty() {
            let stat = clients
                .storage
                .stat(StatRequest {
                    cid: input.source.clone(),
                    path: String::new(),
                })
                .await
                .with_context(|| format!("input {raw:?}"))?
                .into_inner();
            // A file keeps the name the store recorded for it (a copied URL's, say), unless
            // another input already lands there: then it goes under its CID.
            let named = format!("/inputs/{}", stat.name);
            input.target = if stat.kind() == EntryKind::Directory {
                "/inputs".into()
            } else if !stat.name.is_empty() && !taken.contains(&named) {
                named
            } else {
                format!("/inputs/{}", input.source.trim_start_matches("ipfs://"))
            };
            taken.insert(input.target.clone());
        }
    }
    let spec = resolve_document(&mut clients, document, Path::new(".")).await?;
    submit_and_wait(&mut clients, spec, &args.wait).await
}

/// Builds the spec document the flags describe; local paths stay paths until submission.
pub fn document_from_flags(args: &RunArgs) -> anyhow::Result<SpecDocument> {
    let (program, program_args) = args
        .program_and_args
        .split_first()
        .context("a program is required")?;
    let env: BTreeMap<_, _> = args.env.iter().cloned().collect();
    let labels: BTreeMap<_, _> = args.labels.iter().cloned().collect();
    let s3 =
        (args.s3_endpoint.is_some() || args.s3_region.is_some() || args.s3_path_style).then(|| {
            shoal::spec::S3Document {
                endpoint: args.s3_endpoint.clone().unwrap_or_default(),
                region: args.s3_region.clone().unwrap_or_default(),
                force_path_style: args.s3_path_style,
                version_id: String::new(),
            }
        });
    let mut inputs = args
        .inputs
        .iter()
        .map(|raw| {
            parse_input(raw).map(|mut input| {
                let s3_source = input.source.starts_with("s3://")
                    || input.sources.iter().any(|s| s.starts_with("s3://"));
                if s3_source {
                    input.s3 = s3.clone();
                }
                input
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    mark_shard(&mut inputs, args.shard.as_deref())?;
    let mut outputs = args
        .outputs
        .iter()
        .map(|raw| {
            let (name, path) = raw
                .split_once(':')
                .with_context(|| format!("--output-mount {raw:?} must be NAME:PATH"))?;
            Ok(OutputDocument {
                name: name.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A guest written for the default keeps writing /outputs when another output is added.
    let default_taken = outputs.iter().any(|o| {
        o.name == shoal::spec::DEFAULT_OUTPUT_NAME || o.path == shoal::spec::DEFAULT_OUTPUT_PATH
    });
    if !outputs.is_empty() && !default_taken && !args.no_default_output {
        outputs.push(OutputDocument {
            name: shoal::spec::DEFAULT_OUTPUT_NAME.to_owned(),
            path: shoal::spec::DEFAULT_OUTPUT_PATH.to_owned(),
        });
    }
    Ok(SpecDocument {
        name: args.name.clone().unwrap_or_default(),
        program: program.clone(),
        entrypoint: args.entry_point.clone().unwrap_or_default(),
        args: program_args.to_vec(),
        env,
        inputs,
        outputs,
        resources: args.memory.clone().map(|memory| ResourcesDocument {
            memory: Some(memory),
        }),
        timeout: args.timeout.clone(),
        queue_timeout: args.queue_timeout.clone(),
        constraints: args.constraints.clone(),
        labels,
        publisher: args.publisher.clone().unwrap_or_default(),
        publisher_s3: s3.filter(|_| {
            args.publisher
                .as_deref()
                .is_some_and(|p| p.starts_with("s3://"))
        }),
        partitions: args.count.unwrap_or(0),
        max_parallel: args.max_parallel.unwrap_or(0),
        partial: if args.allow_partial {
            "allow".into()
        } else {
            String::new()
        },
        shard_size: args.shard_size.unwrap_or(0),
        ..Default::default()
    })
}

/// Marks the input mounted at `--shard TARGET` as sharded. A URL list (`-i @FILE`) is only
/// taken sharded, and a local file has no entries to shard: both are usage errors here,
/// before anything is sent.
fn mark_shard(inputs: &mut [InputDocument], shard: Option<&str>) -> anyhow::Result<()> {
    if let Some(target) = shard {
        let target = target.trim_end_matches('/');
        // A CID given without a target is mounted at /inputs if it is a directory, the only
        // kind that can be sharded.
        let Some(input) = inputs
            .iter_mut()
            .find(|i| i.target == target || (i.target.is_empty() && target == "/inputs"))
        else {
            crate::usage!(
                "--shard {target}: no input is mounted there (give it as -i SRC:{target})"
            );
        };
        input.target = target.to_owned();
        if std::fs::metadata(&input.source).is_ok_and(|m| m.is_file()) {
            crate::usage!(
                "--shard {target}: {} is a file; only a directory's entries (or an S3 prefix's \
                 objects, or a URL list's lines) can be sharded",
                input.source
            );
        }
        input.shard = true;
    }
    if let Some(list) = inputs.iter().find(|i| !i.sources.is_empty() && !i.shard) {
        crate::usage!(
            "the URL list mounted at {} is split across partitions: add --shard {}",
            list.target,
            list.target
        );
    }
    Ok(())
}

/// The sources of a list input, `@FILE`: one per line; blank lines and `#` comments are
/// skipped.
fn read_source_list(raw: &str, file: &str) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => crate::usage!("--input {raw:?}: {}", not_found(file, &error)),
    };
    let sources: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if sources.is_empty() {
        crate::usage!("--input {raw:?}: {file} lists no sources");
    }
    Ok(sources)
}

/// A program that is neither a local file nor a CID, URL or S3 object is a usage error.
fn check_program(program: &str) -> anyhow::Result<()> {
    match std::fs::metadata(program) {
        Ok(meta) if meta.is_dir() => {
            crate::usage!("the program must be a file: {program} is a directory")
        }
        Ok(_) => Ok(()),
        Err(_) if program.parse::<shoal::spec::source::Source>().is_ok() => Ok(()),
        Err(error) => crate::usage!("program: {}", not_found(program, &error)),
    }
}

/// Why `source`, which is no URL, S3 source or CID, cannot be read as a local path.
pub fn not_found(source: &str, error: &std::io::Error) -> String {
    let looks_like_path =
        source.contains('/') || source.starts_with(['.', '~']) || source.ends_with(".wasm");
    match error.kind() {
        std::io::ErrorKind::NotFound if looks_like_path => {
            format!("no such file or directory: {source}")
        }
        std::io::ErrorKind::NotFound => format!(
            "{source:?} is neither a local path, a content id, an http(s):// URL nor an s3:// source"
        ),
        _ => {
            let text = error.to_string();
            let reason = text.split(" (os error").next().unwrap_or(&text);
            format!("{source}: {}", reason.to_lowercase())
        }
    }
}

/// Splits `SRC[:TARGET]`. The target is the part after the last `:` that is followed by a
/// single `/`, so `ipfs://CID` and `./a:b/c` are left whole.
fn parse_input(raw: &str) -> anyhow::Result<InputDocument> {
    let bytes = raw.as_bytes();
    let split = (0..bytes.len()).rev().find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) == Some(&b'/') && bytes.get(i + 2) != Some(&b'/')
    });
    let (source, target) = match split {
        Some(i) => (&raw[..i], raw[i + 1..].to_owned()),
        None => (raw, String::new()),
    };
    if source.is_empty() {
        crate::usage!("--input {raw:?} has no source");
    }
    if let Some(file) = source.strip_prefix('@') {
        return Ok(InputDocument {
            sources: read_source_list(raw, file)?,
            target: if target.is_empty() {
                "/inputs".to_owned()
            } else {
                target.trim_end_matches('/').to_owned()
            },
            ..Default::default()
        });
    }
    // `./in:inputs`: a local path with a target that is not absolute.
    if split.is_none()
        && let Some((path, target)) = raw.rsplit_once(':')
        && !target.is_empty()
        && !target.starts_with('/')
        && !path.is_empty()
        && std::fs::symlink_metadata(path).is_ok()
    {
        crate::usage!(
            "--input {raw:?}: the target must be an absolute path, e.g. {path}:/inputs/{target}"
        );
    }
    let target = if target.is_empty() {
        match source.parse::<shoal::spec::source::Source>() {
            Ok(shoal::spec::source::Source::Http(http)) => {
                return Ok(InputDocument {
                    source: source.to_owned(),
                    target: format!("/inputs/{}", http.file_name()),
                    ..Default::default()
                });
            }
            Ok(shoal::spec::source::Source::S3(s3)) => {
                let target = match s3.selection() {
                    shoal::spec::source::S3Selection::Object(_) => {
                        format!("/inputs/{}", s3.file_name())
                    }
                    _ => "/inputs".to_owned(),
                };
                return Ok(InputDocument {
                    source: source.to_owned(),
                    target,
                    ..Default::default()
                });
            }
            _ => {}
        }
        match std::fs::metadata(source) {
            Ok(meta) if meta.is_dir() => "/inputs".to_owned(),
            Ok(_) => {
                let name = Path::new(source)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "input".into());
                format!("/inputs/{name}")
            }
            // A CID: the target is chosen once we know whether it is a file or a directory.
            Err(_) if shoal::content::cid::looks_like_cid(source) => String::new(),
            Err(error) => crate::usage!("--input {raw:?}: {}", not_found(source, &error)),
        }
    } else {
        target
    };
    Ok(InputDocument {
        source: source.to_owned(),
        target,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(line: &[&str]) -> RunArgs {
        let cli = crate::Cli::try_parse_from(line).expect("parses");
        match cli.command {
            crate::Command::Wasm(WasmCommand::Run(args)) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Flags after the program are flags; positionals are the program's args; after `--`
    /// everything is passed untouched.
    #[test]
    fn flags_mix_with_program_args() {
        let args = parse(&[
            "shoal",
            "wasm",
            "run",
            "prog.wasm",
            "-e",
            "HELLO=world",
            "/inputs/data.txt",
            "--memory",
            "64MiB",
            "--",
            "--top",
            "-e",
            "10",
        ]);
        assert_eq!(
            args.program_and_args,
            ["prog.wasm", "/inputs/data.txt", "--top", "-e", "10"]
        );
        assert_eq!(args.env, [("HELLO".to_owned(), "world".to_owned())]);
        let document = document_from_flags(&args).expect("document");
        assert_eq!(document.program, "prog.wasm");
        assert_eq!(document.args, ["/inputs/data.txt", "--top", "-e", "10"]);
        assert_eq!(document.env.get("HELLO").map(String::as_str), Some("world"));
    }

    /// Input sources and targets split where a user means them to.
    #[test]
    fn input_targets_split_correctly() {
        let cid = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";
        let cases = [
            (
                format!("{cid}:/data/x"),
                cid.to_owned(),
                "/data/x".to_owned(),
            ),
            (
                format!("ipfs://{cid}"),
                format!("ipfs://{cid}"),
                String::new(),
            ),
            (
                format!("ipfs://{cid}:/in"),
                format!("ipfs://{cid}"),
                "/in".to_owned(),
            ),
            (
                "./missing:/in/a.txt".to_owned(),
                "./missing".to_owned(),
                "/in/a.txt".to_owned(),
            ),
        ];
        for (raw, source, target) in cases {
            let input = parse_input(&raw).expect(&raw);
            assert_eq!((input.source, input.target), (source, target), "{raw}");
        }
        assert!(parse_input(":/x").is_err());
    }
}
