//! The `{{control.NAME}}` substitution in executor parameters.
//!
//! Deliberately small and safe: the only variables are control parameters, written
//! `{{control.NAME}}` (looked up in the controls the attestation attests; it must be defined by
//! exactly one value among them) or `{{control.ID.NAME}}` (one named control, which must be among
//! them too). Spaces inside the braces are allowed. Nothing is evaluated, nothing is escaped, and
//! a substituted value is never substituted again.

/// A variable reference found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// The control id, when qualified (`{{control.ID.NAME}}`).
    pub control: Option<&'a str>,
    /// The parameter name.
    pub name: &'a str,
}

/// Replaces every `{{control...}}` in `template` with what `lookup` returns.
///
/// ```
/// use steward_subjects::config::subst::resolve;
/// let out = resolve("max={{ control.max }}", |r| Ok(format!("<{}>", r.name))).unwrap();
/// assert_eq!(out, "max=<max>");
/// assert!(resolve("{{host.id}}", |_| Ok(String::new())).is_err());
/// ```
///
/// # Errors
/// The first malformed reference, or the first error `lookup` returns.
pub fn resolve<F>(template: &str, mut lookup: F) -> Result<String, SubstError>
where
    F: FnMut(&Reference<'_>) -> Result<String, SubstError>,
{
    let unmatched = || SubstError::UnmatchedClose { template: template.to_owned() };
    if !template.contains("{{") {
        if template.contains("}}") {
            return Err(unmatched());
        }
        return Ok(template.to_owned());
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        if before.contains("}}") {
            return Err(unmatched());
        }
        out.push_str(before);
        let after = &after[2..];
        let end = after.find("}}").ok_or_else(|| SubstError::Unterminated { template: template.to_owned() })?;
        let var = after[..end].trim();
        let reference = parse_reference(var)?;
        out.push_str(&lookup(&reference)?);
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err(unmatched());
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_reference(var: &str) -> Result<Reference<'_>, SubstError> {
    let Some(path) = var.strip_prefix("control.") else {
        return Err(SubstError::UnknownVariable { var: var.to_owned() });
    };
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match path.split_once('.') {
        Some((control, name)) if ok(control) && ok(name) => Ok(Reference { control: Some(control), name }),
        None if ok(path) => Ok(Reference { control: None, name: path }),
        _ => Err(SubstError::Malformed { var: var.to_owned() }),
    }
}

/// Why a template does not resolve: a malformed template, or a reference the lookup cannot
/// answer (the lookup variants are the ones control-parameter lookup needs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    /// A `}}` with no `{{` before it.
    #[error("unmatched '}}}}' in {template:?}")]
    UnmatchedClose {
        /// The whole template.
        template: String,
    },
    /// A `{{` with no `}}` after it.
    #[error("unterminated '{{{{' in {template:?}")]
    Unterminated {
        /// The whole template.
        template: String,
    },
    /// A variable outside the `control.` namespace.
    #[error("unknown variable {{{{{var}}}}}: only {{{{control.NAME}}}} is supported")]
    UnknownVariable {
        /// The text between the braces, trimmed.
        var: String,
    },
    /// A `control.` variable whose path is not `NAME` or `ID.NAME` of valid characters.
    #[error("malformed variable {{{{{var}}}}}")]
    Malformed {
        /// The text between the braces, trimmed.
        var: String,
    },
    /// `{{control.ID.NAME}}` names a control that is not attested.
    #[error("control {control:?} is not attested by this attestation")]
    NotAttested {
        /// The control id.
        control: String,
    },
    /// `{{control.ID.NAME}}` names a parameter the control does not define.
    #[error("control {control:?} has no parameter {name:?}")]
    NoParameter {
        /// The control id.
        control: String,
        /// The parameter name.
        name: String,
    },
    /// `{{control.NAME}}` is defined by no attested control.
    #[error("no attested control defines parameter {name:?}")]
    Undefined {
        /// The parameter name.
        name: String,
    },
    /// `{{control.NAME}}` has different values in several attested controls.
    #[error("parameter {name:?} is ambiguous (controls {}); write {{{{control.ID.{name}}}}}", .controls.join(", "))]
    Ambiguous {
        /// The parameter name.
        name: String,
        /// The controls defining it, in attestation order.
        controls: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_plain_and_qualified_references() {
        let r =
            resolve("a {{control.x}} b {{ control.c1.y }}", |r| Ok(format!("{}:{}", r.control.unwrap_or("-"), r.name)))
                .unwrap();
        assert_eq!(r, "a -:x b c1:y");
    }

    #[test]
    fn refuses_malformed_templates() {
        for bad in ["{{control.x", "x}}", "{{env.HOME}}", "{{control.}}", "{{control.a.b.c}}", "{{control.x y}}"] {
            assert!(resolve(bad, |_| Ok(String::new())).is_err(), "{bad}");
        }
        assert!(resolve("v={{control.x}}", |r| Err(SubstError::Undefined { name: r.name.to_owned() })).is_err());
        assert_eq!(resolve("x}}", |_| Ok(String::new())), Err(SubstError::UnmatchedClose { template: "x}}".into() }));
        assert_eq!(
            resolve("{{env.HOME}}", |_| Ok(String::new())).unwrap_err().to_string(),
            "unknown variable {{env.HOME}}: only {{control.NAME}} is supported"
        );
    }
}
