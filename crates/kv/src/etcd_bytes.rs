//! etcd values are bytes; this store's values are JSON. The mapping:
//!
//! * a JSON string is its UTF-8 text, and UTF-8 bytes are stored as a
//!   string (so an etcd client reads back exactly what it wrote);
//! * bytes that are not UTF-8 are stored as `{"$base64": "<standard base64,
//!   padded>"}`, and exactly such an object reads as the decoded bytes;
//! * any other JSON value reads as its compact JSON text.
//!
//! So `value_to_bytes(&value_from_bytes(b)) == b` for every `b`.

use serde_json::{Map, Value};

/// The single key of the object that carries non-UTF-8 bytes.
pub const BASE64_KEY: &str = "$base64";

/// The bytes an etcd client sees for `v`.
pub fn value_to_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(text) => text.as_bytes().to_vec(),
        Value::Object(map) => match base64_payload(map) {
            Some(bytes) => bytes,
            None => compact_json(v),
        },
        other => compact_json(other),
    }
}

/// The value stored for bytes an etcd client wrote.
pub fn value_from_bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => {
            let mut map = Map::new();
            map.insert(BASE64_KEY.to_owned(), Value::String(base64_encode(b)));
            Value::Object(map)
        }
    }
}

/// The decoded bytes of a `{"$base64": "..."}` object, if `map` is exactly
/// one whose string decodes.
fn base64_payload(map: &Map<String, Value>) -> Option<Vec<u8>> {
    if map.len() != 1 {
        return None;
    }
    match map.get(BASE64_KEY)? {
        Value::String(encoded) => base64_decode(encoded),
        _ => None,
    }
}

fn compact_json(v: &Value) -> Vec<u8> {
    // Writing a Value into a Vec cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 section 4) with `=` padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextets = [n >> 18, n >> 12, n >> 6, n].map(|s| ALPHABET[(s & 0x3f) as usize] as char);
        // A chunk of k bytes fills k + 1 characters; padding completes four.
        for (i, c) in sextets.into_iter().enumerate() {
            out.push(if i <= chunk.len() { c } else { '=' });
        }
    }
    out
}

/// Decodes what [`base64_encode`] writes, and only that: padded, no
/// whitespace, unused trailing bits zero (so every byte string has exactly
/// one encoding). `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.chunks(4);
    let last = quads.len().saturating_sub(1);
    for (q, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && q != last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - padding] {
            n = n << 6 | u32::from(sextet(c)?);
        }
        n <<= 6 * padding;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let kept = 3 - padding;
        if decoded[kept..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&decoded[..kept]);
    }
    Some(out)
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn base64_known_answers() {
        // RFC 4648 section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
        assert_eq!(base64_encode(&[0xfb, 0xef]), "++8=");
    }

    #[test]
    fn base64_refuses_what_it_does_not_write() {
        for bad in [
            "Zg", "Zg=", "Zg===", "=Zg=", "Zg==Zg==", "Zh==", "Zm9=", "Zm 9v", "Zm9v\n", "Zm-_",
            "Z===", "====",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn values_as_bytes() {
        assert_eq!(value_to_bytes(&json!("héllo")), "héllo".as_bytes());
        assert_eq!(value_to_bytes(&json!(12)), b"12");
        assert_eq!(value_to_bytes(&json!(null)), b"null");
        assert_eq!(value_to_bytes(&json!({"a": [1, "x"]})), br#"{"a":[1,"x"]}"#);
        assert_eq!(value_to_bytes(&json!({"$base64": "/w=="})), [0xff]);
        // Not exactly a decodable `$base64` object: plain JSON.
        for v in [
            json!({"$base64": "/w"}),
            json!({"$base64": 1}),
            json!({"$base64": "/w==", "x": 1}),
        ] {
            assert_eq!(value_to_bytes(&v), v.to_string().as_bytes());
        }
        assert_eq!(value_from_bytes(b"text"), json!("text"));
        assert_eq!(value_from_bytes(b"{\"a\":1}"), json!("{\"a\":1}"));
        assert_eq!(value_from_bytes(b""), json!(""));
        assert_eq!(value_from_bytes(&[0x61, 0xff]), json!({"$base64": "Yf8="}));
    }

    proptest! {
        #[test]
        fn bytes_roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(value_to_bytes(&value_from_bytes(&bytes)), bytes.clone());
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }

        #[test]
        fn text_roundtrip(text in any::<String>()) {
            prop_assert_eq!(value_to_bytes(&value_from_bytes(text.as_bytes())), text.as_bytes());
        }

        #[test]
        fn decode_never_panics(text in "[A-Za-z0-9+/=]{0,12}") {
            if let Some(bytes) = base64_decode(&text) {
                prop_assert_eq!(base64_encode(&bytes), text);
            }
        }
    }
}
