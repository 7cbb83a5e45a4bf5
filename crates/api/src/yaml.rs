//! YAML (and JSON, which is YAML) text to JSON values that remember their lines.
//!
//! Documents are split on `---` separator lines the way `kubectl` splits them, so a
//! broken document does not hide the good ones around it. Each document is parsed by
//! `saphyr` (YAML 1.2, duplicate keys rejected, alias expansion bounded) into a tree with
//! source spans, then turned into a `serde_json::Value` plus an index from field path to
//! line, which is what diagnostics point at.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

use crate::path::{FieldPath, Segment};

/// Deepest nesting accepted; deeper input is refused rather than risking the stack.
pub const MAX_DEPTH: usize = 128;

/// One YAML document of a stream.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document as JSON.
    pub value: Value,
    /// The line each field path starts on.
    pub lines: LineIndex,
    /// The first line of the document's content.
    pub line: usize,
}

/// A document that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// 1-based line in the whole stream.
    pub line: usize,
    /// What the parser said.
    pub message: String,
}

/// From field path to the line it starts on.
///
/// Held compactly, as a resource keeps it until it is validated: every path encoded into
/// one string (a segment is a tag, its text and an end mark), with where each path ends and
/// its line. A resource has few paths, so a lookup is a scan. Map keys and object fields
/// are both YAML mapping keys and are encoded alike.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    paths: String,
    /// `(end of the path in paths, line)`, in the order the paths were recorded.
    entries: Vec<(u32, u32)>,
}

/// Ends each encoded segment.
const END: char = '\u{1f}';

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let encoded = encode(path);
        let mut current = encoded.as_str();
        loop {
            if let Some(line) = self.get(current) {
                return Some(line);
            }
            if current.is_empty() {
                return None;
            }
            // One segment up: back to the end of the previous segment, or the root.
            let inner = &current[..current.len() - END.len_utf8()];
            current = inner.rfind(END).map_or("", |i| &current[..i + END.len_utf8()]);
        }
    }

    /// The index of the subtree under `prefix`, re-rooted there (used for `List` items).
    pub fn subtree(&self, prefix: &FieldPath) -> LineIndex {
        let prefix = encode(prefix);
        let mut out = LineIndex::default();
        for (path, line) in self.iter() {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                out.record(rest, line);
            }
        }
        out.shrink();
        out
    }

    fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        let mut start = 0;
        self.entries.iter().map(move |&(end, line)| {
            let path = self.paths.get(start..end as usize).unwrap_or("");
            start = end as usize;
            (path, line as usize)
        })
    }

    fn get(&self, encoded: &str) -> Option<usize> {
        self.iter().find(|(path, _)| *path == encoded).map(|(_, line)| line)
    }

    fn record(&mut self, encoded: &str, line: usize) {
        self.paths.push_str(encoded);
        let end = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
        self.entries.push((end, u32::try_from(line).unwrap_or(u32::MAX)));
    }

    fn shrink(&mut self) {
        self.paths.shrink_to_fit();
        self.entries.shrink_to_fit();
    }
}

fn encode(path: &FieldPath) -> String {
    let mut out = String::new();
    for segment in path.segments() {
        match segment {
            Segment::Field(name) | Segment::Key(name) => push_name(&mut out, name),
            Segment::Index(i) => push_index(&mut out, *i),
        }
    }
    out
}

fn push_name(encoded: &mut String, name: &str) {
    encoded.push('.');
    encoded.push_str(name);
    encoded.push(END);
}

fn push_index(encoded: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(encoded, "#{i}{END}");
}

/// Splits a stream into documents and parses each as it is taken, so that a large stream
/// is never held whole as JSON. Empty documents are skipped.
pub fn parse_stream(text: &str) -> impl Iterator<Item = Result<Document, SyntaxError>> + '_ {
    split_documents(text)
        .into_iter()
        .filter(|(_, chunk)| chunk.lines().any(|l| !is_blank_or_comment(l)))
        .map(|(first_line, chunk)| parse_document(chunk, first_line))
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t == "..."
}

/// `(first line number, text)` for each document, split on `---` lines.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        if content == "---" || content.starts_with("--- ") || content.starts_with("---\t") {
            docs.push((start_line, &text[start..offset]));
            // The separator line may carry content (`--- {a: 1}`); keep it in the next document.
            start = offset + 3;
            start_line = i + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

fn parse_document(chunk: &str, first_line: usize) -> Result<Document, SyntaxError> {
    let shift = first_line - 1;
    let nodes = MarkedYaml::load_from_str(chunk).map_err(|e| SyntaxError {
        // The parser reports errors at the end of input on the line after the last one.
        line: (e.marker().line() + shift).min(last_line(chunk, first_line)),
        message: e.info().to_owned(),
    })?;
    let Some(root) = nodes.into_iter().next() else {
        return Ok(Document { value: Value::Null, lines: LineIndex::default(), line: first_line });
    };
    let mut lines = LineIndex::default();
    let line = root.span.start.line() + shift;
    lines.record("", line);
    let value = convert(&root, &mut String::new(), shift, &mut lines, 0)?;
    lines.shrink();
    Ok(Document { value, lines, line })
}

/// The last line of `chunk` that has content, counting breaks as YAML does (LF, CRLF, CR).
fn last_line(chunk: &str, first_line: usize) -> usize {
    let trimmed = chunk.trim_end_matches(['\n', '\r']);
    let breaks = trimmed.matches('\n').count() + trimmed.matches('\r').count() - trimmed.matches("\r\n").count();
    first_line + breaks
}

/// Converts `node`, whose encoded path is `path` and whose line is already recorded.
fn convert(
    node: &MarkedYaml<'_>,
    path: &mut String,
    shift: usize,
    lines: &mut LineIndex,
    depth: usize,
) -> Result<Value, SyntaxError> {
    let line = node.span.start.line() + shift;
    if depth > MAX_DEPTH {
        return Err(SyntaxError { line, message: format!("nesting deeper than {MAX_DEPTH} levels") });
    }
    let at = path.len();
    Ok(match &node.data {
        YamlData::Value(scalar) => scalar_to_json(scalar),
        YamlData::Representation(text, _, _) => Value::String(text.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                push_index(path, i);
                lines.record(path, item.span.start.line() + shift);
                out.push(convert(item, path, shift, lines, depth + 1)?);
                path.truncate(at);
            }
            Value::Array(out)
        }
        YamlData::Mapping(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let name = key_to_string(key).ok_or_else(|| SyntaxError {
                    line: key.span.start.line() + shift,
                    message: "mapping keys must be scalars".into(),
                })?;
                push_name(path, &name);
                // A field is where its key is.
                lines.record(path, key.span.start.line() + shift);
                let converted = convert(value, path, shift, lines, depth + 1)?;
                path.truncate(at);
                map.insert(name, converted);
            }
            Value::Object(map)
        }
        YamlData::Tagged(_, inner) => convert(inner, path, shift, lines, depth)?,
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(SyntaxError { line, message: "unresolved alias or unreadable value".into() });
        }
    })
}

fn scalar_to_json(scalar: &Scalar<'_>) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => {
            Number::from_f64(f.into_inner()).map_or_else(|| Value::String(f.to_string()), Value::Number)
        }
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

/// Keys become strings, as Kubernetes does: `8080:` is the key `"8080"`.
fn key_to_string(key: &MarkedYaml<'_>) -> Option<String> {
    match &key.data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        YamlData::Value(Scalar::Null) => Some("null".into()),
        YamlData::Representation(text, _, _) => Some(text.to_string()),
        YamlData::Tagged(_, inner) => key_to_string(inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(text: &str) -> Document {
        let mut docs: Vec<_> = parse_stream(text).collect();
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn remembers_the_line_of_every_field() {
        let doc = only("a: 1\nb:\n  c:\n  - x: 1\n  - x: 2\n    y: three\n");
        assert_eq!(doc.value["b"]["c"][1]["y"], "three");
        assert_eq!(doc.lines.line_of(&FieldPath::parse("b.c[1].y")), Some(6));
        assert_eq!(doc.lines.line_of(&FieldPath::parse("b.c[1]")), Some(5));
        assert_eq!(doc.lines.line_of(&FieldPath::parse("b.c[1].missing")), Some(5));
        assert_eq!(doc.lines.line_of(&FieldPath::parse("missing.deeper")), Some(1));
    }

    #[test]
    fn map_keys_are_found_where_they_are_written() {
        let doc = only("spec:\n  portLevelMtls:\n    \"8080\":\n      mode: DISABLE\n");
        let key = FieldPath::root().field("spec").field("portLevelMtls").key("8080");
        assert_eq!(doc.lines.line_of(&key), Some(3));
        assert_eq!(doc.lines.line_of(&key.field("mode")), Some(4));
    }

    #[test]
    fn a_subtree_is_re_rooted() {
        let doc = only("kind: List\nitems:\n- kind: A\n  spec:\n    x: 1\n- kind: B\n  spec:\n    y: 2\n");
        let second = doc.lines.subtree(&FieldPath::parse("items[1]"));
        assert_eq!(second.line_of(&FieldPath::root()), Some(6));
        assert_eq!(second.line_of(&FieldPath::parse("spec.y")), Some(8));
        assert_eq!(second.line_of(&FieldPath::parse("spec.x")), Some(7));
        assert_eq!(second.line_of(&FieldPath::parse("kind")), Some(6));
    }

    #[test]
    fn splits_documents_and_keeps_stream_lines() {
        let docs: Vec<_> = parse_stream("# head\na: 1\n---\nb: 2\n---\n\n---\nc: [1, 2\n---\nd: 4\n").collect();
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[1].as_ref().map(|d| d.line).ok(), Some(4));
        let err = docs[2].as_ref().err().cloned();
        assert!(matches!(err, Some(SyntaxError { line: 8 | 9, .. })), "{err:?}");
        assert_eq!(docs[3].as_ref().map(|d| d.value["d"].clone()).ok(), Some(Value::from(4)));
    }

    #[test]
    fn integer_keys_become_strings() {
        let doc = only("portLevelMtls:\n  8080:\n    mode: DISABLE\n");
        assert_eq!(doc.value["portLevelMtls"]["8080"]["mode"], "DISABLE");
    }

    #[test]
    fn json_is_yaml() {
        let doc = only("{\"kind\": \"Gateway\",\n \"spec\": {\"servers\": [{\"port\": {\"number\": 80}}]}}");
        assert_eq!(doc.value["spec"]["servers"][0]["port"]["number"], 80);
        assert_eq!(doc.lines.line_of(&FieldPath::parse("spec.servers[0]")), Some(2));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(parse_stream("a: 1\na: 2\n").next().is_some_and(|d| d.is_err()));
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        assert!(parse_stream(&text).next().is_some_and(|d| d.is_err()));
    }
}
