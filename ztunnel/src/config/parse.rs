//! Value parsers for environment variables: booleans, numbers, Go-style durations and the worker-thread count.

use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, Env};

pub(super) fn parse_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ConfigError::invalid(var, v, "expected true or false")),
    }
}

pub(super) fn parse_num<T: FromStr>(var: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::invalid(var, v, "expected a non-negative integer in range"))
}

/// Go's `time.ParseDuration` syntax (`24h`, `1h30m`, `1.5s`, `500ms`, `10us`), plus a bare number of seconds.
pub(super) fn parse_duration(var: &str, v: &str) -> Result<Duration, ConfigError> {
    go_duration(v.trim())
        .ok_or_else(|| ConfigError::invalid(var, v, "expected a duration such as 30s, 5m or 1h30m"))
}

fn go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A CPU amount: an integer or fractional number of cores (`2`, `1.5`), or millicores (`500m`). Rounded up.
fn parse_cpus(var: &str, v: &str) -> Result<usize, ConfigError> {
    let bad = || ConfigError::invalid(var, v, "expected a CPU amount such as 2, 1.5 or 500m");
    let t = v.trim();
    let cores = match t.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map_err(|_| bad())? / 1000.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if !cores.is_finite() || cores < 0.0 {
        return Err(bad());
    }
    Ok(cores.ceil() as usize)
}

/// `AMBIT_WORKER_SPILL_PERCENT`: `1..=100` (default 70), or `off`.
pub(super) fn worker_spill_percent(env: &Env<'_>) -> Result<Option<u32>, ConfigError> {
    const VAR: &str = "AMBIT_WORKER_SPILL_PERCENT";
    match env.get(VAR).map(str::trim) {
        None => Ok(Some(70)),
        Some("off") => Ok(None),
        Some(v) => match parse_num::<u32>(VAR, v)? {
            n @ 1..=100 => Ok(Some(n)),
            _ => Err(ConfigError::invalid(VAR, v, "expected 1..=100 or off")),
        },
    }
}

/// `ZTUNNEL_WORKER_THREADS` (`N`, `N%` of the CPUs, `0` = all), else an explicit CPU limit
/// (`ZTUNNEL_CPU_LIMIT`, then `ZTUNNEL_RESOURCE_CPU_LIMIT`), else max(ceil(25 % of CPUs), CPU request, 2).
pub(super) fn worker_threads(env: &Env<'_>, cpus: usize) -> Result<usize, ConfigError> {
    const VAR: &str = "ZTUNNEL_WORKER_THREADS";
    let cpus = cpus.max(1);
    if let Some(v) = env.get(VAR) {
        let t = v.trim();
        let n = match t.strip_suffix('%') {
            Some(pct) => {
                let pct: usize = parse_num(VAR, pct)?;
                if pct == 0 || pct > 100 {
                    return Err(ConfigError::invalid(VAR, v, "percentage must be 1..=100"));
                }
                (cpus * pct).div_ceil(100)
            }
            None => match parse_num::<usize>(VAR, t)? {
                0 => cpus,
                n => n,
            },
        };
        return Ok(n.max(1));
    }
    for var in ["ZTUNNEL_CPU_LIMIT", "ZTUNNEL_RESOURCE_CPU_LIMIT"] {
        if let Some(v) = env.get(var) {
            let n = parse_cpus(var, v)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }
    let request = env
        .get("ZTUNNEL_RESOURCE_CPU_REQUEST")
        .map(|v| parse_cpus("ZTUNNEL_RESOURCE_CPU_REQUEST", v))
        .transpose()?;
    Ok(cpus.div_ceil(4).max(request.unwrap_or(0)).max(2))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_duration("X", s);
        assert_eq!(d("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(d("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1h30m15s"), Ok(Duration::from_secs(5415)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "h", "10x", "1h30", "-5s", "1..5s", "s10"] {
            let err = d(bad).unwrap_err();
            assert!(err.to_string().starts_with("X="), "{bad}: {err}");
        }
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("B", "TRUE"), Ok(true));
        assert_eq!(parse_bool("B", "0"), Ok(false));
        assert!(
            parse_bool("B", "yes")
                .unwrap_err()
                .to_string()
                .contains("B=\"yes\"")
        );
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpus("C", "2"), Ok(2));
        assert_eq!(parse_cpus("C", "1.5"), Ok(2));
        assert_eq!(parse_cpus("C", "500m"), Ok(1));
        assert!(parse_cpus("C", "two").is_err());
        assert!(parse_cpus("C", "-1").is_err());
    }
}
