//! A blocking WebSocket client over TLS for the console tests: the opening handshake on
//! HTTP/1.1, masked frames out, frames in.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct WsClient {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

/// The refusal of a handshake: status and body.
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

impl WsClient {
    /// Opens `path` (with its query) on 127.0.0.1:`port`, trusting the CA in `dir`, sending
    /// `headers` (authentication) with the upgrade request.
    pub fn connect(port: u16, dir: &Path, path: &str, headers: &[(&str, &str)]) -> Result<WsClient, Refused> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(dir.join("ssl/ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(c) = item.unwrap() {
                roots.add(rustls::pki_types::CertificateDer::from(c.der().to_vec())).unwrap();
            }
        }
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return Err(Refused(0, String::from_utf8_lossy(&head).into()));
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if status != 101 {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = s.read_exact(&mut body);
            return Err(Refused(status, String::from_utf8_lossy(&body).into()));
        }
        assert!(
            text.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "RFC 6455's accept key: {text}"
        );
        Ok(WsClient { s })
    }

    /// Sends one masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
        self.s.flush().unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(0x1, text.as_bytes());
    }

    pub fn send_binary(&mut self, data: &[u8]) {
        self.send(0x2, data);
    }

    /// The next frame: (opcode, payload); `None` once the connection closed.
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x0f, payload))
    }

    /// Reads data frames until their bytes (since the call) contain `needle`; all of it.
    pub fn recv_until(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.recv() {
                Some((0x1 | 0x2, p)) => seen.extend(p),
                Some((0x8, _)) | None => break,
                Some(_) => {}
            }
            if String::from_utf8_lossy(&seen).contains(needle) {
                return String::from_utf8_lossy(&seen).into();
            }
        }
        panic!("{needle:?} did not arrive within {within:?}; got {:?}", String::from_utf8_lossy(&seen));
    }

    /// Exactly `n` bytes of data, across frames.
    pub fn read_bytes(&mut self, n: usize, buf: &mut Vec<u8>) -> Vec<u8> {
        while buf.len() < n {
            match self.recv() {
                Some((0x1 | 0x2, p)) => buf.extend(p),
                Some((0x8, _)) | None => panic!("closed after {} of {n} bytes", buf.len()),
                Some(_) => {}
            }
        }
        buf.drain(..n).collect()
    }
}
