"""Test a trained model on an SOP split: top-1, top-5, mean loss, per-super-class accuracy,
confusion.

``[mpiexec -n N] python -m launch.evaluate -c FILE model=PATH [split=train] [key=value ...]``
Any number of ranks gives exactly the counts of one process, and its mean loss to float
tolerance. Rank 0 prints the table and
writes ``out/eval.json`` and ``out/confusion.png``. Images are decoded as training's
evaluation decodes them; an undecodable file is handled as data.on_bad_image says (with
'skip' it is named and not counted).
"""
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
from distributed.config import ConfigError
from distributed.data.sop import DataError
from distributed.evaluate import evaluate, format_report, load_eval_config
from distributed.runtime import StartupError, create_runtime
from launch import cli


def main(argv=None):
    args = cli.parse_args(argv, __doc__, 'model=results/smoke/model.npz split=train')
    try:
        config = load_eval_config(args.config, args.overrides)
        if args.print_config:
            cli.print_config(config)
            return 0
        runtime = create_runtime(config)
        result = evaluate(config, runtime)
    except (ConfigError, DataError, StartupError) as e:
        return cli.fail(e)
    if runtime.is_root:
        if result['skipped_report']:
            print('warning: ' + result['skipped_report'], file=sys.stderr)
        print(format_report(result, config.split))
        print('on {} rank{}; wrote {}/eval.json and {}/confusion.png'.format(
            runtime.size, 's' if runtime.size > 1 else '', config.out, config.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
