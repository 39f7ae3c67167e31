"""Winograd's F(m x m, 2 x 2): its matrices, the tile size it picks, and its three ops against
TF's kernels."""

import numpy as np
import pytest
import tensorflow as tf

from wae_tf import winograd

pytestmark = pytest.mark.numerics  # every test compares two computations


def test_f2_matrices_by_hand():
    """F(2, 2) at the points 0, -1 and infinity: B^T d = (d0 + d1, -d1, d1 + d2),
    G g = (g0, g0 - g1, g1), and A^T sums neighbours: y0 = g0 (d0 + d1) - d1 (g0 - g1) =
    d0 g0 + d1 g1, y1 = -d1 (g0 - g1) + g1 (d1 + d2) = d1 g0 + d2 g1."""
    at, g, bt = winograd.matrices(2)
    np.testing.assert_array_equal(at, [[1, 1, 0], [0, -1, 1]])
    np.testing.assert_array_equal(g, [[1, 0], [1, -1], [0, 1]])
    np.testing.assert_array_equal(bt, [[1, 1, 0], [0, -1, 0], [0, 1, 1]])


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_matrices_compute_the_correlation(m):
    """A^T ((G g) * (B^T d)) is y_i = d_i g_0 + d_(i+1) g_1 for every tile size."""
    at, g, bt = winograd.matrices(m)
    assert at.shape == (m, m + 1) and g.shape == (m + 1, 2) and bt.shape == (m + 1, m + 1)
    rng = np.random.default_rng(m)
    d, k = rng.normal(size=m + 1), rng.normal(size=2)
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), d[:-1] * k[0] + d[1:] * k[1],
                               rtol=1e-12, atol=1e-12)


def test_tile_size_takes_the_fewest_products():
    """s=8 (the width-1 decoder's first layer): 2x2 tiles of 4, 4 * 25 = 100 products against
    16 * 9 = 144 for m=2 and m=3; s=15: m=3 and m=4 both take 400, the smaller wins; s=2: 2."""
    assert winograd.tile_size(8) == 4
    assert winograd.tile_size(15) == 3
    assert winograd.tile_size(2) == 2


@pytest.mark.parametrize("s", [1, 2, 5, 8, 15])
def test_ops_equal_tf_kernels(s):
    """conv, its input gradient and its kernel gradient equal TF's VALID stride-1 ops, for
    sizes that take every tile size and a cut-off last tile (s=5: m=3, s=1: m=2)."""
    x = tf.random.stateless_normal([3, s + 1, s + 1, 5], seed=[s, 1])
    kernel = tf.random.stateless_normal([2, 2, 5, 6], seed=[s, 2])
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


def test_a_window_other_than_two_is_refused():
    with pytest.raises(ValueError, match="2x2 window"):
        winograd.conv(tf.zeros([1, 5, 5, 2]), tf.zeros([3, 3, 2, 2]))
