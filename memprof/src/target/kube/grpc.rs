//! A minimal gRPC client over a unix socket: unary calls on HTTP/2 (`h2`), messages encoded
//! by prost. Enough for the container runtimes' list and get calls; no TLS, no compression, no
//! streaming. Each call opens its own connection on a current-thread runtime of its own (it runs
//! before memprof's runtime starts), bounded by a timeout.

use std::{path::Path, time::Duration};

use bytes::Bytes;

/// The largest response accepted (a list of a busy node's containers, with their OCI specs).
const MAX_RESPONSE: usize = 64 << 20;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("gRPC status {code}: {message}")]
    Status { code: u32, message: String },
    #[error("bad response: {0}")]
    Bad(String),
}

/// gRPC's NOT_FOUND.
pub const NOT_FOUND: u32 = 5;
/// gRPC's UNIMPLEMENTED (an unknown service or method).
pub const UNIMPLEMENTED: u32 = 12;

/// Calls `path` (`/package.Service/Method`) on the server at `socket` with `request` and the
/// extra request headers `metadata`; decodes the one response message.
pub fn unary<Req: prost::Message, Resp: prost::Message + Default>(
    socket: &Path,
    path: &str,
    metadata: &[(&str, &str)],
    request: &Req,
    timeout: Duration,
) -> Result<Resp, GrpcError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = rt.block_on(async {
        match tokio::time::timeout(timeout, call(socket, path, metadata, frame(request))).await {
            Ok(r) => r,
            Err(_) => Err(GrpcError::Timeout(timeout)),
        }
    })?;
    Resp::decode(unframe(&body)?).map_err(|e| GrpcError::Bad(format!("cannot decode the response: {e}")))
}

/// The length-prefixed message: a compression flag (0), the length (big endian), the message.
fn frame<M: prost::Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    m.encode(&mut buf).expect("a Vec grows");
    buf.into()
}

/// The message of a length-prefixed response body (exactly one, uncompressed).
fn unframe(body: &[u8]) -> Result<&[u8], GrpcError> {
    let bad = |s: &str| GrpcError::Bad(s.to_string());
    let head = body.get(..5).ok_or_else(|| bad("no message in the response"))?;
    if head[0] != 0 {
        return Err(bad("compressed response (not asked for)"));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    body.get(5..5 + len).ok_or_else(|| bad("response message cut short"))
}

async fn call(socket: &Path, path: &str, metadata: &[(&str, &str)], request: Bytes) -> Result<Vec<u8>, GrpcError> {
    let io = tokio::net::UnixStream::connect(socket).await?;
    let (client, connection) = h2::client::handshake(io).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = exchange(client, path, metadata, request).await;
    driver.abort();
    result
}

async fn exchange(
    client: h2::client::SendRequest<Bytes>,
    path: &str,
    metadata: &[(&str, &str)],
    request: Bytes,
) -> Result<Vec<u8>, GrpcError> {
    let mut client = client.ready().await?;
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", concat!("memprof/", env!("CARGO_PKG_VERSION")));
    for (k, v) in metadata {
        req = req.header(*k, *v);
    }
    let req = req.body(()).map_err(|e| GrpcError::Bad(format!("request: {e}")))?;
    let (response, mut send) = client.send_request(req, false)?;
    send.send_data(request, true)?;
    let response = response.await?;
    let (head, mut body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(GrpcError::Bad(format!("HTTP status {}", head.status)));
    }
    // A trailers-only response (an error) carries the status in its headers.
    check_status(&head.headers)?;
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if data.len() + chunk.len() > MAX_RESPONSE {
            return Err(GrpcError::Bad(format!("response larger than {MAX_RESPONSE} bytes")));
        }
        data.extend_from_slice(&chunk);
    }
    match body.trailers().await? {
        Some(trailers) => check_status(&trailers)?,
        None if head.headers.contains_key("grpc-status") => {}
        None => return Err(GrpcError::Bad("no grpc-status".into())),
    }
    Ok(data)
}

/// `grpc-status` (absent: no verdict yet) and `grpc-message` (percent-encoded).
fn check_status(headers: &http::HeaderMap) -> Result<(), GrpcError> {
    let Some(code) = headers.get("grpc-status") else {
        return Ok(());
    };
    let code: u32 = code
        .to_str()
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| GrpcError::Bad(format!("grpc-status {code:?}")))?;
    if code == 0 {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Err(GrpcError::Status { code, message })
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(a), Some(b)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((a * 16 + b) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Echo {
        #[prost(string, tag = "1")]
        text: String,
    }

    #[test]
    fn frames_and_statuses() {
        let f = frame(&Echo { text: "hi".into() });
        assert_eq!(&f[..5], &[0, 0, 0, 0, 4]);
        assert_eq!(Echo::decode(unframe(&f).unwrap()).unwrap().text, "hi");
        assert!(unframe(&f[..6]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
        assert_eq!(percent_decode(b"no%20such%2Fpod%"), "no such/pod%");
        let mut h = http::HeaderMap::new();
        assert!(check_status(&h).is_ok());
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert("grpc-message", "not%20found".parse().unwrap());
        match check_status(&h) {
            Err(GrpcError::Status {
                code: NOT_FOUND,
                message,
            }) => assert_eq!(message, "not found"),
            other => panic!("{other:?}"),
        }
    }
}
