"""`--engine ray` must give the same embeddings as `--engine local` (max abs diff <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from histovl.embed import EmbeddingCache, encode_images

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_equals_local_and_shares_the_cache(local_ray, tiny_clip, class_folder, tmp_path):
    from histovl.embed.ray_engine import encode_images_ray

    paths = sorted(class_folder.rglob("*.png"))
    bad = class_folder / "lung_n" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    paths = [*paths, bad]
    local = encode_images(tiny_clip, paths, on_error="skip", progress=False)
    cache = EmbeddingCache(tmp_path / "c")
    remote = encode_images_ray(tiny_clip, paths, cache=cache, batch_size=4, on_error="skip")
    assert remote.ok.tolist() == local.ok.tolist() and [f.path for f in remote.failures] == [str(bad)]
    assert np.abs(remote.embeddings - local.embeddings).max() <= 1e-5
    # The local engine resumes from what Ray wrote: everything is a cache hit.
    again = encode_images(tiny_clip, paths, cache=cache, on_error="skip", progress=False)
    assert again.n_cached == len(paths) - 1 and again.n_encoded == 0


def test_actors_that_leave_no_cpu_for_decoding_are_refused(local_ray, tiny_clip, class_folder):
    from histovl.embed.ray_engine import encode_images_ray

    paths = sorted(class_folder.rglob("*.png"))
    with pytest.raises(ValueError, match="leave no CPU for decoding"):
        encode_images_ray(tiny_clip, paths, actor_cpus=2)
