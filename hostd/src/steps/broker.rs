//! The tenant's registration with the credential broker (its role, its subnet) and the
//! token file its containers read (directory bind-mounted at [`crate::host::TOKEN_MOUNT`]).
//! A stopped or quarantined tenant keeps neither.

use std::time::Duration;

use async_trait::async_trait;

use super::{blocking, Run, Step, StepKind};
use crate::error::StepError;
use crate::host::Host;
use crate::record::{now_secs, Record};

/// How long a rotated-out token keeps working, for requests that read the old file.
pub const TOKEN_OVERLAP: Duration = Duration::from_secs(300);

/// Registers and deregisters the tenant; keeps its token fresh.
pub struct Broker;

/// Registers the tenant and makes sure its token file holds a token the broker accepts:
/// minted when missing, when the broker lost it (a broker restart keeps no tokens) or when
/// half its lifetime has passed; the old one stays valid for [`TOKEN_OVERLAP`] so a request
/// in flight never sees a 401. Returns the id of a newly minted token.
pub(crate) async fn ensure_token(host: &Host, rec: &Record) -> Result<Option<String>, StepError> {
    let Some(sock) = &host.cfg.broker_admin else {
        return Ok(None);
    };
    let client = cred_broker::AdminClient::new(sock);
    client.register(&Host::role_spec(rec)?).await?;
    let path = host.token_path(rec);
    let half = host.cfg.token_ttl.as_secs() / 2;
    let now = now_secs();
    let fresh_at_broker = client
        .list()
        .await?
        .iter()
        .filter(|t| t.spec.name == rec.spec.name)
        .flat_map(|t| &t.tokens)
        .any(|t| !t.expired && t.created_at + half > now);
    if fresh_at_broker && path.exists() {
        return Ok(None);
    }
    let minted = client
        .mint(rec.name(), host.cfg.token_ttl, Some(TOKEN_OVERLAP))
        .await?;
    let (uid, gid) = Host::remapped_root(rec);
    blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StepError::Io {
                action: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        cred_broker::write_token_file(
            &path,
            &cred_broker::Token::from_secret(minted.token),
            Some(cred_broker::FileOwner { uid, gid }),
        )
        .map_err(StepError::from)
    })
    .await?;
    Ok(Some(minted.id))
}

#[async_trait]
impl Step for Broker {
    fn kind(&self) -> StepKind {
        StepKind::Broker
    }

    async fn up(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        if !run.rec.serving() {
            return self.down(run).await;
        }
        if let Some(id) = ensure_token(run.host, run.rec).await? {
            run.say(format!("broker token {id} minted"));
        }
        Ok(())
    }

    async fn down(&self, run: &mut Run<'_>) -> Result<(), StepError> {
        if let Some(sock) = &run.host.cfg.broker_admin {
            match cred_broker::AdminClient::new(sock)
                .deregister(run.rec.name())
                .await
            {
                Ok(()) | Err(cred_broker::AdminError::Api { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        super::remove_tree(run.host.cfg.token_dir.join(run.rec.name())).await
    }

    async fn check(&self, host: &Host, rec: &Record) -> Result<bool, StepError> {
        // In place means: what `up` leaves for this record's state.
        let has_token = host.token_path(rec).exists();
        Ok(host.cfg.broker_admin.is_none() || has_token == rec.serving())
    }
}
