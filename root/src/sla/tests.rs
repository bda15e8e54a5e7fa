use super::*;
use serde_json::json;

/// The seed's `deploy_curl_application` descriptor, verbatim.
pub(crate) fn seed() -> Value {
    json!({
      "sla_version" : "v2.0",
      "customerID" : "Admin",
      "applications" : [{
          "applicationID" : "",
          "application_name" : "clientsrvr",
          "application_namespace" : "test",
          "application_desc" : "Simple demo with curl client and Nginx server",
          "microservices" : [
            { "microserviceID": "", "microservice_name": "curl", "microservice_namespace": "test",
              "virtualization": "container", "cmd": ["sh", "-c", "tail -f /dev/null"],
              "memory": 100, "vcpus": 1, "vgpus": 0, "vtpus": 0, "bandwidth_in": 0, "bandwidth_out": 0,
              "storage": 0, "code": "docker.io/curlimages/curl:7.82.0", "state": "", "port": "9080",
              "added_files": [] },
            { "microserviceID": "", "microservice_name": "nginx", "microservice_namespace": "test",
              "virtualization": "container", "cmd": [], "memory": 100, "vcpus": 1, "vgpus": 0, "vtpus": 0,
              "bandwidth_in": 0, "bandwidth_out": 0, "storage": 0, "code": "docker.io/library/nginx:latest",
              "state": "", "port": "6080:60/tcp", "addresses": { "rr_ip": "10.30.30.30" }, "added_files": [] }
          ]
      }]
    })
}

fn errors_of(v: Value) -> Vec<String> {
    parse(&v)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_seed_descriptor_parses_unchanged() {
    let sla = parse(&seed()).expect("seed SLA is valid");
    let app = &sla.applications[0];
    assert_eq!(
        (app.name.as_str(), app.namespace.as_str()),
        ("clientsrvr", "test")
    );
    let (curl, nginx) = (&app.microservices[0], &app.microservices[1]);
    assert_eq!(curl.full_name(app), "clientsrvr.test.curl.test");
    assert_eq!(
        curl.ports,
        vec![PortMapping {
            host: 9080,
            container: 9080,
            protocol: Protocol::Tcp
        }]
    );
    assert_eq!(
        nginx.ports,
        vec![PortMapping {
            host: 6080,
            container: 60,
            protocol: Protocol::Tcp
        }]
    );
    assert_eq!(nginx.addresses.rr_ip, Some(Ipv4Addr::new(10, 30, 30, 30)));
    assert_eq!((curl.memory_mb, curl.millicpus), (100, 1000));
    assert_eq!(curl.cmd, ["sh", "-c", "tail -f /dev/null"]);
}

#[test]
fn a_bad_port_is_named_with_its_full_path() {
    let mut v = seed();
    v["applications"][0]["microservices"][1]["port"] = json!("70000");
    assert_eq!(
        errors_of(v),
        [r#"applications[0].microservices[1].port: "70000" is not a port"#]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut v = seed();
    let s = &mut v["applications"][0]["microservices"][0];
    s["memory"] = json!(-5);
    s["virtualization"] = json!("vm");
    s["environment"] = json!(["NOEQUALS"]);
    s.as_object_mut().unwrap().remove("code");
    v["applications"][0]["application_name"] = json!("has space");
    let errs = errors_of(v);
    for want in [
        "applications[0].microservices[0].memory: -5 is out of range",
        "applications[0].microservices[0].virtualization: \"vm\" is not container or unikernel",
        "applications[0].microservices[0].environment[0]: \"NOEQUALS\" is not KEY=VALUE",
        "applications[0].microservices[0].code: is required",
        "applications[0].application_name: \"has space\" must be 1 to 30 letters or digits",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn field_checks_table() {
    let cases: &[(&str, Value, &str)] = &[
        (
            "sla_version",
            json!("v1.0"),
            "sla_version: \"v1.0\" is not supported",
        ),
        (
            "customerID",
            json!(7),
            "customerID: must be a string, not 7",
        ),
        (
            "applications",
            json!([]),
            "applications: must hold at least one application",
        ),
        ("applications", json!({}), "applications: must be a list"),
    ];
    for (key, val, want) in cases {
        let mut v = seed();
        v[key] = val.clone();
        let errs = errors_of(v);
        assert!(errs.iter().any(|e| e.starts_with(want)), "{key}: {errs:?}");
    }
    let service_cases: &[(&str, Value, &str)] = &[
        (
            "addresses",
            json!({"rr_ip": "10.31.0.1"}),
            "addresses.rr_ip: \"10.31.0.1\" is not inside 10.30.0.0/16",
        ),
        (
            "addresses",
            json!({"closest_ip": "nope"}),
            "addresses.closest_ip: \"nope\" is not an IPv4 address",
        ),
        (
            "addresses",
            json!({"rr_ip_v6": "fdff:6000::1"}),
            "addresses.rr_ip_v6: \"fdff:6000::1\" is not inside fdff:2000::/21",
        ),
        ("port", json!("80/sctp"), "port: \"sctp\" is not tcp or udp"),
        ("port", json!("80;80"), "port: host port 80 is mapped twice"),
        ("port", json!("0:80"), "port: \"0\" is not a port"),
        (
            "port",
            json!("4789:80/udp"),
            "port: host port 4789 is one of Grove's own",
        ),
        (
            "port",
            json!("10100"),
            "port: host port 10100 is one of Grove's own",
        ),
        (
            "vcpus",
            json!("two"),
            "vcpus: must be a number, not \"two\"",
        ),
        ("vgpus", json!(1.5), "vgpus: 1.5 must be a whole number"),
        ("one_shot", json!("yes"), "one_shot: must be true or false"),
        (
            "stop_grace_s",
            json!(7200),
            "stop_grace_s: 7200 is out of range",
        ),
        (
            "stop_grace_s",
            json!(2.5),
            "stop_grace_s: 2.5 must be a whole number",
        ),
        ("cmd", json!(["ok", 3]), "cmd[1]: must be a string, not 3"),
        (
            "constraints",
            json!([{"type": "teleport"}]),
            "constraints[0].type: \"teleport\" is not direct, geo or latency",
        ),
        (
            "constraints",
            json!([{"type": "direct"}]),
            "constraints[0]: a direct constraint needs a cluster or a node",
        ),
        (
            "constraints",
            json!([{"type": "geo", "location": "91,0", "threshold": 5}]),
            "constraints[0].location: \"91,0\" is not \"lat,lon\"",
        ),
        (
            "constraints",
            json!([{"type": "geo", "location": "48.1,11.6"}]),
            "constraints[0].threshold: is required",
        ),
        (
            "code",
            json!("docker.io/a b"),
            "code: \"docker.io/a b\" is not an image reference",
        ),
        (
            "microservice_name",
            json!("curl"),
            "microservices[1].microservice_name: \"curl.test\" appears twice",
        ),
    ];
    for (key, val, want) in service_cases {
        let mut v = seed();
        v["applications"][0]["microservices"][1][key] = val.clone();
        let want = if want.starts_with("microservices") {
            format!("applications[0].{want}")
        } else {
            format!("applications[0].microservices[1].{want}")
        };
        let errs = errors_of(v);
        assert!(
            errs.iter().any(|e| e.starts_with(&want)),
            "{key}: want {want:?}, got {errs:?}"
        );
    }
}

#[test]
fn constraints_and_unknown_keys_are_kept() {
    let mut v = seed();
    let s = &mut v["applications"][0]["microservices"][0];
    s["constraints"] = json!([
        {"type": "direct", "cluster": "gpu", "node": "xavier1;xavier2"},
        {"type": "geo", "location": "48.26,11.67", "threshold": 20, "rigidness": 0.5},
        {"type": "latency", "area": "garching", "threshold": 15}
    ]);
    s["my_label"] = json!({"team": "edge"});
    let sla = parse(&v).unwrap();
    let ms = &sla.applications[0].microservices[0];
    assert_eq!(
        ms.constraints[0],
        Constraint::Direct {
            cluster: Some("gpu".into()),
            nodes: vec!["xavier1".into(), "xavier2".into()]
        }
    );
    assert!(
        matches!(ms.constraints[1], Constraint::Geo { threshold_km, .. } if threshold_km == 20.0)
    );
    assert!(
        matches!(&ms.constraints[2], Constraint::Latency { area: Some(a), threshold_ms, .. } if a == "garching" && *threshold_ms == 15.0)
    );
    assert_eq!(ms.extra["my_label"], json!({"team": "edge"}));
}

#[test]
fn ports_parse_every_form() {
    assert_eq!(
        parse_ports("80; 8080:80/udp ;443:8443/tcp").unwrap(),
        vec![
            PortMapping {
                host: 80,
                container: 80,
                protocol: Protocol::Tcp
            },
            PortMapping {
                host: 8080,
                container: 80,
                protocol: Protocol::Udp
            },
            PortMapping {
                host: 443,
                container: 8443,
                protocol: Protocol::Tcp
            },
        ]
    );
    assert_eq!(parse_ports("").unwrap(), vec![]);
    // The same host port over TCP and UDP is two mappings, not a clash.
    assert_eq!(parse_ports("53/udp;53/tcp").unwrap().len(), 2);
}
