//! Which data files a directory holds, as Spark's file index sees them.
//!
//! A directory written by a file sink (it has `_spark_metadata/`) holds exactly the files its
//! metadata log lists: files of a batch that never committed are not data. Any other directory
//! is walked recursively, leaving out what is not data:
//!
//! - names starting with `.` or `_` (hidden files, `_SUCCESS`, `_spark_metadata`), except
//!   `_`-names holding `=` (partition directories such as `_k=1`), as Spark's
//!   `InMemoryFileIndex`;
//! - files still being written by the usual copy tools: names ending in `._COPYING_` (Hadoop's
//!   `fs -put`, skipped by Spark too) or `.tmp` (Flumen's addition; write a file under such a
//!   name and rename it when complete).
//!
//! Directories named `key=value` between the listed directory and a file give the file's
//! partition values (Hive's layout; `__HIVE_DEFAULT_PARTITION__` is null, names are
//! %-escaped as Hive escapes them).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{FlumenError, Result};
use crate::files::log::SinkLog;

/// The partition value Hive and Spark write for null (and empty strings).
pub const DEFAULT_PARTITION_NAME: &str = "__HIVE_DEFAULT_PARTITION__";

/// The name of the sink's metadata log directory inside its output directory.
pub const SINK_METADATA_DIR: &str = "_spark_metadata";

/// A data file: where it is, how big, when it was last modified, and its partition values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// The file's absolute path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, in milliseconds since the epoch.
    pub modification_ms: i64,
    /// The `key=value` directories between the listed directory and the file, outermost first
    /// (`None`: Hive's null partition).
    pub partition_values: Vec<(String, Option<String>)>,
}

/// Whether a file or directory name is left out of listings (see the module docs).
pub fn is_hidden_or_in_progress(name: &str) -> bool {
    let hidden = name.starts_with('.') || (name.starts_with('_') && !name.contains('='));
    hidden || name.ends_with("._COPYING_") || name.ends_with(".tmp")
}

/// The data files of `dir` (see the module docs), in path order. `dir` must exist.
pub fn list_data_files(dir: &Path) -> Result<Vec<FileStatus>> {
    let dir = dir.canonicalize().map_err(|e| FlumenError::io(dir, e))?;
    let metadata = dir.join(SINK_METADATA_DIR);
    if metadata.is_dir() {
        return committed_files(&dir, &SinkLog::new(metadata));
    }
    let mut files = Vec::new();
    let mut visited = HashSet::from([dir.clone()]);
    walk(&dir, &dir, &mut files, &mut visited)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Whether `dir` is the output directory of a file sink (it has a metadata log).
pub fn has_sink_metadata(dir: &Path) -> bool {
    dir.join(SINK_METADATA_DIR).is_dir()
}

/// The files a sink's metadata log lists as committed.
fn committed_files(dir: &Path, log: &SinkLog) -> Result<Vec<FileStatus>> {
    let mut files: Vec<FileStatus> = log
        .committed_files()?
        .into_iter()
        .map(|entry| {
            let path = from_uri(&entry.path);
            FileStatus {
                partition_values: partition_values(dir, &path),
                path,
                size: entry.size,
                modification_ms: entry.modification_time,
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Lists `dir` into `out`, recursively; `visited` holds the directories already walked (by
/// their real paths), so a symbolic link to a parent cannot loop.
fn walk(
    base: &Path,
    dir: &Path,
    out: &mut Vec<FileStatus>,
    visited: &mut HashSet<PathBuf>,
) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| FlumenError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FlumenError::io(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(FlumenError::DataFile {
                path,
                reason: "its name is not valid UTF-8; rename it (or move it out of the directory)"
                    .into(),
            });
        };
        if is_hidden_or_in_progress(&name) {
            continue;
        }
        // Follows symbolic links; a file removed since the directory was read is skipped.
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FlumenError::io(&path, e)),
        };
        if metadata.is_dir() {
            let real = path.canonicalize().map_err(|e| FlumenError::io(&path, e))?;
            if visited.insert(real) {
                walk(base, &path, out, visited)?;
            }
        } else if metadata.is_file() {
            out.push(FileStatus {
                partition_values: partition_values(base, &path),
                modification_ms: modification_ms(&metadata),
                size: metadata.len(),
                path,
            });
        }
    }
    Ok(())
}

/// A file's modification time in milliseconds since the epoch (0 when the platform has none).
pub fn modification_ms(metadata: &std::fs::Metadata) -> i64 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `key=value` directories between `base` and `file`.
pub fn partition_values(base: &Path, file: &Path) -> Vec<(String, Option<String>)> {
    let Some(parent) = file.parent() else {
        return Vec::new();
    };
    let Ok(relative) = parent.strip_prefix(base) else {
        return Vec::new();
    };
    relative
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .filter_map(|segment| segment.split_once('='))
        .map(|(key, value)| {
            let value = unescape_path_name(value);
            let value = (value != DEFAULT_PARTITION_NAME).then_some(value);
            (unescape_path_name(key), value)
        })
        .collect()
}

/// Whether Hive escapes `c` in a partition directory name.
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '"' | '#'
            | '%'
            | '\''
            | '*'
            | '/'
            | ':'
            | '='
            | '?'
            | '\\'
            | '\x7f'
            | '{'
            | '['
            | ']'
            | '^'
    ) || ('\x01'..='\x1f').contains(&c)
}

/// Hive's escaping of a partition column name or value: `a/b` → `a%2Fb`.
pub fn escape_path_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape_path_name`]; a `%` not followed by two hex digits is kept as it is.
pub fn unescape_path_name(text: &str) -> String {
    String::from_utf8_lossy(&percent_decode(text)).into_owned()
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// An absolute path as the `file://` URI Spark writes in its logs (`/tmp/a b` →
/// `file:///tmp/a%20b`): characters a URI path cannot hold are %-escaped, other non-ASCII
/// characters kept, as Java's `URI.toString` does.
pub fn to_uri(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::from("file://");
    for c in text.chars() {
        let keep = c.is_ascii_alphanumeric()
            || "/-._~!$&'()*+,;=:@".contains(c)
            || (!c.is_ascii() && !c.is_control());
        if keep {
            out.push(c);
        } else {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

/// A path from a log entry: a `file:` URI (`file:///x`, `file:/x`) or a plain path.
pub fn from_uri(text: &str) -> PathBuf {
    let path = text
        .strip_prefix("file://")
        .or_else(|| text.strip_prefix("file:"))
        .map(|p| String::from_utf8_lossy(&percent_decode(p)).into_owned());
    PathBuf::from(path.unwrap_or_else(|| text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_in_progress_names_are_not_data() {
        for name in [
            ".a.json",
            "_SUCCESS",
            "_spark_metadata",
            "x.json._COPYING_",
            "x.tmp",
        ] {
            assert!(is_hidden_or_in_progress(name), "{name}");
        }
        for name in ["a.json", "_k=1", "k=_1", "part-00000.c000.json"] {
            assert!(!is_hidden_or_in_progress(name), "{name}");
        }
    }

    #[test]
    fn uris_and_partition_names_round_trip() {
        let path = Path::new("/tmp/a b/100%/é.json");
        assert_eq!(to_uri(path), "file:///tmp/a%20b/100%25/é.json");
        assert_eq!(from_uri(&to_uri(path)), path);
        assert_eq!(from_uri("file:/tmp/x"), Path::new("/tmp/x"));
        assert_eq!(from_uri("/tmp/x"), Path::new("/tmp/x"));
        assert_eq!(escape_path_name("a/b=c:d"), "a%2Fb%3Dc%3Ad");
        assert_eq!(unescape_path_name("a%2Fb%3Dc%3Ad"), "a/b=c:d");
        assert_eq!(unescape_path_name("100%"), "100%");
        assert_eq!(
            partition_values(
                Path::new("/out"),
                Path::new("/out/k=a%2Fb/n=__HIVE_DEFAULT_PARTITION__/f.json")
            ),
            vec![("k".into(), Some("a/b".into())), ("n".into(), None)]
        );
    }

    #[test]
    fn listing_walks_partition_directories_and_skips_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("k=1")).unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        for name in [
            "a.json",
            "k=1/b.json",
            ".hidden/c.json",
            "_SUCCESS",
            "d.json.tmp",
        ] {
            std::fs::write(root.join(name), "{}\n").unwrap();
        }
        let files = list_data_files(root).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root.canonicalize().unwrap())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a.json", "k=1/b.json"]);
        assert_eq!(
            files[1].partition_values,
            vec![("k".to_string(), Some("1".to_string()))]
        );
        assert_eq!(files[0].size, 3);
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_to_a_parent_does_not_loop() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), "{}\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/up")).unwrap();
        assert_eq!(list_data_files(dir.path()).unwrap().len(), 1);
    }
}
