//! Static bearer tokens in kube-apiserver's `--token-auth-file` CSV format:
//! `token,user,uid[,"group1,group2"]`, parsed by the same rules as
//! `k8s.io/apiserver/pkg/authentication/token/tokenfile`.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{Authenticator, Error, Request, UserInfo};

/// A loaded token file. Its `Debug` never shows tokens.
#[derive(Clone, Default)]
pub struct TokenFile {
    tokens: HashMap<String, UserInfo>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({} tokens)", self.tokens.len())
    }
}

/// A token file that does not load.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error(transparent)]
    Read(#[from] crate::source::ReadError),
    #[error("token file {origin:?}: {source}")]
    Csv {
        origin: String,
        #[source]
        source: csv::Error,
    },
    #[error(
        "token file {origin:?} must have at least 3 columns (token, user name, user uid), found {found} on record {record}"
    )]
    Columns {
        origin: String,
        found: usize,
        record: usize,
    },
}

impl TokenFile {
    /// Parse the CSV text; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenFileError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut tokens = HashMap::new();
        for (n, record) in reader.records().enumerate() {
            let record = record.map_err(|source| TokenFileError::Csv {
                origin: origin.to_owned(),
                source,
            })?;
            if record.len() < 3 {
                return Err(TokenFileError::Columns {
                    origin: origin.to_owned(),
                    found: record.len(),
                    record: n + 1,
                });
            }
            // kube-apiserver skips (with a warning) a record with an empty token.
            if record[0].is_empty() {
                tracing::warn!(file = origin, record = n + 1, "empty token in token file");
                continue;
            }
            let user = UserInfo {
                name: record[1].to_owned(),
                uid: record[2].to_owned(),
                groups: record
                    .get(3)
                    .map(|g| g.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                ..Default::default()
            };
            if tokens.insert(record[0].to_owned(), user).is_some() {
                tracing::warn!(
                    file = origin,
                    record = n + 1,
                    "duplicate token in token file"
                );
            }
        }
        Ok(TokenFile { tokens })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, TokenFileError> {
        let (text, name) = crate::source::read_text(path)?;
        Self::parse(&text, &name)
    }

    pub fn lookup(&self, token: &str) -> Option<&UserInfo> {
        self.tokens.get(token)
    }
}

#[async_trait]
impl Authenticator for TokenFile {
    async fn authenticate(&self, req: &Request<'_>) -> Result<Option<UserInfo>, Error> {
        match req.bearer_token() {
            None => Ok(None),
            Some(token) => self
                .lookup(token)
                .cloned()
                .map(Some)
                .ok_or(Error::InvalidToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kube_apiserver_format() {
        let f = TokenFile::parse(
            "t1,admin,uid-admin,\"system:masters\"\nt2,alice,uid-alice\n,empty,uid\nt3,bob,uid-bob,\"a,b\"\n",
            "x",
        )
        .unwrap();
        let admin = f.lookup("t1").unwrap();
        assert_eq!(
            (admin.name.as_str(), admin.uid.as_str()),
            ("admin", "uid-admin")
        );
        assert_eq!(admin.groups, vec!["system:masters"]);
        assert!(f.lookup("t2").unwrap().groups.is_empty());
        assert_eq!(f.lookup("t3").unwrap().groups, vec!["a", "b"]);
        assert!(f.lookup("").is_none());
        assert_eq!(format!("{f:?}"), "TokenFile(3 tokens)");
    }

    #[test]
    fn too_few_columns_is_an_error() {
        let err = TokenFile::parse("t1,alice\n", "tokens.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 3 columns"), "{err}");
        assert!(!err.contains("t1"), "never print a token: {err}");
    }
}
