//! Reading replies, in RESP2 or RESP3 shape. A reply of an unexpected shape
//! is reported as corrupt data at the key that produced it.

use easy_mqtt_core::storage::StorageError;
use redis::Value;

fn unexpected(key: &str, what: &str, value: &Value) -> StorageError {
    StorageError::Corrupt {
        key: key.to_owned(),
        reason: format!("expected {what}, got {value:?}"),
    }
}

/// A string reply, or `None` for nil.
pub(crate) fn optional_bytes(key: &str, value: Value) -> Result<Option<Vec<u8>>, StorageError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(text) => Ok(Some(text.into_bytes())),
        other => Err(unexpected(key, "a string or nil", &other)),
    }
}

pub(crate) fn int(key: &str, value: &Value) -> Result<i64, StorageError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::Boolean(b) => Ok(i64::from(*b)),
        other => Err(unexpected(key, "an integer", other)),
    }
}

fn bytes(key: &str, value: Value) -> Result<Vec<u8>, StorageError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        other => Err(unexpected(key, "a string", &other)),
    }
}

fn float(key: &str, value: Value) -> Result<f64, StorageError> {
    match value {
        Value::Double(x) => Ok(x),
        Value::Int(n) => Ok(n as f64),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| unexpected(key, "a score", &Value::BulkString(bytes.clone()))),
        other => Err(unexpected(key, "a score", &other)),
    }
}

/// The elements of an array or set reply.
pub(crate) fn items(key: &str, value: Value) -> Result<Vec<Value>, StorageError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(key, "an array", &other)),
    }
}

/// Members of a set (`SMEMBERS`).
pub(crate) fn members(key: &str, value: Value) -> Result<Vec<Vec<u8>>, StorageError> {
    items(key, value)?
        .into_iter()
        .map(|item| bytes(key, item))
        .collect()
}

/// Field/value pairs.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Field/value pairs (`HGETALL`, `HSCAN` items): a flat array or a map.
pub(crate) fn pairs(key: &str, value: Value) -> Result<Pairs, StorageError> {
    match value {
        Value::Map(entries) => entries
            .into_iter()
            .map(|(field, value)| Ok((bytes(key, field)?, bytes(key, value)?)))
            .collect(),
        other => flat_pairs(key, items(key, other)?, bytes),
    }
}

/// Member/score pairs (`ZRANGE … WITHSCORES`): flat in RESP2, nested in RESP3.
pub(crate) fn scored(key: &str, value: Value) -> Result<Vec<(Vec<u8>, f64)>, StorageError> {
    let items = items(key, value)?;
    if items.iter().all(|item| matches!(item, Value::Array(_))) && !items.is_empty() {
        return items
            .into_iter()
            .map(|item| {
                let mut pair = self::items(key, item)?.into_iter();
                match (pair.next(), pair.next(), pair.next()) {
                    (Some(member), Some(score), None) => {
                        Ok((bytes(key, member)?, float(key, score)?))
                    }
                    _ => Err(StorageError::Corrupt {
                        key: key.to_owned(),
                        reason: "member/score pair".to_owned(),
                    }),
                }
            })
            .collect();
    }
    flat_pairs(key, items, float)
}

fn flat_pairs<T>(
    key: &str,
    items: Vec<Value>,
    second: fn(&str, Value) -> Result<T, StorageError>,
) -> Result<Vec<(Vec<u8>, T)>, StorageError> {
    if !items.len().is_multiple_of(2) {
        return Err(StorageError::Corrupt {
            key: key.to_owned(),
            reason: "odd number of items in a pair reply".to_owned(),
        });
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(a), Some(b)) = (items.next(), items.next()) {
        out.push((bytes(key, a)?, second(key, b)?));
    }
    Ok(out)
}

/// A `SCAN`-family reply: the next cursor and the page.
pub(crate) fn scan_page(key: &str, value: Value) -> Result<(Vec<u8>, Value), StorageError> {
    let mut parts = items(key, value)?.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(cursor), Some(page), None) => Ok((bytes(key, cursor)?, page)),
        _ => Err(StorageError::Corrupt {
            key: key.to_owned(),
            reason: "scan reply is not [cursor, page]".to_owned(),
        }),
    }
}
