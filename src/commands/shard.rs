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
use leafwalk_data::ImageShape;
use leafwalk_plot::{Tile, TileKind};
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

/// A shard's per-item results that the next shard's extend.
pub trait Append: Sized {
    /// Appends the next shard's items; an error when the two are not parts of one run.
    fn append(&mut self, next: Self) -> anyhow::Result<()>;
}

/// Per-item lists (one entry an item) simply concatenate.
impl<T> Append for Vec<T> {
    fn append(&mut self, next: Self) -> anyhow::Result<()> {
        self.extend(next);
        Ok(())
    }
}

/// The shards' results (JSON, in shard order) of `command` read and appended into one.
pub fn append_parts<T: Append + serde::de::DeserializeOwned>(
    command: &str,
    parts: Vec<serde_json::Value>,
) -> anyhow::Result<T> {
    let mut parts = parts
        .into_iter()
        .map(|part| serde_json::from_value::<T>(part).with_context(|| format!("merge: a {command} shard")));
    let mut merged = parts.next().with_context(|| format!("merge: no {command} shard"))??;
    for part in parts {
        merged.append(part?)?;
    }
    Ok(merged)
}

/// A tile of a report's image sheet, kept in a part so that the merge draws the sheet one
/// process would have drawn.
#[derive(Serialize, Deserialize)]
pub struct SheetTile {
    /// Pixels in [0, 1], channels first.
    pub pixels: Vec<f32>,
    pub caption: String,
}

impl SheetTile {
    /// The tiles to draw, each of the run's image `shape`.
    pub fn tiles(sheet: &[SheetTile], shape: ImageShape) -> Vec<Tile<'_>> {
        sheet.iter().map(|t| Tile::new(&t.pixels, shape, t.caption.clone(), TileKind::Image)).collect()
    }
}

/// The run's image shape, which its settings hold as `image: [channels, height, width]`.
pub fn image_shape(settings: &serde_json::Value) -> anyhow::Result<ImageShape> {
    match serde_json::from_value::<Vec<usize>>(settings["image"].clone()).ok().as_deref() {
        Some(&[channels, height, width]) => Ok(ImageShape { channels, height, width }),
        _ => bail!("merge: the run's settings hold no image shape [c, h, w]"),
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

/// Serde for per-item values that may be ±∞ or NaN (the PSNR of a perfect output, the log of a
/// zero eigenvalue): JSON numbers where finite, else the strings "inf", "-inf" and "NaN" —
/// serde_json would write null — so that a merge computes from exactly the values one process
/// had. For `Vec<f64>` fields, and [`floats::columns`] for `Vec<Vec<f64>>`.
pub mod floats {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Float {
        Number(f64),
        Text(String),
    }

    fn write(value: f64) -> Float {
        match value {
            v if v.is_finite() => Float::Number(v),
            v if v.is_nan() => Float::Text("NaN".into()),
            v => Float::Text(if v > 0.0 { "inf" } else { "-inf" }.into()),
        }
    }

    fn read(value: Float) -> Result<f64, String> {
        match value {
            Float::Number(v) => Ok(v),
            Float::Text(text) => match text.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                other => Err(format!("{other:?} is not a number")),
            },
        }
    }

    pub fn serialize<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|&v| write(v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Float>::deserialize(deserializer)?
            .into_iter()
            .map(read)
            .collect::<Result<_, _>>()
            .map_err(D::Error::custom)
    }

    /// The same for lists of lists.
    pub mod columns {
        use super::*;

        pub fn serialize<S: Serializer>(columns: &[Vec<f64>], serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(columns.iter().map(|c| c.iter().map(|&v| write(v)).collect::<Vec<_>>()))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<f64>>, D::Error> {
            let columns = Vec::<Vec<Float>>::deserialize(deserializer)?;
            columns
                .into_iter()
                .map(|c| c.into_iter().map(read).collect::<Result<_, _>>())
                .collect::<Result<_, _>>()
                .map_err(D::Error::custom)
        }
    }
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
    fn values_that_json_cannot_hold_survive_a_part() {
        #[derive(Serialize, Deserialize)]
        struct Values(#[serde(with = "floats")] Vec<f64>, #[serde(with = "floats::columns")] Vec<Vec<f64>>);
        let values = vec![1.5, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -0.1, 1e300];
        let text = serde_json::to_string(&Values(values.clone(), vec![values.clone()])).unwrap();
        let back: Values = serde_json::from_str(&text).unwrap();
        for read in [&back.0, &back.1[0]] {
            assert_eq!(
                read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        assert!(serde_json::from_str::<Values>(r#"[["infinity"], []]"#).is_err());
    }

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
