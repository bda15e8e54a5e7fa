//! aiocoap, with OSCORE credentials a user got from the root's HTTP API, lists that
//! user's applications over CoAP; without them, libcoap gets 4.01.

mod support;

use grove_tests::{aiocoap_python, interop_script, run, tool};
use std::time::Duration;
use support::{Root, scratch};

#[test]
fn aiocoap_lists_applications_over_coap_with_credentials_from_http() {
    let Some(py) = aiocoap_python() else { return };
    let Some(libcoap) = tool("coap-client-notls") else {
        return;
    };
    let dir = scratch("coap-api");
    let root = Root::start(&dir, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    root.deploy_seed(|_| {});
    let creds = root.api("POST", "/api/auth/coap", None);

    // The credentials are an aiocoap settings.json as they come.
    let ctx = dir.join("aiocoap-ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut settings = creds.clone();
    settings.as_object_mut().unwrap().remove("coap_port");
    std::fs::write(ctx.join("settings.json"), settings.to_string()).unwrap();
    let uri = format!("coap://127.0.0.1:{}/api/applications/", root.coap.port());
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
    drop((rt, root));
    std::fs::remove_dir_all(&dir).unwrap();
}
