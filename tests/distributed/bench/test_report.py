"""distributed.bench.report: the scaling table and the plots."""


def _result(ranks, images_per_sec, pipeline=True):
    parts = {'data': 0.001, 'forward': 0.3, 'backward': 0.5, 'wait': 0.01 * (ranks - 1),
             'allreduce': 0.03 * (ranks - 1), 'update': 0.06}
    parts['step'] = sum(parts.values())
    result = {'ranks': ranks, 'images_per_sec': images_per_sec, 'parts_s': parts,
              'exposed_comm_share': parts['allreduce'] / parts['step']}
    if pipeline:
        result.update(pipeline_img_per_sec=500.0, pipeline_baseline_img_per_sec=300.0,
                      pipeline_cpu_normalised_img_per_sec=470.0, decode_img_per_sec=650.0,
                      decode_fast_img_per_sec=700.0,
                      pipeline_crop=224)
    return result


def test_scaling_report_and_plots(tmp_path):
    from distributed.bench.report import breakdown_plot, scaling_report
    results = [_result(1, 20.0), _result(2, 36.0)]
    table = scaling_report(results, str(tmp_path / 'scaling.png')).splitlines()
    assert table[2].split() == ['1', '20.0', '20.0', '100%', '0.0', '0.0%', '0.0']
    assert table[3].split() == ['2', '36.0', '18.0', '90%', '30.0', '3.3%', '10.0']
    breakdown_plot(results, str(tmp_path / 'breakdown.png'))
    breakdown_plot([_result(1, 20.0, pipeline=False)], str(tmp_path / 'no_pipeline.png'))
    for name in ('scaling.png', 'breakdown.png', 'no_pipeline.png'):
        assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
