//! Pairs files: the image pairs a batch of paths walks between (`leafwalk path --pairs FILE`).
//!
//! One `from,to` row a pair, each side anything [`ImageSource`] reads (a file, `mnist:test:3`,
//! `batch.safetensors#2`); a first row `from,to` is a header; blank lines and `#` comments are
//! skipped. Paths with commas are not supported: the format is this simple on purpose.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::ImageSource;

/// The pairs of the file at `path` (module docs); errors name the file and the line.
pub fn read_pairs(path: &Path) -> Result<Vec<(ImageSource, ImageSource)>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::invalid(path, format!("not UTF-8 text ({e})")))?;
    let mut pairs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (pairs.is_empty() && line.replace(' ', "") == "from,to") {
            continue;
        }
        let at_line = |problem: String| DataError::invalid(path, format!("line {}: {problem}", number + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [from, to] = fields[..] else {
            return Err(at_line(format!("expected `from,to`, got {line:?}")));
        };
        let parse = |text: &str| text.parse::<ImageSource>().map_err(|e| at_line(e.to_string()));
        pairs.push((parse(from)?, parse(to)?));
    }
    if pairs.is_empty() {
        return Err(DataError::invalid(path, "no `from,to` rows"));
    }
    Ok(pairs)
}
