//! Arrival profiles as rows, for both stores: a pool's profile is kept whole as JSON under
//! the pool's name. Rates are written as text (Rust's shortest form that reads back to the
//! same number), so a profile survives the store bit for bit, as JSON numbers would not
//! (`serde_json` parses floats to within one unit in the last place by default).

use hodei_core::pool_pass::ArrivalProfile;
use hodei_ports::store::Error;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Stored {
    rates: Vec<String>,
    seen: Vec<u32>,
    current: Option<(u64, u64, u64)>,
}

/// The JSON a pool's profile is stored as.
pub(crate) fn encode(pool: &str, profile: &ArrivalProfile) -> Result<String, Error> {
    let stored = Stored {
        rates: profile.rates.iter().map(f64::to_string).collect(),
        seen: profile.seen.clone(),
        current: profile.current,
    };
    serde_json::to_string(&stored).map_err(|err| {
        Error::Corrupt(format!(
            "cannot encode the arrival profile of pool {pool}: {err}"
        ))
    })
}

/// A stored row back to its pool and profile.
pub(crate) fn decode((pool, json): (String, String)) -> Result<(String, ArrivalProfile), Error> {
    let corrupt = |what: String| Error::Corrupt(format!("arrival profile of pool {pool}: {what}"));
    let stored: Stored =
        serde_json::from_str(&json).map_err(|err| corrupt(format!("invalid json: {err}")))?;
    let rates = stored
        .rates
        .iter()
        .map(|rate| {
            rate.parse::<f64>()
                .map_err(|err| corrupt(format!("rate {rate:?}: {err}")))
        })
        .collect::<Result<Vec<f64>, Error>>()?;
    let profile = ArrivalProfile {
        rates,
        seen: stored.seen,
        current: stored.current,
    };
    Ok((pool, profile))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail by panicking.
mod tests {
    use super::*;

    #[test]
    fn a_profile_survives_encoding_bit_for_bit() {
        let mut profile = ArrivalProfile::default();
        profile.rates[3] = 0.1 + 0.2;
        profile.rates[4] = 1.0 / 3.0;
        profile.rates[5] = f64::MIN_POSITIVE;
        profile.seen[3] = 2;
        profile.current = Some((1, 2, 3));
        let json = encode("p", &profile).unwrap();
        assert_eq!(
            decode(("p".to_owned(), json)).unwrap(),
            ("p".to_owned(), profile)
        );
    }

    #[test]
    fn a_bad_rate_is_corrupt_not_a_panic() {
        let json = r#"{"rates":["x"],"seen":[],"current":null}"#.to_owned();
        let err = decode(("p".to_owned(), json)).unwrap_err();
        assert!(
            err.to_string().contains("arrival profile of pool p"),
            "{err}"
        );
    }
}
