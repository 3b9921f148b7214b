//! Every kind of operation a description may hold, in each of its variants (padding, stride,
//! dilation, groups, ceil mode, count_include_pad, broadcasting, constants first or second),
//! as a small network with random weights. For each: the engine's J against candle's autograd
//! (f32), the tensor backend's J against central finite differences (f64), Σ pᵢJᵢ = 0, a point's
//! J in a batch bit for bit equal to its J alone, and the engine's training gradients against
//! autograd's.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use leafwalk_engine::{input_jacobian, loss_input_gradient, nll_gradients, tensor, Coordinates, EngineError};
use leafwalk_models::description::{
    Activation, Arith, BatchNorm, Conv2d, Description, Dims, GeluForm, GraphBuilder, Linear, Op, Pool,
};
use leafwalk_models::{Architecture, CheckpointMeta, Classifier};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const INPUT: Dims = Dims::new(3, 9, 9);
const CLASSES: usize = 5;

/// `body` on a 3×9×9 input, then flatten and a linear layer to 5 classes.
fn network(body: impl FnOnce(&mut GraphBuilder, usize) -> usize) -> Description {
    network_on(INPUT, body)
}

/// [`network`] on another input.
fn network_on(input: Dims, body: impl FnOnce(&mut GraphBuilder, usize) -> usize) -> Description {
    let mut g = GraphBuilder::new(input);
    let x = body(&mut g, GraphBuilder::INPUT);
    let x = g.flatten("flatten", x);
    let features = g.shapes_so_far().unwrap()[x].channels;
    g.linear("head", x, Linear::new(features, CLASSES));
    g.finish().unwrap()
}

fn conv(g: &mut GraphBuilder, name: &str, x: usize, conv: Conv2d) -> usize {
    g.conv(name, x, conv)
}

/// Every variant, named.
fn variants() -> Vec<(&'static str, Description)> {
    let act = |a: Activation| {
        network(move |g, x| {
            let x = conv(g, "c", x, Conv2d::new(3, 4, 3).padding(1));
            g.activation("a", x, a)
        })
    };
    let max_pool = |pool: Pool| {
        network(move |g, x| {
            let x = conv(g, "c", x, Conv2d::new(3, 4, 3).padding(1));
            let x = g.activation("r", x, Activation::Relu);
            g.max_pool("p", x, pool)
        })
    };
    let avg_pool = |pool: Pool| {
        network(move |g, x| {
            let x = conv(g, "c", x, Conv2d::new(3, 4, 3).padding(1));
            let x = g.activation("t", x, Activation::Tanh);
            g.avg_pool("p", x, pool)
        })
    };
    let two_branches = |arith: Arith| {
        network(move |g, x| {
            let a = conv(g, "a", x, Conv2d::new(3, 4, 3).padding(1));
            let b = conv(g, "b", x, Conv2d::new(3, 4, 3).padding(1));
            // Quotients get a denominator in [0.5, 1.5].
            let b = g.activation("s", b, Activation::Sigmoid);
            let b = g.node("half", Op::Constant { arith: Arith::Add, values: vec![0.5], constant_first: false }, &[b]);
            g.binary("combine", arith, a, b)
        })
    };
    let constant = |arith: Arith, values: Vec<f32>, constant_first: bool| {
        network(move |g, x| {
            let x = conv(g, "c", x, Conv2d::new(3, 4, 3));
            let x = g.activation("s", x, Activation::Sigmoid);
            g.node("k", Op::Constant { arith, values, constant_first }, &[x])
        })
    };
    let non_square = Conv2d {
        kernel: [2, 3],
        stride: [2, 1],
        padding: [1, 0],
        dilation: [1, 1],
        groups: 1,
        bias: true,
        in_channels: 3,
        out_channels: 4,
    };
    vec![
        ("conv", network(|g, x| conv(g, "c", x, Conv2d::new(3, 4, 3)))),
        (
            "conv stride 2 padding 1 no bias",
            network(|g, x| conv(g, "c", x, Conv2d::new(3, 4, 3).stride(2).padding(1).no_bias())),
        ),
        ("conv dilation 2", network(|g, x| conv(g, "c", x, Conv2d::new(3, 6, 3).padding(1).dilation(2)))),
        ("conv groups 3", network(|g, x| conv(g, "c", x, Conv2d::new(3, 6, 3).groups(3)))),
        ("conv non-square kernel, stride and padding", network(|g, x| conv(g, "c", x, non_square))),
        ("conv 1×1", network(|g, x| conv(g, "c", x, Conv2d::new(3, 5, 1)))),
        (
            // Wider than the direct reverse's row tile, padded past the kernel's reach.
            "conv on a wide map, padding 3",
            network_on(Dims::new(2, 5, 70), |g, x| conv(g, "c", x, Conv2d::new(2, 3, 3).padding(3))),
        ),
        (
            // Dense (tanh) into a grouped convolution reversed one product per tap on a canvas.
            "grouped conv after tanh on a wide map",
            network_on(Dims::new(2, 5, 70), |g, x| {
                let x = conv(g, "c", x, Conv2d::new(2, 10, 3).padding(1));
                let x = g.activation("t", x, Activation::Tanh);
                conv(g, "c2", x, Conv2d::new(10, 6, 3).padding(1).groups(2))
            }),
        ),
        (
            // Maps past the size from which a lone point's activation and max-pool are spread
            // over the threads (in bands of rows).
            "GELU and max-pool on a large map",
            network_on(Dims::new(2, 30, 70), |g, x| {
                let x = conv(g, "c", x, Conv2d::new(2, 8, 3).padding(1));
                let x = g.activation("g", x, Activation::Gelu { form: GeluForm::Erf });
                g.max_pool("p", x, Pool::new(3).stride(2).padding(1))
            }),
        ),
        (
            "conv on a wide map, dilation 2",
            network_on(Dims::new(2, 5, 70), |g, x| conv(g, "c", x, Conv2d::new(2, 3, 3).padding(1).dilation(2))),
        ),
        (
            "conv + batch norm (folded) + ReLU, sparse",
            network(|g, x| {
                let x = conv(g, "c", x, Conv2d::new(3, 16, 3).padding(1));
                let x = g.batch_norm("bn", x, 16);
                let x = g.activation("r", x, Activation::Relu);
                let x = conv(g, "c2", x, Conv2d::new(16, 16, 3).padding(1));
                let x = g.activation("r2", x, Activation::Relu);
                g.max_pool("p", x, Pool::new(3).stride(2))
            }),
        ),
        (
            "batch norm on the input and after a sum (not folded)",
            network(|g, x| {
                let x = g.batch_norm("bn0", x, 3);
                let a = conv(g, "a", x, Conv2d::new(3, 4, 3).padding(1));
                let b = conv(g, "b", x, Conv2d::new(3, 4, 3).padding(1));
                let s = g.binary("add", Arith::Add, a, b);
                g.batch_norm("bn1", s, 4)
            }),
        ),
        (
            "linear without bias, ReLU",
            network(|g, x| {
                let x = g.flatten("f", x);
                let x = g.node("l", Op::Linear(Linear { in_features: 243, out_features: 32, bias: false }), &[x]);
                g.activation("r", x, Activation::Relu)
            }),
        ),
        (
            "batch norm 1d after linear (folded)",
            network(|g, x| {
                let x = g.flatten("f", x);
                let x = g.linear("l", x, Linear::new(243, 16));
                g.node("bn", Op::BatchNorm(BatchNorm::new(16)), &[x])
            }),
        ),
        ("ReLU", act(Activation::Relu)),
        ("LeakyReLU", act(Activation::LeakyRelu { negative_slope: 0.1 })),
        ("ELU", act(Activation::Elu { alpha: 0.7 })),
        ("GELU (erf)", act(Activation::Gelu { form: GeluForm::Erf })),
        ("GELU (tanh)", act(Activation::Gelu { form: GeluForm::Tanh })),
        ("SiLU", act(Activation::Silu)),
        ("Sigmoid", act(Activation::Sigmoid)),
        ("Tanh", act(Activation::Tanh)),
        ("Softplus", act(Activation::Softplus { beta: 2.0, threshold: 1.0 })),
        ("max-pool 2", max_pool(Pool::new(2))),
        ("max-pool 3 stride 2 padding 1", max_pool(Pool::new(3).stride(2).padding(1))),
        ("max-pool 2 ceil mode", max_pool(Pool::new(2).ceil_mode(true))),
        ("max-pool 2 stride 1 dilation 2", max_pool(Pool { dilation: [2, 2], ..Pool::new(2).stride(1) })),
        ("avg-pool 2", avg_pool(Pool::new(2))),
        ("avg-pool 3 stride 2 padding 1", avg_pool(Pool::new(3).stride(2).padding(1))),
        (
            "avg-pool 3 stride 2 padding 1 without padding in the divisor",
            avg_pool(Pool::new(3).stride(2).padding(1).count_include_pad(false)),
        ),
        ("avg-pool 2 ceil mode", avg_pool(Pool::new(2).ceil_mode(true))),
        (
            "global average pool",
            network(|g, x| {
                let x = conv(g, "c", x, Conv2d::new(3, 8, 3));
                let x = g.activation("r", x, Activation::Relu);
                g.global_avg_pool("gap", x)
            }),
        ),
        (
            "reshape",
            network(|g, x| {
                let x = conv(g, "c", x, Conv2d::new(3, 4, 3).padding(1));
                let x = g.node("reshape", Op::Reshape { dims: Dims::new(12, 3, 9) }, &[x]);
                conv(g, "c2", x, Conv2d::new(12, 4, 3))
            }),
        ),
        ("add branches", two_branches(Arith::Add)),
        ("subtract branches", two_branches(Arith::Sub)),
        ("multiply branches", two_branches(Arith::Mul)),
        ("divide branches", two_branches(Arith::Div)),
        (
            "per-channel product (squeeze and excitation)",
            network(|g, x| {
                let x = conv(g, "c", x, Conv2d::new(3, 4, 3).padding(1));
                let s = g.global_avg_pool("gap", x);
                let s = g.flatten("f", s);
                let s = g.linear("fc", s, Linear::new(4, 4));
                let s = g.activation("s", s, Activation::Sigmoid);
                g.binary("scale", Arith::Mul, x, s)
            }),
        ),
        ("constant add", constant(Arith::Add, vec![0.3], false)),
        ("constant minus x", constant(Arith::Sub, vec![1.0], true)),
        ("per-channel constant product", constant(Arith::Mul, vec![0.5, -2.0, 1.5, 3.0], false)),
        ("x over a constant", constant(Arith::Div, vec![0.25], false)),
        ("constant over x", constant(Arith::Div, vec![0.7, 1.1, 0.9, 1.3], true)),
        ("identity and trailing log-softmax", {
            let mut d = network(|g, x| {
                let x = g.node("id", Op::Identity, &[x]);
                conv(g, "c", x, Conv2d::new(3, 4, 3))
            });
            d.nodes.push(leafwalk_models::description::Node {
                name: "ls".into(),
                op: Op::Softmax { log: true },
                inputs: vec![d.nodes.len()],
            });
            d
        }),
    ]
}

/// A fresh model of `description` whose batch norms hold random statistics and whose output is
/// scaled to a trained model's sensitivity.
fn model(description: &Description, seed: u64) -> Classifier {
    let meta = CheckpointMeta::without_dataset(
        Architecture::Custom(Box::new(description.clone())),
        description.input,
        CLASSES,
    );
    let fresh = Classifier::fresh(meta.clone(), seed, &Device::Cpu, DType::F32).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let tensors: HashMap<String, Tensor> = fresh
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let n = t.elem_count();
            let random = |lo: f32, hi: f32, rng: &mut ChaCha8Rng| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(lo..hi)).collect()
            };
            let values = match name.rsplit('.').next() {
                Some("running_mean") => Some(random(-0.3, 0.3, &mut rng)),
                Some("running_var") => Some(random(0.5, 2.0, &mut rng)),
                Some("weight") if t.rank() == 1 => Some(random(0.5, 1.5, &mut rng)),
                Some("bias") if name.starts_with("bn") => Some(random(-0.2, 0.2, &mut rng)),
                _ if name.starts_with("head.") => {
                    Some(t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v * 20.0).collect())
                }
                _ => None,
            };
            let t = match values {
                Some(v) => Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap(),
                None => t,
            };
            (name, t)
        })
        .collect();
    Classifier::from_tensors(std::path::Path::new("test"), meta, tensors, &Device::Cpu).unwrap()
}

fn pixels(batch: usize, seed: u64, dtype: DType, input: Dims) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..batch * input.len()).map(|_| rng.random_range(0.05..0.95)).collect();
    Tensor::from_vec(values, (batch, input.channels, input.height, input.width), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// J by candle's autograd with the batch replicated per class.
fn autograd_jacobian(model: &Classifier, x: &Tensor) -> Vec<f64> {
    let (b, c) = (x.dim(0).unwrap(), CLASSES);
    let (_, ch, h, w) = x.dims4().unwrap();
    let replicated =
        x.unsqueeze(1).unwrap().broadcast_as((b, c, ch, h, w)).unwrap().reshape((b * c, ch, h, w)).unwrap();
    let input = Var::from_tensor(&replicated).unwrap();
    let log_probs = model.log_probs_t(input.as_tensor(), false).unwrap();
    let selector = Tensor::eye(c, model.dtype(), &Device::Cpu).unwrap().repeat((b, 1)).unwrap();
    let grads = (&log_probs * &selector).unwrap().sum_all().unwrap().backward().unwrap();
    values(grads.get(input.as_tensor()).unwrap())
}

#[test]
fn every_operation_matches_autograd_finite_differences_and_its_invariants() {
    for (index, (name, description)) in variants().into_iter().enumerate() {
        let seed = 100 + index as u64;
        let model = model(&description, seed);
        let x = pixels(3, seed, DType::F32, description.input);

        // The engine against autograd, f32.
        let engine = input_jacobian(&model, &x, Coordinates::Pixels).unwrap();
        let (j, reference) = (values(&engine.jacobian), autograd_jacobian(&model, &x));
        let scale = max_abs(&reference);
        assert!(scale > 1e-4, "{name}: J is degenerate (max |J| {scale:e})");
        let worst = j.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 2e-5 * scale, "{name}: engine vs autograd off by {worst:e} (max |J| {scale:e})");
        let log_probs = values(&engine.log_probs);
        let reference_lp = values(&model.log_probs_t(&x, false).unwrap());
        let worst_lp = log_probs.iter().zip(&reference_lp).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // f32 rounding of logits tens in size.
        let tolerance = 1e-5 * max_abs(&reference_lp).max(1.0);
        assert!(worst_lp <= tolerance, "{name}: log p off by {worst_lp:e}");

        // Σ pᵢ Jᵢ = 0 at each point.
        let n = description.input.len();
        for b in 0..3 {
            let p: Vec<f64> = log_probs[b * CLASSES..][..CLASSES].iter().map(|l| l.exp()).collect();
            let rows = &j[b * CLASSES * n..][..CLASSES * n];
            let balance =
                (0..n).map(|i| (0..CLASSES).map(|c| p[c] * rows[c * n + i]).sum::<f64>().abs()).fold(0.0, f64::max);
            assert!(balance <= 1e-5 * scale, "{name}: ‖Σ pᵢJᵢ‖∞ = {balance:e}");
        }

        // A point alone rounds exactly as in its batch.
        let alone = input_jacobian(&model, &x.narrow(0, 1, 1).unwrap(), Coordinates::Pixels).unwrap();
        assert_eq!(values(&alone.jacobian), j[CLASSES * n..2 * CLASSES * n], "{name}: batch changes J");
        assert_eq!(values(&alone.log_probs), log_probs[CLASSES..2 * CLASSES], "{name}: batch changes log p");
        // So does it in larger batches, cut into sub-batches by the number of threads.
        let copies = Tensor::cat(&[&x, &x, &x], 0).unwrap();
        let repeated = [j.clone(), j.clone(), j.clone()].concat();
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for threads in [None, Some(&one_thread)] {
            let run = || values(&input_jacobian(&model, &copies, Coordinates::Pixels).unwrap().jacobian);
            let j_copies = threads.map_or_else(run, |pool| pool.install(run));
            assert!(j_copies == repeated, "{name}: a batch of 9 on {threads:?} changes J");
        }

        // The tensor backend (f32) against the engine, and (f64) against finite differences.
        if name.starts_with("conv non-square") {
            // conv_transpose2d takes one stride for both axes: the tensor backend refuses.
            assert!(tensor::input_jacobian(&model, &x, Coordinates::Pixels).is_err());
        } else {
            let by_tensors = values(&tensor::input_jacobian(&model, &x, Coordinates::Pixels).unwrap().jacobian);
            let worst = by_tensors.iter().zip(&j).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 2e-5 * scale, "{name}: tensor backend vs engine off by {worst:e}");
            finite_differences(name, &model.to_dtype(DType::F64).unwrap(), seed);
        }

        training_gradients(name, &description, seed);
    }
}

/// J of the f64 tensor backend against central differences at a few pixels (the best of three
/// step sizes: a ReLU or max-pool kink inside one step spoils it).
fn finite_differences(name: &str, model: &Classifier, seed: u64) {
    let shape = model.input_shape();
    let x = pixels(1, seed + 7, DType::F64, Dims::new(shape.channels, shape.height, shape.width));
    let j = values(&tensor::input_jacobian(model, &x, Coordinates::Pixels).unwrap().jacobian);
    let scale = max_abs(&j);
    let base = values(&x);
    let n = base.len();
    let log_probs = |v: &[f64]| {
        values(&model.log_probs_t(&Tensor::from_slice(v, x.shape(), &Device::Cpu).unwrap(), false).unwrap())
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..3 {
        let pixel = rng.random_range(0..n);
        let err = [1e-4, 1e-5, 1e-6]
            .iter()
            .map(|&eps| {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[pixel] += eps;
                minus[pixel] -= eps;
                let (a, b) = (log_probs(&plus), log_probs(&minus));
                (0..CLASSES).map(|c| ((a[c] - b[c]) / (2.0 * eps) - j[c * n + pixel]).abs()).fold(0.0, f64::max)
            })
            .fold(f64::INFINITY, f64::min);
        assert!(err <= 1e-6 * scale + 1e-9, "{name}: pixel {pixel}: finite differences off by {err:e}");
    }
}

/// The engine's NLL gradients against autograd's, batch norm in training mode.
fn training_gradients(name: &str, description: &Description, seed: u64) {
    let (engine_model, autograd_model) = (model(description, seed), model(description, seed));
    let x = pixels(4, seed + 3, DType::F32, description.input);
    let labels = Tensor::new(&[0u32, 3, 1, 4], &Device::Cpu).unwrap();
    let pass = nll_gradients(&engine_model, &x, &labels).unwrap().expect("the CPU engine runs f32 on the CPU");
    let log_probs = autograd_model.log_probs_t(&x, true).unwrap();
    let loss = candle_nn::loss::nll(&log_probs, &labels).unwrap();
    let expected_loss = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (pass.loss - expected_loss).abs() <= 1e-5 * expected_loss.abs().max(1.0),
        "{name}: loss {} vs {expected_loss}",
        pass.loss
    );
    let grads = loss.backward().unwrap();
    let vars: HashMap<String, Var> = autograd_model.trainable_vars().into_iter().collect();
    assert_eq!(pass.gradients.len(), vars.len(), "{name}: one gradient per parameter");
    let expected_of = |param: &str| values(grads.get(vars[param].as_tensor()).unwrap());
    let overall = pass.gradients.iter().map(|(param, _)| max_abs(&expected_of(param))).fold(0.0, f64::max);
    for (param, gradient) in &pass.gradients {
        let expected = expected_of(param);
        let found = values(gradient);
        // A bias before training-mode batch norm has a gradient of rounding noise only.
        let scale = max_abs(&expected).max(1e-2 * overall);
        let worst = found.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4 * scale + 2e-6 * overall, "{name}: gradient of {param} off by {worst:e} (max {scale:e})");
    }
    // Batch norm's running statistics follow the batch, as candle's training pass moved them.
    let after: HashMap<String, Tensor> = autograd_model.named_tensors().into_iter().collect();
    for (stat, value) in &pass.running_statistics {
        let (found, expected) = (values(value), values(&after[stat]));
        let worst = found.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-5, "{name}: running statistic {stat} off by {worst:e}");
    }
}

/// Inputs of another size and labels that do not fit are refusals of their own kind.
#[test]
fn bad_batches_are_typed_refusals() {
    let (_, description) = variants().remove(0);
    let model = model(&description, 0);
    let wrong = pixels(1, 0, DType::F32, Dims::new(3, 8, 8));
    let e = input_jacobian(&model, &wrong, Coordinates::Pixels).unwrap_err();
    assert!(matches!(e, EngineError::InputShape { expected: (3, 9, 9), got: (3, 8, 8) }), "{e}");
    let x = pixels(2, 0, DType::F32, INPUT);
    let e = loss_input_gradient(&model, &x, &[0]).unwrap_err();
    assert!(matches!(e, EngineError::Labels { labels: 1, points: 2, classes: CLASSES }), "{e}");
    assert!(matches!(loss_input_gradient(&model, &x, &[0, CLASSES]), Err(EngineError::Labels { .. })));
}
