import numpy as np

from indexer.pipeline import decoded, embed_files
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder

from .conftest import draw_image


def make_mixed_folder(tmp_path):
    paths = []
    for i in range(11):
        p = tmp_path / f"{i:02d}.jpg"
        draw_image(i, (120, 80) if i % 3 else (60, 90)).save(p)  # two shapes -> two buckets
        paths.append(str(p))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(4, str(bad))
    return paths


def test_threaded_decoding_gives_the_same_images_in_order(tmp_path):
    paths = make_mixed_folder(tmp_path)
    serial = list(decoded(paths, 64, workers=0))
    threaded = list(decoded(paths, 64, workers=3, prefetch=4))
    assert [i for i, _ in threaded] == list(range(len(paths)))
    for (_, a), (_, b) in zip(serial, threaded):
        if isinstance(a, str):
            assert a == b
        else:
            np.testing.assert_array_equal(a.image.pixels, b.image.pixels)


def test_embed_files_buckets_shapes_and_reports_every_file_once(tmp_path):
    paths = make_mixed_folder(tmp_path)
    emb = Embedder(ModelConfig(image_size=64), RuntimeOptions(device="cpu"))
    outs = list(embed_files(paths, emb, batch_size=3, workers=2))
    assert sorted(o.index for o in outs) == list(range(len(paths)))
    [bad] = [o for o in outs if o.error]
    assert bad.index == 4 and bad.vector is None
    good = {o.index: o.vector for o in outs if o.error is None}
    # Batching by shape must not change a vector: compare with embedding each image alone.
    single = {o.index: o.vector for p in [paths[0]] for o in embed_files([p], emb, workers=0)}
    np.testing.assert_allclose(good[0], single[0], atol=1e-5)
    assert all(v.shape == (1280,) for v in good.values())
