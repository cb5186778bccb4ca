//! `mqtt.kvrocks.cluster.nodes`: the original's comma-separated string
//! (`host:port,host:port`) or a YAML list of `host:port` strings.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// The node list as read from YAML; each entry is checked as `host:port`
/// while reading, so an error points at the offending entry.
#[derive(Debug, Default)]
pub(crate) struct NodeList(pub(crate) Vec<String>);

impl From<NodeList> for Vec<String> {
    fn from(list: NodeList) -> Vec<String> {
        list.0
    }
}

impl<'de> Deserialize<'de> for NodeList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeListVisitor)
    }
}

struct NodeListVisitor;

impl<'de> Visitor<'de> for NodeListVisitor {
    type Value = NodeList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`host:port,host:port` or a list of `host:port` strings")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<NodeList, E> {
        let mut nodes = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            check_node(entry).map_err(E::custom)?;
            nodes.push(entry.to_owned());
        }
        Ok(NodeList(nodes))
    }

    fn visit_unit<E: de::Error>(self) -> Result<NodeList, E> {
        Ok(NodeList::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<NodeList, E> {
        Ok(NodeList::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeList, A::Error> {
        let mut nodes = Vec::new();
        while let Some(Node(node)) = seq.next_element()? {
            nodes.push(node);
        }
        Ok(NodeList(nodes))
    }
}

/// One list entry, checked as `host:port`.
struct Node(String);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let text = text.trim();
        check_node(text).map_err(de::Error::custom)?;
        Ok(Node(text.to_owned()))
    }
}

/// Checks `host:port`: a non-empty host (a name, an IPv4 address, or an IPv6
/// address in brackets) and a port from 1 to 65535.
pub(crate) fn check_node(entry: &str) -> Result<(), String> {
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err(format!(
            "`{entry}` is not `host:port` (the port is missing)"
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "`{entry}` is not `host:port` (the host is missing)"
        ));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let valid = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !valid {
            return Err(format!(
                "`{entry}`: `{host}` is not a bracketed IPv6 address"
            ));
        }
    } else if host.contains(':') {
        return Err(format!(
            "`{entry}` is not `host:port` (write IPv6 addresses in brackets: `[::1]:6666`)"
        ));
    } else if host.contains(char::is_whitespace) {
        return Err(format!("`{entry}`: the host `{host}` contains a space"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!(
            "`{entry}`: the port `{port}` is not a number from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_node;

    #[test]
    fn node_entries_are_checked() {
        assert!(check_node("127.0.0.1:6666").is_ok());
        assert!(check_node("kvrocks-0.svc:6379").is_ok());
        assert!(check_node("[::1]:6666").is_ok());
        assert!(check_node("127.0.0.1").is_err());
        assert!(check_node(":6666").is_err());
        assert!(check_node("host:0").is_err());
        assert!(check_node("host:70000").is_err());
        assert!(check_node("host:port").is_err());
        assert!(check_node("::1:6666").is_err());
        assert!(check_node("[zz]:6666").is_err());
    }
}
