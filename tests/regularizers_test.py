"""Tests of wae_tf.model.regularizers against hand-computed values and loop-based references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from wae_tf.model import regularizers

IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _seed(a, b=0):
    return tf.constant([a, b], dtype=tf.int32)


# --- Independent loop-based references (no matrix ops). ---------------------------------------

def _ref_sqdist(a, b):
    return float(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))


def _ref_kernel(a, b, kernel, z_dim, prior_scale, sigma2):
    d2 = _ref_sqdist(a, b)
    if kernel == "imq":
        return sum(s * 2 * z_dim * prior_scale ** 2 / (s * 2 * z_dim * prior_scale ** 2 + d2)
                   for s in IMQ_SCALES)
    return math.exp(-d2 / (2 * sigma2))


def _ref_median_sigma2(qz, pz):
    """The paper code's bandwidth: median of the cross pairs + median of the distinct Q pairs."""
    cross = [_ref_sqdist(a, b) for a in qz for b in pz]
    within = [_ref_sqdist(qz[i], qz[j]) for i in range(len(qz)) for j in range(i + 1, len(qz))]
    return float(np.median(cross) + np.median(within))


def _ref_mmd(qz, pz, kernel="imq", prior_scale=1.0, sigma2=0.0):
    n, z_dim = len(qz), len(qz[0])
    if kernel == "rbf" and sigma2 == 0:
        sigma2 = _ref_median_sigma2(qz, pz)

    def k(a, b):
        return _ref_kernel(a, b, kernel, z_dim, prior_scale, sigma2)

    qq = pp = qp = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                qq += k(qz[i], qz[j])
                pp += k(pz[i], pz[j])
            qp += k(qz[i], pz[j])
    return qq / (n * (n - 1)) + pp / (n * (n - 1)) - 2 * qp / (n * n)


# --- reconstruction_cost ----------------------------------------------------------------------

def _recon_pair():
    # Example 0: x - y = [-1, 0, 2, 0]: sum sq = 5, sum abs = 3.
    # Example 1: x - y = [3, 4, 0, 0]:  sum sq = 25, sum abs = 7.
    x = np.array([[0, 1, 2, 3], [3, 4, 1, 1]], np.float32).reshape(2, 2, 2, 1)
    y = np.array([[1, 1, 0, 3], [0, 0, 1, 1]], np.float32).reshape(2, 2, 2, 1)
    return tf.constant(x), tf.constant(y)


@pytest.mark.parametrize("kind, expected", [
    ("l2sq", [0.05 * 5, 0.05 * 25]),          # [0.25, 1.25]
    ("l2", [0.2 * math.sqrt(5), 0.2 * 5]),    # [0.4472136, 1.0]
    ("l1", [0.02 * 3, 0.02 * 7]),             # [0.06, 0.14]
])
def test_reconstruction_cost_hand_values(kind, expected):
    x, y = _recon_pair()
    cost = regularizers.reconstruction_cost(x, y, kind)
    assert cost.shape == (2,)
    np.testing.assert_allclose(cost.numpy(), expected, rtol=1e-5)


def test_reconstruction_cost_scales_with_the_pixel_range():
    """Costs of [0, 1] images with pixel_scale 2 equal those of the same images in [-1, 1]."""
    x, y = _recon_pair()
    for kind in ("l2sq", "l2", "l1"):
        np.testing.assert_allclose(
            regularizers.reconstruction_cost(x, y, kind, pixel_scale=2.0).numpy(),
            regularizers.reconstruction_cost(2 * x - 1, 2 * y - 1, kind).numpy(), rtol=1e-5)
    np.testing.assert_allclose(  # 4x for the squared cost: 0.05 * 4 * [5, 25]
        regularizers.reconstruction_cost(x, y, "l2sq", pixel_scale=2.0).numpy(), [1.0, 5.0],
        rtol=1e-6)


def test_bernoulli_cost_hand_values():
    # Pixels x = [1, 0, 0.5, 1], means y = [0.5, 0.25, 0.5, 1]:
    # -[log .5 + log .75 + (.5 log .5 + .5 log .5) + log(1 - 1e-7)] = 0.6931472 + 0.2876821
    # + 0.6931472 + 1e-7 = 1.6739765.
    x = tf.constant([1.0, 0.0, 0.5, 1.0], shape=[1, 2, 2, 1])
    y = tf.constant([0.5, 0.25, 0.5, 1.0], shape=[1, 2, 2, 1])
    np.testing.assert_allclose(regularizers.reconstruction_cost(x, y, "bernoulli").numpy(),
                               [1.6739765], rtol=1e-6)


def test_bernoulli_likelihood_of_symmetric_pixels_hand_values():
    """[-1, 1] pixels and a tanh decoder: the likelihood of (x + 1) / 2 under (G(z) + 1) / 2.

    Pixels x = [1, -1, 0, 1] and means G(z) = [0, -0.5, 0, 1] stand for t = [1, 0, 0.5, 1] and
    p = [0.5, 0.25, 0.5, 1]: -[log .5 + log .75 + (.5 log .5 + .5 log .5) + log(1 - 1e-7)]
    = 0.6931472 + 0.2876821 + 0.6931472 + 1e-7 = 1.6739765. Example 1, x = [0, 0, 0, 0] under
    G(z) = [0.5, 0.5, -0.5, -0.5] (p = .75, .75, .25, .25): 4 * -(.5 log .75 + .5 log .25)
    = 2 * (0.2876821 + 1.3862944) = 3.3479529.
    """
    x = tf.constant([1.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], shape=[2, 2, 2, 1])
    y = tf.constant([0.0, -0.5, 0.0, 1.0, 0.5, 0.5, -0.5, -0.5], shape=[2, 2, 2, 1])
    expected = [1.6739765, 3.3479529]
    np.testing.assert_allclose(regularizers.bernoulli_nll(x, y, "symmetric").numpy(), expected,
                               rtol=1e-6)
    # The training cost gets the [0, 1] images the networks map to and from: the same values.
    np.testing.assert_allclose(regularizers.reconstruction_cost(
        (x + 1) / 2, (y + 1) / 2, "bernoulli", pixel_scale=2.0).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="pixel range"):
        regularizers.bernoulli_nll(x, y, "wide")


def test_bernoulli_gradient_through_a_tanh_decoder_is_that_of_a_sigmoid():
    """d/da of the NLL of t under p = (tanh(a) + 1) / 2 equals that under sigmoid(2a): 2(p - t)."""
    a = tf.constant([[-1.5, 0.3, 2.0]])
    t = tf.constant([[0.0, 1.0, 0.25]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(a)
        symmetric = regularizers.bernoulli_nll(2 * t - 1, tf.tanh(a), "symmetric")
        unit = regularizers.bernoulli_nll(t, tf.sigmoid(2 * a))
    np.testing.assert_allclose(tape.gradient(symmetric, a).numpy(),
                               (2 * (tf.sigmoid(2 * a) - t)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(unit, a).numpy(),
                               tape.gradient(symmetric, a).numpy(), rtol=1e-5, atol=1e-6)


def test_reconstruction_cost_unknown_kind():
    x, y = _recon_pair()
    with pytest.raises(ValueError):
        regularizers.reconstruction_cost(x, y, "l3")


def test_l2_reconstruction_gradient_finite_at_equal_images():
    x = tf.ones([2, 2, 2, 1])
    y = tf.Variable(tf.ones([2, 2, 2, 1]))
    with tf.GradientTape() as tape:
        cost = tf.reduce_sum(regularizers.reconstruction_cost(x, y, "l2"))
    grad = tape.gradient(cost, y).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, 0.0)
    # Value at x == y is 0.2 * sqrt(1e-8) = 2e-5, i.e. 0 up to the documented epsilon.
    np.testing.assert_allclose(cost.numpy(), 2 * 2e-5, atol=1e-6)


# --- sample_prior -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "sphere", "uniform"])
def test_sample_prior_shape_and_determinism(kind):
    a = regularizers.sample_prior(kind, 7, 3, 2.0, _seed(1))
    b = regularizers.sample_prior(kind, 7, 3, 2.0, _seed(1))
    c = regularizers.sample_prior(kind, 7, 3, 2.0, _seed(2))
    assert a.shape == (7, 3) and a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert np.abs(a.numpy() - c.numpy()).max() > 1e-3


@pytest.mark.parametrize("kind", ["normal", "sphere", "uniform"])
def test_sample_prior_in_tf_function_with_tensor_num(kind):
    fn = tf.function(lambda num, seed: regularizers.sample_prior(kind, num, 4, 1.0, seed))
    z = fn(tf.constant(5), _seed(3))
    assert z.shape == (5, 4)
    eager = regularizers.sample_prior(kind, 5, 4, 1.0, _seed(3))
    np.testing.assert_allclose(z.numpy(), eager.numpy(), rtol=1e-6)


def test_sample_prior_sphere_norms():
    z = regularizers.sample_prior("sphere", 100, 9, 2.0, _seed(4)).numpy()
    # Radius = scale = 2 (the paper's code).
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 2.0, rtol=1e-5)


def test_sample_prior_uniform_bounds():
    z = regularizers.sample_prior("uniform", 10000, 2, 3.0, _seed(5)).numpy()
    assert z.min() >= -3.0 and z.max() <= 3.0
    # Spread fills the interval: extremes within 0.05 of +-3, std close to 3 / sqrt(3) = 1.732.
    assert z.min() < -2.95 and z.max() > 2.95
    assert abs(z.std() - math.sqrt(3.0)) < 0.05


def test_sample_prior_normal_moments():
    z = regularizers.sample_prior("normal", 10000, 4, 2.5, _seed(6)).numpy()
    # 40000 draws of N(0, 2.5^2): the std error of the std is ~2.5 / sqrt(80000) = 0.009.
    assert abs(z.std() - 2.5) < 0.05
    assert abs(z.mean()) < 0.05


def test_sample_prior_unknown_kind():
    with pytest.raises(ValueError):
        regularizers.sample_prior("cauchy", 2, 2, 1.0, _seed(0))


@pytest.mark.parametrize("kind", ["normal", "sphere", "uniform"])
def test_sample_prior_per_seed_draws_each_seed_alone(kind):
    z = regularizers.sample_prior_per_seed(kind, 3, 2.0, tf.constant([7, 8, 7], tf.int64))
    alone = [regularizers.sample_prior(kind, 1, 3, 2.0, tf.constant([s, 0], tf.int64))[0]
             for s in (7, 8)]
    assert z.shape == (3, 3)
    np.testing.assert_array_equal(z.numpy(), np.stack([alone[0], alone[1], alone[0]]))


# --- normal_log_density -----------------------------------------------------------------------

def test_normal_log_density_hand_values():
    # z = [0, 0], scale 1: -2 * 0.5 * log(2 pi) = -log(2 pi) = -1.8378771.
    np.testing.assert_allclose(
        regularizers.normal_log_density(tf.zeros([1, 2]), 1.0).numpy(), [-1.8378771], rtol=1e-6)
    # z = [1], scale 2: -0.5 * 1 / 4 - log 2 - 0.5 log(2 pi) = -0.125 - 0.6931472 - 0.9189385.
    np.testing.assert_allclose(
        regularizers.normal_log_density(tf.constant([[1.0]]), 2.0).numpy(), [-1.7370857],
        rtol=1e-6)


# --- squared_distances and kernels ------------------------------------------------------------

def test_squared_distances_hand_values():
    x = tf.constant([[0.0, 0.0], [3.0, 4.0]])
    y = tf.constant([[0.0, 0.0]])
    # ||[3, 4]||^2 = 9 + 16 = 25.
    np.testing.assert_allclose(regularizers.squared_distances(x, y).numpy(), [[0.0], [25.0]])
    y2 = tf.constant([[1.0, 1.0], [3.0, 4.0], [0.0, 4.0]])
    # Row 0: 1+1=2, 9+16=25, 0+16=16; row 1: 4+9=13, 0, 9+0=9.
    np.testing.assert_allclose(regularizers.squared_distances(x, y2).numpy(),
                               [[2.0, 25.0, 16.0], [13.0, 0.0, 9.0]], atol=1e-5)


def test_squared_distances_nonnegative_on_duplicates():
    x = tf.constant([[1e3, -2e3, 7.1], [1e3, -2e3, 7.1]])
    d2 = regularizers.squared_distances(x, x).numpy()
    assert np.all(d2 >= 0.0)


def test_imq_kernel_hand_values():
    d2 = tf.constant([0.0, 2.0])
    # z_dim 1, scale 1: C = 2s = 0.2, 0.4, 1, 2, 4, 10, 20. At d2 = 0 every term is 1: 7.
    # At d2 = 2: 0.2/2.2 + 0.4/2.4 + 1/3 + 2/4 + 4/6 + 10/12 + 20/22
    #          = 0.0909091 + 0.1666667 + 0.3333333 + 0.5 + 0.6666667 + 0.8333333 + 0.9090909 = 3.5.
    np.testing.assert_allclose(regularizers.imq_kernel(d2, 2.0).numpy(), [7.0, 3.5], rtol=1e-6)
    # z_dim 2, scale 2: C = 16s = 1.6, 3.2, 8, 16, 32, 80, 160; at d2 = 16:
    # 1.6/17.6 + 3.2/19.2 + 8/24 + 16/32 + 32/48 + 80/96 + 160/176 = 3.5 again (d2 / C scales).
    np.testing.assert_allclose(regularizers.imq_kernel(tf.constant([16.0]), 16.0).numpy(), [3.5],
                               rtol=1e-6)


@pytest.mark.parametrize("kind, expected", [
    ("normal", 2 * 5 * 4.0), ("uniform", 2 * 5 * 4.0 / 3), ("sphere", 2 * 4.0)])
def test_prior_squared_distance_by_hand_and_by_sampling(kind, expected):
    """E||z - z'||^2 for z_dim 5, scale 2: 40 (normal), 40/3 (uniform), 8 (sphere)."""
    assert regularizers.prior_squared_distance(kind, 5, 2.0) == pytest.approx(expected)
    z = regularizers.sample_prior(kind, 20000, 5, 2.0, _seed(30)).numpy()
    sampled = np.mean(np.sum(np.square(z[:10000] - z[10000:]), axis=1))
    assert sampled == pytest.approx(expected, rel=0.03)


def test_rbf_kernel_hand_values():
    # exp(-0) = 1; exp(-2 / (2 * 1)) = exp(-1) = 0.3678794; exp(-8 / (2 * 2)) = exp(-2) = 0.1353353.
    np.testing.assert_allclose(regularizers.rbf_kernel(tf.constant([0.0, 2.0]), 1.0).numpy(),
                               [1.0, 0.3678794], rtol=1e-6)
    np.testing.assert_allclose(regularizers.rbf_kernel(tf.constant([8.0]), 2.0).numpy(),
                               [0.1353353], rtol=1e-6)


def test_median_heuristic_known_set():
    qz = tf.constant([[0.0], [1.0]])
    pz = tf.constant([[3.0], [7.0]])
    # Cross d2: 9, 49, 4, 36 -> sorted 4, 9, 36, 49 -> median (9 + 36) / 2 = 22.5.
    # Within Q: the one pair (0, 1) -> 1. sigma^2 = 22.5 + 1 = 23.5 (the pooled median was 12.5).
    sigma2 = regularizers.median_heuristic_sigma2(qz, pz)
    np.testing.assert_allclose(sigma2.numpy(), 23.5, rtol=1e-6)


def test_median_heuristic_odd_pairs_and_no_gradient():
    qz = tf.Variable([[0.0], [1.0], [3.0]])
    pz = tf.constant([[7.0], [12.0], [20.0]])
    # 9 cross and 3 within-Q pair values; the loop reference takes np.median of each.
    expected = _ref_median_sigma2([[0.0], [1.0], [3.0]], [[7.0], [12.0], [20.0]])
    with tf.GradientTape() as tape:
        sigma2 = regularizers.median_heuristic_sigma2(qz, pz)
    np.testing.assert_allclose(sigma2.numpy(), expected, rtol=1e-6)
    assert tape.gradient(sigma2, qz) is None


# --- mmd_penalty ------------------------------------------------------------------------------

@pytest.mark.slow
def test_mmd_two_point_sets_by_hand():
    qz = [[0.0], [1.0]]
    pz = [[0.0], [2.0]]
    # z_dim 1, scale 1, C = 2s. k(0) = 7;
    # k(1) = .2/1.2 + .4/1.4 + 1/2 + 2/3 + 4/5 + 10/11 + 20/21 = 4.2805195;
    # k(4) = .2/4.2 + .4/4.4 + 1/5 + 2/6 + 4/8 + 10/14 + 20/24 = 2.7194805.
    # qq: d2(0, 1) = 1 -> 4.2805195. pp: d2(0, 2) = 4 -> 2.7194805.
    # qp: d2 = 0, 4, 1, 1 -> (7 + 2.7194805 + 4.2805195 + 4.2805195) / 4 = 4.5701299.
    # MMD = 4.2805195 + 2.7194805 - 2 * 4.5701299 = -2.1402597.
    mmd = regularizers.mmd_penalty(tf.constant(qz), tf.constant(pz), kernel="imq")
    np.testing.assert_allclose(mmd.numpy(), -2.1402597, rtol=1e-5)
    np.testing.assert_allclose(_ref_mmd(qz, pz), -2.1402597, rtol=1e-6)


@pytest.mark.parametrize("kernel, prior_scale, sigma2", [
    ("imq", 1.0, 0.0), ("imq", 2.0, 0.0), ("rbf", 1.0, 1.5), ("rbf", 1.0, 0.0)])
@pytest.mark.slow
def test_mmd_matches_loop_reference(kernel, prior_scale, sigma2):
    rng = np.random.default_rng(0)
    qz = rng.normal(size=(5, 3)).astype(np.float32)
    pz = (rng.normal(size=(5, 3)) * 1.5 + 0.3).astype(np.float32)
    mmd = regularizers.mmd_penalty(tf.constant(qz), tf.constant(pz), kernel=kernel,
                                   imq_base=2 * 3 * prior_scale ** 2, rbf_sigma2=sigma2)
    expected = _ref_mmd(qz.tolist(), pz.tolist(), kernel, prior_scale, sigma2)
    assert mmd.shape == ()
    np.testing.assert_allclose(mmd.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_near_zero_for_same_distribution_and_grows_with_shift(kernel):
    n, z_dim = 400, 4
    pz = regularizers.sample_prior("normal", n, z_dim, 1.0, _seed(10))
    qz = regularizers.sample_prior("normal", n, z_dim, 1.0, _seed(11))
    values = [regularizers.mmd_penalty(qz + shift, pz, kernel=kernel).numpy()
              for shift in (0.0, 0.5, 1.0, 2.0)]
    scale = 7.0 if kernel == "imq" else 1.0  # k(z, z): the largest kernel value.
    assert abs(values[0]) < 0.01 * scale
    assert values[0] < values[1] < values[2] < values[3]
    assert values[1] > 5 * abs(values[0])


@pytest.mark.slow
@pytest.mark.parametrize("kernel, sigma2", [("imq", 0.0), ("rbf", 0.0), ("rbf", 1.0)])
def test_mmd_gradient_finite_with_duplicate_codes(kernel, sigma2):
    qz = tf.Variable([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [1.0, 2.0]])
    pz = tf.constant([[1.0, 2.0], [0.5, -1.0], [0.0, 0.0], [-2.0, 1.0]])
    with tf.GradientTape() as tape:
        mmd = regularizers.mmd_penalty(qz, pz, kernel=kernel, rbf_sigma2=sigma2)
    grad = tape.gradient(mmd, qz).numpy()
    assert np.isfinite(mmd.numpy())
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).max() > 0.0


@pytest.mark.slow
def test_mmd_large_batch_in_tf_function():
    fn = tf.function(lambda q, p: regularizers.mmd_penalty(q, p, kernel="imq"))
    qz = regularizers.sample_prior("normal", 1600, 8, 1.0, _seed(12))
    pz = regularizers.sample_prior("normal", 1600, 8, 1.0, _seed(13))
    value = fn(qz, pz).numpy()
    assert np.isfinite(value) and abs(value) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("kernel, sigma2", [("imq", 0.0), ("rbf", 1.5)])
def test_mmd_gradients_equal_float64_autodiff(kernel, sigma2):
    """The XLA-computed gradients (qz in the forward, pz on demand) equal autodiff of the same
    terms as plain float64 TF ops."""
    qz = regularizers.sample_prior("normal", 64, 3, 1.0, _seed(20)) * 1.2
    pz = regularizers.sample_prior("normal", 64, 3, 1.0, _seed(21))
    with tf.GradientTape() as tape:
        tape.watch([qz, pz])
        value = regularizers.mmd_penalty(qz, pz, kernel=kernel, imq_base=6.0, rbf_sigma2=sigma2)
    grads = tape.gradient(value, [qz, pz])
    q64, p64 = tf.cast(qz, tf.float64), tf.cast(pz, tf.float64)
    param = tf.constant(6.0 if kernel == "imq" else sigma2, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([q64, p64])
        terms = regularizers._mmd_terms(q64, p64, param, kernel)
        expected = terms[0] + terms[1] - 2.0 * terms[2]
    expected_grads = tape.gradient(expected, [q64, p64])
    np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
    for got, want in zip(grads, expected_grads):
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


def test_mmd_at_1600_within_1e7_of_float64():
    """A small difference of sums of 1600^2 kernel values: the row-then-float64 summation keeps
    it to 1e-8 here (an XLA float32 sum alone was off by 2.8e-5)."""
    qz = regularizers.sample_prior("normal", 1600, 8, 1.0, _seed(14)) * 1.1 + 0.05
    pz = regularizers.sample_prior("normal", 1600, 8, 1.0, _seed(15))
    value = regularizers.mmd_penalty(qz, pz, kernel="imq", imq_base=16.0)
    terms = regularizers._mmd_terms(tf.cast(qz, tf.float64), tf.cast(pz, tf.float64),
                                    tf.constant(16.0, tf.float64), "imq")
    expected = float(terms[0] + terms[1] - 2.0 * terms[2])
    assert abs(float(value) - expected) < 1e-7, (float(value), expected)


def test_mmd_unknown_kernel():
    with pytest.raises(ValueError):
        regularizers.mmd_penalty(tf.zeros([2, 2]), tf.ones([2, 2]), kernel="laplace")


def test_mmd_refuses_samples_of_different_sizes():
    """The unbiased estimator's weights assume as many prior samples as codes."""
    with pytest.raises(ValueError, match="as many prior samples as codes"):
        regularizers.mmd_penalty(tf.zeros([4, 2]), tf.ones([3, 2]))
    fn = tf.function(lambda q, p: regularizers.mmd_penalty(q, p), input_signature=[
        tf.TensorSpec([None, 2]), tf.TensorSpec([None, 2])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="as many prior samples"):
        fn(tf.zeros([4, 2]), tf.ones([3, 2]))


def test_moment_matching_loss_by_hand_and_zero_at_equal_moments():
    # qz = [[0, 0], [2, 0]]: mean [1, 0], unbiased cov [[2, 0], [0, 0]].
    # pz = [[0, 1], [0, -1]]: mean [0, 0], cov [[0, 0], [0, 2]].
    # mean term: mean(1, 0) = 0.5; cov term: mean(4, 0, 0, 4) = 2 -> 2.5.
    qz = tf.constant([[0.0, 0.0], [2.0, 0.0]])
    pz = tf.constant([[0.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(regularizers.moment_matching_loss(qz, pz).numpy(), 2.5)
    shuffled = tf.constant([[2.0, 0.0], [0.0, 0.0]])  # the same moments, another order
    np.testing.assert_allclose(regularizers.moment_matching_loss(qz, shuffled).numpy(), 0.0)


# --- GAN losses -------------------------------------------------------------------------------

def test_gan_encoder_loss_hand_values():
    # softplus(-0) = log 2 = 0.6931472; softplus(-2) = log(1 + e^-2) = 0.1269280;
    # at logit -100 the loss is 100 (stable, not inf).
    loss = regularizers.gan_encoder_loss(tf.constant([[0.0], [2.0], [-100.0]]))
    assert loss.shape == (3,)
    np.testing.assert_allclose(loss.numpy(), [math.log(2.0), 0.1269280, 100.0], rtol=1e-5)


def test_gan_discriminator_loss_hand_values():
    # Logits 0, 0: log 2 + log 2 = 1.3862944.
    # logit_pz 2, logit_qz -1: softplus(-2) + softplus(-1) = 0.1269280 + 0.3132617 = 0.4401897.
    loss = regularizers.gan_discriminator_loss(tf.constant([[0.0], [2.0]]),
                                               tf.constant([0.0, -1.0]))
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss.numpy(), [2 * math.log(2.0), 0.4401897], rtol=1e-5)


# --- kl_to_normal_prior -----------------------------------------------------------------------

def test_kl_hand_values():
    zeros = tf.zeros([1, 3])
    # KL(N(0, 1) || N(0, 1)) = 0.
    np.testing.assert_allclose(regularizers.kl_to_normal_prior(zeros, zeros).numpy(), [0.0],
                               atol=1e-7)
    # KL(N(mu, 1) || N(0, 1)) = mu^2 / 2 per dim: 1/2 + 4/2 = 2.5.
    mean = tf.constant([[1.0, 2.0]])
    np.testing.assert_allclose(regularizers.kl_to_normal_prior(mean, tf.zeros([1, 2])).numpy(),
                               [2.5], rtol=1e-6)


def test_kl_with_prior_scale_two():
    # KL(N(0, 4) || N(0, 4)) = 0.
    log4 = tf.constant([[math.log(4.0)]])
    np.testing.assert_allclose(
        regularizers.kl_to_normal_prior(tf.zeros([1, 1]), log4, prior_scale=2.0).numpy(), [0.0],
        atol=1e-6)
    # KL(N(2, 1) || N(0, 4)) = 0.5 * (1/4 + 4/4 - 1 - 0 + log 4) = 0.125 + 0.6931472 = 0.8181472.
    np.testing.assert_allclose(
        regularizers.kl_to_normal_prior(tf.constant([[2.0]]), tf.zeros([1, 1]),
                                        prior_scale=2.0).numpy(), [0.8181472], rtol=1e-6)


# --- sliced Wasserstein -----------------------------------------------------------------------

def test_random_directions_unit_norm_and_deterministic():
    a = regularizers.random_directions(5, 20, _seed(7))
    b = regularizers.random_directions(5, 20, _seed(7))
    assert a.shape == (5, 20)
    np.testing.assert_allclose(np.linalg.norm(a.numpy(), axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sliced_wasserstein_identical_and_permuted_sets_are_zero():
    qz = regularizers.sample_prior("normal", 50, 4, 1.0, _seed(8))
    directions = regularizers.random_directions(4, 10, _seed(9))
    assert regularizers.sliced_wasserstein(qz, qz, directions).numpy() == 0.0
    np.testing.assert_allclose(
        regularizers.sliced_wasserstein(qz, tf.reverse(qz, [0]), directions).numpy(), 0.0,
        atol=1e-7)


def test_sliced_wasserstein_shift_along_one_direction():
    qz = regularizers.sample_prior("normal", 50, 2, 1.0, _seed(8))
    v = tf.constant([3.0, 1.0])
    theta = tf.constant([[1.0], [0.0]])
    # A shift keeps the sorted order: every difference is v.theta = 3, squared 9.
    np.testing.assert_allclose(regularizers.sliced_wasserstein(qz + v, qz, theta).numpy(), 9.0,
                               rtol=1e-5)
    directions = regularizers.random_directions(2, 8, _seed(9))
    expected = np.mean((v.numpy() @ directions.numpy()) ** 2)  # mean over L of (v.theta_l)^2
    np.testing.assert_allclose(regularizers.sliced_wasserstein(qz + v, qz, directions).numpy(),
                               expected, rtol=1e-5)


def test_sliced_wasserstein_sorts_before_matching():
    theta = tf.constant([[1.0]])
    # Sorted 0, 1 vs 1, 3: differences 1, 2 -> (1 + 4) / 2 = 2.5 for either order of pz
    # (matching unsorted [3, 1] would give (9 + 0) / 2 = 4.5).
    for pz in ([[1.0], [3.0]], [[3.0], [1.0]]):
        value = regularizers.sliced_wasserstein(tf.constant([[0.0], [1.0]]), tf.constant(pz), theta)
        np.testing.assert_allclose(value.numpy(), 2.5, rtol=1e-6)
