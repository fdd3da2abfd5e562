//! Where a dataset is written: [`DatasetWriter`], the one way `run` and `emit` write a dataset.
//! A local folder is written in place. For an S3 prefix the dataset is written into a private
//! staging folder and its files are uploaded as they are written ([`RemoteOut`]: frames at once,
//! through a bounded queue), `dataset.json` last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use crossbeam_channel::bounded;

use crate::emit::dest::Destination;
use crate::emit::{
    ClipFailure, DatasetInputs, DatasetRecord, EmitOptions, Emitter, FrameJpeg, ManifestEntry,
    RemovalReason, WithheldFrame,
};
use crate::staging::Staging;
use crate::storage::{Location, UploadStats, UploadWatch, Uploader};

/// A dataset being written, wherever it goes: the emitter and, for an S3 prefix, the upload of
/// what it writes ([`RemoteOut`]). `run` and `emit` write through this one type.
pub(crate) struct DatasetWriter {
    emitter: Emitter,
    /// Where the dataset goes, and the clips it includes (for the audit record).
    location: String,
    clips: BTreeSet<String>,
    remote: Option<RemoteOut>,
    /// Frames to upload as they are emitted (S3 only; bounded: the emitter waits for uploads).
    upload: Option<crossbeam_channel::Sender<(String, bytes::Bytes)>>,
}

impl DatasetWriter {
    /// Starts writing a dataset of `clips` into an inspected destination: a local folder is
    /// written in place; an S3 prefix gets a private staging folder and its uploads.
    pub(crate) fn start(
        dest: Destination,
        clips: &BTreeSet<String>,
        inputs: DatasetInputs,
        removal: BTreeMap<String, RemovalReason>,
    ) -> anyhow::Result<DatasetWriter> {
        let previous = dest.previous().cloned();
        let location = dest.store().location().to_string();
        let (remote, mut emitter) = match dest.store().location() {
            Location::Local(_) => (
                None,
                Emitter::create_in(dest, inputs, EmitOptions::default())?,
            ),
            Location::S3 { .. } => {
                let remote = RemoteOut::start(dest, clips)?;
                let emitter =
                    Emitter::create_staging(remote.dir.path(), inputs, EmitOptions::default())?;
                (Some(remote), emitter)
            }
        };
        emitter.set_history(previous, removal);
        let upload = remote.as_ref().map(|r| r.frames.clone());
        Ok(DatasetWriter {
            emitter,
            location,
            clips: clips.clone(),
            remote,
            upload,
        })
    }

    /// Adds one frame (its JPEG from [`crate::emit::encode_jpeg`]) and, for S3, queues its upload.
    pub(crate) fn add_frame(
        &mut self,
        entry: ManifestEntry,
        jpeg: FrameJpeg,
    ) -> anyhow::Result<()> {
        let key = self.emitter.add_frame(entry, &jpeg)?.path.clone();
        if let Some(upload) = &self.upload {
            upload
                .send((key, jpeg.into_bytes().into()))
                .map_err(|_| anyhow::anyhow!("the dataset upload stopped at a failure"))?;
        }
        Ok(())
    }

    /// Records a frame withheld, with its reason.
    pub(crate) fn withhold(&mut self, frame: WithheldFrame) {
        self.emitter.withhold(frame);
    }

    /// Records a selected clip that could not be processed or was left out by policy.
    pub(crate) fn clip_failed(&mut self, failure: ClipFailure) {
        self.emitter.clip_failed(failure);
    }

    /// True once an upload failed: nothing more is uploaded and the caller should stop.
    pub(crate) fn failed(&self) -> bool {
        self.remote.as_ref().is_some_and(RemoteOut::failed)
    }

    /// Writes the manifest, annotations, report and `dataset.json` (last), uploading them for S3;
    /// the first failed upload is the error.
    pub(crate) fn finish(mut self) -> anyhow::Result<DatasetRecord> {
        drop(self.upload.take());
        if let Some(r) = self.remote.take_if(|r| r.failed()) {
            return Err(r.failure());
        }
        let record = self.emitter.finish()?;
        if let Some(remote) = self.remote {
            remote.finish()?;
        }
        crate::audit::note_selection(
            &record.counts.decisions,
            self.clips.iter().map(String::as_str),
        );
        crate::audit::note_written(format!(
            "{} version {} (Merkle root {})",
            self.location, record.version, record.merkle_root
        ));
        Ok(record)
    }
}

/// Uploads a dataset emitted into a staging folder to its S3 prefix.
pub(crate) struct RemoteOut {
    dest: Destination,
    pub(crate) dir: Staging,
    /// Frames to upload, as they are emitted (bounded: the emitter waits for the uploads).
    pub(crate) frames: crossbeam_channel::Sender<(String, bytes::Bytes)>,
    feeder: std::thread::JoinHandle<(Uploader, BTreeSet<String>)>,
    watch: UploadWatch,
}

/// Uploads in flight at once.
const UPLOADS_IN_FLIGHT: usize = 16;

impl RemoteOut {
    /// Begins replacing the inspected destination with a dataset of `clips` (see
    /// [`crate::emit::dest`]), creates the private staging folder and starts the frame uploader.
    pub(crate) fn start(dest: Destination, clips: &BTreeSet<String>) -> anyhow::Result<RemoteOut> {
        dest.begin(clips)?;
        let dir = Staging::create("out").context("cannot create a staging folder")?;
        let (frames, rx) = bounded::<(String, bytes::Bytes)>(UPLOADS_IN_FLIGHT);
        let uploader = Uploader::new(Arc::clone(dest.store()), UPLOADS_IN_FLIGHT);
        let watch = uploader.watch();
        let feeder = std::thread::Builder::new()
            .name("upload-feed".into())
            .spawn(move || {
                let mut sent = BTreeSet::new();
                for (key, data) in rx {
                    if uploader.failed() {
                        break; // closing the channel stops the producer
                    }
                    sent.insert(key.clone());
                    uploader.submit(key, data);
                }
                (uploader, sent)
            })?;
        Ok(RemoteOut {
            dest,
            dir,
            frames,
            feeder,
            watch,
        })
    }

    /// True once an upload failed (nothing more is uploaded; the run should stop).
    pub(crate) fn failed(&self) -> bool {
        self.watch.failed()
    }

    /// Stops after a failed upload and returns its error (the destination keeps its marker, so
    /// the next run can replace it).
    pub(crate) fn failure(self) -> anyhow::Error {
        let location = self.dest.store().location().to_string();
        drop(self.frames);
        match self.feeder.join() {
            Ok((uploader, _)) => match uploader.finish() {
                Err(e) => anyhow::Error::from(e)
                    .context(format!("cannot upload the dataset to {location}")),
                Ok(_) => anyhow::anyhow!("an upload to {location} failed"),
            },
            Err(_) => anyhow::anyhow!("the upload feeder panicked"),
        }
    }

    /// Uploads every other staged file, removes the earlier dataset's objects that this one does
    /// not have, and writes `dataset.json` last.
    pub(crate) fn finish(self) -> anyhow::Result<UploadStats> {
        use crate::emit::paths;
        if self.failed() {
            return Err(self.failure());
        }
        drop(self.frames);
        let (uploader, sent) = self
            .feeder
            .join()
            .map_err(|_| anyhow::anyhow!("the upload feeder panicked"))?;
        let location = self.dest.store().location().to_string();
        let mut files = Vec::new();
        list_files(self.dir.path(), self.dir.path(), &mut files)?;
        let mut written: BTreeSet<String> = sent;
        for key in &files {
            if key == paths::DATASET || written.contains(key) {
                continue;
            }
            if uploader.failed() {
                break;
            }
            let data = std::fs::read(self.dir.path().join(key))
                .with_context(|| format!("cannot read staged {key}"))?;
            uploader.submit(key.clone(), data);
            written.insert(key.clone());
        }
        let stats = uploader
            .finish()
            .with_context(|| format!("cannot upload the dataset to {location}"))?;
        let record = std::fs::read(self.dir.path().join(paths::DATASET))
            .context("the staged dataset.json is missing")?;
        self.dest
            .commit(&written, record)
            .with_context(|| format!("cannot finish the dataset at {location}"))?;
        Ok(stats)
    }
}

/// Every file below `dir`, as `/`-separated keys relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).expect("below root");
            let key: Vec<&str> = rel
                .components()
                .filter_map(|c| c.as_os_str().to_str())
                .collect();
            out.push(key.join("/"));
        }
    }
    Ok(())
}
