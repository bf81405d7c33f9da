//! Go `text/template` subset for ClusterSPIFFEID templates (`spiffeIDTemplate`, `dnsNameTemplates`,
//! `workloadSelectorTemplates`, `parentIDTemplate`). Pure and I/O-free.
//!
//! # What spire-controller-manager does (the behaviour copied here)
//! spire-controller-manager parses every template with `template.New(name).Parse(src)`: no `Funcs`, no
//! `Option(...)`, so only Go's builtins exist and `missingkey` is the default (`missingkey=default`,
//! a.k.a. `invalid`). It executes against
//! `templateData{TrustDomain, ClusterName, ClusterDomain string; PodMeta *metav1.ObjectMeta;
//! PodSpec *corev1.PodSpec; NodeMeta *metav1.ObjectMeta; NodeSpec *corev1.NodeSpec}`; while the parent ID is
//! rendered `PodMeta`/`PodSpec` are still nil pointers. Consequences reproduced here:
//! - a missing map key read with field syntax (`.PodMeta.Labels.nope`), also on a nil map, prints
//!   `<no value>`, and further fields on it stay `<no value>`; `index` on a missing key gives `""`;
//! - a name that is not a Go field of the struct is an execution error (`.PodMeta.Nope`, `.PodMeta.labels`,
//!   `.PodMeta.Uid`, `.PodSpec.ServiceAccount` whose Go name is `DeprecatedServiceAccount`);
//! - a Go field absent from the JSON (omitempty) has its Go zero value (`""`, `0`, `false`, `map[]`, `[]`,
//!   nil pointers print `<nil>`, nil Kubernetes struct pointers print `nil`);
//! - a field of a nil pointer is an error (`.PodMeta.Name` while rendering the parent ID).
//!
//! # Data model
//! `render` takes the template data as JSON (Kubernetes camelCase). Field names are resolved against Go
//! field tables for the root, `ObjectMeta`, `PodSpec` and `NodeSpec` (exact Go name, mapped to its JSON key),
//! so those levels behave exactly like Go. Deeper objects (containers, owner references, ...) have no table:
//! there a field name must be exported (start with an upper-case letter) and is matched to the JSON key
//! exactly first, then case-insensitively; objects under a key named `labels`, `annotations`,
//! `nodeSelector` or `matchLabels` are string maps (exact keys), every other object is a struct. Because a
//! JSON object cannot tell an omitted zero-valued Go field from a field that does not exist, reading a key
//! that is absent from such a deeper object is an execution error (Go would print the zero value).
//!
//! # Supported subset
//! Text; `{{ }}` actions with `{{-`/`-}}` trimming; comments `{{/* */}}`; field chains; `.`, `$`, `$.X`;
//! string (interpreted and raw), number and bool literals; `nil` as an argument; pipelines with `|`;
//! parenthesised pipelines and `(pipe).Field`; builtins `index`, `printf` (verbs `%s %d %v %q %%`, no
//! flags/width), `print`, `len`, `eq`, `ne`, `lt`, `gt`, `not`, `and`, `or`; `if`/`else if`/`else`/`end`;
//! `with`/`else with`/`else`/`end`. `range`, `define`, `template`, `block`, `break`, `continue`, variable
//! declaration/assignment, character constants and Go's other builtins are parse errors saying they are
//! unsupported. Values Go would print through a `String()` method or as an address (whole structs,
//! timestamps, non-nil pointers given to `print`/`printf`) are execution errors instead of guesses.
//!
//! Limits: source size, nesting depth and output size are capped, so hostile templates cannot exhaust the
//! stack or memory; no input makes this module panic.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value as Json};

/// Largest template source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// Deepest nesting of `if`/`with`/`else if` blocks and parentheses.
pub const MAX_DEPTH: usize = 64;
/// Largest rendered output, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// The fields of spire-controller-manager's template data, in declaration order.
const ROOT_NAMES: [&str; 7] =
    ["TrustDomain", "ClusterName", "ClusterDomain", "PodMeta", "PodSpec", "NodeMeta", "NodeSpec"];

/// Why a template could not be parsed or rendered. Positions are 1-based line and column (in bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template is {len} bytes; the limit is {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("template parse error at {line}:{col}: {reason}")]
    Parse { line: usize, col: usize, reason: String },
    #[error("template parse error at {line}:{col}: {what} is not supported by Sigil's Go template subset")]
    Unsupported { line: usize, col: usize, what: String },
    #[error("template execution error at {line}:{col}: {reason}")]
    Exec { line: usize, col: usize, reason: String },
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
    line_starts: Vec<usize>,
    roots: BTreeSet<String>,
}

// ---------------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    LeftDelim,
    RightDelim,
    Space,
    /// `.Name` (one link of a field chain).
    Field(String),
    /// A lone `.`.
    Dot,
    /// `$` or `$name`.
    Variable(String),
    Ident(String),
    Keyword(Kw),
    Bool(bool),
    Nil,
    Str(String),
    Number(String),
    Pipe,
    LParen,
    RParen,
    /// `:=` or `=`.
    Assign,
    /// Any other printable ASCII character inside an action.
    Char(char),
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    If,
    Else,
    End,
    With,
    Range,
    Define,
    Template,
    Block,
    Break,
    Continue,
}

impl Kw {
    fn from_word(w: &str) -> Option<Kw> {
        Some(match w {
            "if" => Kw::If,
            "else" => Kw::Else,
            "end" => Kw::End,
            "with" => Kw::With,
            "range" => Kw::Range,
            "define" => Kw::Define,
            "template" => Kw::Template,
            "block" => Kw::Block,
            "break" => Kw::Break,
            "continue" => Kw::Continue,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Kw::If => "if",
            Kw::Else => "else",
            Kw::End => "end",
            Kw::With => "with",
            Kw::Range => "range",
            Kw::Define => "define",
            Kw::Template => "template",
            Kw::Block => "block",
            Kw::Break => "break",
            Kw::Continue => "continue",
        }
    }
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Text(t) => format!("text {t:?}"),
            Tok::LeftDelim => "\"{{\"".to_string(),
            Tok::RightDelim => "\"}}\"".to_string(),
            Tok::Space => "space".to_string(),
            Tok::Field(f) => format!("\".{f}\""),
            Tok::Dot => "\".\"".to_string(),
            Tok::Variable(v) => format!("{v:?}"),
            Tok::Ident(i) => format!("{i:?}"),
            Tok::Keyword(k) => format!("<{}>", k.name()),
            Tok::Bool(b) => format!("\"{b}\""),
            Tok::Nil => "\"nil\"".to_string(),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Number(n) => format!("{n:?}"),
            Tok::Pipe => "\"|\"".to_string(),
            Tok::LParen => "\"(\"".to_string(),
            Tok::RParen => "\")\"".to_string(),
            Tok::Assign => "assignment".to_string(),
            Tok::Char(c) => format!("{:?}", c.to_string()),
            Tok::Eof => "end of template".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
}

/// Lexer-level failure: byte position and reason.
#[derive(Debug)]
struct LexError {
    pos: usize,
    reason: String,
    unsupported: bool,
}

fn is_space_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer<'s> {
    src: &'s str,
    bytes: &'s [u8],
    pos: usize,
    out: Vec<Token>,
}

impl<'s> Lexer<'s> {
    fn new(src: &'s str) -> Self {
        Lexer { src, bytes: src.as_bytes(), pos: 0, out: Vec::new() }
    }

    fn byte_at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }

    fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn err(&self, pos: usize, reason: impl Into<String>) -> LexError {
        LexError { pos, reason: reason.into(), unsupported: false }
    }

    fn push(&mut self, tok: Tok, pos: usize) {
        self.out.push(Token { tok, pos });
    }

    /// `" -}}"` (with trim) or `"}}"` at the current position.
    fn at_right_delim(&self) -> Option<(usize, bool)> {
        let r = self.rest();
        let b = r.as_bytes();
        if b.len() >= 4 && is_space_byte(b[0]) && b[1] == b'-' && &b[2..4] == b"}}" {
            return Some((4, true));
        }
        if r.starts_with("}}") {
            return Some((2, false));
        }
        None
    }

    fn run(mut self) -> Result<Vec<Token>, LexError> {
        loop {
            // Text up to the next "{{".
            let rest = self.rest();
            let Some(off) = rest.find("{{") else {
                if !rest.is_empty() {
                    let pos = self.pos;
                    self.push(Tok::Text(rest.to_string()), pos);
                }
                let end = self.src.len();
                self.push(Tok::Eof, end);
                return Ok(self.out);
            };
            let delim = self.pos + off;
            let after = delim + 2;
            let trim_left = self.byte_at(after) == Some(b'-') && self.byte_at(after + 1).is_some_and(is_space_byte);
            let mut text = rest.get(..off).unwrap_or("");
            if trim_left {
                text = text.trim_end_matches([' ', '\t', '\r', '\n']);
            }
            if !text.is_empty() {
                let pos = self.pos;
                self.push(Tok::Text(text.to_string()), pos);
            }
            let inner = if trim_left { after + 2 } else { after };
            self.pos = inner;
            if self.rest().starts_with("/*") {
                self.lex_comment(delim)?;
            } else {
                self.push(Tok::LeftDelim, delim);
                self.lex_action()?;
            }
        }
    }

    fn skip_trimmed_space(&mut self) {
        while self.byte_at(self.pos).is_some_and(is_space_byte) {
            self.pos += 1;
        }
    }

    fn lex_comment(&mut self, delim: usize) -> Result<(), LexError> {
        let body = self.pos + 2;
        let Some(end) = self.src.get(body..).and_then(|r| r.find("*/")) else {
            return Err(self.err(delim, "unclosed comment"));
        };
        self.pos = body + end + 2;
        match self.at_right_delim() {
            Some((len, trim)) => {
                self.pos += len;
                if trim {
                    self.skip_trimmed_space();
                }
                Ok(())
            }
            None => Err(self.err(delim, "comment ends before closing delimiter")),
        }
    }

    fn lex_action(&mut self) -> Result<(), LexError> {
        let start = self.pos;
        let mut paren_depth: usize = 0;
        loop {
            if let Some((len, trim)) = self.at_right_delim() {
                if paren_depth > 0 {
                    return Err(self.err(self.pos, "unclosed left paren"));
                }
                let pos = self.pos;
                self.push(Tok::RightDelim, pos);
                self.pos += len;
                if trim {
                    self.skip_trimmed_space();
                }
                return Ok(());
            }
            let pos = self.pos;
            let Some(c) = self.peek_char() else {
                return Err(self.err(start, "unclosed action"));
            };
            match c {
                ' ' | '\t' | '\r' | '\n' => {
                    while self.byte_at(self.pos).is_some_and(is_space_byte)
                        && self.at_right_delim().is_none_or(|(_, trim)| !trim)
                    {
                        self.pos += 1;
                    }
                    self.push(Tok::Space, pos);
                }
                '=' => {
                    self.pos += 1;
                    self.push(Tok::Assign, pos);
                }
                ':' => {
                    if self.byte_at(pos + 1) != Some(b'=') {
                        return Err(self.err(pos, "expected :="));
                    }
                    self.pos += 2;
                    self.push(Tok::Assign, pos);
                }
                '|' => {
                    self.pos += 1;
                    self.push(Tok::Pipe, pos);
                }
                '"' => self.lex_quote()?,
                '`' => self.lex_raw_quote()?,
                '$' => {
                    self.pos += 1;
                    let name = self.scan_alnum();
                    self.check_terminator()?;
                    self.push(Tok::Variable(format!("${name}")), pos);
                }
                '\'' => {
                    return Err(LexError { pos, reason: "character constants".to_string(), unsupported: true });
                }
                '.' if !self.byte_at(pos + 1).is_some_and(|b| b.is_ascii_digit()) => {
                    self.pos += 1;
                    let name = self.scan_alnum();
                    self.check_terminator()?;
                    if name.is_empty() {
                        self.push(Tok::Dot, pos);
                    } else {
                        self.push(Tok::Field(name), pos);
                    }
                }
                '.' | '+' | '-' | '0'..='9' => self.lex_number()?,
                '(' => {
                    self.pos += 1;
                    paren_depth += 1;
                    self.push(Tok::LParen, pos);
                }
                ')' => {
                    self.pos += 1;
                    if paren_depth == 0 {
                        return Err(self.err(pos, "unexpected right paren"));
                    }
                    paren_depth -= 1;
                    self.push(Tok::RParen, pos);
                }
                c if is_alnum(c) => {
                    let word = self.scan_alnum();
                    self.check_terminator()?;
                    let tok = match word.as_str() {
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        "nil" => Tok::Nil,
                        w => match Kw::from_word(w) {
                            Some(k) => Tok::Keyword(k),
                            None => Tok::Ident(word),
                        },
                    };
                    self.push(tok, pos);
                }
                c if c.is_ascii() && !c.is_ascii_control() => {
                    self.pos += 1;
                    self.push(Tok::Char(c), pos);
                }
                c => {
                    return Err(self.err(pos, format!("unrecognized character in action: {c:?}")));
                }
            }
        }
    }

    fn scan_alnum(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek_char() {
            if !is_alnum(c) {
                break;
            }
            s.push(c);
            self.pos += c.len_utf8();
        }
        s
    }

    /// Go requires a word to be followed by a space, a delimiter or one of `.,|:()`.
    fn check_terminator(&self) -> Result<(), LexError> {
        match self.peek_char() {
            None => Ok(()),
            Some(' ' | '\t' | '\r' | '\n' | '.' | ',' | '|' | ':' | ')' | '(' | '}') => Ok(()),
            Some(c) => Err(self.err(self.pos, format!("bad character {c:?}"))),
        }
    }

    fn lex_number(&mut self) -> Result<(), LexError> {
        let start = self.pos;
        let mut i = start;
        if matches!(self.byte_at(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let mut digits: &[u8] = b"0123456789_";
        let mut exp: &[u8] = b"eE";
        if self.byte_at(i) == Some(b'0') {
            match self.byte_at(i + 1) {
                Some(b'x' | b'X') => {
                    i += 2;
                    digits = b"0123456789abcdefABCDEF_";
                    exp = b"pP";
                }
                Some(b'o' | b'O') => {
                    i += 2;
                    digits = b"01234567_";
                }
                Some(b'b' | b'B') => {
                    i += 2;
                    digits = b"01_";
                }
                _ => {}
            }
        }
        let scan = |mut i: usize, set: &[u8]| {
            while self.byte_at(i).is_some_and(|b| set.contains(&b)) {
                i += 1;
            }
            i
        };
        i = scan(i, digits);
        if self.byte_at(i) == Some(b'.') {
            i = scan(i + 1, digits);
        }
        if self.byte_at(i).is_some_and(|b| exp.contains(&b)) {
            i += 1;
            if matches!(self.byte_at(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = scan(i, b"0123456789_");
        }
        if self.byte_at(i) == Some(b'i') {
            i += 1;
        }
        let next = self.src.get(i..).and_then(|r| r.chars().next());
        if let Some(c) = next.filter(|c| is_alnum(*c)) {
            let bad = self.src.get(start..i + c.len_utf8()).unwrap_or("");
            return Err(self.err(start, format!("bad number syntax: {bad:?}")));
        }
        let text = self.src.get(start..i).unwrap_or("").to_string();
        self.pos = i;
        self.push(Tok::Number(text), start);
        Ok(())
    }

    fn lex_quote(&mut self) -> Result<(), LexError> {
        let start = self.pos;
        let mut i = start + 1;
        loop {
            match self.byte_at(i) {
                None | Some(b'\n') => return Err(self.err(start, "unterminated quoted string")),
                Some(b'\\') => {
                    i += 1;
                    if matches!(self.byte_at(i), None | Some(b'\n')) {
                        return Err(self.err(start, "unterminated quoted string"));
                    }
                    i += 1;
                }
                Some(b'"') => break,
                Some(_) => i += 1,
            }
        }
        let body = self.src.get(start + 1..i).unwrap_or("");
        let value = unquote(body).map_err(|reason| self.err(start, reason))?;
        self.pos = i + 1;
        self.push(Tok::Str(value), start);
        Ok(())
    }

    fn lex_raw_quote(&mut self) -> Result<(), LexError> {
        let start = self.pos;
        let Some(end) = self.src.get(start + 1..).and_then(|r| r.find('`')) else {
            return Err(self.err(start, "unterminated raw quoted string"));
        };
        let body = self.src.get(start + 1..start + 1 + end).unwrap_or("");
        self.pos = start + 2 + end;
        self.push(Tok::Str(body.replace('\r', "")), start);
        Ok(())
    }
}

/// Go's `strconv.Unquote` for the body of a double-quoted string.
fn unquote(body: &str) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    let bad = || "invalid syntax in quoted string".to_string();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next().ok_or_else(bad)?;
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Result<u32, String> {
            let mut v: u32 = 0;
            for _ in 0..n {
                let d = chars.next().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
                v = v * 16 + d;
            }
            Ok(v)
        };
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            'x' => {
                let v = hex(&mut chars, 2)?;
                // Go keeps the raw byte; only ASCII bytes form valid UTF-8 on their own.
                let c = char::from_u32(v)
                    .filter(|c| c.is_ascii())
                    .ok_or_else(|| "\\x escapes above 0x7f (raw bytes) are not supported".to_string())?;
                out.push(c);
            }
            'u' => out.push(char::from_u32(hex(&mut chars, 4)?).ok_or_else(bad)?),
            'U' => out.push(char::from_u32(hex(&mut chars, 8)?).ok_or_else(bad)?),
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let d = chars.next().and_then(|c| c.to_digit(8)).ok_or_else(bad)?;
                    v = v * 8 + d;
                }
                let c = char::from_u32(v)
                    .filter(|c| c.is_ascii())
                    .ok_or_else(|| "octal escapes above 0177 (raw bytes) are not supported".to_string())?;
                out.push(c);
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Parse tree and parser
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If { pipe: Pipeline, then: Vec<Node>, els: Option<Vec<Node>> },
    With { pipe: Pipeline, then: Vec<Node>, els: Option<Vec<Node>> },
}

#[derive(Debug, Clone)]
struct Pipeline {
    cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
struct Command {
    pos: usize,
    args: Vec<Operand>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    And,
    Or,
    Not,
    Len,
    Index,
    Print,
    Printf,
    Eq,
    Ne,
    Lt,
    Gt,
}

impl Builtin {
    fn lookup(name: &str) -> Option<Builtin> {
        Some(match name {
            "and" => Builtin::And,
            "or" => Builtin::Or,
            "not" => Builtin::Not,
            "len" => Builtin::Len,
            "index" => Builtin::Index,
            "print" => Builtin::Print,
            "printf" => Builtin::Printf,
            "eq" => Builtin::Eq,
            "ne" => Builtin::Ne,
            "lt" => Builtin::Lt,
            "gt" => Builtin::Gt,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Builtin::And => "and",
            Builtin::Or => "or",
            Builtin::Not => "not",
            Builtin::Len => "len",
            Builtin::Index => "index",
            Builtin::Print => "print",
            Builtin::Printf => "printf",
            Builtin::Eq => "eq",
            Builtin::Ne => "ne",
            Builtin::Lt => "lt",
            Builtin::Gt => "gt",
        }
    }
}

/// Go's other builtins: they exist in Go, so using one is "unsupported" rather than "not defined".
const GO_ONLY_FUNCS: [&str; 8] = ["call", "html", "js", "le", "ge", "println", "slice", "urlquery"];

#[derive(Debug, Clone)]
enum OpKind {
    /// `.A.B` relative to dot.
    Field(Vec<String>),
    Dot,
    /// `$` or `$.A.B`.
    Root(Vec<String>),
    Func(Builtin),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    /// `(pipeline)` optionally followed by fields.
    Sub(Box<Pipeline>, Vec<String>),
}

#[derive(Debug, Clone)]
struct Operand {
    pos: usize,
    kind: OpKind,
}

#[derive(Debug)]
struct ParseFail {
    pos: usize,
    reason: String,
    unsupported: bool,
}

fn fail(pos: usize, reason: impl Into<String>) -> ParseFail {
    ParseFail { pos, reason: reason.into(), unsupported: false }
}

fn unsupported(pos: usize, what: impl Into<String>) -> ParseFail {
    ParseFail { pos, reason: what.into(), unsupported: true }
}

/// What ended an item list.
enum ListEnd {
    End,
    Else(usize),
    ElseIf(usize),
    ElseWith(usize),
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        static EOF: Token = Token { tok: Tok::Eof, pos: 0 };
        self.toks.get(self.i).or(self.toks.last()).unwrap_or(&EOF)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn skip_space(&mut self) {
        while self.peek().tok == Tok::Space {
            self.i += 1;
        }
    }

    fn peek_non_space(&mut self) -> &Token {
        self.skip_space();
        self.peek()
    }

    fn next_non_space(&mut self) -> Token {
        self.skip_space();
        self.next()
    }

    fn enter(&mut self, pos: usize) -> Result<(), ParseFail> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(fail(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn top(&mut self) -> Result<Vec<Node>, ParseFail> {
        let mut nodes = Vec::new();
        loop {
            if self.peek().tok == Tok::Eof {
                return Ok(nodes);
            }
            match self.text_or_action()? {
                Item::Node(n) => nodes.push(n),
                Item::End(pos) => return Err(fail(pos, "unexpected {{end}}")),
                Item::Else(pos) | Item::ElseIf(pos) | Item::ElseWith(pos) => {
                    return Err(fail(pos, "unexpected {{else}}"));
                }
            }
        }
    }

    /// Nodes up to `{{end}}` or `{{else}}`.
    fn item_list(&mut self) -> Result<(Vec<Node>, ListEnd), ParseFail> {
        let mut nodes = Vec::new();
        loop {
            let t = self.peek();
            if t.tok == Tok::Eof {
                return Err(fail(t.pos, "unexpected EOF"));
            }
            match self.text_or_action()? {
                Item::Node(n) => nodes.push(n),
                Item::End(_) => return Ok((nodes, ListEnd::End)),
                Item::Else(p) => return Ok((nodes, ListEnd::Else(p))),
                Item::ElseIf(p) => return Ok((nodes, ListEnd::ElseIf(p))),
                Item::ElseWith(p) => return Ok((nodes, ListEnd::ElseWith(p))),
            }
        }
    }

    fn text_or_action(&mut self) -> Result<Item, ParseFail> {
        let t = self.next();
        match t.tok {
            Tok::Text(s) => Ok(Item::Node(Node::Text(s))),
            Tok::LeftDelim => self.action(),
            other => Err(fail(t.pos, format!("unexpected {} in input", other.describe()))),
        }
    }

    fn action(&mut self) -> Result<Item, ParseFail> {
        let t = self.peek_non_space().clone();
        if let Tok::Keyword(k) = t.tok {
            self.i += 1;
            return match k {
                Kw::If => Ok(Item::Node(self.control(true, t.pos)?)),
                Kw::With => Ok(Item::Node(self.control(false, t.pos)?)),
                Kw::End => {
                    let r = self.next_non_space();
                    if r.tok != Tok::RightDelim {
                        return Err(fail(r.pos, format!("unexpected {} in end", r.tok.describe())));
                    }
                    Ok(Item::End(t.pos))
                }
                Kw::Else => {
                    let r = self.next_non_space();
                    match r.tok {
                        Tok::RightDelim => Ok(Item::Else(t.pos)),
                        Tok::Keyword(Kw::If) => Ok(Item::ElseIf(r.pos)),
                        Tok::Keyword(Kw::With) => Ok(Item::ElseWith(r.pos)),
                        other => Err(fail(r.pos, format!("unexpected {} in else", other.describe()))),
                    }
                }
                other => Err(unsupported(t.pos, format!("{{{{{}}}}}", other.name()))),
            };
        }
        let pipe = self.pipeline("command", &Tok::RightDelim, t.pos)?;
        Ok(Item::Node(Node::Action(pipe)))
    }

    /// After `if`/`with` (or `else if`/`else with`): pipeline, list, optional else, end.
    fn control(&mut self, is_if: bool, pos: usize) -> Result<Node, ParseFail> {
        self.enter(pos)?;
        let context = if is_if { "if" } else { "with" };
        let pipe = self.pipeline(context, &Tok::RightDelim, pos)?;
        let (then, end) = self.item_list()?;
        let els = match end {
            ListEnd::End => None,
            ListEnd::ElseIf(p) if is_if => Some(vec![self.control(true, p)?]),
            ListEnd::ElseWith(p) if !is_if => Some(vec![self.control(false, p)?]),
            ListEnd::ElseIf(p) => return Err(fail(p, "unexpected <if> in input")),
            ListEnd::ElseWith(p) => return Err(fail(p, "unexpected <with> in input")),
            ListEnd::Else(_) => {
                let (els, end) = self.item_list()?;
                match end {
                    ListEnd::End => Some(els),
                    ListEnd::Else(p) | ListEnd::ElseIf(p) | ListEnd::ElseWith(p) => {
                        return Err(fail(p, "expected end; found {{else}}"));
                    }
                }
            }
        };
        self.depth -= 1;
        Ok(if is_if { Node::If { pipe, then, els } } else { Node::With { pipe, then, els } })
    }

    fn pipeline(&mut self, context: &str, end: &Tok, pos: usize) -> Result<Pipeline, ParseFail> {
        let mut cmds = Vec::new();
        // Variable declarations: `$x :=` / `$x =`.
        if let Tok::Variable(_) = self.peek_non_space().tok {
            let save = self.i;
            self.i += 1;
            let t = self.peek_non_space().clone();
            if matches!(t.tok, Tok::Assign | Tok::Char(',')) {
                return Err(unsupported(t.pos, "variable declaration and assignment"));
            }
            self.i = save;
        }
        loop {
            let t = self.peek_non_space().clone();
            match &t.tok {
                x if x == end => {
                    self.i += 1;
                    if cmds.is_empty() {
                        return Err(fail(pos, format!("missing value for {context}")));
                    }
                    return Ok(Pipeline { cmds });
                }
                Tok::Bool(_)
                | Tok::Dot
                | Tok::Field(_)
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Nil
                | Tok::Str(_)
                | Tok::Variable(_)
                | Tok::LParen => {
                    let cmd = self.command()?;
                    if let Some(first) = cmd.args.first().filter(|_| !cmds.is_empty())
                        && matches!(
                            first.kind,
                            OpKind::Bool(_)
                                | OpKind::Dot
                                | OpKind::Nil
                                | OpKind::Int(_)
                                | OpKind::Float(_)
                                | OpKind::Str(_)
                        )
                    {
                        return Err(fail(
                            first.pos,
                            format!("non executable command in pipeline stage {}", cmds.len() + 1),
                        ));
                    }
                    cmds.push(cmd);
                }
                other => {
                    return Err(fail(t.pos, format!("unexpected {} in {context}", other.describe())));
                }
            }
        }
    }

    fn command(&mut self) -> Result<Command, ParseFail> {
        let pos = self.peek_non_space().pos;
        let mut args = Vec::new();
        loop {
            self.skip_space();
            if let Some(op) = self.operand()? {
                args.push(op);
            }
            let t = self.peek().clone();
            match t.tok {
                Tok::Space => continue,
                Tok::RightDelim | Tok::RParen => break,
                Tok::Pipe => {
                    self.i += 1;
                    break;
                }
                other => return Err(fail(t.pos, format!("unexpected {} in operand", other.describe()))),
            }
        }
        if args.is_empty() {
            return Err(fail(pos, "empty command"));
        }
        Ok(Command { pos, args })
    }

    fn operand(&mut self) -> Result<Option<Operand>, ParseFail> {
        let Some(term) = self.term()? else {
            return Ok(None);
        };
        let mut fields = Vec::new();
        while let Tok::Field(f) = &self.peek().tok {
            fields.push(f.clone());
            self.i += 1;
        }
        if fields.is_empty() {
            return Ok(Some(term));
        }
        let kind = match term.kind {
            OpKind::Field(mut head) => {
                head.extend(fields);
                OpKind::Field(head)
            }
            OpKind::Root(mut head) => {
                head.extend(fields);
                OpKind::Root(head)
            }
            OpKind::Sub(p, mut head) => {
                head.extend(fields);
                OpKind::Sub(p, head)
            }
            OpKind::Func(f) => {
                return Err(fail(term.pos, format!("unexpected . after function {:?}", f.name())));
            }
            _ => return Err(fail(term.pos, "unexpected . after term")),
        };
        Ok(Some(Operand { pos: term.pos, kind }))
    }

    fn term(&mut self) -> Result<Option<Operand>, ParseFail> {
        let t = self.peek().clone();
        let pos = t.pos;
        let kind = match t.tok {
            Tok::Ident(name) => match Builtin::lookup(&name) {
                Some(b) => OpKind::Func(b),
                None if GO_ONLY_FUNCS.contains(&name.as_str()) => {
                    return Err(unsupported(pos, format!("the function {name:?}")));
                }
                None => return Err(fail(pos, format!("function {name:?} not defined"))),
            },
            Tok::Dot => OpKind::Dot,
            Tok::Nil => OpKind::Nil,
            Tok::Variable(v) => {
                if v != "$" {
                    return Err(fail(pos, format!("undefined variable {v:?}")));
                }
                OpKind::Root(Vec::new())
            }
            Tok::Field(f) => OpKind::Field(vec![f]),
            Tok::Bool(b) => OpKind::Bool(b),
            Tok::Number(n) => parse_number(&n).map_err(|r| match r {
                NumErr::Bad(reason) => fail(pos, reason),
                NumErr::Unsupported(what) => unsupported(pos, what),
            })?,
            Tok::Str(s) => OpKind::Str(s),
            Tok::LParen => {
                self.i += 1;
                self.enter(pos)?;
                let pipe = self.pipeline("parenthesized pipeline", &Tok::RParen, pos)?;
                self.depth -= 1;
                return Ok(Some(Operand { pos, kind: OpKind::Sub(Box::new(pipe), Vec::new()) }));
            }
            _ => return Ok(None),
        };
        self.i += 1;
        Ok(Some(Operand { pos, kind }))
    }
}

enum Item {
    Node(Node),
    End(usize),
    Else(usize),
    ElseIf(usize),
    ElseWith(usize),
}

enum NumErr {
    Bad(String),
    Unsupported(String),
}

/// Go's rules for number constants as used by text/template: integers become `int`, numbers written with
/// `.`/`e`/`E` become `float64`.
fn parse_number(text: &str) -> Result<OpKind, NumErr> {
    let bad = || NumErr::Bad(format!("bad number syntax: {text:?}"));
    if text.ends_with('i') {
        return Err(NumErr::Unsupported("complex number constants".to_string()));
    }
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let lower = body.to_ascii_lowercase();
    let radix = if lower.starts_with("0x") {
        Some(16)
    } else if lower.starts_with("0o") {
        Some(8)
    } else if lower.starts_with("0b") {
        Some(2)
    } else {
        None
    };
    if let Some(radix) = radix {
        let digits = lower.get(2..).unwrap_or("");
        if radix == 16 && (digits.contains('.') || digits.contains('p')) {
            return Err(NumErr::Unsupported("hexadecimal floating-point constants".to_string()));
        }
        let v = i64::from_str_radix(digits, radix).map_err(|_| bad())?;
        return Ok(OpKind::Int(if neg { -v } else { v }));
    }
    if body.is_empty() || !body.as_bytes().first().is_some_and(|b| b.is_ascii_digit() || *b == b'.') {
        return Err(bad());
    }
    if body.contains(['.', 'e', 'E']) {
        let v: f64 = body.parse().map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(bad());
        }
        return Ok(OpKind::Float(if neg { -v } else { v }));
    }
    // A leading 0 means octal in Go.
    let v = if body.len() > 1 && body.starts_with('0') {
        i64::from_str_radix(body.get(1..).unwrap_or(""), 8).map_err(|_| bad())?
    } else {
        body.parse::<i64>().map_err(|_| NumErr::Bad(format!("number {text} overflows int")))?
    };
    Ok(OpKind::Int(if neg { -v } else { v }))
}

// ---------------------------------------------------------------------------------------------------
// Go type tables for the template data
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Ty {
    /// A string with its Go type name (`string`, `types.UID`, ...); `None` when unknown.
    Str(Option<&'static str>),
    /// An integer with its Go type name.
    Int(&'static str),
    Bool,
    Ptr(&'static Ty),
    /// `map[string]string`.
    StrMap,
    Slice(&'static Ty),
    Struct(&'static StructTy),
    /// An object without a table (see the module docs).
    Generic,
    /// A Kubernetes API struct without a table: like `Generic`, but a nil pointer to it prints `nil`
    /// (its generated `String()` method) instead of `<nil>`.
    ApiStruct,
    /// `metav1.Time`.
    Time,
}

#[derive(Debug)]
struct StructTy {
    name: &'static str,
    /// Kubernetes API structs have a generated `String()` that prints `nil` for a nil pointer.
    k8s: bool,
    fields: &'static [FieldTy],
}

#[derive(Debug)]
struct FieldTy {
    go: &'static str,
    json: &'static str,
    ty: Ty,
}

const fn f(go: &'static str, json: &'static str, ty: Ty) -> FieldTy {
    FieldTy { go, json, ty }
}

const STRING: Ty = Ty::Str(Some("string"));
const GENERIC_SLICE: Ty = Ty::Slice(&Ty::Generic);

static OBJECT_META: StructTy = StructTy {
    name: "v1.ObjectMeta",
    k8s: true,
    fields: &[
        f("Name", "name", STRING),
        f("GenerateName", "generateName", STRING),
        f("Namespace", "namespace", STRING),
        f("SelfLink", "selfLink", STRING),
        f("UID", "uid", Ty::Str(Some("types.UID"))),
        f("ResourceVersion", "resourceVersion", STRING),
        f("Generation", "generation", Ty::Int("int64")),
        f("CreationTimestamp", "creationTimestamp", Ty::Time),
        f("DeletionTimestamp", "deletionTimestamp", Ty::Ptr(&Ty::Time)),
        f("DeletionGracePeriodSeconds", "deletionGracePeriodSeconds", Ty::Ptr(&Ty::Int("int64"))),
        f("Labels", "labels", Ty::StrMap),
        f("Annotations", "annotations", Ty::StrMap),
        f("OwnerReferences", "ownerReferences", GENERIC_SLICE),
        f("Finalizers", "finalizers", Ty::Slice(&STRING)),
        f("ManagedFields", "managedFields", GENERIC_SLICE),
    ],
};

static POD_SPEC: StructTy = StructTy {
    name: "v1.PodSpec",
    k8s: true,
    fields: &[
        f("Volumes", "volumes", GENERIC_SLICE),
        f("InitContainers", "initContainers", GENERIC_SLICE),
        f("Containers", "containers", GENERIC_SLICE),
        f("EphemeralContainers", "ephemeralContainers", GENERIC_SLICE),
        f("RestartPolicy", "restartPolicy", Ty::Str(Some("v1.RestartPolicy"))),
        f("TerminationGracePeriodSeconds", "terminationGracePeriodSeconds", Ty::Ptr(&Ty::Int("int64"))),
        f("ActiveDeadlineSeconds", "activeDeadlineSeconds", Ty::Ptr(&Ty::Int("int64"))),
        f("DNSPolicy", "dnsPolicy", Ty::Str(Some("v1.DNSPolicy"))),
        f("NodeSelector", "nodeSelector", Ty::StrMap),
        f("ServiceAccountName", "serviceAccountName", STRING),
        f("DeprecatedServiceAccount", "serviceAccount", STRING),
        f("AutomountServiceAccountToken", "automountServiceAccountToken", Ty::Ptr(&Ty::Bool)),
        f("NodeName", "nodeName", STRING),
        f("HostNetwork", "hostNetwork", Ty::Bool),
        f("HostPID", "hostPID", Ty::Bool),
        f("HostIPC", "hostIPC", Ty::Bool),
        f("ShareProcessNamespace", "shareProcessNamespace", Ty::Ptr(&Ty::Bool)),
        f("SecurityContext", "securityContext", Ty::Ptr(&Ty::ApiStruct)),
        f("ImagePullSecrets", "imagePullSecrets", GENERIC_SLICE),
        f("Hostname", "hostname", STRING),
        f("Subdomain", "subdomain", STRING),
        f("Affinity", "affinity", Ty::Ptr(&Ty::ApiStruct)),
        f("SchedulerName", "schedulerName", STRING),
        f("Tolerations", "tolerations", GENERIC_SLICE),
        f("HostAliases", "hostAliases", GENERIC_SLICE),
        f("PriorityClassName", "priorityClassName", STRING),
        f("Priority", "priority", Ty::Ptr(&Ty::Int("int32"))),
        f("DNSConfig", "dnsConfig", Ty::Ptr(&Ty::ApiStruct)),
        f("ReadinessGates", "readinessGates", GENERIC_SLICE),
        f("RuntimeClassName", "runtimeClassName", Ty::Ptr(&STRING)),
        f("EnableServiceLinks", "enableServiceLinks", Ty::Ptr(&Ty::Bool)),
        f("PreemptionPolicy", "preemptionPolicy", Ty::Ptr(&Ty::Str(Some("v1.PreemptionPolicy")))),
        f("Overhead", "overhead", Ty::Generic),
        f("TopologySpreadConstraints", "topologySpreadConstraints", GENERIC_SLICE),
        f("SetHostnameAsFQDN", "setHostnameAsFQDN", Ty::Ptr(&Ty::Bool)),
        f("OS", "os", Ty::Ptr(&Ty::ApiStruct)),
        f("HostUsers", "hostUsers", Ty::Ptr(&Ty::Bool)),
        f("SchedulingGates", "schedulingGates", GENERIC_SLICE),
        f("ResourceClaims", "resourceClaims", GENERIC_SLICE),
        f("Resources", "resources", Ty::Ptr(&Ty::ApiStruct)),
        f("HostnameOverride", "hostnameOverride", Ty::Ptr(&STRING)),
        f("WorkloadRef", "workloadRef", Ty::Ptr(&Ty::ApiStruct)),
    ],
};

static NODE_SPEC: StructTy = StructTy {
    name: "v1.NodeSpec",
    k8s: true,
    fields: &[
        f("PodCIDR", "podCIDR", STRING),
        f("PodCIDRs", "podCIDRs", Ty::Slice(&STRING)),
        f("ProviderID", "providerID", STRING),
        f("Unschedulable", "unschedulable", Ty::Bool),
        f("Taints", "taints", GENERIC_SLICE),
        f("ConfigSource", "configSource", Ty::Ptr(&Ty::ApiStruct)),
        f("DoNotUseExternalID", "externalID", STRING),
    ],
};

static ROOT: StructTy = StructTy {
    name: "templateData",
    k8s: false,
    fields: &[
        f("TrustDomain", "TrustDomain", STRING),
        f("ClusterName", "ClusterName", STRING),
        f("ClusterDomain", "ClusterDomain", STRING),
        f("PodMeta", "PodMeta", Ty::Ptr(&Ty::Struct(&OBJECT_META))),
        f("PodSpec", "PodSpec", Ty::Ptr(&Ty::Struct(&POD_SPEC))),
        f("NodeMeta", "NodeMeta", Ty::Ptr(&Ty::Struct(&OBJECT_META))),
        f("NodeSpec", "NodeSpec", Ty::Ptr(&Ty::Struct(&NODE_SPEC))),
    ],
};

/// JSON keys whose objects are string maps in deeper, table-less objects.
const MAP_KEYS: [&str; 4] = ["labels", "annotations", "nodeSelector", "matchLabels"];

// ---------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum StructKind {
    Known(&'static StructTy),
    Generic,
}

#[derive(Debug, Clone)]
enum Val<'a> {
    /// Go's invalid `reflect.Value` (a missing map key): prints `<no value>`.
    NoValue,
    /// Untyped `nil`.
    Nil,
    /// A nil pointer to a value of the given type.
    NilPtr(&'static Ty),
    /// A non-nil pointer.
    Ptr(Box<Val<'a>>),
    Str(String, Option<&'static str>),
    Int(i64, Option<&'static str>),
    Float(f64),
    Bool(bool),
    /// `map[string]string`; `None` is a nil map.
    Map(Option<&'a Map<String, Json>>),
    /// A slice; `None` is a nil slice.
    Slice(Option<&'a [Json]>, &'static Ty),
    /// A struct value; `None` is its zero value.
    Struct(Option<&'a Map<String, Json>>, StructKind),
    /// `metav1.Time` (opaque).
    Time,
}

impl Val<'_> {
    fn type_name(&self) -> String {
        match self {
            Val::NoValue | Val::Nil => "nil".to_string(),
            Val::NilPtr(t) => format!("*{}", ty_name(t)),
            Val::Ptr(v) => format!("*{}", v.type_name()),
            Val::Str(_, n) => n.unwrap_or("string").to_string(),
            Val::Int(_, n) => n.unwrap_or("int").to_string(),
            Val::Float(_) => "float64".to_string(),
            Val::Bool(_) => "bool".to_string(),
            Val::Map(_) => "map[string]string".to_string(),
            Val::Slice(_, t) => format!("[]{}", ty_name(t)),
            Val::Struct(_, StructKind::Known(st)) => st.name.to_string(),
            Val::Struct(_, StructKind::Generic) => "struct".to_string(),
            Val::Time => "v1.Time".to_string(),
        }
    }

    fn is_invalid(&self) -> bool {
        matches!(self, Val::NoValue | Val::Nil)
    }
}

fn ty_name(t: &Ty) -> String {
    match t {
        Ty::Str(n) => n.unwrap_or("string").to_string(),
        Ty::Int(n) => (*n).to_string(),
        Ty::Bool => "bool".to_string(),
        Ty::Ptr(t) => format!("*{}", ty_name(t)),
        Ty::StrMap => "map[string]string".to_string(),
        Ty::Slice(t) => format!("[]{}", ty_name(t)),
        Ty::Struct(st) => st.name.to_string(),
        Ty::Generic | Ty::ApiStruct => "struct".to_string(),
        Ty::Time => "v1.Time".to_string(),
    }
}

/// Why an evaluation failed (position added by the caller).
type EvalResult<T> = Result<T, String>;

fn json_kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The value of a JSON member (`None` = absent) as a Go value of type `ty`.
fn from_json<'a>(j: Option<&'a Json>, ty: &'static Ty, what: &str) -> EvalResult<Val<'a>> {
    let mismatch = |j: &Json| format!("data for {what} is {} but the Go type is {}", json_kind(j), ty_name(ty));
    let j = j.filter(|j| !j.is_null());
    Ok(match ty {
        Ty::Str(n) => match j {
            None => Val::Str(String::new(), *n),
            Some(Json::String(s)) => Val::Str(s.clone(), *n),
            Some(o) => return Err(mismatch(o)),
        },
        Ty::Int(n) => match j {
            None => Val::Int(0, Some(n)),
            Some(Json::Number(x)) => Val::Int(x.as_i64().ok_or_else(|| mismatch(&Json::Null))?, Some(n)),
            Some(o) => return Err(mismatch(o)),
        },
        Ty::Bool => match j {
            None => Val::Bool(false),
            Some(Json::Bool(b)) => Val::Bool(*b),
            Some(o) => return Err(mismatch(o)),
        },
        Ty::Ptr(inner) => match j {
            None => Val::NilPtr(inner),
            Some(_) => Val::Ptr(Box::new(from_json(j, inner, what)?)),
        },
        Ty::StrMap => match j {
            None => Val::Map(None),
            Some(Json::Object(m)) => Val::Map(Some(m)),
            Some(o) => return Err(mismatch(o)),
        },
        Ty::Slice(elem) => match j {
            None => Val::Slice(None, elem),
            Some(Json::Array(a)) => Val::Slice(Some(a), elem),
            Some(o) => return Err(mismatch(o)),
        },
        Ty::Struct(st) => match j {
            None => Val::Struct(None, StructKind::Known(st)),
            Some(Json::Object(m)) => Val::Struct(Some(m), StructKind::Known(st)),
            Some(o) => return Err(mismatch(o)),
        },
        Ty::Time => Val::Time,
        Ty::ApiStruct | Ty::Generic => match j {
            None => Val::NilPtr(&Ty::Generic),
            Some(Json::String(s)) => Val::Str(s.clone(), None),
            Some(Json::Number(x)) => match x.as_i64() {
                Some(i) => Val::Int(i, None),
                None => Val::Float(x.as_f64().unwrap_or(0.0)),
            },
            Some(Json::Bool(b)) => Val::Bool(*b),
            Some(Json::Array(a)) => Val::Slice(Some(a), &Ty::Generic),
            Some(Json::Object(m)) => Val::Struct(Some(m), StructKind::Generic),
            Some(Json::Null) => Val::NilPtr(&Ty::Generic),
        },
    })
}

/// `receiver.name` the way Go's `evalField` does it under `missingkey=default`.
fn field<'a>(receiver: Val<'a>, name: &str, has_args: bool) -> EvalResult<Val<'a>> {
    match receiver {
        Val::NoValue => Ok(Val::NoValue),
        Val::Nil => Err(format!("nil data; no entry for key {name:?}")),
        Val::NilPtr(t) => Err(format!("nil pointer evaluating *{}.{name}", ty_name(t))),
        Val::Ptr(inner) => field(*inner, name, has_args),
        Val::Map(m) => {
            if has_args {
                return Err(format!("{name} is not a method but has arguments"));
            }
            Ok(match m.and_then(|m| m.get(name)) {
                None => Val::NoValue,
                Some(j) => map_elem(j)?,
            })
        }
        Val::Struct(obj, StructKind::Known(st)) => {
            let Some(fd) = st.fields.iter().find(|fd| fd.go == name) else {
                return Err(format!("can't evaluate field {name} in type {}", st.name));
            };
            if has_args {
                return Err(format!("{name} has arguments but cannot be invoked as function"));
            }
            from_json(obj.and_then(|o| o.get(fd.json)), &fd.ty, name)
        }
        Val::Struct(obj, StructKind::Generic) => {
            if !name.chars().next().is_some_and(|c| c.is_uppercase()) {
                return Err(format!("can't evaluate field {name}: it is not an exported Go field"));
            }
            if has_args {
                return Err(format!("{name} has arguments but cannot be invoked as function"));
            }
            let found = obj
                .and_then(|o| o.get_key_value(name).or_else(|| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))));
            let Some((key, j)) = found else {
                return Err(format!(
                    "field {name} is absent from the object (Sigil cannot tell an omitted zero-valued Go field \
                     from a field that does not exist below ObjectMeta/PodSpec/NodeSpec)"
                ));
            };
            if MAP_KEYS.contains(&key.as_str()) {
                from_json(Some(j), &Ty::StrMap, name)
            } else {
                from_json(Some(j), &Ty::Generic, name)
            }
        }
        other => Err(format!("can't evaluate field {name} in type {}", other.type_name())),
    }
}

fn map_elem(j: &Json) -> EvalResult<Val<'_>> {
    match j {
        Json::String(s) => Ok(Val::Str(s.clone(), Some("string"))),
        other => from_json(Some(other), &Ty::Generic, "map value"),
    }
}

/// Go's `isTrue`.
fn truth(v: &Val<'_>) -> bool {
    match v {
        Val::NoValue | Val::Nil | Val::NilPtr(_) => false,
        Val::Ptr(_) | Val::Struct(..) | Val::Time => true,
        Val::Str(s, _) => !s.is_empty(),
        Val::Int(i, _) => *i != 0,
        Val::Float(x) => *x != 0.0,
        Val::Bool(b) => *b,
        Val::Map(m) => m.is_some_and(|m| !m.is_empty()),
        Val::Slice(s, _) => s.is_some_and(|s| !s.is_empty()),
    }
}

// ---------------------------------------------------------------------------------------------------
// Formatting (Go's fmt for the values that can occur)
// ---------------------------------------------------------------------------------------------------

/// `%v` of a float64 (`strconv.FormatFloat(x, 'g', -1, 64)`).
fn go_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    // Shortest round-trip digits and exponent from Rust's `{:e}`.
    let e = format!("{:e}", x.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    // Shortest form: Go switches to exponent notation when exp < -4 || exp >= 6.
    if !(-4..6).contains(&exp) {
        return format!("{sign}{}", sci(&digits, exp));
    }
    // Plain decimal.
    let mut s = String::new();
    if exp < 0 {
        s.push_str("0.");
        for _ in 0..(-exp - 1) {
            s.push('0');
        }
        s.push_str(&digits);
    } else {
        let int_len = (exp + 1) as usize;
        if digits.len() <= int_len {
            s.push_str(&digits);
            for _ in digits.len()..int_len {
                s.push('0');
            }
        } else {
            s.push_str(digits.get(..int_len).unwrap_or(""));
            s.push('.');
            s.push_str(digits.get(int_len..).unwrap_or(""));
        }
    }
    format!("{sign}{s}")
}

fn sci(digits: &str, exp: i32) -> String {
    let mut s = String::new();
    let mut it = digits.chars();
    if let Some(first) = it.next() {
        s.push(first);
    }
    let rest: String = it.collect();
    if !rest.is_empty() {
        s.push('.');
        s.push_str(&rest);
    }
    let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    s
}

/// `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `%v` (also used for top-level printing after pointer indirection).
fn fmt_v(v: &Val<'_>) -> EvalResult<String> {
    Ok(match v {
        Val::NoValue | Val::Nil => "<nil>".to_string(),
        Val::NilPtr(Ty::Struct(st)) if st.k8s => "nil".to_string(),
        Val::NilPtr(Ty::ApiStruct) => "nil".to_string(),
        Val::NilPtr(_) => "<nil>".to_string(),
        Val::Str(s, _) => s.clone(),
        Val::Int(i, _) => i.to_string(),
        Val::Float(x) => go_float(*x),
        Val::Bool(b) => b.to_string(),
        Val::Map(m) => {
            let mut s = String::from("map[");
            if let Some(m) = m {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        s.push(' ');
                    }
                    let elem = m.get(k).map(map_elem).transpose()?.unwrap_or(Val::NoValue);
                    let _ = write!(s, "{k}:{}", fmt_v(&elem)?);
                }
            }
            s.push(']');
            s
        }
        Val::Slice(items, elem) => {
            let mut s = String::from("[");
            for (i, j) in items.unwrap_or(&[]).iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                let item = from_json(Some(j), elem, "slice element")?;
                match item {
                    Val::Str(..) | Val::Int(..) | Val::Bool(_) | Val::Float(_) => s.push_str(&fmt_v(&item)?),
                    other => return Err(not_printable(&other)),
                }
            }
            s.push(']');
            s
        }
        other => return Err(not_printable(other)),
    })
}

fn not_printable(v: &Val<'_>) -> String {
    format!(
        "printing a value of type {} is not supported (Go would print it through a String() method or as an \
         address); select a field instead",
        v.type_name()
    )
}

/// `%!verb(type=value)` for a verb that does not fit the value.
fn bad_verb(verb: char, v: &Val<'_>) -> EvalResult<String> {
    if v.is_invalid() {
        return Ok(format!("%!{verb}(<nil>)"));
    }
    Ok(format!("%!{verb}({}={})", known_type_name(v)?, fmt_v(v)?))
}

fn known_type_name(v: &Val<'_>) -> EvalResult<String> {
    let name = match v {
        Val::Str(_, Some(n)) | Val::Int(_, Some(n)) => Some((*n).to_string()),
        Val::Float(_) => Some("float64".to_string()),
        Val::Bool(_) => Some("bool".to_string()),
        Val::Map(_) => Some("map[string]string".to_string()),
        Val::Slice(_, Ty::Str(Some(n))) => Some(format!("[]{n}")),
        Val::NilPtr(t) => nil_ptr_type_name(t),
        _ => None,
    };
    name.ok_or_else(|| {
        format!("printf would print the Go type name of a {} value, which Sigil does not know", v.type_name())
    })
}

/// The Go type name of a nil pointer to `t`, where Sigil knows it.
fn nil_ptr_type_name(t: &Ty) -> Option<String> {
    match t {
        Ty::Str(Some(n)) | Ty::Int(n) => Some(format!("*{n}")),
        Ty::Bool => Some("*bool".to_string()),
        Ty::Struct(st) => Some(format!("*{}", st.name)),
        Ty::Time => Some("*v1.Time".to_string()),
        _ => None,
    }
}

/// A value handed to `print`/`printf` as `any`.
fn check_fmt_arg(v: &Val<'_>) -> EvalResult<()> {
    match v {
        Val::Ptr(_) => Err(
            "print/printf of a non-nil pointer is not supported (Go prints an address, or a String() rendering for Kubernetes structs)".to_string(),
        ),
        _ => Ok(()),
    }
}

fn go_sprintf(format: &str, args: &[Val<'_>]) -> EvalResult<String> {
    let mut out = String::new();
    let mut chars = format.chars();
    let mut next_arg = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        if !matches!(verb, 's' | 'd' | 'v' | 'q') {
            return Err(format!("printf verb or flag {:?} is not supported (only %s %d %v %q %%)", format!("%{verb}")));
        }
        let Some(arg) = args.get(next_arg) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next_arg += 1;
        check_fmt_arg(arg)?;
        let s = match (verb, arg) {
            ('v', a) => fmt_v(a)?,
            ('s', a @ (Val::Str(..) | Val::Map(_) | Val::Slice(..))) => {
                if let Val::Slice(_, Ty::Str(_)) | Val::Str(..) | Val::Map(_) = a {
                    fmt_v(a)?
                } else {
                    return Err(format!("%s of a {} is not supported", a.type_name()));
                }
            }
            ('s', Val::NilPtr(Ty::Struct(st))) if st.k8s => "nil".to_string(),
            ('s', Val::NilPtr(Ty::ApiStruct)) => "nil".to_string(),
            ('q', Val::NilPtr(Ty::Struct(st))) if st.k8s => "\"nil\"".to_string(),
            ('q', Val::NilPtr(Ty::ApiStruct)) => "\"nil\"".to_string(),
            ('s' | 'q', Val::NilPtr(t @ (Ty::Str(_) | Ty::Int(_) | Ty::Bool))) => {
                let name = nil_ptr_type_name(t)
                    .ok_or_else(|| format!("%{verb} of a nil pointer to a named string type is not supported"))?;
                format!("%!{verb}({name}=<nil>)")
            }
            ('d', Val::Int(i, _)) => i.to_string(),
            ('q', Val::Str(s, _)) => go_quote(s),
            ('q', Val::Int(..)) => {
                return Err("%q of an integer (a quoted character) is not supported".to_string());
            }
            (_, a @ (Val::Str(..) | Val::Int(..) | Val::Float(_) | Val::Bool(_) | Val::NoValue | Val::Nil)) => {
                bad_verb(verb, a)?
            }
            (_, a) => return Err(format!("%{verb} of a {} is not supported", a.type_name())),
        };
        out.push_str(&s);
    }
    if next_arg < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args.iter().skip(next_arg).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if a.is_invalid() {
                out.push_str("<nil>");
            } else {
                let _ = write!(out, "{}={}", known_type_name(a)?, fmt_v(a)?);
            }
        }
        out.push(')');
    }
    Ok(out)
}

/// `fmt.Sprint`: spaces between operands when neither is a string.
fn go_sprint(args: &[Val<'_>]) -> EvalResult<String> {
    let mut out = String::new();
    let mut prev_string = true;
    for (i, a) in args.iter().enumerate() {
        check_fmt_arg(a)?;
        let is_string = matches!(a, Val::Str(..));
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        out.push_str(&fmt_v(a)?);
        prev_string = is_string;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Comparison builtins
// ---------------------------------------------------------------------------------------------------

#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Bool,
    Int,
    Float,
    Str,
    /// Go's `invalidKind`: nil, missing values and every non-basic value (pointers, maps, slices, structs).
    Other,
}

fn kind(v: &Val<'_>) -> Kind {
    match v {
        Val::Bool(_) => Kind::Bool,
        Val::Int(..) => Kind::Int,
        Val::Float(_) => Kind::Float,
        Val::Str(..) => Kind::Str,
        _ => Kind::Other,
    }
}

/// Go's `reflect.Kind` for the non-basic values.
fn reflect_kind(v: &Val<'_>) -> &'static str {
    match v {
        Val::NoValue | Val::Nil => "invalid",
        Val::NilPtr(_) | Val::Ptr(_) => "ptr",
        Val::Map(_) => "map",
        Val::Slice(..) => "slice",
        Val::Struct(..) | Val::Time => "struct",
        Val::Str(..) => "string",
        Val::Int(..) => "int",
        Val::Float(_) => "float",
        Val::Bool(_) => "bool",
    }
}

/// Go's `isNil` for the values `eq` sees (a missing value counts as nil).
fn is_nil(v: &Val<'_>) -> bool {
    matches!(v, Val::NoValue | Val::Nil | Val::NilPtr(_) | Val::Map(None) | Val::Slice(None, _))
}

fn go_eq(a: &Val<'_>, others: &[Val<'_>]) -> EvalResult<bool> {
    if others.is_empty() {
        return Err("missing argument for comparison".to_string());
    }
    let k1 = kind(a);
    for b in others {
        let k2 = kind(b);
        let equal = if k1 != k2 {
            if !a.is_invalid() && !b.is_invalid() {
                return Err(format!("incompatible types for comparison: {} and {}", a.type_name(), b.type_name()));
            }
            false
        } else {
            match (a, b) {
                (Val::Bool(x), Val::Bool(y)) => x == y,
                (Val::Int(x, _), Val::Int(y, _)) => x == y,
                (Val::Float(x), Val::Float(y)) => x == y,
                (Val::Str(x, _), Val::Str(y, _)) => x == y,
                _ if !a.is_invalid() && !b.is_invalid() && reflect_kind(a) != reflect_kind(b) => {
                    return Err(format!("non-comparable types {} and {}", a.type_name(), b.type_name()));
                }
                _ if is_nil(a) || is_nil(b) => is_nil(a) == is_nil(b),
                (_, Val::Map(_) | Val::Slice(..)) => {
                    return Err(format!("non-comparable type {}", b.type_name()));
                }
                _ if a.type_name() != b.type_name() => false,
                _ => {
                    return Err(format!(
                        "comparing two {} values is not supported (Go compares their identity)",
                        a.type_name()
                    ));
                }
            }
        };
        if equal {
            return Ok(true);
        }
    }
    Ok(false)
}

fn go_lt(a: &Val<'_>, b: &Val<'_>) -> EvalResult<bool> {
    let (k1, k2) = (kind(a), kind(b));
    if matches!(k1, Kind::Other | Kind::Bool) || matches!(k2, Kind::Other | Kind::Bool) {
        return Err("invalid type for comparison".to_string());
    }
    if k1 != k2 {
        return Err(format!("incompatible types for comparison: {} and {}", a.type_name(), b.type_name()));
    }
    Ok(match (a, b) {
        (Val::Int(x, _), Val::Int(y, _)) => x < y,
        (Val::Float(x), Val::Float(y)) => x < y,
        (Val::Str(x, _), Val::Str(y, _)) => x < y,
        _ => return Err("invalid type for comparison".to_string()),
    })
}

fn go_index<'a>(item: Val<'a>, idx: &[Val<'a>]) -> EvalResult<Val<'a>> {
    if item.is_invalid() {
        return Err("index of untyped nil".to_string());
    }
    let mut item = item;
    for i in idx {
        item = match item {
            Val::NoValue | Val::Nil => return Err("index of untyped nil".to_string()),
            Val::Map(m) => {
                let Val::Str(k, _) = i else {
                    return Err(format!("value has type {}; should be string", i.type_name()));
                };
                match m.and_then(|m| m.get(k)) {
                    Some(j) => map_elem(j)?,
                    None => Val::Str(String::new(), Some("string")),
                }
            }
            Val::Slice(items, elem) => {
                let Val::Int(n, _) = i else {
                    return Err(format!("cannot index slice/array with type {}", i.type_name()));
                };
                let items = items.unwrap_or(&[]);
                let j = usize::try_from(*n)
                    .ok()
                    .and_then(|n| items.get(n))
                    .ok_or_else(|| format!("index out of range: {n}"))?;
                from_json(Some(j), elem, "slice element")?
            }
            Val::Str(s, _) => {
                let Val::Int(n, _) = i else {
                    return Err(format!("cannot index slice/array with type {}", i.type_name()));
                };
                let b = usize::try_from(*n)
                    .ok()
                    .and_then(|n| s.as_bytes().get(n).copied())
                    .ok_or_else(|| format!("index out of range: {n}"))?;
                Val::Int(i64::from(b), Some("uint8"))
            }
            other => return Err(format!("can't index item of type {}", other.type_name())),
        };
    }
    Ok(item)
}

fn go_len(v: &Val<'_>) -> EvalResult<Val<'static>> {
    let n = match v {
        Val::Str(s, _) => s.len(),
        Val::Map(m) => m.map_or(0, |m| m.len()),
        Val::Slice(s, _) => s.map_or(0, |s| s.len()),
        Val::NoValue | Val::Nil => return Err("len of nil value".to_string()),
        other => return Err(format!("len of type {}", other.type_name())),
    };
    Ok(Val::Int(i64::try_from(n).unwrap_or(i64::MAX), Some("int")))
}

// ---------------------------------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------------------------------

struct Exec<'a> {
    root: Val<'a>,
    out: String,
}

/// An evaluation error with the byte position it belongs to.
struct ExecFail {
    pos: usize,
    reason: String,
}

type Ex<T> = Result<T, ExecFail>;

fn at(pos: usize) -> impl FnOnce(String) -> ExecFail {
    move |reason| ExecFail { pos, reason }
}

impl<'a> Exec<'a> {
    fn walk(&mut self, nodes: &[Node], dot: &Val<'a>) -> Ex<()> {
        for n in nodes {
            match n {
                Node::Text(t) => self.emit(t, 0)?,
                Node::Action(p) => {
                    let v = self.pipeline(p, dot)?;
                    let pos = p.cmds.first().map_or(0, |c| c.pos);
                    let shown = match v {
                        Val::NoValue | Val::Nil => "<no value>".to_string(),
                        Val::Ptr(inner) => fmt_v(&inner).map_err(at(pos))?,
                        other => fmt_v(&other).map_err(at(pos))?,
                    };
                    self.emit(&shown, pos)?;
                }
                Node::If { pipe, then, els } => {
                    let v = self.pipeline(pipe, dot)?;
                    if truth(&v) {
                        self.walk(then, dot)?;
                    } else if let Some(e) = els {
                        self.walk(e, dot)?;
                    }
                }
                Node::With { pipe, then, els } => {
                    let v = self.pipeline(pipe, dot)?;
                    if truth(&v) {
                        self.walk(then, &v)?;
                    } else if let Some(e) = els {
                        self.walk(e, dot)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, s: &str, pos: usize) -> Ex<()> {
        if self.out.len() + s.len() > MAX_OUTPUT_BYTES {
            return Err(ExecFail { pos, reason: format!("output exceeds {MAX_OUTPUT_BYTES} bytes") });
        }
        self.out.push_str(s);
        Ok(())
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &Val<'a>) -> Ex<Val<'a>> {
        let mut value: Option<Val<'a>> = None;
        for c in &p.cmds {
            value = Some(self.command(c, dot, value)?);
        }
        Ok(value.unwrap_or(Val::NoValue))
    }

    fn command(&mut self, c: &Command, dot: &Val<'a>, fin: Option<Val<'a>>) -> Ex<Val<'a>> {
        let Some(first) = c.args.first() else {
            return Err(ExecFail { pos: c.pos, reason: "empty command".to_string() });
        };
        let has_args = c.args.len() > 1 || fin.is_some();
        let pos = first.pos;
        match &first.kind {
            OpKind::Field(names) => self.chain(dot.clone(), names, has_args, pos),
            OpKind::Root(names) => {
                if names.is_empty() {
                    self.not_a_function(has_args, "$", pos)?;
                }
                self.chain(self.root.clone(), names, has_args, pos)
            }
            OpKind::Sub(p, names) => {
                if names.is_empty() {
                    self.not_a_function(has_args, "parenthesized pipeline", pos)?;
                }
                let v = self.pipeline(p, dot)?;
                self.chain(v, names, has_args, pos)
            }
            OpKind::Func(b) => self.call(*b, c.args.get(1..).unwrap_or(&[]), dot, fin, pos),
            other => {
                let shown = match other {
                    OpKind::Str(s) => format!("{s:?}"),
                    OpKind::Int(i) => i.to_string(),
                    OpKind::Float(x) => go_float(*x),
                    OpKind::Bool(b) => b.to_string(),
                    OpKind::Nil => "nil".to_string(),
                    _ => ".".to_string(),
                };
                self.not_a_function(has_args, &shown, pos)?;
                match other {
                    OpKind::Nil => Err(ExecFail { pos, reason: "nil is not a command".to_string() }),
                    _ => self.arg(first, dot),
                }
            }
        }
    }

    fn not_a_function(&self, has_args: bool, what: &str, pos: usize) -> Ex<()> {
        if has_args {
            return Err(ExecFail { pos, reason: format!("can't give argument to non-function {what}") });
        }
        Ok(())
    }

    fn chain(&self, mut v: Val<'a>, names: &[String], has_args: bool, pos: usize) -> Ex<Val<'a>> {
        let last = names.len().saturating_sub(1);
        for (i, n) in names.iter().enumerate() {
            v = field(v, n, has_args && i == last).map_err(at(pos))?;
        }
        Ok(v)
    }

    /// An operand in argument position.
    fn arg(&mut self, op: &Operand, dot: &Val<'a>) -> Ex<Val<'a>> {
        match &op.kind {
            OpKind::Field(names) => self.chain(dot.clone(), names, false, op.pos),
            OpKind::Dot => Ok(dot.clone()),
            OpKind::Root(names) => self.chain(self.root.clone(), names, false, op.pos),
            OpKind::Sub(p, names) => {
                let v = self.pipeline(p, dot)?;
                self.chain(v, names, false, op.pos)
            }
            OpKind::Func(b) => self.call(*b, &[], dot, None, op.pos),
            OpKind::Str(s) => Ok(Val::Str(s.clone(), Some("string"))),
            OpKind::Int(i) => Ok(Val::Int(*i, Some("int"))),
            OpKind::Float(x) => Ok(Val::Float(*x)),
            OpKind::Bool(b) => Ok(Val::Bool(*b)),
            OpKind::Nil => Ok(Val::Nil),
        }
    }

    fn call(&mut self, b: Builtin, args: &[Operand], dot: &Val<'a>, fin: Option<Val<'a>>, pos: usize) -> Ex<Val<'a>> {
        let n = args.len() + usize::from(fin.is_some());
        let arity = |want: usize| -> Ex<()> {
            if n != want {
                return Err(ExecFail {
                    pos,
                    reason: format!("wrong number of args for {}: want {want} got {n}", b.name()),
                });
            }
            Ok(())
        };
        let at_least = |want: usize| -> Ex<()> {
            if n < want {
                return Err(ExecFail {
                    pos,
                    reason: format!("wrong number of args for {}: want at least {want} got {n}", b.name()),
                });
            }
            Ok(())
        };
        let fail = |reason: String| ExecFail { pos, reason: format!("error calling {}: {reason}", b.name()) };
        if matches!(b, Builtin::And | Builtin::Or) {
            at_least(1)?;
            let mut last = Val::NoValue;
            for a in args {
                last = self.arg(a, dot)?;
                if truth(&last) == (b == Builtin::Or) {
                    return Ok(last);
                }
            }
            if let Some(f) = fin {
                last = f;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(n);
        for a in args {
            vals.push(self.arg(a, dot)?);
        }
        if let Some(f) = fin {
            vals.push(f);
        }
        match b {
            Builtin::Not => {
                arity(1)?;
                Ok(Val::Bool(!vals.first().is_some_and(truth)))
            }
            Builtin::Len => {
                arity(1)?;
                vals.first().map_or(Ok(Val::NoValue), go_len).map_err(fail)
            }
            Builtin::Index => {
                at_least(1)?;
                let mut it = vals.into_iter();
                let item = it.next().unwrap_or(Val::NoValue);
                let rest: Vec<Val<'a>> = it.collect();
                go_index(item, &rest).map_err(fail)
            }
            Builtin::Print => go_sprint(&vals).map(|s| Val::Str(s, Some("string"))).map_err(fail),
            Builtin::Printf => {
                at_least(1)?;
                let Some(Val::Str(format, _)) = vals.first() else {
                    return Err(ExecFail { pos, reason: "printf: the format must be a string".to_string() });
                };
                go_sprintf(format, vals.get(1..).unwrap_or(&[])).map(|s| Val::Str(s, Some("string"))).map_err(fail)
            }
            Builtin::Eq => {
                at_least(1)?;
                let (a, rest) = vals.split_first().map_or((&Val::NoValue, &[][..]), |(a, r)| (a, r));
                go_eq(a, rest).map(Val::Bool).map_err(fail)
            }
            Builtin::Ne => {
                arity(2)?;
                let (a, rest) = vals.split_first().map_or((&Val::NoValue, &[][..]), |(a, r)| (a, r));
                go_eq(a, rest).map(|e| Val::Bool(!e)).map_err(fail)
            }
            Builtin::Lt | Builtin::Gt => {
                arity(2)?;
                let (a, c) = match (vals.first(), vals.get(1)) {
                    (Some(a), Some(c)) => (a, c),
                    _ => return Ok(Val::NoValue),
                };
                let r = if b == Builtin::Lt { go_lt(a, c) } else { go_lt(c, a) };
                r.map(Val::Bool).map_err(fail)
            }
            Builtin::And | Builtin::Or => Ok(Val::NoValue),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Roots
// ---------------------------------------------------------------------------------------------------

fn all_roots(out: &mut BTreeSet<String>) {
    out.extend(ROOT_NAMES.iter().map(|s| (*s).to_string()));
}

fn roots_nodes(nodes: &[Node], dot_is_root: bool, out: &mut BTreeSet<String>) {
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Action(p) => roots_pipe(p, dot_is_root, out),
            Node::If { pipe, then, els } => {
                roots_pipe(pipe, dot_is_root, out);
                roots_nodes(then, dot_is_root, out);
                if let Some(e) = els {
                    roots_nodes(e, dot_is_root, out);
                }
            }
            Node::With { pipe, then, els } => {
                roots_pipe(pipe, dot_is_root, out);
                let keeps_root = match pipe.cmds.as_slice() {
                    [c] => match c.args.as_slice() {
                        [op] => match &op.kind {
                            OpKind::Dot => dot_is_root,
                            OpKind::Root(names) => names.is_empty(),
                            _ => false,
                        },
                        _ => false,
                    },
                    _ => false,
                };
                roots_nodes(then, keeps_root, out);
                if let Some(e) = els {
                    roots_nodes(e, dot_is_root, out);
                }
            }
        }
    }
}

fn roots_pipe(p: &Pipeline, dot_is_root: bool, out: &mut BTreeSet<String>) {
    for c in &p.cmds {
        for op in &c.args {
            match &op.kind {
                OpKind::Field(names) if dot_is_root => {
                    if let Some(first) = names.first() {
                        out.insert(first.clone());
                    }
                }
                OpKind::Dot if dot_is_root => all_roots(out),
                OpKind::Root(names) => match names.first() {
                    Some(first) => {
                        out.insert(first.clone());
                    }
                    None => all_roots(out),
                },
                OpKind::Sub(inner, _) => roots_pipe(inner, dot_is_root, out),
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------------

fn line_starts(src: &str) -> Vec<usize> {
    std::iter::once(0).chain(src.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

fn line_col(starts: &[usize], pos: usize) -> (usize, usize) {
    let line = starts.partition_point(|s| *s <= pos).max(1);
    let start = starts.get(line - 1).copied().unwrap_or(0);
    (line, pos.saturating_sub(start) + 1)
}

impl Template {
    /// Parses `src` with Go text/template's syntax (the subset described in the module docs).
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        if src.len() > MAX_SOURCE_BYTES {
            return Err(TemplateError::TooLarge { len: src.len(), max: MAX_SOURCE_BYTES });
        }
        let starts = line_starts(src);
        let mk = |pos: usize, reason: String, unsup: bool| {
            let (line, col) = line_col(&starts, pos);
            if unsup {
                TemplateError::Unsupported { line, col, what: reason }
            } else {
                TemplateError::Parse { line, col, reason }
            }
        };
        let toks = Lexer::new(src).run().map_err(|e| mk(e.pos, e.reason, e.unsupported))?;
        let mut parser = Parser { toks, i: 0, depth: 0 };
        let nodes = parser.top().map_err(|e| mk(e.pos, e.reason, e.unsupported))?;
        let mut roots = BTreeSet::new();
        roots_nodes(&nodes, true, &mut roots);
        Ok(Template { nodes, line_starts: starts, roots })
    }

    /// Renders the template. `data` is a JSON object: {"TrustDomain": "...", "ClusterName": "...",
    /// "ClusterDomain": "...", "PodMeta": <Pod metadata as Kubernetes JSON (camelCase)>, "PodSpec": <pod spec
    /// JSON>, "NodeMeta": ..., "NodeSpec": ...}. A missing or `null` PodMeta/PodSpec/NodeMeta/NodeSpec is a
    /// nil pointer, as while spire-controller-manager renders the parent ID.
    pub fn render(&self, data: &serde_json::Value) -> Result<String, TemplateError> {
        let root = match data {
            Json::Object(m) => Val::Struct(Some(m), StructKind::Known(&ROOT)),
            other => {
                return Err(TemplateError::Exec {
                    line: 1,
                    col: 1,
                    reason: format!("template data must be a JSON object, not {}", json_kind(other)),
                });
            }
        };
        let mut ex = Exec { root: root.clone(), out: String::new() };
        match ex.walk(&self.nodes, &root) {
            Ok(()) => Ok(ex.out),
            Err(e) => {
                let (line, col) = line_col(&self.line_starts, e.pos);
                Err(TemplateError::Exec { line, col, reason: e.reason })
            }
        }
    }

    /// The top-level variables (e.g. "NodeMeta", "PodSpec") the template reads, so the reconciler knows which
    /// changes matter. A bare `.` or `$` at the top level reads all of them.
    pub fn roots(&self) -> BTreeSet<String> {
        self.roots.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Json {
        json!({
            "TrustDomain": "example.org", "ClusterName": "demo", "ClusterDomain": "cluster.local",
            "PodMeta": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "PodSpec": {"serviceAccountName": "sa", "containers": [{"name": "app"}]},
            "NodeMeta": {"name": "n1", "uid": "n-1"},
            "NodeSpec": {}
        })
    }

    fn render(src: &str) -> Result<String, TemplateError> {
        Template::parse(src)?.render(&data())
    }

    #[test]
    fn template_roots_table() {
        let all: BTreeSet<String> = ROOT_NAMES.iter().map(|s| s.to_string()).collect();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let cases: &[(&str, BTreeSet<String>)] = &[
            (
                "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                set(&["PodMeta", "PodSpec", "TrustDomain"]),
            ),
            (
                "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}",
                set(&["ClusterName", "NodeMeta", "TrustDomain"]),
            ),
            ("{{ with .PodMeta }}{{ .Name }}{{ end }}", set(&["PodMeta"])),
            (
                "{{ with .PodMeta }}{{ $.NodeSpec.PodCIDR }}{{ else }}{{ .ClusterDomain }}{{ end }}",
                set(&["ClusterDomain", "NodeSpec", "PodMeta"]),
            ),
            ("{{ with . }}{{ .ClusterName }}{{ end }}", all.clone()),
            ("{{ with $ }}{{ .ClusterName }}{{ end }}", all.clone()),
            ("{{ printf \"%s\" (index .PodMeta.Labels \"a\") }}", set(&["PodMeta"])),
            ("{{ if .NodeMeta }}{{ .NodeSpec.PodCIDR | len }}{{ end }}", set(&["NodeMeta", "NodeSpec"])),
            ("{{ . }}", all.clone()),
            ("{{ $ }}", all),
            ("static text", set(&[])),
        ];
        for (src, want) in cases {
            let t = Template::parse(src).unwrap();
            assert_eq!(&t.roots(), want, "{src}");
        }
    }

    #[test]
    fn template_unsupported_constructs_are_parse_errors() {
        let cases = [
            ("{{ range .PodMeta.Finalizers }}{{ . }}{{ end }}", "{{range}}"),
            ("{{ define \"x\" }}a{{ end }}", "{{define}}"),
            ("{{ template \"x\" }}", "{{template}}"),
            ("{{ block \"x\" . }}a{{ end }}", "{{block}}"),
            ("{{ break }}", "{{break}}"),
            ("{{ continue }}", "{{continue}}"),
            ("{{ $x := 1 }}", "variable declaration"),
            ("{{ $x = 1 }}", "variable declaration"),
            ("{{ 'a' }}", "character constants"),
            ("{{ html .PodMeta.Name }}", "\"html\""),
            ("{{ 1i }}", "complex"),
        ];
        for (src, what) in cases {
            match Template::parse(src) {
                Err(e @ TemplateError::Unsupported { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(what) && msg.contains("not supported"), "{src}: {msg}");
                }
                other => panic!("{src}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn template_errors_carry_positions() {
        let cases: [(&str, TemplateError); 4] = [
            (
                "a\nb {{ .Nope }}",
                TemplateError::Exec {
                    line: 2,
                    col: 6,
                    reason: "can't evaluate field Nope in type templateData".to_string(),
                },
            ),
            (
                "x\n\n  {{ lower .PodMeta.Name }}",
                TemplateError::Parse { line: 3, col: 6, reason: "function \"lower\" not defined".to_string() },
            ),
            ("{{ if true }}x", TemplateError::Parse { line: 1, col: 15, reason: "unexpected EOF".to_string() }),
            ("ok {{ .PodMeta.Name", TemplateError::Parse { line: 1, col: 6, reason: "unclosed action".to_string() }),
        ];
        for (src, want) in cases {
            assert_eq!(render(src), Err(want.clone()), "{src}");
            assert!(want.to_string().contains(&format!(
                "{}:{}",
                match &want {
                    TemplateError::Exec { line, .. } | TemplateError::Parse { line, .. } => *line,
                    _ => 0,
                },
                match &want {
                    TemplateError::Exec { col, .. } | TemplateError::Parse { col, .. } => *col,
                    _ => 0,
                }
            )));
        }
    }

    #[test]
    fn template_render_rejects_non_object_data_and_mistyped_fields() {
        let t = Template::parse("{{ .TrustDomain }}").unwrap();
        assert!(matches!(t.render(&json!("x")), Err(TemplateError::Exec { .. })));
        assert!(matches!(t.render(&json!({"TrustDomain": 5})), Err(TemplateError::Exec { .. })));
        // Absent root fields are Go zero values: "" for strings, nil pointers for the objects.
        assert_eq!(t.render(&json!({})), Ok(String::new()));
        let t = Template::parse("{{ .PodMeta }}|{{ .PodSpec }}").unwrap();
        assert_eq!(t.render(&json!({"PodMeta": null})), Ok("nil|nil".to_string()));
    }

    #[test]
    fn template_generic_objects_use_case_insensitive_exported_names() {
        let cases = [
            ("{{ (index .PodSpec.Containers 0).Name }}", Some("app")),
            ("{{ (index .PodSpec.Containers 0).NAME }}", Some("app")),
            ("{{ (index .PodSpec.Containers 0).name }}", None),
            ("{{ (index .PodSpec.Containers 0).WorkingDir }}", None),
        ];
        for (src, want) in cases {
            match (render(src), want) {
                (Ok(got), Some(w)) => assert_eq!(got, w, "{src}"),
                (Err(TemplateError::Exec { .. }), None) => {}
                (got, want) => panic!("{src}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn template_limits_stop_hostile_input() {
        let too_big = "a".repeat(MAX_SOURCE_BYTES + 1);
        assert!(matches!(Template::parse(&too_big), Err(TemplateError::TooLarge { .. })));

        let parens = format!("{{{{ {}.PodMeta.Name{} }}}}", "(".repeat(5000), ")".repeat(5000));
        assert!(matches!(Template::parse(&parens), Err(TemplateError::Parse { .. })));

        let ifs = format!("{}x{}", "{{ if true }}".repeat(2000), "{{ end }}".repeat(2000));
        assert!(matches!(Template::parse(&ifs), Err(TemplateError::Parse { .. })));

        let else_ifs = format!("{{{{ if false }}}}{}x{{{{ end }}}}", "{{ else if false }}".repeat(3000));
        assert!(matches!(Template::parse(&else_ifs), Err(TemplateError::Parse { .. })));

        // Within the limit, nesting works.
        let ok = format!("{}x{}", "{{ if true }}".repeat(MAX_DEPTH), "{{ end }}".repeat(MAX_DEPTH));
        assert_eq!(render(&ok), Ok("x".to_string()));

        // Output is capped even when the data is huge.
        let big = "v".repeat(MAX_OUTPUT_BYTES / 4 + 1);
        let t = Template::parse("{{ .TrustDomain }}{{ .TrustDomain }}{{ .TrustDomain }}{{ .TrustDomain }}").unwrap();
        assert!(matches!(t.render(&json!({ "TrustDomain": big })), Err(TemplateError::Exec { .. })));
    }

    #[test]
    fn template_go_float_formatting() {
        let cases = [
            (1.5, "1.5"),
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (1e21, "1e+21"),
            (0.00001, "1e-05"),
            (0.0001, "0.0001"),
            (-1.25, "-1.25"),
            (2.0, "2"),
            (123456789.0, "1.23456789e+08"),
            (0.0, "0"),
        ];
        for (x, want) in cases {
            assert_eq!(go_float(x), want, "{x}");
        }
    }

    #[test]
    fn template_go_quote() {
        let cases = [
            ("plain", "\"plain\""),
            ("a\"b\\c\n", "\"a\\\"b\\\\c\\n\""),
            ("\u{1}\u{7f}", "\"\\x01\\x7f\""),
            ("\u{85}é", "\"\\u0085é\""),
        ];
        for (s, want) in cases {
            assert_eq!(go_quote(s), want);
        }
    }

    /// Deterministic xorshift, so the fuzz corpus is reproducible without extra dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'x>(&mut self, from: &[&'x str]) -> &'x str {
            let i = (self.next() % from.len() as u64) as usize;
            from[i]
        }
    }

    const PIECES: &[&str] = &[
        "{{",
        "}}",
        "{{- ",
        " -}}",
        "{{-",
        "-}}",
        " ",
        "\n",
        "\t",
        ".",
        ".PodMeta",
        ".PodSpec",
        ".NodeMeta",
        ".Labels",
        ".app",
        ".Name",
        ".UID",
        ".Containers",
        ".Nope",
        "$",
        "$.",
        "(",
        ")",
        "|",
        "\"",
        "\"x\"",
        "`",
        "`r`",
        "'",
        "printf",
        "\"%s\"",
        "\"%d%v%q%\"",
        "print",
        "index",
        "len",
        "eq",
        "ne",
        "lt",
        "gt",
        "and",
        "or",
        "not",
        "if",
        "else",
        "end",
        "with",
        "range",
        "define",
        "nil",
        "true",
        "false",
        "0",
        "-1",
        "1.5",
        "1e9",
        "0x",
        "99999999999999999999",
        "/*",
        "*/",
        ":=",
        "=",
        ",",
        "#",
        "é",
        "\u{0}",
        "\\",
        "\\u12",
        "\\x",
        "{",
        "}",
        "-",
        "+",
        "_",
        "a",
    ];

    #[test]
    fn template_fuzz_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let d = data();
        let nil_pods = json!({"NodeMeta": null, "PodMeta": null});
        let mut rendered = 0usize;
        for _ in 0..5000 {
            let n = 1 + (rng.next() % 24) as usize;
            let mut src = String::new();
            for _ in 0..n {
                src.push_str(rng.pick(PIECES));
            }
            if let Ok(t) = Template::parse(&src) {
                let _ = t.roots();
                if t.render(&d).is_ok() {
                    rendered += 1;
                }
                let _ = t.render(&nil_pods);
                let _ = t.render(&json!([1, 2]));
            }
        }
        // Byte-level garbage, including every split of a multi-byte character's neighbourhood.
        for _ in 0..2000 {
            let n = (rng.next() % 40) as usize;
            let src: String = (0..n).map(|_| char::from_u32((rng.next() % 0x250) as u32).unwrap_or('x')).collect();
            if let Ok(t) = Template::parse(&src) {
                let _ = t.render(&d);
            }
        }
        assert!(rendered > 50, "the corpus should reach the renderer, rendered {rendered}");
    }
}
