"""Type stubs of the native half of leafwalk; the documented API is the `leafwalk` package."""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

class LeafwalkError(Exception):
    """A refusal or failure of leafwalk; the message is one line naming the file or argument at fault."""

class Geometry:
    """G(x) at one image, from the C×n Jacobian (never the n×n G)."""

    @property
    def trace(self) -> float:
        """trace G = Σᵢ pᵢ ‖Jᵢ‖² (pixel units)."""
    @property
    def rank(self) -> int:
        """Numerical rank of G (singular values of J above 1e-6 of the largest, at most C − 1)."""
    @property
    def eigenvalues(self) -> npt.NDArray[np.float64]:
        """The C eigenvalues of G, descending (the last ≈ 0)."""
    @property
    def singular_values(self) -> npt.NDArray[np.float64]:
        """Singular values of J, descending (C values)."""
    @property
    def jacobian(self) -> npt.NDArray[np.float32]:
        """J = ∂ log p / ∂ pixels, [C, n]."""
    def leaf_basis(self, k: Optional[int] = None) -> npt.NDArray[np.float32]:
        """Unit eigenvectors of G for its k largest eigenvalues (at most the rank), [k, n]."""
    def quadratic_form(self, v: npt.NDArray[np.float32]) -> float:
        """vᵀ G v for one pixel direction v, given as [1, n]."""

class Reference:
    """Training-set statistics for the OOD scores (anchors of the data leaf, feature statistics)."""

class Path:
    frames: npt.NDArray[np.float32]
    records: List[Dict[str, Any]]
    ending: str
    reached: bool
    jacobian_evals: int
    noise_steps: int
    waypoints: List[int]
    target_class: Optional[int]
    flip_step: Optional[int]
    seconds: float

class Model:
    classes: List[str]
    input_shape: Tuple[int, int, int]
    arch: str
    dataset: Optional[str]
    mean: List[float]
    std: List[float]
    def log_probs(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
    def log_probs_and_jacobian(
        self, x: npt.NDArray[np.float32]
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def geometry(self, x: npt.NDArray[np.float32]) -> List[Geometry]: ...
    def project(
        self, v: npt.NDArray[np.float32], x: npt.NDArray[np.float32], subspace: str
    ) -> npt.NDArray[np.float64]: ...
    def path(
        self,
        a: npt.NDArray[np.float32],
        b: npt.NDArray[np.float32],
        *,
        integrator: str,
        leaf: str,
        step: Optional[float],
        max_steps: int,
        threshold: Optional[float],
        tolerance: Optional[float],
        noise_steps: int,
        seed: int,
        flip_target: bool,
        via: Optional[npt.NDArray[np.float32]],
        via_candidates: int,
        via_rounds: int,
        progress: Optional[Callable[[int, int, float, int], Any]],
    ) -> List[Path]: ...
    def walk(
        self,
        x: npt.NDArray[np.float32],
        direction: Optional[npt.NDArray[np.float32]],
        *,
        subspace: str,
        steps: int,
        step: float,
        seed: int,
    ) -> Path: ...
    def reference(self, images: npt.NDArray[np.float32], labels: Sequence[int]) -> Reference: ...
    def ood_scores(
        self,
        x: npt.NDArray[np.float32],
        reference: Reference,
        *,
        scores: Sequence[str],
        anchors_per_point: int,
        max_steps: int,
        progress: Optional[Callable[[int, int], Any]],
    ) -> Dict[str, npt.NDArray[np.float64]]: ...
    def denoise(
        self,
        x: npt.NDArray[np.float32],
        anchors: npt.NDArray[np.float32],
        *,
        per_point: int,
        max_steps: int,
        progress: Optional[Callable[[int, int, float], Any]],
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]: ...

def load(
    path: str,
    *,
    arch: Optional[str] = None,
    dataset: Optional[str] = None,
    layers: Optional[str] = None,
    classes: Optional[List[str]] = None,
    mean: Optional[List[float]] = None,
    std: Optional[List[float]] = None,
    device: str = "cpu",
) -> Model: ...
def load_image(path: str, shape: Tuple[int, int, int], *, invert: str) -> npt.NDArray[np.float32]: ...
def save_gif(
    frames: npt.NDArray[np.float32],
    shape: Tuple[int, int, int],
    path: str,
    *,
    captions: Optional[List[str]],
    frame_ms: int,
) -> None: ...
def train(
    arch: str,
    dataset: str,
    out: str,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    data_root: str,
    resume: bool,
    reference_size: int,
    min_accuracy: float,
    device: str,
    progress: Optional[Callable[[int], Any]],
) -> List[Dict[str, Any]]: ...
