//! `scenario = "auto"`: the controller decides per machine.
//!
//! In an auto wave, every source named in `pairs` is a replace job (new
//! hardware: its state goes through a storage node to the destination);
//! every other selected machine is a refresh job, which needs a system
//! volume with hard links and room for the hard-link store
//! ([`refresh_store_bytes`]). A selected machine that can be neither is a
//! located validation problem.
//!
//! Until the model has `Scenario::Auto`, an auto wave is stored as a
//! [`Scenario::Refresh`] spec with pairs (a combination explicit waves
//! cannot produce), as a plain refresh spec when it has no pairs, and as a
//! replace spec when it has nothing but pairs. [`resolve_scenario`] gives
//! each machine's concrete scenario from the stored spec.

use super::{Inventory, Named, Problems, RawSelector, check_selector, shown, sources_selector};
use crate::model::{
    Association, Inventory as MachineInventory, Machine, Scenario, Selector, WaveSpec,
};
use std::ops::Range;
use toml::Spanned;

/// Fixed part of the room a refresh needs on the system volume: the store's
/// manifest, directories and journal, 64 MiB.
pub const REFRESH_STORE_FIXED_BYTES: u64 = 64 * 1024 * 1024;

/// A wave's scenario as the plan writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedScenario {
    /// Same hardware, hard-link store on the system volume.
    Refresh,
    /// New hardware, state through a storage node, by `pairs`.
    Replace,
    /// Replace for the sources of `pairs`, refresh for every other selected
    /// machine that can be refreshed.
    Auto,
}

impl PlannedScenario {
    /// The planned scenario of a stored spec: a refresh spec with pairs is
    /// an auto wave (explicit refresh waves cannot have pairs).
    pub fn of(spec: &WaveSpec) -> PlannedScenario {
        match spec.scenario {
            Scenario::Replace => PlannedScenario::Replace,
            Scenario::Refresh if spec.pairs.is_empty() => PlannedScenario::Refresh,
            Scenario::Refresh => PlannedScenario::Auto,
        }
    }
}

/// Free bytes a refresh needs on the machine's system volume: a hard-link
/// store takes little room, so 1% of its profiles' bytes plus
/// [`REFRESH_STORE_FIXED_BYTES`].
pub fn refresh_store_bytes(inventory: &MachineInventory) -> u64 {
    let profiles = inventory
        .profiles
        .iter()
        .fold(0u64, |sum, profile| sum.saturating_add(profile.bytes));
    (profiles / 100).saturating_add(REFRESH_STORE_FIXED_BYTES)
}

/// Whether the machine's inventory allows a refresh: hard links on the
/// system volume and at least [`refresh_store_bytes`] free. `Err` says why
/// not.
pub fn can_refresh(machine: &Machine) -> Result<(), String> {
    let inventory = &machine.inventory;
    let mut reasons = Vec::new();
    if !inventory.supports_hard_links {
        reasons.push("its system volume does not support hard links".to_string());
    }
    let needed = refresh_store_bytes(inventory);
    if inventory.free_bytes < needed {
        reasons.push(format!(
            "not enough room: {} free, the hard-link store needs {}",
            bytes(inventory.free_bytes),
            bytes(needed)
        ));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

/// The concrete scenario of `machine`'s job in the wave `spec`: refresh
/// waves refresh, replace waves replace their pairs' sources, auto waves
/// (see [`PlannedScenario::of`]) replace their pairs' sources and refresh
/// every other machine that [`can_refresh`]. `Err` names the machine and
/// why it has no job in this wave.
pub fn resolve_scenario(spec: &WaveSpec, machine: &Machine) -> Result<Scenario, String> {
    let host = &machine.inventory.hostname;
    let is_source = spec
        .pairs
        .iter()
        .any(|pair| pair.source.eq_ignore_ascii_case(host));
    let is_destination = spec
        .pairs
        .iter()
        .any(|pair| pair.destination.eq_ignore_ascii_case(host));
    match PlannedScenario::of(spec) {
        PlannedScenario::Refresh => Ok(Scenario::Refresh),
        PlannedScenario::Replace if is_source => Ok(Scenario::Replace),
        PlannedScenario::Replace => Err(format!(
            "machine {} is not the source of any pair of wave {}",
            shown(host),
            spec.name
        )),
        PlannedScenario::Auto if is_source => Ok(Scenario::Replace),
        PlannedScenario::Auto if is_destination => Err(destination_message(&spec.name, host)),
        PlannedScenario::Auto => can_refresh(machine)
            .map(|()| Scenario::Refresh)
            .map_err(|reason| cannot_refresh_message(&spec.name, host, &reason)),
    }
}

fn destination_message(wave: &str, host: &str) -> String {
    format!(
        "wave {wave}: machine {} is the destination of a pair; it cannot also be refreshed in this wave",
        shown(host)
    )
}

fn cannot_refresh_message(wave: &str, host: &str, reason: &str) -> String {
    format!(
        "wave {wave}: machine {} cannot be refreshed ({reason}) and has no destination pair",
        shown(host)
    )
}

/// Checks an auto wave: its selector (optional when it has pairs), and
/// every selected machine that is not a pair's source against
/// [`can_refresh`], located at the entry naming it or at `[waves.select]`.
/// Returns the scenario and selector to store (see the module doc).
pub(super) fn auto_wave(
    problems: &mut Problems,
    wave: &str,
    wave_span: Range<usize>,
    raw_select: Option<Spanned<RawSelector>>,
    pairs: &[Association],
    has_pairs: bool,
    inventory: &Inventory<'_>,
) -> (Scenario, Option<Selector>) {
    let Some(raw_select) = raw_select else {
        if !has_pairs {
            problems.at(
                wave_span,
                format!(
                    "wave {wave} (scenario \"auto\") selects nothing: add [waves.select], pairs or both"
                ),
            );
            return (Scenario::Refresh, None);
        }
        return (Scenario::Replace, Some(sources_selector(pairs)));
    };
    let Some((mut select, named, select_span)) =
        check_selector(problems, wave, raw_select, inventory)
    else {
        return (Scenario::Refresh, None);
    };
    let location = |machine: &Machine| -> Range<usize> {
        named_span(&named, machine).unwrap_or_else(|| select_span.clone())
    };
    for machine in inventory.machines.iter().filter(|m| select.matches(m)) {
        let host = &machine.inventory.hostname;
        if pairs.iter().any(|p| p.source.eq_ignore_ascii_case(host)) {
            continue;
        }
        if pairs
            .iter()
            .any(|p| p.destination.eq_ignore_ascii_case(host))
        {
            problems.at(location(machine), destination_message(wave, host));
        } else if let Err(reason) = can_refresh(machine) {
            problems.at(
                location(machine),
                cannot_refresh_message(wave, host, &reason),
            );
        }
    }
    for pair in pairs {
        if !select
            .hostnames
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&pair.source))
        {
            select.hostnames.push(pair.source.clone());
        }
    }
    (Scenario::Refresh, Some(select))
}

/// Where the selector names `machine` explicitly (by hostname or id).
fn named_span(named: &Named, machine: &Machine) -> Option<Range<usize>> {
    named
        .get(&machine.inventory.hostname.to_ascii_lowercase())
        .or_else(|| named.get(&machine.id))
        .cloned()
}

/// Bytes for a message: `1.5 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
