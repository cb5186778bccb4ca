//! Small pieces of the API: percent-decoding, query strings, dates and
//! constant-time comparison.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest;

use super::error::ApiError;

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in
/// query strings); the result must be UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool, what: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = hex else {
                    return Err(ApiError::bad_request(
                        "invalid-encoding",
                        format!("{what}: '%' must be followed by two hex digits"),
                    ));
                };
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        ApiError::bad_request(
            "invalid-encoding",
            format!("{what}: the percent-decoded text is not UTF-8"),
        )
    })
}

/// The parameters of a query string, checked against the names an
/// endpoint takes: an unknown or repeated parameter is an error.
#[derive(Debug, Default)]
pub struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name, true, "query parameter name")?;
            if !allowed.contains(&name.as_str()) {
                let detail = if allowed.is_empty() {
                    format!("unknown query parameter `{name}`: this endpoint takes none")
                } else {
                    format!(
                        "unknown query parameter `{name}`; this endpoint takes: {}",
                        allowed.join(", ")
                    )
                };
                return Err(ApiError::bad_request("invalid-parameter", detail));
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(
                    "invalid-parameter",
                    format!("query parameter `{name}` is given more than once"),
                ));
            }
            let value = percent_decode(value, true, &format!("query parameter `{name}`"))?;
            params.push((name, value));
        }
        Ok(Query { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer parameter within `min..=max`, or `default` when absent.
    pub fn number(
        &self,
        name: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid-parameter",
                format!(
                    "query parameter `{name}` must be an integer from {min} to {max}, got {text:?}"
                ),
            )),
        }
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T12:00:00.250Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Compares two secrets in time that depends on neither: both are hashed
/// first, so not even their lengths leak.
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    let a = digest::digest(&digest::SHA256, given);
    let b = digest::digest(&digest::SHA256, expected);
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// An optional field that, when given, must not be `null`.
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    String::deserialize(d).map(Some)
}

/// A JSON request body, or a 400 naming what is wrong with it.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid-json"
        } else {
            "invalid-body"
        };
        ApiError::bad_request(code, format!("request body: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("a%2Fb+c", true, "x").ok().as_deref(),
            Some("a/b c")
        );
        assert_eq!(
            percent_decode("a%2fb+c", false, "x").ok().as_deref(),
            Some("a/b+c")
        );
        assert_eq!(
            percent_decode("%E2%82%AC", false, "x").ok().as_deref(),
            Some("€")
        );
        assert!(percent_decode("%zz", false, "x").is_err());
        assert!(percent_decode("%4", false, "x").is_err());
        assert!(percent_decode("%FF", false, "x").is_err());
    }

    #[test]
    fn queries_refuse_unknown_and_repeated_names() {
        let q = Query::parse(Some("limit=5&after=a%2Fb"), &["limit", "after"]).ok();
        let q = q.unwrap_or_default();
        assert_eq!(q.get("after"), Some("a/b"));
        assert_eq!(q.number("limit", 100, 1, 1000).ok(), Some(5));
        assert!(q.number("nothing", 100, 1, 1000).is_ok_and(|n| n == 100));
        assert!(Query::parse(Some("x=1"), &["limit"]).is_err());
        assert!(Query::parse(Some("limit=1&limit=2"), &["limit"]).is_err());
        let q = Query::parse(Some("limit=0"), &["limit"]).unwrap_or_default();
        assert!(q.number("limit", 100, 1, 1000).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn secrets() {
        assert!(secret_eq(b"token", b"token"));
        assert!(!secret_eq(b"token", b"tokem"));
        assert!(!secret_eq(b"", b"token"));
    }
}
