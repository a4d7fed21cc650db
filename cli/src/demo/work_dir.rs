//! The demo's working directory: a temporary one, or one the operator named.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the demo keeps machines, controller and storage data, and logs.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Deletes the directory on drop, unless kept; `None` for a named directory.
    temp: Option<tempfile::TempDir>,
    keep: bool,
}

impl WorkDir {
    /// Uses `given` (which must be missing or empty, and is always kept), or
    /// makes a temporary directory (kept only with `keep`).
    pub fn create(given: Option<&Path>, keep: bool) -> anyhow::Result<Self> {
        if let Some(path) = given {
            if path.exists() {
                let mut entries = std::fs::read_dir(path)
                    .with_context(|| format!("cannot read work dir {}", path.display()))?;
                if entries.next().is_some() {
                    bail!(
                        "work dir {} is not empty; pick another one or remove it",
                        path.display()
                    );
                }
            }
            std::fs::create_dir_all(path)
                .with_context(|| format!("cannot create work dir {}", path.display()))?;
            return Ok(Self {
                path: path.to_owned(),
                temp: None,
                keep: true,
            });
        }
        let temp = tempfile::Builder::new()
            .prefix("fleetmig-demo-")
            .tempdir()
            .context("cannot create a temporary work dir")?;
        Ok(Self {
            path: temp.path().to_owned(),
            temp: Some(temp),
            keep,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the directory unless it is to be kept (asked for, named by the
    /// operator, or `keep_anyway` because something went wrong); returns the
    /// path when it stays.
    pub async fn finish(self, keep_anyway: bool) -> Option<PathBuf> {
        match self.temp {
            Some(temp) if !(self.keep || keep_anyway) => {
                let path = self.path.clone();
                let removed = tokio::task::spawn_blocking(move || temp.close()).await;
                if !matches!(removed, Ok(Ok(()))) {
                    tracing::warn!(path = %path.display(), "cannot remove the demo's work dir");
                }
                None
            }
            Some(temp) => Some(temp.keep()),
            None => Some(self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn temporary_dir_is_removed_unless_kept() {
        let work = WorkDir::create(None, false).expect("create");
        let path = work.path().to_owned();
        assert!(path.is_dir());
        assert_eq!(work.finish(false).await, None);
        assert!(!path.exists());

        let work = WorkDir::create(None, false).expect("create");
        let kept = work.finish(true).await.expect("kept after a failure");
        assert!(kept.is_dir());
        std::fs::remove_dir_all(kept).expect("cleanup");
    }

    #[tokio::test]
    async fn named_dir_must_be_empty_and_is_kept() {
        let parent = tempfile::tempdir().expect("tempdir");
        let path = parent.path().join("demo");
        let work = WorkDir::create(Some(&path), false).expect("create");
        std::fs::write(path.join("file"), "x").expect("write");
        assert_eq!(work.finish(false).await, Some(path.clone()));
        let err = WorkDir::create(Some(&path), false).expect_err("not empty");
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
