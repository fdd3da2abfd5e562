//! Detectors on real images: the pinned models must find the face in `astronaut.png` (CenterFace
//! and, independently, RetinaFace), the person, dog and horse in `person.jpg` (NanoDet), and no
//! face in `dog.jpg`; a model whose blake3 differs from the manifest must be refused.

use std::path::PathBuf;

use clearframe::{
    inference::{self, InferenceError, Manifest, Model, ModelOptions},
    vision::{
        BBox, CenterFace, CenterFaceConfig, Detection, NanoDet, NanoDetConfig, RetinaFace,
        RetinaFaceConfig, VisionError, coco,
    },
};

fn media(name: &str) -> image::RgbImage {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/media")
        .join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn opts() -> ModelOptions {
    ModelOptions::default()
}

/// The single best detection, asserting there is one.
fn best(dets: &[Detection], what: &str) -> Detection {
    *dets
        .first()
        .unwrap_or_else(|| panic!("{what}: nothing detected"))
}

/// A plausible face box in the 512x512 astronaut portrait: inside the frame, a sensible size,
/// in the upper half where the head is.
fn assert_plausible_face(b: &BBox, img: &image::RgbImage) {
    let (cx, cy) = b.center();
    assert!(
        b.width() > 40.0 && b.width() < 300.0 && b.height() > 40.0 && b.height() < 350.0,
        "{b:?}"
    );
    assert!(
        cx > 0.0 && cx < img.width() as f32 && cy < img.height() as f32 / 2.0,
        "{b:?}"
    );
}

#[test]
fn centerface_finds_the_astronaut_face() {
    let img = media("astronaut.png");
    let cf = CenterFace::new(&opts(), CenterFaceConfig::default()).unwrap();
    let dets = cf.detect(&img).unwrap();
    let face = best(&dets, "CenterFace on astronaut.png");
    assert!(face.score > 0.5, "{dets:?}");
    assert_eq!(face.class_id, 0);
    assert_plausible_face(&face.bbox, &img);
    assert_eq!(
        dets.iter().filter(|d| d.score > 0.5).count(),
        1,
        "one person, one face: {dets:?}"
    );
}

#[test]
fn retinaface_finds_the_astronaut_face_where_centerface_does() {
    let img = media("astronaut.png");
    let rf = RetinaFace::new(&opts(), RetinaFaceConfig::default()).unwrap();
    let cf = CenterFace::new(&opts(), CenterFaceConfig::default()).unwrap();
    let r = best(&rf.detect(&img).unwrap(), "RetinaFace on astronaut.png");
    let c = best(&cf.detect(&img).unwrap(), "CenterFace on astronaut.png");
    assert!(r.score > 0.5);
    assert_plausible_face(&r.bbox, &img);
    // Two independent models agree on where the face is.
    assert!(
        r.bbox.iou(&c.bbox) > 0.4,
        "RetinaFace {r:?} vs CenterFace {c:?}"
    );
}

#[test]
fn centerface_at_a_lower_scale_still_finds_the_face_in_frame_pixels() {
    let img = media("astronaut.png");
    let full = CenterFace::new(&opts(), CenterFaceConfig::default()).unwrap();
    let half = CenterFace::new(
        &opts(),
        CenterFaceConfig {
            scale: Some((256, 256)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(half.input_size((512, 512)), (256, 256));
    let a = best(&full.detect(&img).unwrap(), "full");
    let b = best(&half.detect(&img).unwrap(), "half");
    assert!(
        a.bbox.iou(&b.bbox) > 0.6,
        "boxes must come back in frame pixels: {a:?} vs {b:?}"
    );
}

#[test]
fn nanodet_finds_person_dog_and_horse_in_person_jpg() {
    let img = media("person.jpg");
    // The dog scores 0.45 here: a per-class threshold lets it in without lowering the others.
    let config = NanoDetConfig::default().with_threshold("dog", 0.4).unwrap();
    let nd = NanoDet::new(&opts(), config.clone()).unwrap();
    let dets = nd.detect(&img).unwrap();
    let names: Vec<&str> = dets
        .iter()
        .map(|d| coco::NAMES[d.class_id as usize])
        .collect();
    for want in ["person", "dog", "horse"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let person = dets.iter().find(|d| d.class_id == 0).unwrap();
    // The person stands upright: taller than wide, inside the frame.
    assert!(person.bbox.height() > person.bbox.width(), "{person:?}");
    assert!(person.bbox.x1 <= img.width() as f32 && person.bbox.y1 <= img.height() as f32);
    // Raising one class's threshold above 1 removes that class only.
    let no_dogs = NanoDet::new(&opts(), config.without("dog").unwrap()).unwrap();
    let d2 = no_dogs.detect(&img).unwrap();
    assert!(d2.iter().all(|d| coco::NAMES[d.class_id as usize] != "dog"));
    assert!(d2.iter().any(|d| d.class_id == 0));
}

#[test]
fn dog_jpg_has_no_faces() {
    let img = media("dog.jpg");
    let cf = CenterFace::new(&opts(), CenterFaceConfig::default()).unwrap();
    let rf = RetinaFace::new(&opts(), RetinaFaceConfig::default()).unwrap();
    assert_eq!(cf.detect(&img).unwrap(), vec![], "CenterFace");
    assert_eq!(rf.detect(&img).unwrap(), vec![], "RetinaFace");
}

#[test]
fn model_with_wrong_blake3_is_refused() {
    let src = inference::models_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("manifest.json"), dir.path().join("manifest.json")).unwrap();
    let mut bytes = std::fs::read(src.join("retinaface_tiny.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01; // one flipped bit
    std::fs::write(dir.path().join("retinaface_tiny.onnx"), &bytes).unwrap();
    let options = ModelOptions {
        models_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let err = Model::load("retinaface_tiny", &options).unwrap_err();
    match &err {
        InferenceError::HashMismatch {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, "retinaface_tiny");
            let manifest = Manifest::load(&src).unwrap();
            assert_eq!(expected, &manifest.models["retinaface_tiny"].blake3);
            assert_eq!(actual, blake3::hash(&bytes).to_hex().as_str());
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("retinaface_tiny") && msg.contains("refused"),
        "{msg}"
    );
    // Through a detector the same refusal surfaces.
    let err = RetinaFace::new(&options, RetinaFaceConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            VisionError::Inference(InferenceError::HashMismatch { .. })
        ),
        "{err}"
    );
    // The untouched file loads from the real folder.
    assert!(Model::load("retinaface_tiny", &opts()).is_ok());
}

#[test]
fn unknown_model_and_missing_file_are_clear_errors() {
    let err = Model::load("yolo_v99", &opts()).unwrap_err();
    assert!(matches!(err, InferenceError::UnknownModel { .. }), "{err}");
    assert!(
        err.to_string().contains("centerface"),
        "lists known models: {err}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        inference::models_dir().join("manifest.json"),
        dir.path().join("manifest.json"),
    )
    .unwrap();
    let options = ModelOptions {
        models_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let err = Model::load("nanodet_coco", &options).unwrap_err();
    assert!(matches!(err, InferenceError::ModelRead { .. }), "{err}");
}

#[test]
fn provenance_names_model_hash_and_runtime_version() {
    let cf = CenterFace::new(&opts(), CenterFaceConfig::default()).unwrap();
    let p = cf.provenance();
    assert_eq!(p.name, "centerface");
    let file = std::fs::read(inference::models_dir().join("centerface_dynamic.onnx")).unwrap();
    assert_eq!(p.blake3, blake3::hash(&file).to_hex().as_str());
    assert_eq!(p.onnxruntime, inference::ORT_VERSION);
    assert_eq!(
        inference::runtime().unwrap().version(),
        inference::ORT_VERSION
    );
}

#[test]
fn one_detector_shared_by_threads_gives_the_same_answer() {
    let img = media("astronaut.png");
    let cf = CenterFace::new(
        &ModelOptions {
            intra_threads: Some(1),
            ..opts()
        },
        CenterFaceConfig::default(),
    )
    .unwrap();
    let alone = cf.detect(&img).unwrap();
    let results: Vec<Vec<Detection>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| cf.detect(&img).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, alone);
    }
}
