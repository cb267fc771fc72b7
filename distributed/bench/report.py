"""The benchmark's results for people: the table ``launch.benchmark`` prints, the scaling
report of several runs, and the step breakdown plot."""
import numpy

from distributed.bench.pipeline import SOP_MEAN_JPEG_KB


def format_table(result):
    """The readable report of ``run_benchmark``'s result."""
    ms = 1000.0
    parts = result['parts_s']
    lines = [
        'ResNet training, {ranks} rank(s), {communicator}: {images_per_sec:.1f} img/s total, '
        '{images_per_sec_per_rank:.1f} img/s per rank (mean)'.format(**result),
        '  step {:.1f} ms: data {:.1f}, forward {:.1f}, backward {:.1f}, waiting for the '
        'slowest rank {:.1f}, allreduce {:.1f}, update {:.1f} (each the slowest rank\'s)'
        .format(*(parts[k] * ms for k in ('step', 'data', 'forward', 'backward', 'wait',
                                          'allreduce', 'update'))),
        '  exposed communication {:.1%} of the step; waiting for the slowest rank {:.1%}'
        .format(result['exposed_comm_share'], result['wait_share']),
        'Gradient allreduce, {:.1f} MB in {} arrays (median of slowest rank):'.format(
            result['allreduce_bytes'] / 1e6, result['allreduce_arrays'])]
    if result['ranks'] == 1:
        lines.append('  one rank: nothing to reduce (the ratios mean something from 2 ranks)')
    else:
        lines.append('  product {:.1f} ms | raw flat {:.1f} ms | raw per-array {:.1f} ms | '
                     'product / best raw {:.2f}x'.format(
                         result['allreduce_s'] * ms, result['allreduce_raw_flat_s'] * ms,
                         result['allreduce_raw_arrays_s'] * ms, result['allreduce_ratio']))
    if result['allreduce_naive_s'] is not None and result['ranks'] > 1:
        lines.append('  chainermn naive {:.1f} ms ({:.2f}x best raw)'.format(
            result['allreduce_naive_s'] * ms, result['allreduce_naive_ratio']))
    if result['allreduce_fp16_s'] is not None:
        lines.append(f"  pure_nccl float16 {result['allreduce_fp16_s'] * ms:.1f} ms")
    if 'pipeline_img_per_sec' in result:
        lines += [
            'Input pipeline, {pipeline_crop} px crops of {pipeline_images} SOP-sized JPEGs '
            '({:.0f} KB on average; SOP\'s photos: {:.0f} KB), img/s per core:'.format(
                result['pipeline_jpeg_kb'], SOP_MEAN_JPEG_KB, **result),
            '  product {pipeline_img_per_sec:.0f} | chainercv default '
            '{pipeline_baseline_img_per_sec:.0f} ({pipeline_speedup:.2f}x) | bare full-size '
            'decode: Pillow {decode_img_per_sec:.0f} ({pipeline_vs_decode:.2f}x), simplejpeg '
            '{decode_fast_img_per_sec:.0f} ({pipeline_vs_decode_fast:.2f}x)'.format(**result),
            '  the product\'s output differs from Pillow\'s antialiased resize of the same box '
            'by {pipeline_diff_grey:.2f} grey levels (mean absolute)'.format(**result),
            '  the product leaves uint8 images; its batched float conversion and mean run on '
            'the device at {normalise_img_per_sec:.0f} img/s per CPU core, so with a CPU as the '
            'device: {pipeline_cpu_normalised_img_per_sec:.0f} '
            '({pipeline_cpu_normalised_speedup:.2f}x chainercv)'.format(**result),
            '  cores to feed one GPU: {cores_for_1000_img_per_sec} at 1,000 img/s, '
            '{cores_for_3000_img_per_sec} at 3,000 img/s'.format(**result)]
    return '\n'.join(lines)


def scaling_report(results, png=None):
    """A table of img/s and scaling efficiency against ranks (and a plot at ``png``)."""
    base = results[0]['images_per_sec'] / results[0]['ranks']
    rows = ['ranks  img/s total  img/s/rank  efficiency  allreduce ms  exposed comm  '
            'wait ms',
            '-----  -----------  ----------  ----------  ------------  ------------  '
            '-------']
    efficiency = []
    for r in results:
        efficiency.append(r['images_per_sec'] / (r['ranks'] * base))
        rows.append('{:5d}  {:11.1f}  {:10.1f}  {:9.0%}  {:12.1f}  {:11.1%}  {:7.1f}'.format(
            r['ranks'], r['images_per_sec'], r['images_per_sec'] / r['ranks'],
            efficiency[-1], r['parts_s']['allreduce'] * 1000, r['exposed_comm_share'],
            r['parts_s']['wait'] * 1000))
    if png:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        ranks = [r['ranks'] for r in results]
        fig, left = plt.subplots(figsize=(6, 4))
        left.plot(ranks, [r['images_per_sec'] for r in results], 'o-', label='img/s')
        left.plot(ranks, [base * n for n in ranks], ':', color='gray', label='linear')
        left.set_xlabel('ranks')
        left.set_ylabel('images/s (total)')
        left.set_xticks(ranks)
        right = left.twinx()
        right.plot(ranks, [e * 100 for e in efficiency], 's--', color='C1',
                   label='efficiency')
        right.set_ylabel('scaling efficiency (%)')
        right.set_ylim(0, max(110, 10 + 100 * max(efficiency)))
        fig.legend(loc='upper left', bbox_to_anchor=(0.12, 0.95))
        fig.tight_layout()
        fig.savefig(png)
        plt.close(fig)
    return '\n'.join(rows)


STEP_PARTS = ('data', 'forward', 'backward', 'wait', 'allreduce', 'update')


def breakdown_plot(results, png):
    """A picture of where the time goes: each step's parts at each rank count (left) and
    the input paths per core of the last run (right)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    ranks = [f"{r['ranks']} rank{'s' if r['ranks'] > 1 else ''}" for r in results]
    start = numpy.zeros(len(results))
    for part in STEP_PARTS:
        ms = numpy.array([r['parts_s'][part] * 1000 for r in results])
        left.barh(ranks, ms, left=start, label=part)
        start += ms
    left.set_xlabel('ms per training step (slowest rank per part)')
    left.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=len(STEP_PARTS),
                frameon=False, handlelength=1.2, columnspacing=0.8)
    last = results[-1]
    if 'pipeline_img_per_sec' in last:
        paths = {'chainercv default': last['pipeline_baseline_img_per_sec'],
                 'product (uint8 out)': last['pipeline_img_per_sec'],
                 'product + normalising on a CPU': last['pipeline_cpu_normalised_img_per_sec'],
                 'bare full-size decode, Pillow': last['decode_img_per_sec'],
                 'bare full-size decode, simplejpeg': last['decode_fast_img_per_sec']}
        right.barh(list(paths), list(paths.values()), color=['gray', 'C0', 'C9', 'C7', 'C8'])
        right.set_xlabel(f"images/s per core, {last['pipeline_crop']} px crops")
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
