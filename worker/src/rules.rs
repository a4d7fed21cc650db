//! The capture selection of an assignment: the plan's rule files, compiled.

use fleetmig_proto::v1;
use fleetmig_state::Selection;
use fleetmig_state::rules::RuleSet;

use crate::error::{Error, Result};

/// The selection for `job_id`'s capture: the built-in rules when the plan named none, else its
/// rule files merged in order (like several USMT `/i:` files). The controller validated them;
/// a file that does not parse here (a different engine version) fails the job, naming it.
pub fn selection(job_id: &str, files: &[v1::RuleFile]) -> Result<Selection> {
    if files.is_empty() {
        return Ok(Selection::default());
    }
    let mut sets = Vec::with_capacity(files.len());
    for file in files {
        let (set, warnings) =
            RuleSet::parse(&file.xml, &file.name).map_err(|error| Error::BadAssignment {
                job_id: job_id.to_owned(),
                reason: format!("rule file {}: {error}", file.name),
            })?;
        for warning in warnings {
            tracing::debug!(%job_id, %warning, "rule not honoured");
        }
        sets.push(set);
    }
    let merged = RuleSet::merge(sets);
    if merged.is_empty() {
        return Err(Error::BadAssignment {
            job_id: job_id.to_owned(),
            reason: "the plan's rule files include nothing: nothing would be captured".into(),
        });
    }
    Ok(Selection::from_rules(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_files_means_the_builtin_rules_and_bad_xml_names_the_file() {
        assert_eq!(selection("j", &[]).unwrap(), Selection::default());
        let bad = v1::RuleFile {
            name: "rules/broken.xml".into(),
            xml: "<migration".into(),
        };
        let error = selection("j", &[bad]).unwrap_err().to_string();
        assert!(error.contains("rules/broken.xml"), "{error}");
        let builtin = v1::RuleFile {
            name: fleetmig_state::rules::BUILTIN_NAME.into(),
            xml: fleetmig_state::rules::BUILTIN_XML.into(),
        };
        assert!(selection("j", &[builtin]).is_ok());
    }
}
