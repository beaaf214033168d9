//! Tenants as rows, for both stores: a tenant is kept whole as JSON under its name.

use hodei_core::tenancy::Tenant;
use hodei_ports::store::Error;

/// The JSON a tenant is stored as.
pub(crate) fn encode(tenant: &Tenant) -> Result<String, Error> {
    serde_json::to_string(tenant)
        .map_err(|err| Error::Corrupt(format!("cannot encode tenant {}: {err}", tenant.name)))
}

/// A stored row back to its tenant, checking that the row's name is the tenant's.
pub(crate) fn decode((name, json): (String, String)) -> Result<Tenant, Error> {
    let tenant: Tenant = serde_json::from_str(&json)
        .map_err(|err| Error::Corrupt(format!("tenant {name}: invalid json: {err}")))?;
    if tenant.name.as_str() != name {
        return Err(Error::Corrupt(format!(
            "row {name} holds tenant {}",
            tenant.name
        )));
    }
    Ok(tenant)
}
