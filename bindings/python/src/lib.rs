//! leafwalk for Python: the native half of the `leafwalk` package (`leafwalk._leafwalk`).
//!
//! It wraps the library crates — any model file leafwalk reads ([`leafwalk_onnx::open_model`]),
//! the engine's batched input Jacobian, the local geometry of G, leaf projections, paths and
//! walks, the OOD scores and the data-leaf projection used for denoising, and training of the
//! built-ins — over plain numpy arrays. Images cross the boundary as C-contiguous float32 rows
//! `[B, n]` of pixels in [0, 1] (n = C·H·W, channel first); the Python half (`python/leafwalk`)
//! reshapes and converts what users pass and documents the API. Every call that computes
//! releases the GIL, so other Python threads run meanwhile, and every failure is a
//! `leafwalk.LeafwalkError` carrying the library's one-line message.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use leafwalk_data::ImageShape;
use leafwalk_geometry::PointGeometry;
use leafwalk_models::{Arch, Classifier, DeviceChoice, LoadOptions, Normalisation, Variant};
use leafwalk_ood::{Score, ScoreOptions};
use leafwalk_plot::{Tile, TileKind};
use leafwalk_walk::{Leaf, PathOptions, PathOutcome, PathRecord, State, Steering, Subspace};
use nalgebra::DVector;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pyo3::create_exception!(
    leafwalk,
    LeafwalkError,
    PyException,
    "A refusal or failure of leafwalk; the message is one line naming the file or argument at fault."
);

/// A `LeafwalkError` carrying `error` and its causes on one line, as the CLI prints them.
fn fail(error: impl Into<Box<dyn std::error::Error>>) -> PyErr {
    let error = error.into();
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(source) = cause {
        message = format!("{message}: {source}");
        cause = source.source();
    }
    LeafwalkError::new_err(message.replace('\n', " "))
}

/// A numpy array's values as owned rows of `n` values: copied, so that the computation can run
/// without the GIL while Python threads are free to change the array.
fn rows_of(array: &PyReadonlyArrayDyn<'_, f32>, n: usize, what: &str) -> PyResult<(usize, Vec<f32>)> {
    let shape = array.shape();
    if shape.len() != 2 || shape[1] != n {
        return Err(fail(format!("{what}: expected rows of {n} values, got an array of shape {shape:?}")));
    }
    let values = array.as_slice().map_err(|_| fail(format!("{what}: the array is not C-contiguous")))?;
    Ok((shape[0], values.to_vec()))
}

fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    shape: &[usize],
    values: Vec<T>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    Ok(ArrayD::from_shape_vec(IxDyn(shape), values).map_err(fail)?.into_pyarray(py))
}

/// Loads any model file leafwalk reads (see the Python `leafwalk.load`).
#[pyfunction]
#[pyo3(signature = (path, *, arch=None, dataset=None, layers=None, classes=None, mean=None, std=None, device="cpu"))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of the Python function
fn load(
    py: Python<'_>,
    path: PathBuf,
    arch: Option<&str>,
    dataset: Option<&str>,
    layers: Option<PathBuf>,
    classes: Option<Vec<String>>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
    device: &str,
) -> PyResult<Model> {
    let layers = layers.as_deref().map(leafwalk_models::read_layers).transpose().map_err(fail)?;
    let normalisation = match (mean, std) {
        (None, None) => None,
        (mean, std) => Some(Normalisation { mean: mean.unwrap_or(vec![0.0]), std: std.unwrap_or(vec![1.0]) }),
    };
    let options = LoadOptions {
        arch: arch.map(str::parse::<Arch>).transpose().map_err(fail)?,
        layers,
        dataset: dataset.map(leafwalk_data::dataset_info).transpose().map_err(fail)?,
        classes,
        normalisation,
    };
    let device = device.parse::<DeviceChoice>().map_err(fail)?.open().map_err(fail)?;
    let inner = py.detach(|| leafwalk_onnx::open_model(&path, options, &device)).map_err(fail)?;
    Ok(Model { inner })
}

/// A classifier and its geometry (see the Python `leafwalk.Model`).
#[pyclass(frozen, module = "leafwalk._leafwalk")]
struct Model {
    inner: Classifier,
}

impl Model {
    fn shape(&self) -> ImageShape {
        self.inner.input_shape()
    }

    fn batch(&self, values: Vec<f32>, points: usize) -> PyResult<Tensor> {
        let s = self.shape();
        Tensor::from_vec(values, (points, s.channels, s.height, s.width), &Device::Cpu)
            .and_then(|t| t.to_device(self.inner.device()))
            .map_err(fail)
    }

    /// log p and J of `points` images (rows of `values`) from one engine pass, on the caller's
    /// thread (run it without the GIL).
    fn engine_pass(&self, values: Vec<f32>, points: usize) -> PyResult<(Vec<f32>, Vec<f32>)> {
        let x = self.batch(values, points)?;
        leafwalk_geometry::check_finite(&x).map_err(fail)?;
        leafwalk_engine::jacobian_values(&self.inner, &x, leafwalk_engine::Coordinates::Pixels).map_err(fail)
    }

    fn states(&self, values: &[f32], points: usize) -> Vec<State> {
        let n = self.shape().len();
        (0..points).map(|k| State::from_pixels(&self.inner, &values[k * n..(k + 1) * n])).collect()
    }
}

#[pymethods]
impl Model {
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.meta().classes.clone()
    }

    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let s = self.shape();
        (s.channels, s.height, s.width)
    }

    #[getter]
    fn arch(&self) -> String {
        self.inner.meta().arch.to_string()
    }

    #[getter]
    fn dataset(&self) -> Option<String> {
        self.inner.meta().dataset.clone()
    }

    #[getter]
    fn mean(&self) -> Vec<f32> {
        self.inner.meta().mean.clone()
    }

    #[getter]
    fn std(&self) -> Vec<f32> {
        self.inner.meta().std.clone()
    }

    fn log_probs<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (points, values) = rows_of(&x, self.shape().len(), "x")?;
        let log_probs = py
            .detach(|| -> candle_core::Result<Vec<f32>> {
                let x = self.batch(values, points).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                self.inner.log_probs_t(&x, false)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()
            })
            .map_err(fail)?;
        array(py, &[points, self.inner.classes()], log_probs)
    }

    /// log p `[B, C]` and J `[B, C, n]` in one engine pass.
    #[allow(clippy::type_complexity)] // the pair of arrays Python receives
    fn log_probs_and_jacobian<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<f32>>)> {
        let n = self.shape().len();
        let (points, values) = rows_of(&x, n, "x")?;
        let (log_probs, jacobian) = py.detach(|| self.engine_pass(values, points))?;
        let c = self.inner.classes();
        Ok((array(py, &[points, c], log_probs)?, array(py, &[points, c, n], jacobian)?))
    }

    /// The benchmark's reference for the Python call (`benches/overhead.py`): the points/s of
    /// [`Model::log_probs_and_jacobian`]'s Rust side on `x` — the copy in, the engine pass and
    /// the result's allocation, Python's own work left out — as the median of `runs` runs, each
    /// repeating it for at least `seconds`. Timed in the calling process, so that the two
    /// figures share its threads, allocator and moment. Not part of the API.
    #[pyo3(signature = (x, *, seconds, runs))]
    fn _engine_points_per_s(
        &self,
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        seconds: f64,
        runs: usize,
    ) -> PyResult<f64> {
        let (points, values) = rows_of(&x, self.shape().len(), "x")?;
        py.detach(|| {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs.max(1) {
                let (start, mut repeats) = (std::time::Instant::now(), 0u32);
                while repeats == 0 || start.elapsed().as_secs_f64() < seconds {
                    self.engine_pass(values.clone(), points)?;
                    repeats += 1;
                }
                times.push(start.elapsed().as_secs_f64() / f64::from(repeats));
            }
            times.sort_by(f64::total_cmp);
            Ok(points as f64 / times[times.len() / 2])
        })
    }

    fn geometry(&self, py: Python<'_>, x: PyReadonlyArrayDyn<'_, f32>) -> PyResult<Vec<Geometry>> {
        let (points, values) = rows_of(&x, self.shape().len(), "x")?;
        let x = self.batch(values, points)?;
        let points = py.detach(|| leafwalk_geometry::batch_geometry(&self.inner, &x)).map_err(fail)?;
        Ok(points.into_iter().map(|point| Geometry { point }).collect())
    }

    fn project<'py>(
        &self,
        py: Python<'py>,
        v: PyReadonlyArrayDyn<'py, f32>,
        x: PyReadonlyArrayDyn<'py, f32>,
        subspace: &str,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let n = self.shape().len();
        let (points, values) = rows_of(&x, n, "x")?;
        let (vectors, directions) = rows_of(&v, n, "v")?;
        if vectors != points {
            return Err(fail(format!("v: {vectors} vectors for {points} points")));
        }
        let subspace = subspace_named(subspace)?;
        let x = self.batch(values, points)?;
        let projected = py
            .detach(|| -> leafwalk_geometry::Result<Vec<f64>> {
                let geometry = leafwalk_geometry::batch_geometry(&self.inner, &x)?;
                let mut projected = Vec::with_capacity(points * n);
                for (k, point) in geometry.iter().enumerate() {
                    let projector = point.leaf_projector();
                    let v = DVector::from_iterator(n, directions[k * n..(k + 1) * n].iter().map(|&d| d as f64));
                    let p = match subspace {
                        Subspace::Leaf => projector.onto_leaf(&v),
                        Subspace::Kernel => projector.onto_kernel(&v),
                    };
                    projected.extend(p.iter());
                }
                Ok(projected)
            })
            .map_err(fail)?;
        array(py, &[points, n], projected)
    }

    #[pyo3(signature = (a, b, *, integrator, leaf, step, max_steps, threshold, tolerance, noise_steps, seed, flip_target, via, via_candidates, via_rounds, progress))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python method
    fn path(
        &self,
        py: Python<'_>,
        a: PyReadonlyArrayDyn<'_, f32>,
        b: PyReadonlyArrayDyn<'_, f32>,
        integrator: &str,
        leaf: &str,
        step: Option<f64>,
        max_steps: usize,
        threshold: Option<f64>,
        tolerance: Option<f64>,
        noise_steps: usize,
        seed: u64,
        flip_target: bool,
        via: Option<PyReadonlyArrayDyn<'_, f32>>,
        via_candidates: usize,
        via_rounds: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<Path>> {
        let n = self.shape().len();
        let (points, from) = rows_of(&a, n, "a")?;
        let (targets, to) = rows_of(&b, n, "b")?;
        if targets != points {
            return Err(fail(format!("b: {targets} targets for {points} starts")));
        }
        let base = match integrator {
            "euler" => PathOptions::euler(),
            "adaptive" => PathOptions::adaptive(),
            other => return Err(fail(format!("integrator {other:?}: expected \"euler\" or \"adaptive\""))),
        };
        let options = PathOptions {
            step: step.unwrap_or(base.step),
            threshold: threshold.unwrap_or(base.threshold),
            tolerance: tolerance.unwrap_or(base.tolerance),
            max_steps,
            stop_at_target_class: flip_target,
            ..base
        };
        for (name, value) in [("step", options.step), ("tolerance", options.tolerance)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(fail(format!("{name} must be a positive finite number, got {value}")));
            }
        }
        if !(options.threshold.is_finite() && options.threshold >= 0.0) {
            return Err(fail(format!("threshold must be a non-negative finite number, got {}", options.threshold)));
        }
        let leaf = match leaf {
            "data" => Leaf::Data,
            "noise" => Leaf::Noise { steps: noise_steps, seed },
            other => return Err(fail(format!("leaf {other:?}: expected \"data\" or \"noise\""))),
        };
        let waypoints = match via {
            Some(via) => {
                let (count, values) = rows_of(&via, n, "via")?;
                Some(self.states(&values, count))
            }
            None => None,
        };
        let pairs: Vec<(State, State)> = self.states(&from, points).into_iter().zip(self.states(&to, points)).collect();
        let mut progress = Callback(progress, None);
        let walked = py
            .detach(|| {
                let steering = waypoints.as_deref().map(|waypoints| Steering {
                    waypoints,
                    candidates: via_candidates,
                    rounds: via_rounds,
                });
                leafwalk_walk::walk_pairs(&self.inner, &pairs, &options, leaf, steering, |pair, record| {
                    progress.call(|py, f| f.call1(py, (pair, record.step, record.distance, record.prediction)))
                })
            })
            .map_err(fail)?;
        progress.finish()?;
        walked
            .into_iter()
            .map(|w| {
                let extra = PathExtra {
                    noise_steps: w.noise_steps,
                    waypoints: w.waypoints,
                    target_class: Some(w.target_class),
                    flip_step: w.flip_step,
                    seconds: w.seconds,
                };
                Path::new(py, &self.inner, &w.outcome, extra)
            })
            .collect()
    }

    #[pyo3(signature = (x, direction, *, subspace, steps, step, seed))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python method
    fn walk(
        &self,
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        direction: Option<PyReadonlyArrayDyn<'_, f32>>,
        subspace: &str,
        steps: usize,
        step: f64,
        seed: u64,
    ) -> PyResult<Path> {
        let shape = self.shape();
        let n = shape.len();
        let (points, values) = rows_of(&x, n, "x")?;
        if points != 1 {
            return Err(fail(format!("x: a walk starts from one image, got {points}")));
        }
        if !(step.is_finite() && step > 0.0) {
            return Err(fail(format!("step must be a positive finite number, got {step}")));
        }
        let subspace = subspace_named(subspace)?;
        let from = State::from_pixels(&self.inner, &values);
        let direction = match direction {
            // A pixel direction d is d / σ per channel in the normalised coordinates walks live in.
            Some(direction) => {
                let (_, d) = rows_of(&direction, n, "direction")?;
                let std = &self.inner.meta().std;
                let per_channel = shape.height * shape.width;
                DVector::from_iterator(n, d.iter().enumerate().map(|(i, &v)| v as f64 / std[i / per_channel] as f64))
            }
            None => leafwalk_walk::random_direction(n, seed),
        };
        let (points, records) = py
            .detach(|| leafwalk_walk::direction_walk(&self.inner, &from, &direction, subspace, steps, step, |_| {}))
            .map_err(fail)?;
        let outcome =
            PathOutcome { ending: leafwalk_walk::Ending::StepLimit, jacobian_evals: records.len(), points, records };
        let extra =
            PathExtra { noise_steps: 0, waypoints: Vec::new(), target_class: None, flip_step: None, seconds: 0.0 };
        Path::new(py, &self.inner, &outcome, extra)
    }

    fn reference(
        &self,
        py: Python<'_>,
        images: PyReadonlyArrayDyn<'_, f32>,
        labels: Vec<usize>,
    ) -> PyResult<Reference> {
        let n = self.shape().len();
        let (_, values) = rows_of(&images, n, "images")?;
        let images: Vec<Vec<f32>> = values.chunks(n).map(<[f32]>::to_vec).collect();
        let inner = py.detach(|| leafwalk_ood::Reference::from_images(&self.inner, &images, &labels)).map_err(fail)?;
        Ok(Reference { inner })
    }

    #[pyo3(signature = (x, reference, *, scores, anchors_per_point, max_steps, progress))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python method
    fn ood_scores<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        reference: &Reference,
        scores: Vec<String>,
        anchors_per_point: usize,
        max_steps: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let n = self.shape().len();
        let (_, values) = rows_of(&x, n, "x")?;
        let images: Vec<Vec<f32>> = values.chunks(n).map(<[f32]>::to_vec).collect();
        let which = scores.iter().map(|s| s.parse::<Score>()).collect::<Result<Vec<_>, _>>().map_err(fail)?;
        if anchors_per_point == 0 || max_steps == 0 {
            return Err(fail("anchors_per_point and max_steps must be at least 1"));
        }
        let defaults = ScoreOptions::default();
        let options = ScoreOptions { anchors_per_point, path: PathOptions { max_steps, ..defaults.path }, ..defaults };
        let mut progress = Callback(progress, None);
        let table = py
            .detach(|| {
                leafwalk_ood::score_images(&self.inner, &reference.inner, &images, &which, &options, |done| {
                    progress.call(|py, f| f.call1(py, (done, images.len())))
                })
            })
            .map_err(fail)?;
        progress.finish()?;
        let columns = PyDict::new(py);
        for (score, values) in table.columns {
            columns.set_item(score.name(), values.into_pyarray(py))?;
        }
        Ok(columns)
    }

    #[pyo3(signature = (x, anchors, *, per_point, max_steps, progress))]
    #[allow(clippy::type_complexity)] // the pair of arrays Python receives
    fn denoise<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        anchors: PyReadonlyArrayDyn<'py, f32>,
        per_point: usize,
        max_steps: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<f64>>)> {
        let n = self.shape().len();
        let (points, values) = rows_of(&x, n, "x")?;
        let (count, anchor_values) = rows_of(&anchors, n, "anchors")?;
        if max_steps == 0 {
            return Err(fail("max_steps must be at least 1"));
        }
        let (noisy, anchors) = (self.states(&values, points), self.states(&anchor_values, count));
        let options = PathOptions { max_steps, ..PathOptions::adaptive() };
        let mut progress = Callback(progress, None);
        let projections = py
            .detach(|| {
                leafwalk_walk::project_onto_leaf(&self.inner, &noisy, &anchors, per_point, &options, |point, record| {
                    progress.call(|py, f| f.call1(py, (point, record.step, record.distance)))
                })
            })
            .map_err(fail)?;
        progress.finish()?;
        let pixels: Vec<f32> = projections.iter().flat_map(|p| p.point.to_pixels(&self.inner)).collect();
        let distances: Vec<f64> = projections.iter().map(|p| p.distance).collect();
        Ok((array(py, &[points, n], pixels)?, array(py, &[points], distances)?))
    }
}

/// A Python progress callback called from work that runs without the GIL: the first exception
/// it raises is kept and later calls are skipped; [`Callback::finish`] raises it once the work
/// is done.
struct Callback(Option<Py<PyAny>>, Option<PyErr>);

impl Callback {
    fn call(&mut self, call: impl FnOnce(Python<'_>, &Py<PyAny>) -> PyResult<Py<PyAny>>) {
        if let (Some(function), None) = (&self.0, &self.1) {
            self.1 = Python::attach(|py| call(py, function).err());
        }
    }

    fn finish(self) -> PyResult<()> {
        self.1.map_or(Ok(()), Err)
    }
}

fn subspace_named(name: &str) -> PyResult<Subspace> {
    match name {
        "leaf" => Ok(Subspace::Leaf),
        "kernel" => Ok(Subspace::Kernel),
        other => Err(fail(format!("subspace {other:?}: expected \"leaf\" or \"kernel\""))),
    }
}

/// G at one point (see the Python `leafwalk.Geometry`).
#[pyclass(frozen, module = "leafwalk._leafwalk")]
struct Geometry {
    point: PointGeometry,
}

#[pymethods]
impl Geometry {
    #[getter]
    fn trace(&self) -> f64 {
        self.point.trace()
    }

    #[getter]
    fn rank(&self) -> usize {
        self.point.rank()
    }

    #[getter]
    fn eigenvalues<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<f64>> {
        self.point.spectrum().eigenvalues.into_pyarray(py)
    }

    #[getter]
    fn singular_values<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<f64>> {
        self.point.jacobian_singular_values().into_pyarray(py)
    }

    #[getter]
    fn jacobian<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        array(py, &[self.point.classes(), self.point.dim()], self.point.jacobian_values().to_vec())
    }

    #[pyo3(signature = (k=None))]
    fn leaf_basis<'py>(&self, py: Python<'py>, k: Option<usize>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let vectors = self.point.eigenvectors(k.unwrap_or(usize::MAX));
        // nalgebra stores columns one after another: the n×k matrix's storage is the k×n rows.
        array(py, &[vectors.ncols(), vectors.nrows()], vectors.as_slice().to_vec())
    }

    fn quadratic_form(&self, v: PyReadonlyArrayDyn<'_, f32>) -> PyResult<f64> {
        let (_, values) = rows_of(&v, self.point.dim(), "v")?;
        Ok(self.point.quadratic_form(&DVector::from_iterator(values.len(), values.iter().map(|&x| x as f64))))
    }
}

/// Training-set statistics for the OOD scores (see the Python `Model.reference`).
#[pyclass(frozen, module = "leafwalk._leafwalk")]
struct Reference {
    inner: leafwalk_ood::Reference,
}

struct PathExtra {
    noise_steps: usize,
    waypoints: Vec<usize>,
    target_class: Option<usize>,
    flip_step: Option<usize>,
    seconds: f64,
}

/// A walked path (see the Python `leafwalk.Path`).
#[pyclass(frozen, module = "leafwalk._leafwalk")]
struct Path {
    #[pyo3(get)]
    frames: Py<PyArrayDyn<f32>>,
    #[pyo3(get)]
    records: Py<PyList>,
    #[pyo3(get)]
    ending: &'static str,
    #[pyo3(get)]
    reached: bool,
    #[pyo3(get)]
    jacobian_evals: usize,
    #[pyo3(get)]
    noise_steps: usize,
    #[pyo3(get)]
    waypoints: Vec<usize>,
    #[pyo3(get)]
    target_class: Option<usize>,
    #[pyo3(get)]
    flip_step: Option<usize>,
    #[pyo3(get)]
    seconds: f64,
}

impl Path {
    fn new(py: Python<'_>, model: &Classifier, outcome: &PathOutcome, extra: PathExtra) -> PyResult<Path> {
        let n = model.input_shape().len();
        let pixels: Vec<f32> = outcome.points.iter().flat_map(|p| p.to_pixels(model)).collect();
        let frames = array(py, &[outcome.points.len(), n], pixels)?.unbind();
        let records = PyList::empty(py);
        for record in &outcome.records {
            records.append(record_dict(py, record)?)?;
        }
        let ending = match outcome.ending {
            leafwalk_walk::Ending::Reached => "reached",
            leafwalk_walk::Ending::ReachedClass { .. } => "reached_class",
            leafwalk_walk::Ending::Stalled { .. } => "stalled",
            leafwalk_walk::Ending::StepLimit => "step_limit",
            leafwalk_walk::Ending::Diverged { .. } => "diverged",
        };
        Ok(Path {
            frames,
            records: records.unbind(),
            ending,
            reached: outcome.reached(),
            jacobian_evals: outcome.jacobian_evals,
            noise_steps: extra.noise_steps,
            waypoints: extra.waypoints,
            target_class: extra.target_class,
            flip_step: extra.flip_step,
            seconds: extra.seconds,
        })
    }
}

fn record_dict<'py>(py: Python<'py>, record: &PathRecord) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("step", record.step)?;
    dict.set_item("distance", record.distance)?;
    dict.set_item("prediction", record.prediction)?;
    dict.set_item("probability", record.probability)?;
    dict.set_item("trace_g", record.trace_g)?;
    Ok(dict)
}

/// Writes `frames` (`[T, n]` pixels of `shape`) as a looping GIF, each drawn 4× with its
/// caption under it (`captions`: one a frame, or none).
#[pyfunction]
#[pyo3(signature = (frames, shape, path, *, captions, frame_ms))]
fn save_gif(
    py: Python<'_>,
    frames: PyReadonlyArrayDyn<'_, f32>,
    shape: (usize, usize, usize),
    path: PathBuf,
    captions: Option<Vec<String>>,
    frame_ms: u32,
) -> PyResult<()> {
    let shape = ImageShape { channels: shape.0, height: shape.1, width: shape.2 };
    let (count, values) = rows_of(&frames, shape.len(), "frames")?;
    if captions.as_ref().is_some_and(|c| c.len() != count) {
        return Err(fail(format!("captions: expected one per frame ({count})")));
    }
    py.detach(|| -> Result<(), String> {
        let images = (0..count)
            .map(|k| {
                let caption = captions.as_ref().map_or_else(String::new, |c| c[k].clone());
                let tile = Tile::new(&values[k * shape.len()..(k + 1) * shape.len()], shape, caption, TileKind::Image);
                leafwalk_plot::render_tiles(None, &[tile], 1, 4)
            })
            .collect::<Result<Vec<_>, String>>()?;
        leafwalk_plot::write_gif(&path, images, frame_ms).map_err(|e| e.to_string())
    })
    .map_err(fail)
}

/// An image file (PNG, JPEG, GIF) as pixels `[n]` of `shape`, resized and inverted as the CLI
/// reads `--image` files (see the Python `leafwalk.load_image`).
#[pyfunction]
#[pyo3(signature = (path, shape, *, invert))]
fn load_image<'py>(
    py: Python<'py>,
    path: PathBuf,
    shape: (usize, usize, usize),
    invert: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = ImageShape { channels: shape.0, height: shape.1, width: shape.2 };
    let invert = match invert {
        "auto" => leafwalk_data::Invert::Auto,
        "on" => leafwalk_data::Invert::On,
        "off" => leafwalk_data::Invert::Off,
        other => return Err(fail(format!("invert {other:?}: expected \"auto\", \"on\" or \"off\""))),
    };
    let pixels = py.detach(|| leafwalk_data::load_image(&path, shape, invert)).map_err(fail)?;
    array(py, &[shape.channels, shape.height, shape.width], pixels)
}

/// Trains a built-in architecture (see the Python `leafwalk.train`).
#[pyfunction]
#[pyo3(signature = (arch, dataset, out, *, epochs, lr, batch_size, optimizer, seed, data_root, resume, reference_size, min_accuracy, device, progress))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of the Python function
fn train<'py>(
    py: Python<'py>,
    arch: &str,
    dataset: &str,
    out: PathBuf,
    epochs: usize,
    lr: f64,
    batch_size: usize,
    optimizer: &str,
    seed: u64,
    data_root: PathBuf,
    resume: bool,
    reference_size: usize,
    min_accuracy: f64,
    device: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let config = leafwalk_train::TrainConfig {
        dataset: leafwalk_data::dataset_info(dataset).map_err(fail)?,
        arch: arch.parse().map_err(fail)?,
        variant: Variant::default(),
        normalisation: None,
        epochs,
        lr,
        batch_size,
        optimizer: optimizer.parse().map_err(fail)?,
        seed,
        out,
        data_root,
        checkpoint_every: None,
        resume,
        progress: false,
        reference_size,
        min_accuracy,
        device: device.parse::<DeviceChoice>().map_err(fail)?.open().map_err(fail)?,
        adversarial: None,
        snapshots: Vec::new(),
    };
    // Between steps: the progress callback, and Ctrl-C (Python's signal flag); either one's
    // exception stops the run after that step, its resume state saved, and is raised here.
    let mut stopped_by = None;
    let summary = py
        .detach(|| {
            leafwalk_train::train(&config, |step| {
                Python::attach(|py| {
                    let called = progress.as_ref().map_or(Ok(()), |p| p.call1(py, (step,)).map(drop));
                    stopped_by = called.and_then(|()| py.check_signals()).err();
                    stopped_by.is_some()
                })
            })
        })
        .map_err(fail)?;
    if let Some(error) = stopped_by {
        return Err(error);
    }
    let epochs = PyList::empty(py);
    for e in summary.epochs {
        let dict = PyDict::new(py);
        dict.set_item("epoch", e.epoch)?;
        dict.set_item("train_loss", e.train_loss)?;
        dict.set_item("train_accuracy", e.train_accuracy)?;
        dict.set_item("test_loss", e.test_loss)?;
        dict.set_item("test_accuracy", e.test_accuracy)?;
        dict.set_item("mean_trace_g", e.mean_trace_g)?;
        dict.set_item("checkpoint", e.checkpoint)?;
        epochs.append(dict)?;
    }
    Ok(epochs)
}

#[pymodule]
fn _leafwalk(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LeafwalkError", m.py().get_type::<LeafwalkError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Model>()?;
    m.add_class::<Geometry>()?;
    m.add_class::<Reference>()?;
    m.add_class::<Path>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(save_gif, m)?)?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    Ok(())
}
