//! Replays the `cargo fuzz` corpus of `proto/fuzz/corpus/datagram` on stable Rust, so
//! every input the fuzzer kept (and every crash it found, once fixed) stays a test.

use grove_proto::coap::{Config, Endpoint, Request, SendOptions};
use grove_proto::fuzzing;
use std::path::Path;
use std::time::Instant;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/datagram");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_input_is_handled_without_panic() {
    let inputs = corpus();
    assert!(inputs.len() >= 10, "the corpus lost its seeds");
    let mut reached = 0;
    for (name, data) in &inputs {
        let r = std::panic::catch_unwind(|| fuzzing::datagram(data));
        assert!(r.is_ok(), "corpus input {name} panics");
        reached += r.unwrap_or(0);
    }
    // The protected seeds must get through OSCORE: the corpus exercises the whole path.
    assert!(
        reached >= 2,
        "no corpus input reached the application ({reached})"
    );
}

/// Writes the seed inputs. Run by hand after changing the wire format:
/// `cargo test -p grove-proto --test fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn regenerate_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/datagram");
    std::fs::create_dir_all(&dir).unwrap();
    let now = Instant::now();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut client = Endpoint::new(Config {
        seed: 9,
        ..Config::default()
    });
    let key = client.add_context_params(&fuzzing::client_context());
    let hb = grove_proto::msg::Heartbeat {
        node: grove_proto::msg::NodeId(7),
        seq: 1,
        cpu_centi_pct: 100,
        mem_used_mib: 10,
        mem_total_mib: 100,
        disk_used_mib: 1,
        disk_total_mib: 2,
        running: 0,
        coord: grove_proto::msg::NetCoord([0.0, 1.0, 2.0]),
        digest: [1; 8],
        changes: vec![],
        instances: None,
        limits: None,
        changes_from: None,
    };
    let body = grove_proto::msg::to_cbor(&hb);
    for (name, req, secure) in [
        (
            "protected-heartbeat",
            Request::post_cbor("/v1/nodes/7/status", body.clone()),
            true,
        ),
        (
            "protected-observe",
            Request::observe("/v1/nodes/7/commands"),
            true,
        ),
        (
            "protected-block1",
            Request::post_cbor("/v1/nodes", vec![0x42; 3000]),
            true,
        ),
        ("plain-wellknown", Request::get("/.well-known/core"), false),
        (
            "plain-heartbeat",
            Request::post_cbor("/v1/nodes/7/status", body.clone()),
            false,
        ),
    ] {
        let opts = if secure {
            SendOptions::secure(key.clone())
        } else {
            SendOptions::default()
        };
        client.request(
            now,
            fuzzing::peer(),
            req,
            SendOptions {
                non_confirmable: true,
                ..opts
            },
        );
        seeds.push((name, client.poll_transmit().unwrap().data));
    }
    seeds.push(("cbor-heartbeat", body));
    seeds.push(("truncated", vec![0x40]));
    seeds.push(("bad-option-delta", vec![0x40, 0x01, 0x00, 0x01, 0xf0]));
    seeds.push((
        "reserved-szx",
        vec![0x40, 0x02, 0x00, 0x02, 0xd1, 0x0e, 0x0f],
    ));
    seeds.push((
        "oscore-option-garbage",
        vec![0x42, 0x02, 0x00, 0x03, 0xaa, 0xbb, 0x93, 0x1f, 0xff, 0xff],
    ));
    seeds.push(("ping", vec![0x40, 0x00, 0x12, 0x34]));
    for (name, data) in seeds {
        std::fs::write(dir.join(name), data).unwrap();
    }
}
