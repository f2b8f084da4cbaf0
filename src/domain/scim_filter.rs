//! SCIM filter expressions (RFC 7644 §3.4.2.2): parsed into a tree, then evaluated against a
//! resource through a lookup the caller provides, so the attribute names a resource type
//! knows (and their case rules) stay with that resource type.
//!
//! Supported: `eq ne co sw ew gt ge lt le pr`, `and`, `or`, `not (…)`, grouping parentheses,
//! string / boolean / null / number values, attribute paths with an optional schema URN
//! prefix and one sub-attribute (`name.givenName`). Not supported: value paths
//! (`emails[type eq "work"]`), which are refused as an invalid filter.

use std::fmt;

/// A filter that did not parse, with a message for the `detail` of an `invalidFilter` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Bool(bool),
    Num(f64),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        path: String,
        op: Op,
        value: Literal,
    },
    Present(String),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

/// What a resource holds at an attribute path: its values (several for multi-valued
/// attributes such as `emails.value`) and whether string comparison is case-exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub values: Vec<Literal>,
    pub case_exact: bool,
}

impl Filter {
    /// Every attribute path the filter names, lower-cased, without schema prefix: for the
    /// caller to refuse paths its resource type does not know.
    pub fn paths(&self) -> Vec<String> {
        match self {
            Filter::Compare { path, .. } | Filter::Present(path) => vec![path.clone()],
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut v = a.paths();
                v.extend(b.paths());
                v
            }
            Filter::Not(f) => f.paths(),
        }
    }

    /// Whether a resource matches; `lookup` gets a lower-cased path and returns `None` for an
    /// attribute the resource has no value for.
    pub fn matches(&self, lookup: &dyn Fn(&str) -> Option<Attribute>) -> bool {
        match self {
            Filter::And(a, b) => a.matches(lookup) && b.matches(lookup),
            Filter::Or(a, b) => a.matches(lookup) || b.matches(lookup),
            Filter::Not(f) => !f.matches(lookup),
            Filter::Present(path) => lookup(path).is_some_and(|a| {
                a.values
                    .iter()
                    .any(|v| !matches!(v, Literal::Null) && *v != Literal::Str(String::new()))
            }),
            Filter::Compare { path, op, value } => {
                let Some(attr) = lookup(path) else {
                    // An absent attribute equals null and nothing else (RFC 7644 §3.4.2.2).
                    return match (op, value) {
                        (Op::Eq, Literal::Null) => true,
                        (Op::Ne, Literal::Null) => false,
                        (Op::Ne, _) => true,
                        _ => false,
                    };
                };
                attr.values
                    .iter()
                    .any(|v| compare(v, *op, value, attr.case_exact))
            }
        }
    }
}

fn compare(have: &Literal, op: Op, want: &Literal, case_exact: bool) -> bool {
    match (have, want) {
        (Literal::Str(h), Literal::Str(w)) => {
            let (h, w) = if case_exact {
                (h.clone(), w.clone())
            } else {
                (h.to_lowercase(), w.to_lowercase())
            };
            match op {
                Op::Eq => h == w,
                Op::Ne => h != w,
                Op::Co => h.contains(&w),
                Op::Sw => h.starts_with(&w),
                Op::Ew => h.ends_with(&w),
                Op::Gt => h > w,
                Op::Ge => h >= w,
                Op::Lt => h < w,
                Op::Le => h <= w,
            }
        }
        (Literal::Bool(h), Literal::Bool(w)) => match op {
            Op::Eq => h == w,
            Op::Ne => h != w,
            _ => false,
        },
        (Literal::Num(h), Literal::Num(w)) => match op {
            Op::Eq => h == w,
            Op::Ne => h != w,
            Op::Gt => h > w,
            Op::Ge => h >= w,
            Op::Lt => h < w,
            Op::Le => h <= w,
            _ => false,
        },
        (Literal::Null, Literal::Null) => op == Op::Eq,
        (_, _) => op == Op::Ne,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    Bracket,
}

fn tokenize(input: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            '[' | ']' => {
                chars.next();
                out.push(Token::Bracket);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(e) => s.push(e),
                            None => break,
                        },
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err(FilterError("a string value is not closed with `\"`".into()));
                }
                out.push(Token::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

/// Parses a filter; at most this many bytes, so a request cannot make the server recurse deeply.
pub const MAX_FILTER_LEN: usize = 4096;

pub fn parse(input: &str) -> Result<Filter, FilterError> {
    if input.len() > MAX_FILTER_LEN {
        return Err(FilterError(format!(
            "the filter is longer than {MAX_FILTER_LEN} bytes"
        )));
    }
    let tokens = tokenize(input)?;
    if tokens.contains(&Token::Bracket) {
        return Err(FilterError(
            "value paths (`attr[...]`) are not supported: filter on `emails.value` instead".into(),
        ));
    }
    let mut p = Parser { tokens, at: 0 };
    let f = p.or(0)?;
    if p.at != p.tokens.len() {
        return Err(FilterError(format!(
            "unexpected `{}` after a complete filter",
            p.describe(p.at)
        )));
    }
    Ok(f)
}

fn keyword(t: Option<&Token>, k: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(k))
}

impl Parser {
    fn describe(&self, i: usize) -> String {
        match self.tokens.get(i) {
            Some(Token::Word(w)) => w.clone(),
            Some(Token::Str(s)) => format!("\"{s}\""),
            Some(Token::Open) => "(".into(),
            Some(Token::Close) => ")".into(),
            Some(Token::Bracket) => "[".into(),
            None => "end of filter".into(),
        }
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.and(depth)?;
        while keyword(self.tokens.get(self.at), "or") {
            self.at += 1;
            let right = self.and(depth)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.unary(depth)?;
        while keyword(self.tokens.get(self.at), "and") {
            self.at += 1;
            let right = self.unary(depth)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn group(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > 32 {
            return Err(FilterError("the filter nests too deeply".into()));
        }
        if self.tokens.get(self.at) != Some(&Token::Open) {
            return Err(FilterError(format!(
                "expected `(`, found `{}`",
                self.describe(self.at)
            )));
        }
        self.at += 1;
        let f = self.or(depth + 1)?;
        if self.tokens.get(self.at) != Some(&Token::Close) {
            return Err(FilterError(format!(
                "expected `)`, found `{}`",
                self.describe(self.at)
            )));
        }
        self.at += 1;
        Ok(f)
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if keyword(self.tokens.get(self.at), "not") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.group(depth)?)));
        }
        if self.tokens.get(self.at) == Some(&Token::Open) {
            return self.group(depth);
        }
        let path = match self.tokens.get(self.at) {
            Some(Token::Word(w)) => attr_path(w)?,
            _ => {
                return Err(FilterError(format!(
                    "expected an attribute name, found `{}`",
                    self.describe(self.at)
                )));
            }
        };
        self.at += 1;
        let op = match self.tokens.get(self.at) {
            Some(Token::Word(w)) => w.to_ascii_lowercase(),
            _ => {
                return Err(FilterError(format!(
                    "expected an operator after `{path}`, found `{}`",
                    self.describe(self.at)
                )));
            }
        };
        self.at += 1;
        if op == "pr" {
            return Ok(Filter::Present(path));
        }
        let op = match op.as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => {
                return Err(FilterError(format!(
                    "`{other}` is not a filter operator (eq ne co sw ew gt ge lt le pr)"
                )));
            }
        };
        let value = match self.tokens.get(self.at) {
            Some(Token::Str(s)) => Literal::Str(s.clone()),
            Some(Token::Word(w)) if w == "true" => Literal::Bool(true),
            Some(Token::Word(w)) if w == "false" => Literal::Bool(false),
            Some(Token::Word(w)) if w == "null" => Literal::Null,
            Some(Token::Word(w)) => Literal::Num(w.parse().map_err(|_| {
                FilterError(format!(
                    "`{w}` is not a value: quote strings, or use true, false, null or a number"
                ))
            })?),
            _ => {
                return Err(FilterError(format!(
                    "expected a value after `{path}`, found `{}`",
                    self.describe(self.at)
                )));
            }
        };
        self.at += 1;
        Ok(Filter::Compare { path, op, value })
    }
}

/// Lower-cases a path and drops a schema URN prefix (`urn:…:User:userName` → `username`).
fn attr_path(raw: &str) -> Result<String, FilterError> {
    let path = if raw.to_ascii_lowercase().starts_with("urn:") {
        raw.rsplit_once(':').map_or(raw, |(_, p)| p)
    } else {
        raw
    };
    let valid = !path.is_empty()
        && path.split('.').count() <= 2
        && path.split('.').all(|part| {
            let mut c = part.chars();
            matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic())
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '$')
        });
    if valid {
        Ok(path.to_ascii_lowercase())
    } else {
        Err(FilterError(format!("`{raw}` is not an attribute path")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(path: &str) -> Option<Attribute> {
        let s = |v: &str, case_exact| {
            Some(Attribute {
                values: vec![Literal::Str(v.into())],
                case_exact,
            })
        };
        match path {
            "username" => s("Ada@Example.com", false),
            "externalid" => s("ext-1", true),
            "active" => Some(Attribute {
                values: vec![Literal::Bool(true)],
                case_exact: true,
            }),
            "emails.value" => Some(Attribute {
                values: vec![
                    Literal::Str("ada@example.com".into()),
                    Literal::Str("ada@home.example".into()),
                ],
                case_exact: false,
            }),
            _ => None,
        }
    }

    fn m(f: &str) -> bool {
        parse(f).unwrap().matches(&user)
    }

    #[test]
    fn equality_respects_each_attributes_case_rule() {
        assert!(m(r#"userName eq "ada@example.com""#));
        assert!(m(r#"USERNAME EQ "ADA@EXAMPLE.COM""#));
        assert!(m(r#"externalId eq "ext-1""#));
        assert!(!m(r#"externalId eq "EXT-1""#));
        assert!(m(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "ada@example.com""#
        ));
    }

    #[test]
    fn operators_logic_and_grouping() {
        assert!(m(r#"userName sw "ada" and active eq true"#));
        assert!(!m(r#"userName sw "bob" and active eq true"#));
        assert!(m(r#"userName sw "bob" or active eq true"#));
        assert!(m(r#"not (userName co "bob")"#));
        assert!(m(r#"(userName ew ".com") and (externalId pr)"#));
        assert!(m(r#"emails.value eq "ada@home.example""#));
        assert!(m(r#"title eq null"#));
        assert!(!m(r#"title pr"#));
        assert!(m(r#"userName gt "a" and userName lt "b""#));
        assert!(m(r#"active ne false"#));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let f = parse(r#"a eq "1" or b eq "2" and c eq "3""#).unwrap();
        assert!(matches!(f, Filter::Or(_, ref r) if matches!(**r, Filter::And(_, _))));
        assert_eq!(f.paths(), vec!["a", "b", "c"]);
    }

    #[test]
    fn malformed_filters_are_refused_with_a_reason() {
        for bad in [
            "",
            "userName",
            "userName eq",
            r#"userName xx "a""#,
            r#"userName eq "a"#,
            r#"(userName eq "a""#,
            r#"userName eq "a" extra"#,
            r#"userName eq bareword"#,
            r#"emails[type eq "work"]"#,
            r#"1abc eq "a""#,
            r#"not userName eq "a""#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}a pr{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).is_err());
        assert!(parse(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
    }
}
