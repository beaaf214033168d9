//! `hodei.v1.TokenService`: credentials over gRPC, the same operations and error codes as
//! REST (`/api/v1/tokens`); requests become [`CreateToken`] so both APIs validate one way.

use hodei_modules::Credentials;
use hodei_proto::v1;
use tonic::{Request, Response, Status};

use crate::api::{CreateToken, TokenView};
use crate::error::ApiError;

/// `TokenService` over [`Credentials`].
#[derive(Debug, Clone)]
pub struct TokenGrpc {
    pub credentials: Credentials,
}

fn info(view: TokenView) -> v1::TokenInfo {
    v1::TokenInfo {
        id: view.id,
        role: view.role,
        worker_id: view.worker_id.unwrap_or_default(),
        tenant: view.tenant.unwrap_or_default(),
        description: view.description,
        issued_by: view.issued_by.unwrap_or_default(),
        created_at_ms: view.created_at_ms,
        revoked_at_ms: view.revoked_at_ms.unwrap_or(0),
    }
}

fn status(error: impl Into<ApiError>) -> Status {
    error.into().into()
}

#[tonic::async_trait]
impl v1::token_service_server::TokenService for TokenGrpc {
    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let request = request.into_inner();
        let new = CreateToken {
            role: request.role,
            description: request.description,
            tenant: (!request.tenant.is_empty()).then_some(request.tenant),
        }
        .into_new()
        .map_err(status)?;
        let (record, token) = self.credentials.create(new).await.map_err(status)?;
        Ok(Response::new(v1::CreateTokenResponse {
            info: Some(info(TokenView::new(&record))),
            token: token.expose().to_owned(),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let tokens = self
            .credentials
            .list()
            .iter()
            .map(|record| info(TokenView::new(record)))
            .collect();
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let revoked = self
            .credentials
            .revoke(&request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RevokeTokenResponse { revoked }))
    }
}
