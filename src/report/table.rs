//! Tidy tables as Parquet: atomic, deterministic writes (same frame → byte-identical file; no
//! timestamps or host data in the file), plus a small builder for frames made of `Vec` columns.
//!
//! ```no_run
//! use engram::report::table::{Table, write_parquet};
//! let mut df = Table::new()
//!     .col("layer", vec![0u32, 0, 1, 1])
//!     .col("head", vec![0u32, 1, 0, 1])
//!     .col("score", vec![0.1f64, 0.7, 0.3, 0.9])
//!     .build()?;
//! write_parquet(&mut df, std::path::Path::new("out/heads.parquet"))?;
//! # Ok::<(), engram::Error>(())
//! ```

use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use super::write_atomic_with;
use crate::{Error, Result};

/// Write `df` to `path` as Parquet (zstd, statistics on), atomically. The bytes depend only on
/// the frame's contents and schema (and the polars version), so rewriting the same frame gives a
/// byte-identical file.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    write_atomic_with(path, |w| {
        ParquetWriter::new(w)
            .with_compression(ParquetCompression::Zstd(None))
            .with_statistics(StatisticsOptions::default())
            .finish(df)
            .map_err(|e| Error::msg(format!("{}: writing parquet: {e}", path.display())))?;
        Ok(())
    })
}

/// Read a whole Parquet file into a frame.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| Error::msg(format!("{}: reading parquet: {e}", path.display())))
}

/// Build a frame column by column from `Vec`s (or slices) of numbers, strings, bools or options
/// of those; [`Table::build`] checks that all columns have the same length and names the culprit.
#[derive(Default, Clone)]
pub struct Table {
    cols: Vec<Column>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a column. `values` is anything polars can make a Series from:
    /// `Vec<f64>`, `Vec<f32>`, `Vec<u32>`, `Vec<i64>`, `Vec<String>`, `Vec<&str>`, `Vec<bool>`,
    /// `Vec<Option<f64>>`, slices of those, ...
    pub fn col<T, Phantom: ?Sized>(mut self, name: &str, values: T) -> Self
    where
        Series: NamedFrom<T, Phantom>,
    {
        self.cols.push(Column::new(name.into(), values));
        self
    }

    /// Append an existing column or series.
    pub fn column(mut self, c: impl Into<Column>) -> Self {
        self.cols.push(c.into());
        self
    }

    /// Build from rows: each [`Rows::col`] maps a row to one cell of the column.
    ///
    /// ```
    /// # use engram::report::table::Table;
    /// struct Head { layer: usize, score: f64 }
    /// let rows = [Head { layer: 0, score: 0.5 }, Head { layer: 1, score: 0.9 }];
    /// let df = Table::from_rows(&rows)
    ///     .col("layer", |h| h.layer as u32)
    ///     .col("score", |h| h.score)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(df.shape(), (2, 2));
    /// ```
    pub fn from_rows<R>(rows: &[R]) -> Rows<'_, R> {
        Rows {
            rows,
            table: Table::new(),
        }
    }

    pub fn build(self) -> Result<DataFrame> {
        if let Some(first) = self.cols.first() {
            let n = first.len();
            for c in &self.cols {
                if c.len() != n {
                    return Err(Error::msg(format!(
                        "table columns differ in length: `{}` has {n} rows, `{}` has {}",
                        first.name(),
                        c.name(),
                        c.len()
                    )));
                }
            }
        }
        Ok(DataFrame::new_infer_height(self.cols)?)
    }
}

/// A table built row by row (see [`Table::from_rows`]).
pub struct Rows<'a, R> {
    rows: &'a [R],
    table: Table,
}

impl<R> Rows<'_, R> {
    /// A column whose cell for each row is `f(row)`.
    pub fn col<T>(mut self, name: &str, f: impl Fn(&R) -> T) -> Self
    where
        Series: NamedFrom<Vec<T>, [T]>,
    {
        let v: Vec<T> = self.rows.iter().map(f).collect();
        self.table = self.table.col(name, v);
        self
    }

    pub fn build(self) -> Result<DataFrame> {
        self.table.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DataFrame {
        let n = 5000usize;
        Table::new()
            .col(
                "layer",
                (0..n).map(|i| (i / 100) as u32).collect::<Vec<_>>(),
            )
            .col(
                "token",
                (0..n).map(|i| format!("tok{}", i % 37)).collect::<Vec<_>>(),
            )
            .col(
                "score",
                (0..n)
                    .map(|i| (i as f64 * 0.37).sin())
                    .collect::<Vec<f64>>(),
            )
            .col(
                "maybe",
                (0..n)
                    .map(|i| if i % 3 == 0 { None } else { Some(i as f32) })
                    .collect::<Vec<_>>(),
            )
            .col("flag", (0..n).map(|i| i % 2 == 0).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn parquet_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let mut df = sample();
        write_parquet(&mut df, &p).unwrap();
        let back = read_parquet(&p).unwrap();
        assert_eq!(back.shape(), df.shape());
        assert_eq!(back.schema(), df.schema());
        assert!(back.equals_missing(&df), "frames differ:\n{df}\n{back}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["t.parquet".to_string()]);
    }

    #[test]
    fn parquet_bytes_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.parquet");
        let b = dir.path().join("b.parquet");
        write_parquet(&mut sample(), &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_parquet(&mut sample(), &b).unwrap();
        let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(!ba.is_empty());
        assert!(ba == bb, "same frame gave different parquet bytes");
        // Rewriting in place gives the same bytes again.
        write_parquet(&mut sample(), &a).unwrap();
        assert!(std::fs::read(&a).unwrap() == bb);
    }

    #[test]
    fn mismatched_columns_are_named() {
        let err = Table::new()
            .col("a", vec![1.0f64, 2.0])
            .col("b", vec![1u32])
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
    }
}
