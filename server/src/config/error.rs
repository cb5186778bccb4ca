//! [`ConfigError`] and the translation of YAML errors into messages that name
//! the key path and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter};

/// A position in the configuration text (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, starting at 1.
    pub line: u64,
    /// Column, starting at 1.
    pub column: u64,
}

impl Position {
    pub(crate) fn from_location(location: Location) -> Option<Position> {
        (location.line() > 0).then(|| Position {
            line: location.line(),
            column: location.column(),
        })
    }
}

/// Why a configuration could not be loaded.
///
/// `Display` gives one line: the file (when loaded from one), the line and
/// column (when known), the key path such as `mqtt.server.tcp-port`, and what
/// is wrong, e.g.
/// `conf/conf.yml: line 4, column 15: mqtt.server.tcp-port: invalid value: integer `70000`, expected u16 (0 to 65535)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML, a key is unknown, or a value has the wrong
    /// type or does not fit its type.
    #[error("{}", Located { file: file.as_deref(), position: *position, key, message })]
    Parse {
        /// The file, when the text came from [`Config::load`](super::Config::load).
        file: Option<PathBuf>,
        /// Where in the text, when known.
        position: Option<Position>,
        /// The key path, e.g. `mqtt.server.tcp-port`; empty for the document root.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The YAML is well-formed and typed, but a value breaks a rule (a range,
    /// a format, a relation to another key).
    #[error("{}", Located { file: file.as_deref(), position: *position, key, message })]
    Invalid {
        /// The file, when the text came from [`Config::load`](super::Config::load).
        file: Option<PathBuf>,
        /// Where the offending value is, when it came from a text.
        position: Option<Position>,
        /// The key path, e.g. `mqtt.server.max-inflight`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The key path the error is about (`mqtt.server.tcp-port`), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => {
                (!key.is_empty()).then_some(key.as_str())
            }
        }
    }

    /// The line and column the error is about, if known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { position, .. } | ConfigError::Invalid { position, .. } => {
                *position
            }
        }
    }

    /// Names the file the text came from.
    pub(crate) fn in_file(mut self, path: &Path) -> ConfigError {
        match &mut self {
            ConfigError::Read { .. } => {}
            ConfigError::Parse { file, .. } | ConfigError::Invalid { file, .. } => {
                *file = Some(path.to_path_buf());
            }
        }
        self
    }

    pub(crate) fn invalid(
        key: impl Into<String>,
        position: Option<Position>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: None,
            position,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Builds the error for a failed deserialization: `path` is the key path
    /// serde_path_to_error tracked (if the error came from inside the
    /// document), `input` the YAML text (to quote offending scalars).
    pub(crate) fn from_yaml(
        err: &serde_saphyr::Error,
        path: Option<&serde_path_to_error::Path>,
        input: &str,
    ) -> ConfigError {
        let err = err.without_snippet();
        let location = err.location();
        let position = location.and_then(Position::from_location);
        let key = path.map(|p| key_path(p, err)).unwrap_or_default();
        let message = yaml_message(err, location, input);
        ConfigError::Parse {
            file: None,
            position,
            key,
            message,
        }
    }
}

/// `file: line L, column C: key: message`, leaving out what is unknown.
struct Located<'a> {
    file: Option<&'a Path>,
    position: Option<Position>,
    key: &'a str,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(p) = self.position {
            write!(f, "line {}, column {}: ", p.line, p.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(self.message)
    }
}

/// Renders a serde_path_to_error path as a config key path:
/// `mqtt.kvrocks.cluster.nodes[1]`.
///
/// Values are read through `serde_saphyr::Spanned`, which shows up as an
/// extra `value` map segment: it is dropped (no config key is called
/// `value`), except as the last segment of an unknown-key error, where it is
/// the unknown key itself. A duplicate key is an unknown segment: it is
/// replaced by the key's name.
fn key_path(path: &serde_path_to_error::Path, err: &serde_saphyr::Error) -> String {
    use serde_path_to_error::Segment;

    let unknown_field = matches!(err, serde_saphyr::Error::SerdeUnknownField { .. });
    let segments: Vec<&Segment> = path.iter().collect();
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let name = match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } if key == "value" && !(last && unknown_field) => continue,
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => match err {
                serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => key.clone(),
                _ => continue,
            },
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&name);
    }
    out
}

/// The message for a YAML error, without the location (which is shown apart).
fn yaml_message(err: &serde_saphyr::Error, location: Option<Location>, input: &str) -> String {
    use serde_saphyr::Error as E;

    match err {
        E::InvalidScalar { ty, .. } => {
            let text = location.and_then(|l| scalar_text(l, input));
            invalid_scalar(ty, text)
        }
        E::SerdeUnknownField {
            field, expected, ..
        } => unknown_key(field, expected),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => format!(
            "unknown value `{variant}`, expected one of: {}",
            expected.join(", ")
        ),
        E::NullIntoString { .. } => "expected a string, found nothing".to_owned(),
        E::DuplicateMappingKey { .. } => "the key appears twice".to_owned(),
        E::Unexpected { expected, .. } if *expected == "mapping start" => {
            "expected a section (a mapping of keys to values)".to_owned()
        }
        E::Unexpected { expected, .. } if *expected == "string scalar" => {
            "expected a single value, found a list or a section".to_owned()
        }
        E::MultipleDocuments { .. } => {
            "the file must hold a single YAML document (found another `---`)".to_owned()
        }
        other => DefaultMessageFormatter.format_message(other).into_owned(),
    }
}

/// The source text of the scalar at `location`, if it is short and on one line.
fn scalar_text(location: Location, input: &str) -> Option<&str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let text = input.get(start..start.checked_add(len)?)?;
    (!text.is_empty() && text.len() <= 80 && !text.contains('\n')).then_some(text)
}

fn invalid_scalar(ty: &str, text: Option<&str>) -> String {
    let expected = match ty {
        "u8" => format!("u8 (0 to {})", u8::MAX),
        "u16" => format!("u16 (0 to {})", u16::MAX),
        "u32" => format!("u32 (0 to {})", u32::MAX),
        "u64" => format!("u64 (0 to {})", u64::MAX),
        "i32" => format!("i32 ({} to {})", i32::MIN, i32::MAX),
        "i64" => format!("i64 ({} to {})", i64::MIN, i64::MAX),
        "boolean" => "a boolean (true or false)".to_owned(),
        other => other.to_owned(),
    };
    match text {
        Some(text) if looks_like_integer(text) => {
            format!("invalid value: integer `{text}`, expected {expected}")
        }
        Some(text) => format!("invalid type: `{text}`, expected {expected}"),
        None => format!("invalid value, expected {expected}"),
    }
}

fn looks_like_integer(text: &str) -> bool {
    let digits = text
        .strip_prefix(['-', '+'])
        .unwrap_or(text)
        .replace('_', "");
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn unknown_key(field: &str, expected: &[&str]) -> String {
    let closest = expected
        .iter()
        .map(|candidate| (edit_distance(field, candidate), *candidate))
        .min();
    match closest {
        Some((distance, candidate)) if distance <= 2.max(field.len() / 4) => {
            format!("unknown key `{field}`; did you mean `{candidate}`?")
        }
        _ if expected.is_empty() => format!("unknown key `{field}`; this section takes no keys"),
        _ => format!(
            "unknown key `{field}`; the keys here are: {}",
            expected.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("tcp-prt", "tcp-port"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn integers_are_recognised() {
        assert!(looks_like_integer("70000"));
        assert!(looks_like_integer("-1"));
        assert!(looks_like_integer("1_000"));
        assert!(!looks_like_integer("abc"));
        assert!(!looks_like_integer("-"));
    }
}
