//! An instance's log, read on the cluster's request (`POST /v1/logs`): the agent keeps
//! no log service of its own, it reads the file the supervisor writes.

use grove_proto::coap::{Code, Response};
use grove_proto::msg::{self, LogAsk, LogChunk};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The most bytes one answer carries (block-wise transfer carries them in 1 KiB blocks).
pub const MAX_CHUNK: u32 = 64 << 10;

/// Read what `ask` names from the logs under `containers`.
pub fn read(containers: &Path, ask: &LogAsk) -> Result<LogChunk, String> {
    let id = crate::native::container_id(&ask.instance);
    let path = containers.join(&id).join("log");
    let mut f = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no log of instance {} of service {} on this worker",
            ask.instance.instance, ask.instance.service
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let max = u64::from(ask.max.clamp(1, MAX_CHUNK));
    let start = match ask.from {
        // Past the end: the older half was cut off; the log starts again at 0.
        Some(from) if from > len => 0,
        Some(from) => from,
        None => len.saturating_sub(max),
    };
    f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    f.take(max)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    let eof = start + data.len() as u64 >= len;
    Ok(LogChunk {
        instance: ask.instance.clone(),
        offset: start,
        data,
        eof,
    })
}

/// The `POST /v1/logs` handler's answer.
pub fn answer(containers: &Path, body: &[u8]) -> Response {
    let ask: LogAsk = match msg::from_cbor(body) {
        Ok(a) => a,
        Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
    };
    match read(containers, &ask) {
        Ok(chunk) => Response::cbor(msg::to_cbor(&chunk)),
        Err(e) => Response::error(Code::NOT_FOUND, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grove_proto::msg::InstanceRef;

    fn ask(from: Option<u64>, max: u32) -> LogAsk {
        LogAsk {
            instance: InstanceRef {
                service: "0123456789abcdef01234567".into(),
                instance: 2,
            },
            from,
            max,
        }
    }

    #[test]
    fn the_tail_then_what_follows_and_a_cut_log_from_its_start() {
        let dir = std::env::temp_dir().join(format!("grove-logs-{}", std::process::id()));
        let c = dir.join(crate::native::container_id(&ask(None, 1).instance));
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("log"), b"one\ntwo\nthree\n").unwrap();
        let tail = read(&dir, &ask(None, 6)).unwrap();
        assert_eq!(
            (tail.offset, &tail.data[..], tail.eof),
            (8, &b"three\n"[..], true)
        );
        let part = read(&dir, &ask(Some(0), 4)).unwrap();
        assert_eq!((&part.data[..], part.eof), (&b"one\n"[..], false));
        std::fs::write(c.join("log"), b"four\n").unwrap();
        let cut = read(&dir, &ask(Some(14), 100)).unwrap();
        assert_eq!((cut.offset, &cut.data[..]), (0, &b"four\n"[..]));
        let none = read(&dir, &ask(Some(5), 100)).unwrap();
        assert!(none.data.is_empty() && none.eof);
        let missing = LogAsk {
            instance: InstanceRef {
                service: "x".into(),
                instance: 0,
            },
            ..ask(None, 1)
        };
        assert!(
            read(&dir, &missing)
                .unwrap_err()
                .contains("no log of instance 0")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
