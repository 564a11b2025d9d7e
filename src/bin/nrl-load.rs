//! `nrl-load`: runs the ghz config files in `loadtest/` (see `nrl_registry::load`), checks them,
//! renders copies for real ghz, and prepares their data.
//!
//! ```sh
//! nrl-load check loadtest/*.json
//! nrl-load run loadtest/search-hit.json --concurrency 32 --duration 10s --out loadtest/out/search-hit.json
//! nrl-load prepare --patients-file loadtest/out/data/patients.txt --out-dir loadtest/out/data
//! nrl-load frame loadtest/search-hit.json --data-dir loadtest/out/data --out search.bin   # for h2load
//! nrl-load unframe loadtest/search-hit.json response.bin                                 # curl's answer
//! ```
//!
//! Exit codes: 0; 1 when a run had errors (non-OK calls) or could not run; 64 for a bad config
//! or command line.

use clap::{Args, Parser, Subcommand};
use nrl_registry::load::config::parse_go_duration;
use nrl_registry::load::frame;
use nrl_registry::load::prepare::{self, FillArgs, PrepareArgs, Target};
use nrl_registry::load::{run, GhzConfig, Overrides, Scenario};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(name = "nrl-load", version, about = "Runs ghz JSON configs against an nrl-registry server (no ghz needed).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one or more ghz config files, one after the other, and report like ghz.
    Run(RunArgs),
    /// Check config files without calling anything: keys, call, data (after template expansion),
    /// metadata, durations.
    Check(CheckArgs),
    /// Print a config with the command-line overrides applied, for running real ghz with the same
    /// settings (e.g. a minted token in its metadata).
    Render(RenderArgs),
    /// Write the data files the configs name (search hit/miss, get, locate, create, batch create)
    /// from a seeded server and the NHS numbers `nrl seed --out` wrote.
    Prepare(PrepareCli),
    /// Register bulk pointers for patients no scenario uses (for the 10M-pointer run).
    Fill(FillCli),
    /// Write one call of a config as a raw gRPC request body (0, big-endian u32 length, protobuf
    /// message) for HTTP/2 load tools such as h2load, and print its path and headers as JSON.
    Frame(FrameArgs),
    /// Decode a raw gRPC body (one uncompressed message, e.g. a response curl saved) as the
    /// config's response type (or request type, with --request) and print it as proto3 JSON.
    Unframe(UnframeArgs),
}

/// ghz-style flags that replace the config's values.
#[derive(Args, Debug, Clone)]
struct OverrideArgs {
    /// host:port to call (replaces "host").
    #[arg(long)]
    host: Option<String>,
    /// Workers (replaces "concurrency").
    #[arg(long, short = 'c')]
    concurrency: Option<u64>,
    /// HTTP/2 connections the workers share (replaces "connections").
    #[arg(long)]
    connections: Option<u64>,
    /// Calls to make (replaces "total", and drops "duration").
    #[arg(long, short = 'n')]
    total: Option<u64>,
    /// Run for this long, e.g. 10s, 1m (replaces "duration").
    #[arg(long, short = 'z', value_parser = go_duration)]
    duration: Option<Duration>,
    /// Total calls per second, 0 for no limit (replaces "rps").
    #[arg(long)]
    rps: Option<u64>,
    /// Per-call timeout, e.g. 2s; 0 for none (replaces "timeout").
    #[arg(long, short = 't', value_parser = go_duration)]
    timeout: Option<Duration>,
    /// Extra metadata KEY=VALUE (repeatable), e.g. "authorization=Bearer $TOKEN".
    #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// Look relative data-file/metadata-file names up in this directory instead of the
    /// working directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name for the report (replaces "name").
    #[arg(long)]
    name: Option<String>,
}

impl OverrideArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            name: self.name.clone(),
            host: self.host.clone(),
            concurrency: self.concurrency,
            connections: self.connections,
            total: self.total,
            duration: self.duration,
            rps: self.rps,
            timeout: self.timeout,
            metadata: self.metadata.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// ghz JSON config files.
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Print the JSON report instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report here (a file for one config, a directory for several).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    /// Look relative data-file names up in this directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RenderArgs {
    config: PathBuf,
    #[command(flatten)]
    overrides: OverrideArgs,
}

#[derive(Args, Debug)]
struct FrameArgs {
    /// ghz JSON config: its call, data (message --message of it) and metadata.
    config: PathBuf,
    /// Look a relative data-file name up in this directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Extra metadata KEY=VALUE (repeatable), printed with the config's as headers.
    #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// Which call: request number N, so data message N (mod their number), templates rendered for N.
    #[arg(long, default_value_t = 0)]
    message: u64,
    /// Where to write the body.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct UnframeArgs {
    /// ghz JSON config naming the call.
    config: PathBuf,
    /// The body: a 5-byte prefix and one message.
    body: PathBuf,
    /// Decode as the request type instead of the response type.
    #[arg(long)]
    request: bool,
    /// Look a relative data-file name up in this directory (the config is loaded whole).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Server url.
    #[arg(long, env = "NRL_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Bearer token, when the server runs with authentication.
    #[arg(long, env = "NRL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Purpose of use sent with every call.
    #[arg(long, default_value = "direct-care")]
    purpose: String,
}

impl TargetArgs {
    fn target(&self) -> Target {
        Target { server: self.server.clone(), token: self.token.clone(), purpose: self.purpose.clone() }
    }
}

#[derive(Args, Debug)]
struct PrepareCli {
    /// NHS numbers of the seeded patients, in seed order (`nrl seed --out`).
    #[arg(long)]
    patients_file: PathBuf,
    /// Where to write the data files.
    #[arg(long, default_value = "loadtest/out/data")]
    out_dir: PathBuf,
    /// Messages per data file.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Custodian of the pointers the create scenarios register.
    #[arg(long, default_value = "RR8")]
    custodian: String,
    /// Pointers per BatchCreatePointers message.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// BatchCreatePointers messages in batch-create.json (used round-robin).
    #[arg(long, default_value_t = 10)]
    batches: usize,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args, Debug)]
struct FillCli {
    /// Pointers to register.
    #[arg(long)]
    pointers: u64,
    /// Pointers per patient.
    #[arg(long, default_value_t = 12)]
    per_patient: usize,
    /// Files of NHS numbers to leave untouched (repeatable).
    #[arg(long)]
    exclude: Vec<PathBuf>,
    /// Pointers per BatchCreatePointers call.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value = "RR8")]
    custodian: String,
    #[command(flatten)]
    target: TargetArgs,
}

fn go_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text)
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nrl-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run_configs(args)),
        Command::Check(args) => check(args),
        Command::Render(args) => render(args),
        Command::Prepare(args) => runtime.block_on(prepare_data(args)),
        Command::Fill(args) => runtime.block_on(fill(args)),
        Command::Frame(args) => frame_call(args),
        Command::Unframe(args) => unframe_body(args),
    }
}

async fn run_configs(args: RunArgs) -> ExitCode {
    let overrides = args.overrides.overrides();
    let mut scenarios = Vec::new();
    for path in &args.configs {
        match Scenario::load(path, &overrides) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("nrl-load: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let several = scenarios.len() > 1;
    if several {
        if let Some(dir) = &args.out {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("nrl-load: --out {}: {e}", dir.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let mut failed = false;
    for scenario in &scenarios {
        let report = match run(scenario).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("nrl-load: {}: {e}", scenario.name);
                failed = true;
                continue;
            }
        };
        let json = match serde_json::to_string_pretty(&report) {
            Ok(json) => json,
            Err(e) => {
                eprintln!("nrl-load: cannot serialise the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        if args.json {
            println!("{json}");
        } else {
            print!("{}", report.summary());
        }
        if let Some(out) = &args.out {
            let path = if several { out.join(format!("{}.json", report.name)) } else { out.clone() };
            if let Err(e) = std::fs::write(&path, json + "\n") {
                eprintln!("nrl-load: --out {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        if report.errors > 0 {
            eprintln!("nrl-load: {}: {} of {} calls failed", report.name, report.errors, report.count);
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let overrides = Overrides { data_dir: args.data_dir.clone(), ..Overrides::default() };
    let mut bad = 0;
    for path in &args.configs {
        match Scenario::load(path, &overrides) {
            Ok(s) => println!("ok   {} ({}, {} data message(s))", path.display(), s.method.path, s.payloads.len()),
            Err(e) => {
                println!("FAIL {e}");
                bad += 1;
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_USAGE)
    }
}

fn render(args: RenderArgs) -> ExitCode {
    let result = (|| {
        let text = std::fs::read_to_string(&args.config).map_err(|e| format!("{}: {e}", args.config.display()))?;
        let mut value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", args.config.display()))?;
        // Check the config first, so a rendered file is one ghz and nrl-load both accept.
        GhzConfig::from_value(&value).map_err(|e| format!("{}: {e}", args.config.display()))?;
        let o = &args.overrides;
        let object = value.as_object_mut().ok_or("a config is a JSON object")?;
        let mut set = |key: &str, v: serde_json::Value| {
            object.insert(key.to_string(), v);
        };
        if let Some(host) = &o.host {
            set("host", host.clone().into());
        }
        if let Some(c) = o.concurrency {
            set("concurrency", c.into());
        }
        if let Some(c) = o.connections {
            set("connections", c.into());
        }
        if let Some(n) = o.total {
            set("total", n.into());
        }
        if let Some(d) = o.duration {
            set("duration", format!("{}ms", d.as_millis()).into());
        }
        if let Some(r) = o.rps {
            set("rps", r.into());
        }
        if let Some(t) = o.timeout {
            set("timeout", format!("{}ms", t.as_millis()).into());
        }
        if let Some(n) = &o.name {
            set("name", n.clone().into());
        }
        if let Some(dir) = &o.data_dir {
            if let Some(file) = object.get("data-file").and_then(|f| f.as_str()).map(PathBuf::from) {
                if let Some(name) = file.file_name() {
                    object.insert("data-file".into(), dir.join(name).to_string_lossy().into_owned().into());
                }
            }
        }
        if !o.metadata.is_empty() {
            let metadata = object.entry("metadata").or_insert_with(|| serde_json::json!({}));
            let map = metadata.as_object_mut().ok_or("\"metadata\" is not an object")?;
            for (k, v) in &o.metadata {
                map.insert(k.clone(), v.clone().into());
            }
        }
        GhzConfig::from_value(&value)?;
        serde_json::to_string_pretty(&value).map_err(|e| e.to_string())
    })();
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nrl-load render: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

async fn prepare_data(args: PrepareCli) -> ExitCode {
    let prepare_args = PrepareArgs {
        target: args.target.target(),
        patients_file: args.patients_file,
        out_dir: args.out_dir,
        count: args.count,
        custodian: args.custodian,
        batch_size: args.batch_size.clamp(1, 1000),
        batches: args.batches.max(1),
    };
    match prepare::prepare(&prepare_args).await {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nrl-load prepare: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fill(args: FillCli) -> ExitCode {
    let fill_args = FillArgs {
        target: args.target.target(),
        pointers: args.pointers,
        per_patient: args.per_patient,
        exclude: args.exclude,
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        custodian: args.custodian,
    };
    match prepare::fill(&fill_args).await {
        Ok(summary) => {
            match serde_json::to_string(&summary) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("nrl-load fill: {e}"),
            }
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "nrl-load fill: {} pointers failed; first: {}",
                    summary.failed,
                    summary.first_error.unwrap_or_default()
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("nrl-load fill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn frame_call(args: FrameArgs) -> ExitCode {
    let overrides =
        Overrides { data_dir: args.data_dir.clone(), metadata: args.metadata.clone(), ..Overrides::default() };
    let scenario = match Scenario::load(&args.config, &overrides) {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("nrl-load frame: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let framed = match frame::framed(&scenario, args.message) {
        Ok(framed) => framed,
        Err(e) => {
            eprintln!("nrl-load frame: {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&args.out, &framed.body) {
        eprintln!("nrl-load frame: --out {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let headers: Vec<String> = framed.metadata.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let summary = serde_json::json!({
        "name": scenario.name,
        "call": framed.method.names.fully_qualified_name,
        "path": framed.method.path,
        "out": args.out,
        "message_bytes": framed.message().len(),
        "body_bytes": framed.body.len(),
        "headers": headers,
    });
    println!("{summary}");
    ExitCode::SUCCESS
}

fn unframe_body(args: UnframeArgs) -> ExitCode {
    let overrides = Overrides { data_dir: args.data_dir.clone(), ..Overrides::default() };
    let scenario = match Scenario::load(&args.config, &overrides) {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("nrl-load unframe: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let body = match std::fs::read(&args.body) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("nrl-load unframe: {}: {e}", args.body.display());
            return ExitCode::FAILURE;
        }
    };
    let decoded = if args.request {
        frame::decode_request(&scenario.method, &body)
    } else {
        frame::decode_response(&scenario.method, &body)
    };
    match decoded {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nrl-load unframe: {}: {e}", args.body.display());
            ExitCode::FAILURE
        }
    }
}
