//! WebSocket (RFC 6455), server side, as much as the consoles need: the opening handshake
//! on an HTTP/1.1 upgrade, and messages read (unmasked, reassembled from fragments, pings
//! answered) and written (unfragmented, unmasked). Small enough not to need a crate.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ApiError;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message accepted from a client (a console sends keystrokes and pointer moves).
pub const MAX_MESSAGE: usize = 1 << 20;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The value of `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest =
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{GUID}").as_bytes());
    horcrux_core::ids::base64_encode(digest.as_ref())
}

/// Checks that `req` asks for a WebSocket and takes its upgrade: the 101 answer to send,
/// and the connection once it is sent.
pub fn upgrade(req: &mut Request) -> Result<(Response, hyper::upgrade::OnUpgrade), ApiError> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "this route is a WebSocket: send Upgrade: websocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return Err(ApiError::bad_field("Sec-WebSocket-Version", "only version 13 is supported"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| k.len() == 24)
        .ok_or_else(|| ApiError::bad_field("Sec-WebSocket-Key", "missing or malformed"))?
        .to_string();
    // noVNC and Proxmox's terminal ask for `binary`; whatever is offered, the first is taken.
    let offered: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = offered.iter().find(|p| *p == "binary").or(offered.first()).cloned();
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "this connection cannot be upgraded (HTTP/1.1 only)")
    })?;
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key(&key)).expect("base64 is a header value"),
    );
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        rh.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok((resp, on_upgrade))
}

/// One frame as read: (FIN, opcode, payload unmasked).
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
    if head[0] & 0x70 != 0 {
        return Err(bad("reserved bits set (no extension was agreed)"));
    }
    if head[1] & 0x80 == 0 {
        return Err(bad("a client frame must be masked"));
    }
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > limit as u64 {
        return Err(bad("message too large"));
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((fin, opcode, payload))
}

/// Writes one unfragmented frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(10);
    head.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= u16::MAX as usize => {
            head.push(126);
            head.extend((n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend((n as u64).to_be_bytes());
        }
    }
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// What reading a connection yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text or binary message, whole.
    Data(Vec<u8>),
    /// A ping's payload: the caller answers with a pong.
    Ping(Vec<u8>),
    /// The client closed (or sent a close frame).
    Close,
}

/// Reads the next message: fragments are joined, pongs skipped.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Message> {
    let mut data: Option<Vec<u8>> = None;
    loop {
        let (fin, opcode, payload) = match read_frame(r, MAX_MESSAGE).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Message::Close),
            Err(e) => return Err(e),
        };
        match opcode {
            OP_CLOSE => return Ok(Message::Close),
            OP_PING => return Ok(Message::Ping(payload)),
            OP_PONG => continue,
            OP_TEXT | OP_BINARY if data.is_none() => data = Some(payload),
            OP_CONT if data.is_some() => {
                let d = data.as_mut().expect("checked");
                if d.len() + payload.len() > MAX_MESSAGE {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"));
                }
                d.extend(payload);
            }
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected frame")),
        }
        if fin {
            return Ok(Message::Data(data.take().unwrap_or_default()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc6455s_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
        }
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[tokio::test]
    async fn messages_are_unmasked_and_reassembled() {
        let big = vec![7u8; 300];
        let mut wire = masked(false, OP_TEXT, b"hel");
        wire.extend(masked(true, OP_PONG, b""));
        wire.extend(masked(true, OP_CONT, b"lo"));
        wire.extend(masked(true, OP_PING, b"p"));
        wire.extend(masked(true, OP_BINARY, &big));
        wire.extend(masked(true, OP_CLOSE, b""));
        let mut r = &wire[..];
        assert_eq!(read_message(&mut r).await.unwrap(), Message::Data(b"hello".to_vec()));
        assert_eq!(read_message(&mut r).await.unwrap(), Message::Ping(b"p".to_vec()));
        assert_eq!(read_message(&mut r).await.unwrap(), Message::Data(big));
        assert_eq!(read_message(&mut r).await.unwrap(), Message::Close);
    }

    #[tokio::test]
    async fn unmasked_oversized_and_stray_frames_are_refused() {
        let mut unmasked: &[u8] = &[0x82, 0x01, 0x00];
        assert!(read_message(&mut unmasked).await.is_err());
        let mut huge = vec![0x82u8, 0x80 | 127];
        huge.extend((MAX_MESSAGE as u64 + 1).to_be_bytes());
        huge.extend([0u8; 4]);
        assert!(read_message(&mut &huge[..]).await.is_err());
        let stray = masked(true, OP_CONT, b"x");
        assert!(read_message(&mut &stray[..]).await.is_err());
    }

    #[tokio::test]
    async fn frames_are_written_with_the_right_length_encoding() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            write_frame(&mut out, OP_BINARY, &vec![9u8; n]).await.unwrap();
            assert_eq!(out[0], 0x82);
            let header = match n {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + n, "{n}");
        }
    }
}
