//! Rules: parsing, precedence, location modifications, warnings, robustness, end to end.

use proptest::prelude::*;

use super::*;
use crate::layout::{DirDecision, Selection};

/// A one-component document with `body` inside `<rules>`.
fn document(context: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <migration urlid=\"http://www.microsoft.com/migration/1.0/migxmlext/test\">\n\
         <component type=\"Documents\" context=\"{context}\">\n\
         <displayName>test</displayName>\n\
         <role role=\"Data\">\n\
         <rules>\n{body}\n</rules>\n\
         </role>\n\
         </component>\n\
         </migration>\n"
    )
}

fn include(pattern: &str) -> String {
    format!("<include><objectSet><pattern type=\"File\">{pattern}</pattern></objectSet></include>")
}

fn exclude(pattern: &str) -> String {
    format!("<exclude><objectSet><pattern type=\"File\">{pattern}</pattern></objectSet></exclude>")
}

fn unconditional(pattern: &str) -> String {
    format!(
        "<unconditionalExclude><objectSet><pattern type=\"File\">{pattern}</pattern></objectSet></unconditionalExclude>"
    )
}

/// Parses a document that must not warn and compiles it.
fn selection(context: &str, parts: &[String]) -> Selection {
    let xml = document(context, &parts.concat());
    let (set, warnings) = RuleSet::parse(&xml, "test.xml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    Selection::from_rules(set)
}

fn user_file(selection: &Selection, rel: &str) -> Option<String> {
    selection.decide_user_file("alice", rel)
}

#[test]
fn builtin_rules_parse_cleanly_and_keep_todays_behaviour() {
    let (set, warnings) = RuleSet::parse(BUILTIN_XML, BUILTIN_NAME).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(set.rules.len() >= 7);
    let builtin = Selection::builtin();
    assert_eq!(builtin, Selection::from_rules(set));
    let cases = [
        (
            "My Documents/Work/a.doc",
            Some("Users/alice/Documents/Work/a.doc"),
        ),
        (
            "My Documents/My Music/x.mp3",
            Some("Users/alice/Music/x.mp3"),
        ),
        ("Desktop/x.lnk", Some("Users/alice/Desktop/x.lnk")),
        ("NTUSER.DAT", Some("Users/alice/NTUSER.DAT")),
        (
            "Application Data/Mozilla/Firefox/prefs.js",
            Some("Users/alice/AppData/Roaming/Mozilla/Firefox/prefs.js"),
        ),
        (
            "Local Settings/Application Data/Microsoft/Outlook/Outlook.pst",
            Some("Users/alice/AppData/Local/Microsoft/Outlook/Outlook.pst"),
        ),
        ("Local Settings/Temp/~DF3A2B.tmp", None),
        ("Local Settings/Temp/sub/a.txt", None),
        (
            "Local Settings/Temporary Internet Files/Content.IE5/a.jpg",
            None,
        ),
        ("Local Settings/History/History.IE5/index.dat", None),
        ("My Documents/My Pictures/Thumbs.db", None),
        ("My Documents/draft.TMP", None),
    ];
    for (rel, expected) in cases {
        assert_eq!(user_file(&builtin, rel).as_deref(), expected, "{rel}");
    }
    assert_eq!(
        builtin.decide_user_dir("alice", "Local Settings/Temporary Internet Files"),
        DirDecision::Excluded
    );
    assert!(builtin.system_roots().is_empty());
}

#[test]
fn unconditional_exclude_beats_a_more_specific_include() {
    let selection = selection(
        "User",
        &[
            unconditional("%CSIDL_PROFILE%\\* [*.mp3]"),
            include("%CSIDL_MYMUSIC%\\Favorites [song.mp3]"),
            include("%CSIDL_MYMUSIC%\\* [*]"),
        ],
    );
    assert_eq!(
        user_file(&selection, "My Documents/My Music/Favorites/song.mp3"),
        None
    );
    assert_eq!(
        user_file(&selection, "My Documents/My Music/Favorites/song.wma").as_deref(),
        Some("Users/alice/Music/Favorites/song.wma")
    );
    // A directory covered by an unconditional exclusion is not even walked.
    let selection = self::selection(
        "User",
        &[
            unconditional("%CSIDL_PERSONAL%\\Private\\* [*]"),
            include("%CSIDL_PERSONAL%\\Private\\Keep\\* [*]"),
        ],
    );
    assert_eq!(
        selection.decide_user_dir("alice", "My Documents/Private/Keep"),
        DirDecision::Excluded
    );
}

#[test]
fn more_specific_include_beats_a_general_exclude() {
    let selection = selection(
        "User",
        &[
            include("%CSIDL_PROFILE%\\* [*]"),
            exclude("%CSIDL_PERSONAL%\\* [*]"),
            include("%CSIDL_PERSONAL%\\Work\\* [*.doc]"),
        ],
    );
    assert_eq!(
        user_file(&selection, "My Documents/Work/2007/plan.doc").as_deref(),
        Some("Users/alice/Documents/Work/2007/plan.doc")
    );
    assert_eq!(user_file(&selection, "My Documents/Work/plan.xls"), None);
    assert_eq!(user_file(&selection, "My Documents/letter.doc"), None);
    assert_eq!(
        user_file(&selection, "Desktop/a.lnk").as_deref(),
        Some("Users/alice/Desktop/a.lnk")
    );
    assert_eq!(
        selection.decide_user_dir("alice", "My Documents"),
        DirDecision::Walk("Users/alice/Documents".into())
    );
    assert_eq!(
        selection.decide_user_dir("alice", "My Documents/Work"),
        DirDecision::Walk("Users/alice/Documents/Work".into())
    );
    assert_eq!(
        selection.decide_user_dir("alice", "My Documents/Other"),
        DirDecision::Excluded
    );
}

#[test]
fn exclude_wins_ties() {
    let selection = selection(
        "User",
        &[
            include("%CSIDL_PERSONAL%\\* [*.doc]"),
            exclude("%CSIDL_PERSONAL%\\* [*.doc]"),
            include("%CSIDL_PERSONAL%\\* [*.txt]"),
            exclude("%CSIDL_PERSONAL%\\* [*.log]"),
        ],
    );
    assert_eq!(user_file(&selection, "My Documents/a.doc"), None);
    assert!(user_file(&selection, "My Documents/a.txt").is_some());
    assert_eq!(user_file(&selection, "My Documents/a.log"), None);
    // Order in the file does not matter.
    let reversed = self::selection(
        "User",
        &[
            exclude("%CSIDL_PERSONAL%\\* [*.doc]"),
            include("%CSIDL_PERSONAL%\\* [*.doc]"),
        ],
    );
    assert_eq!(user_file(&reversed, "My Documents/a.doc"), None);
}

#[test]
fn file_filters_exact_files_and_recursion() {
    let selection = selection(
        "User",
        &[
            include("%CSIDL_PERSONAL%\\* [*.doc]"),
            include("%CSIDL_DESKTOP% [todo.txt]"),
        ],
    );
    assert!(user_file(&selection, "My Documents/A.DOC").is_some());
    assert!(user_file(&selection, "My Documents/deep/er/b.doc").is_some());
    assert_eq!(user_file(&selection, "My Documents/b.txt"), None);
    assert_eq!(
        user_file(&selection, "Desktop/TODO.txt").as_deref(),
        Some("Users/alice/Desktop/TODO.txt")
    );
    assert_eq!(user_file(&selection, "Desktop/other.txt"), None);
    assert_eq!(user_file(&selection, "Desktop/sub/todo.txt"), None);
    assert_eq!(
        selection.decide_user_dir("alice", "Desktop/sub"),
        DirDecision::Excluded
    );
    assert_eq!(user_file(&selection, "Favorites/x.url"), None);

    let system = self::selection(
        "System",
        &[include("C:\\Data\\* [*]"), include("C:\\Flat [*]")],
    );
    assert_eq!(system.system_roots(), ["Data", "Flat"]);
    assert_eq!(
        system.decide_system_file("Data/sub/b.txt").as_deref(),
        Some("Data/sub/b.txt")
    );
    assert_eq!(
        system.decide_system_file("Flat/a.txt").as_deref(),
        Some("Flat/a.txt")
    );
    assert_eq!(system.decide_system_file("Flat/sub/b.txt"), None);
    assert_eq!(system.decide_system_dir("Flat/sub"), DirDecision::Excluded);
    assert_eq!(system.decide_system_file("Other/a.txt"), None);
    // Directory parts may hold wildcards.
    let globbed = self::selection(
        "User",
        &[include(
            "%CSIDL_APPDATA%\\Mozilla\\Firefox\\Profiles\\*.default\\* [prefs.js]",
        )],
    );
    assert!(
        user_file(
            &globbed,
            "Application Data/Mozilla/Firefox/Profiles/k3j2.default/prefs.js"
        )
        .is_some()
    );
    assert_eq!(
        user_file(
            &globbed,
            "Application Data/Mozilla/Firefox/Profiles/k3j2.dev/prefs.js"
        ),
        None
    );
}

#[test]
fn location_modify_relative_move() {
    let modify = "<locationModify script=\"MigXmlHelper.RelativeMove('%CSIDL_PERSONAL%\\Old','%CSIDL_PERSONAL%\\New')\">\
                  <objectSet><pattern type=\"File\">%CSIDL_PERSONAL%\\Old\\* [*]</pattern></objectSet></locationModify>";
    let selection = selection(
        "User",
        &[include("%CSIDL_PROFILE%\\* [*]"), modify.to_owned()],
    );
    assert_eq!(
        user_file(&selection, "My Documents/Old/x/a.doc").as_deref(),
        Some("Users/alice/Documents/New/x/a.doc")
    );
    assert_eq!(
        user_file(&selection, "My Documents/Other/a.doc").as_deref(),
        Some("Users/alice/Documents/Other/a.doc")
    );
    assert_eq!(
        selection.decide_user_dir("alice", "My Documents/Old/x"),
        DirDecision::Walk("Users/alice/Documents/New/x".into())
    );
    assert_eq!(
        selection.map_rel("My Documents/Old/a.doc").as_deref(),
        Some("Documents/New/a.doc")
    );
    // Excluded objects are not moved anywhere.
    let selection = self::selection(
        "User",
        &[
            include("%CSIDL_PROFILE%\\* [*]"),
            exclude("%CSIDL_PERSONAL%\\Old\\* [*.tmp]"),
            modify.to_owned(),
        ],
    );
    assert_eq!(user_file(&selection, "My Documents/Old/a.tmp"), None);
}

#[test]
fn location_modify_move_and_exact_move() {
    let selection = selection(
        "System",
        &[
            include("C:\\Data\\* [*]"),
            "<locationModify script=\"MigXmlHelper.Move('C:\\Archive')\">\
             <objectSet><pattern type=\"File\">C:\\Data\\Logs\\* [*.log]</pattern>\
             <pattern type=\"File\">C:\\Data\\Flat [*.csv]</pattern></objectSet></locationModify>"
                .to_owned(),
            "<locationModify script='MigXmlHelper.ExactMove(\"C:\\Data\\boot.ini\")'>\
             <objectSet><pattern type=\"File\">C:\\Data [old-boot.ini]</pattern></objectSet></locationModify>"
                .to_owned(),
        ],
    );
    assert_eq!(
        selection
            .decide_system_file("Data/Logs/2008/a.log")
            .as_deref(),
        Some("Archive/2008/a.log")
    );
    assert_eq!(
        selection.decide_system_file("Data/Logs/a.txt").as_deref(),
        Some("Data/Logs/a.txt")
    );
    assert_eq!(
        selection.decide_system_file("Data/Flat/x.csv").as_deref(),
        Some("Archive/x.csv")
    );
    assert_eq!(
        selection.decide_system_file("Data/old-boot.ini").as_deref(),
        Some("Data/boot.ini")
    );
}

#[test]
fn environment_variables_map_onto_the_machine() {
    let selection = selection(
        "UserAndSystem",
        &[
            include("%SYSTEMDRIVE%\\Data\\* [*]"),
            include("%PROGRAMFILES%\\App\\* [*.ini]"),
            include("%ALLUSERSPROFILE%\\Documents\\* [*]"),
            include("%CSIDL_COMMON_APPDATA%\\Vendor\\* [*]"),
            include("%USERPROFILE%\\Favorites\\* [*]"),
            include("%CSIDL_APPDATA%\\* [*]"),
            include("%CSIDL_LOCAL_APPDATA%\\* [*]"),
            include("%TEMP%\\* [*]"),
            include("C:\\Documents and Settings\\%USERNAME%\\Cookies\\* [*]"),
        ],
    );
    assert_eq!(
        selection.system_roots(),
        [
            "Data",
            "Documents and Settings/All Users/Application Data/Vendor",
            "Documents and Settings/All Users/Documents",
            "Program Files/App",
        ]
    );
    let system = |rel: &str| selection.decide_system_file(rel);
    assert_eq!(
        system("Program Files/App/x.ini").as_deref(),
        Some("Program Files/App/x.ini")
    );
    assert_eq!(system("Program Files/App/x.exe"), None);
    assert_eq!(
        system("Documents and Settings/All Users/Documents/a.doc").as_deref(),
        Some("Users/Public/Documents/a.doc")
    );
    assert_eq!(
        system("Documents and Settings/All Users/Application Data/Vendor/l.dat").as_deref(),
        Some("ProgramData/Vendor/l.dat")
    );
    let cases = [
        ("Favorites/a.url", "Users/alice/Favorites/a.url"),
        (
            "Application Data/x/y.ini",
            "Users/alice/AppData/Roaming/x/y.ini",
        ),
        (
            "Local Settings/Application Data/z.dat",
            "Users/alice/AppData/Local/z.dat",
        ),
        (
            "Local Settings/Temp/t.txt",
            "Users/alice/AppData/Local/Temp/t.txt",
        ),
        (
            "Cookies/alice@site.txt",
            "Users/alice/Cookies/alice@site.txt",
        ),
    ];
    for (rel, target) in cases {
        assert_eq!(user_file(&selection, rel).as_deref(), Some(target), "{rel}");
    }
    assert_eq!(user_file(&selection, "My Documents/a.doc"), None);
    // Machine-wide rules never reach into user profiles or Windows.
    let everything = self::selection("System", &[include("C:\\* [*]")]);
    assert_eq!(everything.system_roots(), [""]);
    assert_eq!(
        everything.decide_system_dir("Documents and Settings/alice"),
        DirDecision::OutOfScope
    );
    assert_eq!(
        everything.decide_system_dir("WINDOWS"),
        DirDecision::OutOfScope
    );
    assert_eq!(
        everything.decide_system_dir("Documents and Settings/All Users"),
        DirDecision::Walk("ProgramData".into())
    );
    assert_eq!(everything.decide_system_file("_fleetmig/journal"), None);
    assert_eq!(
        everything.decide_system_file("boot.ini").as_deref(),
        Some("boot.ini")
    );
}

#[test]
fn unsupported_constructs_warn_with_line_numbers() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<migration urlid="http://www.microsoft.com/migration/1.0/migxmlext/custom">
  <component type="Documents" context="User">
    <displayName>Custom</displayName>
    <role role="Data">
      <detects><detect><condition>MigXmlHelper.DoesObjectExist("File","C:\x")</condition></detect></detects>
      <rules>
        <include filter='MigXmlHelper.IgnoreIrrelevantLinks()'>
          <objectSet>
            <pattern type="Registry">HKCU\Software\Foo [*]</pattern>
            <pattern type="File">%CSIDL_PERSONAL%\* [*.doc]</pattern>
            <pattern type="File">%NOT_A_VARIABLE%\* [*]</pattern>
            <script>MigXmlHelper.GenerateDrivePatterns ("* [*.pst]", "Fixed")</script>
            <pattern type="File">D:\Data\* [*]</pattern>
          </objectSet>
        </include>
        <merge script="MigXmlHelper.SourcePriority()">
          <objectSet><pattern type="File">%CSIDL_PERSONAL%\* [*]</pattern></objectSet>
        </merge>
        <locationModify script="MigXmlHelper.Frobnicate('C:\x')">
          <objectSet><pattern type="File">%CSIDL_PERSONAL%\* [*]</pattern></objectSet>
        </locationModify>
      </rules>
    </role>
  </component>
  <component type="System" context="System">
    <role role="Settings">
      <rules>
        <include><objectSet><pattern type="File">%CSIDL_DESKTOP%\* [*]</pattern></objectSet></include>
        <addObjects><object><location type="File">C:\x</location></object></addObjects>
        <include><objectSet><pattern type="File">%SYSTEMROOT%\Fonts\* [*]</pattern></objectSet></include>
      </rules>
    </role>
  </component>
</migration>
"#;
    let (set, warnings) = RuleSet::parse(xml, "custom.xml").unwrap();
    let lines: Vec<u32> = warnings.iter().map(|warning| warning.line).collect();
    assert_eq!(
        lines,
        [6, 8, 10, 12, 13, 14, 17, 20, 29, 29, 30, 31],
        "{warnings:#?}"
    );
    let text = |line: u32| {
        warnings
            .iter()
            .filter(|warning| warning.line == line)
            .map(|warning| warning.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(
        text(6).contains("<detects> is not evaluated"),
        "{}",
        text(6)
    );
    assert!(text(8).contains("filter"));
    assert!(text(10).contains("registry pattern"));
    assert!(text(12).contains("unknown variable %NOT_A_VARIABLE%"));
    assert!(text(13).contains("script"));
    assert!(text(14).contains("drive D:"));
    assert!(text(17).contains("<merge> is not supported"));
    assert!(text(20).contains("MigXmlHelper.Frobnicate is not supported"));
    assert!(text(29).contains("per-user folder") && text(29).contains("System"));
    assert!(text(29).contains("rule without any supported file pattern"));
    assert!(text(30).contains("<addObjects>"));
    assert!(text(31).contains("never migrates WINDOWS"));
    assert!(text(6).starts_with("custom.xml:6:"));
    // What is supported still applies.
    assert_eq!(set.rules.len(), 1);
    assert_eq!(set.rules[0].origin.line, 11);
    assert!(set.moves.is_empty());
}

#[test]
fn malformed_xml_is_an_error_with_line_and_column() {
    let xml = "<migration urlid=\"x\">\n  <component context=\"User\">\n    <rules>\n  </component>\n</migration>\n";
    let error = RuleSet::parse(xml, "broken.xml").unwrap_err();
    let Error::RulesXml {
        file, line, column, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!((file.as_str(), *line), ("broken.xml", 4), "{error}");
    assert!(*column >= 3, "{error}");
    assert!(error.to_string().starts_with("rules file broken.xml:4:"));

    let error = RuleSet::parse("\n<rules/>", "wrong.xml").unwrap_err();
    assert!(
        matches!(&error, Error::RulesXml { line: 2, column: 1, message, .. } if message.contains("expected <migration>")),
        "{error}"
    );
    let error = RuleSet::parse("", "empty.xml").unwrap_err();
    assert!(matches!(error, Error::RulesXml { .. }), "{error}");
}

#[test]
fn several_files_merge_and_compete() {
    let custom = document("User", &exclude("%CSIDL_PROFILE%\\* [*.mp3]"));
    let (custom, warnings) = RuleSet::parse(&custom, "nomp3.xml").unwrap();
    assert!(warnings.is_empty());
    let merged = Selection::from_rules(RuleSet::merge([RuleSet::builtin(), custom]));
    assert_eq!(
        merged.decide_user_file("bob", "My Documents/My Music/a.MP3"),
        None
    );
    assert_eq!(
        merged
            .decide_user_file("bob", "My Documents/My Music/a.wma")
            .as_deref(),
        Some("Users/bob/Music/a.wma")
    );
    assert_eq!(
        merged.decide_user_file("bob", "Local Settings/Temp/x"),
        None
    );
}

/// A document using every supported and several unsupported constructs, for mutation.
fn rich_document() -> String {
    let mut xml = String::from(BUILTIN_XML);
    let extra = document(
        "UserAndSystem",
        &[
            include("C:\\Data\\* [*]"),
            exclude("%CSIDL_PERSONAL%\\* [*.mp3]"),
            unconditional("%CSIDL_PROFILE%\\*\\Cache\\* [*]"),
            "<locationModify script=\"MigXmlHelper.RelativeMove('%CSIDL_PERSONAL%\\Old','%CSIDL_PERSONAL%\\New')\">\
             <objectSet><pattern type=\"File\">%CSIDL_PERSONAL%\\Old\\* [*]</pattern></objectSet></locationModify>"
                .to_owned(),
            "<merge script=\"x\"/><detects/><pattern type=\"Registry\">HKLM\\x [y]</pattern>".to_owned(),
        ]
        .concat(),
    );
    xml.push_str(&extra);
    xml
}

fn exercise(xml: &str) {
    if let Ok((set, _)) = RuleSet::parse(xml, "fuzz.xml") {
        let selection = Selection::from_rules(set);
        for rel in [
            "My Documents/Old/a.doc",
            "My Documents/x.mp3",
            "Local Settings/Temp/a",
            "",
            "a/b/Cache/c",
        ] {
            let _ = selection.decide_user_file("u", rel);
            let _ = selection.decide_user_dir("u", rel);
            let _ = selection.map_rel(rel);
        }
        for root in selection.system_roots() {
            let _ = selection.decide_system_dir(&root);
            let _ = selection.decide_system_file(&format!("{root}/x.txt"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        exercise(&text);
        exercise(&document("User", &include(&text)));
    }

    #[test]
    fn mutated_documents_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, "[<>/\\\\%\\[\\]*?'\"=a-zA-Z: ]{0,12}"), 1..6)
    ) {
        let mut xml = rich_document();
        for (at, remove, insert) in edits {
            let mut start = at.index(xml.len() + 1);
            while !xml.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + remove).min(xml.len());
            while !xml.is_char_boundary(end) {
                end -= 1;
            }
            xml.replace_range(start..end, &insert);
        }
        exercise(&xml);
    }

    #[test]
    fn arbitrary_patterns_never_panic(pattern in "[%A-Za-z_:\\\\/ .*?\\[\\]]{0,60}") {
        for context in ["User", "System", "UserAndSystem", "Bogus"] {
            exercise(&document(context, &include(&pattern)));
        }
    }
}

/// Capture with custom rules end to end: a profile exclusion and a machine-wide folder.
#[test]
fn capture_with_custom_rules_end_to_end() {
    use crate::generate::{GenOptions, generate_machine};
    use crate::hardlink::{CaptureOptions, capture, verify_store};
    use crate::manifest::{EntryKind, Manifest};
    use crate::progress::NoProgress;

    let root = tempfile::tempdir().unwrap();
    let opts = GenOptions {
        seed: 7,
        users: 2,
        files_per_user: 300,
        hostname: None,
    };
    generate_machine(root.path(), &opts).unwrap();
    let data = root.path().join("Data");
    std::fs::create_dir_all(data.join("Projects/2008")).unwrap();
    std::fs::write(data.join("report.txt"), b"quarterly").unwrap();
    std::fs::write(data.join("Projects/2008/song.mp3"), b"not a profile mp3").unwrap();
    let source_mp3s = walkdir::WalkDir::new(root.path().join("Documents and Settings"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".mp3"))
        .count();
    assert!(source_mp3s > 0, "the generator makes music");

    let custom_xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<migration urlid="http://www.microsoft.com/migration/1.0/migxmlext/custom">
  <component type="Documents" context="UserAndSystem">
    <displayName>No music; the Data folder</displayName>
    <role role="Data">
      <rules>
        <exclude>
          <objectSet><pattern type="File">%CSIDL_PROFILE%\* [*.mp3]</pattern></objectSet>
        </exclude>
        <include>
          <objectSet><pattern type="File">C:\Data\* [*]</pattern></objectSet>
        </include>
      </rules>
    </role>
  </component>
</migration>
"#;
    let rules_file = root.path().join("custom.xml");
    std::fs::write(&rules_file, custom_xml).unwrap();
    let (custom, warnings) = RuleSet::load(&rules_file).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let selection = Selection::from_rules(RuleSet::merge([RuleSet::builtin(), custom]));
    let store = root.path().join("StateStore/job");
    let capture_opts = CaptureOptions {
        selection,
        ..CaptureOptions::new("job")
    };
    let report = capture(root.path(), &store, &capture_opts, &NoProgress).unwrap();
    assert!(report.excluded_files >= source_mp3s as u64);

    let manifest = Manifest::load_sealed(&store).unwrap();
    assert!(
        manifest
            .entries
            .iter()
            .all(|entry| entry.user.is_empty() || !entry.target.ends_with(".mp3")),
        "profile mp3s are excluded"
    );
    let system: Vec<_> = manifest
        .entries
        .iter()
        .filter(|entry| entry.user.is_empty())
        .map(|entry| {
            (
                entry.kind,
                entry.source.as_str(),
                entry.target.as_str(),
                entry.store.as_str(),
            )
        })
        .collect();
    assert_eq!(
        system,
        [
            (EntryKind::Dir, "Data", "Data", "data/_system/Data"),
            (
                EntryKind::Dir,
                "Data/Projects",
                "Data/Projects",
                "data/_system/Data/Projects"
            ),
            (
                EntryKind::Dir,
                "Data/Projects/2008",
                "Data/Projects/2008",
                "data/_system/Data/Projects/2008"
            ),
            (
                EntryKind::File,
                "Data/Projects/2008/song.mp3",
                "Data/Projects/2008/song.mp3",
                "data/_system/Data/Projects/2008/song.mp3"
            ),
            (
                EntryKind::File,
                "Data/report.txt",
                "Data/report.txt",
                "data/_system/Data/report.txt"
            ),
        ]
    );
    assert!(
        manifest
            .entries
            .iter()
            .any(|entry| entry.target.ends_with("/Documents") && !entry.user.is_empty()),
        "the built-in rules still capture the profiles"
    );
    assert!(verify_store(root.path(), &store).unwrap().is_ok());

    // Through a reimage and restore, the Data folder comes back where it was.
    crate::reimage::simulate_reimage(root.path(), std::slice::from_ref(&store)).unwrap();
    assert!(!data.exists());
    let restored = crate::restore::restore(
        &store,
        root.path(),
        &crate::restore::RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(restored.files_linked > 2);
    assert_eq!(
        std::fs::read(data.join("report.txt")).unwrap(),
        b"quarterly"
    );
    assert!(data.join("Projects/2008/song.mp3").is_file());
}

/// A machine-wide `C:\* [*]` never captures the store, user profiles or `WINDOWS`.
#[test]
fn whole_drive_rule_skips_store_profiles_and_windows() {
    use crate::generate::{GenOptions, generate_machine};
    use crate::hardlink::{CaptureOptions, capture, verify_store};
    use crate::manifest::Manifest;
    use crate::progress::NoProgress;

    let root = tempfile::tempdir().unwrap();
    let opts = GenOptions {
        seed: 3,
        users: 1,
        files_per_user: 60,
        hostname: None,
    };
    generate_machine(root.path(), &opts).unwrap();
    let xml = document("System", &include("C:\\* [*]"));
    let (set, warnings) = RuleSet::parse(&xml, "all.xml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let store = root.path().join("MigStore");
    let capture_opts = CaptureOptions {
        selection: Selection::from_rules(RuleSet::merge([RuleSet::builtin(), set])),
        ..CaptureOptions::new("job")
    };
    capture(root.path(), &store, &capture_opts, &NoProgress).unwrap();
    let manifest = Manifest::load_sealed(&store).unwrap();
    let system: Vec<&str> = manifest
        .entries
        .iter()
        .filter(|entry| entry.user.is_empty())
        .map(|entry| entry.source.as_str())
        .collect();
    assert!(!system.is_empty());
    for source in &system {
        let top = source.split('/').next().unwrap();
        assert!(!top.eq_ignore_ascii_case("WINDOWS"), "{source}");
        assert!(!top.starts_with("MigStore"), "{source}");
        if let Some(profile) = source.strip_prefix("Documents and Settings/") {
            let profile = profile.split('/').next().unwrap();
            assert!(crate::layout::is_system_profile(profile), "{source}");
        }
    }
    assert!(
        system
            .iter()
            .any(|source| source.starts_with("Program Files/"))
    );
    assert!(verify_store(root.path(), &store).unwrap().is_ok());
}

#[test]
fn system_entries_pass_manifest_validation_only_where_allowed() {
    use crate::manifest::{Entry, EntryKind, Manifest};
    let entry = |target: &str, store: &str| Entry {
        kind: EntryKind::File,
        user: String::new(),
        source: "Data/a.txt".into(),
        target: target.into(),
        store: store.into(),
        size: 1,
        mtime_ns: 0,
        mode: 0o100644,
        inode: 1,
        link_target: None,
        link_escapes: false,
    };
    let check = |entry: Entry| {
        let mut manifest = Manifest::new("j", std::path::Path::new("/m"));
        manifest.entries.push(entry);
        manifest.validate()
    };
    check(entry("Data/a.txt", "data/_system/Data/a.txt")).unwrap();
    check(entry("Users/Public/Documents/a.txt", "data/_system/x")).unwrap();
    for (target, store) in [
        ("Windows/System32/evil.dll", "data/_system/a"),
        ("windows/evil.dll", "data/_system/a"),
        ("_fleetmig/journal", "data/_system/a"),
        ("StateStore/x", "data/_system/a"),
        ("Data/../../etc/passwd", "data/_system/a"),
        ("/etc/passwd", "data/_system/a"),
        ("Data/a.txt", "data/alice/a"),
        ("Data/a.txt", "../x"),
    ] {
        assert!(
            check(entry(target, store)).is_err(),
            "{target} {store} must be refused"
        );
    }
}
