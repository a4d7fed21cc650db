//! Writes the committed seed corpus under `fuzz/corpus/<target>/` from the repository's real
//! inputs (example plans, rule XML) and from manifests made with the format and state-engine
//! crates. Deterministic: running it again gives the same files.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-fuzz cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus
//! ```
//!
//! The fuzzers' own finds are never written here: `scripts/fuzz.sh` runs on a temporary copy.

use std::fs;
use std::path::{Path, PathBuf};

use fleetmig_format::{MigrationKey, seal_manifest};
use fleetmig_fuzz::{MIGRATION_KEY, manifest_from_lines, seal_body};

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().expect("fuzz/ has a parent");
    let corpus = fuzz.join("corpus");
    let read = |rel: &str| {
        fs::read_to_string(repo.join(rel)).unwrap_or_else(|error| panic!("{rel}: {error}"))
    };

    // plan_parse: the example plans, one with its rule file attached, and small plans that
    // reach each wave kind and a few problems.
    let plans = corpus.join("plan_parse");
    let engineering = read("examples/plans/rules/engineering.xml");
    write(&plans, "example-plan.toml", read("examples/plan.toml"));
    write(
        &plans,
        "ramp-with-windows.toml",
        read("examples/plans/ramp-with-windows.toml"),
    );
    write(
        &plans,
        "auto-with-rules.toml",
        read("examples/plans/auto-with-rules.toml"),
    );
    write(
        &plans,
        "auto-with-rules+xml",
        format!(
            "{}\0{engineering}",
            read("examples/plans/auto-with-rules.toml")
        ),
    );
    write(
        &plans,
        "refresh-hostnames.toml",
        "version = 1\nname = \"pilot\"\n\n[[waves]]\nname = \"first\"\nscenario = \"refresh\"\n\
         max_in_flight = 2\n[waves.select]\nhostnames = [\"PC-0001\", \"pc-0002\"]\n",
    );
    write(
        &plans,
        "replace-pairs.toml",
        "version = 1\nname = \"swap\"\nreplication = 2\n\n[[waves]]\nname = \"lab\"\n\
         scenario = \"replace\"\npairs = [\n  { source = \"XP-1\", destination = \"W7-1\" },\n  \
         { source = \"PC-0101\", destination = \"W7-0101\" },\n]\n",
    );
    write(
        &plans,
        "problems.toml",
        "version = 2\nname = \"bad name\"\n[[waves]]\nname = \"w\"\nscenario = \"teleport\"\n\
         max_in_flight = 0\nbatch = [0, \"150%\"]\nerror_budget = \"x\"\n[waves.select]\n\
         [waves.capture]\nrules = [\"/etc/rules.xml\", \"C:\\\\r.xml\", \"\", \"@builtin\", \
         \"@builtin\"]\n[[waves.windows]]\ndays = [\"funday\"]\nstart = \"25:00\"\n",
    );
    write(
        &plans,
        "windows-deadlines.toml",
        "version = 1\nname = \"night\"\n[policy]\nerror_budget = \"10%\"\nmax_in_flight = 5\n\
         [[waves]]\nname = \"n\"\nestimated_duration = \"2h 30m\"\n[waves.select]\n\
         sites = [\"lyon\"]\nlabels = { dept = \"it\" }\n[[waves.windows]]\n\
         days = [\"mon\", \"tue\"]\nstart = \"22:00\"\nend = \"06:00\"\ntime_zone = \"Europe/Paris\"\n\
         [waves.deadlines]\nassigned = \"30m\"\n",
    );

    // rules_parse: the built-in and example rules, and documents reaching moves, contexts,
    // unsupported constructs and malformed XML.
    let rules = corpus.join("rules_parse");
    write(
        &rules,
        "fleetmig-default.xml",
        read("state-engine/rules/fleetmig-default.xml"),
    );
    write(&rules, "engineering.xml", engineering);
    let document = |context: &str, body: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<migration urlid=\"http://www.microsoft.com/\
             migration/1.0/migxmlext/seed\">\n<component type=\"Documents\" context=\"{context}\">\n\
             <displayName>seed</displayName>\n<role role=\"Data\">\n<rules>\n{body}\n</rules>\n\
             </role>\n</component>\n</migration>\n"
        )
    };
    let pattern = |action: &str, text: &str| {
        format!(
            "<{action}><objectSet><pattern type=\"File\">{text}</pattern></objectSet></{action}>"
        )
    };
    write(
        &rules,
        "moves.xml",
        document(
            "UserAndSystem",
            &[
                pattern("include", "%CSIDL_PERSONAL%\\Old\\* [*]"),
                "<locationModify script=\"MigXmlHelper.RelativeMove('%CSIDL_PERSONAL%\\Old',\
                 '%CSIDL_PERSONAL%\\New')\"><objectSet><pattern type=\"File\">%CSIDL_PERSONAL%\\Old\\* \
                 [*]</pattern></objectSet></locationModify>"
                    .to_owned(),
                pattern("include", "C:\\Data\\Logs\\* [*.log]"),
                "<locationModify script=\"MigXmlHelper.Move('C:\\Archive')\"><objectSet><pattern \
                 type=\"File\">C:\\Data\\Logs\\* [*.log]</pattern><pattern type=\"File\">C:\\Data\\Flat \
                 [*.csv]</pattern></objectSet></locationModify>"
                    .to_owned(),
                "<locationModify script='MigXmlHelper.ExactMove(\"C:\\Data\\boot.ini\")'><objectSet>\
                 <pattern type=\"File\">C:\\Data [old-boot.ini]</pattern></objectSet></locationModify>"
                    .to_owned(),
            ]
            .concat(),
        ),
    );
    write(
        &rules,
        "precedence.xml",
        document(
            "User",
            &[
                pattern("include", "%CSIDL_PROFILE%\\* [*]"),
                pattern("exclude", "%CSIDL_PERSONAL%\\* [*.tmp]"),
                pattern(
                    "unconditionalExclude",
                    "%CSIDL_PROFILE%\\build-cache\\* [*]",
                ),
                pattern("include", "%CSIDL_PERSONAL%\\Keep [a?c*.d?c]"),
                pattern("include", "%USERPROFILE%\\Desktop\\* [*.*]"),
            ]
            .concat(),
        ),
    );
    write(
        &rules,
        "system.xml",
        document(
            "System",
            &[
                pattern("include", "C:\\CADLib\\* [*]"),
                pattern("include", "%PROGRAMFILES%\\App\\* [*.ini]"),
                pattern("include", "%ALLUSERSPROFILE%\\Documents\\* [*]"),
                pattern("include", "%SYSTEMROOT%\\Fonts\\* [*]"),
                pattern("include", "C:\\Documents and Settings\\%USERNAME%\\x [*]"),
                pattern("include", "\\\\server\\share\\* [*]"),
                pattern("include", "C:\\Data\\..\\x [*]"),
            ]
            .concat(),
        ),
    );
    write(
        &rules,
        "unsupported.xml",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<migration urlid=\"u\">\n<library/>\n\
         <namedElements/>\n<component type=\"Documents\" context=\"User\">\n<role role=\"Data\">\n\
         <detects><detect><condition>MigXmlHelper.DoesObjectExist(\"File\",\"C:\\x\")</condition>\
         </detect></detects>\n<rules>\n<include filter='MigXmlHelper.IgnoreIrrelevantLinks()'>\
         <objectSet><pattern type=\"Registry\">HKCU\\Software\\Foo [*]</pattern><pattern \
         type=\"File\">%NOT_A_VARIABLE%\\* [*]</pattern><script>MigXmlHelper.GenerateDrivePatterns \
         (\"* [*.pst]\", \"Fixed\")</script><pattern type=\"File\">D:\\Data\\* [*]</pattern>\
         </objectSet></include>\n<merge script=\"MigXmlHelper.SourcePriority()\"/>\n\
         <locationModify script=\"MigXmlHelper.Frobnicate('C:\\x')\"/>\n<addObjects/>\n\
         <contentModify/>\n<environment/>\n</rules>\n</role>\n</component>\n</migration>\n",
    );
    write(
        &rules,
        "malformed.xml",
        "<?xml version=\"1.0\"?>\n<migration>\n<component>\n</migration>",
    );
    write(
        &rules,
        "wrong-root.xml",
        "<?xml version=\"1.0\"?>\n<unattend/>\n",
    );

    // The manifests the other targets start from.
    let lines = "users|alice|bob\n\
        d|alice|Documents and Settings/alice/My Documents|Users/alice/Documents\n\
        f|alice|Documents and Settings/alice/My Documents/a.doc|Users/alice/Documents/a.doc\n\
        e|alice|Documents and Settings/alice/My Documents/empty.txt|Users/alice/Documents/empty.txt\n\
        l|alice|Documents and Settings/alice/My Documents/link|Users/alice/Documents/link|a.doc\n\
        f|bob|Documents and Settings/bob/Desktop/n.txt|Users/bob/Desktop/n.txt\n\
        f||Documents and Settings/All Users/Application Data/App/settings.ini|ProgramData/App/settings.ini\n";
    let manifest = manifest_from_lines(lines);
    assert!(manifest.validate().is_ok(), "the seed manifest is valid");
    let json = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let key = MigrationKey::from_bytes(MIGRATION_KEY);

    // manifest_decode: mode 0 sealed bytes, mode 1 JSON, mode 2 zstd frames.
    let decode = corpus.join("manifest_decode");
    let sealed = seal_manifest(&key, &manifest).expect("the seed manifest seals");
    write(&decode, "0-sealed", [&[0u8][..], &sealed].concat());
    write(
        &decode,
        "0-sealed-own",
        [
            &[0u8][..],
            &seal_body(&MIGRATION_KEY, &zstd(&json), [5; 24]),
        ]
        .concat(),
    );
    write(&decode, "1-json", [&[1u8][..], &json].concat());
    let hostile = manifest_json_with_target(&json, "Users/alice/../../etc/passwd");
    write(
        &decode,
        "1-json-dotdot",
        [&[1u8][..], hostile.as_bytes()].concat(),
    );
    let drive = manifest_json_with_target(&json, "C:/Windows/system32/x.dll");
    write(
        &decode,
        "1-json-drive",
        [&[1u8][..], drive.as_bytes()].concat(),
    );
    let unc = manifest_json_with_target(&json, "\\\\\\\\server\\\\share\\\\x");
    write(&decode, "1-json-unc", [&[1u8][..], unc.as_bytes()].concat());
    write(&decode, "2-zstd", [&[2u8][..], &zstd(&json)].concat());

    // manifest_paths: the line format, valid and hostile.
    let paths = corpus.join("manifest_paths");
    write(&paths, "valid", lines);
    write(
        &paths,
        "hostile",
        "users|alice|..|C:\n\
         f|alice|Documents and Settings/alice/a|Users/alice/../../etc/passwd\n\
         f|alice|a|/etc/passwd\n\
         f|alice|a|Users/alice/C:evil\n\
         f|alice|a|\\\\server\\share\\x\n\
         f|alice|a\\..\\b|Users/alice/x\n\
         f|alice|a/\\0b|Users/alice/y\n\
         d|alice|a//b|Users/alice\n\
         f||a|Windows/system32/evil.dll\n\
         f||a|wINDOWS/x\n\
         f|bob|a|Users/alice/x\n\
         l|alice|a|Users/alice/l|../../../etc\n\
         l||a|ProgramData/l|\n",
    );
    write(
        &paths,
        "case-twins",
        "users|alice\nf|alice|a|Users/alice/Doc.txt\nf|alice|b|Users/alice/DOC.TXT\n\
         f||c|_FleetMig/x\nd||d|StateStore\nd||e|ProgramData/./x\n",
    );

    // restore_paths: mode 0 hard-link manifest JSON, mode 1 packed manifest + user map.
    let restore = corpus.join("restore_paths");
    let state = state_manifest();
    assert!(
        state.validate().is_ok(),
        "the seed hard-link manifest is valid"
    );
    let state_json = serde_json::to_vec(&state).expect("serializes");
    write(&restore, "0-hardlink", [&[0u8][..], &state_json].concat());
    let packed = format!(
        "{{\"manifest\":{},\"user_map\":{{\"alice\":\"asmith\",\"bob\":\"C:x\"}}}}",
        String::from_utf8(json.clone()).expect("JSON is UTF-8")
    );
    write(
        &restore,
        "1-packed-map",
        [&[1u8][..], packed.as_bytes()].concat(),
    );
    let packed_ok = format!(
        "{{\"manifest\":{},\"user_map\":{{\"alice\":\"asmith\"}}}}",
        String::from_utf8(json).expect("JSON is UTF-8")
    );
    write(
        &restore,
        "1-packed-map-ok",
        [&[1u8][..], packed_ok.as_bytes()].concat(),
    );
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(dir).expect("create corpus dir");
    let path: PathBuf = dir.join(name);
    fs::write(&path, bytes).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    println!("{}", path.display());
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 3).expect("zstd compresses")
}

/// The JSON with the target of its second entry replaced (already JSON-escaped).
fn manifest_json_with_target(json: &[u8], target: &str) -> String {
    let text = String::from_utf8(json.to_vec()).expect("JSON is UTF-8");
    text.replacen(
        "\"target\":\"Users/alice/Documents/a.doc\"",
        &format!("\"target\":\"{target}\""),
        1,
    )
}

fn state_manifest() -> fleetmig_state::Manifest {
    use fleetmig_state::{Entry, EntryKind};
    let entry =
        |kind, user: &str, source: &str, target: &str, store: &str, link: Option<&str>| Entry {
            kind,
            user: user.to_owned(),
            source: source.to_owned(),
            target: target.to_owned(),
            store: store.to_owned(),
            size: if kind == EntryKind::File { 3 } else { 0 },
            mtime_ns: 1_100_000_000_123_456_789,
            mode: if kind == EntryKind::Dir {
                0o40755
            } else {
                0o100644
            },
            inode: 42,
            link_target: link.map(str::to_owned),
            link_escapes: false,
        };
    fleetmig_state::Manifest {
        format_version: fleetmig_state::manifest::FORMAT_VERSION,
        job_id: "job-1".to_owned(),
        created_unix_ms: 1_700_000_000_000,
        source_root: "/machines/xp".to_owned(),
        hostname: "XP-PC-042".to_owned(),
        users: vec!["alice".to_owned()],
        entries: vec![
            entry(
                EntryKind::Dir,
                "alice",
                "Documents and Settings/alice/My Documents",
                "Users/alice/Documents",
                "data/alice/My Documents",
                None,
            ),
            entry(
                EntryKind::File,
                "alice",
                "Documents and Settings/alice/My Documents/report.final.doc",
                "Users/alice/Documents/report.final.doc",
                "data/alice/My Documents/report.final.doc",
                None,
            ),
            entry(
                EntryKind::File,
                "alice",
                "Documents and Settings/alice/.hidden",
                "Users/alice/.hidden",
                "data/alice/.hidden",
                None,
            ),
            entry(
                EntryKind::Symlink,
                "alice",
                "Documents and Settings/alice/My Documents/link",
                "Users/alice/Documents/link",
                "data/alice/My Documents/link",
                Some("report.final.doc"),
            ),
            entry(
                EntryKind::File,
                "",
                "CADLib/part.dwg",
                "CADLib/part.dwg",
                "data/_system/CADLib/part.dwg",
                None,
            ),
        ],
    }
}
