//! Writing files so that readers see either the old file or the complete new
//! one, never a partial write (an interrupted run, a viewer polling the file).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{DataError, Result};

/// Runs `write` against a temporary file in `path`'s directory (so the final
/// rename stays on one file system and is atomic), then renames it to `path`.
/// On failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    with_temporary(path, |temp_path| write_then_rename(path, temp_path, write))
}

/// [`write_atomic`] for writers that open the file themselves: `write` creates and fills the
/// temporary file at the path it is given, which is then flushed to disk and renamed to `path`.
pub fn write_path_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    with_temporary(path, |temp_path| {
        write(temp_path)?;
        let file = File::open(temp_path).map_err(|error| DataError::io(temp_path, error))?;
        sync_then_rename(&file, temp_path, path)
    })
}

/// Runs `write` with a temporary path beside `path`, removing it if `write` fails.
fn with_temporary(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| DataError::invalid(path, "not a file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp_path = path.with_file_name(temp_name);
    let result = write(&temp_path);
    if result.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

/// [`write_atomic`] of a whole byte buffer.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |writer| writer.write_all(bytes).map_err(|error| DataError::io(path, error)))
}

fn write_then_rename(path: &Path, temp_path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let file = File::create(temp_path).map_err(|error| DataError::io(temp_path, error))?;
    let mut writer = BufWriter::new(file);
    write(&mut writer)?;
    let file = writer.into_inner().map_err(|error| DataError::io(temp_path, error.into_error()))?;
    sync_then_rename(&file, temp_path, path)
}

/// Puts the finished temporary file on disk, then moves it to `path`.
fn sync_then_rename(file: &File, temp_path: &Path, path: &Path) -> Result<()> {
    file.sync_all().map_err(|error| DataError::io(temp_path, error))?;
    std::fs::rename(temp_path, path).map_err(|error| DataError::io(path, error))
}
