//! The one home for quoting. Every identifier and literal that reaches SQL goes through the types here,
//! whose `Display` is always safely quoted (built on `postgres_protocol::escape`).

use std::fmt;

/// PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes; we refuse them instead.
pub const MAX_IDENT_BYTES: usize = 63;

/// An identifier, stored unquoted (as the catalog spells it); displays double-quoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    /// An identifier exactly as the catalog spells it (no case folding).
    pub fn new(name: impl Into<String>) -> Self {
        Ident(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses one identifier as written in SQL: `Foo` folds to `foo`, `"Foo"` keeps its case.
    pub fn parse(text: &str) -> Result<Ident, String> {
        let mut parts = parse_name_parts(text)?;
        if parts.len() != 1 {
            return Err(format!("{text:?} is not a single identifier"));
        }
        Ok(parts.remove(0))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&postgres_protocol::escape::escape_identifier(&self.0))
    }
}

/// A schema-qualified relation name; displays as `"schema"."name"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualName {
    pub schema: Ident,
    pub name: Ident,
}

impl QualName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualName {
            schema: Ident::new(schema),
            name: Ident::new(name),
        }
    }

    /// Parses `name`, `schema.name` or quoted forms as written in SQL. Unqualified names are in `public`.
    pub fn parse(text: &str) -> Result<QualName, String> {
        let mut parts = parse_name_parts(text)?;
        match parts.len() {
            1 => Ok(QualName {
                schema: Ident::new("public"),
                name: parts.remove(0),
            }),
            2 => {
                let name = parts.remove(1);
                Ok(QualName {
                    schema: parts.remove(0),
                    name,
                })
            }
            _ => Err(format!(
                "{text:?} has {} parts: write schema.table",
                parts.len()
            )),
        }
    }
}

impl QualName {
    /// `schema.name` as the catalog spells them, unquoted: for labels and reading, never for SQL.
    pub fn plain(&self) -> String {
        format!("{}.{}", self.schema.as_str(), self.name.as_str())
    }
}

impl fmt::Display for QualName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl serde::Serialize for QualName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A string literal; displays single-quoted with `E''` escaping where needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Literal<'a>(pub &'a str);

impl fmt::Display for Literal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&postgres_protocol::escape::escape_literal(self.0))
    }
}

/// A type as `format_type()` printed it on a node whose `search_path` is `pg_catalog` (so user types come
/// back schema-qualified and already quoted). It is server output, never user input, and is pasted as is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SqlType(pub String);

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits a possibly qualified SQL name into identifiers, folding unquoted parts to lower case.
fn parse_name_parts(text: &str) -> Result<Vec<Ident>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("{text:?} has an unclosed double quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return Err(format!(
                        "{text:?} is not a valid name: quote names with spaces or quotes, as in SQL"
                    ));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("{text:?} has an empty name part"));
        }
        if part.len() > MAX_IDENT_BYTES {
            return Err(format!(
                "{text:?}: identifier {part:?} is longer than {MAX_IDENT_BYTES} bytes"
            ));
        }
        parts.push(Ident(part));
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("{text:?}: unexpected {c:?} after a quoted name")),
        }
    }
}

/// Dollar-quotes a function body with a tag that does not occur in it, so that no identifier inside
/// (which may contain anything, `$pgtwin$` included) can end the string early.
pub fn dollar_quote(body: &str) -> String {
    let mut tag = "$pgtwin$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pgtwin{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// Joins displayable items with ", " — column lists and the like.
pub fn comma_list<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_escaped() {
        assert_eq!(Ident::new("id").to_string(), r#""id""#);
        assert_eq!(Ident::new(r#"a"b"#).to_string(), r#""a""b""#);
        assert_eq!(Ident::new("Weird Case").to_string(), r#""Weird Case""#);
        assert_eq!(Ident::new("ünï").to_string(), r#""ünï""#);
        assert_eq!(
            Ident::new("x'); drop table t; --").to_string(),
            r#""x'); drop table t; --""#
        );
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(Literal("abc").to_string(), "'abc'");
        assert_eq!(Literal("it's").to_string(), "'it''s'");
        assert_eq!(Literal(r"a\b").to_string(), r" E'a\\b'");
    }

    #[test]
    fn names_parse_like_sql() {
        assert_eq!(
            QualName::parse("products").unwrap(),
            QualName::new("public", "products")
        );
        assert_eq!(
            QualName::parse("Inventory.Products").unwrap(),
            QualName::new("inventory", "products")
        );
        assert_eq!(
            QualName::parse(r#""Sales Data"."Order Items""#).unwrap(),
            QualName::new("Sales Data", "Order Items")
        );
        assert_eq!(
            QualName::parse(r#"s."a""b.c""#).unwrap(),
            QualName::new("s", r#"a"b.c"#)
        );
        assert!(QualName::parse("a.b.c").is_err());
        assert!(QualName::parse("a b").is_err());
        assert!(QualName::parse(r#""open"#).is_err());
        assert!(QualName::parse("").is_err());
        assert!(QualName::parse(&"x".repeat(64)).is_err());
        assert_eq!(
            Ident::parse(r#""Order Id""#).unwrap(),
            Ident::new("Order Id")
        );
    }

    #[test]
    fn dollar_quote_picks_an_unused_tag() {
        assert_eq!(dollar_quote("x"), "$pgtwin$x$pgtwin$");
        assert_eq!(
            dollar_quote("a $pgtwin$ b"),
            "$pgtwin1$a $pgtwin$ b$pgtwin1$"
        );
    }

    #[test]
    fn qualified_names_display_quoted() {
        assert_eq!(
            QualName::new("Sales Data", "select").to_string(),
            r#""Sales Data"."select""#
        );
    }
}
