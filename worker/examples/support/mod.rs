//! Helpers shared by the packed benchmarks (not an example of its own).

use std::path::Path;

/// Profiles directory of a generated XP machine.
pub const PROFILES: &str = "Documents and Settings";

/// Adds about `bytes` of mail archives (1–8 MiB each) to `user`'s documents.
pub fn add_text(root: &Path, user: &str, bytes: u64, seed: u64) -> std::io::Result<()> {
    let dir = root.join(PROFILES).join(user).join("My Documents/Archives");
    std::fs::create_dir_all(&dir)?;
    let mut written = 0u64;
    let mut index = 0u64;
    while written < bytes {
        let size = (1 + (index as usize * 7) % 8) * 1024 * 1024;
        let mut text = Vec::with_capacity(size + 200);
        let mut line = seed * 1_000_003 + index * 10_007;
        while text.len() < size {
            text.extend_from_slice(
                format!(
                    "2008-{:02}-{:02} {:02}:{:02}:{:02} From: user{}@corp.example Subject: Re: order {} status {} of archive {index}\n",
                    1 + line % 12,
                    1 + line % 28,
                    line % 24,
                    line % 60,
                    (line * 7) % 60,
                    line % 97,
                    line * 31 % 100_003,
                    ["open", "shipped", "billed", "closed"][(line % 4) as usize]
                )
                .as_bytes(),
            );
            line += 1;
        }
        text.truncate(size);
        std::fs::write(dir.join(format!("mail archive {index}.mbx")), &text)?;
        written += size as u64;
        index += 1;
    }
    Ok(())
}

/// Bytes of every regular file under `path`.
pub fn du_bytes(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_file() {
            total += entry.metadata().map_err(std::io::Error::other)?.len();
        }
    }
    Ok(total)
}
