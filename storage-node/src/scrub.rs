//! `fleetmig-storage-node scrub`: re-reads every chunk file, recomputes its
//! checksum, and reports corrupt chunks with the migrations that reference
//! them, plus chunks committed migrations reference that are missing.
//!
//! Scrub works on the data directory directly, typically while the node is
//! down. `--quarantine` moves corrupt chunks to `quarantine/`: MissingChunks
//! then reports them missing, so the next capture of the same content heals
//! them. (Quarantining while the node runs leaves its stored-bytes counter
//! high until the next start.)

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::chunks::{self, ChunkFault, ChunkFile};
use crate::durable;
use crate::error::{Error, Result};
use crate::layout::{ChunkId, Layout, MigrationId};
use crate::record::{self, MigrationRecord};

/// What scrub should do besides reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubOptions {
    /// Move corrupt chunks to `quarantine/`.
    pub quarantine: bool,
}

/// A chunk file whose content does not match its checksum.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CorruptChunk {
    /// The chunk id, hex.
    pub chunk_id: String,
    /// What is wrong with it.
    pub reason: String,
    /// Migrations (committed, sealed or retained) referencing it.
    pub migrations: Vec<String>,
    /// Where it was moved, with `--quarantine`.
    pub quarantined_to: Option<PathBuf>,
}

/// A chunk a committed migration references that has no chunk file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MissingChunk {
    /// The chunk id, hex.
    pub chunk_id: String,
    /// Migrations referencing it.
    pub migrations: Vec<String>,
}

/// The result of a scrub.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ScrubReport {
    /// Chunk files read.
    pub chunks_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Corrupt chunk files.
    pub corrupt: Vec<CorruptChunk>,
    /// Referenced chunks without a file.
    pub missing: Vec<MissingChunk>,
    /// Files in `chunks/` that are not chunk files (left alone).
    pub strays: Vec<PathBuf>,
}

impl ScrubReport {
    /// True when every chunk is intact and every referenced chunk present.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

/// Scrubs the store in `data_dir` (blocking; reads files in parallel).
pub fn scrub(data_dir: &Path, options: ScrubOptions) -> Result<ScrubReport> {
    let layout = Layout::new(data_dir);
    if !layout.chunks_dir().is_dir() {
        return Err(Error::DataDir {
            path: layout.chunks_dir(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no chunk store here (is this a storage node data directory?)",
            ),
        });
    }
    let references = referencing_migrations(&layout)?;
    let (files, strays) = chunks::walk(&layout)
        .map_err(|source| Error::io("listing", layout.chunks_dir(), source))?;
    let faults: Vec<(&ChunkFile, ChunkFault)> = files
        .par_iter()
        .filter_map(|file| {
            chunks::read_verified(&file.path)
                .err()
                .map(|fault| (file, fault))
        })
        .collect();

    let mut report = ScrubReport {
        chunks_checked: files.len() as u64,
        bytes_checked: files.iter().map(|f| f.len).sum(),
        strays,
        ..ScrubReport::default()
    };
    for (file, fault) in faults {
        if matches!(fault, ChunkFault::Missing) {
            continue; // removed while scrubbing; the missing check below sees it
        }
        let quarantined_to = if options.quarantine {
            Some(quarantine(&layout, file)?)
        } else {
            None
        };
        report.corrupt.push(CorruptChunk {
            chunk_id: file.id.to_hex(),
            reason: fault.to_string(),
            migrations: references.get(&file.id).cloned().unwrap_or_default(),
            quarantined_to,
        });
    }
    report.corrupt.sort_by(|a, b| a.chunk_id.cmp(&b.chunk_id));

    let present: HashSet<ChunkId> = files.iter().map(|f| f.id).collect();
    let quarantined: HashSet<&str> = report
        .corrupt
        .iter()
        .filter(|c| c.quarantined_to.is_some())
        .map(|c| c.chunk_id.as_str())
        .collect();
    for (id, migrations) in &references {
        let hex = id.to_hex();
        if !present.contains(id) && !quarantined.contains(hex.as_str()) {
            report.missing.push(MissingChunk {
                chunk_id: hex,
                migrations: migrations.clone(),
            });
        }
    }
    Ok(report)
}

/// Chunk id → the committed migrations referencing it (sorted by chunk id).
fn referencing_migrations(layout: &Layout) -> Result<BTreeMap<ChunkId, Vec<String>>> {
    let dir = layout.migrations_dir();
    let mut references: BTreeMap<ChunkId, Vec<String>> = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(references),
        Err(source) => return Err(Error::io("listing", dir, source)),
    };
    let mut committed: Vec<MigrationId> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::io("listing", &dir, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if durable::is_temporary_name(&name) || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        let text = std::fs::read(&path).map_err(|source| Error::io("reading", &path, source))?;
        let record: MigrationRecord =
            serde_json::from_slice(&text).map_err(|err| Error::CorruptRecord {
                path: path.clone(),
                reason: err.to_string(),
            })?;
        if record.state.is_committed() {
            committed.push(record.id()?);
        }
    }
    committed.sort();
    for id in committed {
        for chunk in record::read_references(layout, &id)? {
            references.entry(chunk).or_default().push(id.to_string());
        }
    }
    Ok(references)
}

/// Moves a corrupt chunk file to `quarantine/`, durably.
fn quarantine(layout: &Layout, file: &ChunkFile) -> Result<PathBuf> {
    let dir = layout.quarantine_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Error::io("creating", &dir, source))?;
    let mut target = dir.join(file.id.to_hex());
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{}.{n}", file.id.to_hex()));
        n += 1;
    }
    std::fs::rename(&file.path, &target)
        .map_err(|source| Error::io("quarantining", &file.path, source))?;
    for synced in [dir.as_path(), file.path.parent().unwrap_or(&dir)] {
        durable::sync_dir(synced).map_err(|source| Error::io("syncing", synced, source))?;
    }
    Ok(target)
}

/// Writes `report` for an operator (one line per problem, then a summary),
/// or as one JSON document.
pub fn write_report(report: &ScrubReport, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        return writeln!(out);
    }
    let used_by = |migrations: &[String]| {
        if migrations.is_empty() {
            "no migration".to_owned()
        } else {
            migrations.join(", ")
        }
    };
    for chunk in &report.corrupt {
        write!(
            out,
            "corrupt chunk {}: {}; referenced by {}",
            chunk.chunk_id,
            chunk.reason,
            used_by(&chunk.migrations)
        )?;
        match &chunk.quarantined_to {
            Some(path) => writeln!(out, "; moved to {}", path.display())?,
            None => writeln!(out)?,
        }
    }
    for chunk in &report.missing {
        writeln!(
            out,
            "missing chunk {}: referenced by {}",
            chunk.chunk_id,
            used_by(&chunk.migrations)
        )?;
    }
    for stray in &report.strays {
        writeln!(out, "not a chunk file (ignored): {}", stray.display())?;
    }
    let affected: HashSet<&str> = report
        .corrupt
        .iter()
        .flat_map(|c| c.migrations.iter())
        .chain(report.missing.iter().flat_map(|c| c.migrations.iter()))
        .map(String::as_str)
        .collect();
    writeln!(
        out,
        "scrub: {} chunks ({} bytes) checked, {} corrupt{}, {} missing, {} migrations affected: {}",
        report.chunks_checked,
        report.bytes_checked,
        report.corrupt.len(),
        if report.corrupt.iter().any(|c| c.quarantined_to.is_some()) {
            " (quarantined)"
        } else {
            ""
        },
        report.missing.len(),
        affected.len(),
        if report.is_clean() { "ok" } else { "DAMAGED" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_store_reports_ok() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        crate::data_dir::prepare_store(&layout).unwrap();
        let data = b"sealed bytes".to_vec();
        let id = ChunkId([9; 32]);
        let mut contents = chunks::checksum(&data).to_vec();
        contents.extend_from_slice(&data);
        std::fs::write(layout.chunk_path(&id), &contents).unwrap();
        let report = scrub(dir.path(), ScrubOptions::default()).unwrap();
        assert!(report.is_clean());
        assert_eq!(report.chunks_checked, 1);
        let mut text = Vec::new();
        write_report(&report, false, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("1 chunks"), "{text}");
        assert!(text.trim_end().ends_with("ok"), "{text}");
    }

    #[test]
    fn refuses_a_directory_without_a_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scrub(dir.path(), ScrubOptions::default()).is_err());
    }
}
