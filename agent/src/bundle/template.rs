//! Templates: `{{ device_id }}`, `{{ fleet }}`, `{{ labels.KEY }}`, nothing else.
//!
//! Deliberately tiny: no logic, no escapes, no includes, so a template cannot do
//! more than substitute this gateway's identity. An unknown name is an error.

use std::collections::BTreeMap;

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

/// What the placeholders `{device_id}`, `{fleet}`, `{labels.KEY}` stand for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Identity {
    pub device_id: String,
    pub fleet: String,
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    /// The value of a placeholder name (`device_id`, `fleet`, `labels.KEY`).
    pub fn lookup(&self, name: &str) -> Option<&str> {
        match name {
            "device_id" => Some(&self.device_id),
            "fleet" => Some(&self.fleet),
            _ => name.strip_prefix("labels.").and_then(|k| self.labels.get(k)).map(String::as_str),
        }
    }

    /// Replace `{name}` placeholders in a config string. An unknown name is an error.
    pub fn expand(&self, s: &str) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').ok_or_else(|| format!("unclosed '{{' in {s:?}"))?;
            let name = after[..end].trim();
            let value = self.lookup(name).ok_or_else(|| {
                format!("unknown placeholder {{{name}}} in {s:?} (known: device_id, fleet, labels.KEY)")
            })?;
            out.push_str(value);
            rest = &after[end + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in {s:?}"));
        }
        out.push_str(rest);
        Ok(out)
    }
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
