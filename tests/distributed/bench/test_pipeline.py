"""distributed.bench.pipeline: the difference from Pillow's resize sees a shifted box."""


def test_pipeline_difference_is_small_on_smooth_pictures_and_sees_a_shift(tmp_path, monkeypatch):
    from distributed.bench import pipeline
    from distributed.data import images
    paths = pipeline.write_jpegs(str(tmp_path), 6, seed=1, noise=0)
    assert pipeline.pipeline_diff_grey(paths, 224, seed=0) < 1.0
    # A product that took its box two pixels to the right would show.
    region = images.Picture.region
    monkeypatch.setattr(images.Picture, 'region', lambda self, box, size: region(
        self, (box[0] + 2, box[1], box[2] + 2, box[3]), size))
    assert pipeline.pipeline_diff_grey(paths, 224, seed=0) > 1.0
