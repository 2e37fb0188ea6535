//! The command language: a tiny, safe subset of Python assignment statements.
//!
//! Grammar (whitespace is allowed between any two tokens):
//!
//! ```text
//! statement := name "=" value | name "+=" value | "del" name
//! name      := ASCII Python identifier that is not a keyword, <= MAX_KEY_BYTES
//! value     := number | string | constant | list | dict
//! constant  := True | False | None | true | false | null
//! list      := "[" [value ("," value)* [","]] "]"
//! dict      := "{" [string ":" value ("," string ":" value)* [","]] "}"
//! ```
//!
//! Numbers: decimal integers (`42`, `-7`, `1_000`, `0x1f`, `0o17`, `0b101`)
//! become `i64` (out of range is an error); anything with a fraction or an
//! exponent (`1.5`, `.5`, `5.`, `-2e10`) becomes a finite `f64`. Strings take
//! single or double quotes and the escapes `\\ \' \" \/ \n \r \t \b \f \a \v
//! \0-\777 (octal) \xHH \uXXXX \UXXXXXXXX`; a `\uD8xx\uDCxx` surrogate pair is
//! combined as in JSON, lone surrogates and unknown escapes are errors.
//! Nothing is ever evaluated: a name on the right-hand side is an error.

use serde_json::{Map, Number, Value};
use std::fmt;

use crate::limits::{MAX_DEPTH, MAX_KEY_BYTES, MAX_STATEMENT_BYTES};

/// A parsed statement. Names are always valid keys (see [`crate::validate_key`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `name = value`
    Assign { name: String, value: Value },
    /// `name += value`
    AddAssign { name: String, value: Value },
    /// `del name`
    Delete { name: String },
}

impl Statement {
    /// The name the statement reads or writes.
    pub fn name(&self) -> &str {
        match self {
            Statement::Assign { name, .. }
            | Statement::AddAssign { name, .. }
            | Statement::Delete { name } => name,
        }
    }
}

/// Why a statement was rejected, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct ParseError {
    /// 1-based offset, in characters, of the offending character.
    pub column: usize,
    /// Human-readable reason, e.g. `expected a value, found ']'`.
    pub reason: String,
}

impl ParseError {
    fn new(column: usize, reason: impl Into<String>) -> Self {
        ParseError {
            column,
            reason: reason.into(),
        }
    }
}

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Parses one statement. Never evaluates anything and never panics.
pub fn parse_statement(source: &str) -> Result<Statement, ParseError> {
    if source.len() > MAX_STATEMENT_BYTES {
        return Err(ParseError::new(
            1,
            format!(
                "statement is too long ({} bytes, at most {MAX_STATEMENT_BYTES} allowed)",
                source.len()
            ),
        ));
    }
    let mut p = Parser {
        chars: source.chars().collect(),
        pos: 0,
    };
    let stmt = p.statement()?;
    p.skip_ws();
    if let Some(c) = p.peek() {
        return Err(p.err(format!("expected end of statement, found {}", show(c))));
    }
    Ok(stmt)
}

/// Parses a single literal value (the right-hand side of a statement).
pub fn parse_value(source: &str) -> Result<Value, ParseError> {
    if source.len() > MAX_STATEMENT_BYTES {
        return Err(ParseError::new(
            1,
            format!(
                "value is too long ({} bytes, at most {MAX_STATEMENT_BYTES} allowed)",
                source.len()
            ),
        ));
    }
    let mut p = Parser {
        chars: source.chars().collect(),
        pos: 0,
    };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if let Some(c) = p.peek() {
        return Err(p.err(format!("expected end of value, found {}", show(c))));
    }
    Ok(v)
}

fn show(c: char) -> String {
    match c {
        '\'' => "\"'\"".to_string(),
        c if c.is_control() || c.is_whitespace() => format!("'{}'", c.escape_default()),
        c => format!("'{c}'"),
    }
}

fn show_opt(c: Option<char>) -> String {
    c.map_or_else(|| "end of input".to_string(), show)
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn err(&self, reason: impl Into<String>) -> ParseError {
        ParseError::new(self.pos + 1, reason)
    }

    fn err_at(&self, pos: usize, reason: impl Into<String>) -> ParseError {
        ParseError::new(pos + 1, reason)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// Reads an identifier-like word (ASCII); returns it without judging it.
    fn word(&mut self) -> Option<String> {
        if !self.peek().is_some_and(is_ident_start) {
            return None;
        }
        let start = self.pos;
        while self.peek().is_some_and(is_ident_continue) {
            self.pos += 1;
        }
        Some(self.chars[start..self.pos].iter().collect())
    }

    fn statement(&mut self) -> Result<Statement, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let Some(word) = self.word() else {
            return Err(match self.peek() {
                Some(c) if !c.is_ascii() && (c.is_alphabetic() || c == '_') => {
                    self.err("non-ASCII names are not supported")
                }
                c => self.err(format!(
                    "expected a statement (`name = value`, `name += value` or `del name`), found {}",
                    show_opt(c)
                )),
            });
        };
        if word == "del" {
            self.skip_ws();
            let name = self.name("after 'del'")?;
            return Ok(Statement::Delete { name });
        }
        self.pos = start;
        let name = self.name("at the start of a statement")?;
        self.skip_ws();
        let op_pos = self.pos;
        let add = match (self.peek(), self.peek_at(1)) {
            (Some('='), Some('=')) => {
                return Err(
                    self.err("expected '=' or '+=', found '==' (comparisons are not statements)")
                )
            }
            (Some('='), _) => {
                self.pos += 1;
                false
            }
            (Some('+'), Some('=')) => {
                self.pos += 2;
                true
            }
            (c, _) => {
                return Err(self.err_at(
                    op_pos,
                    format!(
                        "expected '=' or '+=' after name '{name}', found {}",
                        show_opt(c)
                    ),
                ))
            }
        };
        self.skip_ws();
        let value = self.value(0)?;
        Ok(if add {
            Statement::AddAssign { name, value }
        } else {
            Statement::Assign { name, value }
        })
    }

    fn name(&mut self, context: &str) -> Result<String, ParseError> {
        let start = self.pos;
        let Some(word) = self.word() else {
            return Err(match self.peek() {
                Some(c) if !c.is_ascii() && (c.is_alphabetic() || c == '_') => {
                    self.err("non-ASCII names are not supported")
                }
                c => self.err(format!("expected a name {context}, found {}", show_opt(c))),
            });
        };
        if let Some(c) = self.peek() {
            if !c.is_ascii() && (c.is_alphanumeric() || c == '_') {
                return Err(self.err("non-ASCII names are not supported"));
            }
        }
        if KEYWORDS.contains(&word.as_str()) {
            let reason = if word == "del" || word == "True" || word == "False" || word == "None" {
                format!("'{word}' is a reserved keyword and cannot be used as a name")
            } else {
                format!(
                    "unsupported statement '{word}': only `name = value`, `name += value` and `del name` are allowed"
                )
            };
            return Err(self.err_at(start, reason));
        }
        if word.len() > MAX_KEY_BYTES {
            return Err(self.err_at(
                start,
                format!(
                    "name is too long ({} bytes, at most {MAX_KEY_BYTES})",
                    word.len()
                ),
            ));
        }
        Ok(word)
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        let start = self.pos;
        match self.peek() {
            Some('[') => self.list(depth + 1),
            Some('{') => self.dict(depth + 1),
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                Ok(Value::String(self.string(q, start)?))
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number(),
            Some(c) if is_ident_start(c) => {
                let word = self.word().unwrap_or_default();
                match word.as_str() {
                    "True" | "true" => Ok(Value::Bool(true)),
                    "False" | "false" => Ok(Value::Bool(false)),
                    "None" | "null" => Ok(Value::Null),
                    _ => Err(self.err_at(
                        start,
                        format!(
                            "expected a value, found name '{word}' (only literal values are allowed)"
                        ),
                    )),
                }
            }
            c => Err(self.err(format!("expected a value, found {}", show_opt(c)))),
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            Err(self.err(format!("nesting is too deep (at most {MAX_DEPTH} levels)")))
        } else {
            Ok(())
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.check_depth(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(']') {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                c => {
                    return Err(self.err(format!(
                        "expected ',' or ']' in list, found {}",
                        show_opt(c)
                    )))
                }
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.check_depth(depth)?;
        self.pos += 1; // '{'
        let mut map = Map::new();
        loop {
            self.skip_ws();
            let key_pos = self.pos;
            let key = match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                Some(q @ ('"' | '\'')) => {
                    self.pos += 1;
                    self.string(q, key_pos)?
                }
                None => return Err(self.err("expected a string key or '}', found end of input")),
                Some(_) => {
                    // Distinguish "a non-string key" from plain garbage.
                    return Err(match self.value(depth) {
                        Ok(_) => self.err_at(key_pos, "dict keys must be strings"),
                        Err(e) => e,
                    });
                }
            };
            self.skip_ws();
            match self.peek() {
                Some(':') => self.pos += 1,
                Some(',' | '}') => {
                    return Err(self.err("expected ':' after dict key (sets are not supported)"))
                }
                c => {
                    return Err(self.err(format!(
                        "expected ':' after dict key, found {}",
                        show_opt(c)
                    )))
                }
            }
            self.skip_ws();
            let value = self.value(depth)?;
            map.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                c => {
                    return Err(self.err(format!(
                        "expected ',' or '}}' in dict, found {}",
                        show_opt(c)
                    )))
                }
            }
        }
    }

    /// Called with `pos` just after the opening quote at `open`.
    fn string(&mut self, quote: char, open: usize) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            let c = match self.bump() {
                None | Some('\n' | '\r') => {
                    return Err(self.err_at(open, "unterminated string literal"));
                }
                Some(c) => c,
            };
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let esc_pos = self.pos - 1;
            let Some(e) = self.bump() else {
                return Err(self.err_at(open, "unterminated string literal"));
            };
            match e {
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                '/' => out.push('/'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'a' => out.push('\u{7}'),
                'v' => out.push('\u{b}'),
                '0'..='7' => {
                    let mut code = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                code = code * 8 + d;
                                self.pos += 1;
                            }
                            None => break,
                        }
                    }
                    // At most 0o777 = 511, always a valid scalar value.
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                'x' => {
                    let code = self.hex_digits(2, esc_pos)?;
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                'u' => {
                    let code = self.hex_digits(4, esc_pos)?;
                    if (0xD800..0xDC00).contains(&code) {
                        // High surrogate: must be followed by \uDC00-\uDFFF.
                        if self.peek() == Some('\\') && self.peek_at(1) == Some('u') {
                            let low_pos = self.pos;
                            self.pos += 2;
                            let low = self.hex_digits(4, low_pos)?;
                            if (0xDC00..0xE000).contains(&low) {
                                let c = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                                out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                                continue;
                            }
                        }
                        return Err(self.err_at(esc_pos, "unpaired surrogate in \\u escape"));
                    }
                    match char::from_u32(code) {
                        Some(c) => out.push(c),
                        None => {
                            return Err(self.err_at(esc_pos, "unpaired surrogate in \\u escape"))
                        }
                    }
                }
                'U' => {
                    let code = self.hex_digits(8, esc_pos)?;
                    match char::from_u32(code) {
                        Some(c) => out.push(c),
                        None => {
                            return Err(self.err_at(
                                esc_pos,
                                format!("invalid code point \\U{code:08x} in escape"),
                            ))
                        }
                    }
                }
                '\n' | '\r' => {
                    return Err(self.err_at(esc_pos, "line continuations are not supported"));
                }
                other => {
                    return Err(self.err_at(
                        esc_pos,
                        format!("unknown escape sequence '\\{}'", other.escape_default()),
                    ))
                }
            }
        }
    }

    fn hex_digits(&mut self, n: usize, esc_pos: usize) -> Result<u32, ParseError> {
        let mut code: u32 = 0;
        for _ in 0..n {
            match self.peek().and_then(|d| d.to_digit(16)) {
                Some(d) => {
                    code = code.wrapping_mul(16).wrapping_add(d);
                    self.pos += 1;
                }
                None => {
                    return Err(self.err_at(
                        esc_pos,
                        format!("truncated escape: expected {n} hex digits"),
                    ))
                }
            }
        }
        Ok(code)
    }

    /// Reads a run of digits in `radix`, allowing single underscores between
    /// digits (Python style). Returns the digits without underscores.
    fn digits(&mut self, radix: u32, out: &mut String) -> Result<usize, ParseError> {
        let mut n = 0;
        loop {
            match self.peek() {
                Some(c) if c.is_digit(radix) => {
                    out.push(c);
                    n += 1;
                    self.pos += 1;
                }
                Some('_') if n > 0 && self.peek_at(1).is_some_and(|d| d.is_digit(radix)) => {
                    self.pos += 1;
                }
                Some('_') => return Err(self.err("invalid '_' in number literal")),
                _ => return Ok(n),
            }
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let negative = match self.peek() {
            Some('-') => {
                self.pos += 1;
                true
            }
            Some('+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let body = self.pos;
        // Prefixed integers: 0x.., 0o.., 0b..
        if self.peek() == Some('0') {
            let radix = match self.peek_at(1) {
                Some('x' | 'X') => Some(16),
                Some('o' | 'O') => Some(8),
                Some('b' | 'B') => Some(2),
                _ => None,
            };
            if let Some(radix) = radix {
                self.pos += 2;
                if self.peek() == Some('_') {
                    self.pos += 1; // Python allows 0x_ff
                }
                let mut ds = String::new();
                if self.digits(radix, &mut ds)? == 0 {
                    return Err(self.err(format!("expected base-{radix} digits")));
                }
                self.end_of_number(start)?;
                return self.int_value(&ds, radix, negative, start);
            }
        }
        let mut int_part = String::new();
        let n_int = self.digits(10, &mut int_part)?;
        let mut is_float = false;
        let mut frac_part = String::new();
        if self.peek() == Some('.') {
            self.pos += 1;
            is_float = true;
            let n_frac = self.digits(10, &mut frac_part)?;
            if n_int == 0 && n_frac == 0 {
                return Err(self.err_at(
                    body,
                    format!(
                        "expected a value, found {}",
                        show_opt(self.chars.get(body).copied())
                    ),
                ));
            }
        } else if n_int == 0 {
            let found = self.peek();
            return Err(self.err(format!("expected a number, found {}", show_opt(found))));
        }
        let mut exp = String::new();
        if matches!(self.peek(), Some('e' | 'E')) {
            self.pos += 1;
            is_float = true;
            if let Some(s @ ('+' | '-')) = self.peek() {
                exp.push(s);
                self.pos += 1;
            }
            let mut ds = String::new();
            if self.digits(10, &mut ds)? == 0 {
                return Err(self.err("expected digits in number exponent"));
            }
            exp.push_str(&ds);
        }
        self.end_of_number(start)?;
        if !is_float {
            if int_part.len() > 1
                && int_part.starts_with('0')
                && int_part.bytes().any(|b| b != b'0')
            {
                return Err(self.err_at(
                    body,
                    "leading zeros in decimal integer literals are not permitted",
                ));
            }
            return self.int_value(&int_part, 10, negative, start);
        }
        let text = format!(
            "{}{}.{}e{}",
            if negative { "-" } else { "" },
            if int_part.is_empty() { "0" } else { &int_part },
            if frac_part.is_empty() {
                "0"
            } else {
                &frac_part
            },
            if exp.is_empty() { "0" } else { &exp },
        );
        let f: f64 = text
            .parse()
            .map_err(|_| self.err_at(start, "invalid float literal"))?;
        match Number::from_f64(f) {
            Some(n) if f.is_finite() => Ok(Value::Number(n)),
            _ => Err(self.err_at(start, "float literal is out of range")),
        }
    }

    fn end_of_number(&self, start: usize) -> Result<(), ParseError> {
        match self.peek() {
            Some(c) if is_ident_continue(c) || c == '.' => Err(self.err_at(
                start,
                format!("invalid number literal (unexpected {})", show(c)),
            )),
            _ => Ok(()),
        }
    }

    fn int_value(
        &self,
        digits: &str,
        radix: u32,
        negative: bool,
        start: usize,
    ) -> Result<Value, ParseError> {
        let out_of_range = || {
            self.err_at(
                start,
                "integer literal is out of range (must fit in a signed 64-bit integer)",
            )
        };
        let magnitude = u64::from_str_radix(digits, radix).map_err(|_| out_of_range())?;
        let v = if negative {
            0i64.checked_sub_unsigned(magnitude)
                .ok_or_else(out_of_range)?
        } else {
            i64::try_from(magnitude).map_err(|_| out_of_range())?
        };
        Ok(Value::from(v))
    }
}

impl fmt::Display for Statement {
    /// A canonical rendering (JSON values), not necessarily the original text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Assign { name, value } => write!(f, "{name} = {value}"),
            Statement::AddAssign { name, value } => write!(f, "{name} += {value}"),
            Statement::Delete { name } => write!(f, "del {name}"),
        }
    }
}
