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
pub fn resolve<F>(template: &str, mut lookup: F) -> Result<String, String>
where
    F: FnMut(&Reference<'_>) -> Result<String, String>,
{
    if !template.contains("{{") {
        if template.contains("}}") {
            return Err(format!("unmatched '}}}}' in {template:?}"));
        }
        return Ok(template.to_owned());
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        if before.contains("}}") {
            return Err(format!("unmatched '}}}}' in {template:?}"));
        }
        out.push_str(before);
        let after = &after[2..];
        let end = after.find("}}").ok_or_else(|| format!("unterminated '{{{{' in {template:?}"))?;
        let var = after[..end].trim();
        let reference = parse_reference(var)?;
        out.push_str(&lookup(&reference)?);
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err(format!("unmatched '}}}}' in {template:?}"));
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_reference(var: &str) -> Result<Reference<'_>, String> {
    let Some(path) = var.strip_prefix("control.") else {
        return Err(format!("unknown variable {{{{{var}}}}}: only {{{{control.NAME}}}} is supported"));
    };
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match path.split_once('.') {
        Some((control, name)) if ok(control) && ok(name) => Ok(Reference { control: Some(control), name }),
        None if ok(path) => Ok(Reference { control: None, name: path }),
        _ => Err(format!("malformed variable {{{{{var}}}}}")),
    }
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
        assert!(resolve("v={{control.x}}", |_| Err("nope".into())).is_err());
    }
}
