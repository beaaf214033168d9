//! W3C Trace Context: the `traceparent` a submitter sends with a job, checked here so that the
//! server can hand it to the job as `TRACEPARENT` and the job's own spans join the
//! submitter's trace.

use crate::JobSpec;

/// The job environment variable that carries the submitter's `traceparent`.
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `traceparent` header value if it is valid by the W3C rules (lowercase hex
/// `version-trace_id-parent_id-flags`, version not `ff`, ids not all zero; version `00` has
/// exactly these four fields, later versions may add more), else `None`: an invalid one is
/// ignored, as the specification asks, never an error.
pub fn parse_traceparent(value: &str) -> Option<&str> {
    let value = value.trim();
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace_id = fields.next()?;
    let parent_id = fields.next()?;
    let flags = fields.next()?;
    let valid = is_lower_hex(version, 2)
        && version != "ff"
        && is_lower_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_lower_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_lower_hex(flags, 2)
        && (version != "00" || fields.next().is_none());
    valid.then_some(value)
}

/// Gives the job the submitter's trace context: `TRACEPARENT` in its environment, replacing
/// one the spec set. Returns the value applied; an invalid header changes nothing.
pub fn apply_traceparent<'a>(spec: &mut JobSpec, header: Option<&'a str>) -> Option<&'a str> {
    let value = header.and_then(parse_traceparent)?;
    spec.env
        .insert(TRACEPARENT_ENV.to_owned(), value.to_owned());
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_table() {
        for (value, valid) in [
            (VALID, true),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ",
                true,
            ),
            // A later version may carry more fields.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                false,
            ),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(parse_traceparent(value).is_some(), valid, "{value:?}");
        }
    }

    #[test]
    fn a_valid_header_goes_into_the_job_env_and_an_invalid_one_changes_nothing() {
        let mut spec = JobSpec::new(Command::Script("true".into()));
        spec.env.insert(TRACEPARENT_ENV.into(), "old".into());
        assert_eq!(apply_traceparent(&mut spec, Some("nonsense")), None);
        assert_eq!(spec.env[TRACEPARENT_ENV], "old");
        assert_eq!(apply_traceparent(&mut spec, None), None);
        assert_eq!(apply_traceparent(&mut spec, Some(VALID)), Some(VALID));
        assert_eq!(spec.env[TRACEPARENT_ENV], VALID);
    }
}
