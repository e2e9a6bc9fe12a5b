//! S3 backend (any S3-compatible service): each object is `s3://<bucket>/<key>`.
//!
//! A `put` is durable once S3 acknowledged the PUT; the body carries an `x-amz-checksum-sha256`
//! that S3 verifies before it acknowledges, so a corrupted upload is refused rather than stored.
//! The request is signed with that header and an unsigned payload (`UNSIGNED-PAYLOAD`): the
//! body is hashed once, not once for the checksum and again for the signature.
//! Every call runs under `storage.timeout_s`: a slow or hanging S3 becomes an error (and so a
//! `451` at end of DATA) instead of holding the SMTP session open.

use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::Error;
use crate::config::StorageConfig;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    timeout: Duration,
}

impl S3Store {
    /// Builds the client from `storage.*`: static credentials when both keys are set, otherwise
    /// the default AWS chain (environment, profile, web identity, container, instance metadata),
    /// which is resolved lazily on the first request.
    pub async fn new(config: &StorageConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "mxhook-config",
            ));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let shared = loader.load().await;
        // The checksum is computed here and sent as a header; the SDK's own default would use
        // a chunked trailer that not every S3-compatible server accepts.
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            timeout: config.timeout(),
        }
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes));
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("message/rfc822")
            .checksum_sha256(checksum)
            .body(ByteStream::from(bytes.to_vec()))
            .customize()
            // The signature covers the checksum header, which S3 checks against the body, so
            // signing the body too would hash it a second time on both sides for nothing.
            .disable_payload_signing()
            .send();
        self.within_deadline(key, request)
            .await?
            .map(|_| ())
            .map_err(|err| remote("PUT", key, &err))
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let read = async {
            let output = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|err| get_failed(key, &err))?;
            output
                .body
                .collect()
                .await
                .map(|body| body.into_bytes().to_vec())
                .map_err(|err| Error::Remote {
                    operation: "GET",
                    key: key.to_owned(),
                    message: err.to_string(),
                })
        };
        self.within_deadline(key, read).await?
    }

    /// A ranged GET (`Range: bytes=start-(end-1)`) whose body is passed on chunk by chunk as
    /// it arrives; the request and each chunk run under the deadline.
    pub async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<super::ByteChunks, Error> {
        if end <= start {
            // A range of nothing cannot be asked of S3; only whether the object is there.
            return if self.exists(key).await? {
                Ok(Box::pin(futures_util::stream::empty()))
            } else {
                Err(Error::NotFound {
                    key: key.to_owned(),
                })
            };
        }
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send();
        let output = self
            .within_deadline(key, request)
            .await?
            .map_err(|err| get_failed(key, &err))?;
        // A server that ignored the range would send the object from its start.
        let ranged = output
            .content_range()
            .is_some_and(|range| range.starts_with(&format!("bytes {start}-")));
        if !ranged {
            return Err(Error::Remote {
                operation: "GET",
                key: key.to_owned(),
                message: format!(
                    "asked for bytes {start}-{}, answered Content-Range {:?}",
                    end - 1,
                    output.content_range()
                ),
            });
        }
        let state = (output.body, end - start, key.to_owned(), self.timeout);
        Ok(Box::pin(futures_util::stream::try_unfold(
            state,
            |(mut body, left, key, timeout)| async move {
                if left == 0 {
                    return Ok(None);
                }
                let next = tokio::time::timeout(timeout, body.next())
                    .await
                    .map_err(|_| Error::Timeout {
                        key: key.clone(),
                        after: timeout,
                    })?;
                let chunk = match next {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(err)) => {
                        return Err(Error::Remote {
                            operation: "GET",
                            key,
                            message: err.to_string(),
                        });
                    }
                    None => return Err(super::short_object(&key, left)),
                };
                // More than asked for would be a server ignoring the range: never passed on.
                let chunk =
                    chunk.slice(..chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX)));
                let left = left - chunk.len() as u64;
                Ok(Some((chunk, (body, left, key, timeout))))
            },
        )))
    }

    /// S3 answers a DELETE of a missing key with success, which is what `undo` wants.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let request = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.within_deadline(key, request)
            .await?
            .map(|_| ())
            .map_err(|err| remote("DELETE", key, &err))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        match self.within_deadline(key, request).await? {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(service)) if service.err().is_not_found() => Ok(false),
            Err(err) => Err(remote("HEAD", key, &err)),
        }
    }

    /// Every object under `prefix`, page by page (each page under the deadline).
    pub async fn list(&self, prefix: &str) -> Result<Vec<super::StoredObject>, Error> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send();
            let page = self
                .within_deadline(prefix, request)
                .await?
                .map_err(|err| remote("LIST", prefix, &err))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let modified_ms = object
                    .last_modified()
                    .and_then(|time| time.to_millis().ok())
                    .unwrap_or(0);
                objects.push(super::StoredObject {
                    key: key.to_owned(),
                    modified_ms,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(objects)
    }

    async fn within_deadline<T>(
        &self,
        key: &str,
        request: impl Future<Output = T>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| Error::Timeout {
                key: key.to_owned(),
                after: self.timeout,
            })
    }
}

/// A failed GET: [`Error::NotFound`] when the object is not there, else the remote error.
fn get_failed<R: std::fmt::Debug>(
    key: &str,
    err: &SdkError<aws_sdk_s3::operation::get_object::GetObjectError, R>,
) -> Error {
    match err {
        SdkError::ServiceError(service) if service.err().is_no_such_key() => Error::NotFound {
            key: key.to_owned(),
        },
        _ => remote("GET", key, err),
    }
}

fn remote<E, R>(operation: &'static str, key: &str, err: &SdkError<E, R>) -> Error
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    Error::Remote {
        operation,
        key: key.to_owned(),
        message: DisplayErrorContext(err).to_string(),
    }
}
