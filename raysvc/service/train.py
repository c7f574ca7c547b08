"""Ray Train execution of a learner's training function.

:class:`RayTrainRunner` implements :class:`raysvc.learners.base.TrainRunner` with
``ray.train.torch.TorchTrainer``: ``run(fn, payload)`` puts the payload into the object
store once, starts a worker group per the :class:`~raysvc.service.scaling.RayTrainOptions`
(fractional GPUs allowed, e.g. ``{"GPU": 0.25}``), runs
``fn(payload)`` on every worker and returns rank 0's result. A function that does not
share its work (``data_parallel=False``: CoOp's) gets a group of one worker, whatever
``num_workers`` says; :meth:`RayTrainRunner.placement` tells the manifest.

How the result comes back (the robust way): rank 0 hands it to a small result-sink actor
that the runner owns (``num_cpus=0``, created once per runner and reused), keyed by a
unique call id. This needs no shared storage between the trial's node and the workers'
nodes (a checkpoint directory would need one on a multi-node cluster) and relies on no
deprecated "free-floating" ``ray.train.report`` metrics. Each call is a fresh Train run
with a unique name under a private temporary ``storage_path`` that is removed afterwards,
so Ray Train's resume-by-name never picks up an earlier call's state.

``fn`` must be a pure, importable function (a learner's module-level training function);
with ``num_workers > 1`` and ``data_parallel`` each worker runs it, sharing the work through
``torch.distributed`` / ``ray.train.torch`` (:func:`raysvc.learners.kd.train_student`), and
rank 0's result is kept.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from typing import Any

import ray

from raysvc.errors import RaysvcBug
from raysvc.learners.base import Learner, LocalRunner, TrainFn, TrainRunner
from raysvc.service.scaling import RayTrainOptions, Train


@ray.remote(num_cpus=0)
class _ResultSink:
    def __init__(self):
        self._results: dict[str, Any] = {}

    def put(self, call_id: str, result: Any) -> None:
        self._results[call_id] = result

    def pop(self, call_id: str) -> Any:
        return self._results.pop(call_id, None)


def _train_worker(config: dict[str, Any]) -> None:
    """Per-worker loop: run the pure function on the payload; rank 0 hands the result back."""
    import ray.train

    payload = ray.get(config["payload"])
    result = config["fn"](payload)
    if ray.train.get_context().get_world_rank() == 0:
        ray.get(config["sink"].put.remote(config["call_id"], result))


class RayTrainRunner:
    """Train on Ray Train workers; see the module docstring for how results come back.

    ``options``: the ScalingConfig and Ray Train's restarts of a failed worker group (the
    function is pure, so a restart reruns it). ``storage_path``: where Ray Train keeps its
    run state (default: a temporary directory removed after each call).
    """

    def __init__(self, options: RayTrainOptions | None = None, storage_path: str | None = None):
        self.options = options or RayTrainOptions()
        self.storage_path = storage_path
        self._sink = None

    def workers(self, data_parallel: bool) -> int:
        """The workers a training function gets: those asked for when it shares its work, else one."""
        return self.options.num_workers if data_parallel else 1

    def scaling_config(self, data_parallel: bool = True):
        from ray.train import ScalingConfig

        kwargs: dict[str, Any] = {"num_workers": self.workers(data_parallel), "use_gpu": self.options.gpu}
        if self.options.resources_per_worker:
            kwargs["resources_per_worker"] = dict(self.options.resources_per_worker)
        return ScalingConfig(**kwargs)

    def _get_sink(self):
        if self._sink is None:
            self._sink = _ResultSink.remote()
        return self._sink

    def placement(self, learner: type[Learner]) -> dict[str, Any]:
        asked = self.options.num_workers
        out: dict[str, Any] = {"runner": "ray-train", "workers_asked": asked,
                               "workers": self.workers(learner.data_parallel)}
        if asked > 1 and learner.one_worker:
            out["one_worker"] = learner.one_worker
        return out

    def run(self, fn: TrainFn, payload: dict[str, Any], data_parallel: bool = False) -> dict[str, Any]:
        from ray.train import FailureConfig, RunConfig
        from ray.train.torch import TorchTrainer

        call_id = uuid.uuid4().hex
        sink = self._get_sink()
        storage = self.storage_path or tempfile.mkdtemp(prefix="raysvc-train-")
        try:
            trainer = TorchTrainer(
                _train_worker,
                train_loop_config={"fn": fn, "payload": ray.put(payload), "sink": sink, "call_id": call_id},
                scaling_config=self.scaling_config(data_parallel),
                run_config=RunConfig(
                    name=f"raysvc-train-{call_id}",
                    storage_path=storage,
                    failure_config=FailureConfig(max_failures=self.options.max_failures),
                ),
            )
            trainer.fit()
            result = ray.get(sink.pop.remote(call_id))
        finally:
            if self.storage_path is None:
                shutil.rmtree(storage, ignore_errors=True)
        if result is None:
            raise RaysvcBug(f"Ray Train run {call_id} finished without a result from rank 0")
        return result

    def close(self) -> None:
        if self._sink is not None:
            ray.kill(self._sink)
            self._sink = None


def make_runner(train: Train = "local", options: RayTrainOptions | None = None) -> TrainRunner:
    """``local`` -> LocalRunner (in the calling process), ``ray-train`` -> RayTrainRunner."""
    if train == "local":
        return LocalRunner()
    return RayTrainRunner(options)
