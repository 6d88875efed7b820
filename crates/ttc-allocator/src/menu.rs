//! The menu of configurations the allocator chooses from (Huang et al., arXiv 2509.09864, its
//! menu): greedy, parallel sampling with majority / best-of-N / weighted vote at several widths,
//! and beam search and DVTS at a few (N, m, iterations). Each configuration has a label that is
//! also its serialized form ("greedy", "majority@8", "beam(4,2,10)"), and a feature vector for the
//! accuracy probe.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ttc_methods::{Method, MethodConfig};

/// One way to answer: a method and its widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Config {
    pub method: Method,
    /// Samples (parallel methods) or beams (search); 1 for greedy.
    pub n: usize,
    /// Branching factor m of beam search and DVTS; 1 otherwise.
    pub beam_width: usize,
    /// Beam iterations; 0 for methods that do not search.
    pub max_iters: usize,
}

/// Length of [`Config::features`].
pub const CONFIG_FEATURES: usize = 9;

impl Config {
    pub const GREEDY: Config = Config {
        method: Method::Greedy,
        n: 1,
        beam_width: 1,
        max_iters: 0,
    };

    /// One answer at the request's temperature (no vote): for prompts without a final answer.
    pub const SAMPLE: Config = Config {
        method: Method::Sample,
        n: 1,
        beam_width: 1,
        max_iters: 0,
    };

    pub fn parallel(method: Method, n: usize) -> Self {
        Self {
            method,
            n,
            beam_width: 1,
            max_iters: 0,
        }
    }

    pub fn search(method: Method, n: usize, beam_width: usize, max_iters: usize) -> Self {
        Self {
            method,
            n,
            beam_width,
            max_iters,
        }
    }

    /// The configuration a user names with a method, a width, a branching factor and
    /// iterations (`--method M --samples N --beam-width W --max-iters I`): greedy ignores the
    /// rest, parallel methods the last two.
    pub fn for_method(method: Method, n: usize, beam_width: usize, max_iters: usize) -> Self {
        match method {
            Method::Greedy => Self::GREEDY,
            Method::Sample => Self::SAMPLE,
            m if m.is_search() => Self::search(m, n, beam_width, max_iters),
            m => Self::parallel(m, n),
        }
    }

    /// The configuration whose answer this one always gives: majority@N for
    /// majority-adaptive@N (it stops only once the vote is decided), itself otherwise. The
    /// accuracy probe learns each twin once and predicts the same accuracy for both.
    pub fn accuracy_twin(&self) -> Config {
        match self.method {
            Method::MajorityAdaptive => Self::parallel(Method::Majority, self.n),
            _ => *self,
        }
    }

    pub fn label(&self) -> String {
        self.to_string()
    }

    /// `base` (scorer, sampling, seed, cap, stops) running this configuration.
    pub fn method_config(&self, base: &MethodConfig) -> MethodConfig {
        base.clone()
            .method(self.method)
            .n(self.n)
            .beam_width(self.beam_width)
            .max_iters(self.max_iters.max(1))
    }

    /// One-hot method, then log2 widths and iterations scaled to about [0, 1].
    pub fn features(&self) -> [f32; CONFIG_FEATURES] {
        let mut f = [0f32; CONFIG_FEATURES];
        let slot = match self.method {
            Method::Greedy => 0,
            Method::BestOfN => 1,
            // One sample is what a vote over one sample is: majority@1. An adaptive majority
            // elects what majority elects (see `accuracy_twin`).
            Method::Majority | Method::MajorityAdaptive | Method::Sample => 2,
            Method::Weighted => 3,
            Method::Beam => 4,
            Method::Dvts => 5,
        };
        f[slot] = 1.0;
        f[6] = (self.n as f32).log2() / 5.0;
        f[7] = (self.beam_width as f32).log2() / 3.0;
        f[8] = self.max_iters as f32 / 40.0;
        f
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            Method::Greedy => write!(f, "greedy"),
            Method::Sample => write!(f, "sample"),
            m if m.is_search() => write!(
                f,
                "{}({},{},{})",
                m.name(),
                self.n,
                self.beam_width,
                self.max_iters
            ),
            m => write!(f, "{}@{}", m.name(), self.n),
        }
    }
}

impl FromStr for Config {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!("'{s}' is not a configuration (greedy, majority@8, best-of-n@4, weighted@16, beam(4,2,10), dvts(8,2,10))")
        };
        if s == "greedy" {
            return Ok(Self::GREEDY);
        }
        if s == "sample" {
            return Ok(Self::SAMPLE);
        }
        if let Some((method, n)) = s.split_once('@') {
            let method: Method = method.parse()?;
            let n: usize = n.parse().map_err(|_| bad())?;
            if method.is_search() || method.is_single() || n == 0 {
                return Err(bad());
            }
            return Ok(Self::parallel(method, n));
        }
        let (method, rest) = s.split_once('(').ok_or_else(bad)?;
        let method: Method = method.parse()?;
        let nums: Vec<usize> = rest
            .strip_suffix(')')
            .ok_or_else(bad)?
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        match nums[..] {
            [n, m, iters] if method.is_search() && m > 0 && n % m == 0 && iters > 0 => {
                Ok(Self::search(method, n, m, iters))
            }
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Config {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Config> for String {
    fn from(c: Config) -> String {
        c.to_string()
    }
}

/// A comma-separated list of configurations, e.g. `greedy,majority@8,beam(4,2,10)` (commas
/// inside parentheses belong to the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigList(pub Vec<Config>);

impl FromStr for ConfigList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut items, mut depth, mut start) = (Vec::new(), 0i32, 0);
        for (i, ch) in s.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(s[start..i].parse()?);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(s[start..].parse()?);
        Ok(Self(items))
    }
}

/// Widths of the parallel methods on the menu. The paper also has N=32; on a 2-core CPU a
/// 32-wide run of even a 135M model takes tens of seconds, and calibration samples K=16 answers
/// per question, so N stops at 16 here.
pub const PARALLEL_WIDTHS: [usize; 4] = [2, 4, 8, 16];

/// The default menu: greedy; majority, best-of-N and weighted at each of [`PARALLEL_WIDTHS`],
/// and majority-adaptive at those above 2 (two samples are decided only when both end); beam search (4,2,10) and (8,4,10) and DVTS (8,2,10): the paper's smaller search settings,
/// with 10 iterations (answers of the small models this runs on CPU have few steps).
pub fn default_menu() -> Vec<Config> {
    let mut menu = vec![Config::GREEDY];
    for method in [Method::Majority, Method::BestOfN, Method::Weighted] {
        for n in PARALLEL_WIDTHS {
            menu.push(Config::parallel(method, n));
        }
    }
    for n in PARALLEL_WIDTHS.into_iter().filter(|&n| n > 2) {
        menu.push(Config::parallel(Method::MajorityAdaptive, n));
    }
    menu.push(Config::search(Method::Beam, 4, 2, 10));
    menu.push(Config::search(Method::Beam, 8, 4, 10));
    menu.push(Config::search(Method::Dvts, 8, 2, 10));
    menu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_method_gets_the_settings_it_uses() {
        assert_eq!(Config::for_method(Method::Greedy, 8, 2, 10), Config::GREEDY);
        assert_eq!(
            Config::for_method(Method::Majority, 8, 2, 10),
            Config::parallel(Method::Majority, 8)
        );
        assert_eq!(
            Config::for_method(Method::Dvts, 8, 2, 10),
            Config::search(Method::Dvts, 8, 2, 10)
        );
    }

    #[test]
    fn labels_round_trip() {
        for c in default_menu() {
            assert_eq!(c.label().parse::<Config>().unwrap(), c, "{c}");
        }
        assert_eq!(
            "majority@8".parse::<Config>().unwrap(),
            Config::parallel(Method::Majority, 8)
        );
        for bad in [
            "",
            "majority",
            "majority@0",
            "beam@4",
            "beam(4,3,10)",
            "beam(4,2)",
            "greedy@2",
            "dvts(8,2,0)",
        ] {
            assert!(bad.parse::<Config>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_split_at_top_level_commas() {
        let l: ConfigList = "greedy,beam(4,2,10), majority@8".parse().unwrap();
        assert_eq!(
            l.0,
            vec![
                Config::GREEDY,
                Config::search(Method::Beam, 4, 2, 10),
                Config::parallel(Method::Majority, 8)
            ]
        );
        assert!("greedy,,majority@2".parse::<ConfigList>().is_err());
    }

    #[test]
    fn features_tell_configurations_apart_unless_they_answer_alike() {
        let menu = default_menu();
        for (i, a) in menu.iter().enumerate() {
            for b in &menu[i + 1..] {
                if a.accuracy_twin() == b.accuracy_twin() {
                    assert_eq!(a.features(), b.features(), "{a} vs {b}");
                } else {
                    assert_ne!(a.features(), b.features(), "{a} vs {b}");
                }
            }
        }
        let adaptive = Config::parallel(Method::MajorityAdaptive, 8);
        assert_eq!(adaptive.label(), "majority-adaptive@8");
        assert_eq!(
            adaptive.accuracy_twin(),
            Config::parallel(Method::Majority, 8)
        );
    }
}
