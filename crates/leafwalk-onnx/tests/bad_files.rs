//! Bad ONNX files get one line naming the file and the problem, never a panic, a hang or an
//! allocation beyond the stated cap: the named cases (truncation, missing or escaping external
//! data, an unsupported operation, a non-image input) and 600 mutations of valid files
//! (truncations, byte flips, huge length fields), each read under an allocation counter.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use leafwalk_onnx::proto::{Dimension, ModelProto};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::fixture;

/// Counts the bytes live and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The error `bytes` give as a model in `folder`.
fn error(bytes: &[u8], folder: &Path) -> String {
    leafwalk_onnx::from_bytes(bytes, folder, Path::new("net.onnx")).unwrap_err().to_string()
}

/// `file`'s model, edited.
fn edited(file: &str, edit: impl FnOnce(&mut ModelProto)) -> Vec<u8> {
    let mut model = ModelProto::decode(&std::fs::read(fixture(file)).unwrap()[..]).unwrap();
    edit(&mut model);
    model.encode_to_vec()
}

/// The dimensions of a model's (first) input.
fn input_dims(model: &mut ModelProto) -> &mut Vec<Dimension> {
    let input = &mut model.graph.as_mut().unwrap().input[0];
    &mut input.r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim
}

#[test]
fn bad_files_are_refused_in_one_line() {
    let folder = fixture("");
    let valid = std::fs::read(fixture("resnet-mini.onnx")).unwrap();
    let truncated = error(&valid[..valid.len() / 2], &folder);
    assert!(truncated.starts_with("net.onnx: not an ONNX model ("), "{truncated}");

    let relocated = |location: &'static str| {
        edited("resnet-mini.dynamo.onnx", move |m| {
            let graph = m.graph.as_mut().unwrap();
            for entry in graph.initializer.iter_mut().flat_map(|t| &mut t.external_data) {
                if entry.key == "location" {
                    entry.value = location.into();
                }
            }
        })
    };
    let missing = error(&relocated("gone.data"), &folder);
    assert!(missing.starts_with("net.onnx: initializer 'stem.0.weight' external data "), "{missing}");
    assert!(missing.contains("gone.data: No such file"), "{missing}");
    for escaping in ["../fixtures/resnet-mini.dynamo.onnx.data", "/etc/passwd"] {
        let refused = error(&relocated(escaping), &folder);
        assert!(refused.ends_with("outside the model's folder (refused)"), "{refused}");
    }

    let lstm = edited("resnet-mini.onnx", |m| m.graph.as_mut().unwrap().node[1].op_type = "LSTM".into());
    assert_eq!(
        error(&lstm, &folder),
        "net.onnx: node '/stem/stem.2/Relu' (LSTM): operation LSTM is not supported (see the README's list of ONNX operations)"
    );
    let odd_padding = edited("resnet-mini.onnx", |m| {
        let pads = m.graph.as_mut().unwrap().node[0].attribute.iter_mut().find(|a| a.name == "pads").unwrap();
        pads.ints = vec![1, 1, 0, 0];
    });
    assert_eq!(
        error(&odd_padding, &folder),
        "net.onnx: node '/stem/stem.0/Conv' (Conv): attribute 'pads' [1, 1, 0, 0] is not symmetric; only symmetric padding is supported"
    );
    let flat_input = edited("resnet-mini.onnx", |m| input_dims(m).truncate(2));
    assert_eq!(
        error(&flat_input, &folder),
        "net.onnx: input 'input' has 2 dimensions; leafwalk needs an image input [N, C, H, W]"
    );
    let wrong_channels = edited("resnet-mini.onnx", |m| input_dims(m)[1].dim_value = Some(3));
    assert_eq!(
        error(&wrong_channels, &folder),
        "net.onnx: node '/stem/stem.0/Conv' (Conv): has 1 group(s) of 1 channels for a 3×28×28 input"
    );
}

/// Bytes a read may allocate beyond a few copies of the file: prost's message structs and the
/// translation's bookkeeping.
const OVERHEAD_CAP: usize = 16 << 20;

#[test]
fn mutated_files_never_panic_hang_or_overallocate() {
    let folder = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut cases = 0;
    for file in ["lenet5.onnx", "vgg-bn-small.dynamo.onnx", "resnet-mini.onnx", "onnx-zoo.onnx", "onnx-patterns.onnx"] {
        let valid = std::fs::read(fixture(file)).unwrap();
        if file.contains("dynamo") {
            std::fs::copy(fixture(&format!("{file}.data")), folder.path().join(format!("{file}.data"))).unwrap();
        }
        let cap = 4 * valid.len()
            + OVERHEAD_CAP
            + std::fs::metadata(fixture(&format!("{file}.data"))).map_or(0, |m| m.len() as usize);
        for case in 0..120 {
            let mut bytes = valid.clone();
            match case % 3 {
                0 => bytes.truncate(rng.random_range(0..valid.len())),
                1 => {
                    for _ in 0..rng.random_range(1..=4) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                }
                _ => {
                    // A length-delimited field's tag byte (wire type 2), its length made huge.
                    let tags: Vec<usize> =
                        (0..bytes.len() - 6).filter(|&i| bytes[i] & 7 == 2 && bytes[i] >> 3 != 0).collect();
                    let at = tags[rng.random_range(0..tags.len())] + 1;
                    bytes.splice(at..at + 1, [0xff, 0xff, 0xff, 0xff, 0x07]);
                }
            }
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let result = leafwalk_onnx::from_bytes(&bytes, folder.path(), Path::new(file));
            let used = PEAK.load(Ordering::Relaxed) - before;
            assert!(used <= cap, "{file} case {case}: {used} bytes allocated (cap {cap})");
            if let Err(e) = result {
                assert!(!e.to_string().contains('\n'), "{file} case {case}: a multi-line error: {e}");
            }
            cases += 1;
        }
    }
    assert!(cases >= 500);
}
