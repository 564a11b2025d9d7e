//! Credentials for the security and audit tests: HS256 tokens for any role, an interceptor that
//! sends a token with the purpose of use and end user, clients for all four protected services,
//! a TLS test server, a throwaway PKI (rcgen) for mTLS, and HTTPS clients for the FHIR listener.

use nrl_registry::auth::jwt::{mint_hs256, Claims, JwtVerifier, VerifyingKey};
use nrl_registry::auth::Authenticator;
use nrl_registry::config::{AuthConfig, ServerConfig, StoreConfig, TlsMaterial};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::audit_log_client::AuditLogClient;
use nrl_registry::proto::nrl::v1::patient_admin_client::PatientAdminClient;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use nrl_registry::store::redis::RedisConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// The HS256 secret every JWT test server accepts (≥ 32 bytes, as the verifier requires).
pub const SECRET: &[u8] = b"security-suite-hs256-secret-0123456789abcdef";
pub const ISSUER: &str = "https://idp.security-suite.test";
pub const AUDIENCE: &str = "nrl-registry";

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Claims valid for ten minutes; all pointer types and regions.
pub fn claims(sub: &str, org: &str, roles: &[&str]) -> Claims {
    Claims {
        sub: sub.into(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        exp: now() + 600,
        nbf: None,
        org: org.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        pointer_types: None,
        regions: None,
        nhs_number: None,
    }
}

/// A patient portal's token, acting for `patient`.
pub fn portal_token(sub: &str, org: &str, patient: &str) -> String {
    let mut c = claims(sub, org, &["portal"]);
    c.nhs_number = Some(patient.into());
    mint(&c)
}

pub fn mint(claims: &Claims) -> String {
    mint_hs256(SECRET, claims).expect("mint an HS256 test token")
}

/// A token for `sub` at `org` with `roles`, limited to `types` when given.
pub fn token(sub: &str, org: &str, roles: &[&str], types: Option<&[&str]>) -> String {
    let mut c = claims(sub, org, roles);
    c.pointer_types = types.map(|t| t.iter().map(|s| s.to_string()).collect());
    mint(&c)
}

/// Authentication by HS256 tokens (SECRET, ISSUER, AUDIENCE), no TLS.
pub fn jwt_auth() -> AuthConfig {
    let verifier =
        JwtVerifier::new(vec![VerifyingKey::Hs256Secret(SECRET.to_vec())], ISSUER, AUDIENCE).expect("HS256 verifier");
    AuthConfig { authenticator: Authenticator::Enabled { jwt: Some(Arc::new(verifier)), mtls: None }, tls: None }
}

/// `ServerConfig::for_tests()` with JWT authentication on `store`.
pub fn jwt_server_config(store: StoreConfig) -> ServerConfig {
    let mut config = ServerConfig::for_tests();
    config.store = store;
    config.auth = jwt_auth();
    config
}

/// The store config for a harness Redis url (a generous timeout for a loaded CI machine).
pub fn redis_store(url: &str) -> StoreConfig {
    let mut config = RedisConfig::parse(url).expect("harness url");
    config.timeout = Duration::from_secs(3);
    StoreConfig::Redis(config)
}

/// What a client sends with every call: `authorization`, `x-purpose-of-use`, `x-end-user`.
/// Raw bytes, so tests can send malformed headers too.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub authorization: Option<Vec<u8>>,
    pub purpose: Option<Vec<u8>>,
    pub end_user: Option<Vec<u8>>,
}

impl Credentials {
    /// `authorization: Bearer <token>` with purpose `direct-care`.
    pub fn bearer(token: &str) -> Self {
        Self::authorization(&format!("Bearer {token}")).purpose("direct-care")
    }

    /// Any `authorization` value, no purpose.
    pub fn authorization(value: &str) -> Self {
        Self { authorization: Some(value.as_bytes().to_vec()), ..Self::default() }
    }

    /// No credentials at all (but a purpose, so only authentication can fail).
    pub fn anonymous() -> Self {
        Self::default().purpose("direct-care")
    }

    pub fn purpose(mut self, purpose: &str) -> Self {
        self.purpose = Some(purpose.as_bytes().to_vec());
        self
    }

    pub fn without_purpose(mut self) -> Self {
        self.purpose = None;
        self
    }

    pub fn end_user(mut self, end_user: &str) -> Self {
        self.end_user = Some(end_user.as_bytes().to_vec());
        self
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (name, value) in [
            ("authorization", &self.authorization),
            ("x-purpose-of-use", &self.purpose),
            ("x-end-user", &self.end_user),
        ] {
            if let Some(bytes) = value {
                let value = AsciiMetadataValue::try_from(bytes.as_slice())
                    .unwrap_or_else(|e| panic!("test header {name} cannot be sent: {e}"));
                request.metadata_mut().insert(name, value);
            }
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Credentials>;

/// Clients of the four protected services, all sending the same credentials.
#[derive(Clone)]
pub struct Clients {
    pub registry: PointerRegistryClient<Authed>,
    pub locator: RecordLocatorClient<Authed>,
    pub admin: PatientAdminClient<Authed>,
    pub audit: AuditLogClient<Authed>,
}

impl Clients {
    pub fn new(channel: &Channel, credentials: Credentials) -> Self {
        Self {
            registry: PointerRegistryClient::with_interceptor(channel.clone(), credentials.clone()),
            locator: RecordLocatorClient::with_interceptor(channel.clone(), credentials.clone()),
            admin: PatientAdminClient::with_interceptor(channel.clone(), credentials.clone()),
            audit: AuditLogClient::with_interceptor(channel.clone(), credentials),
        }
    }

    /// Clients bearing `token` with purpose `direct-care`.
    pub fn bearer(channel: &Channel, token: &str) -> Self {
        Self::new(channel, Credentials::bearer(token))
    }

    /// The export from just after `after` (`""`: from the start), without following.
    pub async fn export(&mut self, after: &str) -> Result<Vec<pb::AuditEvent>, Status> {
        let request = pb::StreamAuditEventsRequest { after: after.into(), follow: false };
        let mut stream = self.audit.stream_audit_events(request).await?.into_inner();
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                Ok(Some(event)) => events.push(event?),
                Ok(None) => return Ok(events),
                Err(_) => panic!("a non-following export stream did not end within 30 s"),
            }
        }
    }
}

/// A registry server that may speak TLS: started on 127.0.0.1:0 without connecting to it
/// (`TestServer::start_with` connects over plaintext, which a TLS server refuses).
pub struct RawServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), nrl_registry::server::ServeError>>>,
}

impl RawServer {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nrl_registry::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task panicked").expect("server stops cleanly");
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertAndKey {
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// A throwaway certificate authority with a server certificate for 127.0.0.1 and localhost.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub server: CertAndKey,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = params.self_signed(&key).expect("self-signed CA");
        let issuer = Issuer::new(params, key);
        let server = Self::leaf(&issuer, "localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        Self { ca_pem: ca.pem(), issuer, server }
    }

    /// A client certificate with subject common name `common_name`.
    pub fn client(&self, common_name: &str) -> CertAndKey {
        Self::leaf(&self.issuer, common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        issuer: &Issuer<'static, KeyPair>,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> CertAndKey {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, issuer).expect("sign leaf certificate");
        CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    pub fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }

    /// Server TLS with this PKI's server certificate, without client certificates.
    pub fn server_tls(&self) -> TlsMaterial {
        let server = &self.server;
        TlsMaterial::new(server.cert_pem.clone().into(), server.key_pem.clone().into(), None, false)
            .expect("the test PKI makes valid server TLS")
    }

    /// Server TLS asking for client certificates signed by this PKI's CA (`optional`: a client
    /// may also connect without one, as when bearer tokens are accepted too).
    pub fn mtls(&self, optional: bool) -> TlsMaterial {
        let server = &self.server;
        let ca = Some(self.ca_pem.clone().into());
        TlsMaterial::new(server.cert_pem.clone().into(), server.key_pem.clone().into(), ca, optional)
            .expect("the test PKI makes valid mTLS")
    }
}

/// An HTTPS client (HTTP/1.1 over rustls) trusting only `ca_pem`, presenting `client` when given.
pub fn https_client(ca_pem: &str, client: Option<&CertAndKey>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .https_only(true)
        .timeout(Duration::from_secs(10));
    if let Some(client) = client {
        let pem = format!("{}{}", client.cert_pem, client.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity PEM"));
    }
    builder.build().expect("HTTPS client")
}

/// A TLS channel to `addr` trusting `ca_pem`, presenting `client` when given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&CertAndKey>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(client.identity());
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)?
        .connect()
        .await
}
