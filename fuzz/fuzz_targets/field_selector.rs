//! The fieldSelector parser on arbitrary text: never a panic; an accepted selector
//! matches consistently (`a=v` and `a!=v` never both match) and `metadata.name` is
//! compared without building the name (against the name built the slow way).
#![no_main]

use kube_audit_stream::event::{Event, Field, decode_event_list};
use kube_audit_stream::selector::FieldSelector;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn event() -> &'static Event {
    static EV: OnceLock<Event> = OnceLock::new();
    EV.get_or_init(|| {
        let body = br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a-1","stage":"ResponseComplete","level":"Metadata","verb":"delete","user":{"username":"alice"},"objectRef":{"namespace":"team-a","resource":"configmaps","name":"cm","apiGroup":""},"responseStatus":{"code":200}}]}"#;
        decode_event_list(body, "src", "2026-01-01T00:00:00Z")
            .expect("the fixed event decodes")
            .remove(0)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sel) = FieldSelector::parse(text) else {
        return;
    };
    let ev = event();
    let _ = sel.matches(ev);
    // One `label=value` term: its negation matches exactly when it does not. (Not a set
    // term, `label in (…)`, whose values may hold `=` themselves.)
    if let Some((label, value)) = text.split_once('=')
        && !text.contains([',', '('])
        && !label.contains('!')
        && !value.contains('=')
    {
        let label = label.trim();
        let value = value.trim();
        let neg = FieldSelector::parse(&format!("{label}!={value}")).expect("negation parses");
        assert_ne!(sel.matches(ev), neg.matches(ev), "{text:?}");
        if label == "metadata.name" {
            let name = format!(
                "{}-{}",
                ev.audit_id(),
                ev.get(Field::Stage).to_ascii_lowercase()
            );
            assert_eq!(sel.matches(ev), value == name, "{text:?}");
        }
    }
});
