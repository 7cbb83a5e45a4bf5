//! Field paths inside a resource, rendered the way users write them:
//! `spec.http[0].route[1].weight`, `spec.selector.matchLabels["app"]`.

use std::fmt;

/// One step from a value to a value inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// An object field, by its JSON name.
    Field(String),
    /// A list item, by position.
    Index(usize),
    /// A map entry, by key.
    Key(String),
}

/// Where a value sits inside a resource, from the resource's root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The path of the resource itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses a dotted path such as `spec.http[0].route`. Map keys are not expressible;
    /// this is for tests and for paths written by hand in code.
    pub fn parse(text: &str) -> Self {
        let mut path = Self::root();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (name, rest) = part.split_once('[').unwrap_or((part, ""));
            if !name.is_empty() {
                path = path.field(name);
            }
            for index in rest.split('[') {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    path = path.index(i);
                }
            }
        }
        path
    }

    /// This path extended by an object field.
    pub fn field(&self, name: &str) -> Self {
        self.with(Segment::Field(name.to_owned()))
    }

    /// This path extended by a list position.
    pub fn index(&self, i: usize) -> Self {
        self.with(Segment::Index(i))
    }

    /// This path extended by a map key.
    pub fn key(&self, key: &str) -> Self {
        self.with(Segment::Key(key.to_owned()))
    }

    fn with(&self, segment: Segment) -> Self {
        let mut segments = self.0.clone();
        segments.push(segment);
        Self(segments)
    }

    /// The path one step up, or `None` at the root.
    pub fn parent(&self) -> Option<Self> {
        let (_, rest) = self.0.split_last()?;
        Some(Self(rest.to_vec()))
    }

    /// The steps of this path.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether this is the resource's root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path with `prefix`'s steps in front of it.
    pub fn under(&self, prefix: &FieldPath) -> Self {
        let mut segments = prefix.0.clone();
        segments.extend(self.0.iter().cloned());
        Self(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => write!(f, "[{key:?}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_users_write_it() {
        let path = FieldPath::root().field("spec").field("http").index(0).field("route").index(1).field("weight");
        assert_eq!(path.to_string(), "spec.http[0].route[1].weight");
        let key = FieldPath::root().field("spec").field("portLevelMtls").key("8080");
        assert_eq!(key.to_string(), r#"spec.portLevelMtls["8080"]"#);
    }

    #[test]
    fn parses_what_it_renders() {
        let text = "spec.http[0].route[1].weight";
        assert_eq!(FieldPath::parse(text).to_string(), text);
        assert_eq!(FieldPath::parse(text).parent().map(|p| p.to_string()).as_deref(), Some("spec.http[0].route[1]"));
    }
}
