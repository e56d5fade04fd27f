//! Facts about CIFAR-10 that more than one crate needs.

/// Bytes per image (3 × 32 × 32, CHW).
pub const IMAGE_BYTES: usize = 3072;
/// Bytes per record in the binary release: a label byte, then the image.
pub const RECORD_BYTES: usize = IMAGE_BYTES + 1;
/// The official class names, index = label.
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The class names as owned strings.
pub fn class_names() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}
