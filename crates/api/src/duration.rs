//! Durations as Istio's YAML writes them: Go's `time.ParseDuration` form (`1.5s`,
//! `100ms`, `1h30m`), which is also what the CRDs' CEL `duration()` accepts.

use std::time::Duration;

/// Parses `"1.5s"`, `"100ms"`, `"1h2m3s"`, `"0"`. Negative durations are refused: no
/// Istio field accepts one.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("{text:?} is not a duration such as 1.5s, 100ms or 1h30m"));
        }
        let number: f64 =
            rest[..number_len].parse().map_err(|_| format!("{text:?}: bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("{text:?} is missing a unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("{text:?} has unknown unit {other:?}")),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in ["", "5", "1x", "s", "-1s", "1.2.3s", "ms5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
