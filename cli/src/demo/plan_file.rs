//! The plan the demo applies: a refresh wave over the generated machines and,
//! when there are replace pairs, a replace wave moving each source's state to
//! its destination through the storage node.

/// Name of the demo's plan.
pub const PLAN_NAME: &str = "demo";
/// Name of the demo's refresh wave.
pub const WAVE_NAME: &str = "demo-wave";
/// Name of the demo's replace wave (only in the plan when there are pairs).
pub const REPLACE_WAVE_NAME: &str = "demo-replace";
/// Machines migrated at once, in each wave.
pub const MAX_IN_FLIGHT: u32 = 5;

/// A replace wave's computer association, by hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The old machine whose state moves.
    pub source: &'a str,
    /// The new machine that receives it.
    pub destination: &'a str,
}

/// The plan TOML: one refresh wave selecting `hostnames`, then, unless
/// `pairs` is empty, one replace wave with those pairs (a replace wave has no
/// `[waves.select]`; the controller selects the sources from the pairs).
pub fn render(hostnames: &[String], pairs: &[Pair<'_>]) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|name| toml_string(name)).collect();
    let mut plan = format!(
        "version = 1\n\
         name = {plan}\n\
         \n\
         [[waves]]\n\
         name = {wave}\n\
         scenario = \"refresh\"\n\
         max_in_flight = {MAX_IN_FLIGHT}\n\
         [waves.select]\n\
         hostnames = [{hostnames}]\n",
        plan = toml_string(PLAN_NAME),
        wave = toml_string(WAVE_NAME),
        hostnames = hostnames.join(", "),
    );
    if pairs.is_empty() {
        return plan;
    }
    plan.push_str(&format!(
        "\n\
         [[waves]]\n\
         name = {wave}\n\
         scenario = \"replace\"\n\
         max_in_flight = {MAX_IN_FLIGHT}\n\
         pairs = [\n",
        wave = toml_string(REPLACE_WAVE_NAME),
    ));
    for pair in pairs {
        plan.push_str(&format!(
            "  {{ source = {}, destination = {} }},\n",
            toml_string(pair.source),
            toml_string(pair.destination)
        ));
    }
    plan.push_str("]\n");
    plan
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_plan() {
        let plan = render(&["PC-0001".to_owned(), "PC-0002".to_owned()], &[]);
        assert_eq!(
            plan,
            "version = 1\nname = \"demo\"\n\n[[waves]]\nname = \"demo-wave\"\nscenario = \"refresh\"\n\
             max_in_flight = 5\n[waves.select]\nhostnames = [\"PC-0001\", \"PC-0002\"]\n"
        );
    }

    #[test]
    fn renders_the_replace_wave_after_the_refresh_wave() {
        let pairs = [
            Pair {
                source: "XP-R01",
                destination: "W7-R01",
            },
            Pair {
                source: "XP-R02",
                destination: "W7-R02",
            },
        ];
        let plan = render(&["PC-0001".to_owned()], &pairs);
        assert_eq!(
            plan,
            "version = 1\nname = \"demo\"\n\n[[waves]]\nname = \"demo-wave\"\nscenario = \"refresh\"\n\
             max_in_flight = 5\n[waves.select]\nhostnames = [\"PC-0001\"]\n\
             \n[[waves]]\nname = \"demo-replace\"\nscenario = \"replace\"\nmax_in_flight = 5\n\
             pairs = [\n\
             \x20 { source = \"XP-R01\", destination = \"W7-R01\" },\n\
             \x20 { source = \"XP-R02\", destination = \"W7-R02\" },\n\
             ]\n"
        );
    }

    #[test]
    fn rendered_plan_is_valid_toml_with_the_hostnames() {
        let odd = "PC \"quoted\" \\ tab\t".to_owned();
        let plan = render(&["PC-0001".to_owned(), odd.clone()], &[]);
        let value: toml::Value = toml::from_str(&plan).expect("valid toml");
        assert_eq!(value["version"].as_integer(), Some(1));
        assert_eq!(value["waves"].as_array().map(Vec::len), Some(1));
        let wave = &value["waves"][0];
        assert_eq!(wave["name"].as_str(), Some(WAVE_NAME));
        assert_eq!(wave["scenario"].as_str(), Some("refresh"));
        assert_eq!(wave["max_in_flight"].as_integer(), Some(5));
        let hostnames: Vec<&str> = wave["select"]["hostnames"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        assert_eq!(hostnames, ["PC-0001", odd.as_str()]);
    }

    #[test]
    fn rendered_replace_wave_is_valid_toml_with_the_pairs() {
        let odd = "W7 \"new\" \\".to_owned();
        let pairs = [
            Pair {
                source: "XP-R01",
                destination: &odd,
            },
            Pair {
                source: "XP-R02",
                destination: "W7-R02",
            },
        ];
        let plan = render(&["PC-0001".to_owned()], &pairs);
        let value: toml::Value = toml::from_str(&plan).expect("valid toml");
        let waves = value["waves"].as_array().expect("waves");
        assert_eq!(waves.len(), 2);
        assert_eq!(waves[0]["name"].as_str(), Some(WAVE_NAME));
        let replace = &waves[1];
        assert_eq!(replace["name"].as_str(), Some(REPLACE_WAVE_NAME));
        assert_eq!(replace["scenario"].as_str(), Some("replace"));
        assert_eq!(replace["max_in_flight"].as_integer(), Some(5));
        assert!(replace.get("select").is_none(), "{plan}");
        let parsed: Vec<(&str, &str)> = replace["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|pair| {
                (
                    pair["source"].as_str().expect("source"),
                    pair["destination"].as_str().expect("destination"),
                )
            })
            .collect();
        assert_eq!(parsed, [("XP-R01", odd.as_str()), ("XP-R02", "W7-R02")]);
    }
}
