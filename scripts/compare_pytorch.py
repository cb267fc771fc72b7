"""The product against PyTorch DDP (gloo) on the same ResNet-50, shape, batch and ranks.

    python scripts/compare_pytorch.py [--ranks 1 2] [--crop 64] [--batch 16] [--iterations 10]
        [--torch-python /tmp/torchvenv/bin/python] [--out results/compare]

For each rank count it runs the product's benchmark (launch.benchmark under mpiexec) and
then PyTorch DDP in a separate interpreter that has torch (torch is never a dependency of
the product), both with one thread per rank, and prints img/s, ratios and each one's
scaling efficiency. This file is also the PyTorch worker (--worker).
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
    args = parser.parse_args()
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
