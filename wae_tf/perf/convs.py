"""Stride-2 SAME convs and transposed convs with each part (forward, input gradient, kernel
gradient) as TF's kernel, as matmuls or in the sub-pixel form (a stride-1 conv, computed by TF's
kernel or by Winograd's algorithm), and the on-machine timing that picks one per part.

Why: on CPUs, TF's (oneDNN's) kernels have shape-dependent cliffs that differ between machines:
some layers run several times below matmul speed on one CPU and not on another, and on AVX2
CPUs oneDNN's transposed convs run well below the speed of its forward convs (docs/performance.md).
Timing the forms on the layer's own shapes, as cuDNN's autotuner does on GPUs, picks the fast
one wherever it runs. All forms use the same kernel variable, so checkpoints do not depend on
the choice.
"""

import dataclasses
import functools
import time
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf.perf import plan_cache, winograd

NATIVE, MATMUL, SUBPIXEL, WINOGRAD = "native", "matmul", "subpixel", "winograd"
IMPLS = (NATIVE, MATMUL, SUBPIXEL, WINOGRAD)
PARTS = ("forward", "input_grad", "kernel_grad")


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How each part of one layer is computed: NATIVE (TF's kernel), MATMUL (patches or phases
    times the kernel), SUBPIXEL (a stride-1 conv with four phases' kernels side by side) or
    WINOGRAD (that stride-1 conv by Winograd's algorithm, wae_tf.perf.winograd)."""
    forward: str = NATIVE
    input_grad: str = NATIVE
    kernel_grad: str = NATIVE

    @property
    def all_native(self) -> bool:
        return self == ALL_NATIVE

    def __str__(self):
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


ALL_NATIVE = ConvPlan()
ALL_MATMUL = ConvPlan(MATMUL, MATMUL, MATMUL)


def matmul_plan(shape: "LayerShape") -> ConvPlan:
    """Every part that has a matmul form as a matmul (--conv_impl=patches)."""
    return ConvPlan(*(MATMUL if shape.has_form(part, MATMUL) else NATIVE for part in PARTS))


# ----------------------------------------------------------------------------- matmul forms


def same_patches(x, k: int):
    """The k x k patches [N, ceil(n/2), ceil(n/2), k*k*C] that a stride-2 SAME conv multiplies.

    Padded as tf.nn.conv2d places SAME padding (the extra row and column at the end).
    """
    size = x.shape[1]
    out = -(-size // 2)
    pad = max((out - 1) * 2 + k - size, 0)
    x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
    return tf.image.extract_patches(x, [1, k, k, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID")


def _phase_taps(k: int):
    """Per output phase r (0, 1): the (tap t, input offset d) pairs of a stride-2 SAME
    transposed conv with a k-tap kernel, out[2m + r] = sum x[m - d] * kernel[t].

    It transposes the stride-2 conv whose SAME padding puts (k - 2) // 2 zeros first.
    """
    lo = max(k - 2, 0) // 2
    return [[(t, (t - lo - r) // 2) for t in range(k) if (t - lo - r) % 2 == 0] for r in (0, 1)]


def phase_conv2d_transpose(x, kernel):
    """tf.nn.conv2d_transpose(x, kernel, 2, "SAME") as one matmul per output phase.

    x [N, n, n, C_in], kernel [k, k, C_out, C_in] -> [N, 2n, 2n, C_out]. Each of the four
    sub-pixel phases (even/odd rows x even/odd columns) of the output is a stride-1 conv of x
    with its own taps of the kernel: the same FLOPs, as large matmuls (Shi et al. 2016).
    """
    n, cout = x.shape[1], kernel.shape[2]
    taps = _phase_taps(kernel.shape[0])
    offsets = [d for phase in taps for _, d in phase]
    lo, hi = max(max(offsets), 0), max(-min(offsets), 0)
    xp = tf.pad(x, [[0, 0], [lo, hi], [lo, hi], [0, 0]])
    rows = []
    for taps_y in taps:
        row = []
        for taps_x in taps:
            views = [xp[:, lo - dy:lo - dy + n, lo - dx:lo - dx + n, :]
                     for _, dy in taps_y for _, dx in taps_x]
            weights = tf.concat([kernel[ty, tx] for ty, _ in taps_y for tx, _ in taps_x],
                                axis=1)  # [C_out, T*C_in]
            patches = tf.reshape(tf.concat(views, -1), [-1, weights.shape[1]])  # [N*n*n, T*C_in]
            phase = tf.matmul(patches, weights, transpose_b=True)  # [N*n*n, C_out]
            row.append(tf.reshape(phase, [-1, n, n, cout]))
        rows.append(tf.stack(row, axis=3))  # [N, n, n, 2, C_out]
    return tf.reshape(tf.stack(rows, axis=2), [-1, 2 * n, 2 * n, cout])  # from [N,n,2,n,2,C]


def shift_sum_conv2d_transpose(x, kernel):
    """tf.nn.conv2d_transpose(x, kernel, 1, "SAME") as one matmul and k*k shifted sums.

    x [N, h, w, C_in], kernel [k, k, C_out, C_in] -> [N, h, w, C_out]. Every input pixel times
    every tap at once ([N*h*w, C_in] x [C_in, k*k*C_out]), then each tap's plane is added at
    its offset: for the decoder's last layer (C_out 1 or 3) it can beat TF's kernel; `tune` decides.
    """
    k, cout, cin = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    h, w = x.shape[1], x.shape[2]
    weights = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [cin, k * k * cout])
    taps = tf.reshape(tf.matmul(tf.reshape(x, [-1, cin]), weights), [-1, h, w, k * k * cout])
    before = (k - 1) // 2  # SAME: the stride-1 conv pads (k-1)//2 first
    taps = tf.pad(taps, [[0, 0], [k - 1 - before, before], [k - 1 - before, before], [0, 0]])
    planes = [taps[:, k - 1 - ty:k - 1 - ty + h, k - 1 - tx:k - 1 - tx + w,
                   (ty * k + tx) * cout:(ty * k + tx + 1) * cout]
              for ty in range(k) for tx in range(k)]
    return tf.add_n(planes)


# ----------------------------------------------------------------------------- sub-pixel form


@functools.lru_cache(maxsize=None)
def subpixel_layout(k: int):
    """How a stride-2 SAME transposed conv with a k-tap kernel becomes a stride-1 conv with a
    w-tap kernel and 2 x 2 output phases (per dimension): (w, before, phases), where phase r is
    (shift, {window tap a: kernel tap t}); out[2m + r] = y[m + shift, phase r], y = the stride-1
    conv of x padded by `before` (and enough after)."""
    taps = _phase_taps(k)
    dmax = [max(d for _, d in phase) for phase in taps]
    before = max(dmax)
    w = max(dmax[r] - min(d for _, d in taps[r]) for r in (0, 1)) + 1
    phases = tuple((before - dmax[r], {dmax[r] - d: t for t, d in taps[r]}) for r in (0, 1))
    return w, before, phases


def _subpixel_size(k: int, n: int) -> int:
    """S, the side of the stride-1 conv's output for an n x n input: n plus the largest shift."""
    return n + max(shift for shift, _ in subpixel_layout(k)[2])


def _subpixel_pad(x, k):
    """x [N, n, n, C] padded for the stride-1 conv whose outputs are [N, S, S, .]."""
    w, before, _ = subpixel_layout(k)
    after = _subpixel_size(k, 0) + w - 1 - before
    return tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])


def _subpixel_phases():
    return [(ry, rx) for ry in (0, 1) for rx in (0, 1)]


def subpixel_kernel(kernel):
    """[k, k, C_out, C_in] -> the stride-1 conv's [w, w, C_in, 4 * C_out], channel blocks in
    phase order (ry, rx); zeros where a phase has no tap (odd k)."""
    k, cout, cin = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    w, _, phases = subpixel_layout(k)
    zero = tf.zeros([cin, cout], kernel.dtype)
    rows = []
    for ay in range(w):
        for ax in range(w):
            rows.append(tf.concat([
                tf.transpose(kernel[phases[ry][1][ay], phases[rx][1][ax]])
                if ay in phases[ry][1] and ax in phases[rx][1] else zero
                for ry, rx in _subpixel_phases()], axis=1))  # [C_in, 4 * C_out]
    return tf.reshape(tf.stack(rows), [w, w, cin, 4 * cout])


def _subpixel_kernel_taps(grad, k: int):
    """The adjoint of subpixel_kernel: [w, w, C_in, 4 * C_out] -> [k, k, C_out, C_in]."""
    w, _, phases = subpixel_layout(k)
    cin, cout = grad.shape[2], grad.shape[3] // 4
    blocks = tf.reshape(grad, [w, w, cin, 2, 2, cout])
    taps = {}
    for ry, rx in _subpixel_phases():
        for ay, ty in phases[ry][1].items():
            for ax, tx in phases[rx][1].items():
                taps[ty, tx] = tf.transpose(blocks[ay, ax, :, ry, rx, :])
    return tf.stack([tf.stack([taps[ty, tx] for tx in range(k)]) for ty in range(k)])


@functools.lru_cache(maxsize=None)
def _interleave_index(k: int, n: int) -> np.ndarray:
    """[2n * 2n]: for each pixel of the transposed conv's output, its (cell, phase) row in the
    stride-1 conv's output [S, S, 4] (phase order as subpixel_kernel's)."""
    _, _, phases = subpixel_layout(k)
    size = _subpixel_size(k, n)
    index = np.zeros([2 * n, 2 * n], np.int32)
    m = np.arange(n)
    for i, (ry, rx) in enumerate(_subpixel_phases()):
        rows, cols = m + phases[ry][0], m + phases[rx][0]
        index[2 * m[:, None] + ry, 2 * m[None, :] + rx] = (
            (rows[:, None] * size + cols[None, :]) * 4 + i)
    index.flags.writeable = False
    return index.reshape(-1)


def _interleave(y, k: int, n: int):
    """The stride-1 conv's [N, S, S, 4 * C] -> the transposed conv's [N, 2n, 2n, C]: one
    gather of C-float rows (several times faster than slices, concat and depth_to_space)."""
    size, cout = y.shape[1], y.shape[-1] // 4
    rows = tf.gather(tf.reshape(y, [-1, size * size * 4, cout]), _interleave_index(k, n), axis=1)
    return tf.reshape(rows, [-1, 2 * n, 2 * n, cout])


@functools.lru_cache(maxsize=None)
def _deinterleave_index(k: int, n: int) -> np.ndarray:
    """[S * S * 4]: the inverse of _interleave_index; 4n^2 (a zero row) for the cells that no
    output pixel reads."""
    size = _subpixel_size(k, n)
    index = np.full([size * size * 4], 4 * n * n, np.int32)
    index[_interleave_index(k, n)] = np.arange(4 * n * n)
    index.flags.writeable = False
    return index


def _deinterleave(dy, k: int):
    """The adjoint of _interleave: [N, 2n, 2n, C] -> [N, S, S, 4 * C] (zeros off each phase)."""
    n, cout = dy.shape[1] // 2, dy.shape[-1]
    size = _subpixel_size(k, n)
    rows = tf.reshape(dy, [-1, 4 * n * n, cout])
    rows = tf.concat([rows, tf.zeros_like(rows[:, :1])], axis=1)
    cells = tf.gather(rows, _deinterleave_index(k, n), axis=1)
    return tf.reshape(cells, [-1, size, size, 4 * cout])


def subpixel_conv2d_transpose(x, kernel, use_winograd: bool = False):
    """tf.nn.conv2d_transpose(x, kernel, 2, "SAME") as one stride-1 conv to 4 * C_out
    channels (each output phase's taps side by side) and an interleave (Shi et al. 2016).
    x [N, n, n, C_in], kernel [k, k, C_out, C_in] -> [N, 2n, 2n, C_out]. Where TF's
    transposed conv is slow, its forward conv is fast (docs/performance.md). The stride-1
    conv is TF's, or Winograd's (a 2x2 window for k 3 or 4, 3x3 for k 5 or 6)."""
    k, n = kernel.shape[0], x.shape[1]
    padded, kernel4 = _subpixel_pad(x, k), subpixel_kernel(kernel)
    y = (winograd.conv(padded, kernel4) if use_winograd
         else tf.nn.conv2d(padded, kernel4, 1, "VALID"))
    return _interleave(y, k, n)


def subpixel_conv2d(x, kernel, use_winograd: bool = False):
    """tf.nn.conv2d(x, kernel, 2, "SAME") for even sizes, as the adjoint of
    subpixel_conv2d_transpose: x [N, 2n, 2n, C_in], kernel [k, k, C_in, C_out]."""
    k, cout = kernel.shape[0], kernel.shape[3]
    w, before, _ = subpixel_layout(k)
    n = x.shape[1] // 2
    planes = _deinterleave(x, k)
    if use_winograd:
        out = winograd.conv_input_grad(planes, subpixel_kernel(kernel))
    else:
        sizes = tf.stack([tf.shape(x)[0], planes.shape[1] + w - 1, planes.shape[1] + w - 1,
                          cout])
        out = tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=subpixel_kernel(kernel),
                                             out_backprop=planes, strides=[1, 1, 1, 1],
                                             padding="VALID")
    return out[:, before:before + n, before:before + n, :]


def subpixel_kernel_grad(x, dy, k: int, use_winograd: bool = False):
    """Gradient of subpixel_conv2d_transpose's kernel: x [N, n, n, C_in], dy [N, 2n, 2n,
    C_out] -> [k, k, C_out, C_in], through the stride-1 conv's filter gradient."""
    w = subpixel_layout(k)[0]
    x, planes = _subpixel_pad(x, k), _deinterleave(dy, k)
    if use_winograd:
        grad = winograd.conv_kernel_grad(x, planes)
    else:
        grad = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.constant([w, w, x.shape[-1], 4 * dy.shape[-1]]),
            out_backprop=planes, strides=[1, 1, 1, 1], padding="VALID")
    return _subpixel_kernel_taps(grad, k)


def matmul_transpose_fits(size: int, k: int) -> bool:
    """Whether the 2n-sized phase form, cropped to `size`, is the transposed conv to `size`:
    always for even sizes; for odd ones SAME puts the same padding first only if k is even."""
    return size % 2 == 0 or k % 2 == 0


# ----------------------------------------------------------------------------- the three ops


def conv2d(x, kernel, impl: str, stride: int = 2):
    """SAME conv: x [N, n, n, C_in], kernel [k, k, C_in, C_out] -> [N, o, o, C_out],
    o = ceil(n / stride); MATMUL (stride 2): patches [N*o*o, k*k*C_in] x [k*k*C_in, C_out];
    SUBPIXEL / WINOGRAD (stride 2): the adjoint of the sub-pixel transposed conv."""
    if impl == NATIVE:
        return tf.nn.conv2d(x, kernel, stride, "SAME")
    _require_stride_two(stride)
    if impl in (SUBPIXEL, WINOGRAD):
        return subpixel_conv2d(_to_even(x, kernel.shape[0]), kernel, impl == WINOGRAD)
    k, cout = kernel.shape[0], kernel.shape[3]
    patches = same_patches(x, k)  # [N, o, o, k*k*C_in]
    out = patches.shape[1]
    rows = tf.reshape(patches, [-1, patches.shape[-1]])
    return tf.reshape(tf.matmul(rows, tf.reshape(kernel, [-1, cout])), [-1, out, out, cout])


def conv2d_transpose(x, kernel, size: int, impl: str, stride: int = 2):
    """The adjoint of conv2d: x [N, o, o, C_in], kernel [k, k, C_out, C_in] -> [N, size, size,
    C_out] (stride 2: size is 2o - 1 or 2o). MATMUL: the phase form, cropped for odd sizes,
    with stride 1 the shifted sums; SUBPIXEL / WINOGRAD (stride 2): the sub-pixel form,
    cropped."""
    if impl == NATIVE:
        shape = tf.stack([tf.shape(x)[0], size, size, kernel.shape[2]])
        return tf.nn.conv2d_transpose(x, kernel, shape, stride, "SAME")
    if stride == 1:
        if impl != MATMUL:
            raise ValueError(f"A stride-1 transposed conv has no {impl} form.")
        return shift_sum_conv2d_transpose(x, kernel)
    if not matmul_transpose_fits(size, kernel.shape[0]):
        raise ValueError(f"No {impl} form of a transposed conv to odd size {size} with an odd "
                         f"kernel ({kernel.shape[0]}); use the native one.")
    if impl in (SUBPIXEL, WINOGRAD):
        return subpixel_conv2d_transpose(x, kernel, impl == WINOGRAD)[:, :size, :size, :]
    return phase_conv2d_transpose(x, kernel)[:, :size, :size, :]


def conv2d_kernel_grad(x, dy, k: int, impl: str, stride: int = 2):
    """Gradient of conv2d's kernel: x [N, n, n, C_in], dy [N, o, o, C_out] -> [k, k, C_in,
    C_out]; MATMUL (stride 2): patches(x) transposed x dy, [k*k*C_in, N*o*o] x [N*o*o, C_out];
    SUBPIXEL / WINOGRAD (stride 2): the sub-pixel transposed conv's kernel gradient, roles
    swapped."""
    cin, cout = x.shape[-1], dy.shape[-1]
    if impl == NATIVE:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.constant([k, k, cin, cout]), out_backprop=dy,
            strides=[1, stride, stride, 1], padding="SAME")
    _require_stride_two(stride)
    if impl in (SUBPIXEL, WINOGRAD):
        return subpixel_kernel_grad(dy, _to_even(x, k), k, impl == WINOGRAD)
    rows = tf.reshape(same_patches(x, k), [-1, k * k * cin])
    grad = tf.matmul(rows, tf.reshape(dy, [-1, cout]), transpose_a=True)
    return tf.reshape(grad, [k, k, cin, cout])


def _to_even(x, k: int):
    """x [N, n, n, C] with a zero row and column after it if n is odd: a stride-2 SAME conv
    of it is the same (for even k, matmul_transpose_fits), and the sub-pixel form needs 2n."""
    if x.shape[1] % 2 == 0:
        return x
    if not matmul_transpose_fits(x.shape[1], k):
        raise ValueError(f"No sub-pixel form of a stride-2 conv of odd size {x.shape[1]} with an "
                         f"odd kernel ({k}); use the native one.")
    return tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])


def _require_stride_two(stride: int):
    if stride != 2:
        raise ValueError(f"The matmul and sub-pixel forms of convs and kernel gradients are "
                         f"stride 2; got stride {stride}: use the native one.")


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One SAME conv or transposed conv layer: input [batch, size, size, cin], cout filters,
    k x k kernel, stride 1 or 2."""
    transpose: bool
    batch: int
    size: int
    cin: int
    cout: int
    k: int
    stride: int = 2

    @property
    def out(self) -> int:
        return self.size * self.stride if self.transpose else -(-self.size // self.stride)

    @property
    def kernel_shape(self):
        return [self.k, self.k] + ([self.cout, self.cin] if self.transpose else
                                   [self.cin, self.cout])

    @property
    def forward_flops(self) -> float:
        positions = (self.size if self.transpose else self.out) ** 2
        return 2.0 * self.batch * positions * self.k * self.k * self.cin * self.cout

    def part_gemm(self, part: str) -> Tuple[int, int, int]:
        """(m, k, n) of the one GEMM with `part`'s FLOPs, its operands laid out ready: the
        patches side (k*k times the channels of the conv's input, the transposed conv's
        output) against the output positions and the other channels. What the part would
        cost as a plain matmul on this machine (wae_tf.perf.op_profile)."""
        patch = self.k * self.k * (self.cout if self.transpose else self.cin)
        other = self.cin if self.transpose else self.cout
        positions = self.batch * (self.size if self.transpose else self.out) ** 2
        if part == "kernel_grad":
            return patch, positions, other
        if (part == "forward") != self.transpose:  # a conv's forward, a transposed input_grad
            return positions, patch, other
        return positions, other, patch

    def has_form(self, part: str, impl: str) -> bool:
        """Whether `part` can be computed as `impl`. NATIVE: always. MATMUL: every part at
        stride 2 (but a conv's input gradient to an odd size with an odd kernel), at stride 1 a
        transposed conv's forward. SUBPIXEL: every part at stride 2 but of a conv of odd size
        with an odd kernel. WINOGRAD: as SUBPIXEL, for kernels of 3 to 6 taps (a 2x2 or 3x3
        window)."""
        fits = self.transpose or matmul_transpose_fits(self.size, self.k)
        if impl == NATIVE:
            return True
        if self.stride == 1:
            return impl == MATMUL and self.transpose and part == "forward"
        if impl == WINOGRAD and subpixel_layout(self.k)[0] not in winograd.WINDOWS:
            return False
        return fits or (impl == MATMUL and part != "input_grad")


def layer_part(shape: LayerShape, part: str, impl: str, x, kernel, dy):
    """One part of the layer: `forward` of x, `input_grad` / `kernel_grad` of dy.

    A transposed conv is the adjoint of a conv: its forward is a conv's input gradient, its
    input gradient a conv's forward, its kernel gradient a conv's with the roles swapped.
    """
    s = shape
    if part == "forward":
        return (conv2d_transpose(x, kernel, s.out, impl, s.stride) if s.transpose
                else conv2d(x, kernel, impl, s.stride))
    if part == "input_grad":
        return (conv2d(dy, kernel, impl, s.stride) if s.transpose
                else conv2d_transpose(dy, kernel, s.size, impl, s.stride))
    return (conv2d_kernel_grad(dy, x, s.k, impl, s.stride) if s.transpose
            else conv2d_kernel_grad(x, dy, s.k, impl, s.stride))


def strided_conv(x, kernel, plan: ConvPlan, transpose: bool, stride: int = 2):
    """A SAME conv (kernel [k, k, C_in, C_out]) or transposed conv (kernel [k, k, C_out, C_in],
    output stride * n) of x [N, n, n, C_in], each part computed as `plan` says."""
    cout = kernel.shape[2] if transpose else kernel.shape[3]
    shape = LayerShape(transpose, -1, x.shape[1], x.shape[-1], cout, kernel.shape[0], stride)

    scope = tf.get_current_name_scope()  # the layer's: the gradients run outside it

    def part(name, impl, dy):
        with tf.name_scope(f"{scope}/{name}/" if scope else f"{name}/"):  # wae_tf.perf.op_profile
            return layer_part(shape, name, impl, x, kernel, dy)

    @tf.custom_gradient
    def run(x, kernel):
        def grad(dy):
            return (part("input_grad", plan.input_grad, dy),
                    part("kernel_grad", plan.kernel_grad, dy))
        return part("forward", plan.forward, None), grad
    return run(x, kernel)


# ----------------------------------------------------------------------------- tuning

# Layers with fewer forward FLOPs per batch than this keep TF's kernels untimed: timing them
# costs more than it could save (and keeps tiny test networks free of timing).
MIN_TUNED_FLOPS = 50e6
_PLANS: Dict[Tuple, ConvPlan] = {}
# The layers tune() planned since the last tuning_summary(): (seconds spent timing, or None if the
# plan came from the cache).
_TUNED: list = []


def _seconds(fn, *args, runs: int = 3, budget: float = 1.0,
             give_up: float = float("inf")) -> float:
    """Fastest of `runs` timed calls of a tf.function (after a warm-up call, which traces it),
    fewer (at least one) if they exceed `budget` seconds or the first exceeds `give_up` (a form
    that cannot win): the minimum is the least disturbed by other work."""
    fn(*args).numpy()
    best, spent = float("inf"), 0.0
    for _ in range(runs):
        start = time.perf_counter()
        fn(*args).numpy()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget or best > give_up:
            break
    return best


def _offered(shape: LayerShape, part: str, impl: str, dtype) -> bool:
    """Whether tune may pick `impl` for `part`: a form of this code the layer has; WINOGRAD only
    in float32 (its rounding in float16 / bfloat16 is not checked, wae_tf.perf.winograd)."""
    return (impl in IMPLS and shape.has_form(part, impl)
            and (impl != WINOGRAD or tf.as_dtype(dtype) == tf.float32))


def _part_corner(shape: LayerShape, part: str, impl: str, x, kernel, dy):
    """A corner of layer_part's result: the whole result is computed, fetching it all would
    add a copy to the time."""
    return layer_part(shape, part, impl, x, kernel, dy)[:1, :1, :1, :1]


def _part_candidates(shape: LayerShape, dtype):
    """{part: {impl: (tf.function, args)}} for one layer, the forms tune may pick (_offered).

    Each is a tf.function of a partial, not of a lambda: TF counts traces by the Python code
    they come from, and a dozen lambdas of one line would set off its retracing warning.
    """
    normal = lambda dims, seed: tf.cast(  # noqa: E731
        tf.random.stateless_normal(dims, seed=[seed, 0]), dtype)
    args = (normal([shape.batch, shape.size, shape.size, shape.cin], 1),
            normal(shape.kernel_shape, 3),
            normal([shape.batch, shape.out, shape.out, shape.cout], 2))
    parts = {}
    for part in PARTS:
        impls = [impl for impl in IMPLS if _offered(shape, part, impl, dtype)]
        if len(impls) < 2:
            continue
        for impl in impls:
            fn = functools.partial(_part_corner, shape, part, impl)
            parts.setdefault(part, {})[impl] = (tf.function(fn, autograph=False), args)
    return parts


def tuning_summary() -> str:
    """One line on the layers tune() planned since the last call ("" if none), then forgets
    them: the per-layer timings are debug lines (--verbosity=1)."""
    timed = [s for s in _TUNED if s is not None]
    cached = len(_TUNED) - len(timed)
    _TUNED.clear()
    if not timed and not cached:
        return ""
    parts = [f"timed {len(timed)} in {sum(timed):.1f} s"] if timed else []
    parts += [f"{cached} from the plan cache"] if cached else []
    return (f"Conv forms of {len(timed) + cached} layers: {', '.join(parts)} "
            "(each layer's choice: --verbosity=1).")


def _describe(shape: LayerShape) -> str:
    return (f"{'conv_transpose' if shape.transpose else 'conv'} {shape.size}x{shape.size}x"
            f"{shape.cin} -> {shape.cout} (k={shape.k}, stride {shape.stride}, "
            f"batch {shape.batch})")


def _time_parts(shape: LayerShape, dtype) -> Tuple[ConvPlan, Dict[str, Dict[str, float]]]:
    """The fastest form of each part and every form's seconds, timed here and now."""
    choice, seconds = {}, {}
    for part, impls in _part_candidates(shape, dtype).items():
        seconds[part] = {}
        for impl, (fn, args) in impls.items():  # native first: the others must beat it
            give_up = 2 * min(seconds[part].values(), default=float("inf"))
            seconds[part][impl] = _seconds(fn, *args, give_up=give_up)
        choice[part] = min(seconds[part], key=seconds[part].get)
    return ConvPlan(**choice), seconds


def _cached_plan(shape: LayerShape, dtype, entry: Optional[dict]) -> Optional[ConvPlan]:
    """A cache entry's plan if it names a form of this layer for every part, else None."""
    plan = (entry or {}).get("plan", {})
    valid = set(plan) == set(PARTS) and all(_offered(shape, part, impl, dtype)
                                            for part, impl in plan.items())
    return ConvPlan(**plan) if valid else None


def rule_plan(shape: LayerShape) -> ConvPlan:
    """The plan of a fixed rule, for layers not timed: matmuls for stride-2 convs to outputs of
    2x2 or less, whose TF kernels were several times slower on every CPU measured
    (docs/performance.md), TF's kernels otherwise."""
    small = not shape.transpose and shape.stride == 2 and shape.out <= 2
    return matmul_plan(shape) if small else ALL_NATIVE


def known_plan(shape: LayerShape, dtype=tf.float32,
               cache: Optional[str] = None) -> Optional[ConvPlan]:
    """What tune(shape, dtype, cache) returns without timing anything: TF's kernels for layers
    under MIN_TUNED_FLOPS or inside a graph, a plan timed before in this process or found in
    the plan cache file; None if the layer still has to be timed."""
    if shape.forward_flops < MIN_TUNED_FLOPS or not tf.executing_eagerly():
        return ALL_NATIVE
    key = (shape, tf.as_dtype(dtype).name)
    if key not in _PLANS and cache:
        plan = _cached_plan(shape, dtype, plan_cache.lookup(cache, plan_cache.entry_key(
            shape, key[1])))
        if plan is not None:
            logging.debug("%s: %s [timed before, from %s]", _describe(shape), plan, cache)
            _TUNED.append(None)
            _PLANS[key] = plan
    return _PLANS.get(key)


def tune(shape: LayerShape, dtype=tf.float32, cache: Optional[str] = None) -> ConvPlan:
    """The faster form of each part of one layer on this machine, timed on its own shapes;
    parts without a matmul form stay native. Cached per process, and in the JSON file `cache`
    if given (wae_tf.perf.plan_cache: reused on the same machine, software and code).

    Layers under MIN_TUNED_FLOPS, and calls that cannot run ops eagerly (inside a graph), get
    TF's kernels.
    """
    plan = known_plan(shape, dtype, cache)
    if plan is not None:
        return plan
    start = time.perf_counter()
    plan, seconds = _time_parts(shape, dtype)
    timings = "; ".join(f"{part} " + " ".join(f"{impl} {1e3 * s:.1f} ms" for impl, s in
                                                t.items()) for part, t in seconds.items())
    _TUNED.append(time.perf_counter() - start)
    logging.debug("%s: %s [%s; tuned in %.1f s]", _describe(shape), plan, timings, _TUNED[-1])
    if cache:
        plan_cache.store(cache, plan_cache.entry_key(shape, tf.as_dtype(dtype).name),
                         dataclasses.asdict(plan), seconds, _describe(shape))
    _PLANS[(shape, tf.as_dtype(dtype).name)] = plan
    return plan
