"""Transferability scores: how well a frozen backbone's features (and its source head) fit a target's labels.

Pure NumPy/SciPy/scikit-learn, one function per score, each "higher is better", each on float64:

* :func:`knn_accuracy`: k-NN accuracy (k = 5, Euclidean, majority vote, ties to the smaller label) of the
  validation features against the training features: held out, not leave-one-out. It is scikit-learn's
  ``KNeighborsClassifier(n_neighbors=k).fit(train).score(val)`` on the same arrays (Sorkhei et al. 2025).
* :func:`logme`: the log marginal evidence of a Bayesian linear model ``y = F w + e`` with ``w ~ N(0, 1/alpha)``,
  ``e ~ N(0, 1/beta)``, maximised over alpha and beta by MacKay's fixed point, per class on one-hot targets,
  divided by N and averaged over classes (You et al. 2021). Invariant to a global scale of the features.
* :func:`h_score`: ``tr(cov(f)^+ cov(E[f | y]))`` (Bao et al. 2019). Invariant to any invertible linear map of
  features of full rank, so to a per-feature scale.
* :func:`shrunk_h_score`: H-score with cov(f) replaced by Ledoit-Wolf's shrunk estimate cov_a(f) and the
  between-class covariance scaled by ``1 - a`` (Ibrahim et al. 2022, "regularised H-score"): the plain one
  inverts a sample covariance that is singular or nearly so whenever the features are many against the images
  (it then measures the noise of the small eigenvalues), the shrunk one stays well conditioned. Invariant to a
  global feature scale and a rotation, not to a per-feature scale (it shrinks toward a multiple of I).
* :func:`nce`: the negative conditional entropy ``-H(Y | Z)`` of the target label given the source head's
  decision (Tran et al. 2019).
* :func:`leep`: the mean log-likelihood of the target label under the empirical predictor
  ``P(y | z) theta(z | x)`` built from the source head's probabilities (Nguyen et al. 2020).
* :func:`gbc`: features projected by PCA onto (at most) 64 dimensions, a diagonal Gaussian per class,
  ``-sum_{c != c'} exp(-D_B(c, c'))`` with the Bhattacharyya distance D_B (Pándy et al. 2022).

The features are what :mod:`tle.studies.rank` extracts: the last backbone block's output, averaged over space.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KNN_K = 5
GBC_DIMS = 64
LOGME_TOL = 1e-8  # relative change of alpha/beta that ends the fixed point
LOGME_MAX_ITER = 200
VARIANCE_FLOOR = 1e-8  # of a GBC class variance, relative to the mean variance of the projected features

# Where a score needs what (the ranking fills a ScoreInput per candidate; a score without its input is '-').
FEATURE_SCORES = ("knn", "logme", "hscore", "hscore_shrunk", "gbc")
HEAD_SCORES = ("nce", "leep")
SCORES = FEATURE_SCORES + HEAD_SCORES
BASELINES = ("params", "source_acc")
TITLES = {"knn": "k-NN acc", "logme": "LogME", "hscore": "H-score", "hscore_shrunk": "H-score LW", "gbc": "GBC",
          "nce": "NCE", "leep": "LEEP", "params": "params", "source_acc": "source acc"}


def _floats(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    return y.astype(np.int64)


def _check(features: np.ndarray, labels: np.ndarray) -> None:
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N,) must agree: {features.shape} vs {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("a score needs at least two classes in the labels")


# -- k-NN ------------------------------------------------------------------------------


def knn_predict(train_x, train_y, query_x, k: int = KNN_K) -> np.ndarray:
    """The majority label of the ``k`` nearest training rows (Euclidean) of each query row; ties go to the
    smaller label, as scikit-learn's KNeighborsClassifier with uniform weights decides them."""
    train_x, query_x, train_y = _floats(train_x), _floats(query_x), _labels(train_y)
    k = max(1, min(int(k), len(train_x)))
    classes, index = np.unique(train_y, return_inverse=True)
    sq_train = np.einsum("ij,ij->i", train_x, train_x)
    out = np.empty(len(query_x), dtype=np.int64)
    for start in range(0, len(query_x), 1024):  # a distance matrix of at most 1024 rows at a time
        q = query_x[start:start + 1024]
        d = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * q @ train_x.T + sq_train[None, :]
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
        votes = np.zeros((len(q), len(classes)), dtype=np.int64)
        np.add.at(votes, (np.repeat(np.arange(len(q)), k), index[nearest].ravel()), 1)
        out[start:start + len(q)] = classes[np.argmax(votes, axis=1)]
    return out


def knn_accuracy(train_x, train_y, val_x, val_y, k: int = KNN_K) -> float:
    """Accuracy of :func:`knn_predict` on held-out rows (the target's validation split)."""
    val_y = _labels(val_y)
    if len(val_y) == 0:
        raise ValueError("k-NN accuracy needs held-out rows (the validation split is empty)")
    return float(np.mean(knn_predict(train_x, train_y, val_x, k) == val_y))


# -- LogME -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spectrum:
    """F's thin SVD as the evidence needs it: squared singular values, N and D."""

    u: np.ndarray  # N x k
    s2: np.ndarray  # k
    n: int
    d: int

    @classmethod
    def of(cls, features: np.ndarray) -> _Spectrum:
        u, s, _ = np.linalg.svd(features, full_matrices=False)
        return cls(u, s * s, features.shape[0], features.shape[1])


def _evidence_parts(sp: _Spectrum, z: np.ndarray, rest: float, alpha: float, beta: float):
    """For targets y with ``z = U^T y`` and ``rest = |y|^2 - |z|^2``: the log evidence, gamma, |m|^2 and |y - Fm|^2."""
    denom = alpha + beta * sp.s2
    m2 = float(np.sum((beta * np.sqrt(sp.s2) * z / denom) ** 2))
    res = rest + float(np.sum((alpha * z / denom) ** 2))
    gamma = float(np.sum(beta * sp.s2 / denom))
    logdet = float(np.sum(np.log(denom))) + (sp.d - len(sp.s2)) * math.log(alpha)
    evidence = (sp.d / 2 * math.log(alpha) + sp.n / 2 * math.log(beta) - logdet / 2 - beta / 2 * res
                - alpha / 2 * m2 - sp.n / 2 * math.log(2 * math.pi))
    return evidence, gamma, m2, res


def logme_evidence(features, y, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) of one target column ``y`` (not divided by N): the evidence LogME maximises."""
    f, y = _floats(features), _floats(y)
    sp = _Spectrum.of(f)
    z = sp.u.T @ y
    return _evidence_parts(sp, z, max(float(y @ y - z @ z), 0.0), float(alpha), float(beta))[0]


def _max_evidence(sp: _Spectrum, y: np.ndarray) -> float:
    z = sp.u.T @ y
    rest = max(float(y @ y - z @ z), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITER):
        _, gamma, m2, res = _evidence_parts(sp, z, rest, alpha, beta)
        # MacKay's updates; the bounds keep a degenerate case (features all zero, a perfect fit) finite.
        new_alpha = min(max(gamma / max(m2, 1e-300), 1e-12), 1e12)
        new_beta = min(max((sp.n - gamma) / max(res, 1e-300), 1e-12), 1e12)
        done = abs(new_alpha / new_beta - alpha / beta) <= LOGME_TOL * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence_parts(sp, z, rest, alpha, beta)[0] / sp.n


def logme(features, labels) -> float:
    """LogME: the maximum log evidence per sample, averaged over the one-hot columns of the classes."""
    f, y = _floats(features), _labels(labels)
    _check(f, y)
    sp = _Spectrum.of(f)
    return float(np.mean([_max_evidence(sp, (y == c).astype(np.float64)) for c in np.unique(y)]))


# -- H-score ---------------------------------------------------------------------------


def h_score(features, labels) -> float:
    """``tr(pinv(cov f) cov g)`` where g replaces each row by its class's mean (covariances with ddof 1)."""
    f, y = _floats(features), _labels(labels)
    _check(f, y)
    g = _class_means(f, y)
    cov_f = np.atleast_2d(np.cov(f, rowvar=False))
    cov_g = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def _class_means(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row replaced by the mean of its class's rows."""
    g = np.empty_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    return g


def import_in_background(*also: str) -> threading.Thread:
    """Start importing scikit-learn's covariance module (about a second: the only slow import of the scores), then
    the modules ``also`` names, in a thread, so that a ranking pays them while its workers extract features;
    :func:`shrunk_h_score` then finds it imported (Python's import lock makes a second import wait for the first)."""
    def run() -> None:
        for name in ("sklearn.covariance", *also):
            importlib.import_module(name)

    thread = threading.Thread(target=run, daemon=True, name="tle-imports")
    thread.start()
    return thread


def shrunk_h_score(features, labels) -> float:
    """``tr(cov_a(f)^-1 (1 - a) cov(g))``: cov_a(f) Ledoit-Wolf's shrunk covariance of the features and a its
    shrinkage (scikit-learn's ``LedoitWolf``), g each row's class mean; both covariances normalised by N, as
    Ledoit-Wolf's is. Features that are all constant (a silent spiking layer, dead units) have a zero covariance,
    shrunk or not: they score 0, as the plain H-score's pseudo-inverse gives."""
    from sklearn.covariance import LedoitWolf

    f, y = _floats(features), _labels(labels)
    _check(f, y)
    estimate = LedoitWolf().fit(f)
    g = _class_means(f, y)
    cov_g = np.atleast_2d(np.cov(g, rowvar=False, bias=True))
    shrunk = np.atleast_2d(estimate.covariance_)
    if not np.trace(shrunk) > 0:
        return 0.0
    return float(np.trace(np.linalg.solve(shrunk, (1.0 - estimate.shrinkage_) * cov_g)))


# -- from the source head --------------------------------------------------------------


def nce(source_labels, target_labels) -> float:
    """``-H(Y | Z)`` in nats, Z the source head's decision on each target image (its argmax)."""
    z, y = _labels(source_labels), _labels(target_labels)
    if len(z) != len(y) or not len(y):
        raise ValueError("source and target labels must be as many, and not none")
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((zi.max() + 1, yi.max() + 1))
    np.add.at(joint, (zi, yi), 1.0 / len(y))
    p_z = joint.sum(axis=1, keepdims=True)
    cond = joint / p_z
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(cond), 0.0)
    return float(terms.sum())


def softmax(logits) -> np.ndarray:
    x = _floats(logits)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def leep(source_probs, target_labels) -> float:
    """LEEP from the source head's probabilities theta (N x C_s, rows summing to 1) on the target images."""
    theta, y = _floats(source_probs), _labels(target_labels)
    if theta.ndim != 2 or len(theta) != len(y):
        raise ValueError(f"source probabilities (N, C_s) and labels (N,) must agree: {theta.shape} vs {y.shape}")
    classes, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((len(classes), theta.shape[1]))  # P(y, z)
    np.add.at(joint, yi, theta / len(y))
    p_z = joint.sum(axis=0, keepdims=True)
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
    eep = np.einsum("nz,nz->n", theta, cond[yi])
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


# -- GBC -------------------------------------------------------------------------------


def bhattacharyya(mu1, var1, mu2, var2) -> float:
    """The Bhattacharyya distance between two Gaussians with diagonal covariances ``var1``, ``var2``."""
    mu1, var1, mu2, var2 = _floats(mu1), _floats(var1), _floats(mu2), _floats(var2)
    var = (var1 + var2) / 2
    return float(np.sum((mu1 - mu2) ** 2 / var) / 8
                 + 0.5 * (np.sum(np.log(var)) - 0.5 * np.sum(np.log(var1)) - 0.5 * np.sum(np.log(var2))))


def pca(features, dims: int) -> np.ndarray:
    """The features centred and projected onto their first ``min(dims, N, D)`` principal axes (scikit-learn's
    ``PCA(n_components).fit_transform`` up to the sign of each axis, which no GBC term sees)."""
    f = _floats(features)
    centred = f - f.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:max(1, min(int(dims), f.shape[0], f.shape[1]))].T


def gbc(features, labels, dims: int = GBC_DIMS) -> float:
    """GBC on the features projected by PCA onto ``min(dims, N, D)`` components, diagonal Gaussians per class
    (population variances, floored at a tiny fraction of the mean variance)."""
    f, y = _floats(features), _labels(labels)
    _check(f, y)
    z = pca(f, dims)
    floor = max(float(z.var(axis=0).mean()), 1e-300) * VARIANCE_FLOOR
    classes = np.unique(y)
    stats = [(z[y == c].mean(axis=0), np.maximum(z[y == c].var(axis=0), floor)) for c in classes]
    total = 0.0
    for i, (m1, v1) in enumerate(stats):
        for j, (m2, v2) in enumerate(stats):
            if i != j:
                total += math.exp(-bhattacharyya(m1, v1, m2, v2))
    return -total


# -- one candidate's scores --------------------------------------------------------------


@dataclass(frozen=True)
class ScoreInput:
    """What the scores of one candidate are computed from: the frozen features of the target's training and
    validation images with their labels, and the source head's logits on the training images (None: no head)."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    source_logits: np.ndarray | None = None


SCORE_FUNCTIONS: dict[str, Callable[[ScoreInput], float]] = {
    "knn": lambda s: knn_accuracy(s.train_x, s.train_y, s.val_x, s.val_y),
    "logme": lambda s: logme(s.train_x, s.train_y),
    "hscore": lambda s: h_score(s.train_x, s.train_y),
    "hscore_shrunk": lambda s: shrunk_h_score(s.train_x, s.train_y),
    "gbc": lambda s: gbc(s.train_x, s.train_y),
    "nce": lambda s: nce(np.argmax(_floats(s.source_logits), axis=1), s.train_y),
    "leep": lambda s: leep(softmax(s.source_logits), s.train_y),
}


def score(name: str, data: ScoreInput) -> float | None:
    """Score ``name`` of one candidate; None when it needs the source head and the candidate has none."""
    if name in HEAD_SCORES and data.source_logits is None:
        return None
    return SCORE_FUNCTIONS[name](data)
