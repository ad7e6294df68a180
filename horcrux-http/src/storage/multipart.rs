//! A streaming `multipart/form-data` reader for Proxmox's upload: the text fields before
//! the file are collected, the file's bytes are passed on as a body as they arrive (never
//! held whole), and its end is passed on only once the closing boundary is seen, so a
//! truncated upload reaches the receiver as an error, not as a shorter file.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;

/// What the reader found before the file: the fields, the file part's name, and its bytes.
pub(crate) struct Upload {
    pub fields: BTreeMap<String, String>,
    /// The file part's `filename`.
    pub file_name: String,
    pub file: Body,
}

/// The longest text field kept, and the most header bytes a part may have.
const FIELD_MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 16 * 1024;

type Stream = axum::body::BodyDataStream;

struct Reader {
    stream: Stream,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads more into the buffer; `false` at the end of the body.
    async fn fill(&mut self) -> Result<bool, String> {
        match self.stream.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(format!("the upload was cut off: {e}")),
            None => Ok(false),
        }
    }

    /// The bytes up to `needle` (consumed with it), reading at most `max` bytes.
    async fn until(&mut self, needle: &[u8], max: usize) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf, needle) {
                let out = self.buf[..i].to_vec();
                self.buf.drain(..i + needle.len());
                return Ok(out);
            }
            if self.buf.len() > max + needle.len() {
                return Err("a multipart field or header is too long".into());
            }
            if !self.fill().await? {
                return Err("the multipart body ended early".into());
            }
        }
    }

    /// At least `n` bytes buffered, or an error.
    async fn need(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err("the multipart body ended early".into());
            }
        }
        Ok(())
    }
}

/// `boundary=` of a `multipart/form-data` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    if !content_type.trim_start().to_ascii_lowercase().starts_with("multipart/form-data") {
        return None;
    }
    content_type.split(';').find_map(|p| {
        let v = p.trim().strip_prefix("boundary=")?;
        Some(v.trim_matches('"').to_string()).filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// A part's `name` and `filename` from its headers.
fn disposition(headers: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(headers);
    let line =
        text.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:")).unwrap_or("");
    let param = |key: &str| {
        line.split(';').find_map(|p| {
            let v = p.trim().strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
    };
    (param("name"), param("filename"))
}

/// Reads the fields up to the file part; the file's bytes follow in `Upload::file`.
pub(crate) async fn read(content_type: &str, body: Body) -> Result<Upload, String> {
    let boundary = boundary(content_type).ok_or("expected a multipart/form-data body with a boundary")?;
    let mut r = Reader { stream: body.into_data_stream(), buf: Vec::new() };
    let first = format!("--{boundary}");
    r.until(first.as_bytes(), HEADERS_MAX).await?;
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let mut fields = BTreeMap::new();
    let file_name;
    loop {
        // After a boundary: `--` ends the body, CRLF starts a part.
        r.need(2).await?;
        if r.buf.starts_with(b"--") {
            return Err("filename: the upload holds no file".into());
        }
        r.buf.drain(..2);
        let headers = r.until(b"\r\n\r\n", HEADERS_MAX).await?;
        let (name, filename) = disposition(&headers);
        let name = name.ok_or("a multipart part without a name")?;
        if let Some(f) = filename {
            file_name = f;
            break;
        }
        let value = r.until(&delimiter, FIELD_MAX).await?;
        let value = String::from_utf8(value).map_err(|_| format!("{name}: not UTF-8"))?;
        fields.insert(name, value);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(pump(r, delimiter, tx));
    // Fused: the layers around a body may poll it again after its end.
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
            .fuse();
    Ok(Upload { fields, file_name, file: Body::from_stream(stream) })
}

/// Passes the file part's bytes on; ends the stream only after the closing boundary, and
/// with an error if the body ends early or another part follows the file.
async fn pump(
    mut r: Reader,
    delimiter: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let err = |m: &str| Err(std::io::Error::other(m.to_string()));
    let finder = memchr::memmem::Finder::new(&delimiter).into_owned();
    loop {
        if let Some(i) = finder.find(&r.buf) {
            let data: Vec<u8> = r.buf.drain(..i).collect();
            r.buf.drain(..delimiter.len());
            if !data.is_empty() && tx.send(Ok(Bytes::from(data))).await.is_err() {
                return;
            }
            let end = r.need(2).await;
            if end.is_err() || !r.buf.starts_with(b"--") {
                let _ =
                    tx.send(err("fields after the file are not read: send content and checksum first")).await;
            }
            // Dropping the sender ends the body.
            return;
        }
        // Everything that cannot be the start of a delimiter goes on.
        let keep = delimiter.len() - 1;
        if r.buf.len() > keep {
            let data: Vec<u8> = r.buf.drain(..r.buf.len() - keep).collect();
            if tx.send(Ok(Bytes::from(data))).await.is_err() {
                return;
            }
        }
        match r.fill().await {
            Ok(true) => {}
            Ok(false) => {
                let _ = tx.send(err("the upload ended before its closing boundary")).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(err(&e)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(b: Body) -> Result<Vec<u8>, String> {
        let mut s = b.into_data_stream();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn chunked(data: Vec<u8>, size: usize) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    fn form(file: &[u8], after: &str) -> Vec<u8> {
        let mut b = b"--XyZ\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\niso\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"filename\"; filename=\"a.iso\"\r\n\
            Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
        b.extend_from_slice(file);
        b.extend_from_slice(after.as_bytes());
        b
    }

    #[tokio::test]
    async fn files_stream_through_whatever_the_chunking() {
        // Bytes that look like a delimiter's start, across chunk borders.
        let file: Vec<u8> = (0..100_000u32)
            .flat_map(|i| if i % 997 == 0 { b"\r\n--Xy".to_vec() } else { vec![i as u8] })
            .collect();
        for size in [1, 7, 64, 4096, 1 << 20] {
            let up = read("multipart/form-data; boundary=XyZ", chunked(form(&file, "\r\n--XyZ--\r\n"), size))
                .await
                .unwrap();
            assert_eq!((up.fields["content"].as_str(), up.file_name.as_str()), ("iso", "a.iso"));
            assert_eq!(collect(up.file).await.unwrap(), file, "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn a_truncated_upload_or_a_late_field_is_an_error() {
        let up =
            read("multipart/form-data; boundary=XyZ", chunked(form(b"data", "\r\n--Xy"), 3)).await.unwrap();
        assert!(collect(up.file).await.is_err());
        let late = "\r\n--XyZ\r\nContent-Disposition: form-data; name=\"checksum\"\r\n\r\nab\r\n--XyZ--\r\n";
        let up = read("multipart/form-data; boundary=XyZ", chunked(form(b"data", late), 5)).await.unwrap();
        assert!(collect(up.file).await.is_err());
        assert!(read("text/plain", Body::empty()).await.is_err());
        assert_eq!(boundary("multipart/form-data; boundary=\"a b\""), Some("a b".into()));
    }
}
