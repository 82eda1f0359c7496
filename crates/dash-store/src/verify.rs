//! How a pipeline's deliveries are verified when a provider (GitHub, Stripe, …) sends them: the
//! provider and its options (`verify`, JSON, never a secret) and the provider's secret, the one
//! it replaced still accepted for [`ROTATION_GRACE`](crate::ROTATION_GRACE) when the provider
//! stays the same. `secret` stays the pipeline's Standard Webhooks secret throughout, so a
//! release that knows no providers still reads every row. Both backends share the SQL text.

use std::collections::HashMap;

use dash_domain::now_ms;
use dash_providers::VerifySpec;

use crate::{PipelineRecord, ROTATION_GRACE, Store, StoreError};

const PROVIDERS: &str = "SELECT id, verify, verify_secret, previous_verify_secret, previous_verify_expires_at \
     FROM pipelines WHERE verify IS NOT NULL";
const CURRENT_SECRET: &str = "SELECT verify_secret FROM pipelines WHERE id = $1";
/// $1 verify, $2 whether the old secret stays in its grace, $3 until when, $4 the new secret,
/// $5 the pipeline.
const SET: &str = "UPDATE pipelines SET verify = $1, \
     previous_verify_secret = CASE WHEN $2 THEN verify_secret END, \
     previous_verify_expires_at = CASE WHEN $2 THEN $3 END, \
     verify_secret = $4 WHERE id = $5";

/// A provider pipeline's way of checking deliveries.
#[derive(Debug, Clone)]
pub struct ProviderAuth {
    pub spec: VerifySpec,
    /// The current secret, then the one it replaced while its grace lasts.
    pub secrets: Vec<String>,
    /// Until when the second secret is accepted.
    pub previous_expires_ms: Option<i64>,
}

type ProviderRow = (String, String, Option<String>, Option<String>, Option<i64>);

/// A stored `verify`, read back.
fn spec_of(text: &str) -> Result<VerifySpec, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    VerifySpec::from_json(&value).map_err(|e| e.to_string())
}

impl PipelineRecord {
    /// The provider its `verify` names, as stored; `None`: Standard Webhooks.
    pub fn provider(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(self.verify.as_deref()?).ok()?;
        value.get("provider")?.as_str().map(str::to_owned)
    }
}

impl Store {
    /// Every provider pipeline's verification, by pipeline id. A `verify` this release cannot
    /// read (written by a newer one) leaves its pipeline out: its deliveries are refused, and
    /// nothing else is affected.
    pub(crate) async fn provider_auths(&self) -> Result<HashMap<String, ProviderAuth>, StoreError> {
        let rows: Vec<ProviderRow> =
            on_backend!(self, readers, |pool| sqlx::query_as(PROVIDERS).fetch_all(pool).await?);
        let now = now_ms();
        let mut auths = HashMap::with_capacity(rows.len());
        for (id, verify, secret, previous, previous_until) in rows {
            let spec = match spec_of(&verify) {
                Ok(spec) => spec,
                Err(err) => {
                    tracing::warn!(pipeline = id, error = %err, "a pipeline's verify cannot be read; its deliveries are refused");
                    continue;
                }
            };
            let mut secrets: Vec<String> = secret.into_iter().collect();
            let grace = previous_until.filter(|until| *until > now);
            if grace.is_some() {
                secrets.extend(previous);
            }
            auths.insert(id, ProviderAuth { spec, secrets, previous_expires_ms: grace });
        }
        Ok(auths)
    }

    /// Sets how a pipeline's deliveries are verified. A provider with its secret replaces what
    /// was there; under the same provider the replaced secret keeps working for the grace
    /// period. Standard Webhooks (`secret: None`) goes back to the pipeline's own
    /// Standard Webhooks secret. Setting what is already there changes nothing (every
    /// ingestor applies the config's at start): the flag says whether anything changed.
    pub async fn set_verify(
        &self,
        pipeline: &str,
        spec: &VerifySpec,
        secret: Option<&str>,
    ) -> Result<(PipelineRecord, bool), StoreError> {
        let record = self.find_pipeline(pipeline).await?.ok_or_else(|| StoreError::NotFound(pipeline.to_owned()))?;
        let old = record.verify.as_deref().and_then(|text| spec_of(text).ok());
        let current_secret: Option<String> = on_backend!(self, writer, |pool| {
            sqlx::query_scalar(CURRENT_SECRET).bind(&record.id).fetch_one(pool).await?
        });
        let same_provider = old.as_ref().is_some_and(|old| old.provider == spec.provider);
        let (verify, secret) = match spec.provider {
            dash_providers::Provider::StandardWebhooks => (None, None),
            _ => (Some(spec.to_json().to_string()), secret),
        };
        let unchanged = match &old {
            Some(old) => old == spec && current_secret.as_deref() == secret,
            None => verify.is_none(),
        };
        if unchanged {
            return Ok((record, false));
        }
        let keep_previous = same_provider && verify.is_some();
        let until = now_ms() + ROTATION_GRACE.as_millis() as i64;
        on_backend!(self, writer, |pool| {
            sqlx::query(SET)
                .bind(verify)
                .bind(keep_previous)
                .bind(until)
                .bind(secret)
                .bind(&record.id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        let record = self.find_pipeline(&record.id).await?.ok_or_else(|| StoreError::NotFound(pipeline.to_owned()))?;
        Ok((record, true))
    }
}
