use super::*;

#[test]
fn method_labels_are_the_served_paths_and_nothing_else() {
    let methods = ServedMethods::from_descriptors();
    for served in [
        "/nrl.v1.PointerRegistry/CreatePointer",
        "/nrl.v1.RecordLocator/LocatePatient",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        assert_eq!(&*methods.label(served), served);
    }
    for unknown in ["/nrl.v1.PointerRegistry/Nope", "/9434765919", "", "/"] {
        assert_eq!(&*methods.label(unknown), OTHER_METHOD, "{unknown:?}");
    }
}

#[test]
fn every_code_has_its_spec_name() {
    for (number, name) in [(0, "OK"), (3, "INVALID_ARGUMENT"), (14, "UNAVAILABLE"), (16, "UNAUTHENTICATED")] {
        assert_eq!(code_name(Code::from_i32(number)), name);
    }
}

#[test]
fn calls_are_counted_by_method_and_code() {
    let metrics = Metrics::new("memory");
    let method = metrics.methods().label("/nrl.v1.PointerRegistry/GetPointer");
    metrics.rpc_started(&method);
    metrics.rpc_started(&method);
    metrics.rpc_finished(&method, Code::Ok, Duration::from_millis(2));
    let text = metrics.render().expect("render");
    let series = |name: &str| text.lines().find(|l| l.starts_with(name)).map(str::to_string);
    assert_eq!(
        series(r#"nrl_grpc_requests_total{grpc_method="/nrl.v1.PointerRegistry/GetPointer",grpc_code="OK"}"#)
            .as_deref(),
        Some(r#"nrl_grpc_requests_total{grpc_method="/nrl.v1.PointerRegistry/GetPointer",grpc_code="OK"} 1"#)
    );
    assert!(text.contains(r#"nrl_grpc_requests_in_flight{grpc_method="/nrl.v1.PointerRegistry/GetPointer"} 1"#));
    let bucket = |le: &str| {
        format!(
            r#"nrl_grpc_request_duration_seconds_bucket{{le="{le}",grpc_method="/nrl.v1.PointerRegistry/GetPointer"}}"#
        )
    };
    assert!(text.contains(&format!("{} 0", bucket("0.001"))), "{text}");
    assert!(text.contains(&format!("{} 1", bucket("0.0025"))), "2 ms falls in the 2.5 ms bucket: {text}");
    assert!(text.contains(&format!(r#"nrl_build_info{{version="{}""#, env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn refusals_are_counted_by_operation_and_code_from_fixed_lists() {
    let metrics = Metrics::new("memory");
    metrics.refusal(&Refusal::of("GetAccessLog", "PERMISSION_DENIED"));
    metrics.refusal(&Refusal::of("GetAccessLog", "PERMISSION_DENIED"));
    metrics.refusal(&Refusal::of("9434765919", "943 476 5919"));
    let text = metrics.render().expect("render");
    assert!(text.contains(r#"nrl_refusals_total{operation="GetAccessLog",code="PERMISSION_DENIED"} 2"#), "{text}");
    assert!(text.contains(r#"nrl_refusals_total{operation="other",code="other"} 1"#), "{text}");
    assert!(!text.contains("943"), "nothing unlisted reaches a label: {text}");
}
