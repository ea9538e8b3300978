//! Files that flags name (token files, policies, certificates, CAs): the one reader, and
//! its error naming the file. Text built into the binary (`--dev`) reads the same way.
//! Knows nothing of the crate above it.

use std::path::{Path, PathBuf};

/// A file named by a flag that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {}: {source}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The bytes of a file (certificates, keys, CAs).
pub fn read(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })
}

/// The text of a file and its name for messages (token files, policies, PEM read as text).
pub fn read_text(path: &Path) -> Result<(String, String), ReadError> {
    std::fs::read_to_string(path)
        .map(|text| (text, path.display().to_string()))
        .map_err(|source| ReadError {
            path: path.to_owned(),
            source,
        })
}

/// A file to read at start, or text built into the binary (`--dev`).
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Embedded {
        name: &'static str,
        text: &'static str,
    },
}

impl Source {
    /// The text and a name for it in messages.
    pub fn read(&self) -> Result<(String, String), ReadError> {
        match self {
            Source::File(p) => read_text(p),
            Source::Embedded { name, text } => Ok(((*text).to_owned(), (*name).to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let e = read(Path::new("/nonexistent/ca.crt")).unwrap_err();
        assert!(
            e.to_string().starts_with("reading /nonexistent/ca.crt: "),
            "{e}"
        );
        let (text, name) = Source::Embedded {
            name: "dev",
            text: "a,b",
        }
        .read()
        .unwrap();
        assert_eq!((text.as_str(), name.as_str()), ("a,b", "dev"));
    }
}
