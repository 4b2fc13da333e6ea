//! Probe parameters from key → value maps: a suite step's `args` or the options given on the
//! command line, laid over the probe's defaults. Keys are the probe's flag names; `-` and `_` are
//! the same. Lists may be written as arrays or comma-separated strings (`only = "a,b"`), ranges
//! as `"A:B"` or `[A, B]`.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;

use super::Probe;
use crate::Result;

/// Given parameters: key → JSON value.
pub type ParamMap = serde_json::Map<String, serde_json::Value>;

/// `P`'s parameters: its defaults (see [`Probe::defaults`]) with `given` laid over them. A key
/// the defaults do not have is an error naming the known keys.
pub fn parse<P: Probe>(given: &ParamMap) -> Result<P::Params> {
    let base = serde_json::to_value(P::defaults(given))
        .map_err(|e| crate::Error::msg(format!("{}: parameters: {e}", P::NAME)))?;
    let mut v = base.clone();
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
    serde_json::from_value(v).map_err(|e| {
        // Name the parameter: the first given key that fails on its own.
        let culprit = given.iter().find(|(k, val)| {
            let mut one = base.clone();
            if let Some(o) = one.as_object_mut() {
                o.insert(k.replace('-', "_"), (*val).clone());
            }
            serde_json::from_value::<P::Params>(one).is_err()
        });
        match culprit {
            Some((k, val)) => crate::Error::msg(format!(
                "{}: --{} {}: {e}",
                P::NAME,
                k.replace('_', "-"),
                match val {
                    serde_json::Value::String(s) => s.clone(),
                    x => x.to_string(),
                }
            )),
            None => crate::Error::msg(format!("{}: {e}", P::NAME)),
        }
    })
}

/// One item: a string is parsed with `FromStr`, anything else deserialized as `T`.
fn item<T, E>(v: serde_json::Value) -> std::result::Result<T, E>
where
    T: FromStr + DeserializeOwned,
    T::Err: Display,
    E: serde::de::Error,
{
    match v {
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|e| E::custom(format!("`{}`: {e}", s.trim()))),
        x => serde_json::from_value(x).map_err(E::custom),
    }
}

/// Items of a list given as an array or as a string split at `sep`.
fn items<T, E>(v: serde_json::Value, sep: char) -> std::result::Result<Vec<T>, E>
where
    T: FromStr + DeserializeOwned,
    T::Err: Display,
    E: serde::de::Error,
{
    match v {
        serde_json::Value::Array(a) => a.into_iter().map(item::<T, E>).collect(),
        serde_json::Value::String(s) => s
            .split(sep)
            .filter(|x| !x.trim().is_empty())
            .map(|x| item::<T, E>(serde_json::Value::String(x.to_string())))
            .collect(),
        x => Err(E::custom(format!(
            "expected a list or a `{sep}`-separated string, got {x}"
        ))),
    }
}

/// A list given as an array or as a comma-separated string.
pub fn comma_list<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + DeserializeOwned,
    T::Err: Display,
{
    items(serde_json::Value::deserialize(d)?, ',')
}

fn pair_of<T, E>(v: serde_json::Value) -> std::result::Result<(T, T), E>
where
    T: FromStr + DeserializeOwned,
    T::Err: Display,
    E: serde::de::Error,
{
    let text = v.to_string();
    let mut it = items::<T, E>(v, ':')?.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(E::custom(format!("{text}: expected A:B"))),
    }
}

/// A range given as `"A:B"` or `[A, B]`.
pub fn pair<'de, D, T>(d: D) -> std::result::Result<(T, T), D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + DeserializeOwned,
    T::Err: Display,
{
    pair_of(serde_json::Value::deserialize(d)?)
}

/// An optional range given as `"A:B"`, `[A, B]` or null.
pub fn opt_pair<'de, D, T>(d: D) -> std::result::Result<Option<(T, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + DeserializeOwned,
    T::Err: Display,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => pair_of(v).map(Some),
    }
}

/// One-line errors for size flags that must be at least 1: the first that is 0, by name.
pub fn at_least_one(sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((flag, _)) => crate::bail!("{flag} must be at least 1"),
        None => Ok(()),
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
