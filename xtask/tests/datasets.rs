//! Datasets other than CIFAR-10: a CIFAR-100 binary release (CIFAR-10's images with
//! remapped labels), MNIST IDX files (synthetic digits, gzipped and not) and a folder of
//! PNG images per class (CIFAR-10's images): `layerwise-prepare` detects each, and the
//! smoke pipeline runs end to end on each. CIFAR-10's images are the real ones when
//! `CIFAR10_DIR` is set.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::dataset::Dataset;
use layerwise_prepare::{prepare, PrepareOptions};
use std::path::{Path, PathBuf};
use xtask::greedy::run;

mod common;

/// Images (CHW bytes, one after another) and their labels.
type Split = (Vec<u8>, Vec<u8>);

/// `n` records of CIFAR-10's training batches and `m` of its test batch.
fn cifar10(source: &Path, n: usize, m: usize) -> (Split, Split) {
    let mut train = (Vec::new(), Vec::new());
    for b in 1..=5 {
        let bytes = std::fs::read(source.join(format!("data_batch_{b}.bin"))).unwrap();
        for r in bytes.chunks_exact(3073) {
            if train.1.len() == n {
                break;
            }
            train.1.push(r[0]);
            train.0.extend_from_slice(&r[1..]);
        }
    }
    let test = common::test_images(source, m);
    let test = (test.iter().flat_map(|(_, i)| i.clone()).collect(), test.iter().map(|(l, _)| *l).collect());
    (train, test)
}

/// The smoke pipeline on `source` into run folder `name`: its dataset.
fn smoke(e: &common::Env, name: &str, source: &Path) -> Dataset {
    let mut a = e.args(name);
    a.inputs.source = Some(source.to_path_buf());
    let out = run(&a).unwrap().unwrap();
    assert_eq!(out.depths.len(), 3);
    assert!(e.path(name).join("report.md").exists());
    Dataset::open(&Plan(&a).data).unwrap()
}

#[allow(non_snake_case)]
fn Plan(a: &xtask::args::GreedyArgs) -> xtask::plan::Plan {
    xtask::plan::Plan::new(a).unwrap()
}

fn prepared(source: &Path, out: &Path, edit: impl FnOnce(&mut PrepareOptions)) -> anyhow::Result<Dataset> {
    let mut o = PrepareOptions::new(out);
    o.source = Some(source.to_path_buf());
    o.artifacts = out.parent().unwrap().to_path_buf();
    edit(&mut o);
    prepare(&o)?;
    Dataset::open(out)
}

#[test]
fn cifar100_runs_with_fine_or_coarse_labels() {
    let e = common::env();
    let src = common::source_or_synthetic(&e.path("c10"));
    let (train, test) = cifar10(&src, 3000, 1000);
    let root =
        layerwise_testkit::formats::write_cifar100_binary(&e.path("c100"), (&train.0, &train.1), (&test.0, &test.1))
            .unwrap();
    let ds = smoke(&e, "c100-run", &e.path("c100"));
    assert_eq!((ds.meta.name.as_str(), ds.meta.classes.len(), ds.meta.image_shape), ("cifar-100", 100, [3, 32, 32]));
    assert_eq!(ds.meta.classes[7], "fine_7");
    let coarse =
        prepared(&root, &e.path("coarse.safetensors"), |o| o.read.labels = layerwise_core::config::Labels::Coarse)
            .unwrap();
    assert_eq!((coarse.meta.classes.len(), coarse.meta.classes[3].as_str()), (20, "coarse_3"));
    // The coarse label of a CIFAR-10 image of class l is 2l or 2l+1.
    let labels = coarse.split(layerwise_core::dataset::Split::Test).unwrap().labels.to_vec();
    assert!(labels.iter().zip(&test.1).all(|(&c, &l)| c / 2 == l), "coarse labels");
    // The Python release of the same images gives the same dataset (but its source).
    let py =
        layerwise_testkit::formats::write_cifar100_python(&e.path("c100py"), (&train.0, &train.1), (&test.0, &test.1))
            .unwrap();
    let p =
        prepared(&py, &e.path("py.safetensors"), |o| o.read.labels = layerwise_core::config::Labels::Coarse).unwrap();
    assert_eq!(p.meta.classes, coarse.meta.classes);
    let t = |d: &Dataset| d.split(layerwise_core::dataset::Split::Test).unwrap().images.to_vec();
    assert!(t(&p) == t(&coarse) && p.meta.source_kind == "cifar-100-python-folder");
    assert_eq!(p.split(layerwise_core::dataset::Split::Test).unwrap().labels.to_vec(), labels);
}

#[test]
fn mnist_idx_files_run_gzipped_or_not_from_the_pipelines_source() {
    let e = common::env();
    let gz = layerwise_testkit::formats::write_idx_folder(&e.path(""), "mnist-gz", 3000, 1000, true).unwrap();
    // The source named in the pipeline's [data] section.
    let pipeline = e.smoke_with(
        "mnist",
        &[("limit_test = 1000", &format!("limit_test = 1000\nsource = {:?}", gz.to_string_lossy()))],
    );
    let mut a = e.args("mnist-run");
    a.pipeline = Some(pipeline);
    a.inputs.source = None;
    let out = run(&a).unwrap().unwrap();
    assert_eq!(out.depths.len(), 3);
    let plan = Plan(&a);
    // Named after the pipeline's source: its folder's name and a hash of its path.
    let name = format!("{}-unit-val", xtask::plan::source_name(&gz));
    assert!(plan.data.to_string_lossy().contains(&name), "{}", plan.data.display());
    let ds = Dataset::open(&plan.data).unwrap();
    assert_eq!((ds.meta.name.as_str(), ds.meta.image_shape, ds.meta.input_size()), ("mnist", [1, 28, 28], 784));
    assert_eq!(ds.meta.classes[3], "3");
    assert!(out.depths[0].val_accuracy > 0.5, "the digits are learnable: {:?}", out.depths);
    // Not gzipped: the same images, the same floats.
    let plain = layerwise_testkit::formats::write_idx_folder(&e.path(""), "fashion-mnist", 3000, 1000, false).unwrap();
    let ds2 = prepared(&plain, &e.path("plain.safetensors"), |o| {
        o.limit_train = Some(3000);
        o.limit_test = Some(1000);
    })
    .unwrap();
    assert_eq!(ds2.meta.name, "fashion-mnist");
    assert_eq!(ds2.meta.classes[9], "Ankle boot");
    let t = |d: &Dataset| d.split(layerwise_core::dataset::Split::Test).unwrap().images.to_vec();
    assert!(t(&ds) == t(&ds2));
    // A truncated file is refused, naming it.
    let f = plain.join("t10k-labels-idx1-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
    let err = format!("{:#}", prepared(&plain, &e.path("bad.safetensors"), |_| {}).err().unwrap());
    assert!(err.contains("t10k-labels-idx1-ubyte") && err.contains("truncated"), "{err}");
}

#[test]
fn a_folder_of_png_images_per_class_runs() {
    let e = common::env();
    let src = common::source_or_synthetic(&e.path("c10"));
    let (train, test) = cifar10(&src, 3000, 1000);
    let classes = layerwise_testkit::CIFAR10_CLASSES;
    let root = layerwise_testkit::formats::write_image_folder(
        &e.path(""),
        "pngs",
        &classes,
        (&train.0, &train.1),
        Some((&test.0, &test.1)),
    )
    .unwrap();
    let ds = smoke(&e, "png-run", &root);
    let mut sorted = classes.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(
        (ds.meta.name.as_str(), ds.meta.classes.clone(), ds.meta.image_shape),
        ("pngs", sorted.clone(), [3, 32, 32])
    );
    assert_eq!(ds.meta.split_sizes.train + ds.meta.split_sizes.val, 3000);
    // Every class is in the validation split (the training images go class by class in turn).
    let val = ds.split(layerwise_core::dataset::Split::Val).unwrap().labels.to_vec();
    assert!((0..10).all(|c| val.contains(&c)), "{val:?}");
    // ROOT/<class>/ alone: the last sixth of each class is the test split.
    let flat = layerwise_testkit::formats::write_image_folder(
        &e.path(""),
        "flat",
        &classes,
        (&train.0[..600 * 3072], &train.1[..600]),
        None,
    )
    .unwrap();
    let f = prepared(&flat, &e.path("flat.safetensors"), |_| {}).unwrap();
    assert_eq!(f.meta.split_sizes.test + f.meta.split_sizes.train + f.meta.split_sizes.val, 600);
    assert!(f.meta.split_sizes.test >= 100, "{:?}", f.meta.split_sizes);
    // An image of another size is refused, or resized with --resize.
    let odd: PathBuf = flat.join(classes[0]).join("zz-odd.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3])).save(&odd).unwrap();
    let err = format!("{:#}", prepared(&flat, &e.path("odd.safetensors"), |_| {}).err().unwrap());
    assert!(err.contains("zz-odd.png") && err.contains("40×30") && err.contains("--resize"), "{err}");
    let r = prepared(&flat, &e.path("resized.safetensors"), |o| o.read.resize = Some((16, 16))).unwrap();
    assert_eq!(r.meta.image_shape, [3, 16, 16]);
}

#[test]
fn each_source_has_its_own_dataset_file_and_run_folder_and_switching_back_reuses_them() {
    // `--source MY_IMAGES` prepared over CIFAR-10's file and into its run folder; switching
    // back re-prepared, and resuming was refused until --run-dir.
    let e = common::env();
    let src = common::source_or_synthetic(&e.path("c10"));
    let (train, test) = cifar10(&src, 600, 200);
    let classes = layerwise_testkit::CIFAR10_CLASSES;
    let photos = layerwise_testkit::formats::write_image_folder(
        &e.path(""),
        "photos",
        &classes,
        (&train.0, &train.1),
        Some((&test.0, &test.1)),
    )
    .unwrap();
    let args = |source: &Path| {
        let mut a = e.args("unused");
        a.run_dir = None;
        a.inputs.source = Some(source.to_path_buf());
        a
    };
    let idx = layerwise_testkit::formats::write_idx_folder(&e.path(""), "digits", 600, 200, true).unwrap();
    let mut datasets = Vec::new();
    for source in [&photos, &src, &idx, &photos] {
        let plan = Plan(&args(source));
        let out = run(&args(source)).unwrap().unwrap();
        assert_eq!(out.depths.len(), 3);
        let name = xtask::plan::source_name(source);
        assert!(plan.run_dir.ends_with(format!("runs/smoke-{name}")), "{}", plan.run_dir.display());
        let file = plan.data.file_name().unwrap().to_string_lossy().into_owned();
        assert!(file.starts_with(&format!("{name}-")) && file.contains("-val"), "{file}");
        // The report says how many images there really were, not the pipeline's limits alone.
        let report = std::fs::read_to_string(plan.run_dir.join("report.md")).unwrap();
        let evaluated = if source == &photos { "; 200 test images evaluated |" } else { " test images evaluated |" };
        assert!(report.contains(evaluated), "{report}");
        datasets.push((plan.data, out.depths.iter().all(|d| d.reused)));
    }
    // Three files, three run folders; the last run (photos again) reused every depth.
    assert!(datasets[0].0 != datasets[1].0 && datasets[1].0 != datasets[2].0 && datasets[0].0 != datasets[2].0);
    assert_eq!(datasets[0].0, datasets[3].0);
    assert!(!datasets[0].1 && !datasets[1].1 && !datasets[2].1 && datasets[3].1, "{datasets:?}");
    let files = std::fs::read_dir(e.path("artifacts/datasets")).unwrap().count();
    assert_eq!(files, 3);
}
