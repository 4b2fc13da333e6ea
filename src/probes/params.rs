//! Probe parameters from key → value maps: a suite step's `args` or the options given on the
//! command line, laid over the probe's defaults. Keys are the probe's flag names; `-` and `_` are
//! the same. Lists may be written as arrays or comma-separated strings (`only = "a,b"`), ranges
//! as `"A:B"` or `[A, B]`.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::Deserialize;

use super::Probe;
use crate::Result;

/// Given parameters: key → JSON value.
pub type ParamMap = serde_json::Map<String, serde_json::Value>;

/// `P`'s parameters: its defaults (see [`Probe::defaults`]) with `given` laid over them. A key
/// the defaults do not have is an error naming the known keys.
pub fn parse<P: Probe>(given: &ParamMap) -> Result<P::Params> {
    let base = P::defaults(given);
    let mut v = serde_json::to_value(&base)
        .map_err(|e| crate::Error::msg(format!("{}: parameters: {e}", P::NAME)))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| crate::Error::msg(format!("{}: parameters are not a table", P::NAME)))?;
    for (k, val) in given {
        let key = k.replace('-', "_");
        if !obj.contains_key(&key) {
            let mut known: Vec<String> = obj.keys().map(|k| k.replace('_', "-")).collect();
            known.sort();
            crate::bail!(
                "{}: unknown parameter `{}` (known: {})",
                P::NAME,
                k.replace('_', "-"),
                known.join(", ")
            );
        }
        obj.insert(key, val.clone());
    }
    serde_json::from_value(v).map_err(|e| crate::Error::msg(format!("{}: {e}", P::NAME)))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrText<T> {
    List(Vec<T>),
    Text(String),
}

fn parse_item<T: FromStr, E: serde::de::Error>(s: &str) -> std::result::Result<T, E>
where
    T::Err: Display,
{
    s.trim()
        .parse()
        .map_err(|e| E::custom(format!("`{}`: {e}", s.trim())))
}

/// A list given as an array or as a comma-separated string.
pub fn comma_list<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    match ListOrText::<T>::deserialize(d)? {
        ListOrText::List(v) => Ok(v),
        ListOrText::Text(s) => s
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(parse_item::<T, D::Error>)
            .collect(),
    }
}

fn split_pair<T, E>(items: Vec<T>, text: &str) -> std::result::Result<(T, T), E>
where
    E: serde::de::Error,
{
    let mut it = items.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(E::custom(format!("`{text}`: expected A:B"))),
    }
}

fn pair_of<'de, D, T>(v: ListOrText<T>) -> std::result::Result<(T, T), D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    match v {
        ListOrText::List(items) => split_pair::<T, D::Error>(items, "[..]"),
        ListOrText::Text(s) => {
            let items = s
                .split(':')
                .map(parse_item::<T, D::Error>)
                .collect::<std::result::Result<Vec<T>, _>>()?;
            split_pair::<T, D::Error>(items, &s)
        }
    }
}

/// A range given as `"A:B"` or `[A, B]`.
pub fn pair<'de, D, T>(d: D) -> std::result::Result<(T, T), D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    pair_of::<D, T>(ListOrText::deserialize(d)?)
}

/// An optional range given as `"A:B"`, `[A, B]` or null.
pub fn opt_pair<'de, D, T>(d: D) -> std::result::Result<Option<(T, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    match Option::<ListOrText<T>>::deserialize(d)? {
        None => Ok(None),
        Some(v) => pair_of::<D, T>(v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct P {
        #[serde(deserialize_with = "comma_list")]
        xs: Vec<f64>,
        #[serde(deserialize_with = "pair")]
        r: (usize, usize),
        #[serde(deserialize_with = "opt_pair", default)]
        o: Option<(f64, f64)>,
    }

    #[test]
    fn lists_and_ranges_from_text_or_arrays() {
        let p: P =
            serde_json::from_str(r#"{"xs": "0.5, 1,2", "r": "4:8", "o": [0.2, 0.8]}"#).unwrap();
        assert_eq!(p.xs, vec![0.5, 1.0, 2.0]);
        assert_eq!(p.r, (4, 8));
        assert_eq!(p.o, Some((0.2, 0.8)));
        let p: P = serde_json::from_str(r#"{"xs": [3], "r": [1, 2], "o": null}"#).unwrap();
        assert_eq!((p.xs, p.r, p.o), (vec![3.0], (1, 2), None));
        for bad in [
            r#"{"xs": "a", "r": "1:2"}"#,
            r#"{"xs": [], "r": "1:2:3"}"#,
            r#"{"xs": [], "r": "1"}"#,
        ] {
            assert!(serde_json::from_str::<P>(bad).is_err(), "{bad}");
        }
    }
}
