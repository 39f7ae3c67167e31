"""Pure tensor maths of the WAE objective: costs, priors, kernels, MMD, GAN, KL, sliced W2."""

import math

import tensorflow as tf

# Scales of the reconstruction costs in the WAE paper's code (models.py, `reconstruction_loss`).
_RECON_SCALES = {"l2sq": 0.05, "l2": 0.2, "l1": 0.02}
# How each cost grows when the pixels are scaled by r (e.g. r = 2 for [-1, 1] pixels).
_RANGE_POWERS = {"l2sq": 2, "l2": 1, "l1": 1}
# Keeps log(p) and log(1 - p) of the Bernoulli likelihood finite (as Keras's binary crossentropy).
_BERNOULLI_EPSILON = 1e-7

# Kept inside the square root of the "l2" cost so that its gradient is finite (zero) at x == y;
# it adds at most 0.2 * sqrt(1e-8) = 2e-5 to the cost.
_SQRT_EPSILON = 1e-8

# Scales s of the inverse multiquadratics kernel sum (WAE paper code, `mmd_penalty`).
_IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

# Floor of the median-heuristic bandwidth: keeps the RBF kernel finite when every code coincides.
_MIN_SIGMA2 = 1e-12


def reconstruction_cost(x, y, kind, pixel_scale=1.0):
    """The cost c(x, G(z)) of the WAE objective (Tolstikhin et al. 2018, eq. 4), per example.

    Args:
        x: Images in [0, 1], [n, H, W, C] float32.
        y: Reconstructions of `x` in [0, 1], same shape.
        kind: "l2sq" (0.05 * ||x - y||_2^2), "l2" (0.2 * ||x - y||_2) or "l1" (0.02 * ||x - y||_1),
            the scales of the paper's code; or "bernoulli", `bernoulli_nll` of x under the
            means y (the VAE's decoder likelihood). "l2" is computed as
            0.2 * sqrt(||x - y||^2 + 1e-8) so that its gradient stays finite where x == y.
        pixel_scale: The metric costs are those of the pixels scaled by this factor: 2 gives the
            cost of the same images in [-1, 1] (the paper's CelebA), 4x for l2sq and 2x for l2, l1.
            "bernoulli" ignores it: the likelihood of [-1, 1] pixels is that of the [0, 1]
            values they stand for, which x and y already are (`bernoulli_nll`).

    Returns:
        The cost of each example, [n].

    Raises:
        ValueError: If `kind` is unknown.
    """
    def flat(t):  # [n, H, W, C] -> [n, H*W*C]
        return tf.reshape(t, [tf.shape(x)[0], -1])

    if kind == "bernoulli":
        return bernoulli_nll(x, y)
    if kind not in _RECON_SCALES:
        raise ValueError(f"Unknown reconstruction cost {kind!r}; expected one of "
                         f"{', '.join(_RECON_SCALES)}, bernoulli.")
    diff = flat(x - y)
    if kind == "l2sq":
        per_example = tf.reduce_sum(tf.square(diff), axis=1)  # [n]
    elif kind == "l2":
        per_example = tf.sqrt(tf.reduce_sum(tf.square(diff), axis=1)
                              + _SQRT_EPSILON / pixel_scale ** 2)  # [n]
    else:
        per_example = tf.reduce_sum(tf.abs(diff), axis=1)  # [n]
    return _RECON_SCALES[kind] * pixel_scale ** _RANGE_POWERS[kind] * per_example


def bernoulli_nll(x, y, pixel_range="unit"):
    """Negative log-likelihood of images under independent Bernoulli pixels, per example, in nats.

    The VAE's decoder likelihood (Kingma & Welling 2014, appendix C.1; the WAE paper's MNIST
    VAE): -sum_i t_i log p_i + (1 - t_i) log(1 - p_i), with p clipped to [1e-7, 1 - 1e-7] (as
    Keras's binary cross-entropy). For pixels in [-1, 1] and a tanh decoder (the paper's
    CelebA) the targets and means are the [0, 1] values the pixels stand for,
    t = (x + 1) / 2 and p = (G(z) + 1) / 2 = sigmoid(2a) for the tanh's input a: the same
    model as a sigmoid decoder on [0, 1] pixels.

    Args:
        x: Images, [n, H, W, C], in the pixel range.
        y: The decoder's means for them, same shape and range.
        pixel_range: "unit" for [0, 1] pixels, "symmetric" for [-1, 1].

    Returns:
        The negative log-likelihood of each example, [n].

    Raises:
        ValueError: If `pixel_range` is unknown.
    """
    if pixel_range == "symmetric":
        x, y = (x + 1.0) / 2.0, (y + 1.0) / 2.0
    elif pixel_range != "unit":
        raise ValueError(f"Unknown pixel range {pixel_range!r}; expected unit or symmetric.")
    t = tf.reshape(x, [tf.shape(x)[0], -1])  # [n, H*W*C]
    p = tf.clip_by_value(tf.reshape(y, [tf.shape(x)[0], -1]), _BERNOULLI_EPSILON,
                         1.0 - _BERNOULLI_EPSILON)
    return -tf.reduce_sum(t * tf.math.log(p) + (1.0 - t) * tf.math.log(1.0 - p), axis=1)


def sample_prior(kind, num, z_dim, scale, seed):
    """Draws `num` samples of the latent prior P_Z with stateless random ops.

    Args:
        kind: "normal" for N(0, scale^2 I); "sphere" for the uniform distribution on the sphere
            of radius scale (a normal draw, normalised; the paper's code); "uniform" for
            U[-scale, scale]^z_dim.
        num: Number of samples, a python int or a scalar int tensor.
        z_dim: Latent dimension, a python int.
        scale: Scale of the prior, a python float.
        seed: Seed of the stateless ops, a shape-[2] int32/int64 tensor.

    Returns:
        The samples, [num, z_dim] float32. The same seed gives the same samples.

    Raises:
        ValueError: If `kind` is unknown.
    """
    shape = [num, z_dim]
    if kind == "normal":
        return scale * tf.random.stateless_normal(shape, seed=seed, dtype=tf.float32)
    if kind == "sphere":
        z = tf.random.stateless_normal(shape, seed=seed, dtype=tf.float32)  # [num, z_dim]
        return scale * tf.math.l2_normalize(z, axis=1)
    if kind == "uniform":
        return tf.random.stateless_uniform(shape, seed=seed, minval=-scale, maxval=scale,
                                           dtype=tf.float32)
    raise ValueError(f"Unknown prior {kind!r}; expected normal, sphere or uniform.")


def sample_prior_per_seed(kind, z_dim, scale, seeds):
    """One prior draw per int64 seed [N] -> [N, z_dim], each from the seed pair (seed, 0): a
    seed's draw does not depend on the other seeds (the export's `sample` contract)."""
    def draw(one_seed):
        pair = tf.stack([one_seed, tf.zeros_like(one_seed)])
        return sample_prior(kind, 1, z_dim, scale, pair)[0]  # [z_dim]
    return tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec([z_dim], tf.float32))


def normal_log_density(z, scale):
    """log N(z; 0, scale^2 I), summed over the latent dimensions.

    Args:
        z: Codes, [n, z_dim].
        scale: Standard deviation of the normal prior, a python float or scalar tensor.

    Returns:
        The log-density of each code, [n].
    """
    scale = tf.cast(scale, z.dtype)
    z_dim = tf.cast(tf.shape(z)[1], z.dtype)
    sq_norm = tf.reduce_sum(tf.square(z), axis=1)  # [n]
    return (-0.5 * sq_norm / tf.square(scale)
            - z_dim * (tf.math.log(scale) + 0.5 * math.log(2.0 * math.pi)))


def squared_distances(x, y):
    """Pairwise squared Euclidean distances ||x_i - y_j||^2 = ||x_i||^2 + ||y_j||^2 - 2 x_i.y_j.

    One matmul; the result is clipped at 0 against rounding. Its gradient is finite everywhere,
    including at coinciding points (no square root).

    Args:
        x: Points, [n, d].
        y: Points, [m, d].

    Returns:
        The squared distances, [n, m].
    """
    x_sq = tf.reduce_sum(tf.square(x), axis=1, keepdims=True)  # [n, 1]
    y_sq = tf.reduce_sum(tf.square(y), axis=1, keepdims=True)  # [m, 1]
    dots = tf.matmul(x, y, transpose_b=True)  # [n, m]
    return tf.maximum(x_sq + tf.transpose(y_sq) - 2.0 * dots, 0.0)


def prior_squared_distance(kind, z_dim, scale):
    """E||z - z'||^2 for independent z, z' of the prior: the IMQ kernel's base constant.

    normal N(0, s^2 I): 2 d s^2; uniform U[-s, s]^d: 2 d s^2 / 3 (each coordinate's variance is
    s^2 / 3); sphere of radius s: 2 s^2 (E<z, z'> = 0). The paper's code uses d for uniform and
    2 for the sphere, the same values at s = 1 up to the uniform's factor 2/3.

    Args:
        kind: "normal", "sphere" or "uniform".
        z_dim: Latent dimension d, a python int.
        scale: Scale s of the prior, a python float.

    Returns:
        The expected squared distance, a python float.
    """
    variances = {"normal": 2.0 * z_dim, "uniform": 2.0 * z_dim / 3.0, "sphere": 2.0}
    if kind not in variances:
        raise ValueError(f"Unknown prior {kind!r}; expected normal, sphere or uniform.")
    return variances[kind] * float(scale) ** 2


def imq_kernel(d2, base):
    """Inverse multiquadratics kernel summed over scales, as in the WAE paper's code (Sec. 4).

    k(x, y) = sum_s C_s / (C_s + ||x - y||^2), C_s = s * base, for s in (0.1, 0.2, 0.5, 1, 2, 5,
    10); base is E||z - z'||^2 under the prior (prior_squared_distance; 2 d s^2 for N(0, s^2 I)).

    Args:
        d2: Squared distances, any shape.
        base: The base constant, a number or scalar tensor.

    Returns:
        The kernel values, the shape of `d2`.
    """
    base = tf.cast(base, d2.dtype)
    total = None  # not zeros_like: that would be one more pass over a possibly huge matrix
    for s in _IMQ_SCALES:
        c = s * base
        total = c / (c + d2) if total is None else total + c / (c + d2)
    return total


def rbf_kernel(d2, sigma2):
    """Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 sigma2)).

    Args:
        d2: Squared distances, any shape.
        sigma2: Bandwidth sigma^2 > 0, a number or scalar tensor.

    Returns:
        The kernel values, the shape of `d2`.
    """
    return tf.exp(-d2 / (2.0 * tf.cast(sigma2, d2.dtype)))


def _median(values):
    """Median of a 1-D tensor, averaging the two middle values when their number is even."""
    values = tf.sort(tf.reshape(values, [-1]))
    count = tf.size(values)
    return 0.5 * (values[(count - 1) // 2] + values[count // 2])


def median_heuristic_sigma2(qz, pz):
    """RBF bandwidth of the WAE paper's code: median(cross distances) + median(within-Q).

    sigma^2 = median_{i,j} ||qz_i - pz_j||^2 + median_{i<j} ||qz_i - qz_j||^2 (`mmd_penalty` of
    the paper's wae.py, which takes each median as the ((n^2 - n) / 2)-th largest entry; here
    the exact median of the n*m cross pairs and of the distinct within-Q pairs). Wrapped in
    tf.stop_gradient: the bandwidth is a per-batch constant.

    Args:
        qz: Codes, [n, z_dim], n >= 2.
        pz: Prior samples, [m, z_dim].

    Returns:
        The scalar sigma^2.
    """
    within = squared_distances(qz, qz)  # [n, n]
    index = tf.range(tf.shape(qz)[0])  # [n]
    upper = index[:, None] < index[None, :]  # [n, n], True where i < j
    sigma2 = _median(squared_distances(qz, pz)) + _median(tf.boolean_mask(within, upper))
    return tf.stop_gradient(sigma2)


def mmd_penalty(qz, pz, kernel="imq", imq_base=2.0, rbf_sigma2=0.0):
    """Unbiased estimate of MMD_k(Q_Z, P_Z)^2, the WAE-MMD penalty (Tolstikhin et al. 2018, Alg. 2).

    MMD = mean_{i != j} k(qz_i, qz_j) + mean_{i != j} k(pz_i, pz_j) - 2 mean_{i, j} k(qz_i, pz_j).
    The three kernel blocks are computed separately (3n^2 entries, not the pooled sample's 4n^2),
    and summed whole minus their diagonal: no slices of a big matrix, whose gradients would be
    dense scatters. No gradient flows through the prior's block. The estimate can be slightly
    negative. The blocks and their sums are one XLA cluster (`_mmd_terms`).

    Args:
        qz: Codes of the encoder, [n, z_dim], n >= 2.
        pz: Samples of the prior, [n, z_dim]: as many as codes (the estimator's weights assume it).
        kernel: "imq" (`imq_kernel`) or "rbf" (`rbf_kernel`).
        imq_base: The IMQ base constant, E||z - z'||^2 under the prior (prior_squared_distance).
        rbf_sigma2: RBF bandwidth, a python float; 0 selects `median_heuristic_sigma2` per batch.

    Returns:
        The scalar penalty, in qz's dtype.

    Raises:
        ValueError: If `kernel` is unknown, or qz and pz have different sizes.
    """
    if qz.shape[0] is not None and pz.shape[0] is not None and qz.shape[0] != pz.shape[0]:
        raise ValueError(f"mmd_penalty needs as many prior samples as codes, got {pz.shape[0]} "
                         f"and {qz.shape[0]}.")
    tf.debugging.assert_equal(tf.shape(qz)[0], tf.shape(pz)[0],
                              message="mmd_penalty needs as many prior samples as codes")
    if kernel == "imq":
        param = tf.cast(imq_base, qz.dtype)
    elif kernel == "rbf":
        if rbf_sigma2 > 0:
            param = tf.cast(rbf_sigma2, qz.dtype)
        else:
            param = tf.maximum(median_heuristic_sigma2(qz, pz), _MIN_SIGMA2)
    else:
        raise ValueError(f"Unknown MMD kernel {kernel!r}; expected imq or rbf.")

    @tf.custom_gradient
    def mmd(qz, pz):
        value, grad_qz = _mmd_value_and_grad(qz, pz, param, kernel, False)

        def grad(upstream):  # the prior's gradient only runs where something uses it
            grad_pz = _mmd_value_and_grad(qz, pz, param, kernel, True)[1]
            return upstream * grad_qz, upstream * grad_pz
        return value, grad
    return mmd(qz, pz)


@tf.function(jit_compile=True, autograph=False)
def _mmd_value_and_grad(qz, pz, param, kernel, wrt_prior):
    """mmd_penalty's value and its gradient with respect to qz (or pz), in one XLA cluster.

    XLA fuses the ~25 elementwise passes over each [n, n] block (7 IMQ scales, forward and
    backward) into one loop, several times faster than TF ops (docs/performance.md). Computing
    the gradient here, rather than by autodiff of a compiled forward, keeps the blocks from
    being written out for the backward pass.
    """
    source = pz if wrt_prior else qz
    with tf.GradientTape() as tape:
        tape.watch(source)
        within_q, within_p, cross = _mmd_terms(qz, pz, param, kernel)
        value = within_q + within_p - 2.0 * cross  # float64
    return tf.cast(value, qz.dtype), tape.gradient(value, source)


def _mmd_terms(qz, pz, param, kernel):
    """The three mean kernel values of mmd_penalty, float64 [] each; param is the IMQ base
    constant (imq) or sigma^2 (rbf).

    Each block is summed per row in float32, then over rows in float64: under XLA a plain
    float32 sum of the n^2 terms lost too much of a value that is a small difference of large
    sums; this one lands closer to a float64 reference than TF's own float32 sum does
    (docs/performance.md).
    """
    if kernel == "imq":
        k = lambda d2: imq_kernel(d2, param)  # noqa: E731
    else:
        k = lambda d2: rbf_kernel(d2, param)  # noqa: E731
    nf = tf.cast(tf.shape(qz)[0], tf.float64)
    off_diagonal = nf * nf - nf
    within_q = _off_diagonal_sum(k(squared_distances(qz, qz))) / off_diagonal  # [n, n] summed
    within_p = _off_diagonal_sum(k(squared_distances(pz, pz))) / off_diagonal
    cross = _accurate_sum(k(squared_distances(qz, pz))) / (nf * nf)
    return within_q, within_p, cross


def _accurate_sum(matrix):
    """Sum of a matrix [n, m] as float64: float32 row sums, then their float64 sum."""
    return tf.reduce_sum(tf.cast(tf.reduce_sum(matrix, axis=1), tf.float64))


def _off_diagonal_sum(matrix):
    """Sum of a square matrix [n, n] without its diagonal, as float64."""
    diagonal = tf.reduce_sum(tf.cast(tf.linalg.diag_part(matrix), tf.float64))
    return _accurate_sum(matrix) - diagonal


def gan_encoder_loss(logits_qz):
    """Non-saturating adversarial loss of the encoder in WAE-GAN (Tolstikhin et al. 2018, Alg. 1).

    Sigmoid cross-entropy of the discriminator's logits on the codes against the label 1 ("from
    the prior"): -log sigmoid(logit) = softplus(-logit).

    Args:
        logits_qz: Discriminator logits on the codes, [n] or [n, 1].

    Returns:
        The loss of each example, [n].
    """
    logits = tf.reshape(logits_qz, [-1])  # [n]
    return tf.nn.softplus(-logits)


def gan_discriminator_loss(logits_pz, logits_qz):
    """Loss of the latent discriminator in WAE-GAN (Tolstikhin et al. 2018, Alg. 1).

    Prior samples are real (label 1), codes are fake (label 0):
    -log sigmoid(logit_pz) - log(1 - sigmoid(logit_qz)) = softplus(-logit_pz) + softplus(logit_qz).

    Args:
        logits_pz: Discriminator logits on prior samples, [n] or [n, 1].
        logits_qz: Discriminator logits on the codes, [n] or [n, 1].

    Returns:
        The loss of each example pair, [n].
    """
    real = tf.reshape(logits_pz, [-1])  # [n]
    fake = tf.reshape(logits_qz, [-1])  # [n]
    return tf.nn.softplus(-real) + tf.nn.softplus(fake)


def kl_to_normal_prior(mean, log_var, prior_scale=1.0):
    """KL(N(mean, diag(exp(log_var))) || N(0, prior_scale^2 I)), the VAE penalty, in closed form.

    Per dimension: 0.5 * (var / s^2 + mean^2 / s^2 - 1 - log var + log s^2).

    Args:
        mean: Means of the encoder, [n, z_dim].
        log_var: Log-variances of the encoder, [n, z_dim].
        prior_scale: Standard deviation s of the prior.

    Returns:
        The divergence of each example, summed over latent dimensions, [n].
    """
    prior_var = tf.square(tf.cast(prior_scale, mean.dtype))
    per_dim = 0.5 * ((tf.exp(log_var) + tf.square(mean)) / prior_var - 1.0 - log_var
                     + tf.math.log(prior_var))  # [n, z_dim]
    return tf.reduce_sum(per_dim, axis=1)


def moment_matching_loss(qz, pz):
    """Encoder pre-training loss of the WAE paper's code (`pretrain_loss`): how far the codes'
    mean and covariance are from the prior sample's.

    mean_k (mean(qz)_k - mean(pz)_k)^2 + mean_{k,l} (cov(qz)_kl - cov(pz)_kl)^2, with unbiased
    covariances (divided by n - 1).

    Args:
        qz: Codes, [n, z_dim], n >= 2.
        pz: Prior samples, [n, z_dim].

    Returns:
        The scalar loss.
    """
    def moments(z):
        mean = tf.reduce_mean(z, axis=0, keepdims=True)  # [1, z_dim]
        centred = z - mean
        count = tf.cast(tf.shape(z)[0], z.dtype)
        return mean, tf.matmul(centred, centred, transpose_a=True) / (count - 1.0)  # [d, d]
    mean_q, cov_q = moments(qz)
    mean_p, cov_p = moments(pz)
    return tf.reduce_mean(tf.square(mean_q - mean_p)) + tf.reduce_mean(tf.square(cov_q - cov_p))


def random_directions(z_dim, num, seed):
    """`num` random directions, uniform on the unit sphere of R^z_dim (stateless).

    Args:
        z_dim: Latent dimension.
        num: Number of directions L.
        seed: Seed of the stateless draw, a shape-[2] int tensor.

    Returns:
        Unit-norm columns, [z_dim, num] float32.
    """
    theta = tf.random.stateless_normal([z_dim, num], seed=seed, dtype=tf.float32)  # [z_dim, L]
    return tf.math.l2_normalize(theta, axis=0)


def sliced_wasserstein(qz, pz, directions):
    """Squared sliced Wasserstein-2 distance between two equal-size samples (Monte-Carlo estimate).

    SW_2^2 = E_theta W_2^2(theta.Q_Z, theta.P_Z). In one dimension the optimal coupling of two
    empirical measures of n points matches them in sorted order, so W_2^2 per direction is the mean
    squared difference of the sorted projections (Deshpande et al. 2018; Kolouri et al. 2019).

    Args:
        qz: Codes, [n, z_dim].
        pz: Prior samples, [n, z_dim].
        directions: Unit directions theta, [z_dim, L].

    Returns:
        The scalar estimate: mean over (n, L) of the squared differences of the sorted projections.
    """
    proj_q = tf.sort(tf.matmul(qz, directions), axis=0)  # [n, L]
    proj_p = tf.sort(tf.matmul(pz, directions), axis=0)  # [n, L]
    return tf.reduce_mean(tf.square(proj_q - proj_p))
