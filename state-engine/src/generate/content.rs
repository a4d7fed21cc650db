//! File contents and the per-category layout of a generated XP profile.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::{ERA_END, ERA_START};
use crate::error::{IoResultExt, Result};

/// How a file's bytes look.
#[derive(Debug, Clone, Copy)]
pub(super) enum Style {
    /// Mostly repeated text with some noise (documents, ini files, mail).
    Text,
    /// Mostly noise with some text (pictures, music, binaries).
    Binary,
}

const PHRASES: &[&str] = &[
    "Quarterly revenue increased in all regions except the north-east. ",
    "Please find attached the minutes of yesterday's meeting. ",
    "Sehr geehrte Damen und Herren, anbei die Überweisung für März. ",
    "会議の議事録を添付します。 ",
    "TODO: call the landlord about the heating before Friday. ",
    "[Settings]\r\nWindowState=2\r\nLastFolder=C:\\Documents and Settings\r\n",
    "<?xml version=\"1.0\" encoding=\"utf-8\"?><config><item key=\"x\"/></config>\n",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ",
];

/// Writes files and directories under a base directory with one seeded RNG.
pub(super) struct Writer {
    rng: StdRng,
    base: PathBuf,
    buf: Vec<u8>,
    known_dirs: HashSet<PathBuf>,
    /// Files written.
    pub(super) files: u64,
    /// Bytes written.
    pub(super) bytes: u64,
    /// Directories created, with the mtime they should end up with.
    pub(super) dirs: Vec<(PathBuf, i64)>,
}

impl Writer {
    pub(super) fn new(seed: u64, base: &Path) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            base: base.to_path_buf(),
            buf: Vec::new(),
            known_dirs: HashSet::new(),
            files: 0,
            bytes: 0,
            dirs: Vec::new(),
        }
    }

    /// A random mtime in the XP era.
    pub(super) fn mtime(&mut self) -> i64 {
        self.rng.random_range(ERA_START..ERA_END)
    }

    /// A size drawn log-uniformly from `low..high`.
    pub(super) fn size(&mut self, low: u64, high: u64) -> u64 {
        let exponent = self.rng.random_range((low as f64).ln()..(high as f64).ln());
        exponent.exp() as u64
    }

    pub(super) fn chance(&mut self, probability: f64) -> bool {
        self.rng.random_bool(probability)
    }

    pub(super) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    /// Creates `dir` and its missing ancestors below the base, recording each for its mtime.
    pub(super) fn dir(&mut self, dir: &Path) -> Result<()> {
        if self.known_dirs.contains(dir) {
            return Ok(());
        }
        if dir == self.base || !dir.starts_with(&self.base) {
            fs::create_dir_all(dir).at(dir)?;
        } else {
            if let Some(parent) = dir.parent() {
                self.dir(parent)?;
            }
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(error).at(dir),
            }
            let mtime = self.mtime();
            self.dirs.push((dir.to_path_buf(), mtime));
        }
        self.known_dirs.insert(dir.to_path_buf());
        Ok(())
    }

    /// Writes a new file of `size` bytes with the given mtime and mode.
    pub(super) fn file_at(
        &mut self,
        path: &Path,
        size: u64,
        mtime: i64,
        mode: u32,
        style: Style,
    ) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.dir(parent)?;
        }
        self.fill(size as usize, style);
        self.write_buf(path, mtime, mode)
    }

    fn write_buf(&mut self, path: &Path, mtime: i64, mode: u32) -> Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .at(path)?;
        file.write_all(&self.buf).at(path)?;
        let time = UNIX_EPOCH + Duration::from_secs(mtime as u64);
        file.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time))
            .at(path)?;
        self.files += 1;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Adds `link` as a second name of the existing file `existing` (one inode, two names).
    pub(super) fn hard_link(&mut self, existing: &Path, link: &Path) -> Result<()> {
        if let Some(parent) = link.parent() {
            self.dir(parent)?;
        }
        fs::hard_link(existing, link).at(link)?;
        self.files += 1;
        Ok(())
    }

    /// A symlink at `link` with the link text `text` (which need not exist) and an XP-era mtime.
    pub(super) fn symlink(&mut self, text: &str, link: &Path) -> Result<()> {
        if let Some(parent) = link.parent() {
            self.dir(parent)?;
        }
        std::os::unix::fs::symlink(text, link).at(link)?;
        let mtime = filetime::FileTime::from_unix_time(self.mtime(), 0);
        filetime::set_symlink_file_times(link, mtime, mtime).at(link)
    }

    /// A sparse file of `size` bytes: a 512-byte header and footer, holes in between.
    /// Only the header and footer count as written bytes.
    pub(super) fn sparse(&mut self, path: &Path, size: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if let Some(parent) = path.parent() {
            self.dir(parent)?;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .at(path)?;
        file.set_len(size).at(path)?;
        let block = size.min(512) as usize;
        self.fill(block, Style::Binary);
        file.write_all_at(&self.buf, 0).at(path)?;
        file.write_all_at(&self.buf, size - block as u64).at(path)?;
        let time = UNIX_EPOCH + Duration::from_secs(self.mtime() as u64);
        file.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time))
            .at(path)?;
        self.files += 1;
        self.bytes += 2 * block as u64;
        Ok(())
    }

    /// A text-heavy file with a random mtime.
    pub(super) fn document(&mut self, path: &Path, size: u64) -> Result<()> {
        let mtime = self.mtime();
        self.file_at(path, size, mtime, 0o644, Style::Text)
    }

    /// A noise-heavy file with a random mtime.
    pub(super) fn binary(&mut self, path: &Path, size: u64) -> Result<()> {
        let mtime = self.mtime();
        self.file_at(path, size, mtime, 0o644, Style::Binary)
    }

    /// A file with exactly this text.
    pub(super) fn text(&mut self, path: &Path, text: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.dir(parent)?;
        }
        self.buf.clear();
        self.buf.extend_from_slice(text.as_bytes());
        let mtime = self.mtime();
        self.write_buf(path, mtime, 0o644)
    }

    /// Fills the buffer with `size` bytes mixing repeated phrases and random runs.
    fn fill(&mut self, size: usize, style: Style) {
        let text_probability = match style {
            Style::Text => 0.75,
            Style::Binary => 0.2,
        };
        self.buf.clear();
        while self.buf.len() < size {
            if self.rng.random_bool(text_probability) {
                let phrase = PHRASES[self.rng.random_range(0..PHRASES.len())];
                for _ in 0..self.rng.random_range(1..6) {
                    self.buf.extend_from_slice(phrase.as_bytes());
                }
            } else {
                let start = self.buf.len();
                self.buf.resize(start + self.rng.random_range(32..512), 0);
                self.rng.fill_bytes(&mut self.buf[start..]);
            }
        }
        self.buf.truncate(size);
    }

    /// Sets the recorded directory mtimes, deepest first.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.dirs
            .sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (dir, mtime) in &self.dirs {
            filetime::set_file_mtime(dir, filetime::FileTime::from_unix_time(*mtime, 0)).at(dir)?;
        }
        Ok(())
    }
}

/// A slice of a profile's content.
pub(super) struct Category {
    /// Share of the per-user file budget, per mille.
    per_mille: u64,
    /// Writes `count` files of this category into the profile.
    pub(super) write: fn(&mut Writer, &Path, u64, &str) -> Result<()>,
}

/// Files every profile gets regardless of the budget.
const FIXED_FILES: u64 = 24;

impl Category {
    /// How many files of this category a budget of `files_per_user` buys.
    pub(super) fn share(&self, files_per_user: u64) -> u64 {
        if self.per_mille == 0 {
            return files_per_user;
        }
        (files_per_user.saturating_sub(FIXED_FILES) * self.per_mille).div_ceil(1000)
    }
}

/// All categories; the first (per mille 0) is the fixed set and receives the whole budget.
pub(super) const CATEGORIES: &[Category] = &[
    Category {
        per_mille: 0,
        write: essentials,
    },
    Category {
        per_mille: 230,
        write: documents,
    },
    Category {
        per_mille: 140,
        write: pictures,
    },
    Category {
        per_mille: 25,
        write: music,
    },
    Category {
        per_mille: 5,
        write: videos,
    },
    Category {
        per_mille: 20,
        write: desktop,
    },
    Category {
        per_mille: 30,
        write: favorites,
    },
    Category {
        per_mille: 30,
        write: cookies,
    },
    Category {
        per_mille: 265,
        write: roaming_app_data,
    },
    Category {
        per_mille: 120,
        write: local_app_data,
    },
    Category {
        per_mille: 70,
        write: temp,
    },
    Category {
        per_mille: 50,
        write: internet_cache,
    },
    Category {
        per_mille: 15,
        write: history,
    },
];

/// The interesting files every profile has: unicode and long names, a read-only file, the PST,
/// shortcuts, a few large files, caches that must not migrate, empty directories.
fn essentials(w: &mut Writer, profile: &Path, budget: u64, user: &str) -> Result<()> {
    let docs = profile.join("My Documents");
    w.document(&docs.join("Überweisung – März.doc"), 24_576)?;
    w.document(&docs.join("報告.txt"), 3_000)?;
    let long_name = format!(
        "{} final version (2).doc",
        "Minutes of the steering committee meeting on the new accounting system "
            .repeat(2)
            .trim_end()
    );
    w.document(&docs.join(long_name), 18_000)?;
    let mtime = w.mtime();
    w.file_at(
        &docs.join("Contract (signed).doc"),
        40_000,
        mtime,
        0o444,
        Style::Text,
    )?;
    w.text(&docs.join("desktop.ini"), "[.ShellClassInfo]\r\nLocalizedResourceName=@%SystemRoot%\\system32\\shell32.dll,-21770\r\n")?;
    w.dir(&docs.join("Old Projects"))?;
    w.dir(&docs.join("My Pictures"))?;
    w.dir(&docs.join("My Music"))?;
    w.dir(&docs.join("My Videos"))?;
    w.binary(&docs.join("My Pictures/Thumbs.db"), 9_216)?;
    for index in 0..=budget / 10_000 {
        let size = w.size(200_000, 3_000_000);
        w.binary(
            &docs.join(format!("Backup/Archive {}.zip", 2004 + index)),
            size,
        )?;
    }

    let outlook = profile.join("Local Settings/Application Data/Microsoft/Outlook");
    let pst_size = w.size(262_144, 2_097_152);
    w.file_at(
        &outlook.join("Outlook.pst"),
        pst_size,
        ERA_END - 3_600,
        0o644,
        Style::Text,
    )?;
    w.binary(&outlook.join("extend.dat"), 2_048)?;

    for (name, app) in [
        ("Microsoft Word", "WINWORD.EXE"),
        ("Internet Explorer", "iexplore.exe"),
        ("Shortcut to Projects", "Projects"),
    ] {
        w.text(
            &profile.join("Desktop").join(format!("{name}.lnk")),
            &format!("L\0\0\0\u{1}\u{14}\u{2}\0{app}"),
        )?;
    }
    for (name, url) in [
        ("Google", "http://www.google.com/"),
        ("MSN.com", "http://www.msn.com/"),
    ] {
        w.text(
            &profile.join("Favorites").join(format!("{name}.url")),
            &format!("[InternetShortcut]\r\nURL={url}\r\n"),
        )?;
    }
    w.dir(&profile.join("Favorites/Links"))?;
    w.binary(&profile.join("ntuser.dat.LOG"), 1_024)?;
    w.text(&profile.join("ntuser.ini"), "\r\n[Profile]\r\n")?;
    w.text(
        &profile.join("Start Menu/Programs/Startup/desktop.ini"),
        "[.ShellClassInfo]\r\n",
    )?;
    w.binary(&profile.join("Local Settings/Temp/~DF3A2B.tmp"), 16_384)?;
    w.binary(
        &profile.join("Local Settings/Temporary Internet Files/Content.IE5/index.dat"),
        32_768,
    )?;
    w.binary(
        &profile.join("Local Settings/History/History.IE5/index.dat"),
        16_384,
    )?;
    w.text(
        &profile
            .join("Application Data/Microsoft/Signatures")
            .join(format!("{user}.txt")),
        &format!("Regards,\r\n{user}\r\n"),
    )?;
    Ok(())
}

/// Spreads `count` files over folders of about 100 files each.
fn folder_for(base: &[&str], index: u64, count: u64) -> String {
    let folders = count.div_ceil(100).max(1);
    let folder = index % folders;
    match base.get(folder as usize) {
        Some(name) => (*name).to_owned(),
        None => format!("Archive/{} Batch {folder:03}", 2003 + folder % 7),
    }
}

fn documents(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    const FOLDERS: &[&str] = &[
        "",
        "Work",
        "Personal",
        "Taxes 2006",
        "Projects/Website Redesign",
        "Projects/Budget 2007",
        "School",
        "Letters",
    ];
    const STEMS: &[&str] = &[
        "Budget",
        "Quarterly Report",
        "Meeting Notes",
        "Invoice",
        "Resume",
        "Letter to Landlord",
        "Präsentation Q3",
        "Проект",
        "Travel Expenses",
        "Project Plan",
        "Kündigung",
        "見積書",
    ];
    let docs = profile.join("My Documents");
    for index in 0..count {
        let folder = folder_for(FOLDERS, index, count);
        let stem = w.pick(STEMS);
        let ext = w.pick(&["doc", "doc", "xls", "txt", "ppt", "pdf"]);
        let path = docs.join(folder).join(format!("{stem} {index:04}.{ext}"));
        let size = w.size(512, 24_000);
        let mode = if w.chance(0.005) { 0o444 } else { 0o644 };
        let mtime = w.mtime();
        w.file_at(&path, size, mtime, mode, Style::Text)?;
    }
    Ok(())
}

fn pictures(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    const FOLDERS: &[&str] = &["", "2005-07 Vacation", "Christmas 2006", "Kids", "Scans"];
    let pictures = profile.join("My Documents/My Pictures");
    let mut with_thumbs = HashSet::new();
    for index in 0..count {
        let folder = pictures.join(folder_for(FOLDERS, index, count));
        if with_thumbs.insert(folder.clone()) && folder != pictures {
            w.binary(&folder.join("Thumbs.db"), 6_144)?;
        }
        let size = w.size(4_096, 40_000);
        let name = if index % 3 == 0 {
            format!("DSC{index:05}.JPG")
        } else {
            format!("IMG_{index:05}.jpg")
        };
        w.binary(&folder.join(name), size)?;
    }
    Ok(())
}

fn music(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    const ALBUMS: &[&str] = &[
        "Coldplay/X&Y",
        "Daft Punk/Discovery",
        "Die Ärzte/Geräusch",
        "Norah Jones/Come Away with Me",
        "坂本龍一/BTTB",
    ];
    let music = profile.join("My Documents/My Music");
    for index in 0..count {
        let album = folder_for(ALBUMS, index, count);
        let size = w.size(16_384, 96_000);
        w.binary(
            &music
                .join(album)
                .join(format!("{:02} - Track {index}.mp3", index % 14 + 1)),
            size,
        )?;
    }
    Ok(())
}

fn videos(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    let videos = profile.join("My Documents/My Videos");
    for index in 0..count.clamp(1, 4) {
        let size = w.size(200_000, 1_500_000);
        w.binary(&videos.join(format!("Holiday {}.avi", 2004 + index)), size)?;
    }
    Ok(())
}

fn desktop(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    let desktop = profile.join("Desktop");
    for index in 0..count {
        if index % 2 == 0 {
            let target = w.pick(&[
                "Calculator",
                "Notepad",
                "Paint",
                "Solitaire",
                "Adobe Reader",
            ]);
            w.text(
                &desktop.join(format!("{target} ({index}).lnk")),
                &format!("L\0\0\0{target}.exe"),
            )?;
        } else {
            let size = w.size(1_024, 20_000);
            w.document(
                &desktop.join(format!("New Text Document ({index}).txt")),
                size,
            )?;
        }
    }
    Ok(())
}

fn favorites(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    const FOLDERS: &[&str] = &["", "News", "Banking", "Reisen & Urlaub"];
    let favorites = profile.join("Favorites");
    for index in 0..count {
        let site = w.pick(&[
            "bbc.co.uk",
            "spiegel.de",
            "ebay.com",
            "wikipedia.org",
            "nytimes.com",
            "amazon.co.jp",
        ]);
        let folder = FOLDERS[(index % FOLDERS.len() as u64) as usize];
        w.text(
            &favorites.join(folder).join(format!("{site} {index}.url")),
            &format!("[InternetShortcut]\r\nURL=http://www.{site}/page{index}.html\r\n"),
        )?;
    }
    Ok(())
}

fn cookies(w: &mut Writer, profile: &Path, count: u64, user: &str) -> Result<()> {
    let cookies = profile.join("Cookies");
    for index in 0..count {
        let site = w.pick(&["google", "msn", "doubleclick", "yahoo", "ebay"]);
        let size = w.size(80, 1_500);
        w.document(&cookies.join(format!("{user}@{site}[{index}].txt")), size)?;
    }
    Ok(())
}

fn roaming_app_data(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    const FOLDERS: &[&str] = &[
        "Microsoft/Templates",
        "Microsoft/Word",
        "Microsoft/Internet Explorer/Quick Launch",
        "Microsoft/Proof",
        "Mozilla/Firefox/Profiles/k3j2l1x0.default",
        "Adobe/Acrobat/8.0/JavaScripts",
        "Skype/user.name",
        "Sun/Java/Deployment/cache",
        "Macromedia/Flash Player/#SharedObjects/X4Y2Z9",
        "Identities/{5E2B6A40-3C1F-4D2B-9F0E-1A2B3C4D5E6F}",
    ];
    let app_data = profile.join("Application Data");
    for index in 0..count {
        let folder = folder_for(FOLDERS, index, count);
        let ext = w.pick(&["xml", "dat", "ini", "js", "sol", "dic"]);
        let size = w.size(64, 4_096);
        w.document(
            &app_data.join(folder).join(format!("settings{index}.{ext}")),
            size,
        )?;
    }
    Ok(())
}

fn local_app_data(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    const FOLDERS: &[&str] = &[
        "Microsoft/Windows",
        "Mozilla/Firefox/Profiles/k3j2l1x0.default/Cache",
        "Adobe/Updater5",
        "Apple Computer/iTunes",
        "Google/Google Earth/dbCache",
    ];
    let local = profile.join("Local Settings/Application Data");
    for index in 0..count {
        let folder = folder_for(FOLDERS, index, count);
        let size = w.size(64, 8_192);
        w.binary(&local.join(folder).join(format!("{index:08X}.dat")), size)?;
    }
    Ok(())
}

fn temp(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    let temp = profile.join("Local Settings/Temp");
    for index in 0..count {
        let size = w.size(100, 8_192);
        let folder = if index % 5 == 4 {
            "Temporary Directory 1 for setup.zip"
        } else {
            ""
        };
        w.binary(&temp.join(folder).join(format!("tmp{index:04X}.tmp")), size)?;
    }
    Ok(())
}

fn internet_cache(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    let cache = profile.join("Local Settings/Temporary Internet Files/Content.IE5");
    const FOLDERS: &[&str] = &["0QZ3X7RL", "5BNV8K2M", "H7Y4T1PD", "ZX91QW3E"];
    for index in 0..count {
        let folder = FOLDERS[(index % 4) as usize];
        let ext = w.pick(&["gif", "jpg", "htm", "js", "css"]);
        let size = w.size(100, 16_384);
        w.binary(
            &cache.join(folder).join(format!("file{index}[1].{ext}")),
            size,
        )?;
    }
    Ok(())
}

fn history(w: &mut Writer, profile: &Path, count: u64, _user: &str) -> Result<()> {
    let history = profile.join("Local Settings/History/History.IE5");
    for index in 0..count {
        let size = w.size(1_024, 32_768);
        w.binary(
            &history
                .join(format!(
                    "MSHist01200601{:02}200601{:02}",
                    index % 28 + 1,
                    index % 28 + 2
                ))
                .join(format!("index{index}.dat")),
            size,
        )?;
    }
    Ok(())
}
