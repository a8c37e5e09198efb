//! Where a key is in the config text, for error messages: `toml` gives an error's byte span,
//! these turn it into a line, a column and the dotted key path.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Line and column, both 1-based (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub fn of(text: &str, offset: usize) -> Self {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The dotted path of the innermost key whose name or value covers `offset`
/// (`storage.queue_capacity`, `policy.allow_read[1]`).
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, String)> = None;
    walk_table(doc.get_ref(), &mut String::new(), 0, offset, &mut best);
    best.map(|(_, path)| path)
}

fn walk_table(
    table: &DeTable<'_>,
    path: &mut String,
    depth: usize,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        let here = covers(&key.span(), offset) || covers(&value.span(), offset);
        consider(here, path, depth, best);
        walk_value(value, path, depth + 1, offset, best);
        path.truncate(len);
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    path: &mut String,
    depth: usize,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, path, depth, offset, best),
        DeValue::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                consider(covers(&element.span(), offset), path, depth, best);
                walk_value(element, path, depth + 1, offset, best);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn consider(here: bool, path: &str, depth: usize, best: &mut Option<(usize, String)>) {
    if here && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
        *best = Some((depth, path.to_owned()));
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Where the key at `path` is written; when it is not in the file (a default), where its
/// nearest enclosing table is.
pub fn find_key(text: &str, path: &[&str]) -> Option<Location> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for segment in path {
        let Some((key, value)) = table.iter().find(|(key, _)| key.get_ref() == segment) else {
            break;
        };
        found = Some(key.span().start);
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found.map(|offset| Location::of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "region = \"x\"\n[storage]\nqueue_capacity = 0\n\n[policy]\nallow_read = [\"/proc\", \"rel\"]\n";

    #[test]
    fn offsets_become_lines_and_keys() {
        let at = TEXT.find("0\n").expect("value");
        assert_eq!(
            Location::of(TEXT, at),
            Location {
                line: 3,
                column: 18
            }
        );
        assert_eq!(key_at(TEXT, at).as_deref(), Some("storage.queue_capacity"));
        let at = TEXT.find("\"rel\"").expect("element");
        assert_eq!(key_at(TEXT, at).as_deref(), Some("policy.allow_read[1]"));
        assert_eq!(key_at(TEXT, 0).as_deref(), Some("region"));
    }

    #[test]
    fn keys_are_found_or_their_table() {
        assert_eq!(
            find_key(TEXT, &["storage", "queue_capacity"]),
            Some(Location { line: 3, column: 1 })
        );
        // Not in the file: the enclosing table's header.
        assert_eq!(
            find_key(TEXT, &["storage", "local"]).map(|l| l.line),
            Some(2)
        );
        assert_eq!(find_key(TEXT, &["http", "listen"]), None);
    }
}
