"""Where a training step's time goes: per-op times from TF's profiler, summed per conv layer
part (forward, input gradient, kernel gradient: each against its FLOPs, the machine's GEMM
limit and its own GEMM, the one matmul with its FLOPs) and per op type for everything else
(BatchNorm, ReLU, Adam, the regulariser, copies).

Why: the step's fraction of the limit says how far it is from the machine, not where the time
goes; a part well below its own GEMM is a kernel to replace, a part at its own GEMM but below
the limit has a GEMM shape this machine runs slowly, time outside the parts is overhead.
"""

import collections
import dataclasses
import glob
import os
import re
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

# TF op events are named "<node name>:<op type>" (no spaces); framework events are not.
_OP_EVENT = re.compile(r"(?P<name>[^\s:]+):(?P<type>[A-Za-z_][A-Za-z0-9_]*)")
# Ops whose events contain other ops' events: counting them would count those twice.
_CONTAINERS = ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If",
               "StatelessIf", "Case", "StatelessCase")
# A conv layer's ops: "<model>[_N]/<layer>_conv[_N]/..." (Keras numbers repeated calls).
_CONV_LAYER = re.compile(r"(?:^|/)(?P<model>encoder|decoder|discriminator)(?:_\d+)?/"
                         r"(?P<layer>\w+?_conv)(?:_\d+)?/")
PARTS = ("forward", "input_grad", "kernel_grad")
# Where TF's oneDNN custom ops are on (its default on CPUs with AVX512_VNNI, AVX512_BF16 or
# AMX), its graph rewrite renames ops: _MklNativeConv2DBackpropFilter, _MklMatMul.
_ONEDNN_PREFIX = re.compile(r"^_Mkl(?:Native)?")


def base_op_type(event_type: str) -> str:
    """The TF op type of a profiler event's type, with oneDNN's renaming undone."""
    return _ONEDNN_PREFIX.sub("", event_type)


def op_seconds(space: xplane_pb2.XSpace) -> Dict[Tuple[str, str], float]:
    """{(node name, op type): seconds} summed over every op event of a profiler trace."""
    seconds = collections.defaultdict(float)
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                match = _OP_EVENT.fullmatch(plane.event_metadata[event.metadata_id].name)
                kind = base_op_type(match["type"]) if match else None
                if kind and kind not in _CONTAINERS:
                    seconds[match["name"], kind] += event.duration_ps * 1e-12
    return dict(seconds)


def trace(run: Callable[[], None], calls: int) -> Dict[Tuple[str, str], float]:
    """Seconds per call of each op while `run()` is called `calls` times under TF's profiler
    (warm `run` up first: tracing and tuning would be counted)."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(calls):
                run()
        finally:
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            raise RuntimeError(f"TF's profiler wrote no trace into {logdir}.")
        space = xplane_pb2.XSpace()
        with open(paths[0], "rb") as f:
            space.ParseFromString(f.read())
    return {op: s / calls for op, s in op_seconds(space).items()}


def conv_part(name: str, op_type: str):
    """(model/layer, part) of an op of a conv layer, or None. The tuned layers' ops are in
    scopes named after the part (convs.strided_conv); TF's own gradients are under
    gradient_tape/, the kernel's being Conv2DBackpropFilter."""
    match = _CONV_LAYER.search(name)
    if not match:
        return None
    layer = f"{match['model']}/{match['layer']}"
    for part in PARTS:
        if f"/{part}/" in name:
            return layer, part
    if not name.startswith("gradient_tape/"):
        return layer, "forward"
    # oneDNN fuses the bias's gradient in: Conv2DBackpropFilterWithBias.
    kernel_grad = op_type.startswith("Conv2DBackpropFilter")
    return layer, "kernel_grad" if kernel_grad else "input_grad"


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the profile: seconds per step, and for conv parts FLOPs, GFLOP/s and the
    FLOP/s of the part's own GEMM (the same FLOPs as one matmul, timed alone; 0: not timed)."""
    what: str
    seconds: float
    flops: float = 0.0
    gemm_flops_per_second: float = 0.0

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds if self.seconds else 0.0


def summarize(ops: Dict[Tuple[str, str], float], part_flops: Dict[str, float],
              part_gemm_rates: Optional[Dict[Tuple[str, str], float]] = None):
    """(conv part rows, op type rows of the rest), each sorted by time. `part_flops`: the
    FLOPs per step of each model/layer's forward, which each of its parts also does;
    `part_gemm_rates`: {(model/layer, part): FLOP/s of its own GEMM}."""
    part_gemm_rates = part_gemm_rates or {}
    parts, types = collections.defaultdict(float), collections.defaultdict(float)
    for (name, op_type), seconds in ops.items():
        owner = conv_part(name, op_type)
        if owner:
            parts[owner] += seconds
        else:
            types[op_type] += seconds
    conv_rows = [Row(f"{layer} {part}", s, part_flops.get(layer, 0.0),
                     part_gemm_rates.get((layer, part), 0.0))
                 for (layer, part), s in parts.items()]
    other_rows = [Row(op_type, s) for op_type, s in types.items()]
    by_time = lambda rows: sorted(rows, key=lambda r: -r.seconds)  # noqa: E731
    return by_time(conv_rows), by_time(other_rows)


def format_profile(conv_rows: List[Row], other_rows: List[Row], step_seconds: float,
                   limit_flops_per_second: float, top: int = 8) -> str:
    """The profile as text: each conv part's ms, GFLOP/s, fraction of the limit and of its
    own GEMM's speed; the other op types' ms; and the op time against the step's wall time
    (ops overlap, so a part's fractions are lower bounds of its speed alone)."""
    total = sum(r.seconds for r in conv_rows + other_rows)
    conv = sum(r.seconds for r in conv_rows)
    lines = [f"    per-op profile: ops {1e3 * total:.1f} ms per step of {1e3 * step_seconds:.1f} "
             f"ms wall (ops overlap); conv parts {1e3 * conv:.1f} ms, other ops "
             f"{1e3 * (total - conv):.1f} ms"]
    timed = [r for r in conv_rows if r.gemm_flops_per_second]
    if timed:  # what the conv work would reach as one GEMM per part, run one after another
        as_gemms = (sum(r.flops for r in timed)
                    / sum(r.flops / r.gemm_flops_per_second for r in timed))
        lines.append(f"    with each conv part at its own GEMM's speed: {as_gemms / 1e9:.1f} GF/s, "
                     f"{as_gemms / limit_flops_per_second:.1%} of the limit (the parts now: "
                     f"{sum(r.flops for r in timed) / sum(r.seconds for r in timed) / 1e9:.1f} "
                     "GF/s of op time)")
    for r in conv_rows:
        own = (f"; {r.flops_per_second / r.gemm_flops_per_second:6.1%} of its GEMM's "
               f"{r.gemm_flops_per_second / 1e9:5.1f}" if r.gemm_flops_per_second else "")
        lines.append(f"      {r.what:32} {1e3 * r.seconds:8.1f} ms {r.flops_per_second / 1e9:7.1f} "
                     f"GF/s {r.flops_per_second / limit_flops_per_second:6.1%} of the limit{own}")
    rest = other_rows[:top]
    others = sum(r.seconds for r in other_rows[top:])
    lines.append("      other: " + ", ".join(f"{r.what} {1e3 * r.seconds:.1f}" for r in rest)
                 + (f", the rest {1e3 * others:.1f}" if others else "") + " (ms)")
    return "\n".join(lines)
