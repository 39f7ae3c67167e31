"""Winograd's minimal filtering F(m x m, 2 x 2) for the stride-1 2x2 convs of the sub-pixel forms.

Why: the sub-pixel form (wae_tf.convs) turns a stride-2 conv or transposed conv with a 3- or 4-tap
kernel into a stride-1 conv with a 2x2 window. Winograd's algorithm (Lavin & Gray 2016) computes
each m x m tile of its output from (m+1)^2 products per channel pair instead of 4 m^2: the GEMMs do
0.56 (m=2), 0.44 (m=3) or 0.39 (m=4) of the work, one GEMM per transformed position, for
transforms that stream the data a few times. On wide layers that beats the direct forms on CPUs
(docs/performance.md); `convs.tune` times it against them per layer.

Each function here equals a TF op (tf.nn.conv2d VALID stride 1, its input and its filter
gradient) up to rounding. The transforms' entries are small fractions: in float32 the largest error
measured on a 1024-channel layer was 6e-6 of the largest output at m=4 (TF's kernels: 4e-7), so
`convs.tune` offers these forms in float32 only.
"""

import functools
from fractions import Fraction
from typing import Tuple

import numpy as np
import tensorflow as tf

# The interpolation points of F(m, 2) besides infinity: small, so the transforms stay exact-ish.
_POINTS = {2: (0, -1), 3: (0, 1, -1), 4: (0, 1, -1, Fraction(1, 2))}
TILE_SIZES = tuple(_POINTS)


@functools.lru_cache(maxsize=None)
def matrices(m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, 2], B^T [a, a]), a = m + 1, of F(m, 2): the correlation
    y_i = d_i g_0 + d_(i+1) g_1 of a tile d [a] with g [2] is A^T ((G g) * (B^T d)).

    Toom-Cook: correlation is the transpose of the linear convolution that evaluates at the points
    (and infinity), multiplies and interpolates; so A^T and G evaluate, B^T = interpolation^T.
    Computed in exact fractions.
    """
    points = [Fraction(p) for p in _POINTS[m]]
    a = m + 1

    def evaluate(n):  # [a, n]: the polynomial with n coefficients at each point, then infinity
        return [[p ** i for i in range(n)] for p in points] + [
            [Fraction(int(i == n - 1)) for i in range(n)]]

    # Interpolation = the inverse of evaluate(a), by Gauss-Jordan elimination in fractions.
    rows = [row + [Fraction(int(i == j)) for j in range(a)] for i, row in enumerate(evaluate(a))]
    for col in range(a):
        pivot = next(i for i in range(col, a) if rows[i][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for i in range(a):
            if i != col and rows[i][col] != 0:
                rows[i] = [v - rows[i][col] * w for v, w in zip(rows[i], rows[col])]
    interpolate = np.array([row[a:] for row in rows], dtype=np.float64)
    at = np.array(evaluate(m), dtype=np.float64).T
    g = np.array(evaluate(2), dtype=np.float64)
    return at, g, interpolate.T


def tile_size(s: int) -> int:
    """The m for an s x s output: fewest products, ceil(s/m)^2 tiles of (m+1)^2 (the last tile
    of each row may be cut off); on a tie the smaller m (cheaper transforms, less rounding)."""
    return min(TILE_SIZES, key=lambda m: (-(-s // m) * (m + 1)) ** 2)


# ----------------------------------------------------------------------------- transforms


def _combine(coeffs, arrays):
    """sum_i coeffs[i] * arrays[i], skipping the zeros (the transforms' entries are mostly 0
    and +-1)."""
    out = None
    for c, x in zip(coeffs, arrays):
        if c == 0:
            continue
        if out is None:
            out = x if c == 1 else x * float(c)
        elif c in (1, -1):
            out = out + x if c == 1 else out - x
        else:
            out = out + x * float(c)
    return out


def _along(x, axis: int, index):
    return x[(slice(None),) * axis + (index,)]


def _columns(x, axis: int, m: int, t: int):
    """Per tile of m along `axis` (1 or 2) of x, its m values: m arrays with t along `axis`.

    A reshape and unit-stride slices: TF's strided slices are several times slower."""
    split = x.shape.as_list()
    split[0], split[axis:axis + 1] = -1, [t, m]
    tiles = tf.reshape(_along(x, axis, slice(0, m * t)), split)
    return [_along(tiles, axis + 1, j) for j in range(m)]


def _join_tiles(values, axis: int):
    """m arrays with t along `axis` -> one with m t, value j of tile i at m i + j."""
    stacked = tf.stack(values, axis + 1)
    shape = stacked.shape.as_list()
    shape[0], shape[axis:axis + 2] = -1, [shape[axis] * shape[axis + 1]]
    return tf.reshape(stacked, shape)


def _data_1d(x, axis: int, m: int, t: int):
    """B^T on the overlapping tiles of m + 1 (stride m) along `axis`: x has m t + 1 there."""
    bt = matrices(m)[2]
    cols = _columns(x, axis, m, t)
    last = tf.concat([_along(cols[0], axis, slice(1, None)), _along(x, axis, slice(m * t, None))],
                     axis)  # each tile's value m is the next tile's value 0
    return [_combine(row, cols + [last]) for row in bt]


def _data_1d_adjoint(u, axis: int, m: int):
    """The adjoint of _data_1d: m + 1 arrays with t along `axis` -> m t + 1 (tiles overlap-add)."""
    bt = matrices(m)[2]
    cols = [_combine(bt[:, j], u) for j in range(m + 1)]
    pad = [[0, 0]] * cols[0].shape.rank
    first = (tf.pad(cols[0], pad[:axis] + [[0, 1]] + pad[axis + 1:])
             + tf.pad(cols[m], pad[:axis] + [[1, 0]] + pad[axis + 1:]))  # t + 1 along axis
    t = u[0].shape[axis]
    head = _join_tiles([_along(first, axis, slice(0, t))] + cols[1:m], axis)
    return tf.concat([head, _along(first, axis, slice(t, None))], axis)


def _output_1d(values, axis: int, m: int):
    """A^T: m + 1 arrays with t along `axis` -> the tiles' m outputs, m t along it."""
    return _join_tiles([_combine(row, values) for row in matrices(m)[0]], axis)


def _output_1d_adjoint(y, axis: int, m: int, t: int):
    """The adjoint of _output_1d: m t along `axis` -> m + 1 arrays with t."""
    at = matrices(m)[0]
    cols = _columns(y, axis, m, t)
    return [_combine(at[:, a], cols) for a in range(m + 1)]


def _positions(arrays, m: int):
    """(m+1)^2 arrays [N, t, t, C], in (row point, column point) order -> [(m+1)^2, N t t, C]."""
    return tf.reshape(tf.stack(arrays), [(m + 1) ** 2, -1, arrays[0].shape[-1]])


def _data(x, m: int, t: int):
    """[N, m t + 1, m t + 1, C] -> [(m+1)^2, N t t, C]: B^T d B of every tile."""
    return _positions([v for row in _data_1d(x, 1, m, t) for v in _data_1d(row, 2, m, t)], m)


def _data_adjoint(u, m: int, t: int):
    """The adjoint of _data: [(m+1)^2, N t t, C] -> [N, m t + 1, m t + 1, C]."""
    a = m + 1
    u = tf.reshape(u, [a, a, -1, t, t, u.shape[-1]])
    rows = [_data_1d_adjoint([u[i, j] for j in range(a)], 2, m) for i in range(a)]
    return _data_1d_adjoint(rows, 1, m)


def _output(p, m: int, t: int):
    """[(m+1)^2, N t t, D] -> [N, m t, m t, D]: A^T p A of every tile."""
    a = m + 1
    p = tf.reshape(p, [a, a, -1, t, t, p.shape[-1]])
    rows = [_output_1d([p[i, j] for j in range(a)], 2, m) for i in range(a)]
    return _output_1d(rows, 1, m)


def _output_adjoint(dy, m: int, t: int):
    """The adjoint of _output: [N, m t, m t, D] -> [(m+1)^2, N t t, D]."""
    return _positions([v for row in _output_1d_adjoint(dy, 1, m, t)
                       for v in _output_1d_adjoint(row, 2, m, t)], m)


def _kernel(kernel, m: int):
    """[2, 2, C, D] -> [(m+1)^2, C, D]: G g G^T."""
    g = matrices(m)[1]
    rows = [_combine(row, [kernel[0], kernel[1]]) for row in g]
    return tf.stack([_combine(col, [r[0], r[1]]) for r in rows for col in g])


def _kernel_adjoint(v, m: int):
    """The adjoint of _kernel: [(m+1)^2, C, D] -> [2, 2, C, D]."""
    g, a = matrices(m)[1], m + 1
    v = tf.reshape(v, [a, a] + v.shape.as_list()[1:])
    rows = [_combine(g[:, k], [v[i] for i in range(a)]) for k in range(2)]
    return tf.stack([tf.stack([_combine(g[:, k], [r[j] for j in range(a)]) for k in range(2)])
                     for r in rows])


# ----------------------------------------------------------------------------- the three ops


def _tiling(s: int) -> Tuple[int, int]:
    """(m, tiles per side) for an s x s output."""
    m = tile_size(s)
    return m, -(-s // m)


def _pad_to(x, size: int):
    """x [N, n, n, C] with zeros after it to [N, size, size, C]."""
    extra = size - x.shape[1]
    return tf.pad(x, [[0, 0], [0, extra], [0, extra], [0, 0]]) if extra else x


def _require_window_two(kernel_shape):
    if list(kernel_shape[:2]) != [2, 2]:
        raise ValueError(f"The Winograd convs have a 2x2 window (the sub-pixel form of 3- and "
                         f"4-tap kernels); got a kernel of shape {list(kernel_shape)}.")


def conv(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, "VALID"): x [N, s+1, s+1, C], kernel [2, 2, C, D] ->
    [N, s, s, D]."""
    _require_window_two(kernel.shape)
    s = x.shape[1] - 1
    m, t = _tiling(s)
    products = tf.matmul(_data(_pad_to(x, m * t + 1), m, t), _kernel(kernel, m))
    return _output(products, m, t)[:, :s, :s, :]


def conv_input_grad(dy, kernel):
    """The input gradient of `conv`: dy [N, s, s, D], kernel [2, 2, C, D] -> [N, s+1, s+1, C]."""
    _require_window_two(kernel.shape)
    s = dy.shape[1]
    m, t = _tiling(s)
    products = tf.matmul(_output_adjoint(_pad_to(dy, m * t), m, t), _kernel(kernel, m),
                         transpose_b=True)
    return _data_adjoint(products, m, t)[:, :s + 1, :s + 1, :]


def conv_kernel_grad(x, dy):
    """The kernel gradient of `conv`: x [N, s+1, s+1, C], dy [N, s, s, D] -> [2, 2, C, D]."""
    s = dy.shape[1]
    m, t = _tiling(s)
    data, grads = _data(_pad_to(x, m * t + 1), m, t), _output_adjoint(_pad_to(dy, m * t), m, t)
    # One MatMul per position: BatchMatMulV2 with a transposed operand ran at 0.58-0.98x their
    # speed (docs/performance.md).
    return _kernel_adjoint(tf.stack([tf.matmul(data[i], grads[i], transpose_a=True)
                                     for i in range((m + 1) ** 2)]), m)
