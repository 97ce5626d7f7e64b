//! Compose variable interpolation: `$VAR`, `${VAR}` and the `:-` `-` `:?` `?` `:+` `+`
//! modifiers, applied to strings and to every string scalar of a YAML document.
//! Follows the Compose Specification "Interpolation" section, with edge cases matched
//! to compose-go's `template` package (v2). Hand-written because no well-kept crate
//! implements compose's exact rules (lazy nested defaults, `$$`, lone `$` kept literal).

use serde_norway::Value;
use std::fmt::Write as _;

/// Variable lookup: returns the value of a variable, or None when unset.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Why a string could not be interpolated.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum InterpolateError {
    /// A `${` with no matching `}`, an empty or invalid name, or an unknown modifier.
    /// `text` is the whole string that was being interpolated.
    #[error("invalid interpolation format for {text:?}")]
    InvalidFormat { text: String },
    /// `${VAR:?msg}` with VAR unset or empty, or `${VAR?msg}` with VAR unset.
    #[error("required variable {var} is missing a value{}", reason_suffix(.message))]
    Required { var: String, message: String },
}

// compose-go drops the `: ` when the author gave no message, so the var is still named.
fn reason_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Error from walking a YAML document, with the dotted path of the scalar, e.g.
/// `services.web.environment.FOO` or `services.web.ports[0]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("{path}: {source}")]
pub struct PathError {
    pub path: String,
    #[source]
    pub source: InterpolateError,
}

/// Failure inside a nested expansion; the invalid-format case only gets its text at the
/// top, because compose reports the whole input rather than the nested fragment.
enum Fault {
    Invalid,
    Required { var: String, message: String },
}

/// Interpolates `input`, resolving variables through `lookup`. Values returned by
/// `lookup` are inserted as-is, never interpolated again.
pub fn interpolate(input: &str, lookup: Lookup<'_>) -> Result<String, InterpolateError> {
    expand(input, lookup).map_err(|fault| match fault {
        Fault::Invalid => InterpolateError::InvalidFormat {
            text: input.to_owned(),
        },
        Fault::Required { var, message } => InterpolateError::Required { var, message },
    })
}

/// Interpolates every string scalar in `value` in place (mapping VALUES and sequence
/// items; never mapping keys), recursing into nested mappings/sequences. Non-string
/// scalars untouched.
pub fn interpolate_yaml(value: &mut Value, lookup: Lookup<'_>) -> Result<(), PathError> {
    let mut path = String::new();
    walk(value, &mut path, lookup)
}

// `path` is one buffer grown and truncated around each child, to avoid a String per node.
fn walk(value: &mut Value, path: &mut String, lookup: Lookup<'_>) -> Result<(), PathError> {
    match value {
        Value::String(text) => {
            *text = interpolate(text, lookup).map_err(|source| PathError {
                path: path.clone(),
                source,
            })?;
        }
        Value::Mapping(mapping) => {
            for (key, child) in mapping.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                push_key(path, key);
                walk(child, path, lookup)?;
                path.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (index, child) in items.iter_mut().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{index}]");
                walk(child, path, lookup)?;
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn push_key(path: &mut String, key: &Value) {
    match key {
        Value::String(text) => path.push_str(text),
        Value::Number(number) => {
            let _ = write!(path, "{number}");
        }
        Value::Bool(flag) => {
            let _ = write!(path, "{flag}");
        }
        Value::Null => path.push_str("null"),
        // Compose files never use collections as keys; the path only needs to be readable.
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => path.push('?'),
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Byte length of the variable name at the start of `s` (0 when there is none).
fn name_len(s: &str) -> usize {
    match s.chars().next() {
        Some(c) if is_name_start(c) => s.find(|c: char| !is_name_char(c)).unwrap_or(s.len()),
        _ => 0,
    }
}

/// Index of the `}` closing a `${` whose body starts `s`. Every `{` nests, as in
/// compose-go, so `${A:-{x}}` has the default `{x}`.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn expand(input: &str, lookup: Lookup<'_>) -> Result<String, Fault> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_and_rest = &after[1..];
                let close = closing_brace(body_and_rest).ok_or(Fault::Invalid)?;
                out.push_str(&braced(&body_and_rest[..close], lookup)?);
                rest = &body_and_rest[close + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = name_len(after);
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
                rest = &after[len..];
            }
            // compose-go leaves a `$` that starts no reference as text (`a $ b`, `^x$`).
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves the inside of `${...}`. The default / alternate / message text is only
/// expanded when it is used, as compose-go v2 does, so an unused `${B:?}` cannot fail.
fn braced(body: &str, lookup: Lookup<'_>) -> Result<String, Fault> {
    let len = name_len(body);
    if len == 0 {
        return Err(Fault::Invalid);
    }
    let (name, modifier) = body.split_at(len);
    let value = lookup(name);
    if modifier.is_empty() {
        return Ok(value.unwrap_or_default());
    }
    let (colon, modifier) = match modifier.strip_prefix(':') {
        Some(stripped) => (true, stripped),
        None => (false, modifier),
    };
    let mut chars = modifier.chars();
    let op = chars.next().ok_or(Fault::Invalid)?;
    let arg = chars.as_str();
    // With `:` an empty value counts as absent.
    let present = match value.as_deref() {
        Some(v) => !colon || !v.is_empty(),
        None => false,
    };
    match op {
        '-' if present => Ok(value.unwrap_or_default()),
        '-' => expand(arg, lookup),
        '+' if present => expand(arg, lookup),
        '+' => Ok(String::new()),
        '?' if present => Ok(value.unwrap_or_default()),
        '?' => Err(Fault::Required {
            var: name.to_owned(),
            message: expand(arg, lookup)?,
        }),
        _ => Err(Fault::Invalid),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// FOO=first, EMPTY="" (set but empty), DOLLAR holds a `$` reference, everything else unset.
    fn env(name: &str) -> Option<String> {
        let vars: HashMap<&str, &str> = [
            ("FOO", "first"),
            ("EMPTY", ""),
            ("DOLLAR", "$FOO ${FOO}"),
            ("lower", "low"),
            ("_U9", "under"),
        ]
        .into_iter()
        .collect();
        vars.get(name).map(|v| (*v).to_owned())
    }

    fn ok(input: &str) -> String {
        interpolate(input, &env).unwrap()
    }

    fn err(input: &str) -> InterpolateError {
        interpolate(input, &env).unwrap_err()
    }

    fn invalid(input: &str) -> InterpolateError {
        InterpolateError::InvalidFormat {
            text: input.to_owned(),
        }
    }

    fn required(var: &str, message: &str) -> InterpolateError {
        InterpolateError::Required {
            var: var.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn plain_text_unchanged() {
        assert_eq!(ok("no variables here"), "no variables here");
        assert_eq!(ok(""), "");
    }

    #[test]
    fn unbraced_variable() {
        assert_eq!(ok("This $FOO var"), "This first var");
    }

    #[test]
    fn braced_variable() {
        assert_eq!(ok("This ${FOO} var"), "This first var");
    }

    #[test]
    fn unset_is_empty_without_error() {
        assert_eq!(ok("a${MISSING}b$MISSING.c"), "ab.c");
    }

    #[test]
    fn set_but_empty_is_empty() {
        assert_eq!(ok("[${EMPTY}][$EMPTY]"), "[][]");
    }

    #[test]
    fn names_are_case_sensitive_and_allow_underscore_digits() {
        assert_eq!(ok("$lower ${_U9} ${LOWER}"), "low under ");
    }

    #[test]
    fn unbraced_name_stops_at_first_non_name_char() {
        assert_eq!(ok("$FOO-bar"), "first-bar");
        assert_eq!(ok("$FOO.bar"), "first.bar");
        assert_eq!(ok("$FOObar"), "");
    }

    #[test]
    fn dot_not_allowed_in_braced_name() {
        assert_eq!(err("${FOO.BAR}"), invalid("${FOO.BAR}"));
    }

    #[test]
    fn soft_default_when_unset_or_empty() {
        assert_eq!(ok("${MISSING:-def}"), "def");
        assert_eq!(ok("${EMPTY:-def}"), "def");
        assert_eq!(ok("${FOO:-def}"), "first");
    }

    #[test]
    fn hard_default_only_when_unset() {
        assert_eq!(ok("${MISSING-def}"), "def");
        assert_eq!(ok("${EMPTY-def}"), "");
        assert_eq!(ok("${FOO-def}"), "first");
    }

    #[test]
    fn empty_default_is_allowed() {
        assert_eq!(ok("<${MISSING:-}>"), "<>");
        assert_eq!(ok("<${MISSING-}>"), "<>");
    }

    #[test]
    fn required_non_empty() {
        assert_eq!(err("${MISSING:?need it}"), required("MISSING", "need it"));
        assert_eq!(err("${EMPTY:?need it}"), required("EMPTY", "need it"));
        assert_eq!(ok("${FOO:?need it}"), "first");
    }

    #[test]
    fn required_set() {
        assert_eq!(err("${MISSING?need it}"), required("MISSING", "need it"));
        assert_eq!(ok("<${EMPTY?need it}>"), "<>");
        assert_eq!(ok("${FOO?need it}"), "first");
    }

    #[test]
    fn required_display_with_message() {
        assert_eq!(
            err("x ${MISSING:?set MISSING first}").to_string(),
            "required variable MISSING is missing a value: set MISSING first"
        );
    }

    #[test]
    fn required_display_with_empty_message_still_names_var() {
        assert_eq!(err("${MISSING:?}"), required("MISSING", ""));
        assert_eq!(
            err("${MISSING?}").to_string(),
            "required variable MISSING is missing a value"
        );
    }

    #[test]
    fn required_message_is_interpolated() {
        assert_eq!(
            err("${MISSING:?FOO is $FOO}"),
            required("MISSING", "FOO is first")
        );
    }

    #[test]
    fn alternate_when_set_and_non_empty() {
        assert_eq!(ok("<${FOO:+alt}>"), "<alt>");
        assert_eq!(ok("<${EMPTY:+alt}>"), "<>");
        assert_eq!(ok("<${MISSING:+alt}>"), "<>");
    }

    #[test]
    fn alternate_when_set() {
        assert_eq!(ok("<${FOO+alt}>"), "<alt>");
        assert_eq!(ok("<${EMPTY+alt}>"), "<alt>");
        assert_eq!(ok("<${MISSING+alt}>"), "<>");
    }

    #[test]
    fn nested_default() {
        assert_eq!(ok("${A:-${B:-x}}"), "x");
        assert_eq!(ok("${A:-${FOO:-x}}"), "first");
    }

    #[test]
    fn default_text_is_interpolated() {
        assert_eq!(ok("${A:-prefix-$FOO}"), "prefix-first");
        assert_eq!(ok("${A-${FOO} and ${FOO}}"), "first and first");
        assert_eq!(ok("${EMPTY+$FOO ${FOO:+second}}"), "first second");
    }

    #[test]
    fn modifier_chars_after_the_first_are_default_text() {
        assert_eq!(ok("${EMPTY:-/non:-alpha?num+}"), "/non:-alpha?num+");
        assert_eq!(ok("${MISSING-myerror?msg}"), "myerror?msg");
        assert_eq!(err("${MISSING?bar-baz}"), required("MISSING", "bar-baz"));
    }

    #[test]
    fn unused_branch_is_not_evaluated() {
        // compose-go v2 expands defaults lazily: FOO is set, so the inner `?` never fires.
        assert_eq!(ok("${FOO:-${MISSING:?boom}}"), "first");
        assert_eq!(ok("<${MISSING:+${OTHER:?boom}}>"), "<>");
        assert_eq!(err("${MISSING:-${OTHER:?boom}}"), required("OTHER", "boom"));
    }

    #[test]
    fn dollar_dollar_is_literal_dollar() {
        assert_eq!(ok("$$FOO $${FOO} a$$b"), "$FOO ${FOO} a$b");
    }

    #[test]
    fn dollar_dollar_in_default() {
        assert_eq!(ok("${MISSING:-$$FOO}"), "$FOO");
        assert_eq!(ok("${MISSING:-$${FOO}}"), "${FOO}");
    }

    #[test]
    fn lone_dollar_is_kept_literally() {
        // compose-go: `$` not followed by `$`, `{` or a name start is plain text, no error.
        assert_eq!(ok("a $ string"), "a $ string");
        assert_eq!(ok("^REGEX$"), "^REGEX$");
        assert_eq!(ok("$}"), "$}");
        assert_eq!(ok("$"), "$");
        assert_eq!(ok("$-x $1 $é"), "$-x $1 $é");
    }

    #[test]
    fn unterminated_brace_is_invalid() {
        assert_eq!(err("${FOO"), invalid("${FOO"));
        assert_eq!(err("x ${"), invalid("x ${"));
        assert_eq!(err("${FOO:-${BAR}"), invalid("${FOO:-${BAR}"));
    }

    #[test]
    fn empty_or_spaced_names_are_invalid() {
        for bad in ["${}", "${ }", "${ FOO}", "${FOO }", "${1FOO}", "${-x}"] {
            assert_eq!(err(bad), invalid(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_or_incomplete_modifiers_are_invalid() {
        for bad in [
            "${FOO!}",
            "${FOO:}",
            "${FOO:x}",
            "${FOO:=x}",
            "${FOO=x}",
            "${FOO/a/b}",
        ] {
            assert_eq!(err(bad), invalid(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_format_reports_whole_input_even_when_nested() {
        assert_eq!(err("pre ${A:-${ }} post"), invalid("pre ${A:-${ }} post"));
    }

    #[test]
    fn invalid_format_display() {
        assert_eq!(
            err("${FOO").to_string(),
            r#"invalid interpolation format for "${FOO""#
        );
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(err("${A:?one} ${B:?two}"), required("A", "one"));
    }

    #[test]
    fn multiple_substitutions_and_adjacent_text() {
        assert_eq!(ok("$FOO$FOO${FOO}x${FOO}"), "firstfirstfirstxfirst");
        assert_eq!(ok("${MISSING:-a} mid ${FOO:-b}-tail"), "a mid first-tail");
    }

    #[test]
    fn unicode_around_variables() {
        assert_eq!(ok("héllo ${FOO}→ünï $FOO日本"), "héllo first→ünï first日本");
        assert_eq!(ok("${MISSING:-défaut ✓}"), "défaut ✓");
    }

    #[test]
    fn looked_up_value_is_not_reinterpolated() {
        assert_eq!(ok("$DOLLAR"), "$FOO ${FOO}");
        assert_eq!(ok("${MISSING:-$DOLLAR}"), "$FOO ${FOO}");
    }

    #[test]
    fn plain_braces_in_default_nest() {
        assert_eq!(ok("${MISSING:-{x}}"), "{x}");
        assert_eq!(ok("${MISSING:-a}}"), "a}");
        assert_eq!(ok("{$FOO}"), "{first}");
    }

    #[test]
    fn newlines_pass_through() {
        assert_eq!(ok("a\n$FOO\n${MISSING:-b}\n"), "a\nfirst\nb\n");
    }

    fn yaml(text: &str) -> Value {
        serde_norway::from_str(text).unwrap()
    }

    #[test]
    fn yaml_interpolates_nested_values() {
        let mut doc = yaml(
            "services:\n  web:\n    image: \"app:${FOO}\"\n    environment:\n      A: $FOO\n    ports:\n      - \"${MISSING:-80}:80\"\n",
        );
        interpolate_yaml(&mut doc, &env).unwrap();
        assert_eq!(
            doc,
            yaml("services:\n  web:\n    image: app:first\n    environment:\n      A: first\n    ports:\n      - \"80:80\"\n")
        );
    }

    #[test]
    fn yaml_keys_are_not_interpolated() {
        let mut doc = yaml("$FOO: ${FOO}\nnested:\n  ${FOO}: x\n");
        interpolate_yaml(&mut doc, &env).unwrap();
        assert_eq!(doc, yaml("$FOO: first\nnested:\n  ${FOO}: x\n"));
    }

    #[test]
    fn yaml_non_strings_untouched() {
        let mut doc = yaml("a: 1\nb: true\nc: null\nd: 2.5\ne: [3, false]\n");
        let before = doc.clone();
        interpolate_yaml(&mut doc, &env).unwrap();
        assert_eq!(doc, before);
    }

    #[test]
    fn yaml_error_path_for_mapping_value() {
        let mut doc = yaml("services:\n  web:\n    environment:\n      FOO: ${NOPE:?missing}\n");
        let e = interpolate_yaml(&mut doc, &env).unwrap_err();
        assert_eq!(e.path, "services.web.environment.FOO");
        assert_eq!(e.source, required("NOPE", "missing"));
        assert_eq!(
            e.to_string(),
            "services.web.environment.FOO: required variable NOPE is missing a value: missing"
        );
    }

    #[test]
    fn yaml_error_path_for_list_index() {
        let mut doc = yaml("services:\n  web:\n    ports:\n      - \"80\"\n      - \"${BAD\"\n");
        let e = interpolate_yaml(&mut doc, &env).unwrap_err();
        assert_eq!(e.path, "services.web.ports[1]");
        assert_eq!(e.source, invalid("${BAD"));
    }

    #[test]
    fn yaml_error_path_for_nested_lists_and_numeric_keys() {
        let mut doc = yaml("a:\n  - - ok\n    - ${X?}\n8080: y\n");
        let e = interpolate_yaml(&mut doc, &env).unwrap_err();
        assert_eq!(e.path, "a[0][1]");
        let mut doc = yaml("top:\n  8080: ${X?}\n");
        let e = interpolate_yaml(&mut doc, &env).unwrap_err();
        assert_eq!(e.path, "top.8080");
    }

    #[test]
    fn yaml_tagged_value_is_walked() {
        let mut doc = yaml("a: !custom ${FOO}\n");
        interpolate_yaml(&mut doc, &env).unwrap();
        assert_eq!(doc, yaml("a: !custom first\n"));
    }

    #[test]
    fn yaml_top_level_scalar() {
        let mut doc = Value::String("${FOO}".to_owned());
        interpolate_yaml(&mut doc, &env).unwrap();
        assert_eq!(doc, Value::String("first".to_owned()));
    }
}
