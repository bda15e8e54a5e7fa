//! aiocoap, with OSCORE credentials a user got from the root's HTTP API, lists that
//! user's applications over CoAP; without them, libcoap gets 4.01.

use clap::Parser;
use grove_tests::{aiocoap_python, interop_script, run, tool};
use serde_json::{Value, json};
use std::time::Duration;

fn http(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
    let mut req = ureq::request(method, &format!("{base}{path}")).timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    r.into_json().unwrap()
}

fn seed() -> Value {
    serde_json::from_str(include_str!("../../root/tests/seed_sla.json")).unwrap()
}

#[test]
fn aiocoap_lists_applications_over_coap_with_credentials_from_http() {
    let Some(py) = aiocoap_python() else { return };
    let Some(libcoap) = tool("coap-client-notls") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("grove-root-coapapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = grove_root::Args::parse_from([
        "grove-root",
        "--data-dir",
        dir.to_str().unwrap(),
        "--admin-password",
        "Admin",
        "--http",
        "127.0.0.1:0",
        "--coap",
        "127.0.0.1:0",
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(grove_root::start(&args)).unwrap();
    let base = format!("http://{}", r.http);
    let login = http(
        &base,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "Admin", "password": "Admin"})),
    );
    let t = login["token"].as_str().unwrap().to_owned();
    http(&base, "POST", "/api/application/", Some(&t), Some(seed()));
    let creds = http(&base, "POST", "/api/auth/coap", Some(&t), None);

    // The credentials are an aiocoap settings.json as they come.
    let ctx = dir.join("aiocoap-ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut settings = creds.clone();
    settings.as_object_mut().unwrap().remove("coap_port");
    std::fs::write(ctx.join("settings.json"), settings.to_string()).unwrap();
    let uri = format!("coap://127.0.0.1:{}/api/applications/", r.coap.port());
    let out = rt.block_on(run(
        &py,
        &[
            interop_script("aiocoap_client.py").to_str().unwrap(),
            ctx.to_str().unwrap(),
            &uri,
        ],
        Duration::from_secs(40),
    ));
    assert!(out.success, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("payload_hex"))
        .expect("a response line");
    assert!(line.contains("\"code\": \"2.05\""), "{line}");
    let hex = line
        .split("\"payload_hex\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let apps = grove_root::coap_api::cbor_to_json(&bytes).unwrap();
    assert_eq!(apps[0]["application_name"], "clientsrvr", "{apps}");

    // Without credentials: 4.01 and nothing listed.
    let out = rt.block_on(run(&libcoap, &["-m", "get", &uri], Duration::from_secs(30)));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("4.01"), "{text}");
    assert!(!text.contains("clientsrvr"));
    drop(rt);
    std::fs::remove_dir_all(&dir).unwrap();
}
