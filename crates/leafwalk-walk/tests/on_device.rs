//! The fused leaf step and the device Euler walk against the host step and integrator, on the
//! golden epoch-1 weights; CPU against CUDA on a GPU (an ignored test: run it with `--ignored` where one is present).

use std::path::Path;

use candle_core::{Device, Tensor};
use leafwalk_data::dataset_info;
use leafwalk_geometry::{batch_geometry_in, input_jacobian_in, Coordinates, PointGeometry};
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};
use leafwalk_walk::{
    connect_batch, data_leaf_step, direction_step, euler_on_device, Ending, LeafStep, PathOptions, State, Subspace,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn model_on(device: &Device) -> Classifier {
    let options = LoadOptions::new(Arch::MnistCnn, dataset_info("mnist").unwrap());
    Classifier::load(&fixture("mnist-cnn-epoch01.safetensors"), options, device).unwrap()
}

fn digits() -> Vec<State> {
    let (golden, _) = checkpoint::read(&fixture("golden-epoch01.safetensors"), &Device::Cpu).unwrap();
    (0..8).map(|k| State(golden["test_inputs"].get(k).unwrap().flatten_all().unwrap().to_vec1().unwrap())).collect()
}

fn vector(state: &State) -> nalgebra::DVector<f64> {
    nalgebra::DVector::from_iterator(state.0.len(), state.0.iter().map(|&v| v as f64))
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

/// x, J and target of a batch of (x, target) pairs as the op's input tensors.
fn op_inputs(model: &Classifier, pairs: &[(&State, &State)]) -> (Tensor, Tensor, Tensor) {
    let stack = |states: Vec<&State>| {
        let values: Vec<f32> = states.iter().flat_map(|s| s.0.iter().copied()).collect();
        Tensor::from_vec(values, (states.len(), 784), &Device::Cpu).unwrap()
    };
    let x = stack(pairs.iter().map(|p| p.0).collect());
    let images = x.reshape((pairs.len(), 1, 28, 28)).unwrap();
    let jacobian = input_jacobian_in(model, &images, Coordinates::Normalised).unwrap().jacobian;
    (x, jacobian, stack(pairs.iter().map(|p| p.1).collect()))
}

#[test]
fn the_fused_step_takes_the_host_steps() {
    let model = model_on(&Device::Cpu);
    let digits = digits();
    let pairs: Vec<(&State, &State)> = (0..6).map(|k| (&digits[k], &digits[(k + 3) % 8])).collect();
    let (x, jacobian, target) = op_inputs(&model, &pairs);
    for subspace in [Subspace::Leaf, Subspace::Kernel] {
        let step = LeafStep::new(&model, subspace, 0.1, 1.0).unwrap().apply(&x, &jacobian, &target).unwrap();
        let next: Vec<Vec<f32>> = step.next.to_vec2().unwrap();
        let distance: Vec<f32> = step.distance.to_vec1().unwrap();
        assert_eq!(step.moved.to_vec1::<f32>().unwrap(), vec![1.0; 6]);
        for (k, (from, to)) in pairs.iter().enumerate() {
            let host = match subspace {
                Subspace::Leaf => data_leaf_step(&model, from, to, 0.1).unwrap(),
                Subspace::Kernel => direction_step(&model, from, &(vector(to) - vector(from)), subspace, 0.1).unwrap(),
            };
            // Only the f64 rounding of two ways to project differs: measured bit-identical.
            let diff = max_diff(&next[k], &host.next.0);
            assert!(diff <= 1e-6, "{subspace:?} pair {k}: fused step {diff} from the host's");
            assert!((distance[k] as f64 - host.next.distance(to)).abs() <= 1e-5);
        }
    }
}

/// Synthetic J with Σ pᵢ Jᵢ = 0 exactly (rank C − 1), far from the clamp: the step has length
/// `step`, lies in the row space of J (leaf) or its complement (kernel), as the host projector
/// says.
#[test]
fn the_fused_step_projects_onto_the_row_space_of_a_rank_deficient_jacobian() {
    let model = model_on(&Device::Cpu);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (classes, n, paths) = (10, 784, 3);
    let mut xs = Vec::new();
    let mut jacobians = Vec::new();
    let mut targets = Vec::new();
    let mut geometries = Vec::new();
    for _ in 0..paths {
        let logits: Vec<f64> = (0..classes).map(|_| rng.random_range(-3.0..3.0)).collect();
        let log_sum = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        let log_probs: Vec<f64> = logits.iter().map(|l| l - log_sum).collect();
        let mut rows: Vec<Vec<f64>> =
            (0..classes).map(|_| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        // Remove the p-weighted mean row so that Σ pᵢ Jᵢ = 0.
        let mean: Vec<f64> = (0..n).map(|e| (0..classes).map(|i| log_probs[i].exp() * rows[i][e]).sum()).collect();
        rows.iter_mut().for_each(|row| row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m));
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        geometries.push(PointGeometry::new(&log_probs, flat.clone(), classes).unwrap());
        jacobians.extend(flat);
        xs.extend((0..n).map(|_| rng.random_range(0.5f32..1.0)));
        targets.extend((0..n).map(|_| rng.random_range(0.5f32..1.0)));
    }
    let x = Tensor::from_vec(xs.clone(), (paths, n), &Device::Cpu).unwrap();
    let jacobian = Tensor::from_vec(jacobians, (paths, classes, n), &Device::Cpu).unwrap();
    let target = Tensor::from_vec(targets.clone(), (paths, n), &Device::Cpu).unwrap();
    let step_length = 1e-3;
    for subspace in [Subspace::Leaf, Subspace::Kernel] {
        let step = LeafStep::new(&model, subspace, step_length, 0.0).unwrap();
        let next: Vec<Vec<f32>> = step.apply(&x, &jacobian, &target).unwrap().next.to_vec2().unwrap();
        for (k, point) in geometries.iter().enumerate() {
            assert_eq!(point.rank(), classes - 1);
            let row = k * n..(k + 1) * n;
            let moved = nalgebra::DVector::from_iterator(
                n,
                next[k].iter().zip(&xs[row.clone()]).map(|(&a, &b)| a as f64 - b as f64),
            );
            let toward = nalgebra::DVector::from_iterator(
                n,
                targets[row.clone()].iter().zip(&xs[row]).map(|(&t, &v)| t as f64 - v as f64),
            );
            let projector = point.leaf_projector();
            let expected = match subspace {
                Subspace::Leaf => projector.onto_leaf(&toward),
                Subspace::Kernel => projector.onto_kernel(&toward),
            };
            let expected = expected.normalize() * step_length;
            // f32 states: the displacement carries their rounding (≈ 6e-8 per value).
            assert!((&moved - &expected).amax() <= 2e-7, "{subspace:?} path {k}: {}", (&moved - &expected).amax());
            assert!((moved.norm() - step_length).abs() <= 1e-5 * step_length * n as f64);
            let off = match subspace {
                Subspace::Leaf => projector.onto_kernel(&moved),
                Subspace::Kernel => projector.onto_leaf(&moved),
            };
            assert!(off.norm() <= 1e-3 * step_length, "{subspace:?}: {} off the subspace", off.norm());
        }
    }
}

#[test]
fn arrived_paths_stay_put_and_a_nan_jacobian_diverges() {
    let model = model_on(&Device::Cpu);
    let digits = digits();
    let (x, jacobian, _) = op_inputs(&model, &[(&digits[0], &digits[0]), (&digits[1], &digits[1])]);
    let near: Vec<f32> = digits[0].0.iter().chain(&digits[2].0).map(|&v| v + 1e-3).collect();
    let target = Tensor::from_vec(near, (2, 784), &Device::Cpu).unwrap();
    let step = LeafStep::new(&model, Subspace::Leaf, 0.1, 1.0).unwrap().apply(&x, &jacobian, &target).unwrap();
    assert_eq!(step.moved.to_vec1::<f32>().unwrap(), [0.0, 1.0], "the first is within the threshold");
    assert_eq!(step.next.get(0).unwrap().to_vec1::<f32>().unwrap(), digits[0].0);

    let poisoned = jacobian.broadcast_mul(&Tensor::new(&[[[f32::NAN]], [[1.0]]], &Device::Cpu).unwrap()).unwrap();
    let step = LeafStep::new(&model, Subspace::Leaf, 0.1, 0.0).unwrap().apply(&x, &poisoned, &target).unwrap();
    let distance: Vec<f32> = step.distance.to_vec1().unwrap();
    assert!(distance[0].is_nan() && distance[1].is_finite());
    assert_eq!(step.moved.to_vec1::<f32>().unwrap(), [0.0, 1.0]);
    assert_eq!(step.next.get(0).unwrap().to_vec1::<f32>().unwrap(), digits[0].0);
}

#[test]
fn the_device_walk_follows_the_host_euler_walk() {
    let model = model_on(&Device::Cpu);
    let digits = digits();
    let pairs: Vec<(State, State)> = (0..4).map(|k| (digits[k].clone(), digits[k + 4].clone())).collect();
    // 50 steps, no stall: every path walks all of them.
    let options = PathOptions { max_steps: 50, stall_window: usize::MAX, ..PathOptions::euler() };
    let host = connect_batch(&model, &pairs, &options, |_, _| {}).unwrap();
    let device = euler_on_device(&model, &pairs, &options, 10).unwrap();
    for (k, (host, device)) in host.iter().zip(&device).enumerate() {
        assert_eq!((device.ending, device.steps), (Ending::StepLimit, 50), "pair {k}");
        let diff = max_diff(&device.end.0, &host.points.last().unwrap().0);
        // Measured: at most 1.2e-7 (one f32 ulp, carried along).
        assert!(diff <= 1e-4, "pair {k}: 50-step device walk ends {diff} from the host's");
        assert!((device.distance - host.final_distance()).abs() <= 1e-4);
    }
    // A threshold each path crosses early: it stops on the same step as the host's, whatever
    // the check interval.
    let threshold = pairs[0].0.distance(&pairs[0].1) - 1.0;
    let options = PathOptions { threshold, ..options };
    let host = connect_batch(&model, &pairs[..1], &options, |_, _| {}).unwrap().remove(0);
    let device = euler_on_device(&model, &pairs[..1], &options, 7).unwrap().remove(0);
    assert_eq!(host.ending, Ending::Reached);
    assert_eq!((device.ending, device.steps), (Ending::Reached, host.steps()));
    assert!(max_diff(&device.end.0, &host.points.last().unwrap().0) <= 1e-5);
}

#[test]
fn the_device_walk_reports_stalls() {
    let model = model_on(&Device::Cpu);
    let digits = digits();
    let pairs = [(digits[0].clone(), digits[1].clone())];
    // The golden walk 0 → 1 circles at ≈22.87 from about step 600 (see golden.rs).
    let options = PathOptions { max_steps: 3000, ..PathOptions::euler() };
    let walk = euler_on_device(&model, &pairs, &options, 25).unwrap().remove(0);
    let Ending::Stalled { step } = walk.ending else { panic!("{:?}", walk.ending) };
    assert!((300..=1500).contains(&step), "stalled at {step}");
    assert!((walk.distance - 22.87).abs() < 0.05, "{}", walk.distance);
}

/// The agreement bound between devices: J, G's eigenvalues and a 50-step path within
/// 1e-4. Ignored by default, since it needs a GPU; where one is present:
/// `cargo test --release --features cuda -p leafwalk-walk --test on_device -- --ignored`.
#[test]
#[ignore = "needs a CUDA GPU and --features cuda"]
fn cpu_and_cuda_agree_on_a_gpu() {
    let cuda = Device::new_cuda(0).expect("a CUDA device (build with --features cuda, run on a machine with a GPU)");
    let (cpu_model, gpu_model) = (model_on(&Device::Cpu), model_on(&cuda));
    let digits = digits();
    let values: Vec<f32> = digits.iter().flat_map(|d| d.0.iter().copied()).collect();
    let batch = Tensor::from_vec(values, (8, 1, 28, 28), &Device::Cpu).unwrap();
    let on_cpu = input_jacobian_in(&cpu_model, &batch, Coordinates::Normalised).unwrap();
    let on_gpu = input_jacobian_in(&gpu_model, &batch.to_device(&cuda).unwrap(), Coordinates::Normalised).unwrap();
    let flat =
        |t: &Tensor| -> Vec<f32> { t.to_device(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    let j_diff = max_diff(&flat(&on_cpu.jacobian), &flat(&on_gpu.jacobian));
    assert!(j_diff <= 1e-4, "J differs by {j_diff}");
    let eigenvalues = |model: &Classifier, batch: &Tensor| -> Vec<f64> {
        batch_geometry_in(model, batch, Coordinates::Normalised)
            .unwrap()
            .iter()
            .flat_map(|g| g.spectrum().eigenvalues.into_iter().take(9))
            .collect()
    };
    let (a, b) = (eigenvalues(&cpu_model, &batch), eigenvalues(&gpu_model, &batch.to_device(&cuda).unwrap()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "eigenvalue {x} against {y}");
    }
    let pairs: Vec<(State, State)> = (0..4).map(|k| (digits[k].clone(), digits[k + 4].clone())).collect();
    let options = PathOptions { max_steps: 50, stall_window: usize::MAX, ..PathOptions::euler() };
    let on_cpu = euler_on_device(&cpu_model, &pairs, &options, 10).unwrap();
    let on_gpu = euler_on_device(&gpu_model, &pairs, &options, 10).unwrap();
    for (c, g) in on_cpu.iter().zip(&on_gpu) {
        let diff = max_diff(&c.end.0, &g.end.0);
        assert!(diff <= 1e-4, "the 50-step paths end {diff} apart");
    }
}
