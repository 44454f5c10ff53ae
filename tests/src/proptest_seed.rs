//! The property tests' fixed seed, shared by every crate's tests: a failure in CI reproduces on
//! any machine, and proptest's own variables still run other cases (`PROPTEST_CASES=2000` for
//! many more, `PROPTEST_RNG_SEED=<u64>` for another draw).

use proptest::test_runner::{Config, RngSeed};

/// The seed the property tests draw their cases from unless `PROPTEST_RNG_SEED` says otherwise.
pub const PROPTEST_SEED: u64 = 0x7e5c_a24b;

/// A property test's configuration: `cases` cases (or `PROPTEST_CASES`) drawn from
/// [`PROPTEST_SEED`] (or `PROPTEST_RNG_SEED`). The cases recorded in a `.proptest-regressions`
/// file beside the test run first, as with proptest's default configuration.
pub fn proptest_config(cases: u32) -> Config {
    // `Config::default()` holds what the environment says.
    let from_env = Config::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    Config {
        cases: if set("PROPTEST_CASES") { from_env.cases } else { cases },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(PROPTEST_SEED)
        },
        ..from_env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_fixed_unless_the_environment_names_one() {
        let config = proptest_config(7);
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            assert_eq!(config.rng_seed, RngSeed::Fixed(PROPTEST_SEED));
        }
        if std::env::var_os("PROPTEST_CASES").is_none() {
            assert_eq!(config.cases, 7);
        }
    }
}
