"""chainer computes right on NumPy 2, for what ResNet-50 training uses (on the CPU).

NumPy 2 changed how scalars promote (NEP 50): a NumPy float64 scalar now makes a float32 or
float16 array float64, Python scalars are "weak" (they take the array's dtype), and a
running sum that starts as a Python float stays in the dtype of the NumPy scalars added to
it. chainer 7.8.1 was written for the old rules, so each function here is compared with a
float64 NumPy reference written below, with dtypes checked: float32 stays float32 and
float16 stays float16, outputs and gradients alike. Backward passes are also checked
numerically with ``chainer.gradient_check`` on float64 inputs. No RuntimeWarning (overflow,
invalid value) may be raised anywhere.
"""
import distributed  # noqa: F401  (its shims must be in place before chainer is imported)

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import gradient_check
from chainer.optimizer_hooks import WeightDecay

pytestmark = pytest.mark.filterwarnings('error::RuntimeWarning')

F16, F32, F64 = numpy.float16, numpy.float32, numpy.float64
# Tolerances against a float64 reference computed from the same (rounded) inputs.
TOL = {F16: dict(rtol=1e-2, atol=1e-2), F32: dict(rtol=1e-5, atol=1e-5),
       F64: dict(rtol=1e-12, atol=1e-12)}


def rng(seed=0):
    return numpy.random.RandomState(seed)


def uniform(shape, dtype, seed=0, low=-1, high=1):
    return rng(seed).uniform(low, high, shape).astype(dtype)


def distinct(shape, dtype, seed=0):
    """Values 1/16 apart, none 0, exact in float16: max and relu meet no tie or kink."""
    values = (rng(seed).permutation(int(numpy.prod(shape))) - 7.5) / 16.0
    return values.reshape(shape).astype(dtype)


def close(actual, expected, dtype):
    numpy.testing.assert_allclose(numpy.asarray(actual, F64), expected, **TOL[dtype])


def run(fn, inputs, gy_seed=9):
    """Forward ``fn`` on Variables of ``inputs``, backward with a random output gradient.

    Returns (output array, output gradient, input gradients)."""
    xs = [chainer.Variable(a) for a in inputs]
    y = fn(*xs)
    gy = uniform(y.shape, y.dtype, gy_seed)
    y.grad = gy
    y.backward()
    return y.array, gy, [x.grad for x in xs]


def assert_dtypes(y, grads, inputs, dtype):
    assert y.dtype == dtype, y.dtype
    for g, a in zip(grads, inputs):
        assert g is not None and g.dtype == a.dtype, (g if g is None else g.dtype, a.dtype)


def as64(*arrays):
    return [None if a is None else numpy.asarray(a, F64) for a in arrays]


# --- convolution_2d ----------------------------------------------------------------------

def conv_ref(x, W, b, stride, pad):
    x, W, b = as64(x, W, b)
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    y = numpy.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = numpy.einsum('nckl,ockl->no', patch, W)
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv_grad_ref(x, W, gy, stride, pad):
    x, W, gy = as64(x, W, gy)
    h, w = x.shape[2:]
    kh, kw = W.shape[2:]
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    gxp, gW = numpy.zeros_like(xp), numpy.zeros_like(W)
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            win = (slice(None), slice(None), slice(i * stride, i * stride + kh),
                   slice(j * stride, j * stride + kw))
            gW += numpy.einsum('no,nckl->ockl', gy[:, :, i, j], xp[win])
            gxp[win] += numpy.einsum('no,ockl->nckl', gy[:, :, i, j], W)
    return gxp[:, :, pad:pad + h, pad:pad + w], gW, gy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize('dtype', [F32, F16])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('stride,pad', [(1, 0), (2, 1)])
def test_convolution_2d(dtype, bias, stride, pad):
    x = uniform((2, 3, 5, 5), dtype, 1)
    W = uniform((4, 3, 3, 3), dtype, 2)
    inputs = [x, W] + ([uniform((4,), dtype, 3)] if bias else [])

    def conv(*v):
        return F.convolution_2d(*v, stride=stride, pad=pad)

    y, gy, grads = run(conv, inputs)
    assert_dtypes(y, grads, inputs, dtype)
    close(y, conv_ref(x, W, inputs[2] if bias else None, stride, pad), dtype)
    for got, want in zip(grads, conv_grad_ref(x, W, gy, stride, pad)):
        close(got, want, dtype)


@pytest.mark.parametrize('bias', [True, False])
def test_convolution_2d_gradient_check(bias):
    inputs = [uniform((2, 3, 5, 5), F64, 1), uniform((4, 3, 3, 3), F64, 2)]
    inputs += [uniform((4,), F64, 3)] if bias else []
    gradient_check.check_backward(
        lambda *v: F.convolution_2d(*v, stride=2, pad=1), tuple(inputs),
        uniform((2, 4, 3, 3), F64, 4), atol=1e-6, rtol=1e-6)


# --- batch normalization -----------------------------------------------------------------

EPS = 2e-5
AXES = (0, 2, 3)


def per_channel(a):
    return a[None, :, None, None]


def bn_ref(x, gamma, beta, gy, eps=EPS):
    """Train-mode batch normalization over (N, H, W): y, (gx, ggamma, gbeta), mean, var."""
    x, gamma, beta, gy = as64(x, gamma, beta, gy)
    mean, var = x.mean(axis=AXES), x.var(axis=AXES)
    inv_std = 1 / numpy.sqrt(var + eps)
    x_hat = (x - per_channel(mean)) * per_channel(inv_std)
    y = per_channel(gamma) * x_hat + per_channel(beta)
    m = x.size // gamma.size
    ggamma, gbeta = (gy * x_hat).sum(axis=AXES), gy.sum(axis=AXES)
    gx = per_channel(gamma * inv_std / m) * (
        m * gy - per_channel(gbeta) - x_hat * per_channel(ggamma))
    return y, (gx, ggamma, gbeta), mean, var


def fixed_bn_ref(x, gamma, beta, mean, var, eps=EPS):
    x, gamma, beta, mean, var = as64(x, gamma, beta, mean, var)
    return (per_channel(gamma) * (x - per_channel(mean)) / per_channel(numpy.sqrt(var + eps))
            + per_channel(beta))


BN_DTYPES = [(F32, F32), (F16, F16), (F16, F32)]  # (x, parameters): mixed16 keeps BN in fp32


@pytest.mark.parametrize('x_dtype,p_dtype', BN_DTYPES)
@pytest.mark.parametrize('scalar', [float, F64], ids=['python', 'float64'])
def test_batch_normalization_train(x_dtype, p_dtype, scalar):
    x = uniform((4, 3, 2, 3), x_dtype, 1, -2, 3)
    gamma, beta = uniform((3,), p_dtype, 2, 0.5, 1.5), uniform((3,), p_dtype, 3)
    mean0, var0 = uniform((3,), p_dtype, 4), uniform((3,), p_dtype, 5, 0.5, 1.5)
    running_mean, running_var = mean0.copy(), var0.copy()
    decay = 0.9

    def bn(*v):
        return F.batch_normalization(*v, eps=scalar(EPS), running_mean=running_mean,
                                     running_var=running_var, decay=scalar(decay))

    y, gy, grads = run(bn, [x, gamma, beta])
    assert_dtypes(y, grads, [x, gamma, beta], x_dtype)
    y_ref, grads_ref, mean, var = bn_ref(x, gamma, beta, gy)
    tol = x_dtype if x_dtype == F16 else p_dtype
    close(y, y_ref, tol)
    for got, want in zip(grads, grads_ref):
        close(got, want, tol)
    # running averages: the variance with the unbiased (m / (m - 1)) correction
    assert running_mean.dtype == running_var.dtype == p_dtype
    m = x.size // 3
    close(running_mean, decay * mean0.astype(F64) + (1 - decay) * mean, tol)
    close(running_var, decay * var0.astype(F64) + (1 - decay) * var * m / (m - 1), tol)


def test_batch_normalization_gradient_check():
    inputs = (uniform((4, 3, 2, 3), F64, 1, -2, 3), uniform((3,), F64, 2, 0.5, 1.5),
              uniform((3,), F64, 3))
    gradient_check.check_backward(
        lambda *v: F.batch_normalization(*v, eps=EPS), inputs,
        uniform((4, 3, 2, 3), F64, 4), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('x_dtype,p_dtype', BN_DTYPES)
def test_fixed_batch_normalization(x_dtype, p_dtype):
    x = uniform((2, 3, 2, 2), x_dtype, 1, -2, 3)
    params = [uniform((3,), p_dtype, 2, 0.5, 1.5), uniform((3,), p_dtype, 3),
              uniform((3,), p_dtype, 4), uniform((3,), p_dtype, 5, 0.5, 1.5)]
    y, _, grads = run(lambda *v: F.fixed_batch_normalization(*v, eps=EPS), [x] + params)
    assert_dtypes(y, grads, [x] + params, x_dtype)
    close(y, fixed_bn_ref(x, *params), x_dtype if x_dtype == F16 else p_dtype)


def test_fixed_batch_normalization_gradient_check():
    inputs = (uniform((2, 3, 2, 2), F64, 1), uniform((3,), F64, 2, 0.5, 1.5),
              uniform((3,), F64, 3), uniform((3,), F64, 4), uniform((3,), F64, 5, 0.5, 1.5))
    gradient_check.check_backward(
        lambda *v: F.fixed_batch_normalization(*v, eps=EPS), inputs,
        uniform((2, 3, 2, 2), F64, 6), atol=1e-6, rtol=1e-6)


def test_batch_normalization_link():
    bn = L.BatchNormalization(3, decay=0.9, eps=EPS)
    xs = [uniform((4, 3, 2, 2), F32, seed, -1, 2) for seed in (1, 2)]
    avg_mean, avg_var = numpy.zeros(3), numpy.ones(3)
    for x in xs:
        y = bn(x)
        gy = uniform(y.shape, F32, 3)
        bn.cleargrads()
        y.grad = gy
        y.backward()
        y_ref, (_, ggamma, gbeta), mean, var = bn_ref(x, bn.gamma.array, bn.beta.array, gy)
        assert y.dtype == bn.gamma.grad.dtype == bn.beta.grad.dtype == F32
        close(y.array, y_ref, F32)
        close(bn.gamma.grad, ggamma, F32)
        close(bn.beta.grad, gbeta, F32)
        m = x.size // 3
        avg_mean = 0.9 * avg_mean + 0.1 * mean
        avg_var = 0.9 * avg_var + 0.1 * var * m / (m - 1)
    assert bn.avg_mean.dtype == bn.avg_var.dtype == F32
    close(bn.avg_mean, avg_mean, F32)
    close(bn.avg_var, avg_var, F32)
    # test mode normalizes with the running averages
    x = uniform((2, 3, 2, 2), F32, 4)
    with chainer.using_config('train', False):
        y = bn(x)
    assert y.dtype == F32
    close(y.array, fixed_bn_ref(x, bn.gamma.array, bn.beta.array, avg_mean, avg_var), F32)


# --- relu, pooling, average ------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [F32, F16])
def test_relu(dtype):
    x = distinct((2, 3, 4), dtype)
    y, gy, (gx,) = run(F.relu, [x])
    assert_dtypes(y, [gx], [x], dtype)
    close(y, numpy.maximum(x.astype(F64), 0), dtype)
    close(gx, gy.astype(F64) * (x > 0), dtype)
    gradient_check.check_backward(F.relu, distinct((2, 3, 4), F64), uniform((2, 3, 4), F64))


def max_pool_ref(x, k, s, p):
    """chainer's default cover_all=True: the last window may hang over the padded edge."""
    x = numpy.asarray(x, F64)
    h, w = x.shape[2:]
    oh, ow = (h + 2 * p - k + s - 1) // s + 1, (w + 2 * p - k + s - 1) // s + 1
    xp = numpy.pad(x, ((0, 0), (0, 0), (p, p + s - 1), (p, p + s - 1)),
                   constant_values=-numpy.inf)
    y = numpy.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = xp[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return y


def max_pool_grad_ref(x, gy, k, s, p):
    """Each output's gradient goes to the (single) maximum of its window."""
    x = numpy.asarray(x, F64)
    h, w = x.shape[2:]
    xp = numpy.pad(x, ((0, 0), (0, 0), (p, p + s - 1), (p, p + s - 1)),
                   constant_values=-numpy.inf)
    gxp = numpy.zeros_like(xp)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(gy.shape[2]):
                for j in range(gy.shape[3]):
                    win = xp[n, c, i * s:i * s + k, j * s:j * s + k]
                    a, b = numpy.unravel_index(numpy.argmax(win), win.shape)
                    gxp[n, c, i * s + a, j * s + b] += gy[n, c, i, j]
    return gxp[:, :, p:p + h, p:p + w]


@pytest.mark.parametrize('dtype', [F32, F16])
@pytest.mark.parametrize('k,s,p', [(3, 2, 0), (3, 2, 1), (2, 2, 0)])  # (3, 2, 0): ResNet pool1
def test_max_pooling_2d(dtype, k, s, p):
    x = distinct((2, 2, 6, 7), dtype)
    y, gy, (gx,) = run(lambda v: F.max_pooling_2d(v, k, s, p), [x])
    assert_dtypes(y, [gx], [x], dtype)
    close(y, max_pool_ref(x, k, s, p), dtype)
    close(gx, max_pool_grad_ref(x, gy.astype(F64), k, s, p), dtype)


def test_max_pooling_2d_gradient_check():
    gradient_check.check_backward(lambda v: F.max_pooling_2d(v, 3, 2, 1),
                                  distinct((2, 2, 6, 7), F64), uniform((2, 2, 4, 4), F64))


def avg_pool_ref(x, k, s, p):
    """chainer's default: zero padding, every window divided by k * k."""
    x = numpy.asarray(x, F64)
    h, w = x.shape[2:]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = numpy.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = numpy.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = xp[:, :, i * s:i * s + k, j * s:j * s + k].sum(axis=(2, 3)) / k ** 2
    return y


@pytest.mark.parametrize('dtype', [F32, F16])
@pytest.mark.parametrize('k,s,p', [(3, 2, 1), (2, 2, 0)])
def test_average_pooling_2d(dtype, k, s, p):
    x = uniform((2, 2, 6, 6), dtype)
    y, gy, (gx,) = run(lambda v: F.average_pooling_2d(v, k, s, p), [x])
    assert_dtypes(y, [gx], [x], dtype)
    close(y, avg_pool_ref(x, k, s, p), dtype)
    # the pooling is linear, so its gradient is its transpose applied to gy
    basis = numpy.eye(x.size).reshape((x.size,) + x.shape)
    matrix = numpy.stack([avg_pool_ref(e, k, s, p).ravel() for e in basis], axis=1)
    close(gx, (matrix.T @ gy.astype(F64).ravel()).reshape(x.shape), dtype)
    gradient_check.check_backward(lambda v: F.average_pooling_2d(v, k, s, p),
                                  uniform((2, 2, 6, 6), F64), uniform(y.shape, F64))


@pytest.mark.parametrize('dtype', [F32, F16])
def test_global_average(dtype):
    # ResNet's pool5 is F.average over the spatial axes
    x = uniform((2, 3, 4, 5), dtype)
    y, gy, (gx,) = run(lambda v: F.average(v, axis=(2, 3)), [x])
    assert_dtypes(y, [gx], [x], dtype)
    close(y, x.astype(F64).mean(axis=(2, 3)), dtype)
    close(gx, numpy.broadcast_to(gy.astype(F64)[:, :, None, None] / 20, x.shape), dtype)


# --- linear ------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [F32, F16])
@pytest.mark.parametrize('bias', [True, False])
def test_linear(dtype, bias):
    x, W = uniform((3, 4), dtype, 1), uniform((5, 4), dtype, 2)
    inputs = [x, W] + ([uniform((5,), dtype, 3)] if bias else [])
    y, gy, grads = run(F.linear, inputs)
    assert_dtypes(y, grads, inputs, dtype)
    x64, W64, gy64 = as64(x, W, gy)
    close(y, x64 @ W64.T + (inputs[2].astype(F64) if bias else 0), dtype)
    close(grads[0], gy64 @ W64, dtype)
    close(grads[1], gy64.T @ x64, dtype)
    if bias:
        close(grads[2], gy64.sum(axis=0), dtype)
    gradient_check.check_backward(
        F.linear, tuple(a.astype(F64) for a in inputs), gy64, atol=1e-7, rtol=1e-7)


# --- softmax cross entropy, accuracy, Classifier ------------------------------------------------

def log_softmax_ref(x):
    x = numpy.asarray(x, F64)
    z = x - x.max(axis=1, keepdims=True)
    return z - numpy.log(numpy.exp(z).sum(axis=1, keepdims=True))


def sce_ref(x, t, class_weight=None, normalize=True):
    """Mean loss over the labels that are not -1 (or over the batch), and d(loss)/dx."""
    log_p = log_softmax_ref(x)
    valid = t != -1
    rows = numpy.arange(len(t))[valid]
    w = numpy.ones(x.shape[1]) if class_weight is None else numpy.asarray(class_weight, F64)
    losses = -log_p[rows, t[valid]] * w[t[valid]]
    count = valid.sum() if normalize else len(t)
    grad = numpy.exp(log_p)
    grad[rows, t[valid]] -= 1
    grad[~valid] = 0
    return losses.sum() / max(count, 1), grad / max(count, 1)


@pytest.mark.parametrize('dtype', [F32, F16])
def test_softmax_cross_entropy(dtype):
    x = uniform((6, 5), dtype, 1, -3, 3)
    t = numpy.array([0, 4, -1, 2, 2, 1], numpy.int32)
    y, gy, (gx, _) = run(lambda v, u: F.softmax_cross_entropy(v, u), [x, t])
    assert y.dtype == gx.dtype == dtype and y.shape == ()
    loss, grad = sce_ref(x, t)
    close(y, loss, dtype)
    close(gx, grad * gy.astype(F64), dtype)
    # per sample, no reduction
    y = F.softmax_cross_entropy(x, t, reduce='no')
    assert y.dtype == dtype
    close(y.array, numpy.where(t == -1, 0, -log_softmax_ref(x)[numpy.arange(6), t]), dtype)
    gradient_check.check_backward(
        lambda v: F.softmax_cross_entropy(v, t), x.astype(F64), None, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize('normalize', [True, False])
def test_softmax_cross_entropy_float16_large_batch(normalize):
    # The batch's summed loss (~2e5 here) is far above float16's maximum (65504): chainer
    # must accumulate in float32. (chainer's own test of this case fails on NumPy 2 in its
    # reference, whose Python-float running sum now stays float16 and overflows; this is a
    # float64 reference.)
    n = 1 << 17
    x = uniform((n, 2), F16, 1)
    t = rng(2).randint(0, 2, n).astype(numpy.int32)
    t[::7] = -1
    class_weight = uniform((2,), F16, 3, 0, 4)
    y = F.softmax_cross_entropy(x, t, normalize=normalize, class_weight=class_weight)
    assert y.dtype == F16
    loss, _ = sce_ref(x, t, class_weight, normalize)
    assert loss * n > 65504
    numpy.testing.assert_allclose(float(y.array), loss, rtol=2e-3)


@pytest.mark.parametrize('dtype', [F32, F16])
def test_accuracy(dtype):
    y = distinct((7, 4), dtype)
    pred = y.argmax(axis=1)
    t = pred.copy().astype(numpy.int32)
    t[[1, 4]] = (t[[1, 4]] + 1) % 4  # 5 of 7 right
    acc = F.accuracy(y, t)
    assert acc.dtype == dtype
    close(acc.array, 5 / 7, dtype)
    t[[0, 1]] = -1  # one right and one wrong ignored: 4 of 5 right
    acc = F.accuracy(y, t, ignore_label=-1)
    assert acc.dtype == dtype
    close(acc.array, 4 / 5, dtype)
    t[:] = -1
    assert float(F.accuracy(y, t, ignore_label=-1).array) == 0


def test_classifier():
    predictor = L.Linear(4, 3, initialW=uniform((3, 4), F32, 1), initial_bias=0.1)
    model = L.Classifier(predictor)
    x = uniform((5, 4), F32, 2)
    t = numpy.array([0, 1, 2, 1, 0], numpy.int32)
    reporter, observation = chainer.Reporter(), {}
    reporter.add_observer('main', model)
    with reporter.scope(observation):
        loss = model(x, t)
    logits = x.astype(F64) @ predictor.W.array.astype(F64).T + 0.1
    want, grad = sce_ref(logits, t)
    assert loss.dtype == F32 and loss.shape == ()
    close(loss.array, want, F32)
    assert float(observation['main/loss'].array) == float(loss.array)
    close(observation['main/accuracy'].array, (logits.argmax(axis=1) == t).mean(), F32)
    model.cleargrads()
    loss.backward()
    assert predictor.W.grad.dtype == predictor.b.grad.dtype == F32
    close(predictor.W.grad, grad.T @ x.astype(F64), F32)
    close(predictor.b.grad, grad.sum(axis=0), F32)


# --- MomentumSGD with weight decay ---------------------------------------------------------------

def momentum_sgd_ref(params, grads_per_step, lr, momentum, rate):
    """float64 MomentumSGD with WeightDecay: g += rate * p; v = momentum * v - lr * g;
    p += v."""
    params = {k: numpy.asarray(v, F64) for k, v in params.items()}
    v = {k: numpy.zeros_like(p) for k, p in params.items()}
    for grads in grads_per_step:
        for k, p in params.items():
            g = numpy.asarray(grads[k], F64) + rate * p
            v[k] = momentum * v[k] - lr * g
            params[k] = p + v[k]
    return params, v


LRS = [0.1, F64(0.1), F32(0.1)]


@pytest.mark.parametrize('lr', LRS, ids=['python', 'float64', 'float32'])
@pytest.mark.parametrize('rate_type', [float, F64], ids=['rate_python', 'rate_float64'])
def test_momentum_sgd(lr, rate_type):
    link = L.Linear(4, 3, initialW=uniform((3, 4), F32, 1), initial_bias=uniform((3,), F32, 2))
    start = {name: p.array.copy() for name, p in link.namedparams()}
    optimizer = chainer.optimizers.MomentumSGD(lr=lr, momentum=0.9)
    optimizer.setup(link)
    optimizer.add_hook(WeightDecay(rate_type(1e-2)))
    steps = [{name: uniform(p.shape, F32, 10 * s + i)
              for i, (name, p) in enumerate(link.namedparams())} for s in range(3)]
    for grads in steps:
        for name, p in link.namedparams():
            p.grad = grads[name].copy()
        optimizer.update()
    want, velocity = momentum_sgd_ref(start, steps, float(lr), 0.9, 1e-2)
    for name, p in link.namedparams():
        state = p.update_rule.state['v']
        assert p.array.dtype == p.grad.dtype == state.dtype == F32, name
        numpy.testing.assert_allclose(p.array, want[name], rtol=1e-6, atol=1e-7)
        numpy.testing.assert_allclose(state, velocity[name], rtol=1e-5, atol=1e-7)
    assert optimizer.t == 3


@pytest.mark.parametrize('lr', LRS, ids=['python', 'float64', 'float32'])
def test_momentum_sgd_mixed16(lr):
    # distributed.optim's mixed16: float16 weights, float32 master copies, loss scaling.
    with chainer.using_config('dtype', F16):
        link = L.Linear(4, 3, initialW=uniform((3, 4), F16, 1),
                        initial_bias=uniform((3,), F16, 2))
    optimizer = chainer.optimizers.MomentumSGD(lr=lr, momentum=0.9)
    optimizer.use_fp32_update()
    optimizer.loss_scaling(scale=128.0)
    optimizer.setup(link)
    link.W.update_rule.add_hook(WeightDecay(1e-2))
    x = uniform((5, 4), F16, 3)
    t = numpy.array([0, 1, 2, 1, 0], numpy.int32)
    master = {name: p.array.astype(F64) for name, p in link.namedparams()}
    velocity = {name: numpy.zeros_like(p) for name, p in master.items()}
    for _ in range(3):
        logits = x.astype(F64) @ master['/W'].T + master['/b']
        _, gz = sce_ref(logits, t)
        grads = {'/W': gz.T @ x.astype(F64), '/b': gz.sum(axis=0)}
        loss = F.softmax_cross_entropy(link(x), t)
        assert loss.dtype == F16
        link.cleargrads()
        loss.backward(loss_scale=optimizer._loss_scale)
        optimizer.update()
        for name, g in grads.items():
            if name == '/W':
                g = g + 1e-2 * master[name]
            velocity[name] = 0.9 * velocity[name] - float(lr) * g
            master[name] = master[name] + velocity[name]
    for name, p in link.namedparams():
        fp32 = p.update_rule._fp32_param
        assert p.array.dtype == F16 and fp32.array.dtype == F32, name
        assert p.update_rule.state['v'].dtype == F32, name
        numpy.testing.assert_allclose(fp32.array, master[name], rtol=2e-3, atol=2e-3)
        numpy.testing.assert_allclose(p.array, master[name], rtol=2e-3, atol=2e-3)


# --- save_npz / load_npz -----------------------------------------------------------------------

class Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, 4, 3, pad=1, nobias=True)
            self.bn = L.BatchNormalization(4)
            self.fc = L.Linear(4, 3)
        # Python scalars come back through numpy.can_cast(dtype, float/int) on loading
        self.add_persistent('seen', 0)
        self.add_persistent('scale', 0.5)

    def forward(self, x):
        return self.fc(F.average(F.relu(self.bn(self.conv(x))), axis=(2, 3)))


def model_and_optimizer(lr):
    model = L.Classifier(Net())
    optimizer = chainer.optimizers.MomentumSGD(lr=lr, momentum=0.9)
    optimizer.setup(model)
    optimizer.add_hook(WeightDecay(1e-4))
    return model, optimizer


def trained(lr):
    model, optimizer = model_and_optimizer(lr)
    model.predictor.seen, model.predictor.scale = 8, 0.25
    x = uniform((4, 3, 5, 5), F32, 1)
    t = numpy.array([0, 1, 2, 1], numpy.int32)
    for _ in range(2):
        optimizer.update(model, x, t)
    return model, optimizer


def state_of(target):
    serializer = chainer.serializers.DictionarySerializer()
    target.serialize(serializer)
    return serializer.target


@pytest.mark.parametrize('lr', [0.1, F64(0.1)], ids=['python', 'float64'])
def test_save_load_npz_round_trip(tmp_path, lr):
    model, optimizer = trained(lr)
    chainer.serializers.save_npz(str(tmp_path / 'model.npz'), model)
    chainer.serializers.save_npz(str(tmp_path / 'optimizer.npz'), optimizer)
    # the lr and hooks are configuration, not state: the product sets them again
    fresh, fresh_optimizer = model_and_optimizer(lr)
    chainer.serializers.load_npz(str(tmp_path / 'model.npz'), fresh)
    chainer.serializers.load_npz(str(tmp_path / 'optimizer.npz'), fresh_optimizer)
    for original, loaded in ((model, fresh), (optimizer, fresh_optimizer)):
        want, got = state_of(original), state_of(loaded)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype, key
            numpy.testing.assert_array_equal(got[key], value, err_msg=key)
    assert fresh_optimizer.t == 2
    assert (type(fresh.predictor.seen), fresh.predictor.seen) == (int, 8)
    assert (type(fresh.predictor.scale), fresh.predictor.scale) == (float, 0.25)
    for name, p in fresh.namedparams():
        assert p.array.dtype == p.update_rule.state['v'].dtype == F32, name
    # and the restored pair trains on exactly as the original does
    x = uniform((4, 3, 5, 5), F32, 5)
    t = numpy.array([2, 1, 0, 0], numpy.int32)
    optimizer.update(model, x, t)
    fresh_optimizer.update(fresh, x, t)
    for (name, p), (_, q) in zip(sorted(model.namedparams()), sorted(fresh.namedparams())):
        numpy.testing.assert_array_equal(q.array, p.array, err_msg=name)


# --- reporting -----------------------------------------------------------------------------------

def test_reported_means():
    # NEP 50: the reporter's running sums start as Python floats and now stay float32 when
    # the reported values are float32 (they were float64); the means must still be right.
    values = uniform((4000,), F32, 1, 0, 5)
    summary = chainer.reporter.DictSummary()
    for v in values:
        summary.add({'main/loss': chainer.Variable(numpy.asarray(v)), 'main/n': 2})
    mean = summary.compute_mean()
    numpy.testing.assert_allclose(float(mean['main/loss']), values.astype(F64).mean(),
                                  rtol=1e-5)
    assert float(mean['main/n']) == 2
