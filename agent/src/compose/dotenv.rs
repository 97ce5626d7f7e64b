//! Compose's `.env` / `env_file` format, plus `format: raw` (docker run `--env-file` lines).
//! Follows the Compose docs ".env file syntax" with edge cases matched to compose-go's
//! `dotenv` parser (v2) and docker/cli's `kvfile` for raw. Hand-written because no
//! well-kept crate implements compose's exact quoting, escape and interpolation rules.
//! Error messages never contain value text: values are often secrets.

use super::interpolate::{interpolate, InterpolateError, Lookup};
use std::collections::HashMap;

/// Why an env file could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DotenvError {
    /// Malformed line. `reason` never quotes the value.
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    /// Interpolation inside the value of `key` failed. An invalid-format `source` has its
    /// text redacted, since that text is the value.
    #[error("line {line}: cannot interpolate {key}: {source}")]
    Interpolate {
        line: usize,
        key: String,
        #[source]
        source: InterpolateError,
    },
}

/// One entry: key and value; None value = bare key (`FOO` alone on a line) whose value
/// must be inherited from the environment by the caller and is unset if the environment
/// lacks it.
pub type Entry = (String, Option<String>);

/// Parses compose's dotenv syntax. Entries come back in file order with duplicates kept;
/// the last entry for a key wins.
///
/// `${VAR}` in unquoted and double-quoted values is resolved like compose-go's
/// `ParseWithLookup`: `lookup` first, then keys defined earlier in this file. So a
/// variable set in the environment wins over the file's own earlier definition.
pub fn parse(content: &str, lookup: Lookup<'_>) -> Result<Vec<Entry>, DotenvError> {
    let mut parser = Parser {
        src: content.strip_prefix('\u{feff}').unwrap_or(content),
        pos: 0,
        line: 1,
    };
    let mut entries = Vec::new();
    let mut defined: HashMap<String, String> = HashMap::new();
    while let Some(line) = parser.next_statement() {
        let (key, has_value) = parser.key()?;
        if !has_value {
            // compose-go resolves a bare key via lookup and keeps an earlier definition
            // when lookup has nothing; skipping the entry keeps that outcome for a caller
            // that takes the last entry.
            if !(defined.contains_key(&key) && lookup(&key).is_none()) {
                entries.push((key, None));
            }
            continue;
        }
        let raw = parser.value(line)?;
        let value = match raw {
            RawValue::Literal(text) => text,
            RawValue::Template(template) => {
                let resolve = |name: &str| lookup(name).or_else(|| defined.get(name).cloned());
                interpolate(&template, &resolve).map_err(|source| DotenvError::Interpolate {
                    line,
                    key: key.clone(),
                    source: redact(source),
                })?
            }
        };
        defined.insert(key.clone(), value.clone());
        entries.push((key, Some(value)));
    }
    Ok(entries)
}

/// `format: raw`: each `KEY=VALUE` line taken verbatim (no quotes, no escapes, no
/// interpolation, no comments stripping except whole-line `#` comments and blank lines).
/// Leading whitespace of a line is dropped, the value keeps everything after the first
/// `=` (trailing whitespace included), and a line without `=` is a bare key.
pub fn parse_raw(content: &str) -> Result<Vec<Entry>, DotenvError> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut entries = Vec::new();
    for (index, raw_line) in content.split('\n').enumerate() {
        let line = index + 1;
        // Like a line scanner, a CR before the LF belongs to the line ending.
        let text = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let text = text.trim_start();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (text, None),
        };
        if key.is_empty() {
            return Err(syntax(line, "missing variable name"));
        }
        if key.contains([' ', '\t']) {
            return Err(syntax(line, "variable name contains whitespace"));
        }
        entries.push((key.to_owned(), value));
    }
    Ok(entries)
}

fn syntax(line: usize, reason: &str) -> DotenvError {
    DotenvError::Syntax {
        line,
        reason: reason.to_owned(),
    }
}

fn redact(error: InterpolateError) -> InterpolateError {
    match error {
        InterpolateError::InvalidFormat { .. } => InterpolateError::InvalidFormat {
            text: "<redacted>".to_owned(),
        },
        required @ InterpolateError::Required { .. } => required,
    }
}

/// compose-go's in-line space: whitespace that is not a line break.
fn is_inline_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{b}' | '\u{c}' | '\r' | '\u{85}' | '\u{a0}'
    )
}

/// Key characters compose-go accepts: letters, digits, `_ . -` and `[ ]`.
fn is_key_char(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || matches!(c, '_' | '.' | '-' | '[' | ']')
}

enum RawValue {
    /// Single-quoted: used as is.
    Literal(String),
    /// Unquoted or double-quoted: still to be interpolated.
    Template(String),
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_inline_space(&mut self) {
        while self.peek().is_some_and(is_inline_space) {
            self.bump();
        }
    }

    fn skip_to_line_end(&mut self) {
        while self.peek().is_some_and(|c| c != '\n') {
            self.bump();
        }
    }

    /// Skips blank lines and `#` comment lines; returns the line of the next statement.
    fn next_statement(&mut self) -> Option<usize> {
        loop {
            while self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            }
            match self.peek()? {
                '#' => self.skip_to_line_end(),
                _ => return Some(self.line),
            }
        }
    }

    /// Reads `[export ]KEY` up to `=`/`:` (returns true) or the line end (bare key, false).
    fn key(&mut self) -> Result<(String, bool), DotenvError> {
        if let Some(after) = self.rest().strip_prefix("export") {
            if after.starts_with(is_inline_space) {
                self.pos += "export".len();
                self.skip_inline_space();
                if matches!(self.peek(), None | Some('\n')) {
                    return Err(syntax(self.line, "missing variable name after export"));
                }
            }
        }
        let start = self.pos;
        let has_value = loop {
            match self.peek() {
                None | Some('\n') => break false,
                // compose-go also takes the YAML-style `KEY: value`.
                Some('=' | ':') => break true,
                Some(c) if is_inline_space(c) || is_key_char(c) => {
                    self.bump();
                }
                Some(c) => {
                    return Err(syntax(
                        self.line,
                        &format!("unexpected character {c:?} in variable name"),
                    ));
                }
            }
        };
        let key = self.src[start..self.pos].trim_end();
        if key.is_empty() {
            return Err(syntax(self.line, "missing variable name"));
        }
        if key.contains(char::is_whitespace) {
            // Only the first word: on a line missing its `=`, the rest may be the secret value.
            let first = key.split(char::is_whitespace).next().unwrap_or_default();
            return Err(syntax(
                self.line,
                &format!(
                    "variable name {first:?} is followed by whitespace and text (missing `=`?)"
                ),
            ));
        }
        let key = key.to_owned();
        if has_value {
            self.bump();
            self.skip_inline_space();
        }
        Ok((key, has_value))
    }

    /// Reads the value after the separator. `line` is where the statement began.
    fn value(&mut self, line: usize) -> Result<RawValue, DotenvError> {
        match self.peek() {
            Some(quote @ ('\'' | '"')) => {
                self.bump();
                let inner = self
                    .quoted(quote)
                    .ok_or_else(|| syntax(line, "unterminated quoted value"))?;
                self.after_closing_quote()?;
                Ok(if quote == '"' {
                    RawValue::Template(expand_escapes(&inner))
                } else {
                    RawValue::Literal(inner)
                })
            }
            _ => {
                let start = self.pos;
                self.skip_to_line_end();
                let text = &self.src[start..self.pos];
                // Only ` #` starts an inline comment, so `a#b` keeps its `#`.
                let text = text.split(" #").next().unwrap_or_default();
                Ok(RawValue::Template(text.trim_end().to_owned()))
            }
        }
    }

    /// Reads up to the closing `quote`. A backslash before the quote character escapes it
    /// (in both quote styles, as in compose-go); any other backslash pair is kept as is.
    fn quoted(&mut self, quote: char) -> Option<String> {
        let mut out = String::new();
        loop {
            match self.bump()? {
                '\\' => {
                    let next = self.bump()?;
                    if next != quote {
                        out.push('\\');
                    }
                    out.push(next);
                }
                c if c == quote => return Some(out),
                c => out.push(c),
            }
        }
    }

    /// After a closing quote only spaces and a comment may follow. compose-go would read
    /// other text as a further statement (`A="x" B=y` sets B); we reject it as a likely typo.
    fn after_closing_quote(&mut self) -> Result<(), DotenvError> {
        self.skip_inline_space();
        match self.peek() {
            None | Some('\n') => Ok(()),
            Some('#') => {
                self.skip_to_line_end();
                Ok(())
            }
            Some(_) => Err(syntax(self.line, "unexpected text after closing quote")),
        }
    }
}

/// Double-quote escapes, as compose-go expands them before interpolating: `\a \b \f \n
/// \r \t \v \" \\`, `\0` plus three octal digits, and `\$` (kept as `$$` so the following
/// interpolation yields a literal `$`). Any other backslash pair stays as written.
fn expand_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            out.push('\\');
            break;
        };
        match next {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '$' => out.push_str("$$"),
            '0' => {
                // compose-go takes up to three digits and converts only a full, valid
                // octal byte; otherwise the sequence stays literal.
                let mut digits = String::new();
                while digits.len() < 3 {
                    match chars.peek() {
                        Some(d) if d.is_ascii_digit() => {
                            digits.push(*d);
                            chars.next();
                        }
                        _ => break,
                    }
                }
                match u8::from_str_radix(&digits, 8) {
                    Ok(byte) if digits.len() == 3 => out.push(char::from(byte)),
                    _ => {
                        out.push_str("\\0");
                        out.push_str(&digits);
                    }
                }
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/me".to_owned()),
            "SHADOW" => Some("from-env".to_owned()),
            "INHERITED" => Some("inh".to_owned()),
            _ => None,
        }
    }

    fn entries(content: &str) -> Vec<Entry> {
        parse(content, &no_env).unwrap()
    }

    fn kv(key: &str, value: &str) -> Entry {
        (key.to_owned(), Some(value.to_owned()))
    }

    fn bare(key: &str) -> Entry {
        (key.to_owned(), None)
    }

    /// The single value a one-statement file yields.
    fn one(content: &str) -> String {
        let mut all = entries(content);
        assert_eq!(all.len(), 1, "{content:?} gave {all:?}");
        all.remove(0).1.unwrap()
    }

    fn syntax_err(content: &str) -> (usize, String) {
        match parse(content, &no_env).unwrap_err() {
            DotenvError::Syntax { line, reason } => (line, reason),
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    #[test]
    fn simple_pairs_in_order() {
        assert_eq!(
            entries("A=1\nB=2\nC=3"),
            vec![kv("A", "1"), kv("B", "2"), kv("C", "3")]
        );
    }

    #[test]
    fn blank_and_comment_lines_ignored() {
        assert_eq!(
            entries("\n# comment\n   \n\t# indented comment\nA=1\n\n#last"),
            vec![kv("A", "1")]
        );
        assert_eq!(entries(""), vec![]);
    }

    #[test]
    fn export_prefix() {
        assert_eq!(
            entries("export A=1\n  export\tB=2\nexportC=3\nexport_D=4\nexport.E=5"),
            vec![
                kv("A", "1"),
                kv("B", "2"),
                kv("exportC", "3"),
                kv("export_D", "4"),
                kv("export.E", "5")
            ]
        );
    }

    #[test]
    fn export_without_name_is_error() {
        assert_eq!(syntax_err("export   \n").0, 1);
    }

    #[test]
    fn spaces_around_key_and_equals_trimmed() {
        assert_eq!(
            entries("  A = 1\n\tB= 2\nC =3"),
            vec![kv("A", "1"), kv("B", "2"), kv("C", "3")]
        );
    }

    #[test]
    fn empty_value() {
        assert_eq!(
            entries("A=\nB=   \nC="),
            vec![kv("A", ""), kv("B", ""), kv("C", "")]
        );
    }

    #[test]
    fn bare_key_is_none() {
        assert_eq!(
            entries("A\n  B  \nC=1\nD"),
            vec![bare("A"), bare("B"), kv("C", "1"), bare("D")]
        );
    }

    #[test]
    fn bare_key_after_definition_keeps_definition_when_env_lacks_it() {
        // compose-go: bare FOO with FOO unset in the environment leaves FOO=x.
        assert_eq!(entries("FOO=x\nFOO\n"), vec![kv("FOO", "x")]);
        let got = parse("INHERITED=x\nINHERITED\n", &env).unwrap();
        assert_eq!(got, vec![kv("INHERITED", "x"), bare("INHERITED")]);
    }

    #[test]
    fn yaml_style_colon_separator() {
        assert_eq!(one("OPTION_A: 1"), "1");
        assert_eq!(one("OPTION_A: Foo=bar"), "Foo=bar");
        assert_eq!(one("OPTION_A=1:B"), "1:B");
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(
            one("URL=postgres://h:5432/db?sslmode=disable&a=b"),
            "postgres://h:5432/db?sslmode=disable&a=b"
        );
    }

    #[test]
    fn unquoted_trailing_whitespace_trimmed() {
        assert_eq!(one("A=bar   \t"), "bar");
        assert_eq!(one("A=two words here "), "two words here");
    }

    #[test]
    fn unquoted_inline_comment_needs_space() {
        assert_eq!(one("A=bar # this is foo"), "bar");
        assert_eq!(one("A=bar #one #two"), "bar");
        assert_eq!(one("A=a#b"), "a#b");
        assert_eq!(one("A=http://x/#frag"), "http://x/#frag");
        // Only a space starts a comment, as in compose-go; a tab does not.
        assert_eq!(one("A=bar\t#tab"), "bar\t#tab");
    }

    #[test]
    fn unquoted_value_starting_with_hash_is_kept() {
        // compose-go drops the spaces after `=` before looking for ` #`.
        assert_eq!(one("A= #not-a-comment"), "#not-a-comment");
    }

    #[test]
    fn unquoted_backslashes_are_literal() {
        assert_eq!(one(r"A=a\nb\t\\"), r"a\nb\t\\");
    }

    #[test]
    fn unquoted_is_interpolated() {
        assert_eq!(
            entries("A=x\nB=$A-${A}-${NOPE:-d}\nC=$$A"),
            vec![kv("A", "x"), kv("B", "x-x-d"), kv("C", "$A")]
        );
    }

    #[test]
    fn single_quoted_is_verbatim() {
        assert_eq!(
            one(r"A='$HOME_DIR ${X} \n \\ # not comment'"),
            r"$HOME_DIR ${X} \n \\ # not comment"
        );
        let got = parse("A='${HOME_DIR}'", &env).unwrap();
        assert_eq!(got, vec![kv("A", "${HOME_DIR}")]);
    }

    #[test]
    fn single_quoted_escaped_quote() {
        // compose-go lets `\'` stand for a quote inside single quotes, too.
        assert_eq!(one(r"A='it\'s'"), "it's");
    }

    #[test]
    fn single_quoted_spans_lines() {
        assert_eq!(
            entries("A='line one\nline two'\nB=2"),
            vec![kv("A", "line one\nline two"), kv("B", "2")]
        );
    }

    #[test]
    fn quotes_keep_leading_and_trailing_spaces() {
        assert_eq!(one("A='  x  '"), "  x  ");
        assert_eq!(one("A=\"  x  \""), "  x  ");
        assert_eq!(one("A=\"\""), "");
        assert_eq!(one("A=''"), "");
    }

    #[test]
    fn double_quoted_escapes() {
        assert_eq!(
            one(r#"A="n\n r\r t\t q\" b\\ a\a bs\b f\f v\v""#),
            "n\n r\r t\t q\" b\\ a\u{7} bs\u{8} f\u{c} v\u{b}"
        );
    }

    #[test]
    fn double_quoted_unknown_escapes_kept() {
        assert_eq!(one(r#"A="\x41 \u00e9 \  \c \'""#), r"\x41 \u00e9 \  \c \'");
    }

    #[test]
    fn double_quoted_octal_escapes() {
        assert_eq!(one(r#"A="\0123\0351""#), "Sé");
        // Short, non-octal or too-large sequences stay literal; a fourth digit is text.
        assert_eq!(
            one(r#"A="\0 \012 \0189 \0777 \01234""#),
            r"\0 \012 \0189 \0777 S4"
        );
    }

    #[test]
    fn escaped_backslash_before_n_is_not_newline() {
        assert_eq!(one(r#"A="bar\\nbaz""#), r"bar\nbaz");
    }

    #[test]
    fn double_quoted_dollar_escape_blocks_interpolation() {
        let got = parse(r#"A="\$HOME_DIR \${HOME_DIR} $HOME_DIR""#, &env).unwrap();
        assert_eq!(got, vec![kv("A", "$HOME_DIR ${HOME_DIR} /home/me")]);
    }

    #[test]
    fn double_quoted_is_interpolated_and_multiline() {
        let got = parse("A=\"home=${HOME_DIR}\nnext line\"\nB=\"$A!\"", &env).unwrap();
        assert_eq!(
            got,
            vec![
                kv("A", "home=/home/me\nnext line"),
                kv("B", "home=/home/me\nnext line!")
            ]
        );
    }

    #[test]
    fn hash_inside_quotes_is_kept_and_comment_after() {
        assert_eq!(one(r#"A="bar#baz" # comment"#), "bar#baz");
        assert_eq!(one("A='bar#baz' # comment"), "bar#baz");
        assert_eq!(one(r##"A="x"# tight comment"##), "x");
        assert_eq!(one("A=\"x\"   \t"), "x");
    }

    #[test]
    fn text_after_closing_quote_is_error() {
        assert_eq!(syntax_err("\nA=\"x\" B=y").0, 2);
        let (line, reason) = syntax_err("A='x'junk");
        assert_eq!(line, 1);
        assert_eq!(reason, "unexpected text after closing quote");
    }

    #[test]
    fn unterminated_quote_reports_start_line() {
        let err = parse("A=1\nB=\"never\nclosed\nC=3\n", &no_env).unwrap_err();
        assert_eq!(
            err,
            DotenvError::Syntax {
                line: 2,
                reason: "unterminated quoted value".to_owned()
            }
        );
        assert_eq!(err.to_string(), "line 2: unterminated quoted value");
        assert_eq!(syntax_err("A='x").0, 1);
    }

    #[test]
    fn escaped_final_quote_leaves_value_unterminated() {
        assert_eq!(syntax_err(r"A='C:\dir\'").1, "unterminated quoted value");
    }

    #[test]
    fn key_characters() {
        assert_eq!(
            entries("a.b=1\na-b=2\na[1]=3\nárvíz_TÜK=4\nK9=5\n9K=6"),
            vec![
                kv("a.b", "1"),
                kv("a-b", "2"),
                kv("a[1]", "3"),
                kv("árvíz_TÜK", "4"),
                kv("K9", "5"),
                kv("9K", "6")
            ]
        );
    }

    #[test]
    fn invalid_key_character_is_error_with_line() {
        let (line, reason) = syntax_err("A=1\n\nB$C=2");
        assert_eq!(line, 3);
        assert_eq!(reason, "unexpected character '$' in variable name");
        assert_eq!(syntax_err("\"A\"=1").0, 1);
        assert_eq!(syntax_err("%!(EXTRA)=foo").0, 1);
    }

    #[test]
    fn key_with_inner_space_is_error() {
        assert_eq!(
            syntax_err("A B=1").1,
            "variable name \"A\" is followed by whitespace and text (missing `=`?)"
        );
        assert_eq!(syntax_err("A\tB\n").0, 1);
    }

    #[test]
    fn empty_key_is_error() {
        assert_eq!(syntax_err("=value").1, "missing variable name");
    }

    #[test]
    fn crlf_line_endings() {
        assert_eq!(
            entries("A=1\r\nB='q'\r\nC\r\nD=\"x\" # c\r\n"),
            vec![kv("A", "1"), kv("B", "q"), bare("C"), kv("D", "x")]
        );
        let (line, _) = syntax_err("A=1\r\nB C=2\r\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn utf8_bom_skipped() {
        assert_eq!(
            entries("\u{feff}A=1\nB=2"),
            vec![kv("A", "1"), kv("B", "2")]
        );
    }

    #[test]
    fn duplicates_kept_in_order() {
        assert_eq!(entries("A=1\nA=2"), vec![kv("A", "1"), kv("A", "2")]);
    }

    #[test]
    fn lookup_wins_over_earlier_definition() {
        // compose-go's expandVariables asks lookup before the file's own earlier keys,
        // but the key's own value in the file is still what the file says.
        let got = parse("SHADOW=from-file\nREF=$SHADOW\nOWN=$OWNVAL\n", &env).unwrap();
        assert_eq!(
            got,
            vec![
                kv("SHADOW", "from-file"),
                kv("REF", "from-env"),
                kv("OWN", "")
            ]
        );
    }

    #[test]
    fn later_definitions_not_visible_earlier() {
        assert_eq!(entries("A=$B\nB=1"), vec![kv("A", ""), kv("B", "1")]);
    }

    #[test]
    fn self_reference_uses_previous_value() {
        assert_eq!(entries("P=a\nP=$P:b"), vec![kv("P", "a"), kv("P", "a:b")]);
    }

    #[test]
    fn required_interpolation_error_carries_line_and_key() {
        let err = parse("A=1\nDB_URL=\"${DB_PASS:?set DB_PASS}\"", &no_env).unwrap_err();
        assert_eq!(
            err,
            DotenvError::Interpolate {
                line: 2,
                key: "DB_URL".to_owned(),
                source: InterpolateError::Required {
                    var: "DB_PASS".to_owned(),
                    message: "set DB_PASS".to_owned()
                }
            }
        );
        assert_eq!(
            err.to_string(),
            "line 2: cannot interpolate DB_URL: required variable DB_PASS is missing a value: set DB_PASS"
        );
    }

    #[test]
    fn errors_never_show_the_value() {
        let secret = "hunter2-s3cr3t";
        let cases = [
            format!("PASSWORD={secret}${{"),
            format!("PASSWORD=\"{secret}${{oops\""),
            format!("PASSWORD=\"{secret}"),
            format!("PASSWORD='{secret}"),
            format!("PASSWORD=\"{secret}\" trailing"),
        ];
        for content in cases {
            let err = parse(&content, &no_env).unwrap_err();
            let mut shown = err.to_string();
            if let DotenvError::Interpolate { source, .. } = &err {
                shown.push_str(&source.to_string());
                shown.push_str(&format!("{source:?}"));
            }
            shown.push_str(&format!("{err:?}"));
            assert!(!shown.contains(secret), "{content:?} leaked: {shown}");
            assert!(!shown.contains("hunter2"), "{content:?} leaked: {shown}");
        }
    }

    #[test]
    fn invalid_interpolation_is_redacted() {
        let err = parse("TOKEN=abc${", &no_env).unwrap_err();
        assert_eq!(
            err,
            DotenvError::Interpolate {
                line: 1,
                key: "TOKEN".to_owned(),
                source: InterpolateError::InvalidFormat {
                    text: "<redacted>".to_owned()
                }
            }
        );
    }

    #[test]
    fn line_numbers_count_multiline_values() {
        let (line, _) = syntax_err("A='one\ntwo\nthree'\nB C=1");
        assert_eq!(line, 4);
    }

    #[test]
    fn raw_takes_lines_verbatim() {
        assert_eq!(
            parse_raw(
                "A=\"quoted\"\nB='single'\nC=$HOME ${X}\nD=a #not comment\nE=\\n\nF=  spaced  "
            )
            .unwrap(),
            vec![
                kv("A", "\"quoted\""),
                kv("B", "'single'"),
                kv("C", "$HOME ${X}"),
                kv("D", "a #not comment"),
                kv("E", "\\n"),
                kv("F", "  spaced  ")
            ]
        );
    }

    #[test]
    fn raw_skips_blank_and_comment_lines_and_leading_space() {
        assert_eq!(
            parse_raw("\n  # c\n\t\n   A=1\n#B=2").unwrap(),
            vec![kv("A", "1")]
        );
    }

    #[test]
    fn raw_bare_key_empty_value_and_equals_in_value() {
        assert_eq!(
            parse_raw("A\nB=\nC=x=y").unwrap(),
            vec![bare("A"), kv("B", ""), kv("C", "x=y")]
        );
    }

    #[test]
    fn raw_crlf_and_bom() {
        assert_eq!(
            parse_raw("\u{feff}A=1 \r\nB=2\r\n").unwrap(),
            vec![kv("A", "1 "), kv("B", "2")]
        );
    }

    #[test]
    fn raw_key_errors() {
        assert_eq!(
            parse_raw("A=1\n=x").unwrap_err(),
            DotenvError::Syntax {
                line: 2,
                reason: "missing variable name".to_owned()
            }
        );
        assert_eq!(
            parse_raw("KEY =secret-value").unwrap_err(),
            DotenvError::Syntax {
                line: 1,
                reason: "variable name contains whitespace".to_owned()
            }
        );
    }
}
