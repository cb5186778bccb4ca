//! Topic names, topic filters, and the structures that match one against the other.

mod retained;
mod trie;

pub use retained::RetainedIndex;
pub use trie::SubscriptionTrie;

/// Why a topic name or filter is refused. Each variant names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must be at least one character long [MQTT-4.7.3-1]")]
    Empty,
    #[error("topic is longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    #[error("topic name must not contain wildcard characters [MQTT-3.3.2-2]")]
    WildcardInName,
    #[error("multi-level wildcard '#' must be last and occupy a whole level [MQTT-4.7.1-2]")]
    MisplacedMultiLevelWildcard,
    #[error("single-level wildcard '+' must occupy a whole level [MQTT-4.7.1-3]")]
    MisplacedSingleLevelWildcard,
    #[error("topic must not contain U+0000 [MQTT-4.7.3-2]")]
    NullCharacter,
    #[error("topic has {levels} levels, more than the limit of {max}")]
    TooManyLevels { levels: usize, max: usize },
}

/// Checks a topic name (what PUBLISH carries): not empty, no wildcards.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (what SUBSCRIBE and UNSUBSCRIBE carry).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Checks the number of levels against a configured maximum (0 = no limit).
pub fn check_levels(topic: &str, max: usize) -> Result<(), TopicError> {
    if max == 0 {
        return Ok(());
    }
    let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
    if levels > max {
        return Err(TopicError::TooManyLevels { levels, max });
    }
    Ok(())
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// True for topics that wildcards at the first level must not match ([MQTT-4.7.2-1]).
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_7_3_1_topic_names_and_filters_are_not_empty() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn mqtt_3_3_2_2_topic_names_have_no_wildcards() {
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#b"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("a/b c/ü"), Ok(()));
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_is_last_and_alone() {
        for ok in ["#", "a/#", "/#", "+/#", "a/+/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "#/a", "a/#/b", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MisplacedMultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_fills_its_level() {
        for ok in ["+", "+/+", "/+", "a/+/b", "+/"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a+", "+a", "a/b+/c", "++"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MisplacedSingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn level_limit() {
        assert_eq!(check_levels("a/b/c", 3), Ok(()));
        assert_eq!(
            check_levels("a/b/c/d", 3),
            Err(TopicError::TooManyLevels { levels: 4, max: 3 })
        );
        assert_eq!(check_levels("a/b/c/d", 0), Ok(()));
    }
}
