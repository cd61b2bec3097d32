//! Durations as operators type them: `90s`, `30m`, `8h`, `7d`.

use chrono::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 8h, 30m or 7d"))?;
    let d = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" | "" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    };
    match d {
        Some(d) if n > 0 => Ok(d),
        _ => Err(format!(
            "'{text}' is not a positive duration like 8h, 30m or 7d"
        )),
    }
}

/// The way an operator would type `d`: the largest unit that divides it.
pub fn format(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        _ if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s != 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_understood() {
        assert_eq!(parse("8h"), Ok(Duration::hours(8)));
        assert_eq!(parse("30m"), Ok(Duration::minutes(30)));
        assert_eq!(parse("7d"), Ok(Duration::days(7)));
        assert!(parse("0h").is_err());
        assert!(parse("8 weeks").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn formatting_uses_the_largest_unit_and_parses_back() {
        for text in ["30d", "36h", "90m", "61s"] {
            assert_eq!(format(parse(text).expect("parses")), text);
        }
        assert_eq!(format(Duration::hours(48)), "2d");
    }
}
