//! Templates: `{{ device_id }}`, `{{ fleet }}`, `{{ labels.KEY }}`, nothing else.
//!
//! Deliberately tiny: no logic, no escapes, no includes, so a template cannot do
//! more than substitute this gateway's identity. An unknown name is an error.

use crate::config::Identity;

/// Render `text`, replacing every `{{ name }}` with its value.
pub fn render(text: &str, id: &Identity) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!("template: unclosed '{{{{' at line {}", line_of(text, text.len() - rest.len() + start))
        })?;
        let name = after[..end].trim();
        let value = id.lookup(name).ok_or_else(|| {
            format!(
                "template: unknown variable {{{{ {name} }}}} at line {} (known: device_id, fleet, labels.KEY)",
                line_of(text, text.len() - rest.len() + start)
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            device_id: "gw-1".into(),
            fleet: "acme".into(),
            labels: [("site".to_string(), "berlin".to_string())].into(),
        }
    }

    #[test]
    fn substitutes_known_names() {
        assert_eq!(
            render("id={{ device_id }} f={{fleet}} s={{  labels.site }}\n", &id()).unwrap(),
            "id=gw-1 f=acme s=berlin\n"
        );
        assert_eq!(render("no templates { here }", &id()).unwrap(), "no templates { here }");
    }

    #[test]
    fn unknown_and_unclosed_are_errors_with_a_line() {
        let e = render("a\nb {{ labels.nope }}", &id()).unwrap_err();
        assert!(e.contains("labels.nope") && e.contains("line 2"), "{e}");
        assert!(render("{{ device_id", &id()).unwrap_err().contains("unclosed"));
    }
}
