//! The S3 store, on `aws-sdk-s3` driven by one shared internal tokio runtime so the rest of the
//! pipeline stays synchronous and thread-based.
//!
//! - Credentials and region come from the standard AWS chain (environment, profile, web identity,
//!   container/instance metadata), region falling back to `us-east-1`; [`S3Options::credentials`]
//!   and [`S3Options::region`] override them (tests use this to stay off the network).
//! - [`S3Options::endpoint`] (`--s3-endpoint` / `AWS_ENDPOINT_URL`) points at an S3-compatible
//!   store and switches to path-style addressing.
//! - Objects above [`S3Options::multipart_threshold`] go up as multipart uploads
//!   ([`S3Options::part_size`] parts, [`S3Options::part_concurrency`] in flight, aborted on
//!   failure); reads stream through a bounded channel.
//! - Throttling, 5xx and transient network errors are retried by the SDK's standard retry
//!   strategy (exponential backoff with jitter, [`S3Options::max_attempts`] attempts).
//! - Nothing waits forever: each attempt has [`S3Options::attempt_timeout`], a whole request
//!   `attempt_timeout x (max_attempts + 1)`, and a download that receives nothing for
//!   `attempt_timeout` fails; a server that accepts connections and never answers gives a
//!   [`StorageError::Dispatch`] naming the object, within a bounded time.
//! - Errors display short and stable (operation, URL, S3 code / HTTP status, the server's
//!   message); the SDK's whole chain, raw HTTP responses included, goes to the debug log only.
//! - Every write carries the configured server-side encryption ([`Sse`]). With
//!   [`S3Options::require_sse`] a write without SSE configured is refused before anything is
//!   sent, and a write the server does not confirm as encrypted is deleted again and reported.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use bytes::{Buf, Bytes, BytesMut};

use super::{
    Location, ObjectMeta, PROBE_PREFIX, Result, StorageError, Store, check_key, check_prefix,
    join_key,
};

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (all but the last) and its largest part count.
const MIN_PART: u64 = 5 * MIB;
const MAX_PART: u64 = 5 * 1024 * MIB;
const MAX_PARTS: u64 = 10_000;
/// Body chunks buffered between the network and a [`Store::reader`] (a few hundred KiB).
const READ_CHANNEL_CHUNKS: usize = 16;

/// Server-side encryption applied to every object written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sse {
    /// SSE-S3 (`AES256`): keys managed by S3.
    Aes256,
    /// SSE-KMS (`aws:kms`), with a key id or ARN (`None`: the account's `aws/s3` key).
    Kms {
        /// The KMS key id or ARN.
        key_id: Option<String>,
    },
}

impl Sse {
    fn algorithm(&self) -> ServerSideEncryption {
        match self {
            Sse::Aes256 => ServerSideEncryption::Aes256,
            Sse::Kms { .. } => ServerSideEncryption::AwsKms,
        }
    }

    fn kms_key_id(&self) -> Option<String> {
        match self {
            Sse::Kms { key_id } => key_id.clone(),
            Sse::Aes256 => None,
        }
    }
}

/// Static S3 credentials, used instead of the AWS chain when set (tests, S3-compatible stores).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// How to talk to S3. [`Default`] gives the AWS chain, no endpoint override, no SSE, 16 MiB
/// multipart threshold with 8 MiB parts (4 in flight), 5 attempts per request and 60 s per
/// attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); enables path-style addressing.
    pub endpoint: Option<String>,
    /// Region; `None`: from the AWS chain, else `us-east-1`.
    pub region: Option<String>,
    /// Static credentials; `None`: the AWS chain.
    pub credentials: Option<S3Credentials>,
    /// Server-side encryption on every write.
    pub sse: Option<Sse>,
    /// Refuse writes without SSE configured, and writes the server does not confirm as encrypted.
    pub require_sse: bool,
    /// Objects larger than this many bytes are uploaded in parts.
    pub multipart_threshold: u64,
    /// Part size in bytes (5 MiB to 5 GiB; raised automatically to stay within 10,000 parts).
    pub part_size: u64,
    /// Parts of one object uploaded at once.
    pub part_concurrency: usize,
    /// Attempts per request, retries included (throttling, 5xx, transient network errors).
    pub max_attempts: u32,
    /// How long one attempt may take (and a download may go without receiving data); a request
    /// as a whole gives up after `attempt_timeout x (max_attempts + 1)`.
    pub attempt_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            credentials: None,
            sse: None,
            require_sse: false,
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
            part_concurrency: 4,
            max_attempts: 5,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }
}

/// [`S3Options::attempt_timeout`] unless `--s3-timeout` / `CLEARFRAME_S3_TIMEOUT` says otherwise.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

impl S3Options {
    /// The limit on a whole request, retries and backoff included.
    pub fn operation_timeout(&self) -> Duration {
        self.attempt_timeout
            .saturating_mul(self.max_attempts.saturating_add(1))
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StorageError::InvalidOption(m));
        if !(MIN_PART..=MAX_PART).contains(&self.part_size) {
            return bad(format!(
                "S3 part size {} is outside 5 MiB..5 GiB",
                self.part_size
            ));
        }
        if self.attempt_timeout.is_zero() {
            return bad("the S3 attempt timeout must be more than 0 s".to_owned());
        }
        if self.multipart_threshold == 0 || self.part_concurrency == 0 || self.max_attempts == 0 {
            return bad(
                "multipart threshold, part concurrency and attempts must be at least 1".to_owned(),
            );
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return bad(format!(
                "S3 endpoint `{endpoint}` must start with http:// or https://"
            ));
        }
        if self.require_sse && self.sse.is_none() {
            tracing::debug!("require_sse is set without --sse: every write to S3 will be refused");
        }
        Ok(())
    }
}

/// The settings that make one S3 client; stores with equal keys share a client.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    endpoint: Option<String>,
    region: Option<String>,
    credentials: Option<S3Credentials>,
    max_attempts: u32,
    attempt_timeout: Duration,
}

/// A store under an S3 bucket and prefix.
#[derive(Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    location: Location,
    options: S3Options,
}

impl S3Store {
    /// A store for `s3://bucket/prefix`. Loads the AWS configuration (once per distinct
    /// endpoint/region/credentials) but sends no request.
    pub fn open(bucket: &str, prefix: &str, options: &S3Options) -> Result<S3Store> {
        options.validate()?;
        let location = Location::parse(&format!("s3://{bucket}/{prefix}"))?;
        let Location::S3 { bucket, prefix } = location.clone() else {
            unreachable!("an s3:// URL")
        };
        Ok(S3Store {
            client: client_for(options),
            bucket,
            prefix,
            location,
            options: options.clone(),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket; succeeds if this account already owns it.
    pub fn create_bucket(&self) -> Result<()> {
        let url = format!("s3://{}", self.bucket);
        match block_on(self.client.create_bucket().bucket(&self.bucket).send()) {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(sdk_error("CreateBucket", &url, &self.bucket, err)),
        }
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(join_key(&self.prefix, key))
    }

    fn object_url(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key}", self.bucket)
    }

    /// The SSE to send with a write, or the refusal under `require_sse`.
    fn sse_for_write(&self, url: &str) -> Result<Option<&Sse>> {
        match (&self.options.sse, self.options.require_sse) {
            (None, true) => Err(StorageError::SseRequired {
                url: url.to_owned(),
            }),
            (sse, _) => Ok(sse.as_ref()),
        }
    }

    /// Checks the server's answer against the SSE asked for.
    fn confirm_sse(
        &self,
        url: &str,
        full_key: &str,
        answered: Option<&ServerSideEncryption>,
    ) -> Result<()> {
        let Some(sse) = &self.options.sse else {
            return Ok(());
        };
        let requested = sse.algorithm();
        if answered == Some(&requested) {
            return Ok(());
        }
        let answered = answered.map_or("nothing".to_owned(), |a| a.as_str().to_owned());
        if self.options.require_sse {
            if let Err(err) = block_on(
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .send(),
            ) {
                tracing::error!(object = url, error = %error_chain(&err), "could not remove an object written without confirmed encryption");
                tracing::debug!(object = url, error = %DisplayErrorContext(&err), "DeleteObject failed");
            }
            return Err(StorageError::SseNotConfirmed {
                url: url.to_owned(),
                requested: requested.as_str().to_owned(),
                answered,
            });
        }
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                object = url,
                requested = requested.as_str(),
                answered,
                "the S3 endpoint did not confirm server-side encryption (warning once)"
            );
        }
        Ok(())
    }

    fn put_single(&self, full_key: &str, url: &str, data: Bytes) -> Result<()> {
        let sse = self.sse_for_write(url)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full_key)
            .set_server_side_encryption(sse.map(Sse::algorithm))
            .set_ssekms_key_id(sse.and_then(Sse::kms_key_id))
            .body(ByteStream::from(data));
        let out =
            block_on(request.send()).map_err(|e| sdk_error("PutObject", url, &self.bucket, e))?;
        self.confirm_sse(url, full_key, out.server_side_encryption())
    }

    /// A multipart upload of `parts` (each at least 5 MiB but the last); aborted on any failure.
    fn put_multipart(
        &self,
        full_key: &str,
        url: &str,
        parts: &mut dyn Iterator<Item = Result<Bytes>>,
    ) -> Result<u64> {
        let sse = self.sse_for_write(url)?;
        let create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .set_server_side_encryption(sse.map(Sse::algorithm))
            .set_ssekms_key_id(sse.and_then(Sse::kms_key_id));
        let created = block_on(create.send())
            .map_err(|e| sdk_error("CreateMultipartUpload", url, &self.bucket, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::S3 {
                operation: "CreateMultipartUpload",
                url: url.to_owned(),
                code: None,
                message: "the response has no upload id".to_owned(),
            })?
            .to_owned();
        let abort = || {
            let request = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(&upload_id);
            if let Err(err) = block_on(request.send()) {
                tracing::warn!(object = url, upload_id, error = %error_chain(&err), "could not abort a failed multipart upload");
                tracing::debug!(object = url, error = %DisplayErrorContext(&err), "AbortMultipartUpload failed");
            }
        };
        let (completed, total) = match self.upload_parts(full_key, url, &upload_id, parts) {
            Ok(done) => done,
            Err(err) => {
                abort();
                return Err(err);
            }
        };
        let complete = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        match block_on(complete.send()) {
            Ok(out) => {
                // Only the completed object's answer counts: CreateMultipartUpload accepting the
                // header says nothing about what was stored.
                self.confirm_sse(url, full_key, out.server_side_encryption())?;
                Ok(total)
            }
            Err(err) => {
                abort();
                Err(sdk_error("CompleteMultipartUpload", url, &self.bucket, err))
            }
        }
    }

    fn upload_parts(
        &self,
        full_key: &str,
        url: &str,
        upload_id: &str,
        parts: &mut dyn Iterator<Item = Result<Bytes>>,
    ) -> Result<(Vec<CompletedPart>, u64)> {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.options.part_concurrency));
        let mut tasks = Vec::new();
        let mut total = 0u64;
        let mut outcome = Ok(());
        for (index, part) in parts.enumerate() {
            let part = match part {
                Ok(part) => part,
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            };
            let number = index as u64 + 1;
            if number > MAX_PARTS {
                outcome = Err(StorageError::S3 {
                    operation: "UploadPart",
                    url: url.to_owned(),
                    code: None,
                    message: format!(
                        "more than {MAX_PARTS} parts of {} bytes",
                        self.options.part_size
                    ),
                });
                break;
            }
            total += part.len() as u64;
            let permit = block_on(Arc::clone(&slots).acquire_owned())
                .expect("the semaphore is never closed");
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number as i32)
                .body(ByteStream::from(part));
            let (url, bucket) = (url.to_owned(), self.bucket.clone());
            tasks.push(runtime().spawn(async move {
                let _permit = permit;
                let out = request
                    .send()
                    .await
                    .map_err(|e| sdk_error("UploadPart", &url, &bucket, e))?;
                Ok::<_, StorageError>(
                    CompletedPart::builder()
                        .part_number(number as i32)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                )
            }));
        }
        if outcome.is_err() {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
        let results = block_on(async move {
            let mut results = Vec::with_capacity(tasks.len());
            for task in tasks {
                results.push(task.await);
            }
            results
        });
        outcome?;
        let mut completed = Vec::with_capacity(results.len());
        for result in results {
            let part = result.map_err(|e| StorageError::S3 {
                operation: "UploadPart",
                url: url.to_owned(),
                code: None,
                message: format!("upload task failed: {e}"),
            })??;
            completed.push(part);
        }
        Ok((completed, total))
    }

    fn part_size_for(&self, len: u64) -> u64 {
        self.options
            .part_size
            .max(len.div_ceil(MAX_PARTS))
            .min(MAX_PART)
    }
}

impl Store for S3Store {
    fn location(&self) -> &Location {
        &self.location
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        // The SDK retries requests, not a body that fails after the headers arrived (a reset
        // connection, or a checksum mismatch: s3s-fs, for one, renames the new body into place
        // before its stored checksum, so a read racing a replace can pair the two). A whole
        // object read starts again from scratch, up to `max_attempts` times.
        let mut attempt = 1;
        loop {
            let request = self.client.get_object().bucket(&self.bucket).key(&full_key);
            let out = block_on(request.send())
                .map_err(|e| sdk_error("GetObject", &url, &self.bucket, e))?;
            match block_on(read_body(out.body, self.options.attempt_timeout)) {
                Ok(body) => return Ok(body),
                Err(err) if attempt < self.options.max_attempts => {
                    tracing::debug!(object = %url, attempt, error = %err, "retrying a failed body read");
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                    attempt += 1;
                }
                Err(BodyError::Stalled(after)) => {
                    return Err(StorageError::Dispatch {
                        operation: "GetObject",
                        url,
                        message: format!(
                            "the download received nothing for {:.1} s",
                            after.as_secs_f64()
                        ),
                    });
                }
                Err(err @ BodyError::Failed(_)) => {
                    return Err(StorageError::S3 {
                        operation: "GetObject",
                        url,
                        code: None,
                        message: err.to_string(),
                    });
                }
            }
        }
    }

    fn reader(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        let request = self.client.get_object().bucket(&self.bucket).key(&full_key);
        let out =
            block_on(request.send()).map_err(|e| sdk_error("GetObject", &url, &self.bucket, e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_CHANNEL_CHUNKS);
        // A body that breaks after the headers (a reset, a truncated answer) is resumed where it
        // broke: a ranged GET of the rest, of the same object version (`If-Match` on its ETag),
        // up to `max_attempts` times in all.
        let resume = Resume {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full_key,
            etag: out.e_tag().map(str::to_owned),
            length: out.content_length().and_then(|l| u64::try_from(l).ok()),
            attempts: self.options.max_attempts,
        };
        let mut body = out.body;
        let stall = self.options.attempt_timeout;
        runtime().spawn(async move {
            let mut received = 0u64;
            let mut attempt = 1;
            loop {
                let broke = match tokio::time::timeout(stall, body.try_next()).await {
                    Ok(Ok(Some(chunk))) => {
                        received += chunk.len() as u64;
                        // A closed channel means the reader was dropped: stop downloading.
                        if tx.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Ok(Ok(None)) if resume.length.is_none_or(|l| received >= l) => break,
                    Ok(Ok(None)) => format!(
                        "the body ended after {received} of {} bytes",
                        resume.length.unwrap_or_default()
                    ),
                    Ok(Err(e)) => {
                        tracing::debug!(object = %url, error = %DisplayErrorContext(&e), "download failed");
                        format!("the download failed: {}", error_chain(&e))
                    }
                    Err(_) => format!(
                        "the download received nothing for {:.1} s",
                        stall.as_secs_f64()
                    ),
                };
                if attempt < resume.attempts && resume.etag.is_some() {
                    attempt += 1;
                    tracing::debug!(object = %url, attempt, received, why = %broke, "resuming a broken download");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    match resume.rest(received).await {
                        Ok(rest) => {
                            body = rest;
                            continue;
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(io::Error::other(format!("reading {url}: {e}"))))
                                .await;
                            break;
                        }
                    }
                }
                let kind = if broke.starts_with("the download received nothing") {
                    io::ErrorKind::TimedOut
                } else {
                    io::ErrorKind::Other
                };
                let _ = tx
                    .send(Err(io::Error::new(kind, format!("reading {url}: {broke}"))))
                    .await;
                break;
            }
        });
        Ok(Box::new(ChannelReader {
            rx,
            chunk: Bytes::new(),
            done: false,
        }))
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        let len = data.len() as u64;
        if len <= self.options.multipart_threshold {
            return self.put_single(&full_key, &url, data);
        }
        let part = self.part_size_for(len) as usize;
        let mut rest = data;
        let mut parts = std::iter::from_fn(move || {
            (!rest.is_empty()).then(|| Ok(rest.split_to(part.min(rest.len()))))
        });
        self.put_multipart(&full_key, &url, &mut parts).map(drop)
    }

    fn put_reader(&self, key: &str, reader: &mut dyn Read) -> Result<u64> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        self.sse_for_write(&url)?;
        let part_size = self.options.part_size;
        let mut read_part = || -> Result<Bytes> {
            let mut buf = Vec::with_capacity(part_size as usize);
            reader
                .take(part_size)
                .read_to_end(&mut buf)
                .map_err(|source| StorageError::Source {
                    url: url.clone(),
                    source,
                })?;
            Ok(Bytes::from(buf))
        };
        // Buffer up to the threshold: small objects go up in one PUT.
        let mut head = Vec::new();
        let mut total = 0u64;
        let mut eof = false;
        while !eof && total <= self.options.multipart_threshold {
            let part = read_part()?;
            eof = (part.len() as u64) < part_size;
            total += part.len() as u64;
            if !part.is_empty() {
                head.push(part);
            }
        }
        if eof && total <= self.options.multipart_threshold {
            let data = match head.len() {
                0 => Bytes::new(),
                1 => head.pop().expect("one part"),
                _ => head
                    .iter()
                    .fold(BytesMut::with_capacity(total as usize), |mut all, p| {
                        all.extend_from_slice(p);
                        all
                    })
                    .freeze(),
            };
            self.put_single(&full_key, &url, data)?;
            return Ok(total);
        }
        let mut eof_seen = eof;
        let rest = std::iter::from_fn(|| {
            if eof_seen {
                return None;
            }
            match read_part() {
                Ok(part) => {
                    eof_seen = (part.len() as u64) < part_size;
                    (!part.is_empty()).then_some(Ok(part))
                }
                Err(err) => {
                    eof_seen = true;
                    Some(Err(err))
                }
            }
        });
        let mut parts = head.into_iter().map(Ok).chain(rest);
        self.put_multipart(&full_key, &url, &mut parts)
    }

    fn put_record(&self, key: &str, data: Bytes) -> Result<()> {
        // A PUT replaces the object atomically and is durable once acknowledged.
        self.put(key, data)
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        let sse = self.sse_for_write(&url)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .if_none_match("*")
            .set_server_side_encryption(sse.map(Sse::algorithm))
            .set_ssekms_key_id(sse.and_then(Sse::kms_key_id))
            .body(ByteStream::from(data));
        match block_on(request.send()) {
            Ok(out) => {
                self.confirm_sse(&url, &full_key, out.server_side_encryption())?;
                Ok(true)
            }
            // 412: the object exists; 409: another conditional write to it is in flight.
            Err(e)
                if matches!(
                    e.raw_response().map(|r| r.status().as_u16()),
                    Some(412 | 409)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("PutObject", &url, &self.bucket, e)),
        }
    }

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        let out = block_on(
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .send(),
        )
        .map_err(|e| sdk_error("HeadObject", &url, &self.bucket, e))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().map(|t| t.trim_matches('"').to_owned()),
            encryption: out.server_side_encryption().map(|s| s.as_str().to_owned()),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let url = self.object_url(&full_prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take());
            let page = block_on(request.send())
                .map_err(|e| sdk_error("ListObjectsV2", &url, &self.bucket, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(strip.as_str())) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    etag: object.e_tag().map(|t| t.trim_matches('"').to_owned()),
                    encryption: None,
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_owned()),
                (Some(true), None) => {
                    return Err(StorageError::S3 {
                        operation: "ListObjectsV2",
                        url,
                        code: None,
                        message: "a truncated listing came without a continuation token".to_owned(),
                    });
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn probe_write(&self) -> Result<()> {
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let key = format!(
            "{PROBE_PREFIX}{}.{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        );
        let full_key = self.full_key(&key)?;
        let url = self.object_url(&full_key);
        // The PUT's own answer is checked (and the probe removed) under require_sse...
        self.put_single(
            &full_key,
            &url,
            Bytes::from_static(b"clearframe write probe\n"),
        )?;
        // ...and so is what the server says it stored.
        if let (true, Some(sse)) = (self.options.require_sse, &self.options.sse) {
            let requested = sse.algorithm();
            let stored = self.head(&key)?.encryption;
            if stored.as_deref() != Some(requested.as_str()) {
                self.delete(&key)?;
                return Err(StorageError::SseNotConfirmed {
                    url,
                    requested: requested.as_str().to_owned(),
                    answered: stored.unwrap_or_else(|| "nothing".to_owned()),
                });
            }
        }
        self.delete(&key)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full_key = self.full_key(key)?;
        let url = self.object_url(&full_key);
        match block_on(
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .send(),
        ) {
            Ok(_) => Ok(()),
            Err(err) => match sdk_error("DeleteObject", &url, &self.bucket, err) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

/// What resuming a broken download needs: the object, its version and length.
struct Resume {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    etag: Option<String>,
    length: Option<u64>,
    attempts: u32,
}

impl Resume {
    /// The object's bytes from `from` on, if it is still the same version.
    async fn rest(&self, from: u64) -> std::result::Result<ByteStream, String> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={from}-"))
            .set_if_match(self.etag.clone())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "resuming the download at byte {from} failed: {}",
                    error_chain(&e)
                )
            })?;
        Ok(out.body)
    }
}

/// A blocking reader over body chunks sent by the download task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    done: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(err)) => {
                    self.done = true;
                    return Err(err);
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Why reading a response body failed.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// Nothing arrived for this long.
    #[error("the download received nothing for {:.1} s", .0.as_secs_f64())]
    Stalled(Duration),
    /// The stream broke (a short description, not the SDK's whole chain).
    #[error("reading the body failed: {0}")]
    Failed(String),
}

/// Reads a whole body, failing when no chunk arrives for `stall`.
async fn read_body(mut body: ByteStream, stall: Duration) -> std::result::Result<Bytes, BodyError> {
    let mut out = BytesMut::new();
    loop {
        match tokio::time::timeout(stall, body.try_next()).await {
            Ok(Ok(Some(chunk))) => out.extend_from_slice(&chunk),
            Ok(Ok(None)) => return Ok(out.freeze()),
            Ok(Err(e)) => {
                tracing::debug!(error = %DisplayErrorContext(&e), "body read failed");
                return Err(BodyError::Failed(error_chain(&e)));
            }
            Err(_) => return Err(BodyError::Stalled(stall)),
        }
    }
}

/// An error and its sources, joined by `: ` on one line: the `Display` texts only, never the
/// `Debug` dump that [`DisplayErrorContext`] appends (which holds raw HTTP responses).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    one_line(&parts.join(": "))
}

/// Collapses whitespace (newlines included) and bounds the length of a server-supplied text.
fn one_line(text: &str) -> String {
    let mut out: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The cause of a request that got no usable answer: `timed out`, the I/O error's kind
/// (`connection refused`, …), or the error's own short chain.
fn dispatch_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::Other => one_line(&io.to_string()),
                kind => kind.to_string(),
            };
        }
        next = e.source();
    }
    error_chain(err)
}

/// Turns an SDK error into a [`StorageError`] that names the object and the cause, in a short,
/// stable text (what ends up in records and reports); the whole chain goes to the debug log.
fn sdk_error<E>(
    operation: &'static str,
    url: &str,
    bucket: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(operation, object = url, error = %DisplayErrorContext(&err), "S3 request failed");
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_owned);
    let server_message = err.message().map(one_line).unwrap_or_default();
    let url = url.to_owned();
    let dispatch = match &err {
        SdkError::TimeoutError(_) => Some("timed out".to_owned()),
        SdkError::DispatchFailure(d) if d.is_timeout() => Some("timed out".to_owned()),
        SdkError::DispatchFailure(_) => Some(dispatch_cause(&err)),
        SdkError::ConstructionFailure(_) => Some(format!(
            "the request could not be built: {}",
            error_chain(&err)
        )),
        _ => None,
    };
    if let Some(message) = dispatch {
        return StorageError::Dispatch {
            operation,
            url,
            message,
        };
    }
    match (code.as_deref(), status) {
        (Some("NoSuchKey" | "NotFound"), _) | (None, Some(404)) => StorageError::NotFound { url },
        (Some("NoSuchBucket"), _) => StorageError::NoSuchBucket {
            bucket: bucket.to_owned(),
        },
        (
            Some(
                c @ ("InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"),
            ),
            _,
        ) => StorageError::Credentials {
            operation,
            url,
            code: c.to_owned(),
            message: server_message,
        },
        (Some("AccessDenied" | "Forbidden"), _) | (None, Some(403)) => StorageError::AccessDenied {
            operation,
            url,
            message: if server_message.is_empty() {
                "HTTP 403 without details; the credentials may be wrong or lack permission"
                    .to_owned()
            } else {
                server_message
            },
        },
        _ => {
            let mut message = match (&code, status) {
                (Some(c), Some(s)) => format!("{c} (HTTP {s})"),
                (Some(c), None) => c.clone(),
                (None, Some(s)) => format!("HTTP {s}"),
                (None, None) => "an error without a code or status".to_owned(),
            };
            if !server_message.is_empty() {
                message = format!("{message}: {server_message}");
            }
            StorageError::S3 {
                operation,
                url,
                code,
                message,
            }
        }
    }
}

/// The shared runtime that drives every S3 request.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clearframe-s3")
            .enable_all()
            .build()
            .expect("building the S3 runtime")
    })
}

/// Runs a future to completion on the shared runtime. Called from inside another runtime, it
/// hops to a scoped thread instead of panicking.
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(future))
                .join()
                .expect("S3 request thread panicked")
        })
    } else {
        runtime().block_on(future)
    }
}

/// One client per distinct endpoint/region/credentials, shared by every store that uses them.
fn client_for(options: &S3Options) -> Client {
    static CLIENTS: OnceLock<Mutex<HashMap<ClientKey, Client>>> = OnceLock::new();
    let key = ClientKey {
        endpoint: options.endpoint.clone(),
        region: options.region.clone(),
        credentials: options.credentials.clone(),
        max_attempts: options.max_attempts,
        attempt_timeout: options.attempt_timeout,
    };
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(client) = clients.get(&key) {
        return client.clone();
    }
    let client = build_client(&key);
    clients.insert(key, client.clone());
    client
}

fn build_client(key: &ClientKey) -> Client {
    let retry = RetryConfig::standard()
        .with_max_attempts(key.max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(20));
    let attempt = key.attempt_timeout;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(attempt.min(Duration::from_secs(5)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt.saturating_mul(key.max_attempts.saturating_add(1)))
        .build();
    let region = match &key.region {
        Some(region) => RegionProviderChain::first_try(Region::new(region.clone())),
        None => RegionProviderChain::default_provider().or_else(Region::from_static("us-east-1")),
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts)
        .region(region);
    if let Some(endpoint) = &key.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(creds) = &key.credentials {
        loader = loader.credentials_provider(Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            None,
            None,
            "clearframe-static",
        ));
    }
    let shared = block_on(loader.load());
    let custom_endpoint = key.endpoint.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(custom_endpoint)
        .build();
    Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    /// An S3 error as the SDK hands it over: the parsed error and the raw response, whose
    /// `date` header (and request ids) differ on every call.
    fn answer(status: u16, code: &str, date: &str) -> SdkError<GetObjectError, HttpResponse> {
        let mut raw = HttpResponse::new(
            status.try_into().unwrap(),
            SdkBody::from(format!(
                "<Error><Code>{code}</Code><Message>We encountered an internal error.</Message><RequestId>{date}</RequestId></Error>"
            )),
        );
        raw.headers_mut().insert("date", date.to_owned());
        raw.headers_mut()
            .insert("x-amz-request-id", format!("req-{date}"));
        let err = GetObjectError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("We encountered an internal error.")
                .custom("s3_extended_request_id", format!("ext-{date}"))
                .build(),
        );
        SdkError::service_error(err, raw)
    }

    /// Regression (trust boundaries, item 4): the message of a storage error used to carry the
    /// SDK's whole chain, `Debug` dump of the raw HTTP response included (a `date` header, request
    /// ids), into failure reasons that dataset.json and the report record.
    #[test]
    fn storage_errors_are_short_and_stable() {
        let url = "s3://bkt/clips/a.mp4";
        let texts: Vec<String> = [
            "Wed, 02 Dec 2026 06:00:00 GMT",
            "Wed, 02 Dec 2026 06:00:07 GMT",
        ]
        .into_iter()
        .map(|date| {
            sdk_error("GetObject", url, "bkt", answer(500, "InternalError", date)).to_string()
        })
        .collect();
        assert_eq!(
            texts[0], texts[1],
            "the text differs between two identical failures"
        );
        let text = &texts[0];
        assert_eq!(
            text,
            "GetObject s3://bkt/clips/a.mp4: InternalError (HTTP 500): We encountered an internal error."
        );
        for leak in [
            "date", "GMT", "req-", "ext-", "Response", "headers", "<Error>",
        ] {
            assert!(!text.contains(leak), "{leak:?} in {text:?}");
        }
        // A response without a parseable error: the status only.
        let raw = HttpResponse::new(502u16.try_into().unwrap(), SdkBody::from("<html>"));
        let err: SdkError<GetObjectError, HttpResponse> = SdkError::service_error(
            GetObjectError::generic(ErrorMetadata::builder().build()),
            raw,
        );
        assert_eq!(
            sdk_error("GetObject", url, "bkt", err).to_string(),
            "GetObject s3://bkt/clips/a.mp4: HTTP 502"
        );
        // A timeout: short, with the hint.
        let err: SdkError<GetObjectError, HttpResponse> = SdkError::timeout_error(
            "operation timeout (all attempts including retries) occurred after 6s",
        );
        let text = sdk_error("GetObject", url, "bkt", err).to_string();
        assert!(
            text.starts_with(
                "GetObject s3://bkt/clips/a.mp4: could not complete the request: timed out\nhint:"
            ),
            "{text}"
        );
    }
}
