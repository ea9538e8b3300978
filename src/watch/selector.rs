//! `fieldSelector` for audit events: `field=value`, `field==value`, `field!=value`, joined
//! by commas (AND), on the fields the contract names. An unknown field is an error, as
//! kube-apiserver answers for a field its resource does not index.

use crate::event::Event;

/// Fields a selector may name.
pub const FIELDS: [&str; 6] = [
    "user.username",
    "verb",
    "objectRef.resource",
    "objectRef.name",
    "stage",
    "level",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid field selector {0:?}: expected field=value, field==value or field!=value")]
    Syntax(String),
    #[error("field label not supported: {0}")]
    UnknownField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    field: usize,
    value: String,
    equal: bool,
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<Requirement>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut requirements = vec![];
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(Error::Syntax(term.to_owned()));
            };
            let field = field.trim();
            let field = FIELDS
                .iter()
                .position(|f| *f == field)
                .ok_or_else(|| Error::UnknownField(field.to_owned()))?;
            requirements.push(Requirement {
                field,
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.requirements.iter().all(|r| {
            let actual: &str = match r.field {
                0 => &ev.username,
                1 => &ev.verb,
                2 => &ev.resource,
                3 => &ev.name,
                4 => &ev.stage,
                _ => &ev.level,
            };
            (actual == r.value) == r.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event_list;

    fn event() -> Event {
        let body = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"level":"Metadata","auditID":"a","stage":"ResponseComplete","verb":"delete","user":{"username":"bob"},"objectRef":{"resource":"configmaps","name":"cm","namespace":"ns"}}]}"#;
        decode_event_list(body.as_bytes(), "", "2026-01-01T00:00:00Z")
            .unwrap()
            .remove(0)
    }

    #[test]
    fn matches_on_every_field() {
        let ev = event();
        for (sel, want) in [
            ("", true),
            ("verb=delete", true),
            ("verb==delete", true),
            ("verb!=delete", false),
            ("user.username=bob,objectRef.resource=configmaps", true),
            ("user.username=bob,objectRef.resource=secrets", false),
            (
                "objectRef.name=cm, stage=ResponseComplete , level=Metadata",
                true,
            ),
            ("level!=RequestResponse", true),
        ] {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(&ev),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            FieldSelector::parse("metadata.name=x"),
            Err(Error::UnknownField("metadata.name".into()))
        );
        assert_eq!(
            FieldSelector::parse("verb"),
            Err(Error::Syntax("verb".into()))
        );
    }
}
