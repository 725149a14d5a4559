"""The GPU path without GPUs: a Ray with two logical GPUs, members asking for half a GPU each."""

import pytest
import ray

from ensemble import Ensemble
from ensemble.base.errors import ResourceError
from ensemble.cluster.runner import TrainerActor, check_feasible, Resources

from helpers import quick_train, small_mlp_factory, start_ray


@pytest.fixture(scope="module", autouse=True)
def ray_with_logical_gpus():
    start_ray(num_cpus=2, num_gpus=2)
    yield
    ray.shutdown()


def _actor(num_cpus=0.5, num_gpus=0.5):
    return TrainerActor.options(num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=2).remote(1, num_gpus)


def test_half_gpu_members_are_placed_four_at_a_time():
    actors = [_actor() for _ in range(5)]
    refs = [a.placement.remote() for a in actors]
    ready, waiting = ray.wait(refs, num_returns=4, timeout=60)
    assert len(ready) == 4, "four half-GPU actors fit on two GPUs at once"
    ready2, _ = ray.wait(waiting, timeout=3)
    assert not ready2, "the fifth waits for a free half GPU"
    placements = ray.get(ready)
    ids = sorted(p["gpu_ids"][0] for p in placements)
    assert ids == ["0", "0", "1", "1"], "two members share each GPU"
    for p in placements:
        assert p["cuda_visible_devices"] == p["gpu_ids"][0], "each actor sees the device Ray assigned it"
        assert p["device"] == "cpu", "no CUDA here: training falls back to the CPU"
    # Free the slot of one that runs: which of the five Ray left waiting is not fixed.
    ray.kill(actors[refs.index(ready[0])])
    assert ray.get(waiting[0], timeout=60)["gpu_ids"], "the fifth starts once a slot frees"
    for a in actors:
        ray.kill(a)


def test_an_ensemble_on_fractional_gpus_trains_on_the_cpu_fallback(digits, tmp_path):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    ens = Ensemble(factory, n_members=4, train=quick_train(2), num_cpus=0.5, num_gpus=0.5,
                   output_dir=tmp_path, show_progress=False)
    ens.fit(digits.train, digits.val, digits.test)
    for result in ens.results_:
        assert result.placement["device"] == "cpu"
        assert result.placement["gpu_ids"][0] in ("0", "1")
        assert result.metrics["test_accuracy"] > 0.5


def test_more_gpus_than_any_node_has_is_infeasible():
    with pytest.raises(ResourceError, match="largest node of the Ray cluster has CPU=2, GPU=2"):
        check_feasible({"member_0": Resources(num_cpus=1, num_gpus=3)})
