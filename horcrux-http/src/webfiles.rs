//! Where the web UI's files come from (see `web`): a leaf module, held in the shared state.

use std::borrow::Cow;
use std::path::PathBuf;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// Where the UI's files come from.
#[derive(Debug, Clone, Default)]
pub enum WebRoot {
    /// The copy built into the binary.
    #[default]
    Embedded,
    /// A directory read at each request.
    Dir(PathBuf),
}

impl WebRoot {
    /// The file at `rel` (a path already checked to stay inside the root).
    pub(crate) async fn read(&self, rel: &str) -> Option<Cow<'static, [u8]>> {
        match self {
            WebRoot::Embedded => {
                embedded::FILES.iter().find(|(p, _)| *p == rel).map(|(_, b)| Cow::Borrowed(*b))
            }
            WebRoot::Dir(dir) => {
                let path = dir.join(rel);
                if !tokio::fs::metadata(&path).await.ok()?.is_file() {
                    return None;
                }
                tokio::fs::read(path).await.ok().map(Cow::Owned)
            }
        }
    }
}

/// The paths built into the binary.
#[cfg(test)]
pub(crate) fn embedded_paths() -> impl Iterator<Item = &'static str> {
    embedded::FILES.iter().map(|(p, _)| *p)
}
