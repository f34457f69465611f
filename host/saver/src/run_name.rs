//! The run's name when the config gives none, chosen as Composer's `Trainer` chooses it
//! (`composer/trainer/trainer.py`, `Trainer.__init__` and `_generate_run_name`):
//! `COMPOSER_RUN_NAME`, else `RUN_NAME`, else a generated name unique to this run,
//! `<unix seconds>-<adjective>-<animal>` — the time first so that runs sort by start, then a
//! two-word slug as Composer's `coolname.generate_slug(2)` gives.
//!
//! A fixed default would put unrelated runs into one `{run_name}/checkpoints` folder, where
//! retention and resume then see each other's checkpoints.

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the run's name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunNameOrigin {
    /// `run_name` in the config.
    Config,
    /// The environment variable named (`COMPOSER_RUN_NAME` or `RUN_NAME`).
    Environment(&'static str),
    /// Generated for this process: no other run has it, so nothing can be resumed under it.
    Generated,
}

/// The variables Composer reads, in its order.
const VARIABLES: [&str; 2] = ["COMPOSER_RUN_NAME", "RUN_NAME"];

/// The name of a run whose config has no `run_name`. An empty variable counts as unset.
pub fn default_run_name() -> (String, RunNameOrigin) {
    for var in VARIABLES {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return (name, RunNameOrigin::Environment(var));
        }
    }
    (generate(), RunNameOrigin::Generated)
}

/// `<unix seconds>-<adjective>-<animal>`, e.g. `1767225600-amber-heron`.
pub fn generate() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // `RandomState` is seeded from the operating system's randomness for each process; the time
    // and the process id are mixed in so two savers of one process differ too.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    let bits = hasher.finish();
    let adjective = ADJECTIVES[(bits % ADJECTIVES.len() as u64) as usize];
    let animal = ANIMALS[((bits >> 32) % ANIMALS.len() as u64) as usize];
    format!("{seconds}-{adjective}-{animal}")
}

const ADJECTIVES: [&str; 64] = [
    "amber", "ancient", "arctic", "bold", "brave", "bright", "brisk", "calm", "clever", "cobalt",
    "crimson", "curious", "dapper", "daring", "eager", "electric", "emerald", "fancy", "fearless",
    "fluffy", "gentle", "giant", "golden", "graceful", "happy", "hidden", "honest", "humble",
    "icy", "indigo", "jolly", "keen", "lively", "lucky", "magic", "mellow", "mighty", "misty",
    "nimble", "noble", "olive", "patient", "polar", "proud", "quick", "quiet", "rapid", "royal",
    "rustic", "scarlet", "silent", "silver", "smart", "snowy", "spry", "steady", "sunny", "swift",
    "tidy", "topaz", "vivid", "warm", "wise", "zesty",
];

const ANIMALS: [&str; 64] = [
    "albatross",
    "alpaca",
    "badger",
    "beaver",
    "bison",
    "bobcat",
    "caribou",
    "cheetah",
    "condor",
    "coyote",
    "crane",
    "dingo",
    "dolphin",
    "eagle",
    "egret",
    "falcon",
    "ferret",
    "finch",
    "gazelle",
    "gecko",
    "gibbon",
    "heron",
    "hyena",
    "ibex",
    "ibis",
    "jackal",
    "jaguar",
    "kestrel",
    "koala",
    "lemur",
    "leopard",
    "lynx",
    "magpie",
    "marmot",
    "marten",
    "meerkat",
    "mink",
    "moose",
    "narwhal",
    "ocelot",
    "okapi",
    "orca",
    "osprey",
    "otter",
    "owl",
    "panda",
    "panther",
    "pelican",
    "puffin",
    "quail",
    "raven",
    "salmon",
    "seal",
    "sparrow",
    "stoat",
    "swan",
    "tapir",
    "tiger",
    "toucan",
    "walrus",
    "weasel",
    "wolf",
    "wombat",
    "yak",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_start_with_the_time_and_differ() {
        let a = generate();
        let parts: Vec<&str> = a.splitn(3, '-').collect();
        assert_eq!(parts.len(), 3, "{a}");
        let seconds: u64 = parts[0].parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now - seconds < 5, "{a}");
        assert!(
            ADJECTIVES.contains(&parts[1]) && ANIMALS.contains(&parts[2]),
            "{a}"
        );
        let names: std::collections::HashSet<String> = (0..64).map(|_| generate()).collect();
        assert!(names.len() > 32, "64 names, only {} distinct", names.len());
    }
}
