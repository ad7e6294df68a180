//! Bounded reads of append-only files (audit log, serial console): the end of a file, never
//! the whole of it, however large it grew.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The last `max` bytes of `path` (empty if it does not exist).
pub(crate) fn last_bytes(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::with_capacity(len.min(max) as usize);
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// The last `n` complete lines within the last `max` bytes of `path`, oldest first.
pub(crate) fn last_lines(path: &Path, n: usize, max: u64) -> std::io::Result<Vec<String>> {
    let bytes = last_bytes(path, max)?;
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    // A read that starts mid-file starts mid-line: drop the partial first line.
    if len > max && !lines.is_empty() {
        lines.remove(0);
    }
    let start = lines.len().saturating_sub(n);
    Ok(lines[start..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        assert!(last_bytes(&p, 10).unwrap().is_empty());
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        assert_eq!(last_bytes(&p, 9).unwrap(), b"line 999\n");
        assert_eq!(last_lines(&p, 2, 1 << 20).unwrap(), ["line 998", "line 999"]);
        // Within 20 bytes: "ne 997\nline 998\nline 999\n" minus the partial first line.
        assert_eq!(last_lines(&p, 10, 20).unwrap(), ["line 998", "line 999"]);
        assert_eq!(last_lines(&p, 5000, 1 << 20).unwrap().len(), 1000);
    }
}
