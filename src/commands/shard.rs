//! `--shard K/N`: one process's part of a dataset-level run, so that a run spreads over many
//! machines; `leafwalk merge` puts the parts back together. Shard K of N takes the K-th of N
//! contiguous, nearly equal ranges of each image set (sets are chosen and ordered before they
//! are cut, so every shard agrees on them), and writes its raw per-image results with the run's
//! settings; the merge checks that the parts are one run's and complete, concatenates them, and
//! computes every statistic from the merged values — never by averaging the parts'.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Shard `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole run as one part.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// This shard's items of `len`.
    pub fn range(self, len: usize) -> Range<usize> {
        len * (self.index - 1) / self.count..len * self.index / self.count
    }

    /// `COMMAND-shard-K-of-N.json`: the file a shard writes.
    pub fn file_name(self, command: &str) -> String {
        format!("{command}-shard-{}-of-{}.json", self.index, self.count)
    }
}

/// One shard's file: the command that wrote it, the run's settings (the same in every shard of
/// a run), which shard it is, and its per-item results.
#[derive(Serialize, Deserialize)]
pub struct Part<T> {
    pub command: String,
    pub settings: serde_json::Value,
    pub shard: Shard,
    pub results: T,
}

impl<T: Serialize> Part<T> {
    /// Writes the part into `out` (atomically) as [`Shard::file_name`].
    pub fn write(&self, out: &Path) -> anyhow::Result<PathBuf> {
        let path = out.join(self.shard.file_name(&self.command));
        leafwalk_data::write_bytes_atomic(&path, serde_json::to_string(self)?.as_bytes())?;
        tracing::info!("wrote {} (merge the shards with `leafwalk merge`)", path.display());
        Ok(path)
    }
}

/// The file a run of `command` writes into `out` — its part (shard given) or its report
/// `COMMAND.json` — refused if it exists already, before any work is done.
pub fn output_file(shard: Option<Shard>, out: &Path, command: &str) -> anyhow::Result<PathBuf> {
    let name = shard.map_or_else(|| format!("{command}.json"), |shard| shard.file_name(command));
    crate::commands::fresh_output(out, &name)
}

/// The parts in `files`, checked to be every shard of one run once: the command, its settings
/// and each part's results (as JSON, for the command's own merge), in shard order.
pub fn read_parts(files: &[PathBuf]) -> anyhow::Result<(String, serde_json::Value, Vec<serde_json::Value>)> {
    let mut parts = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let part: Part<serde_json::Value> =
            serde_json::from_slice(&bytes).with_context(|| format!("{}: not a leafwalk shard file", path.display()))?;
        parts.push((path, part));
    }
    parts.sort_by_key(|(_, part)| part.shard.index);
    let Some((first_path, first)) = parts.first() else { bail!("merge: no shard files given") };
    let count = first.shard.count;
    for (k, (path, part)) in parts.iter().enumerate() {
        if part.command != first.command || part.settings != first.settings {
            bail!("{}: a shard of another run than {} (settings differ)", path.display(), first_path.display());
        }
        if part.shard != (Shard { index: k + 1, count }) {
            bail!(
                "{}: shard {} where shard {}/{count} was expected: give every shard once",
                path.display(),
                part.shard,
                k + 1
            );
        }
    }
    if parts.len() != count {
        bail!("merge: {} of {count} shards given", parts.len());
    }
    let (command, settings) = (first.command.clone(), first.settings.clone());
    Ok((command, settings, parts.into_iter().map(|(_, part)| part.results).collect()))
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("shard {text:?}: expected K/N with 1 ≤ K ≤ N (e.g. 2/4)");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (index.trim().parse().map_err(|_| bad())?, count.trim().parse().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_item_once() {
        for len in [0, 1, 7, 500] {
            for count in 1..=6 {
                let covered: Vec<usize> = (1..=count).flat_map(|index| Shard { index, count }.range(len)).collect();
                assert_eq!(covered, (0..len).collect::<Vec<_>>());
            }
        }
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "2", "a/b", "1/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
