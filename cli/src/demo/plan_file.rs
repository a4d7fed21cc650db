//! The plan the demo applies: one refresh wave over the generated machines.

/// Name of the demo's plan.
pub const PLAN_NAME: &str = "demo";
/// Name of the demo's only wave.
pub const WAVE_NAME: &str = "demo-wave";
/// Machines migrated at once.
pub const MAX_IN_FLIGHT: u32 = 5;

/// The plan TOML selecting `hostnames` for one refresh wave.
pub fn render(hostnames: &[String]) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|name| toml_string(name)).collect();
    format!(
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
    )
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
        let plan = render(&["PC-0001".to_owned(), "PC-0002".to_owned()]);
        assert_eq!(
            plan,
            "version = 1\nname = \"demo\"\n\n[[waves]]\nname = \"demo-wave\"\nscenario = \"refresh\"\n\
             max_in_flight = 5\n[waves.select]\nhostnames = [\"PC-0001\", \"PC-0002\"]\n"
        );
    }

    #[test]
    fn rendered_plan_is_valid_toml_with_the_hostnames() {
        let odd = "PC \"quoted\" \\ tab\t".to_owned();
        let plan = render(&["PC-0001".to_owned(), odd.clone()]);
        let value: toml::Value = toml::from_str(&plan).expect("valid toml");
        assert_eq!(value["version"].as_integer(), Some(1));
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
}
