//! How long a pipeline keeps its events. A pipeline without a retention of its own keeps them
//! for the node-wide default (`DASH_RETENTION`).

use std::time::Duration;

/// The shortest retention a pipeline may set: maintenance runs hourly by default, so anything
/// shorter would not be honoured anyway.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// The longest: ten years.
pub const MAX_RETENTION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Why a retention was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRetention {
    #[error("retention {0:?} is not a duration such as \"7days\" or \"12h\"")]
    Unreadable(String),
    #[error("retention must be between 1h and 10 years, not {0}")]
    OutOfRange(String),
}

/// Reads a retention written as a duration (`"7days"`, `"12h"`, `"1week"`) and checks its range.
pub fn parse_retention(raw: &str) -> Result<Duration, InvalidRetention> {
    let duration = humantime::parse_duration(raw.trim()).map_err(|_| InvalidRetention::Unreadable(raw.to_owned()))?;
    check_retention(duration)
}

/// Checks that a retention lies between [`MIN_RETENTION`] and [`MAX_RETENTION`].
pub fn check_retention(duration: Duration) -> Result<Duration, InvalidRetention> {
    if (MIN_RETENTION..=MAX_RETENTION).contains(&duration) {
        Ok(duration)
    } else {
        Err(InvalidRetention::OutOfRange(format_retention(duration)))
    }
}

/// A retention as the API and pages show it: `"7days"`, `"1day 12h"`.
pub fn format_retention(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_range_are_read_and_shown_back() {
        assert_eq!(parse_retention("7days"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention(" 12h "), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(format_retention(Duration::from_secs(7 * 86_400)), "7days");
        assert_eq!(format_retention(Duration::from_secs(36 * 3600)), "1day 12h");
    }

    #[test]
    fn unreadable_or_out_of_range_retentions_are_refused() {
        assert!(matches!(parse_retention("forever"), Err(InvalidRetention::Unreadable(_))));
        assert!(matches!(parse_retention(""), Err(InvalidRetention::Unreadable(_))));
        assert!(matches!(parse_retention("59m"), Err(InvalidRetention::OutOfRange(_))));
        assert!(matches!(parse_retention("11years"), Err(InvalidRetention::OutOfRange(_))));
        assert!(check_retention(MIN_RETENTION).is_ok());
        assert!(check_retention(MAX_RETENTION).is_ok());
    }
}
