//! Credentials at runtime: minting, checking, listing and revoking them.
//!
//! Every credential is kept in memory (loaded from the store at start, changed only through
//! this service, written to the store before the change is visible), so a check is a map
//! lookup and a hash, and a revocation takes effect for the next request. Whoever holds
//! open sessions subscribes to [`Credentials::revocations`] to close them at once.
//!
//! Secrets are 244 random bits from the OS generator (two v4 UUIDs), so the store keeps
//! their SHA-256: a slow password hash (argon2, bcrypt) defends low-entropy secrets against
//! guessing, and nobody can guess 2^244. The comparison of hashes is constant time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use hodei_core::credential::{
    self, BoundCredential, Principal, Role, WorkerOrigin, format_token, parse_token,
};
use hodei_core::{TenantName, ValidationError, WorkerId};
use hodei_ports::{CredentialRecord, Store, store};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("credential {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// A token to hand to its holder once; never logged (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// What to mint.
#[derive(Debug, Clone, Default)]
pub struct NewCredential {
    pub role: Option<Role>,
    pub worker_id: Option<WorkerId>,
    pub origin: Option<WorkerOrigin>,
    pub tenant: Option<TenantName>,
    pub description: String,
    pub issued_by: Option<String>,
}

fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn random_hex(length: usize) -> String {
    let mut text = String::new();
    while text.len() < length {
        text.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    text.truncate(length);
    text
}

/// A fresh secret: two v4 UUIDs, 244 random bits.
fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The configured admin token, compared as a whole.
    admin_token: String,
    by_id: RwLock<HashMap<String, CredentialRecord>>,
    revocations: broadcast::Sender<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads every credential from the store.
    pub async fn load(store: Arc<dyn Store>, admin_token: String) -> Result<Self, store::Error> {
        let by_id = store
            .list_credentials()
            .await?
            .into_iter()
            .map(|record| (record.id.clone(), record))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                admin_token,
                by_id: RwLock::new(by_id),
                revocations: broadcast::channel(1024).0,
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, CredentialRecord>> {
        self.inner
            .by_id
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, CredentialRecord>> {
        self.inner
            .by_id
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Who presents `token`, if anyone: the configured admin token, or a live credential
    /// whose secret matches. Comparisons are constant time.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        if constant_time_eq::constant_time_eq(token.as_bytes(), self.inner.admin_token.as_bytes()) {
            return Some(Principal::configured_admin());
        }
        let (id, secret) = parse_token(token)?;
        let by_id = self.read();
        let record = by_id.get(id).filter(|r| r.revoked_at.is_none())?;
        let presented = sha256_hex(secret);
        constant_time_eq::constant_time_eq(presented.as_bytes(), record.secret_sha256.as_bytes())
            .then(|| Principal {
                credential_id: Some(record.id.clone()),
                role: record.role,
                worker_id: record.worker_id.clone(),
                tenant: record.tenant.clone(),
            })
    }

    /// Whether the credential `id` is live (the configured admin token, `None`, always is).
    pub fn is_live(&self, id: Option<&str>) -> bool {
        id.is_none_or(|id| self.read().get(id).is_some_and(|r| r.revoked_at.is_none()))
    }

    /// Mints a credential; returns its record and the token, which is never stored.
    pub async fn create(
        &self,
        new: NewCredential,
    ) -> Result<(CredentialRecord, Token), CredentialError> {
        let role = new
            .role
            .ok_or_else(|| ValidationError::new("role", "is required"))?;
        credential::validate_new(role, new.worker_id.as_ref(), new.tenant.as_ref())?;
        if new.description.chars().count() > 200 {
            return Err(ValidationError::new("description", "at most 200 characters").into());
        }
        let secret = new_secret();
        let record = CredentialRecord {
            id: random_hex(12),
            role,
            origin: (role == Role::Worker).then(|| new.origin.unwrap_or(WorkerOrigin::Provisioned)),
            worker_id: new.worker_id,
            tenant: new.tenant,
            description: new.description,
            issued_by: new.issued_by,
            secret_sha256: sha256_hex(&secret),
            created_at: SystemTime::now(),
            revoked_at: None,
        };
        self.inner.store.insert_credential(&record).await?;
        self.write().insert(record.id.clone(), record.clone());
        tracing::info!(credential_id = %record.id, role = %record.role, worker_id = ?record.worker_id, "credential created");
        let token = Token(format_token(&record.id, &secret));
        Ok((record, token))
    }

    /// Mints the credential of worker `worker_id`, revoking any earlier one it had, so
    /// exactly one credential speaks for a worker.
    pub async fn mint_worker(
        &self,
        worker_id: &WorkerId,
        origin: WorkerOrigin,
        issued_by: Option<String>,
    ) -> Result<Token, CredentialError> {
        let earlier: Vec<String> = self
            .read()
            .values()
            .filter(|r| r.worker_id.as_ref() == Some(worker_id) && r.revoked_at.is_none())
            .map(|r| r.id.clone())
            .collect();
        for id in earlier {
            self.revoke(&id).await?;
        }
        let (_, token) = self
            .create(NewCredential {
                role: Some(Role::Worker),
                worker_id: Some(worker_id.clone()),
                origin: Some(origin),
                issued_by,
                description: format!("worker {worker_id}"),
                tenant: None,
            })
            .await?;
        Ok(token)
    }

    /// The newest worker credential ever bound to `worker_id`.
    pub fn bound(&self, worker_id: &WorkerId) -> Option<BoundCredential> {
        self.read()
            .values()
            .filter(|r| r.role == Role::Worker && r.worker_id.as_ref() == Some(worker_id))
            .max_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
            .map(|r| BoundCredential {
                origin: r.origin.unwrap_or(WorkerOrigin::Provisioned),
                revoked: r.revoked_at.is_some(),
            })
    }

    /// Every credential, oldest first.
    pub fn list(&self) -> Vec<CredentialRecord> {
        let mut all: Vec<CredentialRecord> = self.read().values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    pub fn get(&self, id: &str) -> Option<CredentialRecord> {
        self.read().get(id).cloned()
    }

    /// Revokes `id` and what it issued; returns the ids revoked now. Their holders are
    /// refused from the next request on, and [`Credentials::revocations`] tells session
    /// holders to close their sessions.
    pub async fn revoke(&self, id: &str) -> Result<Vec<String>, CredentialError> {
        if !self.read().contains_key(id) {
            return Err(CredentialError::NotFound(id.to_owned()));
        }
        let at = SystemTime::now();
        let revoked = self.inner.store.revoke_credential(id, at).await?;
        {
            let mut by_id = self.write();
            for revoked_id in &revoked {
                if let Some(record) = by_id.get_mut(revoked_id) {
                    record.revoked_at = Some(at);
                }
            }
        }
        for revoked_id in &revoked {
            tracing::info!(credential_id = %revoked_id, "credential revoked");
            let _ = self.inner.revocations.send(revoked_id.clone());
        }
        Ok(revoked)
    }

    /// Revokes the live credentials of `worker_id` (the worker was terminated).
    pub async fn revoke_worker(&self, worker_id: &WorkerId) -> Result<(), CredentialError> {
        let live: Vec<String> = self
            .read()
            .values()
            .filter(|r| r.worker_id.as_ref() == Some(worker_id) && r.revoked_at.is_none())
            .map(|r| r.id.clone())
            .collect();
        for id in live {
            self.revoke(&id).await?;
        }
        Ok(())
    }

    /// Ids of credentials revoked from now on.
    pub fn revocations(&self) -> broadcast::Receiver<String> {
        self.inner.revocations.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hodei_testkit::MemoryStore;

    async fn credentials() -> Credentials {
        Credentials::load(
            Arc::new(MemoryStore::new()),
            "admin-token-0123456789".into(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn minted_tokens_authenticate_until_revoked() {
        let credentials = credentials().await;
        assert_eq!(
            credentials.authenticate("admin-token-0123456789"),
            Some(Principal::configured_admin())
        );
        let (record, token) = credentials
            .create(NewCredential {
                role: Some(Role::Agent),
                ..NewCredential::default()
            })
            .await
            .unwrap();
        assert!(!format!("{token:?}").contains(token.expose()));
        assert_ne!(record.secret_sha256, token.expose());
        let who = credentials.authenticate(token.expose()).unwrap();
        assert_eq!(who.role, Role::Agent);
        assert_eq!(who.credential_id.as_deref(), Some(record.id.as_str()));
        // A wrong secret for a real id, and garbage, are nobody.
        let forged = format_token(&record.id, "0".repeat(64).as_str());
        assert_eq!(credentials.authenticate(&forged), None);
        assert_eq!(credentials.authenticate("admin-token-012345678"), None);
        assert_eq!(credentials.authenticate(""), None);

        let w = WorkerId::new("w-1").unwrap();
        let worker_token = credentials
            .mint_worker(&w, WorkerOrigin::Enrolled, Some(record.id.clone()))
            .await
            .unwrap();
        assert_eq!(
            credentials
                .authenticate(worker_token.expose())
                .unwrap()
                .worker_id,
            Some(w.clone())
        );
        let mut revocations = credentials.revocations();
        let revoked = credentials.revoke(&record.id).await.unwrap();
        assert_eq!(
            revoked.len(),
            2,
            "the agent token and the worker credential it issued"
        );
        assert_eq!(credentials.authenticate(token.expose()), None);
        assert_eq!(credentials.authenticate(worker_token.expose()), None);
        assert!(revocations.try_recv().is_ok());
        assert!(matches!(
            credentials.revoke("nope").await,
            Err(CredentialError::NotFound(_))
        ));
        assert_eq!(
            credentials.bound(&w),
            Some(BoundCredential {
                origin: WorkerOrigin::Enrolled,
                revoked: true
            })
        );
    }

    #[tokio::test]
    async fn a_worker_has_one_live_credential() {
        let credentials = credentials().await;
        let w = WorkerId::new("w-1").unwrap();
        let first = credentials
            .mint_worker(&w, WorkerOrigin::Provisioned, None)
            .await
            .unwrap();
        let second = credentials
            .mint_worker(&w, WorkerOrigin::Provisioned, None)
            .await
            .unwrap();
        assert_eq!(credentials.authenticate(first.expose()), None);
        assert!(credentials.authenticate(second.expose()).is_some());
        credentials.revoke_worker(&w).await.unwrap();
        assert_eq!(credentials.authenticate(second.expose()), None);
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        let credentials = credentials().await;
        let error = credentials
            .create(NewCredential::default())
            .await
            .unwrap_err();
        assert!(matches!(error, CredentialError::Invalid(ref e) if e.field == "role"));
        let error = credentials
            .create(NewCredential {
                role: Some(Role::Tenant),
                ..NewCredential::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(error, CredentialError::Invalid(ref e) if e.field == "tenant"));
    }
}
