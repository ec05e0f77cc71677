"""The transferability scores of ``tle rank`` (tle.analysis.transferability) and the rank correlation
(tle.analysis.ranking), against hand computations, scipy and scikit-learn, on small fixed arrays."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from tle.analysis import transferability as T
from tle.analysis.ranking import TextTable, correlate, order


def clustered(seed=0, n_per_class=30, classes=3, dims=8, spread=1.0):
    """Features of ``classes`` Gaussian clusters (means ``3 * spread`` apart on random axes) and their labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dims)) * 3 * spread
    x = np.concatenate([means[c] + rng.normal(size=(n_per_class, dims)) for c in range(classes)])
    return x, np.repeat(np.arange(classes), n_per_class)


# -- hand-computed values ---------------------------------------------------------------


def test_knn_by_hand_and_ties_to_the_smaller_label():
    train = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = np.array([0, 0, 0, 1, 1])
    # 1.5: nearest 1, 2, 0 (all class 0); 10.5: nearest 10, 11, then 2 (class 0): 1 wins 2 to 1.
    assert T.knn_predict(train, labels, np.array([[1.5], [10.5]]), k=3).tolist() == [0, 1]
    assert T.knn_accuracy(train, labels, np.array([[1.5], [10.5]]), np.array([0, 1]), k=3) == 1.0
    assert T.knn_accuracy(train, labels, np.array([[1.5], [10.5]]), np.array([0, 0]), k=3) == 0.5
    # 6.0 with k=2: 2 (class 0) at 4 and 10 (class 1) at 4 -> one vote each -> the smaller label.
    assert T.knn_predict(np.array([[2.0], [10.0]]), np.array([1, 0]), np.array([[6.0]]), k=2).tolist() == [0]


def test_h_score_by_hand():
    # f = 0, 2, 4, 6: var = 20/3 (ddof 1); class means 1, 1, 5, 5: var = 16/3; H = 16/20.
    assert T.h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])) == pytest.approx(0.8, abs=1e-12)


def test_nce_by_hand():
    # Z = 0 holds targets {0, 1}: H = ln 2 with P(Z = 0) = 1/2; Z = 1 holds only 1: H = 0. NCE = -ln 2 / 2.
    assert T.nce(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx(-math.log(2) / 2, abs=1e-12)
    assert T.nce(np.array([3, 3, 7, 7]), np.array([0, 0, 1, 1])) == 0.0  # the head's decision tells the target


def test_leep_by_hand():
    # Hard decisions: as the NCE example, P(y | z=0) = (1/2, 1/2), P(y | z=1) = (0, 1): LEEP = (2 ln 1/2) / 4.
    theta = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert T.leep(theta, np.array([0, 1, 1, 1])) == pytest.approx(-math.log(2) / 2, abs=1e-12)
    # Soft: P(y, z) = rows / 2, P(z) = (0.55, 0.45).
    theta = np.array([[0.8, 0.2], [0.3, 0.7]])
    eep0 = 0.8 * (0.4 / 0.55) + 0.2 * (0.1 / 0.45)
    eep1 = 0.3 * (0.15 / 0.55) + 0.7 * (0.35 / 0.45)
    assert T.leep(theta, np.array([0, 1])) == pytest.approx((math.log(eep0) + math.log(eep1)) / 2, abs=1e-12)


def test_gbc_by_hand():
    # One feature: PCA centres it (mean 6.5) -> classes at -5.5 (var 1) and 5.5 (var 4).
    # D_B = (11^2 / 2.5) / 8 + (ln 2.5 - ln 1 / 2 - ln 4 / 2) / 2; GBC = -2 exp(-D_B) (both ordered pairs).
    f = np.array([[0.0], [2.0], [10.0], [14.0]])
    distance = 121 / 2.5 / 8 + 0.5 * (math.log(2.5) - 0.5 * math.log(4.0))
    assert T.gbc(f, np.array([0, 0, 1, 1])) == pytest.approx(-2 * math.exp(-distance), rel=1e-12)


def test_bhattacharyya_is_the_overlap_integral():
    """D_B = -ln of the integral of sqrt(p q), for two 1-D Gaussians, numerically."""
    m1, v1, m2, v2 = 0.3, 0.5, 1.7, 2.0
    overlap = integrate.quad(lambda x: math.sqrt(stats.norm.pdf(x, m1, math.sqrt(v1)) * stats.norm.pdf(x, m2, math.sqrt(v2))),
                             -30, 30)[0]
    assert T.bhattacharyya([m1], [v1], [m2], [v2]) == pytest.approx(-math.log(overlap), rel=1e-9)


def test_logme_evidence_is_the_gaussian_marginal_likelihood():
    """For fixed alpha, beta the evidence is log N(y; 0, I/beta + F F^T/alpha), with N > D and N < D."""
    rng = np.random.default_rng(1)
    for n, d in ((30, 5), (8, 20)):
        f, y = rng.normal(size=(n, d)), rng.normal(size=n)
        for alpha, beta in ((0.7, 2.3), (5.0, 0.1)):
            direct = stats.multivariate_normal(np.zeros(n), np.eye(n) / beta + f @ f.T / alpha).logpdf(y)
            assert T.logme_evidence(f, y, alpha, beta) == pytest.approx(direct, rel=1e-10)
    # By hand: F = (1, 1)^T, alpha = beta = 1, y = (1, 0): C = [[2, 1], [1, 2]], det 3, y C^-1 y = 2/3.
    by_hand = -0.5 * (2 / 3) - 0.5 * math.log(3) - math.log(2 * math.pi)
    assert T.logme_evidence(np.ones((2, 1)), np.array([1.0, 0.0]), 1.0, 1.0) == pytest.approx(by_hand, rel=1e-12)


def test_logme_is_the_maximum_evidence_over_alpha_and_beta():
    """The fixed point lands on the maximum a generic optimiser finds (per class, divided by N, averaged)."""
    x, y = clustered(seed=2, n_per_class=12, dims=4)
    best = []
    for c in np.unique(y):
        target = (y == c).astype(float)
        res = optimize.minimize(lambda p: -T.logme_evidence(x, target, math.exp(p[0]), math.exp(p[1])), [0.0, 0.0],
                                method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
        best.append(-res.fun / len(y))
    assert T.logme(x, y) == pytest.approx(float(np.mean(best)), rel=1e-7)


# -- against scikit-learn ---------------------------------------------------------------


def test_knn_equals_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    for seed in range(4):
        x, y = clustered(seed=seed, n_per_class=40, classes=4, spread=0.4)
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(y))
        tr, va = idx[:110], idx[110:]
        for k in (1, 5, 9):
            ref = KNeighborsClassifier(n_neighbors=k).fit(x[tr], y[tr])
            assert T.knn_predict(x[tr], y[tr], x[va], k=k).tolist() == ref.predict(x[va]).tolist()
            assert T.knn_accuracy(x[tr], y[tr], x[va], y[va], k=k) == ref.score(x[va], y[va])


def test_pca_is_scikit_learns_up_to_sign():
    from sklearn.decomposition import PCA

    x, _ = clustered(seed=3, dims=6)
    assert np.allclose(np.abs(T.pca(x, 3)), np.abs(PCA(n_components=3).fit_transform(x)), atol=1e-9)


# -- what the papers say of them --------------------------------------------------------


def informative_logits(y, seed=0, source_classes=5):
    """A source head whose decision tells the target class (class c -> source class 2c mod 5), with noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), source_classes))
    logits[np.arange(len(y)), (2 * y) % source_classes] += 3.0
    return logits


def ledoit_wolf_by_hand(x):
    """Ledoit & Wolf (2004): S (normalised by N) shrunk toward mu I, mu = tr(S)/p, by min(b2, d2)/d2 with
    d2 = |S - mu I|^2 and b2 = the mean over rows of |x x^T - S|^2 / N (Frobenius norms divided by p)."""
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2) / p
    b2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in xc) / n ** 2 / p
    a = min(b2, d2) / d2
    return (1 - a) * s + a * mu * np.eye(p), a


def test_shrunk_h_score_by_hand():
    # One feature: nothing to shrink toward (S is mu I), so it is H-score's 0.8 (both covariances over N here).
    assert T.shrunk_h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])) == \
        pytest.approx(0.8, abs=1e-12)
    x, y = clustered(seed=7, n_per_class=6, dims=5)
    shrunk, a = ledoit_wolf_by_hand(x)
    g = np.stack([x[y == c].mean(axis=0) for c in y])
    gc = g - g.mean(axis=0)
    expected = np.trace(np.linalg.inv(shrunk) @ ((1 - a) * gc.T @ gc / len(y)))
    assert 0 < a < 1 and T.shrunk_h_score(x, y) == pytest.approx(expected, rel=1e-9)


def test_shrunk_h_score_stays_low_on_noise_where_h_score_does_not():
    """Many features against few images: H-score inverts a nearly singular covariance and scores pure noise near
    its ceiling C - 1; the shrunk one scores that noise below features that separate the classes (why tle rank
    shows both: on the letters a random resnet_small had the top H-score)."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    noise = rng.normal(size=(60, 50))
    informative, _ = clustered(seed=8, n_per_class=20, dims=50, spread=0.3)
    assert T.h_score(noise, y) > 1.5  # ceiling: 2
    assert T.shrunk_h_score(noise, y) < 0.5 < T.shrunk_h_score(informative, y)
    assert T.shrunk_h_score(noise, y) < T.h_score(noise, y) / 3


def test_every_score_falls_when_the_labels_are_shuffled():
    x, y = clustered(seed=4, n_per_class=40, spread=0.5)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, va = idx[:90], idx[90:]
    logits = informative_logits(y)

    def all_scores(labels):
        data = T.ScoreInput(x[tr], labels[tr], x[va], labels[va], logits[tr])
        return {name: T.score(name, data) for name in T.SCORES}

    true = all_scores(y)
    for seed in range(3):
        shuffled = all_scores(np.random.default_rng(seed + 1).permutation(y))
        for name in T.SCORES:
            assert shuffled[name] < true[name], (name, seed, shuffled[name], true[name])


def test_h_score_is_invariant_to_feature_scales_and_linear_maps():
    x, y = clustered(seed=5)
    h = T.h_score(x, y)
    scales = np.random.default_rng(0).uniform(0.01, 100, size=x.shape[1])
    mixing = np.random.default_rng(1).normal(size=(x.shape[1], x.shape[1]))
    assert T.h_score(x * scales, y) == pytest.approx(h, rel=1e-8)
    assert T.h_score(x @ mixing, y) == pytest.approx(h, rel=1e-6)
    assert T.h_score(x * 1e3, y) == pytest.approx(h, rel=1e-8)


@pytest.mark.parametrize("score", [T.logme, T.shrunk_h_score], ids=["logme", "hscore_shrunk"])
def test_logme_and_the_shrunk_h_score_are_invariant_to_a_feature_scale_and_a_rotation(score):
    """LogME: scaling F by c is scaling the prior's precision by c^2, so the maximum over alpha is the same; an
    orthogonal map leaves F F^T, hence the marginal likelihood, unchanged. The shrunk H-score: Ledoit-Wolf's
    shrinkage is the same for cF and for FQ, and its target mu I scales and rotates with the features."""
    x, y = clustered(seed=6)
    m = score(x, y)
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(x.shape[1], x.shape[1])))[0]
    for c in (1e-3, 0.5, 40.0):
        assert score(x * c, y) == pytest.approx(m, rel=1e-6)
    assert score(x @ rotation, y) == pytest.approx(m, rel=1e-8)
    # Not invariant to a per-feature scale (an isotropic prior; a shrinkage toward a multiple of I): not vacuous.
    assert abs(score(x * np.arange(1, x.shape[1] + 1), y) - m) > 1e-3


def test_scores_need_two_classes_and_say_so():
    with pytest.raises(ValueError, match="two classes"):
        T.logme(np.ones((4, 2)), np.zeros(4))
    assert T.score("nce", T.ScoreInput(np.ones((2, 1)), np.array([0, 1]), np.ones((1, 1)), np.array([0]))) is None


# -- the rank correlation and the table ---------------------------------------------------


def test_correlation_equals_scipy_and_leaves_missing_scores_out():
    rng = np.random.default_rng(7)
    acc = rng.uniform(size=7)
    score = acc + rng.normal(scale=0.2, size=7)
    c = correlate(list(score), list(acc))
    ref = stats.kendalltau(score, acc)
    assert (c.n, c.tau, c.p) == (7, pytest.approx(ref.statistic, abs=1e-15), pytest.approx(ref.pvalue, abs=1e-15))
    assert c.weighted_tau == pytest.approx(stats.weightedtau(score, acc).statistic, abs=1e-15)
    missing = correlate([None, *score[1:]], list(acc))
    assert missing.n == 6 and missing.tau == pytest.approx(stats.kendalltau(score[1:], acc[1:]).statistic)
    assert math.isnan(correlate([1.0, None], [0.5, 0.6]).tau)


def test_order_puts_missing_last_and_keeps_ties_in_given_order():
    assert order([0.5, None, 0.9, 0.5]) == [2, 0, 3, 1]


def test_text_table_formats():
    table = TextTable("t", ["#", "name"], [["1", "a"], ["2", "b,c"]], right={0})
    assert table.markdown().splitlines()[2:5] == ["| # | name |", "|---:|---|", "| 1 | a |"]
    assert table.csv().splitlines() == ["#,name", "1,a", '2,"b,c"']


class _EveryBlockHook:
    """A third party's block_activations that predates ``blocks``: it gives every backbone block and no head."""

    def __init__(self):
        self.calls = 0

    def block_activations(self, model, images, blocks=None):
        self.calls += 1
        return {"block1": images * 2.0, "block2": images[:, :1, :1, :] + 1.0}


def test_features_pool_the_last_block_and_leave_the_logits_to_evaluate_where_the_hook_gives_no_head():
    from tle.run.features import backbone_features

    images = np.arange(5 * 2 * 2 * 3, dtype=np.float32).reshape(5, 2, 2, 3)
    hook = _EveryBlockHook()
    features, logits = backbone_features(hook, None, "block1", images, batch_size=2, logits=True)
    np.testing.assert_allclose(features, (images * 2.0).mean(axis=(1, 2)))
    assert logits is None and hook.calls == 3  # 5 images in batches of 2
    features, logits = backbone_features(hook, None, "block2", images[:0], batch_size=2)
    assert features.shape == (0, 0) and logits is None
