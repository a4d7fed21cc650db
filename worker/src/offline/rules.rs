//! `--rules FILE`: USMT-style XML rule files turned into the capture [`Selection`].

use std::path::PathBuf;

use fleetmig_state::Selection;
use fleetmig_state::rules::RuleSet;

use crate::error::{Error, Result};

/// The selection for a capture and what the rule files asked for that is not honoured.
pub struct Rules {
    /// The compiled selection.
    pub selection: Selection,
    /// One line per ignored construct (`file:line:column: message`).
    pub warnings: Vec<String>,
}

/// The built-in rules without `--rules`, else the given files merged in order (like several
/// USMT `/i:` files). A missing file is a bad argument; malformed XML is the engine's
/// [`fleetmig_state::Error::RulesXml`] (also a bad argument, with line and column).
pub fn load(paths: &[PathBuf]) -> Result<Rules> {
    if paths.is_empty() {
        return Ok(Rules {
            selection: Selection::default(),
            warnings: Vec::new(),
        });
    }
    let mut sets = Vec::with_capacity(paths.len());
    let mut warnings = Vec::new();
    for path in paths {
        if !path.is_file() {
            return Err(Error::BadArguments(format!(
                "rules file {} does not exist or is not a file",
                path.display()
            )));
        }
        let (set, found) = RuleSet::load(path)?;
        for warning in found {
            tracing::warn!(%warning, "rule not honoured");
            warnings.push(warning.to_string());
        }
        sets.push(set);
    }
    let merged = RuleSet::merge(sets);
    if merged.is_empty() {
        return Err(Error::BadArguments(format!(
            "the rules files ({}) include nothing: nothing would be captured",
            paths
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Rules {
        selection: Selection::from_rules(merged),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::exit::{Code, code_of};

    #[test]
    fn missing_or_malformed_rules_are_bad_arguments() {
        assert!(load(&[]).unwrap().warnings.is_empty());
        let error = load(&[PathBuf::from("/nonexistent/MigUser.xml")])
            .err()
            .unwrap();
        assert_eq!(code_of(&error), Code::BadArguments, "{error}");
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.xml");
        std::fs::write(&broken, "<migration><component>").unwrap();
        let error = load(&[broken]).err().unwrap();
        assert_eq!(code_of(&error), Code::BadArguments, "{error}");
    }

    #[test]
    fn custom_rules_compile() {
        let dir = tempfile::tempdir().unwrap();
        let docs = dir.path().join("docs.xml");
        std::fs::write(
            &docs,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<migration urlid="http://www.microsoft.com/migration/1.0/migxmlext/docs">
  <component type="Documents" context="User">
    <displayName>Docs</displayName>
    <role role="Data">
      <rules>
        <include>
          <objectSet>
            <pattern type="File">%CSIDL_PERSONAL%\* [*.doc]</pattern>
          </objectSet>
        </include>
      </rules>
    </role>
  </component>
</migration>
"#,
        )
        .unwrap();
        let rules = load(&[docs]).unwrap();
        assert_eq!(
            rules.selection.map_rel("My Documents/a.doc").as_deref(),
            Some("Documents/a.doc")
        );
        assert_eq!(rules.selection.map_rel("My Documents/a.xls"), None);
    }
}
