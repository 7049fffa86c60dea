//! One way to print a report in each format: `table` (aligned columns, figures on the
//! right), `json` (one object per line; counts as numbers, money and percentages as
//! exact decimal strings, an empty cell as null) and `csv` (a header line, then rows).

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A group's name (left-aligned).
    Text,
    /// A name that may be absent: an empty cell is JSON null.
    OptionalText,
    /// A whole number (a JSON number).
    Count,
    /// An exact decimal (a JSON string, so no float ever touches it).
    Decimal,
}

/// A report: named columns and rows of cells (one per column, already formatted).
#[derive(Debug, Default)]
pub struct Table {
    pub columns: Vec<(String, Kind)>,
    pub rows: Vec<Vec<String>>,
    /// A last row of totals (its text cells say what it is), printed in every format.
    pub total: Option<Vec<String>>,
}

impl Table {
    pub fn new(columns: impl IntoIterator<Item = (impl Into<String>, Kind)>) -> Table {
        Table {
            columns: columns.into_iter().map(|(n, k)| (n.into(), k)).collect(),
            ..Table::default()
        }
    }

    /// Print in `format` (`table`, `json` or `csv`).
    pub fn print(&self, format: &str) {
        print!("{}", self.render(format));
    }

    /// The report in `format` (`table`, `json` or `csv`), each line ending in a newline:
    /// what [`Table::print`] prints (the console's downloads serve the same bytes).
    pub fn render(&self, format: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let rows = self.rows.iter().chain(self.total.as_ref());
        match format {
            "json" => {
                for (i, row) in rows.enumerate() {
                    let mut obj = serde_json::Map::new();
                    if i == self.rows.len() {
                        obj.insert("total".into(), serde_json::Value::Bool(true));
                    }
                    for ((name, kind), cell) in self.columns.iter().zip(row) {
                        obj.insert(name.clone(), json_cell(*kind, cell));
                    }
                    let _ = writeln!(out, "{}", serde_json::Value::Object(obj));
                }
            }
            "csv" => {
                let names: Vec<String> = self.columns.iter().map(|(n, _)| csv_cell(n)).collect();
                let _ = writeln!(out, "{}", names.join(","));
                for row in rows {
                    let cells: Vec<String> = row.iter().map(|c| csv_cell(c)).collect();
                    let _ = writeln!(out, "{}", cells.join(","));
                }
            }
            _ => {
                let all: Vec<&Vec<String>> = rows.collect();
                let widths: Vec<usize> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| {
                        all.iter()
                            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                            .chain([name.len()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let mut line = |cells: &mut dyn Iterator<Item = &str>| {
                    let cells_out: Vec<String> = cells
                        .zip(&self.columns)
                        .zip(&widths)
                        .map(|((c, (_, kind)), w)| match kind {
                            Kind::Text | Kind::OptionalText => format!("{c:<w$}"),
                            _ => format!("{c:>w$}"),
                        })
                        .collect();
                    let _ = writeln!(out, "{}", cells_out.join("  ").trim_end());
                };
                line(&mut self.columns.iter().map(|(n, _)| n.as_str()));
                for row in all {
                    line(&mut row.iter().map(String::as_str));
                }
            }
        }
        out
    }
}

fn json_cell(kind: Kind, cell: &str) -> serde_json::Value {
    if cell.is_empty() && kind != Kind::Text {
        // an absent name, figure or share (a share of a zero limit)
        return serde_json::Value::Null;
    }
    match kind {
        Kind::Count => cell
            .parse::<i64>()
            .map(serde_json::Value::from)
            .unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::String(cell.to_string()),
    }
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_by_kind() {
        assert_eq!(json_cell(Kind::Count, "12"), serde_json::json!(12));
        assert_eq!(
            json_cell(Kind::Decimal, "0.0001196"),
            serde_json::json!("0.0001196")
        );
        assert_eq!(json_cell(Kind::Decimal, ""), serde_json::Value::Null);
        assert_eq!(json_cell(Kind::Text, ""), serde_json::json!(""));
        assert_eq!(json_cell(Kind::OptionalText, ""), serde_json::Value::Null);
        assert_eq!(
            json_cell(Kind::OptionalText, "ocr"),
            serde_json::json!("ocr")
        );
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
