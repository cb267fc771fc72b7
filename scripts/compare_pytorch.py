"""The product against PyTorch on the same ResNet-50, shape, batch, precision and ranks.

On CPUs, against PyTorch DDP (gloo):

    python scripts/compare_pytorch.py [--ranks 1 2] [--crop 64] [--batch 16] [--iterations 10]
        [--torch-python /tmp/torchvenv/bin/python] [--out results/compare]

For each rank count it runs the product's benchmark (launch.benchmark under mpiexec) and
then PyTorch DDP in a separate interpreter that has torch (torch is never a dependency of
the product), both with one thread per rank, and prints img/s, ratios and each one's
scaling efficiency. This file is also the PyTorch worker (--worker).

On one GPU (scripts/gpu_check.sh runs both halves):

    python scripts/compare_pytorch.py --gpu [--batches 32 64 256] [--crop 224] [--tf32 1]
        --out DIR          PyTorch's training img/s per precision and batch: DIR/pytorch.json
    python scripts/compare_pytorch.py --summary DIR [--tf32 1] [--batches 32 64 256]
                           the table of DIR/pytorch.json beside the product's
                           DIR/<precision>_b<batch>/benchmark.json (launch.benchmark dtype=...)

Like for like: float32 against float32 with TF32 the same on both sides (PyTorch's
convolutions use TF32 by default, its matmuls do not; CuPy's GEMMs, which carry chainer's
im2col convolutions, use it only under CUPY_TF32=1), and the product's mixed16 (float16
activations and conv/linear weights, float32 master weights, dynamic loss scaling) against
PyTorch's AMP (autocast to float16 and GradScaler's dynamic loss scaling). Each step is timed
as launch.benchmark times the product's: the uint8 batch sent to the GPU and normalised
('data'), forward with the loss, backward, and the optimizer's update, with the GPU
synchronised after each part; PyTorch's rate without those synchronisations is given too.
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resnet50(n_class):
    """A compact ResNet-50 (arch 'fb': stride in the 3x3 conv), as the product trains."""
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(True),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid),
                nn.ReLU(True), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
            nn.init.zeros_(self.body[-1].weight)
            self.relu = nn.ReLU(True)

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, mid, mid * 4, stride if i == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_class)]
    return nn.Sequential(*layers)


def torch_rank(rank, size, args, queue):
    import time
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(args.port))
    dist.init_process_group('gloo', rank=rank, world_size=size)
    torch.manual_seed(rank)
    model = torch.nn.parallel.DistributedDataParallel(resnet50(12))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.crop, args.crop) * 64
    t = torch.randint(0, 12, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(args.warmup + args.iterations):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), t).backward()
        optimizer.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    per_rank = torch.tensor(args.batch / (sum(times) / len(times)))
    dist.all_reduce(per_rank)
    if rank == 0:
        queue.put(float(per_rank))
    dist.destroy_process_group()


PRECISIONS = ('float32', 'mixed16')
"""The product's train.dtype values; PyTorch runs the same float32, and AMP for mixed16."""
PARTS = ('data', 'forward', 'backward', 'update')
"""Parts of a step that both benchmarks time (launch.benchmark's names)."""


def torch_gpu(batches, precisions, crop, iterations, warmup, tf32):
    """PyTorch ResNet-50 training on GPU 0: a dict for pytorch.json.

    Every run: MomentumSGD (lr 0.1, momentum 0.9, weight decay 1e-4), 12 classes, NCHW,
    torch.backends.cudnn.benchmark left at its default (False). Returns {'device', 'torch',
    'tf32', 'runs': [{'precision', 'batch', 'images_per_sec', 'images_per_sec_unsynced',
    'parts_s': {part: seconds per step}}]}.
    """
    import time
    import numpy
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    device = torch.device('cuda', 0)
    mean = torch.tensor([123.15, 115.90, 103.06], device=device).view(1, 3, 1, 1)
    runs = []
    for precision in precisions:
        for batch in batches:
            torch.manual_seed(0)
            model = resnet50(12).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                        weight_decay=1e-4)
            amp = precision == 'mixed16'
            scaler = torch.amp.GradScaler('cuda', enabled=amp)
            rng = numpy.random.RandomState(0)
            images = torch.from_numpy(rng.randint(0, 256, (batch, 3, crop, crop), numpy.uint8))
            labels = torch.from_numpy(rng.randint(0, 12, batch).astype(numpy.int64))

            def step(sync):
                marks = [time.perf_counter()]
                x = images.to(device).float() - mean
                t = labels.to(device)
                for part in PARTS:
                    if part == 'forward':
                        with torch.autocast('cuda', dtype=torch.float16, enabled=amp):
                            loss = torch.nn.functional.cross_entropy(model(x), t)
                    elif part == 'backward':
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                    elif part == 'update':
                        scaler.step(optimizer)
                        scaler.update()
                    if sync:
                        torch.cuda.synchronize()
                        marks.append(time.perf_counter())
                return marks

            for _ in range(warmup):
                step(True)
            parts = numpy.zeros(len(PARTS))
            for _ in range(iterations):
                parts += numpy.diff(step(True))
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iterations):
                step(False)
            torch.cuda.synchronize()
            unsynced = iterations * batch / (time.perf_counter() - start)
            parts /= iterations
            runs.append({'precision': precision, 'batch': batch,
                         'images_per_sec': batch / parts.sum(),
                         'images_per_sec_unsynced': unsynced,
                         'parts_s': dict(zip(PARTS, parts.tolist()))})
            torch.cuda.empty_cache()
    return {'device': torch.cuda.get_device_name(0), 'torch': torch.__version__,
            'tf32': bool(tf32), 'runs': runs}


def comparison_rows(folder, batches=(32, 64, 256)):
    """Rows of the GPU comparison from ``folder``: PyTorch's pytorch.json and the product's
    <precision>_b<batch>/benchmark.json, for each precision and batch. A run missing on one
    side (a failed or timed-out step) leaves that side's numbers None; rows missing on both
    sides are left out. Raises ValueError where there is no run at all."""
    def load(*path):
        try:
            with open(os.path.join(folder, *path)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    torch_runs = {(run['precision'], run['batch']): run
                  for run in (load('pytorch.json') or {}).get('runs', [])}
    rows = []
    for precision in PRECISIONS:
        for batch in batches:
            product = load('{}_b{}'.format(precision, batch), 'benchmark.json')
            run = torch_runs.get((precision, batch))
            if product is None and run is None:
                continue
            rate = product['images_per_sec'] if product else None
            torch_rate = run['images_per_sec'] if run else None
            rows.append({
                'precision': precision, 'batch': batch, 'product': rate, 'pytorch': torch_rate,
                'pytorch_unsynced': run['images_per_sec_unsynced'] if run else None,
                'ratio': rate / torch_rate if rate and torch_rate else None,
                'product_parts_s': ({part: product['parts_s'][part] for part in PARTS}
                                    if product else None),
                'pytorch_parts_s': run['parts_s'] if run else None})
    if not rows:
        raise ValueError('neither pytorch.json nor any <precision>_b<batch>/benchmark.json')
    return rows


def format_comparison(rows, tf32):
    """The readable table of ``comparison_rows``: img/s, ratio, and each step's parts in ms."""
    def rate(value):
        return '{:9.1f}'.format(value) if value else '      n/a'

    def parts(values):
        if not values:
            return 'n/a'
        return ' '.join('{} {:.1f}'.format(part, values[part] * 1000) for part in PARTS)

    lines = ['ResNet-50 training img/s on one GPU (float32: TF32 {} on both sides; mixed16: '
             'the product\'s mixed16 against PyTorch AMP)'.format('on' if tf32 else 'off'),
             'precision  batch   product   pytorch  product/pytorch  (pytorch unsynced)']
    for row in rows:
        lines.append('{:<9}  {:5d} {} {}  {:>15}  ({})'.format(
            row['precision'], row['batch'], rate(row['product']), rate(row['pytorch']),
            '{:.2f}'.format(row['ratio']) if row['ratio'] else 'n/a',
            rate(row['pytorch_unsynced']).strip()))
    lines.append('where a step goes, ms (each part followed by a GPU synchronisation):')
    for row in rows:
        lines.append('  {} b{}: product {} | pytorch {}'.format(
            row['precision'], row['batch'], parts(row['product_parts_s']),
            parts(row['pytorch_parts_s'])))
    return '\n'.join(lines)


def run_torch(args, ranks):
    import torch.multiprocessing as mp
    context = mp.get_context('spawn')
    queue = context.SimpleQueue()
    mp.start_processes(torch_rank, args=(ranks, args, queue), nprocs=ranks, join=True,
                       start_method='spawn')
    return queue.get()


def run_product(args, ranks):
    out = os.path.join(args.out, 'product_n{}'.format(ranks))
    command = [os.path.join(args.venv, 'bin', 'mpiexec'), '-n', str(ranks),
               os.path.join(args.venv, 'bin', 'python'), '-m', 'launch.benchmark',
               'crop_size={}'.format(args.crop), 'batch_size={}'.format(args.batch),
               'iterations={}'.format(args.iterations), 'warmup={}'.format(args.warmup),
               'pipeline_images=0', 'allreduce_rounds=3', 'device=cpu', 'out=' + out]
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, 'benchmark.json')) as f:
        return json.load(f)['images_per_sec']


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ranks', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--crop', type=int, default=64)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--iterations', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--port', type=int, default=29517)
    parser.add_argument('--torch-python', default='/tmp/torchvenv/bin/python')
    parser.add_argument('--venv', default=os.path.join(REPO, '.venv'))
    parser.add_argument('--out', default=os.path.join(REPO, 'results', 'compare'))
    parser.add_argument('--worker', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--gpu', action='store_true', help='PyTorch on GPU 0: out/pytorch.json')
    parser.add_argument('--batches', type=int, nargs='+', default=[32, 64, 256])
    parser.add_argument('--precisions', nargs='+', choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument('--tf32', type=int, choices=(0, 1), default=1)
    parser.add_argument('--summary', metavar='DIR', help='the GPU comparison table of DIR')
    args = parser.parse_args()
    if args.summary:
        try:
            rows = comparison_rows(args.summary, args.batches)
        except (ValueError, KeyError, TypeError) as e:
            sys.exit('compare_pytorch: no comparison in {} ({}: {})'.format(
                args.summary, type(e).__name__, e))
        print(format_comparison(rows, args.tf32))
        with open(os.path.join(args.summary, 'compare.json'), 'w') as f:
            json.dump({'tf32': bool(args.tf32), 'rows': rows}, f, indent=1)
        return 0
    if args.gpu:
        os.makedirs(args.out, exist_ok=True)
        result = torch_gpu(args.batches, args.precisions, args.crop, args.iterations,
                           args.warmup, args.tf32)
        with open(os.path.join(args.out, 'pytorch.json'), 'w') as f:
            json.dump(result, f, indent=1)
        return 0
    if args.worker:
        print(json.dumps({'images_per_sec': run_torch(args, args.worker)}))
        return 0
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for ranks in args.ranks:
        product = run_product(args, ranks)
        worker = subprocess.run(
            [args.torch_python, os.path.abspath(__file__), '--worker', str(ranks)]
            + sys.argv[1:], check=True, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, OMP_NUM_THREADS='1'))
        torch_rate = json.loads(worker.stdout.strip().splitlines()[-1])['images_per_sec']
        rows.append({'ranks': ranks, 'product': product, 'pytorch_ddp_gloo': torch_rate,
                     'ratio': product / torch_rate})
    base = rows[0]
    print('ranks  product img/s  pytorch DDP img/s  product/pytorch  eff product  eff pytorch')
    for row in rows:
        n = row['ranks'] / base['ranks']
        row['efficiency_product'] = row['product'] / (n * base['product'])
        row['efficiency_pytorch'] = row['pytorch_ddp_gloo'] / (n * base['pytorch_ddp_gloo'])
        print('{ranks:5d}  {product:13.1f}  {pytorch_ddp_gloo:17.1f}  {ratio:15.2f}  '
              '{efficiency_product:11.0%}  {efficiency_pytorch:11.0%}'.format(**row))
    with open(os.path.join(args.out, 'compare.json'), 'w') as f:
        json.dump({'crop': args.crop, 'batch': args.batch, 'rows': rows}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
