"""Winograd's F(m x m, r x r): its matrices, the tile size it picks, and its three ops against
TF's kernels."""

import numpy as np
import pytest
import tensorflow as tf

from wae_tf.perf import winograd

pytestmark = pytest.mark.numerics  # every test compares two computations


def test_f2_matrices_by_hand():
    """F(2, 2) at the points 0, -1 and infinity: B^T d = (d0 + d1, -d1, d1 + d2),
    G g = (g0, g0 - g1, g1), and A^T sums neighbours: y0 = g0 (d0 + d1) - d1 (g0 - g1) =
    d0 g0 + d1 g1, y1 = -d1 (g0 - g1) + g1 (d1 + d2) = d1 g0 + d2 g1."""
    at, g, bt = winograd.matrices(2)
    np.testing.assert_array_equal(at, [[1, 1, 0], [0, -1, 1]])
    np.testing.assert_array_equal(g, [[1, 0], [1, -1], [0, 1]])
    np.testing.assert_array_equal(bt, [[1, 1, 0], [0, -1, 0], [0, 1, 1]])


def test_f23_matrices_by_hand():
    """F(2, 3) at the points 0, 1, -1 and infinity: G evaluates g at them, (g0, g0 + g1 + g2,
    g0 - g1 + g2, g2); B^T d = (d0 - d2, (d1 + d2) / 2, (d2 - d1) / 2, d3 - d1); then
    y0 = g0 (d0 - d2) + (g0 + g1 + g2)(d1 + d2) / 2 + (g0 - g1 + g2)(d2 - d1) / 2
    = d0 g0 + d1 g1 + d2 g2."""
    at, g, bt = winograd.matrices(2, 3)
    np.testing.assert_array_equal(at, [[1, 1, 1, 0], [0, 1, -1, 1]])
    np.testing.assert_array_equal(g, [[1, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(bt, [[1, 0, -1, 0], [0, .5, .5, 0], [0, -.5, .5, 0],
                                       [0, -1, 0, 1]])


@pytest.mark.parametrize("r", winograd.WINDOWS)
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_matrices_compute_the_correlation(m, r):
    """A^T ((G g) * (B^T d)) is y_i = sum_j d_(i+j) g_j for every tile size and window."""
    at, g, bt = winograd.matrices(m, r)
    a = m + r - 1
    assert at.shape == (m, a) and g.shape == (a, r) and bt.shape == (a, a)
    rng = np.random.default_rng(m)
    d, k = rng.normal(size=a), rng.normal(size=r)
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"),
                               rtol=1e-12, atol=1e-12)


def test_tile_size_takes_the_fewest_products():
    """s=8 (the width-1 decoder's first layer): 2x2 tiles of 4, 4 * 25 = 100 products against
    16 * 9 = 144 for m=2 and m=3; s=15: m=3 and m=4 both take 400, the smaller wins; s=2: 2.
    A 3x3 window: s=16 (CelebA's second decoder layer) 16 * 36 = 576 against 64 * 16 = 1024 and
    36 * 25 = 900; s=3: one tile of 25 against 4 * 16; s=2: 2."""
    assert winograd.tile_size(8) == 4
    assert winograd.tile_size(15) == 3
    assert winograd.tile_size(2) == 2
    assert winograd.tile_size(16, 3) == 4
    assert winograd.tile_size(3, 3) == 3
    assert winograd.tile_size(2, 3) == 2


@pytest.mark.parametrize("r,s", [(2, 1), (2, 2), (2, 5), (2, 8), (2, 15),
                                 (3, 1), (3, 2), (3, 3), (3, 5), (3, 8)])
def test_ops_equal_tf_kernels(r, s):
    """conv, its input gradient and its kernel gradient equal TF's VALID stride-1 ops, for
    sizes that take every tile size and a cut-off last tile (r=2: s=5 takes m=3, s=1 m=2;
    r=3: s=1, 2 m=2, s=3, 5 m=3, s=8 m=4). Tensors this small keep the transforms as TF ops."""
    traces = _traces()
    _assert_ops_equal_tf(r, s)
    assert _traces() == traces


_TRANSFORMS = (winograd._data, winograd._data_adjoint, winograd._output,
               winograd._output_adjoint)


@pytest.mark.slow
@pytest.mark.parametrize("r,s", [(2, 5), (2, 8), (3, 8)])
def test_xla_compiled_transforms_equal_tf_kernels(r, s, monkeypatch):
    """Above XLA_MIN_BYTES_PER_EXAMPLE each transform is one XLA cluster; the ops still equal
    TF's (m = 3, 4; r = 2, 3)."""
    monkeypatch.setattr(winograd, "XLA_MIN_BYTES_PER_EXAMPLE", 0)
    traces = _traces()
    _assert_ops_equal_tf(r, s)
    assert all(after > before for after, before in zip(_traces(), traces))


def _traces():
    """How often each transform's XLA function has been traced in this process."""
    return [f.jitted.experimental_get_tracing_count() for f in _TRANSFORMS]


def _assert_ops_equal_tf(r, s):
    x = tf.random.stateless_normal([3, s + r - 1, s + r - 1, 5], seed=[s, r])
    kernel = tf.random.stateless_normal([r, r, 5, 6], seed=[s, 2])
    dy = tf.random.stateless_normal([3, s, s, 6], seed=[s, 3])
    expected = [
        tf.nn.conv2d(x, kernel, 1, "VALID"),
        tf.raw_ops.Conv2DBackpropInput(input_sizes=x.shape, filter=kernel, out_backprop=dy,
                                       strides=[1, 1, 1, 1], padding="VALID"),
        tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=kernel.shape, out_backprop=dy,
                                        strides=[1, 1, 1, 1], padding="VALID")]
    got = [winograd.conv(x, kernel), winograd.conv_input_grad(dy, kernel),
           winograd.conv_kernel_grad(x, dy)]
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max())


@pytest.mark.parametrize("shape", [[4, 4, 2, 2], [2, 3, 2, 2]])
def test_a_window_without_a_form_is_refused(shape):
    with pytest.raises(ValueError, match="2x2 or 3x3 window"):
        winograd.conv(tf.zeros([1, 6, 6, 2]), tf.zeros(shape))
