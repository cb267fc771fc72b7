"""The cuDNN-frontend path of Convolution2D and BatchNorm on a GPU: numerics, then speed.

    python scripts/cudnn_check.py [--batches 32 64 256] [--steps 20] [--numerics-batch 8]
        [--crop 224] [--tf32 1] [--skip-speed] [--out FILE.json]

Needs CuPy 14 with a GPU, NVIDIA's cuDNN frontend (nvidia-cudnn-frontend, over the cuDNN 9
that torch brings) and torch; chainer and chainercv as the product installs them. In order,
each part one short table:

1. numerics: every distinct convolution of ResNet-50 at 224 px (chainercv's arch 'fb'), in
   float32 and float16: forward, gradient w.r.t. input and w.r.t. weights of the cuDNN path
   against chainer's own path (im2col + cuBLAS) and torch.nn.functional.conv2d, as the
   largest difference over the largest value of the reference;
2. BatchNorm forward, backward and running statistics (chainer's decay, eps and unbiased
   running variance) against chainer's own path, float32 and mixed16;
3. NCHW against NHWC for BatchNorm forward on the cuDNN path (chainer hands over NCHW;
   this says what the other layout would give);
4. 20 training steps of the product's ResNet-50 with each path from the same weights and
   batches, the losses side by side;
5. img/s of a training step at each batch: chainer's path, the cuDNN path, and PyTorch at
   its best eager set-up on the card: channels_last, cudnn.benchmark on, TF32 on for float32
   (as CUPY_TF32=1 gives the product with --tf32 1), AMP (autocast float16 + GradScaler) for
   float16; no torch.compile. With each: the graphs built and their time, peak memory.

Exit status 0 when the numerics agree (float32 within 1e-2 relative with TF32, 1e-4
without; float16 within 2e-2), 1 when they do not, 2 when it cannot start (one line).
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (in channels, out channels, kernel, stride, pad, input side) of every distinct convolution
# of ResNet-50 (arch 'fb': the stride in the 3x3) at 224 px.
RESNET50_CONVS = [(3, 64, 7, 2, 3, 224)]
for _mid, _out, _blocks, _side, _stride in [(64, 256, 3, 56, 1), (128, 512, 4, 56, 2),
                                            (256, 1024, 6, 28, 2), (512, 2048, 3, 14, 2)]:
    _in = _mid * 2 if _mid > 64 else 64
    _after = _side // _stride
    RESNET50_CONVS += [(_in, _mid, 1, 1, 0, _side), (_mid, _mid, 3, _stride, 1, _side),
                       (_mid, _out, 1, 1, 0, _after), (_in, _out, 1, _stride, 0, _side),
                       (_out, _mid, 1, 1, 0, _after), (_mid, _mid, 3, 1, 1, _after)]
RESNET50_CONVS = sorted(set(RESNET50_CONVS), key=RESNET50_CONVS.index)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='PyTorch runs channels_last with cudnn.benchmark on, TF32 as --tf32 for '
               'float32, AMP for float16, and no torch.compile.')
    parser.add_argument('--batches', type=int, nargs='+', default=[32, 64, 256],
                        help='batch sizes of the img/s part (default 32 64 256)')
    parser.add_argument('--steps', type=int, default=20,
                        help='training steps with each path in the loss part (default 20)')
    parser.add_argument('--numerics-batch', type=int, default=8,
                        help='batch of the per-layer numerics (default 8)')
    parser.add_argument('--crop', type=int, default=224, help='image side (default 224)')
    parser.add_argument('--tf32', type=int, choices=(0, 1), default=1,
                        help='1: TF32 for float32 on every side (CUPY_TF32=1); 0: strict')
    parser.add_argument('--timed', type=int, default=5,
                        help='timed steps per img/s figure, after 2 warm-up (default 5)')
    parser.add_argument('--skip-speed', action='store_true', help='numerics and losses only')
    parser.add_argument('--out', help='also write the figures to this JSON file')
    return parser.parse_args(argv)


def start(args):
    """Import the stack with TF32 as asked; a one-line reason when it cannot start."""
    os.environ['CUPY_TF32'] = str(args.tf32)  # read by CuPy at import, and by the cuDNN path
    sys.path.insert(0, REPO)
    import distributed  # noqa: F401  (compat shims before chainer)
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError('no GPU visible')
        import torch
        from distributed.cudnn import dispatch
        frontend = dispatch.load_frontend()
    except Exception as e:
        sys.stderr.write('cudnn_check: cannot start: {}: {}\n'.format(
            type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
        sys.exit(2)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    return cupy, torch, dispatch, frontend


def rel(a, ref):
    """Largest difference over the largest magnitude of the reference."""
    import cupy
    a, ref = cupy.asarray(a, 'f8'), cupy.asarray(ref, 'f8')
    return float(abs(a - ref).max() / max(float(abs(ref).max()), 1e-30))


class Paths:
    """Switches chainer between its own path and the cuDNN path."""

    def __init__(self, dispatch, frontend, cupy, tf32):
        from distributed.cudnn import graphs
        self.dispatch = dispatch
        self.frontend = graphs.Frontend(frontend, cupy, tf32=tf32)

    def use(self, name):
        if name == 'cudnn':
            self.dispatch.install(self.frontend)
        else:
            self.dispatch.uninstall()


def numerics(paths, cupy, torch, batch, tolerance, out):
    import chainer
    import chainer.functions as F
    import numpy
    worst = {}
    print('1. convolutions of ResNet-50, batch {}: largest |difference| / largest |value| of '
          'the reference'.format(batch))
    print('   {:<24} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}'.format(
        'cin>cout k/s side', 'dtype', 'y:chainer', 'y:torch', 'gx:chainer', 'gx:torch',
        'gW:chainer'))
    for cin, cout, k, s, p, side in RESNET50_CONVS:
        for dtype in ('float32', 'float16'):
            rs = numpy.random.RandomState(cin + k)
            x = cupy.asarray(rs.standard_normal((batch, cin, side, side)), dtype)
            W = cupy.asarray(rs.standard_normal((cout, cin, k, k)) / (cin * k * k) ** .5, dtype)
            results = {}
            for name in ('chainer', 'cudnn'):
                paths.use(name)
                xv, Wv = chainer.Variable(x), chainer.Variable(W)
                y = F.convolution_2d(xv, Wv, stride=s, pad=p)
                gy = cupy.asarray(numpy.random.RandomState(1).standard_normal(y.shape), dtype)
                y.grad = gy
                y.backward()
                results[name] = (y.array, xv.grad, Wv.grad)
            tx = torch.as_tensor(x, device='cuda').float().requires_grad_()
            tw = torch.as_tensor(W, device='cuda').float().requires_grad_()
            ty = torch.nn.functional.conv2d(tx, tw, stride=s, padding=p)
            ty.backward(torch.as_tensor(gy, device='cuda').float())
            ours = results['cudnn']
            row = [rel(ours[0], results['chainer'][0]), rel(ours[0], ty.detach()),
                   rel(ours[1], results['chainer'][1]), rel(ours[1], tx.grad),
                   rel(ours[2], results['chainer'][2])]
            worst[dtype] = max([worst.get(dtype, 0)] + row)
            print('   {:<24} {:>7} '.format('{}>{} {}/{} {}'.format(cin, cout, k, s, side), dtype)
                  + ' '.join('{:9.1e}'.format(v) for v in row))
    out['conv_worst'] = worst
    print('2. BatchNorm, cuDNN path against chainer\'s (largest relative difference)')
    bn_worst = {}
    for dtype in ('float32', 'float16'):
        for shape in [(batch, 64, 112, 112), (batch, 256, 56, 56), (batch, 2048, 7, 7)]:
            rs = numpy.random.RandomState(shape[1])
            x = cupy.asarray(rs.standard_normal(shape) * 2 + 1, dtype)
            gamma = cupy.asarray(rs.uniform(0.5, 1.5, shape[1]), 'f4')
            beta = cupy.asarray(rs.standard_normal(shape[1]), 'f4')
            gy = cupy.asarray(rs.standard_normal(shape), dtype)
            results = {}
            for name in ('chainer', 'cudnn'):
                paths.use(name)
                mean, var = cupy.zeros(shape[1], 'f4'), cupy.ones(shape[1], 'f4')
                xv, gv, bv = (chainer.Variable(a) for a in (x, gamma, beta))
                y = F.batch_normalization(xv, gv, bv, eps=2e-5, running_mean=mean,
                                          running_var=var, decay=0.9)
                y.grad = gy
                y.backward()
                with chainer.using_config('train', False):
                    inference = F.fixed_batch_normalization(x, gamma, beta, mean, var, 2e-5)
                results[name] = (y.array, xv.grad, gv.grad, bv.grad, mean, var, inference.array)
            names = ('y', 'gx', 'ggamma', 'gbeta', 'running mean', 'running var', 'inference')
            diffs = {n: rel(a, b) for n, a, b in zip(names, results['cudnn'], results['chainer'])}
            bn_worst[dtype] = max([bn_worst.get(dtype, 0)] + list(diffs.values()))
            print('   {:<18} {:>7} '.format('x'.join(map(str, shape)), dtype) + ' '.join(
                '{} {:.1e}'.format(n, v) for n, v in diffs.items()))
    out['bn_worst'] = bn_worst
    paths.use('chainer')
    ok = all(v <= tolerance[d] for part in (worst, bn_worst) for d, v in part.items())
    print('   numerics {}: worst float32 {:.1e}, float16 {:.1e} (tolerance {:.0e}, {:.0e})'.format(
        'agree' if ok else 'DO NOT AGREE', max(worst['float32'], bn_worst['float32']),
        max(worst['float16'], bn_worst['float16']), tolerance['float32'], tolerance['float16']))
    return ok


def layouts(dispatch, frontend, cupy, tf32, batch):
    """cuDNN BatchNorm forward in NCHW (what chainer hands over) against NHWC."""
    from distributed.cudnn import graphs

    class KeepStrides(graphs.Frontend):
        def contiguous(self, array):
            return array
    fe = KeepStrides(frontend, cupy, tf32=tf32)
    print('3. layouts: cuDNN BatchNorm forward, float16, batch {}: ms per call'.format(batch))
    for c, side in [(64, 112), (256, 56), (1024, 14)]:
        times = {}
        for layout in ('NCHW', 'NHWC'):
            shape = (batch, side, side, c) if layout == 'NHWC' else (batch, c, side, side)
            x = cupy.random.standard_normal(shape).astype('f2')
            x = x.transpose(0, 3, 1, 2) if layout == 'NHWC' else x
            gamma, beta = cupy.ones(c, 'f4'), cupy.zeros(c, 'f4')
            if fe.batch_norm_forward(x, gamma, beta, 2e-5) is None:
                times[layout] = 'declined'
                continue
            cupy.cuda.Device().synchronize()
            begin = time.perf_counter()
            for _ in range(10):
                fe.batch_norm_forward(x, gamma, beta, 2e-5)
            cupy.cuda.Device().synchronize()
            times[layout] = '{:.3f} ms'.format((time.perf_counter() - begin) / 10 * 1000)
        print('   {}x{}x{}: '.format(c, side, side) + '  '.join(
            '{} {}'.format(k, v) for k, v in times.items()))


def _model(dtype, seed=0):
    import chainer
    import numpy
    from distributed import model as model_module, runtime
    runtime.set_precision(dtype)
    numpy.random.seed(seed)
    model = model_module.create_model('resnet50', n_class=12)
    model.to_device('@cupy:0')
    optimizer = chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9)
    if dtype == 'mixed16':
        optimizer.use_fp32_update()
        optimizer.loss_scaling()
    optimizer.setup(model)
    return model, optimizer


def _batch(cupy, batch, crop, dtype, seed):
    import numpy
    rs = numpy.random.RandomState(seed)
    x = cupy.asarray(rs.standard_normal((batch, 3, crop, crop)),
                     'f2' if dtype == 'mixed16' else 'f4')
    t = cupy.asarray(rs.randint(0, 12, batch), 'i4')
    return x, t


def losses(paths, cupy, steps, crop, out):
    import chainer
    print('4. {} training steps, batch 32, same weights and batches: loss per step'.format(
        steps))
    for dtype in ('float32', 'mixed16'):
        curves = {}
        for name in ('chainer', 'cudnn'):
            paths.use(name)
            model, optimizer = _model(dtype)
            curve = []
            for step in range(steps):
                x, t = _batch(cupy, 32, crop, dtype, step)
                with chainer.using_config('train', True):
                    optimizer.update(model, x, t)
                curve.append(float(model.loss.array))
            curves[name] = curve
        out['losses_' + dtype] = curves
        for name, label in (('chainer', 'chainer'), ('cudnn', 'cuDNN  ')):
            print('   {}: {} {}'.format(dtype, label, ' '.join(
                '{:.3f}'.format(v) for v in curves[name])))
    paths.use('chainer')


def _time_product(paths, cupy, name, dtype, batch, crop, timed):
    import chainer
    paths.use(name)
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    model, optimizer = _model(dtype)
    x, t = _batch(cupy, batch, crop, dtype, 0)
    builds = paths.frontend.builds, paths.frontend.build_seconds
    peak = 0
    for i in range(2 + timed):
        if i == 2:
            cupy.cuda.Device().synchronize()
            begin = time.perf_counter()
        with chainer.using_config('train', True):
            optimizer.update(model, x, t)
        peak = max(peak, pool.total_bytes())
    cupy.cuda.Device().synchronize()
    rate = batch * timed / (time.perf_counter() - begin)
    del model, optimizer
    return rate, peak, (paths.frontend.builds - builds[0],
                        paths.frontend.build_seconds - builds[1])


def _time_torch(torch, dtype, batch, crop, timed):
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    from compare_pytorch import resnet50
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = resnet50(12).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler('cuda', enabled=dtype == 'mixed16')
    x = torch.randn(batch, 3, crop, crop, device='cuda').to(memory_format=torch.channels_last)
    t = torch.randint(0, 12, (batch,), device='cuda')
    for i in range(2 + timed):
        if i == 2:
            torch.cuda.synchronize()
            begin = time.perf_counter()
        with torch.autocast('cuda', torch.float16, enabled=dtype == 'mixed16'):
            loss = torch.nn.functional.cross_entropy(model(x), t)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    torch.cuda.synchronize()
    rate = batch * timed / (time.perf_counter() - begin)
    peak = torch.cuda.max_memory_allocated()
    del model, optimizer
    return rate, peak


def speed(paths, cupy, torch, batches, crop, timed, tf32, out):
    print('5. training img/s, {} px, one GPU; PyTorch: channels_last, cudnn.benchmark on, '
          'TF32 {} for float32, AMP for float16, no torch.compile'.format(
              crop, 'on' if tf32 else 'off'))
    print('   {:<8} {:>5} {:>16} {:>16} {:>16} {:>8} {:>14}'.format(
        'dtype', 'batch', 'chainer', 'cuDNN path', 'PyTorch', 'cuDNN/PT', 'graphs (s)'))
    rows = []
    for dtype in ('float32', 'mixed16'):
        for batch in batches:
            row = {'dtype': dtype, 'batch': batch}
            for name in ('chainer', 'cudnn'):
                try:
                    rate, peak, built = _time_product(paths, cupy, name, dtype, batch, crop,
                                                      timed)
                    row[name] = {'img_s': rate, 'peak_gib': peak / 2 ** 30}
                    if name == 'cudnn':
                        row['graphs'] = {'built': built[0], 'seconds': built[1]}
                except cupy.cuda.memory.OutOfMemoryError:
                    row[name] = None
            try:
                rate, peak = _time_torch(torch, dtype, batch, crop, timed)
                row['pytorch'] = {'img_s': rate, 'peak_gib': peak / 2 ** 30}
            except torch.cuda.OutOfMemoryError:
                row['pytorch'] = None
            rows.append(row)

            def cell(entry):
                return ('out of memory' if entry is None
                        else '{:7.0f} ({:4.1f} G)'.format(entry['img_s'], entry['peak_gib']))
            ratio = (row['cudnn']['img_s'] / row['pytorch']['img_s']
                     if row['cudnn'] and row['pytorch'] else float('nan'))
            graphs = row.get('graphs', {'built': 0, 'seconds': 0})
            print('   {:<8} {:>5} {:>16} {:>16} {:>16} {:>8.2f} {:>6} ({:.1f})'.format(
                dtype, batch, cell(row['chainer']), cell(row['cudnn']), cell(row['pytorch']),
                ratio, graphs['built'], graphs['seconds']))
    out['speed'] = rows
    paths.use('chainer')


def main(argv=None):
    args = parse_args(argv)
    cupy, torch, dispatch, frontend = start(args)
    began = time.perf_counter()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print('cudnn_check: GPU {}, CuPy {}, cuDNN {}, cuDNN frontend {}, torch {}; TF32 {}'.format(
        props['name'].decode() if isinstance(props['name'], bytes) else props['name'],
        cupy.__version__, frontend.backend_version(), getattr(frontend, '__version__', '?'),
        torch.__version__, 'on' if args.tf32 else 'off'))
    paths = Paths(dispatch, frontend, cupy, bool(args.tf32))
    out = {'tf32': bool(args.tf32)}
    tolerance = {'float32': 1e-2 if args.tf32 else 1e-4, 'float16': 2e-2}
    ok = numerics(paths, cupy, torch, args.numerics_batch, tolerance, out)
    layouts(dispatch, frontend, cupy, bool(args.tf32), 32)
    losses(paths, cupy, args.steps, args.crop, out)
    if not args.skip_speed:
        speed(paths, cupy, torch, args.batches, args.crop, args.timed, args.tf32, out)
    print('   {}; {} case(s) declined to chainer\'s path{}'.format(
        dispatch.summary() or 'no graphs', len(paths.frontend.declined),
        ': ' + '; '.join(sorted(set(paths.frontend.declined.values())))[:300]
        if paths.frontend.declined else ''))
    out['declined'] = len(paths.frontend.declined)
    out['seconds'] = time.perf_counter() - began
    print('cudnn_check: {:.0f} s; numerics {}'.format(
        out['seconds'], 'agree' if ok else 'DO NOT AGREE'))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
