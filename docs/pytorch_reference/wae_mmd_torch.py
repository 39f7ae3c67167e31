"""A PyTorch reference of wae_tf's WAE-MMD on Fashion-MNIST 28x28, for speed and quality
comparisons.

The same encoder, decoder, loss and optimizer as `python -m wae_tf.train --dataset=fashion_mnist
--regularizer=mmd` (wae_tf/model/networks.py, regularizers.py, step.py); runs in a scratch venv with
torch (never a dependency of wae_tf). Prints images/s (median over timed windows after a warm-up,
data feeding and one loss fetch per step included, as wae_tf/tools/benchmarking.py), FLOPs per image of
a step (3x the forward FLOPs of convs, transposed convs and dense layers, as
`analytic_step_flops`) and GFLOP/s. `--out=FILE.npz` saves decoded prior samples, test
reconstructions and codes for docs/pytorch_reference/score_npz.py. `--check_against=REF.npz` (made
by keras_reference.py) loads wae_tf's initial weights and compares outputs, losses, gradients and
three training steps with wae_tf's.

Not reproduced: the paper flagfiles' input noise and encoder pre-training, the `manual` learning
rate schedule (constant for the first 30 epochs, 18,000 steps), Keras's Glorot initialisation
(--init_std=0 is torch's default init). torch flattens [C, H, W] where Keras flattens [H, W, C]
(a permutation of the dense weights, the same function class), keeps the unbiased batch variance
in BatchNorm's running_var, and draws the prior samples and data order from its own generator.

Matching TF's padding='same' (even kernels pad more on the right/bottom): a conv of side n,
kernel k, stride s pads total = (ceil(n/s) - 1) s + k - n, total // 2 before and the rest after.
Where before == after (28 -> 14, 14 -> 7, 4 -> 2) that is torch's symmetric `padding`; the 7 -> 4
conv pads (1, 2) with an explicit F.pad. A transposed conv is the adjoint of the 'same' conv from
n * s down to n, so torch's `padding` is that conv's padding before: (1, 1) -> padding 1 for the
stride-2 layers (7 -> 14 -> 28 exactly); the stride-1 output layer's (1, 2) -> padding 1 gives
29x29, cropped to the first 28 rows and columns. keras_reference.py + --check_against verify it.
"""

import argparse
import gzip
import json
import os
import statistics
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # wae_tf/regularizers.py _IMQ_SCALES
RECON_SCALE = 0.05  # l2sq: 0.05 * ||x - y||^2
SIZE, KERNEL = 28, 4
ENCODER_CHANNELS = (128, 256, 512, 1024)  # 28 -> 14 -> 7 -> 4 -> 2
DECODER_CHANNELS = (512, 256)  # 7 -> 14 -> 28
BASE = 7


# ----------------------------------------------------------------------------- networks


def same_padding(size, kernel, stride):
    """TF's padding='same' (before, after) of one side: output ceil(size / stride), the odd
    pixel of the total padding after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF 'same' padding for an input of side `size`."""

    def __init__(self, cin, cout, stride, size, bias):
        before, after = same_padding(size, KERNEL, stride)
        super().__init__(cin, cout, KERNEL, stride, padding=before if before == after else 0,
                         bias=bias)
        self.extra = None if before == after else (before, after, before, after)

    def forward(self, x):
        return super().forward(F.pad(x, self.extra) if self.extra else x)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """TF's Conv2DTranspose(padding='same') from side `size` to size * stride."""

    def __init__(self, cin, cout, stride, size, bias):
        super().__init__(cin, cout, KERNEL, stride,
                         padding=same_padding(size * stride, KERNEL, stride)[0], bias=bias)
        self.out_size = size * stride

    def forward(self, x):
        y = super().forward(x)  # [N, C, out_size (+1 for stride 1), ...]
        return y[..., :self.out_size, :self.out_size] if y.shape[-1] != self.out_size else y


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # Keras momentum 0.9


class Encoder(nn.Module):
    """images [N, 1, 28, 28] -> z [N, z_dim]: 4 x (stride-2 conv, BN, ReLU), flatten, dense."""

    def __init__(self, width_divisor, z_dim):
        super().__init__()
        cin, size = 1, SIZE
        for i, count in enumerate(ENCODER_CHANNELS):
            cout = max(1, count // width_divisor)
            setattr(self, f"enc{i}_conv", SameConv2d(cin, cout, 2, size, bias=False))
            setattr(self, f"enc{i}_bn", _bn(cout))
            cin, size = cout, -(-size // 2)
        self.z = nn.Linear(cin * size * size, z_dim)  # flattened [C, 2, 2] (TF: [2, 2, C])

    def forward(self, x):
        for i in range(len(ENCODER_CHANNELS)):
            x = F.relu(getattr(self, f"enc{i}_bn")(getattr(self, f"enc{i}_conv")(x)))
        return self.z(x.flatten(1))


class Decoder(nn.Module):
    """z [N, z_dim] -> images [N, 1, 28, 28]: dense to 7x7xC, ReLU, 2 x (stride-2 transposed
    conv, BN, ReLU), stride-1 transposed conv with bias, sigmoid."""

    def __init__(self, width_divisor, z_dim):
        super().__init__()
        self.first = max(1, 1024 // width_divisor)
        self.project = nn.Linear(z_dim, BASE * BASE * self.first)
        cin, size = self.first, BASE
        for i, count in enumerate(DECODER_CHANNELS):
            cout = max(1, count // width_divisor)
            setattr(self, f"dec{i}_conv", SameConvTranspose2d(cin, cout, 2, size, bias=False))
            setattr(self, f"dec{i}_bn", _bn(cout))
            cin, size = cout, size * 2
        self.out_conv = SameConvTranspose2d(cin, 1, 1, size, bias=True)

    def forward(self, z):
        x = F.relu(self.project(z).view(-1, self.first, BASE, BASE))
        for i in range(len(DECODER_CHANNELS)):
            x = F.relu(getattr(self, f"dec{i}_bn")(getattr(self, f"dec{i}_conv")(x)))
        return torch.sigmoid(self.out_conv(x))


def initialise(model, init_std):
    """init_std > 0: weights N(0, init_std^2), biases 0 (the paper's code); 0: torch's default."""
    if init_std <= 0:
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def layer_table(models):
    """[(name, parameters, forward FLOPs per image, output shape)] of every layer; FLOPs as
    wae_tf's layer_forward_flops: 2 x (conv: output positions, transposed conv: input
    positions, dense: 1) x the kernel's size."""
    shapes, hooks = {}, []
    for model in models:
        for name, module in model.named_children():
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.update({name: (i[0].shape, o.shape)})))
    encoder, decoder = models
    with torch.no_grad():
        decoder.eval(), encoder.eval()
        decoder(encoder(torch.zeros(1, 1, SIZE, SIZE)))
    for hook in hooks:
        hook.remove()
    rows = []
    for model in models:
        for name, module in model.named_children():
            params = sum(p.numel() for p in module.parameters())
            inputs, outputs = shapes[name]
            if isinstance(module, nn.Conv2d):
                flops = 2 * int(np.prod(outputs[2:])) * module.weight.numel()
            elif isinstance(module, nn.ConvTranspose2d):
                flops = 2 * int(np.prod(inputs[2:])) * module.weight.numel()
            elif isinstance(module, nn.Linear):
                flops = 2 * module.weight.numel()
            else:  # BatchNorm: not counted, as in wae_tf
                flops = 0
            rows.append((f"{type(model).__name__.lower()}/{name}", params, flops,
                         tuple(outputs[1:])))
    return rows


# ----------------------------------------------------------------------------- the loss


def squared_distances(x, y):
    """||x_i - y_j||^2 [n, m] as one matmul, clipped at 0 (regularizers.squared_distances)."""
    x_sq = (x * x).sum(1, keepdim=True)  # [n, 1]
    y_sq = (y * y).sum(1, keepdim=True)  # [m, 1]
    return (x_sq + y_sq.T - 2.0 * x @ y.T).clamp_min(0.0)


def imq_kernel(d2, base):
    """sum_s C_s / (C_s + d2), C_s = s * base (regularizers.imq_kernel)."""
    total = None
    for s in IMQ_SCALES:
        c = s * base
        total = c / (c + d2) if total is None else total + c / (c + d2)
    return total


def _sum64(matrix):
    """float32 row sums, then their float64 sum (regularizers._accurate_sum)."""
    return matrix.sum(1).double().sum()


def mmd_penalty(qz, pz, base):
    """Unbiased MMD^2 with the IMQ kernel (regularizers.mmd_penalty): off-diagonal means within
    qz and within pz, minus twice the mean over all cross pairs."""
    n = qz.shape[0]
    off_diagonal = float(n * n - n)
    k_qq = imq_kernel(squared_distances(qz, qz), base)  # [n, n]
    k_pp = imq_kernel(squared_distances(pz, pz), base)
    k_qp = imq_kernel(squared_distances(qz, pz), base)
    within_q = (_sum64(k_qq) - k_qq.diagonal().double().sum()) / off_diagonal
    within_p = (_sum64(k_pp) - k_pp.diagonal().double().sum()) / off_diagonal
    cross = _sum64(k_qp) / float(n * n)
    return (within_q + within_p - 2.0 * cross).float()


def losses(encoder, decoder, x, pz, lambda_reg):
    """(loss, recon, penalty) of a batch x [N, 1, 28, 28] and prior samples pz [N, z_dim]:
    0.05 ||x - y||^2 averaged over the batch + lambda * MMD (training.ae_gradients)."""
    z = encoder(x)
    y = decoder(z)
    recon = RECON_SCALE * (x - y).square().flatten(1).sum(1).mean()
    penalty = mmd_penalty(z, pz, 2.0 * z.shape[1])  # prior_squared_distance: 2 d sigma^2, sigma 1
    return recon + lambda_reg * penalty, recon, penalty


def make_optimizer(params, args):
    """Adam lr 1e-3, betas (0.5, 0.999), eps 1e-7 (Keras's default epsilon; Keras adds it to
    sqrt(v) before the bias correction of v, torch after: a negligible difference)."""
    return torch.optim.Adam(params, lr=args.learning_rate, betas=(0.5, 0.999), eps=1e-7,
                            fused=args.fused_adam or None)


# ----------------------------------------------------------------------------- data


def read_idx(path):
    """An IDX file (gzip or raw) -> numpy array (big-endian header, uint8 data)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_images(data_dir, split):
    """uint8 tensor [N, 1, 28, 28] of the train or t10k split."""
    prefix = "train" if split == "train" else "t10k"
    for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return torch.from_numpy(read_idx(path).copy()).unsqueeze(1)
    raise SystemExit(f"No {prefix}-images-idx3-ubyte[.gz] in {data_dir}: pass --data_dir.")


def batches(images, batch_size, generator):
    """Endless float batches [B, 1, 28, 28] in [0, 1]: a permutation per epoch, the last
    partial batch dropped (as wae_tf's in-memory pipeline)."""
    while True:
        order = torch.randperm(images.shape[0], generator=generator)
        for i in range(0, images.shape[0] - batch_size + 1, batch_size):
            yield images[order[i:i + batch_size]].float().div_(255.0)


# ----------------------------------------------------------------------------- training


def train(args, encoder, decoder, train_images):
    """--steps Adam steps; returns (per-step end times, the last loss)."""
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = make_optimizer(params, args)
    generator = torch.Generator().manual_seed(args.seed)
    data = batches(train_images, args.batch_size, generator)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    step_losses = torch.compile(losses) if args.compile else losses
    encoder.train(), decoder.train()
    times, loss_value = [time.perf_counter()], float("nan")
    for step in range(args.steps):
        x = next(data).contiguous(memory_format=memory_format)
        pz = torch.randn(args.batch_size, args.z_dim, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss, recon, penalty = step_losses(encoder, decoder, x, pz, args.lambda_reg)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()  # one fetch per step, as wae_tf's loop
        times.append(time.perf_counter())
        if args.log_every and (step + 1) % args.log_every == 0 or step == 0:
            print(f"step {step + 1}: loss {loss_value:.4f} recon {recon.item():.4f} "
                  f"mmd {penalty.item():.5f}", flush=True)
    return times, loss_value


def window_rates(times, args):
    """images/s of each window of --window_steps steps after --warmup_steps."""
    rates = []
    start = args.warmup_steps
    while start + args.window_steps <= len(times) - 1:
        seconds = times[start + args.window_steps] - times[start]
        rates.append(args.window_steps * args.batch_size / seconds)
        start += args.window_steps
    return rates


def matmul_flops_per_second(size, runs=3):
    """Median FLOP/s of a [size, size] fp32 matmul (2 size^3 FLOPs), for context."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(times)


# ----------------------------------------------------------------------------- outputs


@torch.no_grad()
def save_outputs(path, args, encoder, decoder, test_images):
    """Eval-mode outputs for score_npz.py, images NHWC float32 in [0, 1]: `samples` [n, 28, 28,
    1] decoded from N(0, I) draws seeded by --sample_seed, `recon` and `codes` of the test
    images in file order, and `test_mse_per_pixel`."""
    encoder.eval(), decoder.eval()
    generator = torch.Generator().manual_seed(args.sample_seed)
    z = torch.randn(args.num_samples, args.z_dim, generator=generator)
    samples = torch.cat([decoder(z[i:i + 500]) for i in range(0, len(z), 500)])
    codes, recon, squared = [], [], 0.0
    for i in range(0, test_images.shape[0], 500):
        x = test_images[i:i + 500].float() / 255.0
        codes.append(encoder(x))
        recon.append(decoder(codes[-1]))
        squared += float((x - recon[-1]).double().square().sum())
    recon = torch.cat(recon)
    mse = squared / recon.numel()
    nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous().numpy()  # noqa: E731
    np.savez(path, samples=nhwc(samples), recon=nhwc(recon), codes=torch.cat(codes).numpy(),
             test_mse_per_pixel=mse, z_dim=args.z_dim, width_divisor=args.width_divisor,
             steps=args.steps, seed=args.seed, init_std=args.init_std, torch=torch.__version__)
    return mse


# ----------------------------------------------------------------------------- the check


def load_keras_weights(reference, encoder, decoder):
    """Copy wae_tf's variables (keras_reference.py's `w/<layer>/<i>` arrays) into the modules.

    Conv kernels [kh, kw, in, out] and transposed-conv kernels [kh, kw, out, in] both become
    torch's [out, in, kh, kw] / [in, out, kh, kw] by the same transpose (3, 2, 0, 1); dense
    kernels are transposed, and the flatten/reshape next to them reorders (h, w, c) to (c, h, w).
    """
    def get(layer, i):
        return reference[f"w/{layer}/{i}"]

    with torch.no_grad():
        for model in (encoder, decoder):
            for name, module in model.named_children():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    module.weight.copy_(torch.from_numpy(get(name, 0).transpose(3, 2, 0, 1)))
                    if module.bias is not None:
                        module.bias.copy_(torch.from_numpy(get(name, 1)))
                elif isinstance(module, nn.BatchNorm2d):
                    for i, t in enumerate((module.weight, module.bias, module.running_mean,
                                           module.running_var)):
                        t.copy_(torch.from_numpy(get(name, i)))
        side = 2  # the encoder's last feature map: [2, 2, C]
        kernel = get("z", 0)  # [(h, w, c), z]
        kernel = kernel.reshape(side, side, -1, kernel.shape[1]).transpose(2, 0, 1, 3)
        encoder.z.weight.copy_(torch.from_numpy(kernel.reshape(-1, kernel.shape[3]).T.copy()))
        encoder.z.bias.copy_(torch.from_numpy(get("z", 1)))
        kernel = get("project", 0).reshape(-1, BASE, BASE, decoder.first).transpose(0, 3, 1, 2)
        decoder.project.weight.copy_(torch.from_numpy(kernel.reshape(kernel.shape[0], -1).T.copy()))
        bias = get("project", 1).reshape(BASE, BASE, -1).transpose(2, 0, 1)
        decoder.project.bias.copy_(torch.from_numpy(bias.reshape(-1).copy()))


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


# Relative tolerances of --check_against, the first matching prefix. Forward values and the
# first loss agree to float32 rounding; the first gradients to ~2e-4 (torch's own float32
# gradients differ from its float64 ones by that much on the first encoder layers, Keras's by
# < 1e-5). Adam's early updates are ~lr * sign(g), so elements whose gradients are at rounding
# level move apart (measured: the same with Keras's exact update emulated in torch; Keras adds
# epsilon before the bias correction of v, torch after). The moving means after two updates: torch
# float32 vs float64 differ by up to 1.5e-2 at full width (the momentum is checked at step 0);
# betas (0.9, 0.999) instead of (0.5, 0.999) give 0.2 in the third loss. torch keeps the
# unbiased batch variance in running_var, wae_tf the biased one: n / (n - 1), n = 400 positions
# at the encoder's 2x2 layer.
CHECK_TOLERANCES = (("forward", 1e-5), ("step 0: gradient", 1e-3), ("step 0", 1e-5),
                    ("after Adam: moving means", 5e-2), ("after Adam", 1e-3),
                    ("moving variances", 1e-2))


def check_against(args, path):
    """Load keras_reference.py's file, run the same computations, print the relative errors;
    exit status 1 if one exceeds its tolerance (see CHECK_TOLERANCES)."""
    ref = dict(np.load(path))
    args.width_divisor, args.z_dim = int(ref["width_divisor"]), int(ref["z_dim"])
    args.learning_rate = float(ref["learning_rate"])
    encoder, decoder = Encoder(args.width_divisor, args.z_dim), Decoder(args.width_divisor,
                                                                        args.z_dim)
    load_keras_weights(ref, encoder, decoder)
    x = torch.from_numpy(ref["x"]).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        z_eval = encoder(x)
        y_eval = decoder(z_eval).permute(0, 2, 3, 1)
    errors = {"forward: eval codes": _relative(z_eval, ref["z_eval"]),
              "forward: eval images": _relative(y_eval, ref["y_eval"])}
    encoder.train(), decoder.train()
    params = list(encoder.parameters()) + list(decoder.parameters())  # wae_tf's variable order
    optimizer = make_optimizer(params, args)
    bns = [(n, m) for model in (encoder, decoder) for n, m in model.named_children()
           if isinstance(m, nn.BatchNorm2d)]
    for step in range(int(ref["steps"])):
        kind = "step 0" if step == 0 else "after Adam"
        optimizer.zero_grad()
        values = losses(encoder, decoder, x, torch.from_numpy(ref[f"pz{step}"]),
                        float(ref["lambda_reg"]))
        values[0].backward()
        for name, value in zip(("loss", "recon", "penalty"), values):
            errors[f"{kind}: {name} {step}"] = _relative(value.item(), ref[f"{name}{step}"])
        errors[f"{kind}: moving means {step}"] = max(
            _relative(m.running_mean, ref[f"bn{step}/{n}/2"]) for n, m in bns)
        errors[f"moving variances {step}"] = max(
            _relative(m.running_var, ref[f"bn{step}/{n}/3"]) for n, m in bns)
        if step == 0:
            errors["step 0: gradient norms"] = max(
                _relative(p.grad.norm(), norm) for p, norm in zip(params, ref["grad_norms0"]))
        optimizer.step()
    failed = False
    for name, value in errors.items():
        limit = next(tol for prefix, tol in CHECK_TOLERANCES if name.startswith(prefix))
        failed |= not value <= limit
        print(f"{name:32s} relative error {value:.2e} (<= {limit:.0e}) "
              f"{'ok' if value <= limit else 'FAIL'}")
    raise SystemExit(1 if failed else 0)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width_divisor", type=int, default=4)
    p.add_argument("--z_dim", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--steps", type=int, default=105)
    p.add_argument("--lambda_reg", type=float, default=10.0)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = all cores")
    p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--init_std", type=float, default=0.0,
                   help="0 = PyTorch's default init; > 0: weights N(0, std^2), biases 0")
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--window_steps", type=int, default=20)
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument("--fused_adam", action="store_true", help="torch's fused CPU Adam")
    p.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss function")
    p.add_argument("--matmul_size", type=int, default=0,
                   help="> 0: also time a fp32 matmul of this size, for context")
    p.add_argument("--out", default="", help="FILE.npz of samples, test reconstructions, codes")
    p.add_argument("--num_samples", type=int, default=10000)
    p.add_argument("--sample_seed", type=int, default=1)
    p.add_argument("--describe", action="store_true", help="print the layers and exit")
    p.add_argument("--check_against", default="", help="REF.npz of keras_reference.py")
    return p.parse_args(argv)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    if args.check_against:
        check_against(args, args.check_against)
    torch.manual_seed(args.seed)
    encoder, decoder = Encoder(args.width_divisor, args.z_dim), Decoder(args.width_divisor,
                                                                        args.z_dim)
    initialise(encoder, args.init_std), initialise(decoder, args.init_std)
    rows = layer_table((encoder, decoder))
    if args.describe:
        for name, params, flops, shape in rows:
            print(f"{name:22s} {params:>11,d} params {flops:>14,d} forward FLOPs/image "
                  f"out {list(shape)}")
    step_flops = 3 * sum(row[2] for row in rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{sum(row[1] for row in rows):,d} parameters, {step_flops / 1e9:.4f} GFLOP/image/step")
    if args.describe:
        return
    if args.channels_last:
        encoder, decoder = (m.to(memory_format=torch.channels_last) for m in (encoder, decoder))
    times, loss = train(args, encoder, decoder, load_images(args.data_dir, "train"))
    rates = window_rates(times, args)
    rate = statistics.median(rates) if rates else float("nan")
    result = dict(images_per_second=rate, window_images_per_second=rates,
                  step_flops_per_image=step_flops, gflops_per_second=rate * step_flops / 1e9,
                  final_loss=loss, steps=args.steps, width_divisor=args.width_divisor,
                  batch_size=args.batch_size, threads=torch.get_num_threads(),
                  torch=torch.__version__)
    if args.matmul_size:
        result["matmul_gflops_per_second"] = matmul_flops_per_second(args.matmul_size) / 1e9
    if args.out:
        result["test_mse_per_pixel"] = save_outputs(args.out, args, encoder, decoder,
                                                    load_images(args.data_dir, "test"))
    print(f"{rate:.1f} images/s (median of {len(rates)} windows of {args.window_steps} steps), "
          f"{result['gflops_per_second']:.1f} GFLOP/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
