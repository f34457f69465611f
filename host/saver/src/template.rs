//! Checkpoint names: Composer's format strings (`ep{epoch}-ba{batch}-rank{rank}.pt`).
//!
//! A [`Template`] is parsed once, when the config is loaded, so a malformed one is reported
//! with its column before training starts. Rendering follows Python's `str.format` with
//! Composer's partial formatting (reference §2.2): known variables take Python's format-spec
//! mini-language (`{epoch:03d}`, `{run_name:.2}`, `{total_wct}` printed as Python prints a
//! float), unknown names are kept as written (`{mlflow_run_id}`), positional fields become
//! `{}`, and `{{`/`}}` are escapes. Python-only oddities that Composer happens to allow on
//! unknown names (`{unknown!r}`, `{unknown[0]}`) are rejected instead.

use std::fmt::{self, Write};

use thiserror::Error;

use cairn_policy::{Ranks, Timestamp, float_repr};

/// A template that failed to parse, with the template and the 1-based column at fault.
#[derive(Clone, Debug, PartialEq, Error)]
#[error("invalid name template '{template}' at column {column}: {reason}")]
pub struct TemplateError {
    /// The template as written.
    pub template: String,
    /// 1-based character column of the problem.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

/// The variables a name can use (reference §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// `{run_name}`
    RunName,
    /// `{rank}`
    Rank,
    /// `{local_rank}`
    LocalRank,
    /// `{world_size}`
    WorldSize,
    /// `{local_world_size}`
    LocalWorldSize,
    /// `{node_rank}`
    NodeRank,
    /// `{epoch}`
    Epoch,
    /// `{batch}`
    Batch,
    /// `{batch_in_epoch}`
    BatchInEpoch,
    /// `{sample}`
    Sample,
    /// `{sample_in_epoch}`
    SampleInEpoch,
    /// `{token}`
    Token,
    /// `{token_in_epoch}`
    TokenInEpoch,
    /// `{total_wct}`
    TotalWct,
    /// `{epoch_wct}`
    EpochWct,
    /// `{batch_wct}`
    BatchWct,
}

impl Var {
    const ALL: [(&'static str, Var); 16] = [
        ("run_name", Var::RunName),
        ("rank", Var::Rank),
        ("local_rank", Var::LocalRank),
        ("world_size", Var::WorldSize),
        ("local_world_size", Var::LocalWorldSize),
        ("node_rank", Var::NodeRank),
        ("epoch", Var::Epoch),
        ("batch", Var::Batch),
        ("batch_in_epoch", Var::BatchInEpoch),
        ("sample", Var::Sample),
        ("sample_in_epoch", Var::SampleInEpoch),
        ("token", Var::Token),
        ("token_in_epoch", Var::TokenInEpoch),
        ("total_wct", Var::TotalWct),
        ("epoch_wct", Var::EpochWct),
        ("batch_wct", Var::BatchWct),
    ];

    fn from_name(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// The name inside the braces.
    pub fn name(self) -> &'static str {
        Var::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .expect("every Var is listed")
    }

    /// True for the variables that change as training advances.
    pub fn is_time(self) -> bool {
        !matches!(
            self,
            Var::RunName
                | Var::Rank
                | Var::LocalRank
                | Var::WorldSize
                | Var::LocalWorldSize
                | Var::NodeRank
        )
    }

    fn kind(self) -> ValueKind {
        match self {
            Var::RunName => ValueKind::Str,
            Var::TotalWct | Var::EpochWct | Var::BatchWct => ValueKind::Float,
            _ => ValueKind::Int,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    Int,
    Float,
    Str,
}

/// The values a template is rendered with.
#[derive(Clone, Debug)]
pub struct Vars<'a> {
    /// The run's name.
    pub run_name: &'a str,
    /// This process's ranks.
    pub ranks: Ranks,
    /// The time variables; `None` renders them as written (for names without time).
    pub timestamp: Option<&'a Timestamp>,
}

enum FieldValue<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Vars<'_> {
    fn value(&self, var: Var) -> Option<FieldValue<'_>> {
        let r = &self.ranks;
        let int = |v: u64| Some(FieldValue::Int(v as i64));
        match var {
            Var::RunName => Some(FieldValue::Str(self.run_name)),
            Var::Rank => int(r.rank.into()),
            Var::LocalRank => int(r.local_rank.into()),
            Var::WorldSize => int(r.world_size.into()),
            Var::LocalWorldSize => int(r.local_world_size.into()),
            Var::NodeRank => int(r.node_rank.into()),
            _ => {
                let ts = self.timestamp?;
                match var {
                    Var::Epoch => int(ts.epoch),
                    Var::Batch => int(ts.batch),
                    Var::BatchInEpoch => int(ts.batch_in_epoch),
                    Var::Sample => int(ts.sample),
                    Var::SampleInEpoch => int(ts.sample_in_epoch),
                    Var::Token => int(ts.token),
                    Var::TokenInEpoch => int(ts.token_in_epoch),
                    Var::TotalWct => Some(FieldValue::Float(ts.total_wct.as_secs_f64())),
                    Var::EpochWct => Some(FieldValue::Float(ts.epoch_wct.as_secs_f64())),
                    Var::BatchWct => Some(FieldValue::Float(ts.batch_wct.as_secs_f64())),
                    _ => unreachable!("dist variables handled above"),
                }
            }
        }
    }
}

/// A parsed name template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    /// A known variable with its conversion, attribute chain and format spec.
    Field {
        var: Var,
        conversion: Option<char>,
        attrs: Vec<String>,
        spec: Spec,
        raw: String,
    },
    /// An unknown name, kept as written (`{mlflow_run_id}`).
    Unknown(String),
    /// `{}` or `{0}`: Composer turns both into `{}`.
    Positional,
}

impl Template {
    /// Parse `source`, reporting the first problem with its column.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        Parser::new(source).run()
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The known variables the template uses.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field { var, .. } => Some(*var),
            _ => None,
        })
    }

    /// True when no time variable appears: every save would get the same name.
    pub fn is_constant_in_time(&self) -> bool {
        !self.vars().any(Var::is_time)
    }

    /// Render with `vars`.
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Unknown(raw) => out.push_str(raw),
                Part::Positional => out.push_str("{}"),
                Part::Field {
                    var,
                    conversion,
                    attrs,
                    spec,
                    raw,
                } => match vars.value(*var) {
                    Some(v) => render_field(&mut out, v, *conversion, attrs, spec),
                    None => out.push_str(raw),
                },
            }
        }
        out
    }

    /// A regex matching every name this template can render for the given dist variables:
    /// literals escaped, integer time variables as named `\d+` groups (Composer's overwrite
    /// scan, §12, with its metacharacter bug fixed). Returns the regex and the time variables
    /// in group order.
    pub fn match_regex(&self, vars: &Vars<'_>) -> (String, Vec<Var>) {
        let dist_only = Vars {
            timestamp: None,
            ..vars.clone()
        };
        let mut re = String::from("^");
        let mut groups = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => re.push_str(&regex::escape(s)),
                Part::Unknown(raw) => re.push_str(&regex::escape(raw)),
                Part::Positional => re.push_str(&regex::escape("{}")),
                Part::Field { var, .. } if var.is_time() => {
                    if var.kind() == ValueKind::Float {
                        re.push_str(r"[0-9.e+\-]+");
                    } else if groups.contains(var) {
                        re.push_str(r"\d+");
                    } else {
                        let _ = write!(re, r"(?P<{}>\d+)", var.name());
                        groups.push(*var);
                    }
                }
                Part::Field { .. } => {
                    let one = Template {
                        source: String::new(),
                        parts: vec![part.clone()],
                    };
                    re.push_str(&regex::escape(&one.render(&dist_only)));
                }
            }
        }
        re.push('$');
        (re, groups)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

struct Parser<'s> {
    source: &'s str,
    chars: Vec<char>,
    pos: usize,
    parts: Vec<Part>,
    literal: String,
}

impl<'s> Parser<'s> {
    fn new(source: &'s str) -> Self {
        Parser {
            source,
            chars: source.chars().collect(),
            pos: 0,
            parts: Vec::new(),
            literal: String::new(),
        }
    }

    fn error(&self, column: usize, reason: impl Into<String>) -> TemplateError {
        TemplateError {
            template: self.source.to_owned(),
            column: column + 1,
            reason: reason.into(),
        }
    }

    fn run(mut self) -> Result<Template, TemplateError> {
        while self.pos < self.chars.len() {
            let c = self.chars[self.pos];
            let next = self.chars.get(self.pos + 1).copied();
            match (c, next) {
                ('{', Some('{')) | ('}', Some('}')) => {
                    self.literal.push(c);
                    self.pos += 2;
                }
                ('}', _) => return Err(self.error(self.pos, "single '}' encountered")),
                ('{', _) => {
                    if !self.literal.is_empty() {
                        self.parts
                            .push(Part::Literal(std::mem::take(&mut self.literal)));
                    }
                    let part = self.field()?;
                    self.parts.push(part);
                }
                _ => {
                    self.literal.push(c);
                    self.pos += 1;
                }
            }
        }
        if !self.literal.is_empty() {
            self.parts.push(Part::Literal(self.literal));
        }
        Ok(Template {
            source: self.source.to_owned(),
            parts: self.parts,
        })
    }

    /// Parse one `{...}` field starting at `self.pos`.
    fn field(&mut self) -> Result<Part, TemplateError> {
        let start = self.pos;
        let mut depth = 0usize;
        let mut end = None;
        for i in start + 1..self.chars.len() {
            match self.chars[i] {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err(self.error(
                start,
                "'{' is never closed (write '{{' for a literal brace)",
            ));
        };
        let body: String = self.chars[start + 1..end].iter().collect();
        let raw: String = self.chars[start..=end].iter().collect();
        self.pos = end + 1;
        if body.contains('{') {
            return Err(self.error(start + 1, "nested fields are not supported in names"));
        }
        let (head, spec) = match body.find(':') {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body.as_str(), None),
        };
        let (head, conversion) = match head.find('!') {
            Some(i) => {
                let conv = &head[i + 1..];
                let mut it = conv.chars();
                match (it.next(), it.next()) {
                    (Some(c @ ('r' | 's' | 'a')), None) => (&head[..i], Some(c)),
                    _ => {
                        return Err(self.error(
                            start + 1 + i,
                            format!("unknown conversion '!{conv}' (expected !r, !s or !a)"),
                        ));
                    }
                }
            }
            None => (head, None),
        };
        let name_end = head.find(['.', '[']).unwrap_or(head.len());
        let name = &head[..name_end];
        let accessors = &head[name_end..];
        if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
            if conversion.is_some() || spec.is_some() || !accessors.is_empty() {
                return Err(self.error(start, "positional fields take no conversion or format"));
            }
            return Ok(Part::Positional);
        }
        let Some(var) = Var::from_name(name) else {
            if conversion.is_some() || spec.is_some() || !accessors.is_empty() {
                return Err(self.error(
                    start + 1,
                    format!(
                        "unknown variable '{name}' cannot take a conversion, attribute or format spec"
                    ),
                ));
            }
            return Ok(Part::Unknown(raw));
        };
        let attrs = self.attributes(var, accessors, start + 1 + name_end)?;
        let kind = if attrs.is_empty() {
            var.kind()
        } else {
            ValueKind::Int.max_kind(var.kind())
        };
        let spec = match spec {
            Some(s) => Spec::parse(s, kind).map_err(|reason| {
                self.error(start + 1 + body.find(':').unwrap_or(0) + 1, reason)
            })?,
            None => Spec::default(),
        };
        Ok(Part::Field {
            var,
            conversion,
            attrs,
            spec,
            raw,
        })
    }

    /// `.real`, `.imag`, `.numerator`, `.denominator` on numbers; nothing else.
    fn attributes(&self, var: Var, s: &str, column: usize) -> Result<Vec<String>, TemplateError> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        if s.starts_with('[') {
            return Err(self.error(column, format!("'{}' cannot be indexed", var.name())));
        }
        let mut attrs = Vec::new();
        for attr in s.split('.').skip(1) {
            let ok = match var.kind() {
                ValueKind::Int => matches!(attr, "real" | "imag" | "numerator" | "denominator"),
                ValueKind::Float => matches!(attr, "real" | "imag"),
                ValueKind::Str => false,
            };
            if !ok {
                return Err(self.error(
                    column,
                    format!("'{}' has no attribute '{attr}'", var.name()),
                ));
            }
            attrs.push(attr.to_owned());
        }
        Ok(attrs)
    }
}

impl ValueKind {
    /// The kind after an attribute access (all allowed attributes keep the numeric kind).
    fn max_kind(self, var_kind: ValueKind) -> ValueKind {
        match var_kind {
            ValueKind::Float => ValueKind::Float,
            _ => self,
        }
    }
}

fn render_field(
    out: &mut String,
    value: FieldValue<'_>,
    conversion: Option<char>,
    attrs: &[String],
    spec: &Spec,
) {
    let value = attrs
        .iter()
        .fold(value, |v, attr| match (v, attr.as_str()) {
            (FieldValue::Int(_), "imag") => FieldValue::Int(0),
            (FieldValue::Int(_), "denominator") => FieldValue::Int(1),
            (FieldValue::Float(_), "imag") => FieldValue::Float(0.0),
            (v, _) => v,
        });
    match (conversion, value) {
        (Some('r' | 'a'), FieldValue::Str(s)) => spec.format_str(out, &py_str_repr(s)),
        (Some(_), FieldValue::Int(i)) => spec.format_str(out, &i.to_string()),
        (Some(_), FieldValue::Float(x)) => spec.format_str(out, &float_repr(x)),
        (_, FieldValue::Str(s)) => spec.format_str(out, s),
        (None, FieldValue::Int(i)) => spec.format_int(out, i),
        (None, FieldValue::Float(x)) => spec.format_float(out, x),
    }
}

/// Python's `repr(str)` for printable strings.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's format-spec mini-language:
/// `[[fill]align][sign][z][#][0][width][grouping][.precision][type]`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Spec {
    fill: Option<char>,
    align: Option<char>,
    sign: Option<char>,
    alternate: bool,
    zero: bool,
    width: usize,
    grouping: Option<char>,
    precision: Option<usize>,
    ty: Option<char>,
}

impl Spec {
    fn parse(s: &str, kind: ValueKind) -> Result<Spec, String> {
        let c: Vec<char> = s.chars().collect();
        let mut i = 0;
        let mut spec = Spec::default();
        let is_align = |ch: char| matches!(ch, '<' | '>' | '^' | '=');
        if c.len() >= 2 && is_align(c[1]) {
            spec.fill = Some(c[0]);
            spec.align = Some(c[1]);
            i = 2;
        } else if !c.is_empty() && is_align(c[0]) {
            spec.align = Some(c[0]);
            i = 1;
        }
        if let Some(&ch @ ('+' | '-' | ' ')) = c.get(i) {
            spec.sign = Some(ch);
            i += 1;
        }
        if c.get(i) == Some(&'z') {
            i += 1;
        }
        if c.get(i) == Some(&'#') {
            spec.alternate = true;
            i += 1;
        }
        if c.get(i) == Some(&'0') {
            spec.zero = true;
            i += 1;
        }
        let digits = |i: &mut usize| {
            let start = *i;
            while c.get(*i).is_some_and(|d| d.is_ascii_digit()) {
                *i += 1;
            }
            (start < *i).then(|| c[start..*i].iter().collect::<String>().parse::<usize>())
        };
        if let Some(w) = digits(&mut i) {
            spec.width = w.map_err(|_| "width too large".to_string())?;
        }
        if let Some(&g @ (',' | '_')) = c.get(i) {
            spec.grouping = Some(g);
            i += 1;
        }
        if c.get(i) == Some(&'.') {
            i += 1;
            match digits(&mut i) {
                Some(p) => spec.precision = Some(p.map_err(|_| "precision too large".to_string())?),
                None => return Err("format specifier missing precision".into()),
            }
        }
        if let Some(&t) = c.get(i) {
            spec.ty = Some(t);
            i += 1;
        }
        if i != c.len() {
            return Err(format!("invalid format specifier '{s}'"));
        }
        spec.check(kind, s)?;
        Ok(spec)
    }

    fn check(&self, kind: ValueKind, s: &str) -> Result<(), String> {
        let ty = self.ty;
        let float_types = [
            Some('e'),
            Some('E'),
            Some('f'),
            Some('F'),
            Some('g'),
            Some('G'),
            Some('%'),
            Some('n'),
            None,
        ];
        let ok = match kind {
            ValueKind::Str => {
                matches!(ty, None | Some('s'))
                    && self.sign.is_none()
                    && !self.alternate
                    && self.grouping.is_none()
            }
            ValueKind::Int => {
                let int_type = matches!(ty, Some('b' | 'c' | 'd' | 'o' | 'x' | 'X' | 'n') | None);
                if int_type && self.precision.is_some() {
                    return Err(format!(
                        "precision not allowed in integer format specifier '{s}'"
                    ));
                }
                int_type || float_types.contains(&ty)
            }
            ValueKind::Float => float_types.contains(&ty),
        };
        if ok {
            Ok(())
        } else {
            let what = match kind {
                ValueKind::Str => "str",
                ValueKind::Int => "int",
                ValueKind::Float => "float",
            };
            Err(format!(
                "format specifier '{s}' does not apply to a value of type {what}"
            ))
        }
    }

    fn format_str(&self, out: &mut String, s: &str) {
        let s: String = match self.precision {
            Some(p) => s.chars().take(p).collect(),
            None => s.to_owned(),
        };
        self.pad(out, "", &s, '<');
    }

    fn format_int(&self, out: &mut String, i: i64) {
        let ty = self.ty.unwrap_or('d');
        if !matches!(ty, 'b' | 'c' | 'd' | 'o' | 'x' | 'X' | 'n') {
            return self.format_float(out, i as f64);
        }
        let mag = i.unsigned_abs();
        let (prefix, digits) = match ty {
            'b' => ("0b", format!("{mag:b}")),
            'o' => ("0o", format!("{mag:o}")),
            'x' => ("0x", format!("{mag:x}")),
            'X' => ("0X", format!("{mag:X}")),
            'c' => (
                "",
                char::from_u32(mag as u32)
                    .map(String::from)
                    .unwrap_or_default(),
            ),
            _ => ("", mag.to_string()),
        };
        let digits = self.group(&digits, if matches!(ty, 'd' | 'n') { 3 } else { 4 });
        let mut sign = self.sign_str(i < 0).to_owned();
        if self.alternate {
            sign.push_str(prefix);
        }
        self.pad(out, &sign, &digits, '>');
    }

    fn format_float(&self, out: &mut String, x: f64) {
        let neg = x.is_sign_negative();
        let a = x.abs();
        let body = if !a.is_finite() {
            let s = if a.is_nan() { "nan" } else { "inf" };
            if matches!(self.ty, Some('E' | 'F' | 'G')) {
                s.to_uppercase()
            } else {
                s.to_owned()
            }
        } else {
            match self.ty {
                Some('f' | 'F') => format!("{:.*}", self.precision.unwrap_or(6), a),
                Some('%') => format!("{:.*}%", self.precision.unwrap_or(6), a * 100.0),
                Some(e @ ('e' | 'E')) => sci(a, self.precision.unwrap_or(6), e == 'E'),
                Some(g @ ('g' | 'G' | 'n')) => general(
                    a,
                    self.precision.unwrap_or(6),
                    g == 'G',
                    self.alternate,
                    false,
                ),
                _ => match self.precision {
                    None => float_repr(a),
                    Some(p) => general(a, p, false, self.alternate, true),
                },
            }
        };
        let body = match body.find(['.', 'e', 'E', '%']) {
            Some(i) if a.is_finite() => format!("{}{}", self.group(&body[..i], 3), &body[i..]),
            _ if a.is_finite() => self.group(&body, 3),
            _ => body,
        };
        self.pad(out, self.sign_str(neg && !x.is_nan()), &body, '>');
    }

    fn sign_str(&self, negative: bool) -> &'static str {
        match (negative, self.sign) {
            (true, _) => "-",
            (false, Some('+')) => "+",
            (false, Some(' ')) => " ",
            _ => "",
        }
    }

    fn group(&self, digits: &str, every: usize) -> String {
        let Some(sep) = self.grouping else {
            return digits.to_owned();
        };
        let n = digits.len();
        let mut out = String::with_capacity(n + n / every);
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (n - i).is_multiple_of(every) {
                out.push(sep);
            }
            out.push(ch);
        }
        out
    }

    fn pad(&self, out: &mut String, sign: &str, body: &str, default_align: char) {
        let len = sign.chars().count() + body.chars().count();
        let (fill, align) = match (self.zero, self.align) {
            (true, None) => (self.fill.unwrap_or('0'), '='),
            (_, a) => (self.fill.unwrap_or(' '), a.unwrap_or(default_align)),
        };
        let pad = self.width.saturating_sub(len);
        let fills = |n: usize| std::iter::repeat_n(fill, n).collect::<String>();
        match align {
            '<' => {
                out.push_str(sign);
                out.push_str(body);
                out.push_str(&fills(pad));
            }
            '^' => {
                out.push_str(&fills(pad / 2));
                out.push_str(sign);
                out.push_str(body);
                out.push_str(&fills(pad - pad / 2));
            }
            '=' => {
                out.push_str(sign);
                out.push_str(&fills(pad));
                out.push_str(body);
            }
            _ => {
                out.push_str(&fills(pad));
                out.push_str(sign);
                out.push_str(body);
            }
        }
    }
}

/// `'e'` formatting: `d.ddde+XX`.
fn sci(a: f64, precision: usize, upper: bool) -> String {
    let s = format!("{:.*e}", precision, a);
    let (m, e) = s.split_once('e').expect("{:e} has an exponent");
    let e: i32 = e.parse().expect("exponent");
    let out = format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    if upper { out.to_uppercase() } else { out }
}

/// `'g'` formatting (and the type-less form with a precision when `repr_like`).
fn general(a: f64, precision: usize, upper: bool, alternate: bool, repr_like: bool) -> String {
    let p = precision.max(1);
    let rounded = format!("{:.*e}", p - 1, a);
    let exp: i32 = rounded
        .split_once('e')
        .expect("exponent")
        .1
        .parse()
        .expect("exponent");
    // The type-less form switches to scientific one digit earlier than 'g' does.
    let limit = if repr_like { p as i32 - 1 } else { p as i32 };
    let use_sci = exp < -4 || exp >= limit;
    let mut s = if use_sci {
        sci(a, p - 1, upper)
    } else {
        format!("{:.*}", (p as i32 - 1 - exp).max(0) as usize, a)
    };
    if !alternate {
        s = strip_zeros(&s);
    }
    if repr_like && !use_sci && !s.contains('.') {
        s.push_str(".0");
    }
    s
}

fn strip_zeros(s: &str) -> String {
    let (m, e) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let m = if m.contains('.') {
        m.trim_end_matches('0').trim_end_matches('.')
    } else {
        m
    };
    format!("{m}{e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts() -> Timestamp {
        Timestamp {
            epoch: 1,
            batch: 42,
            total_wct: Duration::from_secs_f64(12.5),
            ..Timestamp::default()
        }
    }

    fn render(t: &str) -> String {
        let ts = ts();
        let vars = Vars {
            run_name: "run",
            ranks: Ranks::default(),
            timestamp: Some(&ts),
        };
        Template::parse(t)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .render(&vars)
    }

    /// Reference §2.2, every row that is not a Python-only oddity.
    #[test]
    fn composer_partial_format_vectors() {
        let cases = [
            ("ep{epoch}-ba{batch}-rank{rank}.pt", "ep1-ba42-rank0.pt"),
            ("ep{epoch:03d}-ba{batch:06d}.pt", "ep001-ba000042.pt"),
            ("{epoch:>5}", "    1"),
            ("{total_wct}", "12.5"),
            ("{total_wct:.1f}", "12.5"),
            ("{run_name:.2}", "ru"),
            ("{epoch!r}", "1"),
            ("{epoch.real}", "1"),
            ("{unknown}/ep{epoch}", "{unknown}/ep1"),
            ("{run_name}/{mlflow_run_id}/x", "run/{mlflow_run_id}/x"),
            ("{{literal}}-{epoch}", "{literal}-1"),
            ("{0}-{epoch}", "{}-1"),
            ("{}-{epoch}", "{}-1"),
            ("{ epoch }", "{ epoch }"),
        ];
        for (t, want) in cases {
            assert_eq!(render(t), want, "{t}");
        }
    }

    #[test]
    fn composer_errors_are_rejected_with_a_column() {
        for (t, col) in [
            ("{epoch}{", 8),
            ("ep{epoch", 3),
            ("a}b", 2),
            ("{unknown:03d}", 2),
            ("{unknown.attr}", 2),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert_eq!(e.column, col, "{t}: {e}");
            assert!(e.to_string().contains(t), "{e}");
        }
        // Python-only oddities on unknown names are refused rather than reproduced.
        assert!(Template::parse("{unknown!r}").is_err());
        assert!(Template::parse("{unknown[0]}").is_err());
        assert!(Template::parse("{epoch:.2d}").is_err());
        assert!(Template::parse("{run_name:d}").is_err());
        assert!(Template::parse("{epoch.foo}").is_err());
    }

    #[test]
    fn python_float_printing() {
        let t = Timestamp {
            total_wct: Duration::from_secs(36000),
            epoch_wct: Duration::from_secs(3000),
            batch_wct: Duration::from_secs(5),
            ..Timestamp::default()
        };
        let vars = Vars {
            run_name: "r",
            ranks: Ranks::default(),
            timestamp: Some(&t),
        };
        let r = |s: &str| Template::parse(s).unwrap().render(&vars);
        assert_eq!(
            r("{total_wct}-{epoch_wct}-{batch_wct}"),
            "36000.0-3000.0-5.0"
        );
        assert_eq!(r("{total_wct:e}"), "3.600000e+04");
        assert_eq!(r("{total_wct:g}"), "36000");
        assert_eq!(r("{total_wct:.2g}"), "3.6e+04");
        assert_eq!(r("{total_wct:,.1f}"), "36,000.0");
        assert_eq!(r("{total_wct:.3}"), "3.6e+04");
        assert_eq!(r("{batch_wct:.3}"), "5.0");
    }

    #[test]
    fn python_int_and_str_specs() {
        assert_eq!(
            render("{batch:x}|{batch:#b}|{batch:+d}|{batch:<5}|{batch:^6}|{batch:*>4}"),
            "2a|0b101010|+42|42   |  42  |**42"
        );
        assert_eq!(render("{batch:08.2f}"), "00042.00");
        assert_eq!(render("{batch:,}"), "42");
        assert_eq!(
            render("{run_name:>5}|{run_name!r}|{run_name:^7}"),
            "  run|'run'|  run  "
        );
        assert_eq!(render("{batch:%}"), "4200.000000%");
    }

    #[test]
    fn names_without_time_render_time_fields_as_written() {
        let vars = Vars {
            run_name: "r",
            ranks: Ranks::default(),
            timestamp: None,
        };
        let t = Template::parse("{run_name}/ep{epoch}-rank{rank}").unwrap();
        assert_eq!(t.render(&vars), "r/ep{epoch}-rank0");
        assert!(!t.is_constant_in_time());
        assert!(
            Template::parse("latest-rank{rank}.pt")
                .unwrap()
                .is_constant_in_time()
        );
    }

    #[test]
    fn match_regex_escapes_literals_and_captures_counters() {
        let vars = Vars {
            run_name: "r",
            ranks: Ranks::default(),
            timestamp: None,
        };
        let (re, groups) = Template::parse("ep{epoch:03d}-ba{batch}-rank{rank}.pt")
            .unwrap()
            .match_regex(&vars);
        let re = regex::Regex::new(&re).unwrap();
        let caps = re.captures("ep001-ba5-rank0.pt").unwrap();
        assert_eq!((&caps["epoch"], &caps["batch"]), ("001", "5"));
        assert!(!re.is_match("ep1-ba5-rank0Xpt"));
        assert!(!re.is_match("ep1-ba5-rank1.pt"));
        assert_eq!(groups, vec![Var::Epoch, Var::Batch]);
    }
}
