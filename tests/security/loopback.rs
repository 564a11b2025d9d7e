//! Authentication off: loopback only

use super::*;

#[derive(clap::Parser)]
struct ServeCommand {
    #[command(flatten)]
    serve: ServeArgs,
}

fn serve_config(args: &[&str]) -> Result<ServerConfig, String> {
    use clap::Parser;
    let parsed =
        ServeCommand::try_parse_from(std::iter::once("nrl").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    ServerConfig::try_from(parsed.serve).map_err(|e| e.to_string())
}

#[test]
fn without_authentication_the_server_listens_on_loopback_only() {
    for remote in ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051", "10.1.2.3:0"] {
        let err = serve_config(&["--listen", remote, "--admin-listen", "off", "--fhir-listen", "off"])
            .map(|_| ())
            .expect_err(remote);
        assert!(err.contains("loopback"), "{remote}: {err}");
    }
    for local in ["127.0.0.1:50051", "[::1]:50051", "127.0.0.2:0"] {
        serve_config(&["--listen", local, "--admin-listen", "off", "--fhir-listen", "off"])
            .unwrap_or_else(|e| panic!("{local}: {e}"));
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let secret = secret.display().to_string();
    let config =
        serve_config(&["--listen", "0.0.0.0:50051", "--admin-listen", "off", "--jwt-hs256-secret-file", &secret])
            .expect("with authentication any address is allowed");
    assert!(matches!(config.auth.authenticator, Authenticator::Enabled { .. }));
    let _ = std::fs::remove_dir_all(dir);

    // The real binary refuses to start, says why, and exits 64. Under the watchdog, so that a
    // binary that wrongly serves on 0.0.0.0 does not outlive the test.
    let dir = TempDir::new("nrl-security-loopback");
    let log = dir.join("nrl.log");
    let mut child = Watched::spawn(
        nrl_command().args(["serve", "--listen", "0.0.0.0:0", "--admin-listen", "off", "--fhir-listen", "off"]),
        &log,
    );
    let status =
        child.wait_timeout(Duration::from_secs(20)).expect("nrl serve on 0.0.0.0 without auth must exit, not serve");
    let stderr = read_log(&log);
    assert_eq!(status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("loopback"), "says why: {stderr}");
}

#[test]
fn without_authentication_the_fhir_listener_is_loopback_only_too() {
    for remote in ["0.0.0.0:8443", "[::]:8443", "192.0.2.10:8443"] {
        let err = serve_config(&["--admin-listen", "off", "--fhir-listen", remote]).map(|_| ()).expect_err(remote);
        assert!(err.contains(&format!("NRL_FHIR_LISTEN={remote}: authentication is off")), "{remote}: {err}");
        assert!(err.contains("loopback"), "{remote}: {err}");
    }
    let config = serve_config(&["--admin-listen", "off", "--fhir-listen", "127.0.0.1:8443"]).expect("loopback");
    assert_eq!(config.fhir.listen, Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8443))));
    let config = serve_config(&["--admin-listen", "off", "--fhir-listen", "off"]).expect("off");
    assert_eq!(config.fhir.listen, None);
    let err =
        serve_config(&["--listen", "127.0.0.1:50051", "--admin-listen", "off", "--fhir-listen", "127.0.0.1:50051"])
            .map(|_| ())
            .expect_err("the gRPC address");
    assert!(err.contains("the same address as --listen"), "{err}");

    let dir = TempDir::new("nrl-security-fhir-loopback");
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let secret = secret.display().to_string();
    let config =
        serve_config(&["--admin-listen", "off", "--fhir-listen", "0.0.0.0:8443", "--jwt-hs256-secret-file", &secret])
            .expect("with authentication the FHIR listener may listen anywhere");
    assert_eq!(config.fhir.listen.map(|a| a.ip().is_unspecified()), Some(true));
}
