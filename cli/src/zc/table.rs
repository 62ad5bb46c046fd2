//! Aligned text tables the way istioctl prints them (Go's `text/tabwriter` with a space pad): every cell but the
//! last of a row is padded to its column's widest cell plus `padding`; the last cell is written as it is.

/// A table: a header row, then data rows, all with the header's number of cells.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
    padding: usize,
}

impl Table {
    /// A table with istioctl's usual one-space padding.
    pub fn new(header: &[&str]) -> Table {
        Table::with_padding(header, 1)
    }

    /// istioctl pads the certificate table with five spaces.
    pub fn with_padding(header: &[&str], padding: usize) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            padding,
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let n = self.rows[0].len();
        let mut cells = cells;
        cells.resize(n, String::new());
        self.rows.push(cells);
    }

    /// Data rows (not counting the header).
    pub fn len(&self) -> usize {
        self.rows.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn render(&self) -> String {
        let columns = self.rows[0].len();
        let width = |c: usize| {
            self.rows
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns.saturating_sub(1)).map(width).collect();
        let mut out = String::new();
        for row in &self.rows {
            for (c, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if let Some(w) = widths.get(c) {
                    let pad = w + self.padding - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_all_but_the_last_column() {
        let mut t = Table::new(&["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]);
        t.row(vec![
            "default".into(),
            "allow-nothing".into(),
            "Allow".into(),
            "Namespace".into(),
        ]);
        t.row(vec![
            "default".into(),
            "allow-waypoint".into(),
            "Allow".into(),
            "WorkloadSelector".into(),
        ]);
        // istioctl's testdata/policies.txt.
        assert_eq!(
            t.render(),
            "NAMESPACE POLICY NAME    ACTION SCOPE\n\
             default   allow-nothing  Allow  Namespace\n\
             default   allow-waypoint Allow  WorkloadSelector\n"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn empty_cells_still_take_their_column() {
        let mut t = Table::with_padding(&["A", "B", "C"], 5);
        t.row(vec!["x".into(), String::new(), "z".into()]);
        assert_eq!(t.render(), "A     B     C\nx           z\n");
        let header_only = Table::new(&["ONE", "TWO"]);
        assert!(header_only.is_empty());
        assert_eq!(header_only.render(), "ONE TWO\n");
    }
}
