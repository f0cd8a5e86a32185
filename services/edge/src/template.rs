//! Spin's `{{ variable }}` templates, as used in component variables and
//! `allowed_outbound_hosts`.
//!
//! A template is literal text with `{{ name }}` references to application variables (whitespace
//! inside the braces is ignored). `{{` with no closing `}}`, an empty reference, or a name that is
//! not a valid variable name is an error. There is no escape syntax (as in Spin).

use std::fmt;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unterminated `{{{{` in {template:?}")]
    Unterminated { template: String },
    #[error("empty `{{{{ }}}}` reference in {template:?}")]
    Empty { template: String },
    #[error(
        "{name:?} is not a valid variable name (lowercase letters, digits and single `_`, starting with a letter, ending with a letter or digit)"
    )]
    InvalidName { name: String },
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(TemplateError::Unterminated {
                    template: text.to_owned(),
                });
            };
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(TemplateError::Empty {
                    template: text.to_owned(),
                });
            }
            if !is_variable_name(name) {
                return Err(TemplateError::InvalidName {
                    name: name.to_owned(),
                });
            }
            parts.push(Part::Variable(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// True when the template references no variables.
    pub fn is_literal(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, Part::Literal(_)))
    }

    /// The referenced variable names, in order of appearance (with repeats).
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Variable(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Substitutes every reference; `lookup` returning `None` is reported by name.
    pub fn render<'a>(
        &self,
        mut lookup: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(name) => out.push_str(lookup(name).ok_or_else(|| name.clone())?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::Variable(name) => write!(f, "{{{{ {name} }}}}")?,
            }
        }
        Ok(())
    }
}

/// Spin's variable name rule (`crates/expressions/src/lib.rs`, `Key::validate`): lowercase
/// ASCII letters, digits and single underscores, starting with a letter and ending with a letter
/// or digit (so that `SPIN_VARIABLE_<NAME>` maps back unambiguously).
pub fn is_variable_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(c) if c.is_ascii_lowercase())
        && matches!(bytes.last(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && !name.contains("__")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn render(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
        Template::parse(template)
            .unwrap()
            .render(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    #[test]
    fn literal_text_is_unchanged() {
        let template = Template::parse("https://example.com").unwrap();
        assert!(template.is_literal());
        assert_eq!(
            render("https://example.com", &[]).unwrap(),
            "https://example.com"
        );
    }

    #[test]
    fn references_are_substituted_with_or_without_spaces() {
        let vars = [("host", "gateway.local"), ("port", "50050")];
        assert_eq!(
            render("http://{{ host }}:{{port}}", &vars).unwrap(),
            "http://gateway.local:50050"
        );
        assert_eq!(
            render("{{host}}{{ host }}", &vars).unwrap(),
            "gateway.localgateway.local"
        );
    }

    #[test]
    fn variables_are_listed_in_order() {
        let template = Template::parse("{{ a }}-{{ b_2 }}-{{ a }}").unwrap();
        assert_eq!(template.variables().collect::<Vec<_>>(), ["a", "b_2", "a"]);
        assert!(!template.is_literal());
    }

    #[test]
    fn missing_values_are_reported_by_name() {
        assert_eq!(render("x{{ nope }}", &[]).unwrap_err(), "nope");
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert!(matches!(
            Template::parse("http://{{ host"),
            Err(TemplateError::Unterminated { .. })
        ));
        assert!(matches!(
            Template::parse("{{ }}"),
            Err(TemplateError::Empty { .. })
        ));
        assert!(matches!(
            Template::parse("{{ Host }}"),
            Err(TemplateError::InvalidName { .. })
        ));
        assert!(matches!(
            Template::parse("{{ a-b }}"),
            Err(TemplateError::InvalidName { .. })
        ));
    }

    // Spin: crates/expressions/src/lib.rs, tests::keys_good / keys_bad (Key::validate)
    #[test]
    fn variable_names_follow_spin_rules() {
        for good in ["a", "abc", "a1b2c3", "a_1", "a_1_b_3", "gateway_addr"] {
            assert!(is_variable_name(good), "{good}");
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y", "A", "é"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        let template = Template::parse("http://{{host}}:1").unwrap();
        assert_eq!(template.to_string(), "http://{{ host }}:1");
    }
}
