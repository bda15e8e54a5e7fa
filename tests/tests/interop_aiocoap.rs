//! OSCORE interop with aiocoap (PyPI `aiocoap[oscore]`), in both directions.

use grove_proto::coap::driver::{Handle, Router};
use grove_proto::coap::{Code, Config, ContextKey, Method, Request, Response, SendOptions};
use grove_proto::oscore::{ContextParams, SecurityContext};
use grove_tests::{aiocoap_python, client, interop_script, pattern, run, serve};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(40);
const SECRET: &str = "0102030405060708090a0b0c0d0e0f10";
const SALT: &str = "9e7ca92223786340";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An aiocoap context directory for (sender, recipient) ids and a secret.
fn aiocoap_ctx(name: &str, sender: &str, recipient: &str, secret: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("grove-aiocoap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let settings = format!(
        r#"{{"sender-id_hex": "{sender}", "recipient-id_hex": "{recipient}", "secret_hex": "{secret}", "salt_hex": "{SALT}", "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256"}}"#
    );
    std::fs::write(dir.join("settings.json"), settings).unwrap();
    dir
}

fn grove_ctx(sender: &str, recipient: &str, secret: &str) -> SecurityContext {
    SecurityContext::in_memory(&ContextParams {
        master_secret: unhex(secret),
        master_salt: unhex(SALT),
        sender_id: unhex(sender),
        recipient_id: unhex(recipient),
        id_context: None,
    })
}

struct Line {
    code: Option<String>,
    payload: Vec<u8>,
    error: Option<String>,
}

fn parse_lines(stdout: &str) -> Vec<Line> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let field = |k: &str| {
                l.split(&format!("\"{k}\": \""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_owned)
            };
            Line {
                code: field("code"),
                payload: field("payload_hex").map(|h| unhex(&h)).unwrap_or_default(),
                error: field("error"),
            }
        })
        .collect()
}

async fn protected_grove_server(hits: Arc<AtomicUsize>) -> Handle {
    let h1 = hits.clone();
    let h2 = hits.clone();
    let router = Router::new()
        .route(Method::Get, "/secure/hello", move |inc| {
            let hits = h1.clone();
            async move {
                assert!(inc.security.is_some());
                hits.fetch_add(1, Ordering::SeqCst);
                Response::content(b"hello from grove".to_vec(), Some(0))
            }
        })
        .route(Method::Get, "/secure/big", move |_| {
            let hits = h2.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                Response::content(pattern(5000), Some(0))
            }
        })
        .observable("/secure/counter", |_| async {
            Response::content(b"0".to_vec(), Some(0))
        });
    let server = serve(router, Config::default()).await;
    server
        .add_context(grove_ctx("5e", "0c", SECRET))
        .await
        .unwrap();
    server
}

async fn aiocoap_get(ctx: &Path, uri: &str, observe: usize) -> (bool, Vec<Line>, String) {
    let py = aiocoap_python().unwrap();
    let script = interop_script("aiocoap_client.py");
    let n = observe.to_string();
    let mut args = vec![script.to_str().unwrap(), ctx.to_str().unwrap(), uri];
    if observe > 0 {
        args.extend(["--observe", &n]);
    }
    let out = run(&py, &args, LIMIT).await;
    (
        out.success,
        parse_lines(&out.stdout),
        format!("{}\n{}", out.stdout, out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_reaches_protected_grove_resources() {
    if aiocoap_python().is_none() {
        return;
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let server = protected_grove_server(hits.clone()).await;
    let base = format!("coap://{}", server.local_addr());
    let ctx = aiocoap_ctx("client-ok", "0c", "5e", SECRET);

    let (ok, lines, all) = aiocoap_get(&ctx, &format!("{base}/secure/hello"), 0).await;
    assert!(ok, "{all}");
    assert_eq!(lines[0].code.as_deref(), Some("2.05"), "{all}");
    assert_eq!(lines[0].payload, b"hello from grove");

    let (ok, lines, all) = aiocoap_get(&ctx, &format!("{base}/secure/big"), 0).await;
    assert!(ok, "{all}");
    assert!(
        lines[0].payload == pattern(5000),
        "block-wise body differs: {all}"
    );

    let notifier = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 1..=600 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                server
                    .notify(
                        "/secure/counter",
                        Response::content(format!("n{i:03}").into_bytes(), Some(0)),
                    )
                    .await;
            }
        })
    };
    let (ok, lines, all) = aiocoap_get(&ctx, &format!("{base}/secure/counter"), 3).await;
    notifier.abort();
    assert!(ok, "{all}");
    assert_eq!(lines.len(), 4, "registration + 3 notifications: {all}");
    let values: Vec<String> = lines[1..]
        .iter()
        .map(|l| String::from_utf8_lossy(&l.payload).into_owned())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "notifications out of order: {values:?}"
    );
    assert!(hits.load(Ordering::SeqCst) >= 2);
    let _ = std::fs::remove_dir_all(ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_with_a_wrong_key_is_refused() {
    if aiocoap_python().is_none() {
        return;
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let server = protected_grove_server(hits.clone()).await;
    let wrong = "ff02030405060708090a0b0c0d0e0f10";
    let ctx = aiocoap_ctx("client-wrong", "0c", "5e", wrong);
    let (ok, lines, all) = aiocoap_get(
        &ctx,
        &format!("coap://{}/secure/hello", server.local_addr()),
        0,
    )
    .await;
    let got_payload = lines.iter().any(|l| l.payload == b"hello from grove");
    assert!(!got_payload, "wrong key got the resource: {all}");
    assert!(
        !ok || lines.iter().all(|l| l.code.as_deref() != Some("2.05")),
        "{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.error.is_some() || l.code.as_deref().is_some_and(|c| c.starts_with('4'))),
        "{all}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(server.stats().await.oscore_rejected >= 1);
    let _ = std::fs::remove_dir_all(ctx);
}

struct AiocoapServer {
    addr: SocketAddr,
    _child: tokio::process::Child,
    dir: PathBuf,
}

async fn aiocoap_server(name: &str) -> Option<AiocoapServer> {
    let py = aiocoap_python()?;
    let dir = aiocoap_ctx(name, "5e", "0c", SECRET);
    // Another test may take the port between our probe and aiocoap's bind: try again
    // with a new one (the server speaks only UDP, so only UDP ports matter).
    let mut last = None;
    for _ in 0..5 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(&py)
            .arg(interop_script("aiocoap_server.py"))
            .arg(&dir)
            .arg(port.to_string())
            .env("AIOCOAP_SERVER_TRANSPORT", "udp6")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiocoap server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(LIMIT, lines.next_line()).await;
        if matches!(ready, Ok(Ok(Some(ref l))) if l == "ready") {
            return Some(AiocoapServer {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _child: child,
                dir,
            });
        }
        last = Some(format!("{ready:?}"));
    }
    panic!("aiocoap server did not start: {last:?}");
}

async fn grove_client(secret: &str) -> (Handle, ContextKey) {
    let c = client(Config::default()).await;
    let key = c.add_context(grove_ctx("0c", "5e", secret)).await.unwrap();
    (c, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grove_reaches_an_aiocoap_oscore_server() {
    let Some(server) = aiocoap_server("server-ok").await else {
        return;
    };
    let (c, key) = grove_client(SECRET).await;
    let opts = SendOptions::secure(key);

    let r = c
        .request(server.addr, Request::get("/hello"), opts.clone())
        .await
        .unwrap();
    assert_eq!(
        (r.code, r.payload.as_slice()),
        (Code::CONTENT, &b"hello from aiocoap"[..])
    );

    let r = c
        .request(server.addr, Request::get("/big"), opts.clone())
        .await
        .unwrap();
    assert_eq!(r.code, Code::CONTENT);
    assert!(
        r.payload == pattern(5000),
        "block-wise body differs ({} bytes)",
        r.payload.len()
    );

    let mut obs = c
        .observe(server.addr, Request::get("/counter"), opts.clone())
        .await
        .unwrap();
    assert_eq!(obs.first.code, Code::CONTENT);
    assert!(
        obs.first.observe.is_some(),
        "aiocoap accepted the observation"
    );
    let mut values = vec![
        String::from_utf8_lossy(&obs.first.payload)
            .parse::<u64>()
            .unwrap(),
    ];
    for _ in 0..3 {
        let n = tokio::time::timeout(LIMIT, obs.notifications.recv())
            .await
            .unwrap()
            .expect("notification");
        values.push(String::from_utf8_lossy(&n.payload).parse().unwrap());
    }
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "notifications not increasing: {values:?}"
    );
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiocoap_server_refuses_a_grove_client_with_a_wrong_key() {
    let Some(server) = aiocoap_server("server-wrong").await else {
        return;
    };
    let (c, key) = grove_client("ff02030405060708090a0b0c0d0e0f10").await;
    let r = c
        .request(
            server.addr,
            Request::get("/hello"),
            SendOptions::secure(key),
        )
        .await;
    match r {
        Ok(resp) => {
            assert!(resp.code.class() == 4, "expected a 4.xx, got {}", resp.code);
            assert_ne!(resp.payload, b"hello from aiocoap");
        }
        Err(e) => panic!("expected aiocoap's error response, got {e}"),
    }
    assert!(c.stats().await.oscore_rejected >= 1);
    let _ = std::fs::remove_dir_all(&server.dir);
    let _ = hex(&[]);
}
