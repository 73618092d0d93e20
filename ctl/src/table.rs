//! Human output: aligned tables and value formatting. No I/O besides the `String` it returns.

use serde_json::Value;

/// Render rows under headers, columns separated by two spaces. Columns whose every cell is a
/// number are right-aligned; no trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let mut numeric = vec![true; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(n) {
            width[i] = width[i].max(cell.chars().count());
            if !(cell == "-" || (!cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit()))) {
                numeric[i] = false;
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>, header: bool| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate().take(n) {
            let pad = width[i] - cell.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] && !header {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied(), true);
    for row in rows {
        line(&mut row.iter().map(String::as_str), false);
    }
    out
}

/// A JSON value as a table cell: strings unquoted, null/missing as `-`.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(other) => other.to_string(),
    }
}

/// A field of an object as a table cell.
pub fn field(v: &Value, key: &str) -> String {
    cell(v.get(key))
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn unix_ms(v: Option<&Value>) -> String {
    let Some(ms) = v.and_then(Value::as_i64) else {
        return cell(v);
    };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["ID", "PEER", "N"],
            &[
                vec!["1".into(), "127.0.0.1:5000".into(), "7".into()],
                vec!["12".into(), "[::1]:9".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "ID  PEER            N\n 1  127.0.0.1:5000  7\n12  [::1]:9         -\n"
        );
    }

    #[test]
    fn formats_cells_and_times() {
        assert_eq!(cell(Some(&json!("x"))), "x");
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(&json!(true))), "yes");
        assert_eq!(unix_ms(Some(&json!(0))), "1970-01-01T00:00:00Z");
        assert_eq!(
            unix_ms(Some(&json!(1_709_251_199_000i64))),
            "2024-02-29T23:59:59Z"
        );
    }
}
