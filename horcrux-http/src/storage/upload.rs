//! Files into a storage: `POST /api/v1/storage/{id}/upload` (the request body is the file,
//! streamed to disk as it arrives) and `POST /api/v1/storage/{id}/download-url` (fetched
//! by this node). Both write a hidden temporary file beside the target, hash it on the way
//! (`checksum` + `checksum-algorithm`, Proxmox's md5/sha1/sha224/sha256/sha384/sha512),
//! and move it into place only once it is whole and verified: an interrupted or refused
//! transfer leaves nothing behind (the temporary file goes when its guard does, also when
//! the client disconnects and the handler is dropped).

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::ApiState;

/// A running checksum of one of Proxmox's algorithms.
pub(crate) enum Hasher {
    Md5(Md5),
    Sha1(ring::digest::Context),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: &str) -> Result<Hasher, ApiError> {
        use sha2::Digest;
        Ok(match algorithm {
            "md5" => Hasher::Md5(Md5::new()),
            "sha1" => Hasher::Sha1(ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY)),
            "sha224" => Hasher::Sha224(sha2::Sha224::new()),
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            "sha384" => Hasher::Sha384(sha2::Sha384::new()),
            "sha512" => Hasher::Sha512(sha2::Sha512::new()),
            other => {
                return Err(ApiError::bad_field(
                    "checksum-algorithm",
                    format!("{other:?} is not one of md5, sha1, sha224, sha256, sha384, sha512"),
                ))
            }
        })
    }

    fn update(&mut self, b: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha224(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha384(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn hex(self) -> String {
        use sha2::Digest;
        let bytes: Vec<u8> = match self {
            Hasher::Md5(h) => h.finish().to_vec(),
            Hasher::Sha1(h) => h.finish().as_ref().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        horcrux_core::ids::hex_encode(&bytes)
    }
}

/// MD5 (RFC 1321), for Proxmox's `checksum-algorithm=md5`: integrity of a download, not
/// security.
pub(crate) struct Md5 {
    state: [u32; 4],
    buf: Vec<u8>,
    len: u64,
}

impl Md5 {
    fn new() -> Md5 {
        Md5 {
            state: [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476],
            buf: Vec::with_capacity(64),
            len: 0,
        }
    }

    fn update(&mut self, mut b: &[u8]) {
        self.len += b.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.buf.len() == 64 {
                let block: [u8; 64] = self.buf[..].try_into().expect("64 bytes");
                self.block(&block);
                self.buf.clear();
            }
        }
        let mut chunks = b.chunks_exact(64);
        for c in &mut chunks {
            self.block(c.try_into().expect("64 bytes"));
        }
        self.buf.extend_from_slice(chunks.remainder());
    }

    fn block(&mut self, block: &[u8; 64]) {
        const S: [u32; 64] = [
            7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14,
            20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6,
            10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
        ];
        static K: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
        let k = K
            .get_or_init(|| std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32));
        let m: Vec<u32> =
            block.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))).collect();
        let [mut a, mut b, mut c, mut d] = self.state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }

    fn finish(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        pad.resize(((55u64.wrapping_sub(self.len)) % 64) as usize + 1, 0);
        pad.extend_from_slice(&bits.to_le_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        let mut out = [0u8; 16];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_le_bytes());
        }
        out
    }
}

/// The content types a file can be uploaded as, with the names each takes.
const UPLOADS: [(&str, &[&str]); 3] = [
    ("iso", &[".iso", ".img"]),
    ("vztmpl", &[".tar.gz", ".tar.xz", ".tar.zst", ".tgz"]),
    ("import", &[".ova", ".ovf", ".qcow2", ".raw", ".vmdk"]),
];

/// A file name for `content`: letters, digits, `-_.`, not hidden, with the content's suffix.
fn check_filename(content: &str, name: &str) -> Result<(), ApiError> {
    let (_, suffixes) = UPLOADS.iter().find(|(c, _)| *c == content).ok_or_else(|| {
        ApiError::bad_field("content", format!("{content:?}: upload iso, vztmpl or import"))
    })?;
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.is_empty() || name.len() > 255 || name.starts_with('.') || !chars_ok {
        return Err(ApiError::bad_field(
            "filename",
            format!("{name:?}: letters, digits, '-', '_' and '.' only"),
        ));
    }
    if !suffixes.iter().any(|s| name.ends_with(s) && name.len() > s.len()) {
        return Err(ApiError::bad_field(
            "filename",
            format!("{content} files end in {}", suffixes.join(", ")),
        ));
    }
    Ok(())
}

/// A file being written beside its target; removed on drop unless committed.
struct Partial {
    tmp: PathBuf,
    /// Written in 1 MiB blocks, not in the few kilobytes a TLS record carries.
    file: Option<std::io::BufWriter<std::fs::File>>,
    hasher: Option<Hasher>,
    bytes: u64,
    /// Up to where the kernel was told to start writing the file back, and up to where
    /// that writeback was waited for.
    kicked: u64,
    waited: u64,
}

/// Writeback is started every this many bytes while the body arrives, so that the fsync
/// at the end finds little left to write: the disk works while the network does.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl Partial {
    fn create(target: &Path, algorithm: Option<&str>) -> Result<Partial, ApiError> {
        let dir = target.parent().ok_or_else(|| ApiError::internal("a target without a directory"))?;
        std::fs::create_dir_all(dir).map_err(|e| ApiError::internal(format!("{}: {e}", dir.display())))?;
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp =
            dir.join(format!(".{name}.partial-{}", horcrux_core::ids::random_secret()[..12].to_owned()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| ApiError::internal(format!("{}: {e}", tmp.display())))?;
        let hasher = algorithm.map(Hasher::new).transpose()?;
        Ok(Partial {
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            hasher,
            bytes: 0,
            kicked: 0,
            waited: 0,
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<(), ApiError> {
        if let Some(h) = self.hasher.as_mut() {
            h.update(b);
        }
        self.bytes += b.len() as u64;
        let f = self.file.as_mut().expect("open until committed");
        f.write_all(b).map_err(|e| ApiError::internal(format!("writing {}: {e}", self.tmp.display())))?;
        let in_file = self.bytes - f.buffer().len() as u64;
        if in_file - self.kicked >= WRITEBACK_EVERY {
            use std::os::fd::AsRawFd;
            let fd = f.get_ref().as_raw_fd();
            // Starts writeback of what reached the file, then waits for the range started
            // the time before (written meanwhile, while the body kept arriving): the dirty
            // pages stay few and the fsync at the end has little left. Hints only: their
            // failure is not the upload's, the fsync at the end is what counts.
            // SAFETY: a valid descriptor of an open file, plain integer arguments.
            unsafe {
                libc::sync_file_range(
                    fd,
                    self.kicked as libc::off64_t,
                    (in_file - self.kicked) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
                if self.waited < self.kicked {
                    libc::sync_file_range(
                        fd,
                        self.waited as libc::off64_t,
                        (self.kicked - self.waited) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    );
                }
            }
            (self.waited, self.kicked) = (self.kicked, in_file);
        }
        Ok(())
    }

    /// Syncs, verifies the checksum, then links the file in as `target` (refused if one
    /// appeared meanwhile). Answers the checksum, if one was asked for.
    fn commit(mut self, target: &Path, expected: Option<&str>) -> Result<Option<String>, ApiError> {
        let f = self.file.take().expect("open until committed");
        let f =
            f.into_inner().map_err(|e| ApiError::internal(format!("writing {}: {e}", self.tmp.display())))?;
        f.sync_all().map_err(|e| ApiError::internal(e.to_string()))?;
        drop(f);
        let sum = self.hasher.take().map(Hasher::hex);
        if let (Some(sum), Some(want)) = (&sum, expected) {
            if !sum.eq_ignore_ascii_case(want.trim()) {
                return Err(ApiError::bad_field(
                    "checksum",
                    format!("the file's checksum is {sum}, not {want}"),
                ));
            }
        }
        std::fs::hard_link(&self.tmp, target).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                ApiError::conflict(format!("{} already exists", target.display()))
            }
            _ => ApiError::internal(format!("{}: {e}", target.display())),
        })?;
        Ok(sum)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[derive(Deserialize)]
pub(crate) struct UploadQuery {
    content: String,
    filename: String,
    checksum: Option<String>,
    #[serde(rename = "checksum-algorithm")]
    checksum_algorithm: Option<String>,
    /// The node the file goes to (the request is carried there); default: this one.
    #[allow(dead_code)]
    node: Option<String>,
}

/// Where a new file goes: its volume id, the host path it is linked in as, and whether
/// that path is a staging file the store then copies in (a store without host paths).
struct Target {
    volid: String,
    path: PathBuf,
    pool: Option<horcrux_core::StoragePool>,
}

impl Target {
    /// Copies a staged file into its store (nothing to do for a host path).
    async fn store(&self, st: &ApiState) -> Result<(), String> {
        match &self.pool {
            None => Ok(()),
            Some(pool) => st
                .runtime
                .volume_store(pool)
                .store_file(&self.volid, &self.path)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// The target of a new `content` file on storage `id` on this node: checks the storage,
/// what it holds, the name, and that nothing is there yet.
async fn target(st: &ApiState, id: &str, content: &str, filename: &str) -> Result<Target, ApiError> {
    check_filename(content, filename)?;
    let key = id.to_string();
    let pool = st.runtime.cluster().read_linearizable(move |s| s.storage.get(&key).cloned()).await?;
    let pool = pool.ok_or_else(|| ApiError::not_found("no such storage"))?;
    let node = st.runtime.cluster().node_name().to_string();
    if !pool.on_node(&node) || pool.config.disable {
        return Err(ApiError::bad_field("storage", format!("storage {id} is not available on node {node}")));
    }
    if !pool.holds(content) {
        return Err(ApiError::bad_field("content", format!("storage {id} does not hold {content}")));
    }
    let volid = format!("{id}:{content}/{filename}");
    let store = st.runtime.volume_store(&pool);
    let (path, staged) = match (store.path(&volid), store.staging_path(&volid)) {
        (Ok(p), _) => (p, None),
        (Err(_), Some(p)) => {
            let listed = store.list().await.map_err(|e| ApiError::bad_field("storage", e.to_string()))?;
            if listed.iter().any(|v| v.volid == volid) {
                return Err(ApiError::conflict(format!("{volid} already exists")));
            }
            (p, Some(pool))
        }
        (Err(e), None) => return Err(ApiError::bad_field("storage", e.to_string())),
    };
    if path.exists() {
        return Err(ApiError::conflict(format!("{volid} already exists")));
    }
    Ok(Target { volid, path, pool: staged })
}

fn checksum_pair(sum: &Option<String>, alg: &Option<String>) -> Result<(), ApiError> {
    match (sum, alg) {
        (Some(_), None) => Err(ApiError::bad_field("checksum-algorithm", "is required with checksum")),
        (None, Some(_)) => Err(ApiError::bad_field("checksum", "is required with checksum-algorithm")),
        _ => Ok(()),
    }
}

/// The request body is the file. Answers `{"upid","volid","size"}`.
pub(crate) async fn upload(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    checksum_pair(&q.checksum, &q.checksum_algorithm)?;
    let t = target(&st, &id, &q.content, &q.filename).await?;
    let (volid, path) = (t.volid.clone(), t.path.clone());
    let partial = Partial::create(&path, q.checksum_algorithm.as_deref())?;
    let started = std::time::Instant::now();
    // The file is written, hashed and synced on a blocking thread while this task goes on
    // receiving (and decrypting) the body: the two overlap instead of taking turns, and no
    // runtime worker waits on the disk. The writer commits only after the end of the body.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<axum::body::Bytes>>(32);
    let (expected, to) = (q.checksum.clone(), path.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut partial = partial;
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                Some(b) => partial.write(&b)?,
                None => {
                    let bytes = partial.bytes;
                    return Ok((bytes, partial.commit(&to, expected.as_deref())?));
                }
            }
        }
        Err(ApiError::bad_field("filename", "the upload was cut off"))
    });
    let mut stream = body.into_data_stream();
    let mut cut = None;
    loop {
        let piece = match stream.next().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => {
                cut = Some(ApiError::bad_field("filename", format!("the upload was cut off: {e}")));
                break;
            }
            None => None,
        };
        let end = piece.is_none();
        if tx.send(piece).await.is_err() || end {
            break; // a writer that stopped early says why below
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| ApiError::internal(format!("upload writer: {e}")))?;
    if let Some(e) = cut {
        return Err(e);
    }
    let (bytes, sum) = written?;
    t.store(&st).await.map_err(ApiError::internal)?;
    let task = st.runtime.tasks().create("imgcopy", "", caller.user());
    task.log(format!("received {bytes} bytes in {:.1} s", started.elapsed().as_secs_f64()));
    if let (Some(sum), Some(alg)) = (sum, &q.checksum_algorithm) {
        task.log(format!("{alg} checksum verified: {sum}"));
    }
    task.log(format!("stored as {volid}"));
    task.finish(Ok::<(), String>(()));
    Ok(Json(json!({ "upid": task.upid(), "volid": volid, "size": bytes })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Download {
    url: String,
    content: String,
    filename: String,
    checksum: Option<String>,
    #[serde(rename = "checksum-algorithm")]
    checksum_algorithm: Option<String>,
    #[serde(rename = "verify-certificates", default = "yes")]
    verify_certificates: bool,
    #[serde(default)]
    node: Option<String>,
}

fn yes() -> bool {
    true
}

/// Fetches `url` into the storage as a task (HTTP or HTTPS, certificates verified against
/// the host's CA bundle unless `verify-certificates` is false). Needs, besides
/// `Datastore.AllocateTemplate` on the storage, `Sys.AccessNetwork` on the node or
/// `Sys.Modify` on `/`: it probes the network from the node.
pub(crate) async fn download_url(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let d: Download = crate::state::parse_body(&body)?;
    let _ = &d.node;
    let node = st.runtime.cluster().node_name().to_string();
    let allowed = st
        .runtime
        .cluster()
        .read_linearizable({
            let c = caller.clone();
            let node = node.clone();
            move |s| {
                crate::authz::caller_privileges(s, &c, &format!("/nodes/{node}"))
                    .contains("Sys.AccessNetwork")
                    || crate::authz::caller_privileges(s, &c, "/").contains("Sys.Modify")
            }
        })
        .await?;
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "permission check failed: {} needs Sys.AccessNetwork on /nodes/{node} or Sys.Modify on /",
                caller.token_id
            ),
        ));
    }
    if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
        return Err(ApiError::bad_field("url", "must be an http:// or https:// URL"));
    }
    checksum_pair(&d.checksum, &d.checksum_algorithm)?;
    let t = target(&st, &id, &d.content, &d.filename).await?;
    let (volid, path) = (t.volid.clone(), t.path.clone());
    let partial = Partial::create(&path, d.checksum_algorithm.as_deref())?;
    let task = st.runtime.tasks().create("download", "", caller.user());
    let upid = task.upid().to_string();
    let url = d.url.clone();
    let st2 = st.clone();
    tokio::spawn(async move {
        task.log(format!("downloading {url} to {volid}"));
        let verify = d.verify_certificates;
        let fetched = tokio::task::spawn_blocking(move || fetch(&url, verify, partial)).await;
        let result = match fetched {
            Ok(Ok(partial)) => {
                let bytes = partial.bytes;
                match partial.commit(&path, d.checksum.as_deref()) {
                    Ok(sum) => t.store(&st2).await.map(|()| (bytes, sum)),
                    Err(e) => Err(e.message),
                }
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("the download stopped: {e}")),
        };
        match result {
            Ok((bytes, sum)) => {
                task.log(format!("received {bytes} bytes"));
                if let (Some(sum), Some(alg)) = (sum, &d.checksum_algorithm) {
                    task.log(format!("{alg} checksum verified: {sum}"));
                }
                task.finish(Ok::<(), String>(()));
            }
            Err(e) => task.finish(Err::<(), String>(e)),
        }
    });
    Ok(Json(json!({ "upid": upid })))
}

/// Streams `url` into `partial` (blocking: ureq).
fn fetch(url: &str, verify: bool, mut partial: Partial) -> Result<Partial, String> {
    use std::io::Read;
    let tls = if verify {
        let pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        let cas: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(cas)))
            .build()
    } else {
        ureq::tls::TlsConfig::builder().disable_verification(true).build()
    };
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent();
    let resp = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| format!("reading {url}: {e}"))?;
        if n == 0 {
            return Ok(partial);
        }
        partial.write(&buf[..n]).map_err(|e| e.message)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321_vectors() {
        let md5 = |s: &[u8], split: usize| {
            let mut h = Md5::new();
            let (a, b) = s.split_at(split.min(s.len()));
            h.update(a);
            h.update(b);
            horcrux_core::ids::hex_encode(&h.finish())
        };
        assert_eq!(md5(b"", 0), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5(b"abc", 1), "900150983cd24fb0d6963f7d28e17f72");
        let digits = b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(md5(digits, 63), "57edf4a22be3c955ac49da2e2107b67a");
        assert_eq!(md5(&[b'a'; 1000], 517), md5(&[b'a'; 1000], 0));
    }

    #[test]
    fn file_names_follow_their_content() {
        assert!(check_filename("iso", "debian-12.iso").is_ok());
        assert!(check_filename("vztmpl", "alpine.tar.zst").is_ok());
        for (c, n) in [
            ("iso", "x.tar.zst"),
            ("iso", "../x.iso"),
            ("iso", ".x.iso"),
            ("iso", ".iso"),
            ("images", "x.raw"),
        ] {
            assert!(check_filename(c, n).is_err(), "{c} {n}");
        }
    }
}
