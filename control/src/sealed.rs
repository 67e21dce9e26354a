//! A job's input at rest, sealed under the customer's own CMK: a deploy request carries the
//! customer's secrets, and control keeps it only so a restarted control can resume the job.
//! Envelope encryption: a KMS data key (`GenerateDataKey` on `alias/m8trx-<name>` with an
//! encryption context naming the customer and the job) encrypts the input with AES-256-GCM;
//! only the data key's ciphertext is stored, so the customer's key policy decides whether
//! the input can ever be read again, and the plaintext key lives only in memory.

use aws_sdk_kms::primitives::Blob;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use m8trx_spec::CustomerName;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};

use crate::error::{ControlError, Result};

/// The sealed input as stored: each field base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The data key, encrypted by KMS under the customer's CMK.
    pub key: String,
    /// The AES-GCM nonce.
    pub nonce: String,
    /// The input, encrypted, with its tag.
    pub data: String,
}

fn context(customer: &CustomerName, job: i64) -> [(String, String); 3] {
    [
        ("m8trx:customer".into(), customer.to_string()),
        ("m8trx:purpose".into(), "control-job-input".into()),
        ("m8trx:job".into(), job.to_string()),
    ]
}

fn aad(customer: &CustomerName, job: i64) -> String {
    format!("m8trx-control-job/{customer}/{job}")
}

fn cipher(key: &[u8]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| ControlError::Conflict("KMS returned a data key that is not 256 bits".into()))
}

/// Seals `plain` for job `job` of `customer`.
pub async fn seal(
    kms: &aws_sdk_kms::Client,
    customer: &CustomerName,
    job: i64,
    plain: &[u8],
) -> Result<Sealed> {
    let alias = format!("alias/m8trx-{customer}");
    let mut req = kms
        .generate_data_key()
        .key_id(&alias)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256);
    for (k, v) in context(customer, job) {
        req = req.encryption_context(k, v);
    }
    let out = req.send().await.map_err(|e| {
        ControlError::aws(
            format!("GenerateDataKey on {alias} (to keep job {job}'s request at rest)"),
            e,
        )
    })?;
    let (Some(key), Some(wrapped)) = (out.plaintext(), out.ciphertext_blob()) else {
        return Err(ControlError::Conflict(format!(
            "GenerateDataKey on {alias} returned no key"
        )));
    };
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| ControlError::Conflict("the system's random source failed".into()))?;
    let mut data = plain.to_vec();
    cipher(key.as_ref())?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(customer, job).as_bytes()),
            &mut data,
        )
        .map_err(|_| ControlError::Conflict("sealing a job's input failed".into()))?;
    Ok(Sealed {
        key: B64.encode(wrapped.as_ref()),
        nonce: B64.encode(nonce),
        data: B64.encode(data),
    })
}

/// Opens what [`seal`] made for the same customer and job; KMS refuses another context.
pub async fn open(
    kms: &aws_sdk_kms::Client,
    customer: &CustomerName,
    job: i64,
    sealed: &Sealed,
) -> Result<Vec<u8>> {
    let bad = |what: &str| {
        ControlError::Conflict(format!(
            "job {job}'s stored request is damaged ({what}); it cannot be resumed: submit it again"
        ))
    };
    let wrapped = B64.decode(&sealed.key).map_err(|_| bad("key"))?;
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&sealed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("nonce"))?;
    let mut data = B64.decode(&sealed.data).map_err(|_| bad("data"))?;
    let mut req = kms
        .decrypt()
        .key_id(format!("alias/m8trx-{customer}"))
        .ciphertext_blob(Blob::new(wrapped));
    for (k, v) in context(customer, job) {
        req = req.encryption_context(k, v);
    }
    let out = req.send().await.map_err(|e| {
        ControlError::aws(
            format!("Decrypt of job {job}'s data key under alias/m8trx-{customer}"),
            e,
        )
    })?;
    let key = out.plaintext().ok_or_else(|| bad("KMS returned no key"))?;
    let plain = cipher(key.as_ref())?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(customer, job).as_bytes()),
            &mut data,
        )
        .map_err(|_| bad("authentication failed"))?;
    Ok(plain.to_vec())
}
