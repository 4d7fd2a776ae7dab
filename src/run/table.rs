//! Text tables for `runner diff` and `runner show`: aligned plain text, Markdown, CSV, and
//! numbers formatted with a number of significant digits the way DVC prints them.

use anyhow::{Context, Result};

/// `x` with `digits` significant digits, as Python's `format(x, ".{digits}g")` writes it (what
/// DVC's `--precision` uses): fixed notation for exponents in `-4..digits`, scientific otherwise,
/// trailing zeros dropped.
pub fn fmt_sig(x: f64, digits: usize) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let p = digits.max(1);
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // The exponent after rounding to p digits decides the notation (9.99995 -> 1e+01).
    let sci = format!("{:.*e}", p - 1, x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i32 {
        let m = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        strip_zeros(&format!("{x:.decimals$}")).to_string()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Columns padded to their widest cell, two spaces apart, no trailing spaces (DVC's layout).
pub fn plain(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths = widths(header, rows);
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            l.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(c.chars().count()),
            ));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    w
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A GitHub Markdown table, padded so that it also reads as text.
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let esc_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| md_cell(c)).collect())
        .collect();
    let esc_header: Vec<String> = header.iter().map(|h| md_cell(h)).collect();
    let header_refs: Vec<&str> = esc_header.iter().map(|s| s.as_str()).collect();
    let widths = widths(&header_refs, &esc_rows);
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&esc_header);
    out.push_str(&format!(
        "|{}|\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    ));
    for r in &esc_rows {
        out.push_str(&line(r));
    }
    out
}

/// RFC 4180 CSV (fields quoted where needed).
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> Result<String> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::Any(b'\n'))
        .from_writer(vec![]);
    w.write_record(header).context("writing CSV")?;
    for r in rows {
        w.write_record(r).context("writing CSV")?;
    }
    let bytes = w.into_inner().context("writing CSV")?;
    String::from_utf8(bytes).context("CSV is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers from Python 3: `format(x, ".5g")` (and `.3g`, `.1g` where marked).
    #[test]
    fn significant_digits_match_python() {
        let cases: &[(f64, usize, &str)] = &[
            (0.1, 5, "0.1"),
            (0.123456, 5, "0.12346"),
            (-0.03200000000000003, 5, "-0.032"),
            (9.999951, 5, "10"),
            (0.00009999951, 5, "0.0001"),
            (123456.0, 5, "1.2346e+05"),
            (12345.0, 5, "12345"),
            (99999.5, 5, "1e+05"),
            (9.99995, 5, "10"),
            (0.0001234, 5, "0.0001234"),
            (0.00001234, 5, "1.234e-05"),
            (1e-10, 5, "1e-10"),
            (1.0, 5, "1"),
            (100.0, 5, "100"),
            (2.5, 1, "2"),
            (0.5, 3, "0.5"),
            (1234.5678, 3, "1.23e+03"),
            (0.0, 5, "0"),
            (-0.0, 5, "-0"),
            (1e300, 5, "1e+300"),
            (f64::NAN, 5, "nan"),
            (f64::NEG_INFINITY, 5, "-inf"),
        ];
        for &(x, p, want) in cases {
            assert_eq!(fmt_sig(x, p), want, "{x} with {p} digits");
        }
    }

    #[test]
    fn layouts() {
        let rows = vec![
            vec!["a".to_string(), "1".into()],
            vec!["long|name".into(), "".into()],
        ];
        assert_eq!(
            plain(&["Path", "X"], &rows),
            "Path       X\na          1\nlong|name\n"
        );
        assert_eq!(
            markdown(&["Path", "X"], &rows),
            "| Path       | X |\n|------------|---|\n| a          | 1 |\n| long\\|name |   |\n"
        );
        assert_eq!(
            csv(&["Path", "X"], &rows).unwrap(),
            "Path,X\na,1\nlong|name,\n"
        );
    }
}
