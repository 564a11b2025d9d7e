//! Client subcommands for operators and demos: each one connects to a running server over gRPC,
//! makes one or a few calls and prints the answer, as text or (`--json`) as JSON.
//!
//! Exit codes: 0 on success, 1 when the server refused the call or could not be reached (or a seed
//! entry failed, or an import stopped early), 2 when `import` finished but refused some lines, 64
//! (EX_USAGE) when local input is wrong: an unreadable or invalid file, a bad `--server` url, 130
//! when `import` was interrupted (Ctrl-C).

mod federation;
mod governance;
mod import;
mod input;
mod output;
mod seed;

use crate::proto::nrl::v1 as pb;
use pb::pointer_registry_client::PointerRegistryClient;
use pb::record_locator_client::RecordLocatorClient;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use seed::SeedArgs;

/// Environment variable naming the server, so a session can point every command at one place.
pub const ENV_SERVER: &str = "NRL_SERVER";
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// BSD sysexits EX_USAGE, as `nrl serve` uses for bad configuration.
const EXIT_USAGE: u8 = 64;
/// `import` went through the whole file but refused some lines (each is in its report).
const EXIT_REFUSED: u8 = 2;
/// 128 + SIGINT, as shells report a command stopped by Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;
/// Short enough that a wrong address fails fast, long enough for a loaded server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses are capped server-side at this size too (a full search page of large pointers fits).
const MAX_MESSAGE_BYTES: usize = crate::domain::limits::MAX_MESSAGE_BYTES;

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Register a pointer described by a JSON file (`-` for stdin).
    Create(CreateArgs),
    /// Show one pointer by id.
    Get(GetArgs),
    /// Remove a pointer.
    Delete(DeleteArgs),
    /// Register a pointer that replaces others, atomically.
    Supersede(SupersedeArgs),
    /// A patient's pointers, newest first, a page at a time (or every page with --all).
    Search(SearchArgs),
    /// How many pointers a search would return.
    Count(CountArgs),
    /// The regions holding a patient's records, with endpoints and per-type counts.
    Locate(LocateArgs),
    /// List the region directory.
    Regions(ListArgs),
    /// List the pointer-type catalogue.
    Types(ListArgs),
    /// Register synthetic patients and pointers (NHS test range) for demos and load tests.
    Seed(SeedArgs),
    /// Register the pointers of an NDJSON file (a region's first load), reporting refused lines.
    Import(import::ImportArgs),
    /// Mint a development token signed with the server's HS256 secret.
    Token(governance::TokenArgs),
    /// Restrict a patient (admin role), or clear the restriction with --clear.
    Restrict(governance::RestrictArgs),
    /// Who accessed a patient's pointers (auditor or portal role).
    AccessLog(governance::AccessLogArgs),
    /// Ask every region holding a patient, in parallel, through the national node.
    FederatedSearch(federation::FederatedSearchArgs),
}

/// Options every client subcommand takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Server url (`https://` for a server speaking TLS).
    #[arg(long, env = ENV_SERVER, default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token sent as `authorization` (see `nrl token`). Not needed when the server runs
    /// without authentication (loopback development).
    #[arg(long, env = "NRL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Purpose of use sent as `x-purpose-of-use`: direct-care, emergency, patient-request,
    /// administration or audit.
    #[arg(long, env = "NRL_PURPOSE", default_value = "direct-care")]
    pub purpose: String,
    /// The person the call is made for, sent as `x-end-user`.
    #[arg(long, env = "NRL_END_USER")]
    pub end_user: Option<String>,
    /// CA certificate (PEM) to trust for an `https://` server.
    #[arg(long, env = "NRL_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mTLS, with --key-file.
    #[arg(long, env = "NRL_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, env = "NRL_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Print JSON (the response message, or the seed summary) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Pointer JSON file (`-` for stdin): a PointerInput in the canonical protobuf JSON mapping
    /// ({"nhsNumber", "region", "custodian", "type", "content": [...], ...}, enums like
    /// "RETRIEVAL_MECHANISM_SSP"), or with proto field names and short enum names ("SSP").
    #[arg(value_name = "FILE")]
    pub file: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Pointer id (a UUID).
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Pointer id (a UUID).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Only delete if the pointer is still at this version.
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct SupersedeArgs {
    /// The replacement pointer, as for `create`.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// Id of a pointer to retire (repeat for several).
    #[arg(long = "old", value_name = "ID", required = true)]
    pub old: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Filters shared by `search` and `count`: values of one filter are ORed, filters are ANDed.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// The patient's NHS number (10 digits; spaces or dashes allowed).
    #[arg(value_name = "NHS_NUMBER")]
    pub nhs_number: String,
    /// Pointer type code (repeatable).
    #[arg(long = "type", value_name = "CODE")]
    pub types: Vec<String>,
    /// Category code (repeatable).
    #[arg(long = "category", value_name = "CODE")]
    pub categories: Vec<String>,
    /// Custodian ODS code (repeatable).
    #[arg(long = "custodian", value_name = "ODS")]
    pub custodians: Vec<String>,
    /// Region code (repeatable).
    #[arg(long = "region", value_name = "CODE")]
    pub regions: Vec<String>,
    /// Include superseded pointers.
    #[arg(long)]
    pub include_superseded: bool,
}

impl QueryArgs {
    fn to_proto(&self) -> pb::PointerQuery {
        pb::PointerQuery {
            nhs_number: self.nhs_number.clone(),
            types: self.types.clone(),
            categories: self.categories.clone(),
            custodians: self.custodians.clone(),
            regions: self.regions.clone(),
            include_superseded: self.include_superseded,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    /// Pointers per page (server default 50, at most 500).
    #[arg(long, value_name = "N")]
    pub page_size: Option<i32>,
    /// Continue from a previous page's next page token.
    #[arg(long, value_name = "T")]
    pub page_token: Option<String>,
    /// Walk every page.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct CountArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct LocateArgs {
    /// The patient's NHS number (10 digits; spaces or dashes allowed).
    #[arg(value_name = "NHS_NUMBER")]
    pub nhs_number: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

impl ClientCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Create(_) => "create",
            Self::Get(_) => "get",
            Self::Delete(_) => "delete",
            Self::Supersede(_) => "supersede",
            Self::Search(_) => "search",
            Self::Count(_) => "count",
            Self::Locate(_) => "locate",
            Self::Regions(_) => "regions",
            Self::Types(_) => "types",
            Self::Seed(_) => "seed",
            Self::Import(_) => "import",
            Self::Token(_) => "token",
            Self::Restrict(_) => "restrict",
            Self::AccessLog(_) => "access-log",
            Self::FederatedSearch(_) => "federated-search",
        }
    }
}

/// Why a client command failed. Each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Local input is wrong; the text names the file or flag.
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot connect to {server}: {detail}\n  is the server running? Start one with `nrl serve`, \
         or point --server (or {ENV_SERVER}) at it"
    )]
    Connect { server: String, detail: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
    /// The calls went through but part of the work did not (e.g. seed entries).
    #[error("{0}")]
    Incomplete(String),
    /// The work is done but some of its input was refused (import's refused lines).
    #[error("{0}")]
    Refused(String),
    /// Stopped by the user before the end.
    #[error("{0}")]
    Interrupted(String),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl ClientError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(EXIT_USAGE),
            Self::Connect { .. } | Self::Rpc(_) | Self::Incomplete(_) | Self::Output(_) => ExitCode::FAILURE,
            Self::Refused(_) => ExitCode::from(EXIT_REFUSED),
            Self::Interrupted(_) => ExitCode::from(EXIT_INTERRUPTED),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

/// The canonical gRPC name of a status code, as in the gRPC spec and `grpcurl`.
pub use crate::metrics::code_name;

/// Runs one client subcommand. Errors are printed to stderr as `nrl <cmd>: <what went wrong>`.
pub async fn run(command: ClientCommand) -> ExitCode {
    let name = command.name();
    match execute(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            note(&format!("nrl {name}: {error}"));
            error.exit_code()
        }
    }
}

async fn execute(command: ClientCommand) -> Result<(), ClientError> {
    match command {
        ClientCommand::Create(args) => create(args).await,
        ClientCommand::Get(args) => get(args).await,
        ClientCommand::Delete(args) => delete(args).await,
        ClientCommand::Supersede(args) => supersede(args).await,
        ClientCommand::Search(args) => search(args).await,
        ClientCommand::Count(args) => count(args).await,
        ClientCommand::Locate(args) => locate(args).await,
        ClientCommand::Regions(args) => regions(args).await,
        ClientCommand::Types(args) => types(args).await,
        ClientCommand::Seed(args) => seed::run(args).await,
        ClientCommand::Import(args) => import::run(args).await,
        ClientCommand::Token(args) => governance::token(args),
        ClientCommand::Restrict(args) => governance::restrict(args).await,
        ClientCommand::AccessLog(args) => governance::access_log(args).await,
        ClientCommand::FederatedSearch(args) => federation::federated_search(args).await,
    }
}

/// Opens a channel eagerly, so an unreachable server is reported as such (with the address tried)
/// rather than as an UNAVAILABLE from the first call.
/// The metadata every call carries: credentials and what the caller states about the call.
#[derive(Clone)]
pub struct CallMetadata {
    authorization: Option<MetadataValue<Ascii>>,
    purpose: MetadataValue<Ascii>,
    end_user: Option<MetadataValue<Ascii>>,
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        if let Some(token) = &self.authorization {
            metadata.insert("authorization", token.clone());
        }
        metadata.insert(crate::auth::PURPOSE_HEADER, self.purpose.clone());
        if let Some(user) = &self.end_user {
            metadata.insert(crate::auth::END_USER_HEADER, user.clone());
        }
        Ok(request)
    }
}

/// A connection whose every call carries the caller's metadata.
pub type Connection = InterceptedService<Channel, CallMetadata>;

fn metadata_value(value: &str, flag: &str) -> Result<MetadataValue<Ascii>, ClientError> {
    value.parse().map_err(|_| ClientError::Usage(format!("{flag} must be printable ASCII")))
}

fn read_file(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Usage(format!("{flag} {}: {e}", path.display())))
}

async fn connect(args: &ServerArgs) -> Result<Connection, ClientError> {
    let server = args.server.as_str();
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| ClientError::Usage(format!("--server {server:?} is not a valid url: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file(ca, "--ca-file")?));
        }
        match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read_file(cert, "--cert-file")?, read_file(key, "--key-file")?));
            }
            (None, None) => {}
            _ => return Err(ClientError::Usage("--cert-file and --key-file go together".into())),
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ClientError::Usage(format!("TLS settings for {server}: {}", error_chain(&e))))?;
    }
    let metadata = CallMetadata {
        authorization: args
            .token
            .as_deref()
            .map(|t| metadata_value(&format!("Bearer {}", t.trim()), "--token"))
            .transpose()?,
        purpose: metadata_value(&args.purpose, "--purpose")?,
        end_user: args.end_user.as_deref().map(|u| metadata_value(u, "--end-user")).transpose()?,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Connect { server: server.to_string(), detail: error_chain(&e) })?;
    Ok(InterceptedService::new(channel, metadata))
}

/// "transport error: tcp connect error: Connection refused (os error 111)": the outer message
/// alone ("transport error") does not say what happened.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

fn registry_client(channel: Connection) -> PointerRegistryClient<Connection> {
    PointerRegistryClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn locator_client(channel: Connection) -> RecordLocatorClient<Connection> {
    RecordLocatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Writes to stdout. A closed pipe (`nrl search ... | head`) ends output quietly instead of
/// panicking the way `println!` would.
fn emit(text: &str) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(ClientError::Output(e)),
    }
}

/// A line on stderr; if stderr itself is gone there is nowhere left to report that.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn emit_json(value: &serde_json::Value) -> Result<(), ClientError> {
    emit(&output::to_json_text(value))
}

fn read_pointer(path: &str) -> Result<pb::PointerInput, ClientError> {
    input::read_pointer(path).map_err(ClientError::Usage)
}

/// The pointer in a response, which the contract always sets; a server that leaves it out is
/// reported rather than trusted.
fn required<T>(value: Option<T>, what: &str) -> Result<T, ClientError> {
    value.ok_or_else(|| ClientError::Rpc(tonic::Status::internal(format!("the server's response has no {what}"))))
}

async fn create(args: CreateArgs) -> Result<(), ClientError> {
    let pointer = read_pointer(&args.file)?;
    let mut client = registry_client(connect(&args.server).await?);
    let response = client.create_pointer(pb::CreatePointerRequest { pointer: Some(pointer) }).await?.into_inner();
    if args.server.json {
        return emit_json(&output::create_json(&response));
    }
    let pointer = required(response.pointer.as_ref(), "pointer")?;
    let headline = if response.created {
        format!("created pointer {}\n", pointer.id)
    } else {
        format!("existing pointer {} (already registered with this producer_reference and content)\n", pointer.id)
    };
    emit(&(headline + &output::pointer_text(pointer)))
}

async fn get(args: GetArgs) -> Result<(), ClientError> {
    let mut client = registry_client(connect(&args.server).await?);
    let response = client.get_pointer(pb::GetPointerRequest { id: args.id }).await?.into_inner();
    if args.server.json {
        return emit_json(&output::get_json(&response));
    }
    emit(&output::pointer_text(required(response.pointer.as_ref(), "pointer")?))
}

async fn delete(args: DeleteArgs) -> Result<(), ClientError> {
    let mut client = registry_client(connect(&args.server).await?);
    let response = client
        .delete_pointer(pb::DeletePointerRequest { id: args.id, version: args.version.unwrap_or(0) })
        .await?
        .into_inner();
    if args.server.json {
        return emit_json(&output::delete_json(&response));
    }
    let pointer = required(response.pointer.as_ref(), "pointer")?;
    emit(&format!("deleted pointer {} (was version {})\n", pointer.id, pointer.version))
}

async fn supersede(args: SupersedeArgs) -> Result<(), ClientError> {
    let pointer = read_pointer(&args.file)?;
    let mut client = registry_client(connect(&args.server).await?);
    let response = client
        .supersede_pointer(pb::SupersedePointerRequest { pointer: Some(pointer), supersedes: args.old })
        .await?
        .into_inner();
    if args.server.json {
        return emit_json(&output::supersede_json(&response));
    }
    let pointer = required(response.pointer.as_ref(), "pointer")?;
    let mut text = if response.created {
        format!("created pointer {}\n", pointer.id)
    } else {
        format!("existing pointer {} (this supersession was already done)\n", pointer.id)
    };
    text += &output::pointer_text(pointer);
    for old in &response.superseded {
        text += &format!("superseded {} (now {}, version {})\n", old.id, output::status_name(old.status), old.version);
    }
    emit(&text)
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

async fn search(args: SearchArgs) -> Result<(), ClientError> {
    let mut client = registry_client(connect(&args.server).await?);
    let query = args.query.to_proto();
    let mut page_token = args.page_token.unwrap_or_default();
    let mut pointers = Vec::new();
    let mut pages = 0u32;
    let mut in_calls = Duration::ZERO;
    loop {
        let request = pb::SearchPointersRequest {
            query: Some(query.clone()),
            page_size: args.page_size.unwrap_or(0),
            page_token: std::mem::take(&mut page_token),
        };
        let started = Instant::now();
        let response = client.search_pointers(request).await?.into_inner();
        in_calls += started.elapsed();
        pages += 1;
        page_token = response.next_page_token;
        if args.server.json {
            pointers.extend(response.pointers);
        } else {
            // Text goes out page by page, so `--all` over a large record starts printing at once.
            emit(&output::pointer_lines(&response.pointers))?;
        }
        if !args.all || page_token.is_empty() {
            break;
        }
    }
    report_search_time(in_calls, pages);
    if args.server.json {
        emit_json(&output::search_json(&pointers, &page_token))
    } else if page_token.is_empty() {
        Ok(())
    } else {
        emit(&format!("next page token: {page_token}\n"))
    }
}

/// Round-trip time of the search calls alone (not connecting, not printing), for notes and
/// comparisons between backends.
fn report_search_time(in_calls: Duration, pages: u32) {
    if pages == 1 {
        note(&format!("search took {:.2} ms", millis(in_calls)));
    } else {
        note(&format!(
            "search took {:.2} ms over {pages} pages ({:.2} ms per page)",
            millis(in_calls),
            millis(in_calls) / f64::from(pages)
        ));
    }
}

async fn count(args: CountArgs) -> Result<(), ClientError> {
    let mut client = registry_client(connect(&args.server).await?);
    let response =
        client.count_pointers(pb::CountPointersRequest { query: Some(args.query.to_proto()) }).await?.into_inner();
    if args.server.json {
        return emit_json(&output::count_json(&response));
    }
    emit(&format!("{}\n", response.count))
}

async fn locate(args: LocateArgs) -> Result<(), ClientError> {
    let mut client = locator_client(connect(&args.server).await?);
    let response = client.locate_patient(pb::LocatePatientRequest { nhs_number: args.nhs_number }).await?.into_inner();
    if args.server.json {
        return emit_json(&output::locate_json(&response));
    }
    emit(&output::locate_text(&response))
}

async fn regions(args: ListArgs) -> Result<(), ClientError> {
    let mut client = locator_client(connect(&args.server).await?);
    let response = client.list_regions(pb::ListRegionsRequest {}).await?.into_inner();
    if args.server.json {
        return emit_json(&output::regions_json(&response));
    }
    emit(&output::regions_text(&response))
}

async fn types(args: ListArgs) -> Result<(), ClientError> {
    let mut client = locator_client(connect(&args.server).await?);
    let response = client.list_pointer_types(pb::ListPointerTypesRequest {}).await?.into_inner();
    if args.server.json {
        return emit_json(&output::types_json(&response));
    }
    emit(&output::types_text(&response))
}

/// An optional protobuf timestamp as RFC 3339.
fn rfc3339_of(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    output::rfc3339(ts)
}
