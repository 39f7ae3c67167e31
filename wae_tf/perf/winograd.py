"""Winograd's minimal filtering F(m x m, r x r), r = 2 or 3, for the stride-1 convs of the
sub-pixel forms.

Why: the sub-pixel form (wae_tf.perf.convs) turns a stride-2 conv or transposed conv with a k-tap
kernel into a stride-1 conv with an r x r window: r = 2 for k = 3, 4 (the Fashion-MNIST networks),
3 for k = 5, 6 (CelebA's). Winograd's algorithm (Lavin & Gray 2016) computes each m x m tile of its
output from (m + r - 1)^2 products per channel pair instead of r^2 m^2: for r = 2 the GEMMs do 0.56
(m=2), 0.44 (m=3) or 0.39 (m=4) of the work, for r = 3 0.44, 0.31 or 0.25; one GEMM per
transformed position, for transforms that stream the data a few times. On wide layers that beats
the direct forms on CPUs (docs/performance.md); `convs.tune` times it against them per layer.

Each function here equals a TF op (tf.nn.conv2d VALID stride 1, its input and its filter
gradient) up to rounding. The transforms' entries are small fractions, so they round more than
TF's kernels: in float32 the largest error measured on a wide layer, relative to the largest
output, was well above theirs (docs/performance.md), so `convs.tune` offers these forms in float32
only.
"""

import functools
from fractions import Fraction
from typing import Tuple

import numpy as np
import tensorflow as tf

# The interpolation points besides infinity, by how many F(m, r) needs (m + r - 2): small, so the
# transforms stay exact-ish.
_POINTS = {2: (0, -1), 3: (0, 1, -1), 4: (0, 1, -1, Fraction(1, 2)),
           5: (0, 1, -1, Fraction(1, 2), Fraction(-1, 2))}
TILE_SIZES = (2, 3, 4)
WINDOWS = (2, 3)


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int = 2) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, r], B^T [a, a]), a = m + r - 1, of F(m, r): the correlation
    y_i = sum_j d_(i+j) g_j of a tile d [a] with g [r] is A^T ((G g) * (B^T d)).

    Toom-Cook: correlation is the transpose of the linear convolution that evaluates at the points
    (and infinity), multiplies and interpolates; so A^T and G evaluate, B^T = interpolation^T.
    Computed in exact fractions.
    """
    a = m + r - 1
    points = [Fraction(p) for p in _POINTS[a - 1]]

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
    g = np.array(evaluate(r), dtype=np.float64)
    return at, g, interpolate.T


def tile_size(s: int, r: int = 2) -> int:
    """The m for an s x s output: fewest products, ceil(s/m)^2 tiles of (m+r-1)^2 (the last tile
    of each row may be cut off); on a tie the smaller m (cheaper transforms, less rounding)."""
    return min(TILE_SIZES, key=lambda m: (-(-s // m) * (m + r - 1)) ** 2)


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


def _data_1d(x, axis: int, m: int, t: int, r: int):
    """B^T on the overlapping tiles of m + r - 1 (stride m) along `axis` (of size m t + r - 1)."""
    bt = matrices(m, r)[2]
    cols = _columns(x, axis, m, t)
    # Each tile's value m + j is the next tile's value j (the last tile's: x's value m t + j).
    overlap = [tf.concat([_along(cols[j], axis, slice(1, None)),
                          _along(x, axis, slice(m * t + j, m * t + j + 1))], axis)
               for j in range(r - 1)]
    return [_combine(row, cols + overlap) for row in bt]


def _data_1d_adjoint(u, axis: int, m: int, r: int):
    """The adjoint of _data_1d: m + r - 1 arrays with t along `axis` -> m t + r - 1 (tiles
    overlap-add)."""
    bt = matrices(m, r)[2]
    cols = [_combine(bt[:, j], u) for j in range(m + r - 1)]
    pad = [[0, 0]] * cols[0].shape.rank
    shared = [tf.pad(cols[j], pad[:axis] + [[0, 1]] + pad[axis + 1:])
              + tf.pad(cols[m + j], pad[:axis] + [[1, 0]] + pad[axis + 1:])
              for j in range(r - 1)]  # values j < r - 1 of each tile and m + j of the one before
    t = u[0].shape[axis]
    head = _join_tiles([_along(v, axis, slice(0, t)) for v in shared] + cols[r - 1:m], axis)
    return tf.concat([head] + [_along(v, axis, slice(t, None)) for v in shared], axis)


def _output_1d(values, axis: int, m: int, r: int):
    """A^T: m + r - 1 arrays with t along `axis` -> the tiles' m outputs, m t along it."""
    return _join_tiles([_combine(row, values) for row in matrices(m, r)[0]], axis)


def _output_1d_adjoint(y, axis: int, m: int, t: int, r: int):
    """The adjoint of _output_1d: m t along `axis` -> m + r - 1 arrays with t."""
    at = matrices(m, r)[0]
    cols = _columns(y, axis, m, t)
    return [_combine(at[:, a], cols) for a in range(m + r - 1)]


# A transform is XLA-compiled when its larger side holds at least this many bytes per example.
# Compiling costs seconds per layer and part in every process: it paid for itself on the 64x64
# network's large transforms, not on Fashion-MNIST's small ones, whose small gain in step time
# did not make up for the longer start (docs/performance.md). The threshold lies between the two.
XLA_MIN_BYTES_PER_EXAMPLE = 512 * 1024


def _compiled(transform):
    """`transform(x, m, t, r)`, as one XLA cluster where the tensors are large enough to pay for
    compiling it (XLA_MIN_BYTES_PER_EXAMPLE; m, t, r are Python ints: one compilation per shape).

    The transforms are dozens of slices, sums and reshapes that each stream the tensor through
    memory as TF ops; XLA fuses them into a few passes, faster on the CPUs measured
    (docs/performance.md). The GEMMs stay TF's (oneDNN's) kernels.
    """
    jitted = tf.function(transform, autograph=False, jit_compile=True)

    @functools.wraps(transform)
    def apply(x, m: int, t: int, r: int):
        # The tiled side, [(m + r - 1)^2, N t t, C], is the larger of the two.
        if ((m + r - 1) * t) ** 2 * x.shape[-1] * x.dtype.size >= XLA_MIN_BYTES_PER_EXAMPLE:
            return jitted(x, m, t, r)
        return transform(x, m, t, r)
    apply.jitted = jitted
    return apply


def _positions(arrays, a: int):
    """a^2 arrays [N, t, t, C], in (row point, column point) order -> [a^2, N t t, C]."""
    return tf.reshape(tf.stack(arrays), [a * a, -1, arrays[0].shape[-1]])


@_compiled
def _data(x, m: int, t: int, r: int):
    """[N, m t + r - 1, m t + r - 1, C] -> [a^2, N t t, C]: B^T d B of every tile."""
    return _positions([v for row in _data_1d(x, 1, m, t, r) for v in _data_1d(row, 2, m, t, r)],
                      m + r - 1)


@_compiled
def _data_adjoint(u, m: int, t: int, r: int):
    """The adjoint of _data: [a^2, N t t, C] -> [N, m t + r - 1, m t + r - 1, C]."""
    a = m + r - 1
    u = tf.reshape(u, [a, a, -1, t, t, u.shape[-1]])
    rows = [_data_1d_adjoint([u[i, j] for j in range(a)], 2, m, r) for i in range(a)]
    return _data_1d_adjoint(rows, 1, m, r)


@_compiled
def _output(p, m: int, t: int, r: int):
    """[a^2, N t t, D] -> [N, m t, m t, D]: A^T p A of every tile."""
    a = m + r - 1
    p = tf.reshape(p, [a, a, -1, t, t, p.shape[-1]])
    rows = [_output_1d([p[i, j] for j in range(a)], 2, m, r) for i in range(a)]
    return _output_1d(rows, 1, m, r)


@_compiled
def _output_adjoint(dy, m: int, t: int, r: int):
    """The adjoint of _output: [N, m t, m t, D] -> [a^2, N t t, D]."""
    return _positions([v for row in _output_1d_adjoint(dy, 1, m, t, r)
                       for v in _output_1d_adjoint(row, 2, m, t, r)], m + r - 1)


def _kernel(kernel, m: int):
    """[r, r, C, D] -> [a^2, C, D]: G g G^T."""
    r = kernel.shape[0]
    g = matrices(m, r)[1]
    rows = [_combine(row, [kernel[i] for i in range(r)]) for row in g]
    return tf.stack([_combine(col, [v[i] for i in range(r)]) for v in rows for col in g])


def _kernel_adjoint(v, m: int, r: int):
    """The adjoint of _kernel: [a^2, C, D] -> [r, r, C, D]."""
    g, a = matrices(m, r)[1], m + r - 1
    v = tf.reshape(v, [a, a] + v.shape.as_list()[1:])
    rows = [_combine(g[:, k], [v[i] for i in range(a)]) for k in range(r)]
    return tf.stack([tf.stack([_combine(g[:, k], [w[j] for j in range(a)]) for k in range(r)])
                     for w in rows])


# ----------------------------------------------------------------------------- the three ops


def _tiling(s: int, r: int) -> Tuple[int, int]:
    """(m, tiles per side) for an s x s output of an r x r window."""
    m = tile_size(s, r)
    return m, -(-s // m)


def _pad_to(x, size: int):
    """x [N, n, n, C] with zeros after it to [N, size, size, C]."""
    extra = size - x.shape[1]
    return tf.pad(x, [[0, 0], [0, extra], [0, extra], [0, 0]]) if extra else x


def _window(kernel_shape) -> int:
    """r of an r x r kernel; an error for windows without a form here."""
    r = kernel_shape[0]
    if kernel_shape[1] != r or r not in WINDOWS:
        raise ValueError(f"The Winograd convs have a 2x2 or 3x3 window (the sub-pixel form of 3- "
                         f"to 6-tap kernels); got a kernel of shape {list(kernel_shape)}.")
    return r


def conv(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, "VALID"): x [N, s+r-1, s+r-1, C], kernel [r, r, C, D] ->
    [N, s, s, D]."""
    r = _window(kernel.shape)
    s = x.shape[1] - r + 1
    m, t = _tiling(s, r)
    products = tf.matmul(_data(_pad_to(x, m * t + r - 1), m, t, r), _kernel(kernel, m))
    return _output(products, m, t, r)[:, :s, :s, :]


def conv_input_grad(dy, kernel):
    """The input gradient of `conv`: dy [N, s, s, D], kernel [r, r, C, D] -> [N, s+r-1, s+r-1,
    C]."""
    r = _window(kernel.shape)
    s = dy.shape[1]
    m, t = _tiling(s, r)
    products = tf.matmul(_output_adjoint(_pad_to(dy, m * t), m, t, r), _kernel(kernel, m),
                         transpose_b=True)
    return _data_adjoint(products, m, t, r)[:, :s + r - 1, :s + r - 1, :]


def conv_kernel_grad(x, dy):
    """The kernel gradient of `conv`: x [N, s+r-1, s+r-1, C], dy [N, s, s, D] -> [r, r, C, D]."""
    s = dy.shape[1]
    r = _window([x.shape[1] - s + 1] * 2)
    m, t = _tiling(s, r)
    data = _data(_pad_to(x, m * t + r - 1), m, t, r)
    grads = _output_adjoint(_pad_to(dy, m * t), m, t, r)
    # One MatMul per position: BatchMatMulV2 with a transposed operand ran slower than these
    # (docs/performance.md).
    return _kernel_adjoint(tf.stack([tf.matmul(data[i], grads[i], transpose_a=True)
                                     for i in range((m + r - 1) ** 2)]), m, r)
