//! Unit tests of `plugin::print`.

use super::*;

const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1alpha1","metadata":{"name":"a-responsecomplete","namespace":"team-a","resourceVersion":"4","creationTimestamp":"2026-01-01T10:00:02Z"},"level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a/configmaps/cm","verb":"delete","user":{"username":"alice"},"sourceIPs":["10.0.0.1","::1"],"userAgent":"kubectl/v1.33","objectRef":{"resource":"configmaps","namespace":"team-a","name":"cm","apiVersion":"v1"},"responseStatus":{"code":200},"requestReceivedTimestamp":"2026-01-01T10:00:00.000000Z","stageTimestamp":"2026-01-01T10:00:00.012000Z","annotations":{"audit.k8s.io/source":"apiserver-1"}}"#;

fn render(output: Output, colour: bool, raws: &[&str]) -> String {
    let items: Vec<Item> = raws.iter().map(|r| Item::new(r).unwrap()).collect();
    let mut p = Printer::with_colour(output, colour);
    let mut out = vec![];
    p.render(&items, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn table_rows_align_under_the_header() {
    let cluster = r#"{"metadata":{"resourceVersion":"5"},"verb":"list","user":{"username":"system:kube-controller-manager"},"requestURI":"/healthz","stageTimestamp":"2026-01-01T10:00:01Z"}"#;
    let text = render(Output::Table, false, &[EVENT, cluster]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "TIME                   SOURCE        USER                             VERB     RESOURCE     NAMESPACE/NAME         CODE   LATENCY",
            "2026-01-01T10:00:00Z   apiserver-1   alice                            delete   configmaps   team-a/cm              200    12ms",
            "2026-01-01T10:00:01Z                 system:kube-controller-manager   list     /healthz",
        ]
    );
}

#[test]
fn wide_adds_stage_ips_agent_and_audit_id() {
    let text = render(Output::Wide, false, &[EVENT]);
    let header = text.lines().next().unwrap();
    assert!(
        header.ends_with("STAGE              SOURCE IPS     USER AGENT         AUDIT ID"),
        "{header}"
    );
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .ends_with("ResponseComplete   10.0.0.1,::1   kubectl/v1.33      a")
    );
}

#[test]
fn colour_on_verb_and_code_only_when_asked() {
    let plain = render(Output::Table, false, &[EVENT]);
    assert!(!plain.contains('\x1b'));
    let coloured = render(Output::Table, true, &[EVENT]);
    let red = AnsiColor::Red.on_default();
    let green = AnsiColor::Green.on_default();
    assert!(
        coloured.contains(&format!("{red}delete{red:#}")),
        "{coloured:?}"
    );
    assert!(
        coloured.contains(&format!("{green}200{green:#}")),
        "{coloured:?}"
    );
    // The header and the other cells are plain; alignment counts visible characters.
    assert!(coloured.lines().next().unwrap().starts_with("TIME "));
    let strip = coloured
        .replace(&format!("{red}"), "")
        .replace(&format!("{red:#}"), "")
        .replace(&format!("{green}"), "");
    assert_eq!(strip.replace(&format!("{green:#}"), ""), plain);
}

#[test]
fn truncated_events_say_so() {
    let truncated = EVENT.replace(
        r#""annotations":{"#,
        r#""annotations":{"audit.k8s.io/truncated":"true","#,
    );
    let text = render(Output::Table, false, &[&truncated]);
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .ends_with("12ms   (truncated: request/response objects left out)"),
        "{text}"
    );
}

#[test]
fn redacted_events_say_so() {
    let redacted = EVENT.replace(
        r#""annotations":{"#,
        r#""annotations":{"audit.k8s.io/redacted":"true","#,
    );
    let text = render(Output::Table, false, &[&redacted]);
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .ends_with("12ms   (redacted: secret values in request/response objects replaced)"),
        "{text}"
    );
    let both = redacted.replace(
        r#""annotations":{"#,
        r#""annotations":{"audit.k8s.io/truncated":"true","#,
    );
    let text = render(Output::Wide, true, &[&both]);
    assert!(
        text.lines().nth(1).unwrap().ends_with(
            "   a   (truncated: request/response objects left out)   (redacted: secret values in request/response objects replaced)"
        ),
        "{text}"
    );
    assert!(!Item::new(EVENT).unwrap().view.redacted());
    let not = EVENT.replace(
        r#""annotations":{"#,
        r#""annotations":{"audit.k8s.io/redacted":"false","#,
    );
    assert!(!render(Output::Table, false, &[&not]).contains("redacted"));
}

#[test]
fn tables_print_the_escaped_form_and_stay_aligned() {
    let evil = "cm\x1b[2J\x1b]0;owned\x07\rx\u{9b}1m\x7f\n\ty";
    let mut v: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    v["objectRef"]["name"] = evil.into();
    v["user"]["username"] = "bob\x1b[5m\0".into();
    v["verb"] = "del\x1bete".into();
    v["userAgent"] = "curl\x08\x08\x08\x08kubectl".into();
    v["auditID"] = "\u{85}id".into();
    v["sourceIPs"] = serde_json::json!(["10.0.0.1\r"]);
    v["annotations"]["audit.k8s.io/source"] = "api\x1bserver".into();
    let raw = v.to_string();
    for colour in [false, true] {
        let text = render(Output::Wide, colour, &[&raw, EVENT]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        let row = lines[1];
        for shown in [
            "team-a/cm^[[2J^[]0;owned^G\\rx\\u009b1m^?\\n\\ty",
            "bob^[[5m^@",
            "del^[ete",
            "curl^H^H^H^Hkubectl",
            "\\u0085id",
            "10.0.0.1\\r",
            "api^[server",
        ] {
            assert!(row.contains(shown), "{shown}: {row:?}");
        }
        // Besides the plugin's own colours, no control character; the columns line up.
        let plain = if colour {
            let red = AnsiColor::Red.on_default();
            let cyan = AnsiColor::Cyan.on_default();
            let green = AnsiColor::Green.on_default();
            [red, cyan, green].iter().fold(text.clone(), |t, s| {
                t.replace(&s.to_string(), "").replace(&format!("{s:#}"), "")
            })
        } else {
            text.clone()
        };
        assert!(
            !plain.chars().any(|c| c.is_control() && c != '\n'),
            "{plain:?}"
        );
        // Every column starts where its header does, after a space.
        let plain_lines: Vec<Vec<char>> = plain.lines().map(|l| l.chars().collect()).collect();
        let header: String = plain_lines[0].iter().collect();
        for name in Printer::headers(Output::Wide) {
            let at = header[..header.find(name).unwrap()].chars().count();
            for line in &plain_lines[1..] {
                assert!(
                    at == 0 || (line[at - 1] == ' ' && line[at] != ' '),
                    "{name}: {plain}"
                );
            }
        }
    }
    // JSON stays the object as sent; YAML parses back to it.
    assert_eq!(render(Output::Json, true, &[&raw]), format!("{raw}\n"));
    let yaml = render(Output::Yaml, true, &[&raw]);
    // YAML's double-quoted escapes keep it valid, and the terminal safe.
    assert!(
        !yaml.chars().any(|c| c.is_control() && c != '\n'),
        "{yaml:?}"
    );
    let back: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&yaml).unwrap();
    assert_eq!(back, [v]);
}

#[test]
fn json_is_the_object_as_sent_and_yaml_a_document_each() {
    assert_eq!(
        render(Output::Json, true, &[EVENT, EVENT]),
        format!("{EVENT}\n{EVENT}\n")
    );
    let yaml = render(Output::Yaml, false, &[EVENT, EVENT]);
    assert_eq!(yaml.matches("---\n").count(), 2);
    assert!(yaml.contains("auditID: a\n"), "{yaml}");
    assert!(yaml.contains("  username: alice\n"), "{yaml}");
}

#[test]
fn times() {
    let item = Item::new(EVENT).unwrap();
    assert_eq!(item.resource_version(), Some(4));
    assert_eq!(
        item.view.time().unwrap(),
        "2026-01-01T10:00:00.012Z".parse::<Timestamp>().unwrap()
    );
    let no_stage = EVENT.replace("stageTimestamp", "other");
    assert_eq!(
        Item::new(&no_stage).unwrap().view.time().unwrap(),
        "2026-01-01T10:00:02Z".parse::<Timestamp>().unwrap()
    );
    assert!(!item.view.truncated());
}
