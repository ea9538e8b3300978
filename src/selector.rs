//! `fieldSelector` for audit events: `field=value`, `field==value`, `field!=value`, joined
//! by commas (AND), on the fields the contract names and `metadata.name`. An unknown field is an error, as
//! kube-apiserver answers for a field its resource does not index. The bus applies a
//! watcher's selector before its queue, so unwanted events cost the watcher nothing.

use crate::event::{Event, Field};

/// Field labels a selector may name, and the event field each reads.
/// `metadata.namespace` is there because kube-apiserver offers it on every namespaced
/// resource; for an audit event it is `objectRef.namespace`.
pub const FIELDS: [(&str, Field); 10] = [
    ("user.username", Field::Username),
    ("verb", Field::Verb),
    ("objectRef.resource", Field::Resource),
    ("objectRef.name", Field::Name),
    ("objectRef.apiGroup", Field::ApiGroup),
    ("objectRef.namespace", Field::Namespace),
    ("metadata.namespace", Field::Namespace),
    ("responseStatus.code", Field::Code),
    ("stage", Field::Stage),
    ("level", Field::Level),
];

/// `metadata.name`, which kube-apiserver offers on every resource (`kubectl get NAME -w`
/// watches with it). Not a stored field: `<auditID>-<stage in lower case>`, compared
/// without building it.
pub const NAME_LABEL: &str = "metadata.name";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid field selector {0:?}: expected field=value, field==value or field!=value")]
    Syntax(String),
    #[error("field label not supported: {0}")]
    UnknownField(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Field(Field),
    /// `metadata.name`.
    Name,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    subject: Subject,
    value: Box<str>,
    equal: bool,
}

/// Whether `name` is the event's `metadata.name`.
fn is_name_of(ev: &Event, name: &str) -> bool {
    let (id, stage) = (ev.audit_id(), ev.get(Field::Stage));
    name.len() == id.len() + 1 + stage.len()
        && name.starts_with(id)
        && name.as_bytes()[id.len()] == b'-'
        && name.as_bytes()[id.len() + 1..]
            .iter()
            .zip(stage.bytes())
            .all(|(n, s)| *n == s.to_ascii_lowercase())
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
            let (label, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(Error::Syntax(term.to_owned()));
            };
            let label = label.trim();
            let subject = match FIELDS.iter().find(|(l, _)| *l == label) {
                Some((_, field)) => Subject::Field(*field),
                None if label == NAME_LABEL => Subject::Name,
                None => return Err(Error::UnknownField(label.to_owned())),
            };
            requirements.push(Requirement {
                subject,
                value: value.trim().into(),
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
            let matched = match r.subject {
                Subject::Field(field) => ev.get(field) == &*r.value,
                Subject::Name => is_name_of(ev, &r.value),
            };
            matched == r.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event_list;

    fn event() -> Event {
        let body = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"level":"Metadata","auditID":"a","stage":"ResponseComplete","verb":"delete","user":{"username":"bob"},"objectRef":{"resource":"deployments","name":"cm","namespace":"ns","apiGroup":"apps"},"responseStatus":{"code":404}}]}"#;
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
            ("user.username=bob,objectRef.resource=deployments", true),
            ("user.username=bob,objectRef.resource=secrets", false),
            ("objectRef.apiGroup=apps", true),
            ("objectRef.apiGroup=", false),
            ("objectRef.namespace=ns", true),
            ("metadata.namespace=ns,objectRef.namespace!=other", true),
            ("objectRef.namespace=", false),
            ("responseStatus.code=404", true),
            ("responseStatus.code!=200", true),
            ("responseStatus.code=200", false),
            (
                "objectRef.name=cm, stage=ResponseComplete , level=Metadata",
                true,
            ),
            ("level!=RequestResponse", true),
            ("metadata.name=a-responsecomplete", true),
            ("metadata.name!=a-responsecomplete", false),
            ("metadata.name=a-ResponseComplete", false),
            ("metadata.name=a-responsecompletes", false),
            ("metadata.name=b-responsecomplete", false),
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
            FieldSelector::parse("metadata.uid=x"),
            Err(Error::UnknownField("metadata.uid".into()))
        );
        assert_eq!(
            FieldSelector::parse("responseStatus.reason=x"),
            Err(Error::UnknownField("responseStatus.reason".into()))
        );
        assert_eq!(
            FieldSelector::parse("verb"),
            Err(Error::Syntax("verb".into()))
        );
    }
}
