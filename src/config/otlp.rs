//! `--otlp-endpoint` and `--otlp-service-name`: where traces go and what this node is called in
//! them, with the node's part in the federation as its resource attributes.

use super::{NodeConfig, ServeArgs};
use crate::otel::OtlpConfig;

/// What a good endpoint looks like, for the problem's message.
const EXPECTED: &str = "expected http://host:port or https://host:port, e.g. http://127.0.0.1:4317";

/// The trace export, if `--otlp-endpoint` names a collector. `node` is `None` when its own
/// settings were wrong (reported on their own).
pub(super) fn otlp_config(args: &ServeArgs, node: Option<&NodeConfig>) -> Result<Option<OtlpConfig>, Vec<String>> {
    let mut problems = Vec::new();
    let value = args.otlp_endpoint.trim();
    let endpoint = match value {
        "" | "off" => None,
        _ => endpoint(value).map_err(|e| problems.push(format!("{}{e}", args.name("otlp_endpoint")))).ok(),
    };
    let service_name = args.otlp_service_name.trim();
    if !crate::telemetry::is_log_safe(service_name) {
        problems.push(format!(
            "{}={service_name:?}: must be 1-64 characters from A-Z a-z 0-9 . _ : - with no ten digits in a row",
            args.name("otlp_service_name")
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(endpoint), Some(node)) = (endpoint, node) else { return Ok(None) };
    let role = match (node.national_index, &node.regions) {
        (true, _) => "national",
        (false, Some(_)) => "regional",
        (false, None) => "central",
    };
    let regions = node.regions.iter().flatten().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
    Ok(Some(OtlpConfig { endpoint, service_name: service_name.to_string(), role, regions }))
}

/// The collector's URL, or the rest of the problem after the setting's name (`="…": why`). A URL
/// with credentials is not echoed.
fn endpoint(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value.parse().map_err(|e| format!("={value:?}: {e} ({EXPECTED})"))?;
    let authority = uri.authority().ok_or_else(|| format!("={value:?}: no host ({EXPECTED})"))?;
    if authority.as_str().contains('@') {
        return Err(": must not hold credentials (send them as headers with OTEL_EXPORTER_OTLP_HEADERS)".into());
    }
    let problem = match uri.scheme_str() {
        Some("http" | "https") if authority.port().is_none() => "no port (OTLP/gRPC is usually 4317)",
        Some("http" | "https") if !matches!(uri.path(), "" | "/") || uri.query().is_some() => {
            "a path or query (OTLP/gRPC takes none)"
        }
        Some("http" | "https") => return Ok(uri),
        _ => "the scheme must be http or https",
    };
    Err(format!("={value:?}: {problem} ({EXPECTED})"))
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn an_endpoint_is_http_or_https_with_a_host_and_port_and_nothing_else() {
        for good in ["http://127.0.0.1:4317", "https://collector.example:4317", "http://[::1]:4317/"] {
            assert!(endpoint(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("127.0.0.1:4317", "the scheme must be http or https"),
            ("grpc://collector:4317", "the scheme must be http or https"),
            ("http://collector", "no port"),
            ("http://collector:4317/v1/traces", "a path or query"),
            ("http://collector:4317?x=1", "a path or query"),
            ("http://", "expected http://host:port"),
            ("not a url", "expected http://host:port"),
        ] {
            let problem = endpoint(bad).expect_err(bad);
            assert!(problem.contains(why), "{bad}: {problem}");
        }
        let secret = endpoint("http://user:hunter2@collector:4317").expect_err("credentials");
        assert!(!secret.contains("hunter2") && secret.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{secret}");
    }
}

#[cfg(test)]
mod flag_tests {
    use crate::config::{Origins, ServeArgs, ServerConfig};
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerConfig, Vec<String>> {
        let matches = Wrapper::command()
            .try_get_matches_from(std::iter::once("nrl").chain(args.iter().copied()))
            .map_err(|e| vec![e.to_string()])?;
        let mut wrapper = Wrapper::from_arg_matches(&matches).map_err(|e| vec![e.to_string()])?;
        wrapper.serve.origins = Origins::of(&matches);
        ServerConfig::try_from(wrapper.serve).map_err(|e| e.0)
    }

    #[test]
    fn traces_are_off_by_default_and_a_node_is_named_by_its_role_and_regions() {
        assert_eq!(parse(&[]).expect("defaults").otlp, None);
        assert_eq!(parse(&["--otlp-endpoint", "off"]).expect("off").otlp, None);
        let on = ["--otlp-endpoint", " http://127.0.0.1:4317 "];
        let central = parse(&on).expect("valid").otlp.expect("on");
        assert_eq!(central.endpoint, "http://127.0.0.1:4317");
        assert_eq!(
            (central.service_name.as_str(), central.role, central.regions.as_str()),
            ("nrl-registry", "central", "")
        );
        let regional = parse(&[&on[..], &["--node-regions", "QWO,QF7", "--otlp-service-name", "nrl-north"]].concat())
            .expect("valid")
            .otlp
            .expect("on");
        assert_eq!(
            (regional.service_name.as_str(), regional.role, regional.regions.as_str()),
            ("nrl-north", "regional", "QF7,QWO")
        );
        let national = parse(&[&on[..], &["--federation", "national"]].concat()).expect("valid").otlp.expect("on");
        assert_eq!(national.role, "national");
    }

    #[test]
    fn a_bad_endpoint_or_service_name_is_reported_naming_the_flag() {
        let problems = parse(&["--otlp-endpoint", "collector:4317", "--otlp-service-name", "nrl 9434765919"])
            .expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with(r#"--otlp-endpoint="collector:4317": "#), "{problems:?}");
        assert!(problems[1].starts_with(r#"--otlp-service-name="nrl 9434765919": must be"#), "{problems:?}");
    }
}
